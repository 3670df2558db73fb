"""Disruption end to end (issue 13, item 4) over real HTTP: a cancelled or badly delayed
departure offers every passenger a fee-free refund or change (a cheaper departure refunds the
difference, a dearer one costs nothing); whoever does nothing is refunded at the departure
time; the station system's cancellation takes the same path."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from server.clock import LOCAL_TZ
from tests.booking_support import app_member, issued_order, person
from tests.inventory_support import make_departure
from tests.support import ApiClient

STATION = "440111001"


async def _second_run(db, dep_id: str, later: dt.timedelta) -> str:
    """Another departure of the same route (a later run)."""
    dep = await db.departures.find_one({"_id": dep_id})
    other = {**dep, "_id": dep_id + "B", "schedule_id": dep["schedule_id"] + "B",
             "departs_at": dep["departs_at"] + later}
    other["service_date"] = other["departs_at"].astimezone(LOCAL_TZ).date().isoformat()
    await db.departures.insert_one(other)
    return other["_id"]


@pytest.mark.gen_test(timeout=120)
async def test_a_cancelled_departure_offers_free_refund_or_change(api: ApiClient, db,
                                                                  services) -> None:
    operator = (await api.login("operator"))["token"]
    dep = await make_departure(db, seats=10, departs_in=dt.timedelta(days=2),
                               station_id=STATION)
    target = await _second_run(db, dep, dt.timedelta(days=1))
    alice, bob = await app_member(api), await app_member(api)
    a = await issued_order(api, services, alice, dep, [person("爱丽丝")])
    b = await issued_order(api, services, bob, dep, [person("鲍勃")])
    before = await api.get(f"/api/v1/orders/{a['order_no']}", token=alice)
    assert "disruption" not in before.body

    cancelled = await api.post(f"/api/v1/admin/departures/{dep}/cancel", {"reason": "台风停运"},
                               token=operator)
    assert cancelled.status == 200, cancelled.text
    seen = (await api.get(f"/api/v1/orders/{a['order_no']}", token=alice)).body
    assert seen["disruption"]["kind"] == "cancelled"
    assert seen["disruption"]["options"] == ["refund", "change"]
    departs = (await db.departures.find_one({"_id": dep}))["departs_at"]
    assert dt.datetime.fromisoformat(seen["disruption"]["deadline"]) == departs

    # the route's fare falls before Alice changes: the difference comes back to her
    route = (await db.departures.find_one({"_id": dep}))["route_id"]
    old = await db.fares.find_one({"route_id": route, "from_seq": 0, "to_seq": 2})
    await db.fares.insert_one({**old, "_id": old["_id"] + "-cheaper",
                               "prices": {**old["prices"], "adult": old["prices"]["adult"] - 800},
                               "effective_from": dt.datetime.now(dt.UTC)})
    ticket = a["tickets"][0]
    changed = await api.post(f"/api/v1/tickets/{ticket['ticket_no']}/change",
                             {"departure_id": target}, token=alice)
    assert changed.status == 200, changed.text
    new = await db.tickets.find_one({"ticket_no": changed.body["ticket_no"]})
    assert new["price"] == ticket["price"] - 800 and new["departure_id"] == target
    owed = await db.refund_requests.find_one({"_id": f"fare-diff:{ticket['ticket_no']}"})
    assert owed["amount"] == 800

    # Bob does nothing: at the departure time he is refunded in full, once
    await db.departures.update_one({"_id": dep}, {"$set": {
        "disruption.deadline": dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)}})
    for _ in range(40):  # this process or the server's own job, whichever comes first
        await services.tickets.settle_disruptions()
        bobs = await db.tickets.find_one({"order_no": b["order_no"]})
        if bobs["status"] == "refunded":
            break
        await asyncio.sleep(0.25)
    assert bobs["status"] == "refunded" and bobs["refund"]["fee"] == 0
    request = await db.refund_requests.find_one({"_id": f"ticket:{bobs['ticket_no']}"})
    assert request["amount"] == bobs["price"]
    assert (await db.departures.find_one({"_id": dep}))["disruption"]["settled"] is True
    closed = (await api.get(f"/api/v1/orders/{b['order_no']}", token=bob)).body
    assert closed["disruption"]["options"] == []


@pytest.mark.gen_test(timeout=90)
async def test_a_long_delay_is_a_disruption_and_a_short_one_is_not(api: ApiClient, db,
                                                                   services) -> None:
    operator = (await api.login("operator"))["token"]
    dep = await make_departure(db, seats=6, departs_in=dt.timedelta(days=2),
                               station_id=STATION)
    carol = await app_member(api)
    order = await issued_order(api, services, carol, dep, [person("卡罗尔")])
    departs = (await db.departures.find_one({"_id": dep}))["departs_at"]
    short = await api.post(f"/api/v1/admin/departures/{dep}/delay", {
        "departs_at": (departs + dt.timedelta(minutes=30)).isoformat(), "reason": "晚点"},
        token=operator)
    assert short.status == 200, short.text
    assert "disruption" not in (await api.get(f"/api/v1/orders/{order['order_no']}",
                                              token=carol)).body
    quote = await api.get(f"/api/v1/tickets/{order['tickets'][0]['ticket_no']}/refund-quote",
                          token=carol)
    assert quote.body["fee"] > 0  # a short delay changes nothing
    long = await api.post(f"/api/v1/admin/departures/{dep}/delay", {
        "departs_at": (departs + dt.timedelta(minutes=120)).isoformat(), "reason": "事故"},
        token=operator)
    assert long.status == 200, long.text
    seen = (await api.get(f"/api/v1/orders/{order['order_no']}", token=carol)).body
    assert seen["disruption"]["kind"] == "delayed"
    quote = await api.get(f"/api/v1/tickets/{order['tickets'][0]['ticket_no']}/refund-quote",
                          token=carol)
    assert quote.body["fee"] == 0 and "延误" in quote.body["explanation"]


@pytest.mark.gen_test(timeout=60)
async def test_the_station_systems_cancellation_takes_the_same_path(api: ApiClient, db,
                                                                    services) -> None:
    """The sync stores a station's change on the departure as it does for a proxied one;
    the announcement that follows makes it a disruption, as for the operator's."""
    from server.services.departures import DepartureChanges

    dep = await make_departure(db, seats=6, departs_in=dt.timedelta(days=2),
                               station_id=STATION)
    dave = await app_member(api)
    order = await issued_order(api, services, dave, dep, [person("戴夫")])
    await db.departures.update_one({"_id": dep}, {"$set": {"status": "cancelled"}, "$push": {
        "unannounced": {"kind": "departure_status", "id": dep, "before": "on_sale",
                        "after": "cancelled"}}})
    await DepartureChanges(db, services.seats.events).announce()
    seen = (await api.get(f"/api/v1/orders/{order['order_no']}", token=dave)).body
    assert seen["disruption"]["kind"] == "cancelled"
    told = await db.notices.find_one({"order_no": order["order_no"],
                                      "kind": "departure_changed"})
    assert told is not None
