"""Waitlist (候补购票) over real HTTP: filed on sold-out departures, prepaid, filled in the order
filed when seats come back — exactly once, across processes — and refunded in full when not
filled by its deadline."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import pytest

from server.clock import LOCAL_TZ
from tests.booking_support import issued_order, member, person
from tests.inventory_support import make_departure
from tests.support import ApiClient
from tests.test_payments import wait_status


def _deadline(departs_at: dt.datetime, before: dt.timedelta = dt.timedelta(hours=2)) -> str:
    return (departs_at - before).astimezone(LOCAL_TZ).isoformat()


async def _file(api: ApiClient, token: str, departure_ids: list[str], people: list[dict],
                deadline: str) -> Any:
    return await api.post("/api/v1/waitlist", {
        "departure_ids": departure_ids, "passengers": people, "contact_phone": "13812345678",
        "deadline": deadline}, token=token)


async def _paid_waitlist(api: ApiClient, departure_ids: list[str], people: list[dict],
                         deadline: str) -> tuple[str, dict]:
    """A member files a waitlist order and pays it with WeChat (the sandbox confirms)."""
    token = await member(api)
    filed = await _file(api, token, departure_ids, people, deadline)
    assert filed.status == 201, filed.text
    order_no = filed.body["order_no"]
    paying = await api.post(f"/api/v1/orders/{order_no}/pay", {"method": "wechat_jsapi"},
                            token=token)
    assert paying.status == 200, paying.text
    await api.post(f"/sandbox/payments/{order_no}/confirm")
    return token, await wait_status(api, token, order_no, "waitlisted")


async def _until(services, api: ApiClient, token: str, order_no: str, status: str) -> dict:
    """Run the waitlist (beside the server's own job) until the order reaches ``status``."""
    for _ in range(50):
        await services.waitlist.run()
        got = (await api.get(f"/api/v1/orders/{order_no}", token=token)).body
        if got["status"] == status:
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"{order_no} stayed {got['status']}")


async def _remaining(api: ApiClient, departure_id: str) -> int:
    return (await api.get(f"/api/v1/departures/{departure_id}")).body["remaining"]


@pytest.mark.gen_test(timeout=180)
async def test_waitlist_fills_in_order_filed_and_refunds_the_unfilled(api: ApiClient, db,
                                                                      services) -> None:
    dep_id = await make_departure(db, seats=3, stops=2)
    dep = await db.departures.find_one({"_id": dep_id})
    holder = await member(api)
    sold = await issued_order(api, services, holder, dep_id, [person(), person(), person()])
    assert await _remaining(api, dep_id) == 0
    deadline = _deadline(dep["departs_at"])

    # bad input: seats to buy, a deadline past the sale, departures of two routes, …
    other = await make_departure(db, seats=5, stops=2)
    token = await member(api)
    has_seats = await _file(api, token, [other], [person()], deadline)
    assert has_seats.status == 409 and has_seats.error_code == "WAITLIST_SEATS_AVAILABLE"
    late = await _file(api, token, [dep_id], [person()],
                       _deadline(dep["departs_at"], dt.timedelta(hours=-1)))
    assert late.status == 422 and late.error_code == "WAITLIST_DEADLINE_INVALID"
    assert late.body["error"]["field"] == "deadline"
    naive = await _file(api, token, [dep_id], [person()], "2030-01-01T10:00:00")  # no offset
    assert naive.status == 400 and naive.body["error"]["field"] == "deadline"
    mixed = await _file(api, token, [dep_id, other], [person()], deadline)
    assert mixed.status == 422 and mixed.error_code == "WAITLIST_DEPARTURES_MIXED"
    crowd = await _file(api, token, [dep_id], [person() for _ in range(6)], deadline)
    assert crowd.status == 422 and crowd.error_code == "TOO_MANY_PASSENGERS_IN_ORDER"
    nowhere = await _file(api, token, ["DT-NOPE"], [person()], deadline)
    assert nowhere.status == 404 and nowhere.error_code == "DEPARTURE_NOT_FOUND"
    assert await db.orders.count_documents({"kind": "waitlist",
                                            "departure_id": {"$in": [dep_id, other]}}) == 0

    # three waiting, in this order: one passenger, two, one
    alice = person("候补甲")
    a_token, a = await _paid_waitlist(api, [dep_id], [alice], deadline)
    b_token, b = await _paid_waitlist(api, [dep_id], [person(), person()], deadline)
    c_token, c = await _paid_waitlist(api, [dep_id], [person()], deadline)
    assert a["kind"] == "waitlist" and a["tickets"] == [] and a["amount"] == sold["tickets"][0][
        "price"]
    place = (await api.get(f"/api/v1/waitlist/{c['order_no']}", token=c_token)).body
    assert place["waitlist"]["ahead"] == 2
    again = await _file(api, await member(api), [dep_id], [alice], deadline)
    assert again.status == 409 and again.error_code == "PASSENGER_ALREADY_WAITING"
    assert (await api.get(f"/api/v1/waitlist/{c['order_no']}", token=a_token)).status == 404

    # a seat comes back: the first in line gets it, issued
    first, second, _ = sold["tickets"]
    assert (await api.post(f"/api/v1/tickets/{first['ticket_no']}/refund", {},
                           token=holder)).status == 200
    got = await _until(services, api, a_token, a["order_no"], "issued")
    assert len(got["tickets"]) == 1 and got["tickets"][0]["passenger"]["name"] == "候补甲"
    assert got["tickets"][0]["status"] == "issued"
    # one more comes back: the next in line needs two, and the one behind it does not jump
    assert (await api.post(f"/api/v1/tickets/{second['ticket_no']}/refund", {},
                           token=holder)).status == 200
    for _ in range(5):
        await services.waitlist.run()
    assert (await api.get(f"/api/v1/orders/{c['order_no']}", token=c_token)).body[
        "status"] == "waitlisted"
    assert await _remaining(api, dep_id) == 1
    # the two-passenger order's deadline passes: refunded in full; then the next is filled
    await db.orders.update_one({"order_no": b["order_no"]}, {"$set": {
        "waitlist.deadline": dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)}})
    ended = await _until(services, api, b_token, b["order_no"], "failed")
    assert ended["tickets"] == []
    owed = await db.refund_requests.find_one({"order_no": b["order_no"]})
    assert owed["amount"] == b["amount"]
    await services.payments.execute_refunds()
    await wait_status(api, b_token, b["order_no"], "refunded")
    await _until(services, api, c_token, c["order_no"], "issued")
    assert await _remaining(api, dep_id) == 0
    live = await db.tickets.find({"departure_id": dep_id, "active": True}).to_list()
    assert len(live) == 3 and len({t["seat"] for t in live}) == 3
    # a waitlist order cancelled while it waits is refunded in full
    more = await make_departure(db, seats=1, stops=2)
    await issued_order(api, services, holder, more, [person()])
    d_token, d = await _paid_waitlist(api, [more], [person()],
                                      _deadline((await db.departures.find_one(
                                          {"_id": more}))["departs_at"]))
    cancelled = await api.post(f"/api/v1/orders/{d['order_no']}/cancel", {}, token=d_token)
    assert cancelled.status == 200 and cancelled.body["status"] == "failed", cancelled.text
    owed = await db.refund_requests.find_one({"order_no": d["order_no"]})
    assert owed["amount"] == d["amount"]


@pytest.mark.gen_test(timeout=240)
async def test_seats_coming_back_while_orders_are_filed_and_cancelled(api: ApiClient, db,
                                                                      services) -> None:
    """Four seats come back one by one while three of ten waiting orders are cancelled and
    three fillers run at once (two here, the server's own job): each seat goes once, to the
    earliest order still waiting."""
    dep_id = await make_departure(db, seats=6, stops=2)
    dep = await db.departures.find_one({"_id": dep_id})
    holder = await member(api)
    sold = await issued_order(api, services, holder, dep_id, [person() for _ in range(5)])
    sold["tickets"] += (await issued_order(api, services, holder, dep_id, [person()]))[
        "tickets"]
    deadline = dt.datetime.fromisoformat(_deadline(dep["departs_at"]))
    queue: list[tuple[str, str]] = []  # (token, order_no) in the order paid
    for i in range(10):
        token = await member(api)
        filed = await _file(api, token, [dep_id], [person(f"候补{i}")], deadline.isoformat())
        assert filed.status == 201, filed.text
        outcome = await services.orders.mark_paid(filed.body["order_no"],
                                                  "pay-" + uuid.uuid4().hex,
                                                  filed.body["amount"])
        assert outcome == "waitlisted"
        queue.append((token, filed.body["order_no"]))

    stop = asyncio.Event()

    async def filler() -> None:
        while not stop.is_set():
            await services.waitlist.run()
            await asyncio.sleep(0.01)

    async def give_back() -> None:
        for ticket in sold["tickets"][:4]:
            refunded = await api.post(f"/api/v1/tickets/{ticket['ticket_no']}/refund", {},
                                      token=holder)
            assert refunded.status == 200, refunded.text
            await asyncio.sleep(0.05)

    async def cancel(token: str, order_no: str) -> bool:
        await asyncio.sleep(0.03)
        return (await api.post(f"/api/v1/orders/{order_no}/cancel", {}, token=token)
                ).status == 200

    fillers = [asyncio.ensure_future(filler()) for _ in range(2)]
    results = await asyncio.gather(give_back(), *[cancel(*queue[i]) for i in (1, 4, 7)])
    for _ in range(100):  # until every seat back is taken
        if await _remaining(api, dep_id) == 0:
            break
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*fillers)
    await services.waitlist.run()

    cancelled = {queue[i][1] for i, ok in zip((1, 4, 7), results[1:], strict=True) if ok}
    orders = {o["order_no"]: o async for o in db.orders.find(
        {"order_no": {"$in": [n for _, n in queue]}})}
    filled = [n for _, n in queue if orders[n]["status"] in ("paid", "issued")]
    still = [n for _, n in queue if n not in cancelled]
    assert filled == still[:4], (filled, still, cancelled)  # the earliest still waiting
    assert all(orders[n]["status"] == "issued" for n in filled)
    assert all(orders[n]["status"] == "failed" for n in cancelled)
    assert all(orders[n]["status"] == "waitlisted" for n in still[4:])
    for n in filled:  # each filled once, with one ticket
        moves = [h for h in orders[n]["history"] if h["from"] == "waitlisted"]
        assert len(moves) == 1
        assert await db.tickets.count_documents({"order_no": n}) == 1
    live = await db.tickets.find({"departure_id": dep_id, "active": True}).to_list()
    assert len(live) == 6 and len({t["seat"] for t in live}) == 6
    assert await _remaining(api, dep_id) == 0
