"""The order desk over real HTTP: finding orders by every key a caller may give (phone and
ID through the blind index), scope per role, and the exceptions a person fixes — a paid
order issued again or refunded, a ticket stuck half-way through a refund settled."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from server.clock import now_ms
from tests.booking_support import app_member, native_departure, person
from tests.support import ApiClient


def _phone() -> str:
    return "139" + f"{random.randrange(10**8):08d}"


async def _order(api: ApiClient, db, offset: int, index: int, phone: str,
                 passengers: list[dict]) -> dict:
    token = await app_member(api)
    dep = await native_departure(db, offset, index)
    made = await api.post("/api/v1/orders", {"departure_id": dep["_id"], "channel": "app",
                                             "contact_phone": phone, "passengers": passengers},
                          token=token)
    assert made.status == 201, made.text
    return made.body


@pytest.mark.gen_test(timeout=90)
async def test_the_desk_pages_a_callers_orders_and_filters_them_by_status(api: ApiClient,
                                                                         db) -> None:
    operator = (await api.login("operator"))["token"]
    phone = _phone()
    caller = await app_member(api)
    made = []
    for n in range(3):
        dep = await native_departure(db, 7, n)
        got = await api.post("/api/v1/orders", {"departure_id": dep["_id"], "channel": "app",
                                                "contact_phone": phone,
                                                "passengers": [person()]}, token=caller)
        assert got.status == 201, got.text
        made.append(got.body["order_no"])
    cancelled = await api.post(f"/api/v1/orders/{made[0]}/cancel", token=caller)
    assert cancelled.status == 200, cancelled.text
    first = await api.get(f"/api/v1/admin/orders?phone={phone}&limit=2", token=operator)
    assert first.status == 200, first.text
    assert first.body["total"] == 3
    assert [o["order_no"] for o in first.body["orders"]] == made[:0:-1]  # newest first
    rest = await api.get(f"/api/v1/admin/orders?phone={phone}&limit=2&offset=2", token=operator)
    assert [o["order_no"] for o in rest.body["orders"]] == made[:1] and rest.body["total"] == 3
    waiting = await api.get(f"/api/v1/admin/orders?phone={phone}&status=pending_payment",
                            token=operator)
    assert [o["order_no"] for o in waiting.body["orders"]] == made[:0:-1]
    gone = await api.get(f"/api/v1/admin/orders?phone={phone}&status=cancelled", token=operator)
    assert [o["order_no"] for o in gone.body["orders"]] == made[:1]
    bad = await api.get(f"/api/v1/admin/orders?phone={phone}&status=lost", token=operator)
    assert bad.status == 400


@pytest.mark.gen_test(timeout=90)
async def test_the_desk_finds_orders_by_every_key_within_scope(api: ApiClient, db) -> None:
    operator = (await api.login("operator"))["token"]
    phone, somebody = _phone(), person("赵六")
    order = await _order(api, db, 6, 1, phone, [somebody, person()])

    async def find(query: str, token: str = operator) -> list[str]:
        got = await api.get(f"/api/v1/admin/orders?{query}", token=token)
        assert got.status == 200, got.text
        return [o["order_no"] for o in got.body["orders"]]

    assert await find(f"phone={phone}") == [order["order_no"]]
    assert await find(f"id_no={somebody['id_no']}") == [order["order_no"]]
    ticket_no = order["tickets"][0]["ticket_no"]
    assert await find(f"ticket_no={ticket_no}") == [order["order_no"]]
    assert await find(f"order_no={order['order_no']}&phone=13900000000") == []  # both must hold
    assert order["order_no"] in await find(f"departure_id={order['departure_id']}")
    shown = (await api.get(f"/api/v1/admin/orders?phone={phone}", token=operator)).text
    assert phone not in shown and somebody["id_no"] not in shown  # masked, always
    nothing = await api.get("/api/v1/admin/orders", token=operator)
    assert nothing.status == 422 and nothing.error_code == "CRITERION_REQUIRED"
    bad = await api.get("/api/v1/admin/orders?id_no=440106199001011234", token=operator)
    assert bad.status == 422 and bad.error_code == "INVALID_ID_NUMBER"
    # station staff see their own station's orders only; the gate has no desk
    window = (await api.login("station_staff"))["token"]  # at 440111001
    here = await db.departures.find_one({"station_id": "440111001", "status": "on_sale",
                                         "inventory": "native",
                                         "departs_at": {"$gt": now_ms() + dt.timedelta(days=1)}})
    local_phone = _phone()
    made = await api.post("/api/v1/orders", {"departure_id": here["_id"], "channel": "app",
                                             "contact_phone": local_phone,
                                             "passengers": [person()]},
                          token=await app_member(api))
    assert made.status == 201, made.text
    assert await find(f"phone={local_phone}", window) == [made.body["order_no"]]
    there = await db.departures.find_one({"station_id": {"$ne": "440111001"},
                                          "status": "on_sale", "inventory": "native",
                                          "departs_at": {"$gt": now_ms() + dt.timedelta(days=1)}})
    far_phone = _phone()
    far = await api.post("/api/v1/orders", {"departure_id": there["_id"], "channel": "app",
                                            "contact_phone": far_phone,
                                            "passengers": [person()]},
                         token=await app_member(api))
    assert far.status == 201, far.text
    assert await find(f"phone={far_phone}", window) == []  # another station's
    assert await find(f"phone={far_phone}") == [far.body["order_no"]]  # the operator sees it
    gate = (await api.login("gate"))["token"]
    assert (await api.get(f"/api/v1/admin/orders?phone={phone}", token=gate)).status == 403
    detail = await api.get(f"/api/v1/admin/orders/{order['order_no']}", token=operator)
    assert detail.status == 200 and detail.body["payments"] == [] and detail.body["history"]


@pytest.mark.gen_test(timeout=90)
async def test_the_desk_fixes_exceptions_and_says_so_in_the_audit(api: ApiClient, db,
                                                                  services) -> None:
    operator = (await api.login("operator"))["token"]
    # paid, but the station call failed: the money is in, the order not issued
    stuck = await _order(api, db, 6, 2, _phone(), [person()])
    lost = await _order(api, db, 6, 3, _phone(), [person()])
    for o in (stuck, lost):
        assert await services.orders.transition(
            o["order_no"], "paid", "payment", "paid (station down)",
            {"payment_ref": f"{o['order_no']}P01", "paid_at": now_ms()},
            from_states={"pending_payment"})
    issued = await api.post(f"/api/v1/admin/orders/{stuck['order_no']}/issue", token=operator)
    assert issued.status == 200 and issued.body["outcome"] == "issued", issued.text
    again = await api.post(f"/api/v1/admin/orders/{stuck['order_no']}/issue", token=operator)
    assert again.status == 409 and again.error_code == "ORDER_NOT_ISSUABLE"
    refunded = await api.post(f"/api/v1/admin/orders/{lost['order_no']}/refund",
                              {"reason": "车站系统停机，旅客改乘"}, token=operator)
    assert refunded.status == 200 and refunded.body["status"] == "failed", refunded.text
    owed = await db.refund_requests.find_one({"order_no": lost["order_no"]})
    assert owed["amount"] == lost["amount"]

    # a refund that died half-way (busy, the station never told): settled at the desk
    ticket = (await db.tickets.find_one({"order_no": stuck["order_no"]}))
    assert await services.orders.book.begin(
        ticket["_id"], "refunding", {"fee": 0, "amount": ticket["price"], "from": "issued",
                                     "actor": "member:x", "reason": "refund"},
        ["issued"], now_ms())
    settled = await api.post(f"/api/v1/admin/tickets/{ticket['ticket_no']}/settle",
                             token=operator)
    assert settled.status == 200 and settled.body == {
        "ticket_no": ticket["ticket_no"], "settled": True, "status": "refunded"}
    not_stuck = await api.post(f"/api/v1/admin/tickets/{ticket['ticket_no']}/settle",
                               token=operator)
    assert not_stuck.status == 409 and not_stuck.error_code == "TICKET_NOT_STUCK"
    trail = {(e["action"], e.get("target")) for e in (await api.get(
        "/api/v1/admin/audit?actor=stf_demo_operator&limit=200", token=operator)).body["entries"]}
    assert {("order.issue_again", stuck["order_no"]),
            ("order.refund_unissued", lost["order_no"]),
            ("ticket.settle", ticket["ticket_no"])} <= trail
