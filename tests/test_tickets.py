"""Refund quote and refund, void and change, over real HTTP on native and proxied stations."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json

import pytest

from server.clock import local_today
from server.security.seals import Seal
from tests.booking_support import issued_order, member, native_departure, person
from tests.inventory_support import make_departure
from tests.support import TEST_SECRETS, ApiClient


@pytest.mark.gen_test(timeout=60)
async def test_quote_then_refund_each_ticket(api: ApiClient, db, services) -> None:
    token = await member(api)
    dep = await native_departure(db, 7)
    before = (await api.get(f"/api/v1/departures/{dep['_id']}")).body["remaining"]
    order = await issued_order(api, services, token, dep["_id"], [person(), person()])
    first, second = order["tickets"]
    quote = await api.get(f"/api/v1/tickets/{first['ticket_no']}/refund-quote", token=token)
    assert quote.status == 200 and quote.body["refundable"]
    fee = max(50, first["price"] * 10 // 100)  # ≥ 2 h before departure: 10 %, at least ¥0.5
    assert quote.body["fee"] == fee and quote.body["refund_amount"] == first["price"] - fee

    wrong = await api.post(f"/api/v1/tickets/{first['ticket_no']}/refund",
                           {"expected_fee": fee + 1}, token=token)
    assert wrong.status == 409 and wrong.error_code == "REFUND_FEE_CHANGED"
    done = await api.post(f"/api/v1/tickets/{first['ticket_no']}/refund",
                          {"expected_fee": fee}, token=token)
    assert done.status == 200 and done.body["status"] == "refunded"
    after = (await api.get(f"/api/v1/orders/{order['order_no']}", token=token)).body
    assert after["status"] == "issued"  # a partial refund: the other ticket stands
    assert [t["status"] for t in after["tickets"]] == ["refunded", "issued"]
    assert (await api.get(f"/api/v1/departures/{dep['_id']}")).body["remaining"] == before - 1
    request = await db.refund_requests.find_one({"ticket_no": first["ticket_no"]})
    assert (request["amount"], request["fee"]) == (first["price"] - fee, fee)
    again = await api.post(f"/api/v1/tickets/{first['ticket_no']}/refund", {}, token=token)
    assert again.status == 409 and again.error_code == "NOT_REFUNDABLE"

    await api.post(f"/api/v1/tickets/{second['ticket_no']}/refund", {}, token=token)
    final = (await api.get(f"/api/v1/orders/{order['order_no']}", token=token)).body
    assert final["status"] == "refunded"
    stranger = await member(api)
    hidden = await api.get(f"/api/v1/tickets/{second['ticket_no']}/refund-quote",
                           token=stranger)
    assert hidden.status == 404 and hidden.error_code == "TICKET_NOT_FOUND"


@pytest.mark.gen_test(timeout=60)
async def test_fee_tiers_and_operator_cancellation(api: ApiClient, db, services) -> None:
    token = await member(api)
    soon = await make_departure(db, seats=5, departs_in=dt.timedelta(minutes=90))
    order = await issued_order(api, services, token, soon, [person()])
    ticket = order["tickets"][0]
    quote = (await api.get(f"/api/v1/tickets/{ticket['ticket_no']}/refund-quote",
                           token=token)).body
    assert quote["fee"] == max(100, ticket["price"] * 20 // 100)  # < 2 h: 20 %, at least ¥1
    await db.departures.update_one({"_id": soon}, {"$set": {"status": "cancelled"}})
    quote = (await api.get(f"/api/v1/tickets/{ticket['ticket_no']}/refund-quote",
                           token=token)).body
    assert quote["fee"] == 0 and quote["refund_amount"] == ticket["price"]


@pytest.mark.gen_test(timeout=60)
async def test_a_signed_quote_holds_its_fee_past_the_tier_boundary(api: ApiClient, db,
                                                                     services) -> None:
    token = await member(api)
    dep = await make_departure(db, seats=5, departs_in=dt.timedelta(hours=2, minutes=5))
    order = await issued_order(api, services, token, dep, [person(), person()])
    first, second = order["tickets"]
    offer = (await api.get(f"/api/v1/tickets/{first['ticket_no']}/refund-quote",
                           token=token)).body
    assert offer["fee"] == max(50, first["price"] * 10 // 100)  # ≥ 2 h before: 10 %
    until = dt.datetime.fromisoformat(offer["valid_until"])
    assert dt.timedelta(minutes=9) < until - dt.datetime.now(dt.UTC) <= dt.timedelta(minutes=10)
    assert offer["rules_version"] and offer["tier"]["rate_bp"] == 1000
    # the two-hour boundary passes (the departure comes six minutes closer, as the clock
    # would bring it): a new quote costs 20 %, the offer in hand still 10 %
    departs = (await db.departures.find_one({"_id": dep}))["departs_at"]
    await db.departures.update_one({"_id": dep}, {"$set": {
        "departs_at": departs - dt.timedelta(minutes=6)}})
    now = (await api.get(f"/api/v1/tickets/{first['ticket_no']}/refund-quote",
                         token=token)).body
    assert now["fee"] == max(100, first["price"] * 20 // 100) > offer["fee"]
    # the offer is the ticket's own: not for the other ticket, not altered, not lapsed
    url = "/api/v1/tickets/{}/refund"
    other = await api.post(url.format(second["ticket_no"]), {"quote": offer["quote"]},
                           token=token)
    assert other.status == 422 and other.error_code == "QUOTE_INVALID", other.text
    body, _, signature = offer["quote"].rpartition(".")
    cheaper = Seal("forged-secret-of-32-characters!!", "refund quotes").wrap(
        {**_fields(body), "fee": 0})
    for bad in (f"{body}.{signature[:-1]}{'0' if signature[-1] != '0' else '1'}",
                cheaper, f"{cheaper.split('.')[0]}.{signature}", "not-a-quote"):
        refused = await api.post(url.format(first["ticket_no"]), {"quote": bad}, token=token)
        assert refused.status == 422 and refused.error_code == "QUOTE_INVALID", refused.text
    lapsed = Seal(TEST_SECRETS["KEYUN_JWT_SECRET"], "refund quotes").wrap(
        {**_fields(body), "until": int(dt.datetime.now(dt.UTC).timestamp()) - 1})
    late = await api.post(url.format(first["ticket_no"]), {"quote": lapsed}, token=token)
    assert late.status == 409 and late.error_code == "QUOTE_EXPIRED", late.text
    assert (await db.tickets.find_one({"ticket_no": first["ticket_no"]}))["status"] == "issued"
    done = await api.post(url.format(first["ticket_no"]), {"quote": offer["quote"]},
                          token=token)
    assert done.status == 200 and done.body["fee"] == offer["fee"], done.text
    assert done.body["refund_amount"] == first["price"] - offer["fee"]
    request = await db.refund_requests.find_one({"ticket_no": first["ticket_no"]})
    assert (request["amount"], request["fee"]) == (first["price"] - offer["fee"], offer["fee"])
    # without an offer the refund costs the fee of now
    plain = await api.post(url.format(second["ticket_no"]), {}, token=token)
    assert plain.status == 200 and plain.body["fee"] == max(100, second["price"] * 20 // 100)


def _fields(body: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


@pytest.mark.gen_test(timeout=60)
async def test_two_refunds_of_one_ticket_at_once(api: ApiClient, db, services) -> None:
    token = await member(api)
    dep = await native_departure(db, 8)
    order = await issued_order(api, services, token, dep["_id"], [person()])
    ticket_no = order["tickets"][0]["ticket_no"]
    results = await asyncio.gather(*[api.post(f"/api/v1/tickets/{ticket_no}/refund", {},
                                              token=token) for _ in range(4)])
    assert [r.status for r in results].count(200) == 1
    assert await db.refund_requests.count_documents({"ticket_no": ticket_no}) == 1


@pytest.mark.gen_test(timeout=60)
async def test_void_is_for_station_staff_and_audited(api: ApiClient, db, services) -> None:
    day = (local_today() + dt.timedelta(days=7)).isoformat()
    dep = await db.departures.find_one({"station_id": "440111001", "service_date": day,
                                        "status": "on_sale"})
    order = await issued_order(api, services, await member(api), dep["_id"], [person()])
    ticket_no = order["tickets"][0]["ticket_no"]
    passenger = await member(api)
    assert (await api.post(f"/api/v1/tickets/{ticket_no}/void", {"reason": "x"},
                           token=passenger)).status == 403
    staff = (await api.login("station_staff"))["token"]
    done = await api.post(f"/api/v1/tickets/{ticket_no}/void", {"reason": "售错班次"},
                          token=staff)
    assert done.status == 200 and done.body["refund_amount"] == order["amount"]
    entry = await db.audit.find_one({"action": "ticket.void", "target": ticket_no})
    assert entry["actor"]["username"] == "station_staff"
    # past the rules' void window (30 minutes after issue) it is a refund, not a void
    late = await issued_order(api, services, await member(api), dep["_id"], [person()])
    late_no = late["tickets"][0]["ticket_no"]
    await db.tickets.update_one({"ticket_no": late_no}, {"$set": {
        "issued_at": dt.datetime.now(dt.UTC) - dt.timedelta(minutes=31)}})
    refused = await api.post(f"/api/v1/tickets/{late_no}/void", {"reason": "晚了"},
                             token=staff)
    assert refused.status == 409 and refused.error_code == "VOID_WINDOW_PASSED"
    assert refused.body["error"]["minutes"] == 30


@pytest.mark.gen_test(timeout=60)
async def test_change_to_another_departure_of_the_route(api: ApiClient, db, services) -> None:
    token = await member(api)
    dep = await native_departure(db, 6, 2)
    later = await db.departures.find_one({"schedule_id": dep["schedule_id"],
                                          "service_date": (dt.date.fromisoformat(
                                              dep["service_date"]) + dt.timedelta(days=1)
                                          ).isoformat()})
    order = await issued_order(api, services, token, dep["_id"], [person()])
    ticket_no = order["tickets"][0]["ticket_no"]
    moved = await api.post(f"/api/v1/tickets/{ticket_no}/change",
                           {"departure_id": later["_id"]}, token=token)
    assert moved.status == 200, moved.text
    assert moved.body["departure_id"] == later["_id"] and moved.body["changed_from"] == ticket_no
    old = await db.tickets.find_one({"ticket_no": ticket_no})
    assert old["status"] == "changed" and old["active"] is False
    again = await api.post(f"/api/v1/tickets/{moved.body['ticket_no']}/change",
                           {"departure_id": dep["_id"]}, token=token)
    assert again.status == 409 and again.error_code == "NOT_CHANGEABLE"
    other_route = await db.departures.find_one({"route_id": {"$ne": dep["route_id"]},
                                                "service_date": dep["service_date"]})
    order2 = await issued_order(api, services, token, dep["_id"], [person()])
    bad = await api.post(f"/api/v1/tickets/{order2['tickets'][0]['ticket_no']}/change",
                         {"departure_id": other_route["_id"]}, token=token)
    assert bad.status == 409 and bad.error_code == "NOT_CHANGEABLE"


@pytest.mark.gen_test(timeout=60)
async def test_refund_at_a_proxied_station(api: ApiClient, db, services) -> None:
    token = await member(api)
    day = (local_today() + dt.timedelta(days=7)).isoformat()
    dep = await db.departures.find_one({"station_id": "441402001", "service_date": day})
    order = await issued_order(api, services, token, dep["_id"], [person()])
    before = (await api.get(f"/api/v1/departures/{dep['_id']}")).body["remaining"]
    resp = await api.post(f"/api/v1/tickets/{order['tickets'][0]['ticket_no']}/refund", {},
                          token=token)
    assert resp.status == 200
    assert (await api.get(f"/api/v1/departures/{dep['_id']}")).body["remaining"] == before + 1


async def _stuck(db, ticket_no: str, status: str, plan: dict) -> None:
    """What a process that died mid-operation (or a station that never answered) leaves."""
    ticket = await db.tickets.find_one({"ticket_no": ticket_no})
    await db.tickets.update_one({"_id": ticket["_id"]}, {"$set": {
        "status": status, "busy": {**plan, "from": ticket["status"]},
        "busy_since": dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)}})


@pytest.mark.gen_test(timeout=90)
async def test_tickets_stuck_mid_refund_are_settled_by_asking_the_station(api: ApiClient, db,
                                                                         services) -> None:
    token = await member(api)
    dep = await native_departure(db, 8, 2)
    order = await issued_order(api, services, token, dep["_id"],
                               [person(), person(), person()])
    done_there, never_sent, changing = order["tickets"]
    remaining = (await api.get(f"/api/v1/departures/{dep['_id']}")).body["remaining"]
    plan = {"fee": 50, "amount": done_there["price"] - 50, "actor": "member:x",
            "reason": "refund"}
    # 1. the station refunded, then the process died before writing it down
    ticket = await db.tickets.find_one({"ticket_no": done_there["ticket_no"]})
    await services.seats.refund(dep["_id"], ticket["sale_id"], (ticket["seat"],))
    await _stuck(db, done_there["ticket_no"], "refunding", plan)
    # 2. the process died before the station heard of it
    await _stuck(db, never_sent["ticket_no"], "refunding", plan)
    # 3. a change that never wrote its new ticket
    other = await native_departure(db, 8, 3)
    await _stuck(db, changing["ticket_no"], "changing",
                 {"target": other["_id"], "hold_id": f"C{changing['ticket_no']}",
                  "actor": "member:x"})
    assert await services.tickets.resolve_stuck() >= 3
    view = {t["ticket_no"]: t for t in (await api.get(f"/api/v1/orders/{order['order_no']}",
                                                      token=token)).body["tickets"]}
    assert view[done_there["ticket_no"]]["status"] == "refunded"
    assert view[never_sent["ticket_no"]]["status"] == "refunded"
    assert view[changing["ticket_no"]]["status"] == "issued"  # undone, as it was
    for t in (done_there, never_sent):
        request = await db.refund_requests.find_one({"_id": f"ticket:{t['ticket_no']}"})
        assert request and request["amount"] == t["price"] - 50 and request["fee"] == 50
    # both seats are back on sale, each once
    assert (await api.get(f"/api/v1/departures/{dep['_id']}")).body["remaining"] == \
        remaining + 2
    assert await services.tickets.resolve_stuck() == 0
