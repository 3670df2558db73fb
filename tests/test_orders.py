"""Orders over real HTTP against the real stores and station simulators: the passenger
journey, every bad input, idempotent create, expiry, expiry racing payment, a station that
refuses after payment, and many buyers for the last seats."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import uuid

import pytest

from server.clock import local_today
from tests.booking_support import member, native_departure, person
from tests.inventory_support import make_departure
from tests.support import ApiClient


@pytest.mark.gen_test(timeout=60)
async def test_passenger_journey_create_read_list_cancel(api: ApiClient, db) -> None:
    token = await member(api)
    saved = await api.post("/api/v1/me/passengers", person("张三"), token=token)
    dep = await native_departure(db, 3)
    before = (await api.get(f"/api/v1/departures/{dep['_id']}")).body
    resp = await api.post("/api/v1/orders", {
        "departure_id": dep["_id"], "contact_phone": "13812345678", "channel": "miniapp",
        "passengers": [{"passenger_id": saved.body["id"]},
                       person("李四", ticket_type="student")],
        "children": [{"name": "张小宝"}]}, token=token)
    assert resp.status == 201, resp.text
    order = resp.body
    assert order["status"] == "pending_payment" and order["channel"] == "miniapp"
    fares = before["fares"]
    assert order["amount"] == fares["adult"] + fares["student"]
    assert [t["ticket_type"] for t in order["tickets"]] == ["adult", "student"]
    assert all("**" in t["passenger"]["id_no"] for t in order["tickets"])
    assert order["contact_phone"] == "138****5678" and order["children"] == [{"name": "张小宝"}]
    assert len({t["ticket_no"] for t in order["tickets"]}) == 2
    assert all(t["ticket_no"].startswith(dep["station_id"]) for t in order["tickets"])
    expires = dt.datetime.fromisoformat(order["expires_at"])
    assert dt.timedelta(minutes=14) < expires - dt.datetime.now(dt.UTC) <= \
        dt.timedelta(minutes=15)
    held = (await api.get(f"/api/v1/departures/{dep['_id']}")).body
    assert held["remaining"] == before["remaining"] - 2
    assert {s["seat"] for s in held["seat_map"] if s["state"] == "held"} >= \
        {t["seat"] for t in order["tickets"]}

    assert (await api.get(f"/api/v1/orders/{order['order_no']}", token=token)).body == order
    listed = await api.get("/api/v1/orders", token=token)
    assert [o["order_no"] for o in listed.body["orders"]] == [order["order_no"]]
    stranger = await member(api)
    hidden = await api.get(f"/api/v1/orders/{order['order_no']}", token=stranger)
    assert hidden.status == 404 and hidden.error_code == "ORDER_NOT_FOUND"
    assert (await api.post(f"/api/v1/orders/{order['order_no']}/cancel", token=stranger)
            ).status == 404

    cancelled = await api.post(f"/api/v1/orders/{order['order_no']}/cancel", token=token)
    assert cancelled.status == 200 and cancelled.body["status"] == "cancelled"
    assert [h["to"] for h in cancelled.body["history"]] == ["pending_payment", "cancelled"]
    assert (await api.get(f"/api/v1/departures/{dep['_id']}")).body["remaining"] == \
        before["remaining"]
    again = await api.post(f"/api/v1/orders/{order['order_no']}/cancel", token=token)
    assert again.status == 409 and again.error_code == "ORDER_NOT_CANCELLABLE"
    # ID numbers are not stored in clear anywhere
    stored = await db.tickets.find({"order_no": order["order_no"]}).to_list()
    assert all(t["passenger"]["id_no_enc"].startswith("v1.") for t in stored)


@pytest.mark.gen_test(timeout=60)
async def test_bad_orders_get_clear_errors_and_leave_nothing(api: ApiClient, db) -> None:
    token = await member(api)
    dep = await native_departure(db, 4)
    base = {"departure_id": dep["_id"], "contact_phone": "13812345678"}
    bad_id = person()
    bad_id["id_no"] = bad_id["id_no"][:-1] + ("0" if bad_id["id_no"][-1] != "0" else "1")
    twin = person()
    soon = await make_departure(db, seats=10, departs_in=dt.timedelta(minutes=10))
    cases = [
        ({**base, "passengers": [bad_id]}, 422, "INVALID_ID_NUMBER"),
        ({**base, "departure_id": "NOPE-1", "passengers": [person()]}, 404,
         "DEPARTURE_NOT_FOUND"),
        ({**base, "passengers": [person() for _ in range(6)]}, 422,
         "TOO_MANY_PASSENGERS_IN_ORDER"),
        ({**base, "passengers": [person()], "children": [{"name": "甲"}, {"name": "乙"}]}, 422,
         "TOO_MANY_CHILDREN"),
        ({**base, "passengers": [twin, dict(twin, name="双胞胎")]}, 422,
         "DUPLICATE_PASSENGER"),
        ({**base, "passengers": [person(seat=1), person()]}, 422, "SEAT_CHOICE_INCOMPLETE"),
        ({**base, "passengers": [person()], "amount": 1}, 400, "UNKNOWN_FIELD"),
        ({**base, "passengers": [person()], "contact_phone": "12345"}, 400, "INVALID_PHONE"),
        ({**base, "passengers": []}, 400, "INVALID_VALUE"),
        ({**base, "departure_id": soon, "passengers": [person()]}, 409, "SALE_CLOSED"),
        ({**base, "passengers": [{"name": "无证"}]}, 400, "MISSING_FIELD"),
    ]
    for body, status, code in cases:
        resp = await api.post("/api/v1/orders", body, token=token)
        assert (resp.status, resp.error_code) == (status, code), (code, resp.text)
    resp = await api.post("/api/v1/orders", {**base, "passengers": [bad_id]}, token=token)
    assert resp.body["error"]["field"] == "passengers[0].id_no"
    assert await db.orders.count_documents({"departure_id": dep["_id"]}) == 0
    assert await db.tickets.count_documents({"departure_id": dep["_id"]}) == 0
    staff = (await api.login("finance"))["token"]
    assert (await api.post("/api/v1/orders", {**base, "passengers": [person()]},
                           token=staff)).status == 403


@pytest.mark.gen_test(timeout=60)
async def test_one_person_one_seat_per_departure(api: ApiClient, db) -> None:
    dep = await native_departure(db, 5)
    someone = person()
    first = await api.post("/api/v1/orders", {"departure_id": dep["_id"],
                                              "contact_phone": "13812345678",
                                              "passengers": [someone]},
                           token=await member(api))
    assert first.status == 201
    second = await api.post("/api/v1/orders", {"departure_id": dep["_id"],
                                               "contact_phone": "13912345678",
                                               "passengers": [dict(someone, name="冒名")]},
                            token=await member(api))
    assert second.status == 409 and second.error_code == "PASSENGER_ALREADY_BOOKED"
    # the same number typed with full-width digits (a phone keyboard's) is the same person
    wide = someone["id_no"].translate(str.maketrans("0123456789X", "０１２３４５６７８９Ｘ"))
    third = await api.post("/api/v1/orders", {"departure_id": dep["_id"],
                                              "contact_phone": "13912345678",
                                              "passengers": [dict(someone, id_no=wide)]},
                           token=await member(api))
    assert third.status == 409 and third.error_code == "PASSENGER_ALREADY_BOOKED", third.text
    other_day = await native_departure(db, 6)
    ok = await api.post("/api/v1/orders", {"departure_id": other_day["_id"],
                                           "contact_phone": "13812345678",
                                           "passengers": [someone]}, token=await member(api))
    assert ok.status == 201


@pytest.mark.gen_test(timeout=60)
async def test_idempotent_create(api: ApiClient, db) -> None:
    token = await member(api)
    dep = await native_departure(db, 3, 1)
    body = {"departure_id": dep["_id"], "contact_phone": "13812345678",
            "passengers": [person()]}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = await api.post("/api/v1/orders", body, token=token, headers=key)
    again = await api.post("/api/v1/orders", body, token=token, headers=key)
    assert first.status == again.status == 201
    assert again.body["order_no"] == first.body["order_no"]
    assert await db.orders.count_documents({"departure_id": dep["_id"],
                                            "member_id": {"$exists": True},
                                            "order_no": first.body["order_no"]}) == 1
    assert (await api.get("/api/v1/orders", token=token)).body["orders"][0]["order_no"] == \
        first.body["order_no"]


@pytest.mark.gen_test(timeout=60)
async def test_unpaid_order_expires_and_seats_come_back(api: ApiClient, db) -> None:
    token = await member(api)
    dep = await native_departure(db, 4, 1)
    before = (await api.get(f"/api/v1/departures/{dep['_id']}")).body["remaining"]
    order = (await api.post("/api/v1/orders", {"departure_id": dep["_id"],
                                               "contact_phone": "13812345678",
                                               "passengers": [person(), person()]},
                            token=token)).body
    await db.orders.update_one({"order_no": order["order_no"]},
                               {"$set": {"expires_at": dt.datetime.now(dt.UTC)}})
    for _ in range(50):  # the server's expiry job runs every two seconds
        got = (await api.get(f"/api/v1/orders/{order['order_no']}", token=token)).body
        if got["status"] == "expired":
            break
        await asyncio.sleep(0.2)
    assert got["status"] == "expired"
    assert {t["status"] for t in got["tickets"]} == {"released"}
    assert (await api.get(f"/api/v1/departures/{dep['_id']}")).body["remaining"] == before
    history = await db.orders.find_one({"order_no": order["order_no"]})
    assert [h["to"] for h in history["history"]].count("expired") == 1


@pytest.mark.gen_test(timeout=90)
async def test_readers_never_see_an_order_moved_without_its_tickets(api: ApiClient,
                                                                     db) -> None:
    # readers poll one order and the list as hard as they can while orders are cancelled: each
    # answer must show the order and its tickets at one moment
    token = await member(api)
    dep = await make_departure(db, seats=40, stops=2)
    numbers = []
    for _ in range(8):
        resp = await api.post("/api/v1/orders", {"departure_id": dep,
                                                 "contact_phone": "13812345678",
                                                 "passengers": [person(), person()]},
                              token=token)
        assert resp.status == 201, resp.text
        numbers.append(resp.body["order_no"])
    expect = {"pending_payment": {"held"}, "cancelled": {"released"}}
    seen: list[tuple[str, set[str]]] = []
    done = asyncio.Event()

    async def reader(path: str) -> None:
        while not done.is_set():
            body = (await api.get(path, token=token)).body
            for order in body.get("orders", [body]):
                if order["order_no"] in numbers:
                    seen.append((order["status"], {t["status"] for t in order["tickets"]}))

    async def canceller() -> None:
        try:
            for no in numbers:
                await asyncio.sleep(0.05)
                resp = await api.post(f"/api/v1/orders/{no}/cancel", token=token)
                assert resp.status == 200, resp.text
        finally:
            done.set()

    await asyncio.gather(canceller(), *[reader(f"/api/v1/orders/{no}") for no in numbers],
                         reader("/api/v1/orders?limit=20"))
    torn = [view for view in seen if view[1] != expect[view[0]]]
    assert len(seen) > 100 and not torn, (len(seen), torn[:5])


@pytest.mark.gen_test(timeout=60)
async def test_paid_orders_are_issued_at_the_station(api: ApiClient, db, services) -> None:
    token = await member(api)
    for dep_id in [(await native_departure(db, 5, 1))["_id"],
                   (await db.departures.find_one({"station_id": "440507001",
                                                  "service_date": (local_today() + dt.timedelta(
                                                      days=5)).isoformat()}))["_id"]]:
        order = (await api.post("/api/v1/orders", {"departure_id": dep_id,
                                                   "contact_phone": "13812345678",
                                                   "passengers": [person()]},
                                token=token)).body
        assert order["status"] == "pending_payment", order
        outcome = await services.orders.mark_paid(order["order_no"], "pay-1", order["amount"])
        assert outcome == "issued"
        assert await services.orders.mark_paid(order["order_no"], "pay-1",
                                               order["amount"]) == "already"
        got = (await api.get(f"/api/v1/orders/{order['order_no']}", token=token)).body
        assert got["status"] == "issued" and got["tickets"][0]["status"] == "issued"
        assert [h["to"] for h in got["history"]] == ["pending_payment", "paid", "issued"]


@pytest.mark.gen_test(timeout=60)
async def test_expiry_racing_payment_ends_one_way(api: ApiClient, db, services) -> None:
    token = await member(api)
    dep = await native_departure(db, 6, 1)
    for _ in range(5):
        order = (await api.post("/api/v1/orders", {"departure_id": dep["_id"],
                                                   "contact_phone": "13812345678",
                                                   "passengers": [person()]},
                                token=token)).body
        await db.orders.update_one({"order_no": order["order_no"]},
                                   {"$set": {"expires_at": dt.datetime.now(dt.UTC)}})
        paid, _ = await asyncio.gather(
            services.orders.mark_paid(order["order_no"], "pay-race", order["amount"]),
            services.orders.expire_due())
        final = await db.orders.find_one({"order_no": order["order_no"]})
        if paid == "late":  # expiry won: the payment must be given back
            assert final["status"] == "expired"
        else:
            assert paid == "issued" and final["status"] == "issued"
        tos = [h["to"] for h in final["history"]]
        assert not ("expired" in tos and "paid" in tos)


@pytest.mark.gen_test(timeout=60)
async def test_station_refusing_after_payment_fails_the_order_and_asks_a_refund(
        api: ApiClient, db, services, simulators) -> None:
    from tornado.httpclient import AsyncHTTPClient

    token = await member(api)
    day = (local_today() + dt.timedelta(days=6)).isoformat()
    dep = await db.departures.find_one({"station_id": "440304001", "service_date": day})
    order = (await api.post("/api/v1/orders", {"departure_id": dep["_id"],
                                               "contact_phone": "13812345678",
                                               "passengers": [person()]}, token=token)).body
    assert order["status"] == "pending_payment", order
    # the station loses the hold (restarted, cleaned up…) before the payment arrives
    await AsyncHTTPClient().fetch(f"{simulators.url('rest')}/api/locks/H{order['order_no']}",
                                  method="DELETE",
                                  headers={"Authorization": "Bearer rest-token-for-tests"})
    outcome = await services.orders.mark_paid(order["order_no"], "pay-2", order["amount"])
    assert outcome == "failed"
    got = (await api.get(f"/api/v1/orders/{order['order_no']}", token=token)).body
    assert got["status"] == "failed"
    request = await db.refund_requests.find_one({"order_no": order["order_no"]})
    assert request["amount"] == order["amount"] and request["status"] == "requested"


@pytest.mark.gen_test(timeout=120)
async def test_concurrent_buyers_for_the_last_seats(api: ApiClient, db) -> None:
    dep = await make_departure(db, seats=3, stops=2)
    tokens = [await member(api) for _ in range(10)]
    results = await asyncio.gather(*[
        api.post("/api/v1/orders", {"departure_id": dep, "contact_phone": "13812345678",
                                    "passengers": [person()]}, token=t) for t in tokens])
    statuses = sorted(r.status for r in results)
    assert statuses.count(201) == 3, [r.text for r in results][:2]
    assert all(r.error_code == "SOLD_OUT" for r in results if r.status != 201)
    seats = [r.body["tickets"][0]["seat"] for r in results if r.status == 201]
    assert sorted(seats) == [1, 2, 3]
    assert await db.orders.count_documents({"departure_id": dep}) == 3


@pytest.mark.gen_test(timeout=60)
async def test_agents_and_phone_agents_sell_on_their_channel_and_see_their_own(
        api: ApiClient, db) -> None:
    dep = await native_departure(db, 7, 3)
    agent = (await api.login("agent"))["token"]
    phone = (await api.login("phone_agent"))["token"]
    sold = await api.post("/api/v1/orders", {"departure_id": dep["_id"],
                                             "contact_phone": "13812345678",
                                             "passengers": [person()]}, token=agent)
    assert sold.status == 201 and sold.body["channel"] == "agent"
    stored = await db.orders.find_one({"order_no": sold.body["order_no"]})
    assert stored["outlet_id"] == "OUT440106001" and stored["actor"]["username"] == "agent"
    by_phone = await api.post("/api/v1/orders", {"departure_id": dep["_id"],
                                                 "contact_phone": "13912345678",
                                                 "passengers": [person()]}, token=phone)
    assert by_phone.status == 201 and by_phone.body["channel"] == "phone"
    refused = await api.post("/api/v1/orders", {"departure_id": dep["_id"], "channel": "web",
                                                "contact_phone": "13912345678",
                                                "passengers": [person()]}, token=agent)
    assert refused.status == 400 and refused.error_code == "UNKNOWN_FIELD"
    mine = [o["order_no"] for o in (await api.get("/api/v1/orders", token=agent)).body[
        "orders"]]
    assert sold.body["order_no"] in mine and by_phone.body["order_no"] not in mine
    hidden = await api.get(f"/api/v1/orders/{by_phone.body['order_no']}", token=agent)
    assert hidden.status == 404
    calls = [o["order_no"] for o in (await api.get("/api/v1/orders", token=phone)).body[
        "orders"]]
    assert by_phone.body["order_no"] in calls and sold.body["order_no"] not in calls


@pytest.mark.gen_test(timeout=60)
async def test_a_desk_remembers_its_callers_and_books_them_again(api: ApiClient, db) -> None:
    """A phone agent books a caller and two companions; the next call, the desk finds them by
    the caller's number (ID numbers masked) and books them again without reading the numbers
    out. Another desk, another number, an altered reference: nobody is found."""
    phone = (await api.login("phone_agent"))["token"]
    agent = (await api.login("agent"))["token"]
    caller = "139" + f"{secrets.randbelow(10**8):08d}"
    first, second = person("周一"), person("吴二")
    dep = await native_departure(db, 8, 1)
    booked = await api.post("/api/v1/orders", {"departure_id": dep["_id"],
                                               "contact_phone": caller,
                                               "passengers": [first, second]}, token=phone)
    assert booked.status == 201, booked.text
    found = await api.get(f"/api/v1/callers?phone={caller}", token=phone)
    assert found.status == 200, found.text
    remembered = {p["name"]: p for p in found.body["passengers"]}
    assert set(remembered) == {"周一", "吴二"}
    assert first["id_no"] not in found.text and second["id_no"] not in found.text
    assert remembered["周一"]["id_no"] == first["id_no"][:4] + "*" * 10 + first["id_no"][-4:]
    # booked again by reference, on another bus
    again = await native_departure(db, 8, 2)
    rebooked = await api.post("/api/v1/orders", {
        "departure_id": again["_id"], "contact_phone": caller,
        "passengers": [{"caller_ticket": remembered["周一"]["caller_ticket"]}]}, token=phone)
    assert rebooked.status == 201, rebooked.text
    ticket = await db.tickets.find_one({"order_no": rebooked.body["order_no"]})
    original = await db.tickets.find_one(
        {"ticket_no": remembered["周一"]["caller_ticket"]})
    assert ticket["passenger"]["id_no_index"] == original["passenger"]["id_no_index"]
    assert ticket["passenger"]["name"] == "周一"
    twice = await api.get(f"/api/v1/callers?phone={caller}", token=phone)
    assert {p["name"]: p["trips"] for p in twice.body["passengers"]} == {"周一": 2, "吴二": 1}
    # the reference works only for this caller, at this desk
    later = await native_departure(db, 8, 3)
    reference = {"caller_ticket": remembered["吴二"]["caller_ticket"]}
    for token, contact in ((phone, "13700000000"), (agent, caller)):
        refused = await api.post("/api/v1/orders", {"departure_id": later["_id"],
                                                    "contact_phone": contact,
                                                    "passengers": [reference]}, token=token)
        assert refused.status == 404 and refused.error_code == "PASSENGER_NOT_FOUND", \
            refused.text
    assert (await api.get(f"/api/v1/callers?phone={caller}", token=agent)).body == {
        "passengers": []}
    member_token = await member(api)
    assert (await api.get(f"/api/v1/callers?phone={caller}", token=member_token)).status == 403
    bad = await api.get("/api/v1/callers?phone=12", token=phone)
    assert bad.status == 400


@pytest.mark.gen_test(timeout=60)
async def test_ticket_numbers_stay_unique_when_redis_loses_the_serial_counter(
        api: ApiClient, db, stores) -> None:
    from server.app import connect_redis

    dep_id = await make_departure(db, seats=8, stops=2)
    token = await member(api)

    async def book() -> str:
        resp = await api.post("/api/v1/orders", {"departure_id": dep_id,
                                                 "contact_phone": "13812345678",
                                                 "passengers": [person()]}, token=token)
        assert resp.status == 201, resp.text
        return str(resp.body["tickets"][0]["ticket_no"])

    first = await book()
    second = await book()
    key = f"ticket_serial:{{{first[:9]}}}:{first[9:15]}"
    redis = connect_redis(stores.redis_url)
    try:
        await redis.delete(key)  # Redis lost it (restart without persistence)
        third = await book()
        await redis.set(key, 1)  # or came back from an old snapshot
        fourth = await book()
    finally:
        await redis.aclose()
    numbers = [first, second, third, fourth]
    assert len(set(numbers)) == 4 and numbers == sorted(numbers), numbers
