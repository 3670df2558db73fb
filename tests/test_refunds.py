"""Refunds are asynchronous, as at the real providers: the money is back only when the
provider says so (a ``REFUND.*`` notification or a refund query), a closed or abnormal
refund goes to finance's queue with an alert, and the passenger is told only when the money
is really on its way. Also: the sandbox's notifications verify with the independent
``wechatpayv3`` SDK, so the sandbox cannot drift from the real wire format."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from payments.base import Attempt, PaymentError
from payments.wechatpay import WeChatPay, WeChatPayConfig
from tests.booking_support import app_member, app_order
from tests.support import TEST_SECRETS, ApiClient
from tests.test_payments import pending_payment, sandbox, wait_refund, wait_status


async def issued_and_refunded(api: ApiClient, db, offset: int, index: int) -> dict:
    """A WeChat-paid order issued, one ticket refunded by its passenger: the request."""
    token, order, _ = await pending_payment(api, db, offset, index)
    await api.post(f"/sandbox/payments/{order['order_no']}/confirm")
    issued = await wait_status(api, token, order["order_no"], "issued")
    ticket = issued["tickets"][0]["ticket_no"]
    assert (await api.post(f"/api/v1/tickets/{ticket}/refund", {}, token=token)).status == 200
    return await db.refund_requests.find_one({"_id": f"ticket:{ticket}"})


async def refund_sent(services, db, request_id: str) -> dict:
    """Send due refunds (this module's Keyun process may send them first: its job runs
    every few seconds) and wait until this one is at the provider."""
    await services.payments.execute_refunds()
    for _ in range(100):
        request = await db.refund_requests.find_one({"_id": request_id})
        if request["status"] not in ("requested", "sending"):
            return request
        await asyncio.sleep(0.1)
    raise AssertionError(f"refund {request_id} was not sent")


async def refund_notices(db, order_no: str) -> int:
    return await db.notices.count_documents({"order_no": order_no, "kind": "refund_done"})


@pytest.mark.gen_test(timeout=90)
async def test_refund_is_processing_until_the_provider_notifies(api: ApiClient, db,
                                                                providers, services) -> None:
    await sandbox(providers, "refunds", {"delay_ms": 3000})  # the bank takes its time
    try:
        request = await issued_and_refunded(api, db, 5, 4)
        sent = await refund_sent(services, db, request["_id"])
    finally:
        await sandbox(providers, "refunds", {"delay_ms": 300})
    # WeChat answered PROCESSING: nothing is "done" and nobody is told the money is back
    assert sent["status"] == "processing", sent
    assert await refund_notices(db, request["order_no"]) == 0
    assert await db.money_movements.count_documents({"order_no": request["order_no"],
                                                     "kind": "refund"}) == 0
    done = await wait_refund(db, request["_id"])  # REFUND.SUCCESS arrived
    assert done["refund_id"]
    assert await refund_notices(db, request["order_no"]) == 1
    # the same notice delivered again changes nothing
    notice = next(n for n in reversed((await sandbox(providers, "state"))["notices"])
                  if "REFUND.SUCCESS" in n["body"])
    again = await api.request("POST", "/api/v1/payments/notify/wechat",
                              raw=notice["body"].encode(), headers=notice["headers"])
    assert again.status == 204
    assert await db.money_movements.count_documents({"order_no": request["order_no"],
                                                     "kind": "refund"}) == 1
    assert await refund_notices(db, request["order_no"]) == 1


@pytest.mark.gen_test(timeout=90)
async def test_lost_refund_notice_is_recovered_by_query(api: ApiClient, db, providers,
                                                        services) -> None:
    await sandbox(providers, "refunds", {"drop_notices": 1})
    request = await issued_and_refunded(api, db, 5, 5)
    await refund_sent(services, db, request["_id"])
    await asyncio.sleep(0.8)  # the refund succeeded at WeChat; its notice was lost
    assert (await db.refund_requests.find_one({"_id": request["_id"]}))["status"] == \
        "processing"
    assert await services.payments.follow_refunds() == 0  # too early to ask
    await db.refund_requests.update_one({"_id": request["_id"]}, {"$set": {
        "processing_at": dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)}})
    await services.payments.follow_refunds()  # (or the module's Keyun, whichever is first)
    await wait_refund(db, request["_id"])
    assert await refund_notices(db, request["order_no"]) == 1


@pytest.mark.gen_test(timeout=120)
async def test_closed_and_abnormal_refunds_go_to_finance(api: ApiClient, db, providers,
                                                         services) -> None:
    finance = (await api.login("finance"))["token"]
    await sandbox(providers, "refunds", {"outcomes": ["CLOSED", "ABNORMAL"]})
    first = await issued_and_refunded(api, db, 5, 6)
    await refund_sent(services, db, first["_id"])  # one at a time: the outcomes go in order
    second = await issued_and_refunded(api, db, 5, 7)
    await refund_sent(services, db, second["_id"])
    held = {}
    for request in (first, second):
        held[request["_id"]] = await wait_refund(db, request["_id"], "attention")
        assert await refund_notices(db, request["order_no"]) == 0  # not told: no money yet
    assert {h["provider_state"] for h in held.values()} == {"closed", "abnormal"}
    closed, abnormal = sorted((first, second),
                              key=lambda r: held[r["_id"]]["provider_state"] != "closed")
    queue = await api.get("/api/v1/admin/refunds?status=attention", token=finance)
    assert queue.status == 200
    ids = {r["refund_id"] for r in queue.body["refunds"]}
    assert {closed["_id"], abnormal["_id"]} <= ids
    alerts = (await api.get("/api/v1/admin/alerts?kind=refund_attention",
                            token=finance)).body["alerts"]
    assert {f"refund:{closed['_id']}", f"refund:{abnormal['_id']}"} <= \
        {a["key"] for a in alerts}
    # an abnormal refund cannot simply be sent again: finance pays it another way
    refused = await api.post(f"/api/v1/admin/refunds/{abnormal['_id']}/retry",
                             {"note": "again"}, token=finance)
    assert refused.status == 409 and refused.error_code == "REFUND_NOT_RETRYABLE"
    resolved = await api.post(f"/api/v1/admin/refunds/{abnormal['_id']}/resolve",
                              {"note": "已通过银行转账退至乘客新卡"}, token=finance)
    assert resolved.status == 200 and resolved.body["status"] == "done", resolved.text
    assert await refund_notices(db, abnormal["order_no"]) == 1
    # a closed one is sent again under a new refund number, and then succeeds
    retried = await api.post(f"/api/v1/admin/refunds/{closed['_id']}/retry",
                             {"note": "重新发起"}, token=finance)
    assert retried.status == 200 and retried.body["status"] == "requested", retried.text
    first_no = (await db.refund_requests.find_one({"_id": closed["_id"]})).get("out_refund_no")
    await services.payments.execute_refunds()
    done = await wait_refund(db, closed["_id"])
    assert done["out_refund_no"] != first_no
    assert await refund_notices(db, closed["order_no"]) == 1
    open_keys = {a["key"] for a in (await api.get("/api/v1/admin/alerts",
                                                  token=finance)).body["alerts"]}
    assert f"refund:{closed['_id']}" not in open_keys
    audit = await db.audit.count_documents({"action": {"$in": ["refund.retry",
                                                               "refund.resolve"]},
                                            "target": {"$in": [closed["_id"],
                                                               abnormal["_id"]]}})
    assert audit == 2
    gate = (await api.login("gate"))["token"]
    assert (await api.get("/api/v1/admin/refunds", token=gate)).status == 403


@pytest.mark.gen_test(timeout=90)
async def test_forged_refund_notices_are_rejected(api: ApiClient, db, providers,
                                                  services) -> None:
    from tests.test_payments import forged

    await sandbox(providers, "refunds", {"drop_notices": 1})
    request = await issued_and_refunded(api, db, 5, 8)
    sent = await refund_sent(services, db, request["_id"])
    base = {"mchid": "1900000001", "out_trade_no": sent["payment_ref"],
            "out_refund_no": sent["out_refund_no"], "refund_id": "50x",
            "refund_status": "SUCCESS", "amount": {"refund": sent["amount"], "total": 1}}
    for name, payload in {"wrong amount": {**base, "amount": {"refund": 1, "total": 1}},
                          "unknown refund": {**base, "out_refund_no": "RFNOPE"},
                          "other merchant": {**base, "mchid": "1999999999"}}.items():
        headers, body = forged(providers, payload, event="REFUND.SUCCESS")
        resp = await api.request("POST", "/api/v1/payments/notify/wechat", raw=body,
                                 headers=headers)
        assert resp.status == 401, name
    assert (await db.refund_requests.find_one({"_id": request["_id"]}))["status"] == \
        "processing"


@pytest.mark.gen_test(timeout=90)
async def test_app_payments_use_the_mobile_apps_appid(api: ApiClient, db, providers) -> None:
    from tests.test_payments import forged

    token = await app_member(api)
    order = await app_order(api, db, token, 5, 9)
    pay = await api.post(f"/api/v1/orders/{order['order_no']}/pay", {"method": "wechat_app"},
                         token=token)
    assert pay.status == 200, pay.text
    assert pay.body["params"]["appid"] == "wx-keyun-app-sandbox"
    # a notice for this APP attempt naming the mini-program's appid is not ours to take
    headers, body = forged(providers, {
        "mchid": "1900000001", "appid": "wx-keyun-sandbox",
        "out_trade_no": pay.body["out_trade_no"], "transaction_id": "4201",
        "trade_state": "SUCCESS", "amount": {"total": order["amount"]}})
    wrong = await api.request("POST", "/api/v1/payments/notify/wechat", raw=body,
                              headers=headers)
    assert wrong.status == 401
    await api.post(f"/sandbox/payments/{order['order_no']}/confirm")
    await wait_status(api, token, order["order_no"], "issued")


@pytest.mark.gen_test(timeout=60)
async def test_sandbox_refuses_an_app_payment_under_the_mini_programs_appid(providers
                                                                           ) -> None:
    key_pem = Path(providers.env["KEYUN_WECHATPAY_PRIVATE_KEY_FILE"]).read_text()  # noqa: ASYNC240
    platform_pem = Path(providers.env["KEYUN_WECHATPAY_PLATFORM_PUBLIC_KEY_FILE"]).read_text()  # noqa: ASYNC240
    one_appid = WeChatPay(WeChatPayConfig(
        api_base=providers.url, mchid="1900000001", appid="wx-keyun-sandbox",
        serial_no="KEYUN-DEV-MERCHANT", private_key_pem=key_pem,
        api_v3_key=TEST_SECRETS["KEYUN_WECHATPAY_API_V3_KEY"],
        platform_serial="PUB_KEY_ID_0000000000000001", platform_public_key_pem=platform_pem,
        notify_url="http://127.0.0.1:1/notify"))  # no app appid configured: the old mistake
    with pytest.raises(PaymentError, match="PARAM_ERROR"):
        await one_appid.start(Attempt("APPID-1", "KY1", 100, "t"), "wechat_app")


@pytest.mark.gen_test(timeout=60)
async def test_sandbox_notices_verify_with_the_wechatpayv3_sdk(api: ApiClient, db,
                                                               providers) -> None:
    """An independent implementation accepts what the sandbox sends: payment and refund
    notices (headers incl. Wechatpay-Signature-Type, signature, encryption)."""
    from cryptography.hazmat.primitives import serialization
    from wechatpayv3 import WeChatPay as SdkWeChatPay
    from wechatpayv3 import WeChatPayType

    state = await sandbox(providers, "state")
    kinds = {json.loads(n["body"])["event_type"] for n in state["notices"]}
    assert "TRANSACTION.SUCCESS" in kinds and "REFUND.SUCCESS" in kinds, kinds
    platform_pem = Path(providers.env["KEYUN_WECHATPAY_PLATFORM_PUBLIC_KEY_FILE"]).read_text()  # noqa: ASYNC240
    merchant = serialization.load_pem_private_key(Path(  # noqa: ASYNC240
        providers.env["KEYUN_WECHATPAY_PRIVATE_KEY_FILE"]).read_bytes(), None)
    merchant_pem = merchant.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()).decode()
    sdk = SdkWeChatPay(WeChatPayType.MINIPROG, "1900000001", merchant_pem,
                       "KEYUN-DEV-MERCHANT", "wx-keyun-sandbox",
                       TEST_SECRETS["KEYUN_WECHATPAY_API_V3_KEY"],
                       public_key=platform_pem, public_key_id="PUB_KEY_ID_0000000000000001")
    for notice in state["notices"]:
        if abs(int(notice["headers"]["Wechatpay-Timestamp"]) - dt.datetime.now().timestamp()) \
                > 250:
            continue  # the SDK has no time window of its own, but keep to fresh ones
        result = sdk.callback(notice["headers"], notice["body"])
        assert result and result["resource"]["mchid"] == "1900000001", notice["body"][:200]
    # and a notice without the signature-type header is refused by the SDK, as by WeChat
    bare = dict(state["notices"][-1]["headers"])
    bare.pop("Wechatpay-Signature-Type")
    with pytest.raises(Exception, match="algorithm"):
        sdk.callback(bare, state["notices"][-1]["body"])


@pytest.mark.gen_test(timeout=60)
async def test_alipay_gateway_takes_get_and_odd_notices_are_4xx(api: ApiClient,
                                                                providers) -> None:
    from urllib.parse import urlencode

    from alipay.aop.api.util.SignatureUtils import get_sign_content, sign_with_rsa2

    app_key = Path(providers.env["KEYUN_ALIPAY_PRIVATE_KEY_FILE"]).read_text()  # noqa: ASYNC240
    params = {"app_id": "2021000000000001", "method": "alipay.trade.query", "format": "JSON",
              "charset": "utf-8", "sign_type": "RSA2", "version": "1.0",
              "timestamp": "2026-11-28 10:00:00",
              "biz_content": json.dumps({"out_trade_no": "NOPE"})}
    params["sign"] = sign_with_rsa2(app_key, get_sign_content(params), "utf-8")
    resp = await AsyncHTTPClient().fetch(f"{providers.url}/gateway.do?{urlencode(params)}")
    assert "ACQ.TRADE_NOT_EXIST" in resp.body.decode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    gbk = await api.request("POST", "/api/v1/payments/notify/alipay",
                            raw="out_trade_no=单号".encode("gbk") + b"\xff", headers=headers)
    assert gbk.status == 401 and gbk.error_code == "NOTIFICATION_REJECTED"


@pytest.mark.gen_test(timeout=90)
async def test_a_bad_refund_does_not_stop_the_others(api: ApiClient, db, providers,
                                                     services) -> None:
    """A record the job cannot handle is logged and counted (/metrics), and the job goes on
    with the rest."""
    good = await issued_and_refunded(api, db, 5, 10)
    # a refund owed on a payment made through a provider this deployment no longer has
    await db.payments.insert_one({
        "out_trade_no": "BAD-PROVIDER-1", "order_no": good["order_no"], "provider": "unionpay",
        "method": "unionpay", "amount": 100, "status": "paid",
        "created_at": dt.datetime.now(dt.UTC)})
    await db.refund_requests.insert_one({
        "_id": "late:BAD-PROVIDER-1", "order_no": good["order_no"], "amount": 100,
        "status": "requested", "payment_ref": "BAD-PROVIDER-1",
        "created_at": dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)})  # first in line
    await services.payments.execute_refunds()
    await wait_refund(db, good["_id"])  # the good one went through all the same
    bad = await db.refund_requests.find_one({"_id": "late:BAD-PROVIDER-1"})
    assert bad["status"] == "sending"  # left for a person or the next run, not lost
    text = (await api.get("/metrics")).text
    counted = [line for line in text.splitlines()
               if line.startswith('keyun_job_record_failures_total{job="refunds"}')]
    ours = services.failures.counts.get("refunds", 0)
    assert ours + sum(float(line.split()[-1]) for line in counted) >= 1
    await db.refund_requests.delete_one({"_id": "late:BAD-PROVIDER-1"})


@pytest.mark.gen_test(timeout=30)
async def test_a_notification_for_a_provider_not_configured_is_refused(services) -> None:
    from payments.base import NotificationRejected

    with pytest.raises(NotificationRejected, match="not configured"):
        await services.payments.notify("unionpay", {}, b"anything")


@pytest.mark.gen_test(timeout=90)
async def test_an_alipay_refund_the_provider_refuses_goes_to_finance(api: ApiClient, db,
                                                                     providers,
                                                                     services) -> None:

    await AsyncHTTPClient().fetch(f"{providers.url}/_sandbox/alipay/state", method="POST",
                                  body=json.dumps({"refund_outcomes": ["FAIL"]}))
    token = await app_member(api)
    order = await app_order(api, db, token, 5, 11)
    assert (await api.post(f"/api/v1/orders/{order['order_no']}/pay",
                           {"method": "alipay_app"}, token=token)).status == 200
    await api.post(f"/sandbox/payments/{order['order_no']}/confirm")
    issued = await wait_status(api, token, order["order_no"], "issued")
    ticket = issued["tickets"][0]["ticket_no"]
    assert (await api.post(f"/api/v1/tickets/{ticket}/refund", {}, token=token)).status == 200
    await refund_sent(services, db, f"ticket:{ticket}")
    held = await wait_refund(db, f"ticket:{ticket}", "attention")
    assert held["provider_state"] == "refused" and "SELLER_BALANCE" in held["error"]
    assert await refund_notices(db, order["order_no"]) == 0
    finance = (await api.login("finance"))["token"]
    retried = await api.post(f"/api/v1/admin/refunds/ticket:{ticket}/retry",
                             {"note": "余额已补足"}, token=finance)
    assert retried.status == 200, retried.text
    await refund_sent(services, db, f"ticket:{ticket}")  # fund_change N: until a query
    await asyncio.sleep(0.5)
    await db.refund_requests.update_one({"_id": f"ticket:{ticket}"}, {"$set": {
        "processing_at": dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)}})
    await services.payments.follow_refunds()
    await wait_refund(db, f"ticket:{ticket}")
