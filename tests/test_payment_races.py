"""Paying one order many times at once: one attempt, one debit, one provider order, no 500.

A double click, a retrying client or two tabs pay the same order concurrently. Whatever
the method, exactly one attempt is recorded, money moves once, the losers get a stable 409
(or, for an open provider attempt of the same method, its parameters again), and an outlet's
deposit stays equal to the sum of its movements.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest

from tests.booking_support import app_member, member, native_departure, person
from tests.support import ApiClient

CONCURRENT = 20


async def order_for(api: ApiClient, db, token: str, index: int, channel: str | None = None
                    ) -> dict:
    dep = await native_departure(db, 7, index)
    body = {"departure_id": dep["_id"], "contact_phone": "13812345678",
            "passengers": [person()]}
    if channel:
        body["channel"] = channel
    resp = await api.post("/api/v1/orders", body, token=token)
    assert resp.status == 201, resp.text
    return resp.body


async def pay_at_once(api: ApiClient, token: str, order_no: str, body: dict) -> list:
    return await asyncio.gather(*[api.post(f"/api/v1/orders/{order_no}/pay", body,
                                           token=token) for _ in range(CONCURRENT)])


def outlet_movements_sum(movements: list[dict]) -> int:
    sign = {"deposit": 1, "refund": 1, "payment": -1}
    return sum(sign[m["kind"]] * m["amount"] for m in movements)




@pytest.mark.gen_test(timeout=120)
async def test_twenty_concurrent_deposit_pays_debit_once(api: ApiClient, db) -> None:
    operator = (await api.login("operator"))["token"]
    finance = (await api.login("finance"))["token"]
    outlet_id = "OUTRACE" + secrets.token_hex(3).upper()
    await db.outlets.insert_one({"_id": outlet_id, "code": outlet_id, "name": "竞速代售点",
                                 "division": "440106", "credit_limit": 0, "commission_bp": 300,
                                 "status": "active"})
    username = "agent." + secrets.token_hex(3)
    created = await api.post("/api/v1/admin/staff", {"username": username,
                                                     "password": "race-password-1",
                                                     "role": "agent", "outlet_id": outlet_id},
                             token=operator)
    assert created.status == 201, created.text
    agent = (await api.login(username, "race-password-1"))["token"]
    deposit = await api.post(f"/api/v1/admin/outlets/{outlet_id}/deposits",
                             {"amount": 50_000, "reference": "RACE-1"}, token=finance)
    assert deposit.status == 200 and deposit.body["balance"] == 50_000
    for index in (0, 1, 2):
        order = await order_for(api, db, agent, index)
        answers = await pay_at_once(api, agent, order["order_no"], {"method": "agent_balance"})
        statuses = sorted(a.status for a in answers)
        assert statuses.count(200) == 1, [(a.status, a.text) for a in answers if a.status == 200]
        assert set(statuses) <= {200, 409}, statuses
        assert {a.error_code for a in answers if a.status == 409} <= {
            "PAYMENT_IN_PROGRESS", "ORDER_NOT_PAYABLE"}
        assert await db.payments.count_documents({"order_no": order["order_no"]}) == 1
        assert await db.money_movements.count_documents({"order_no": order["order_no"]}) == 1
        outlet = await db.outlets.find_one({"_id": outlet_id})
        movements = await db.money_movements.find({"outlet_id": outlet_id}).to_list()
        assert outlet["balance"] == outlet_movements_sum(movements)
    assert outlet["balance"] < 50_000


@pytest.mark.gen_test(timeout=120)
async def test_twenty_concurrent_kiosk_pays_take_one_tender(api: ApiClient, db) -> None:
    kiosk = (await api.login("kiosk"))["token"]
    for index, method in ((3, "cash"), (4, "bank_card")):
        order = await order_for(api, db, kiosk, index)
        body = {"method": method, "tendered": order["amount"] + 500} if method == "cash" \
            else {"method": method, "reference": "POS-RACE"}
        answers = await pay_at_once(api, kiosk, order["order_no"], body)
        statuses = [a.status for a in answers]
        assert statuses.count(200) == 1 and set(statuses) <= {200, 409}, \
            [(a.status, a.text) for a in answers]
        assert await db.payments.count_documents({"order_no": order["order_no"]}) == 1
        assert await db.money_movements.count_documents({"order_no": order["order_no"],
                                                         "kind": "payment"}) == 1
        stored = await db.orders.find_one({"order_no": order["order_no"]})
        assert stored["status"] == "issued"


@pytest.mark.gen_test(timeout=120)
async def test_twenty_concurrent_provider_pays_open_one_provider_order(api: ApiClient,
                                                                       db) -> None:
    cases = [("miniapp", "wechat_jsapi", await member(api)),
             ("app", "alipay_app", await app_member(api)),
             ("app", "wechat_app", await app_member(api))]
    for index, (channel, method, token) in enumerate(cases, start=5):
        order = await order_for(api, db, token, index, channel)
        answers = await pay_at_once(api, token, order["order_no"], {"method": method})
        statuses = [a.status for a in answers]
        assert 200 in statuses and set(statuses) <= {200, 409}, \
            [(a.status, a.text) for a in answers]
        # every 200 names the one attempt: the provider saw one order
        assert len({a.body["out_trade_no"] for a in answers if a.status == 200}) == 1
        assert await db.payments.count_documents({"order_no": order["order_no"]}) == 1
        # paying again later with the same method gives the same attempt back
        again = await api.post(f"/api/v1/orders/{order['order_no']}/pay", {"method": method},
                               token=token)
        assert again.status == 200
        assert again.body["out_trade_no"] == next(a.body["out_trade_no"] for a in answers
                                                  if a.status == 200)
