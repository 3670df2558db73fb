"""Passenger notices (C5): sent by the Keyun process's dispatcher through the provider
sandbox — WeChat subscribe message when the passenger accepts them, SMS otherwise — after the
change is stored, retried on failure, never twice for one event."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from devstack.embedded import free_port
from notify.dispatch import NoticeDispatcher
from notify.sms import HttpSmsProvider
from server.clock import local_today
from tests.booking_support import native_departure, person
from tests.support import ApiClient
from tests.test_exchange import control
from tests.ws_support import Ws

PHONE = "13912345678"


async def sandbox_get(providers, path: str) -> dict[str, Any]:
    resp = await AsyncHTTPClient().fetch(f"{providers.url}{path}")
    return json.loads(resp.body)  # type: ignore[no-any-return]


async def wechat_member(api: ApiClient, providers, accepts: bool = True) -> tuple[str, str]:
    openid = "o-" + secrets.token_hex(8)
    if not accepts:
        await AsyncHTTPClient().fetch(f"{providers.url}/_sandbox/wechat/refuse", method="POST",
                                      body=json.dumps({"openid": openid}))
    code = (await api.post("/sandbox/wechat/login-code", {"openid": openid})).body["code"]
    return openid, (await api.post("/api/v1/auth/wechat", {"code": code})).body["token"]


async def paid_order(api: ApiClient, token: str, departure_id: str) -> dict[str, Any]:
    order = (await api.post("/api/v1/orders", {"departure_id": departure_id,
                                               "contact_phone": PHONE, "channel": "miniapp",
                                               "passengers": [person()]}, token=token)).body
    assert order["status"] == "pending_payment", order
    pay = await api.post(f"/api/v1/orders/{order['order_no']}/pay",
                         {"method": "wechat_jsapi"}, token=token)
    assert pay.status == 200, pay.text
    assert (await api.post(f"/sandbox/payments/{order['order_no']}/confirm")).status == 200
    for _ in range(100):
        got = (await api.get(f"/api/v1/orders/{order['order_no']}", token=token)).body
        if got["status"] == "issued":
            return got  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)
    raise AssertionError(f"order stayed {got['status']}")


async def sent_notice(db, key: str, within: float = 15.0) -> dict[str, Any]:
    for _ in range(int(within * 10)):
        notice = await db.notices.find_one({"_id": key})
        if notice and notice["status"] in ("sent", "failed"):
            return notice  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)
    raise AssertionError(f"notice {key} not sent: {notice}")


def sms_for(messages: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return [m for m in messages if m["out_id"] == key]


@pytest.mark.gen_test(timeout=90)
async def test_issued_and_refunded_by_wechat_subscribe_message(api, keyun, db,
                                                               providers) -> None:
    openid, token = await wechat_member(api, providers)
    dep = await native_departure(db, 9, 5)
    order = await paid_order(api, token, dep["_id"])
    notice = await sent_notice(db, f"ticket_issued:{order['order_no']}")
    assert notice["status"] == "sent" and notice["via"] == "wechat"
    delivered = (await sandbox_get(providers, f"/_sandbox/wechat/messages?openid={openid}")
                 )["messages"]
    assert [m["template_id"] for m in delivered] == ["KY-TICKET-ISSUED"]
    assert delivered[0]["data"]["character_string1"]["value"] == order["order_no"]
    assert delivered[0]["page"].endswith(order["order_no"])
    sms = (await sandbox_get(providers, f"/_sandbox/sms/messages?phone={PHONE}"))["messages"]
    assert sms_for(sms, notice["_id"]) == []  # WeChat delivered: no SMS as well

    ticket = order["tickets"][0]
    quote = (await api.get(f"/api/v1/tickets/{ticket['ticket_no']}/refund-quote",
                           token=token)).body
    done = await api.post(f"/api/v1/tickets/{ticket['ticket_no']}/refund",
                          {"expected_fee": quote["fee"]}, token=token)
    assert done.status == 200, done.text
    refunded = await sent_notice(db, f"refund_done:ticket:{ticket['ticket_no']}", within=30)
    assert refunded["via"] == "wechat" and refunded["params"]["amount"] == \
        quote["refund_amount"]
    delivered = (await sandbox_get(providers, f"/_sandbox/wechat/messages?openid={openid}")
                 )["messages"]
    assert [m["template_id"] for m in delivered] == ["KY-TICKET-ISSUED", "KY-REFUND-DONE"]


@pytest.mark.gen_test(timeout=90)
async def test_sms_when_wechat_is_refused_and_never_twice(api, keyun, db, providers,
                                                          services) -> None:
    _, token = await wechat_member(api, providers, accepts=False)
    dep = await native_departure(db, 9, 6)
    order = await paid_order(api, token, dep["_id"])
    key = f"ticket_issued:{order['order_no']}"
    notice = await sent_notice(db, key)
    assert notice["status"] == "sent" and notice["via"] == "sms"
    sms = (await sandbox_get(providers, f"/_sandbox/sms/messages?phone={PHONE}"))["messages"]
    [message] = sms_for(sms, key)
    assert message["template"] == "ticket_issued"
    assert message["params"]["order_no"] == order["order_no"]

    # the same event queued again changes nothing
    assert not await services.orders.notices.enqueue(key, "ticket_issued", order["order_no"],
                                                     {})
    # a worker that died after sending leaves a stale claim: the retry is not a second SMS
    await db.notices.update_one({"_id": key}, {"$set": {
        "status": "sending", "claimed_at": dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)}})
    await services.notices.run()
    assert (await db.notices.find_one({"_id": key}))["status"] == "sent"
    sms = (await sandbox_get(providers, f"/_sandbox/sms/messages?phone={PHONE}"))["messages"]
    assert len(sms_for(sms, key)) == 1


@pytest.mark.gen_test(timeout=60)
async def test_a_failed_send_is_retried_with_backoff(api, db, services, providers,
                                                     keyun) -> None:
    from server.security.pii import PiiVault
    from tests.support import TEST_SECRETS

    _, token = await wechat_member(api, providers, accepts=False)
    dep = await native_departure(db, 9, 7)
    order = (await api.post("/api/v1/orders", {"departure_id": dep["_id"],
                                               "contact_phone": PHONE, "channel": "miniapp",
                                               "passengers": [person()]}, token=token)).body
    key = f"payment_expiring:{order['order_no']}"
    vault = PiiVault.from_config(TEST_SECRETS["KEYUN_PII_KEYS"],
                                 TEST_SECRETS["KEYUN_PII_INDEX_KEY"])
    down = NoticeDispatcher(db, vault, HttpSmsProvider(f"http://127.0.0.1:{free_port()}", "k",
                                                       timeout=1), None, {})
    # claimed by this dispatcher (the server's job only takes pending ones)
    now = dt.datetime.now(dt.UTC)
    notice = {"_id": key, "kind": "payment_expiring", "order_no": order["order_no"],
              "params": {"expires_at": order["expires_at"]}, "status": "sending",
              "attempts": 1, "next_at": now, "created_at": now, "claimed_at": now}
    await db.notices.insert_one(notice)
    await down._deliver(notice)
    failed = await db.notices.find_one({"_id": key})
    assert failed["status"] == "pending" and "sms" in failed["error"]
    assert failed["next_at"] > dt.datetime.now(dt.UTC)  # backed off, not hammered
    await db.notices.update_one({"_id": key}, {"$set": {"next_at": dt.datetime.now(dt.UTC)}})
    notice = await sent_notice(db, key)  # the server's dispatcher, provider up
    assert notice["status"] == "sent" and notice["via"] == "sms"


@pytest.mark.gen_test(timeout=90)
async def test_a_departure_the_station_cancels_tells_its_passengers_and_watchers(
        api, keyun, db, providers, services, simulators) -> None:
    openid, token = await wechat_member(api, providers)
    day = (local_today() + dt.timedelta(days=5)).isoformat()
    deps = await db.departures.find({"station_id": "440304001", "service_date": day,
                                     "status": "on_sale"}).sort("_id", -1).to_list()
    dep = deps[0]
    order = await paid_order(api, token, dep["_id"])
    watcher = await Ws.connect(keyun.base_url)
    try:
        await watcher.subscribe(f"departure:{dep['_id']}")
        await control(simulators, "rest", "trip-status", {"tripId": dep["vendor_ref"],
                                                          "status": "cancelled"})
        await services.sync.sync_station("440304001")
        event, _ = await watcher.until(lambda f: f["type"] == "event"
                                       and f["event"] == "departure")
        assert event["data"]["after"] == "cancelled"
        key = f"departure_changed:{dep['_id']}:departure_status:cancelled:{order['order_no']}"
        notice = await sent_notice(db, key)
        assert notice["via"] == "wechat"
        delivered = (await sandbox_get(providers,
                                       f"/_sandbox/wechat/messages?openid={openid}"))["messages"]
        assert delivered[-1]["template_id"] == "KY-DEPARTURE-CHANGED"
        assert delivered[-1]["data"]["thing3"]["value"] == "班次已取消"
        # the next sync sees no change: nothing new is queued
        await services.sync.sync_station("440304001")
        assert await db.notices.count_documents({"order_no": order["order_no"],
                                                 "kind": "departure_changed"}) == 1
        assert (await db.departures.find_one({"_id": dep["_id"]})).get("unannounced") == []

        # a process died after storing a change and before telling anyone: the change waits
        # in the departure document, and the next sync run tells it
        later = {"kind": "departure_time", "id": dep["_id"], "before": "08:00",
                 "after": "2030-01-01T09:30:00+08:00"}
        await db.departures.update_one({"_id": dep["_id"]}, {"$push": {"unannounced": later}})
        await services.sync.sync_station("440304001")
        key = f"departure_changed:{dep['_id']}:departure_time:{later['after']}:" \
              f"{order['order_no']}"
        assert (await sent_notice(db, key))["params"]["change"] == "departure_time"
        assert (await db.departures.find_one({"_id": dep["_id"]})).get("unannounced") == []
    finally:
        watcher.close()
        await control(simulators, "rest", "trip-status", {"tripId": dep["vendor_ref"],
                                                          "status": "on_sale"})


@pytest.mark.gen_test(timeout=60)
async def test_an_unpaid_order_near_its_timeout_is_reminded_once(api, keyun, db, providers,
                                                                services) -> None:
    openid, token = await wechat_member(api, providers)
    dep = await native_departure(db, 9, 8)
    order = (await api.post("/api/v1/orders", {"departure_id": dep["_id"],
                                               "contact_phone": PHONE, "channel": "miniapp",
                                               "passengers": [person()]}, token=token)).body
    assert await services.orders.warn_expiring() == 0  # fresh: the buyer is still paying
    now = dt.datetime.now(dt.UTC)
    await db.orders.update_one({"order_no": order["order_no"]}, {"$set": {
        "created_at": now - dt.timedelta(minutes=11),
        "expires_at": now + dt.timedelta(minutes=4)}})
    await services.orders.warn_expiring()  # (or the server's reminder job got there first)
    assert await services.orders.warn_expiring() == 0  # once
    notice = await sent_notice(db, f"payment_expiring:{order['order_no']}")
    assert notice["via"] == "wechat"
    delivered = (await sandbox_get(providers, f"/_sandbox/wechat/messages?openid={openid}")
                 )["messages"]
    assert [m["template_id"] for m in delivered] == ["KY-PAYMENT-EXPIRING"]
    assert await db.notices.count_documents({"order_no": order["order_no"]}) == 1
