"""Disruption end to end (issue 13, item 4) over real HTTP: a cancelled or badly delayed
departure offers every passenger a fee-free refund or change (a cheaper departure refunds the
difference, a dearer one costs nothing); whoever does nothing is refunded at the departure
time; the station system's cancellation takes the same path."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from server.clock import LOCAL_TZ, local_today
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
    handled = f"/api/v1/admin/departures/{dep}/disruption"

    async def looked_after() -> dict:
        got = await api.get(handled, token=operator)
        assert got.status == 200, got.text
        return got.body

    view = await looked_after()  # the operator's view: two passengers, both still to act
    assert view["status"] == "cancelled" and view["disruption"]["kind"] == "cancelled"
    assert view["disruption"]["reason"] == "台风停运"
    assert view["tickets"] == {"affected": 2, "open": 2, "refunded": 0, "changed": 0,
                               "in_progress": 0}
    assert sum(view["notices"].values()) == 2  # one notice per order

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
    view = await looked_after()  # Alice changed bus, Bob was refunded: nobody left
    assert view["tickets"] == {"affected": 2, "open": 0, "refunded": 1, "changed": 1,
                               "in_progress": 0}
    assert view["disruption"]["settled"] is True
    staff = await api.get(handled, token=(await api.login("station_staff"))["token"])
    # the station's own staff see it too (the notices go out meanwhile: only their count
    # is the same in both reads)
    assert staff.status == 200, staff.text
    assert sum(staff.body.pop("notices").values()) == sum(view.pop("notices").values()) == 2
    assert staff.body == view
    missing = await api.get("/api/v1/admin/departures/NOPE-20300101/disruption",
                            token=operator)
    assert missing.status == 404


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


@pytest.mark.gen_test(timeout=180)
async def test_the_whole_story_on_a_route_the_operator_built(api: ApiClient, db,
                                                            services) -> None:
    """Issue 13, item 6: a route built through the API, its departures planned, two
    passengers booked; the operator cancels one day's bus; one passenger changes to the next
    day free of charge, the other does nothing and is refunded when the bus would have left."""
    from tests.test_basedata import _network

    operator = (await api.login("operator"))["token"]
    made = await _network(api, operator)
    days = [(local_today() + dt.timedelta(days=n)).strftime("%Y%m%d") for n in (2, 3)]
    dep, target = (f"{made['schedule']}-{d}" for d in days)
    assert await db.departures.count_documents({"_id": {"$in": [dep, target]}}) == 2
    erin, frank = await app_member(api), await app_member(api)
    e = await issued_order(api, services, erin, dep, [person("艾琳")])
    f = await issued_order(api, services, frank, dep, [person("弗兰克")])
    cancelled = await api.post(f"/api/v1/admin/departures/{dep}/cancel", {"reason": "暴雨停运"},
                               token=operator)
    assert cancelled.status == 200, cancelled.text
    for order, token in ((e, erin), (f, frank)):
        seen = (await api.get(f"/api/v1/orders/{order['order_no']}", token=token)).body
        assert seen["disruption"]["kind"] == "cancelled"
        assert seen["disruption"]["options"] == ["refund", "change"]
        assert await db.notices.find_one({"order_no": order["order_no"],
                                          "kind": "departure_changed"})
    quote = await api.get(f"/api/v1/tickets/{e['tickets'][0]['ticket_no']}/refund-quote",
                          token=erin)
    assert quote.body["fee"] == 0
    changed = await api.post(f"/api/v1/tickets/{e['tickets'][0]['ticket_no']}/change",
                             {"departure_id": target}, token=erin)
    assert changed.status == 200, changed.text
    assert (await db.tickets.find_one({"ticket_no": changed.body["ticket_no"]}))[
        "departure_id"] == target
    await db.departures.update_one({"_id": dep}, {"$set": {
        "disruption.deadline": dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)}})
    for _ in range(40):
        await services.tickets.settle_disruptions()
        franks = await db.tickets.find_one({"order_no": f["order_no"]})
        if franks["status"] == "refunded":
            break
        await asyncio.sleep(0.25)
    assert franks["status"] == "refunded" and franks["refund"]["fee"] == 0


@pytest.mark.gen_test(timeout=120)
async def test_a_station_system_cancelling_its_bus_takes_the_same_path(api: ApiClient, db,
                                                                      services,
                                                                      simulators) -> None:
    """A proxied station cancels a bus in its own system; Keyun's sync (asked over HTTP, as
    an operator would) picks it up and its passengers get what the operator's cancellation
    gives: the notice, the disruption with both options, a fee-free refund."""
    from tests.test_exchange import control, pick

    operator = (await api.login("operator"))["token"]
    dep = await pick(db, "rest", 20)
    grace = await app_member(api)
    order = await issued_order(api, services, grace, dep["_id"], [person("格蕾丝")])
    await control(simulators, "rest", "trip-status", {"tripId": dep["vendor_ref"],
                                                      "status": "cancelled"})
    synced = await api.post(f"/api/v1/admin/stations/{dep['station_id']}/sync", {},
                            token=operator)
    assert synced.status == 200 and synced.body["outcome"] == "ok", synced.text
    assert (await db.departures.find_one({"_id": dep["_id"]}))["status"] == "cancelled"
    seen = (await api.get(f"/api/v1/orders/{order['order_no']}", token=grace)).body
    assert seen["disruption"]["kind"] == "cancelled", seen
    assert seen["disruption"]["options"] == ["refund", "change"]
    assert await db.notices.find_one({"order_no": order["order_no"],
                                      "kind": "departure_changed"})
    ticket = order["tickets"][0]["ticket_no"]
    refunded = await api.post(f"/api/v1/tickets/{ticket}/refund", {}, token=grace)
    assert refunded.status == 200, refunded.text
    assert (await db.tickets.find_one({"ticket_no": ticket}))["refund"]["fee"] == 0
