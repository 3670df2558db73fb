"""WeChat Pay v3 sandbox: the merchant API's paths, signatures and notifications.

It checks each request's ``WECHATPAY2-SHA256-RSA2048`` signature with the merchant's public
key, signs every answer with its own platform key (public-key mode serial), and on
``POST /_sandbox/wechatpay/confirm`` marks a transaction paid and POSTs the encrypted, signed
``TRANSACTION.SUCCESS`` notice to the merchant's ``notify_url``, retrying on a non-2xx answer
(the real schedule, compressed). Faults for tests: drop or duplicate the next notices.

Like the real platform it checks the appid of each prepay against the kind (the
mini-program's for JSAPI, the mobile app's for APP); refunds are asynchronous (answered
``PROCESSING``, settled a moment later and notified as ``REFUND.SUCCESS`` — or
``REFUND.CLOSED`` / ``REFUND.ABNORMAL`` when a test asks for it, after the delay it sets, its
notice lost if it says so — ``POST /_sandbox/wechatpay/refunds`` ``{"outcomes", "delay_ms",
"drop_notices"}``; payment-notice faults never touch refund notices), and queried at
``GET /v3/refund/domestic/refunds/{out_refund_no}``; a day's trade bill exists from the next
day on (``NO_STATEMENT_EXIST`` for a day without trades). ``POST /_sandbox/wechatpay/age``
moves a paid transaction's time (and its refunds') back by whole days (and ``seconds``), so
tests can reconcile "yesterday".
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import random
import re
import secrets
import time
import uuid
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.web import RequestHandler

from payments.wechatpay import encrypt_resource, load_private, load_public, sign, verify

RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)  # real: 15 s, 15 s, 30 s, 3 min, 10 min, …


class WxPayState:
    def __init__(self, mchid: str, merchant_public_pem: str, platform_private_pem: str,
                 platform_serial: str, api_v3_key: str, cert_serial: str = "",
                 appids: dict[str, str] | None = None) -> None:
        self.mchid = mchid
        self.appids = appids or {}  # kind (jsapi, app) -> the appid it must be made under
        # certificate mode: answers name the certificate's serial instead of the key id
        self.cert_serial = cert_serial
        self.merchant_key = load_public(merchant_public_pem)
        self.platform_key = load_private(platform_private_pem)
        self.platform_serial = platform_serial
        self.v3 = api_v3_key.encode()
        self.transactions: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self.faults = {"drop": 0, "duplicate": 0, "delay_ms": 0, "reorder": 0}
        self.refund_outcomes: list[str] = []  # the next refunds end so (CLOSED, ABNORMAL)
        self.refund_delay = 0.3  # seconds from PROCESSING to the outcome
        self.drop_refund_notices = 0  # refund notices to lose (payment notices: faults)
        self.notices: list[dict[str, Any]] = []  # the last notices sent (headers, body)
        self.held: list[dict[str, Any]] = []  # notices kept back to be sent out of order
        self.delivered: list[str] = []

    def signed_headers(self, body: bytes) -> dict[str, str]:
        ts, nonce = str(int(time.time())), secrets.token_hex(16)
        return {"Wechatpay-Timestamp": ts, "Wechatpay-Nonce": nonce,
                "Wechatpay-Serial": self.cert_serial or self.platform_serial,
                "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
                "Wechatpay-Signature": sign(self.platform_key,
                                            f"{ts}\n{nonce}\n{body.decode()}\n")}


class WxPayHandler(RequestHandler):
    @property
    def wx(self) -> WxPayState:
        return self.application.settings["wxpay"]  # type: ignore[no-any-return]

    def answer(self, status: int, payload: dict[str, Any] | None = None) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode() if payload is not None else b""
        self.set_status(status)
        for key, value in self.wx.signed_headers(body).items():
            self.set_header(key, value)
        if body:
            self.set_header("Content-Type", "application/json")
        self.finish(body)

    def prepare(self) -> None:
        header = self.request.headers.get("Authorization", "")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', header))
        message = (f"{self.request.method}\n{self.request.uri}\n{fields.get('timestamp')}\n"
                   f"{fields.get('nonce_str')}\n{self.request.body.decode()}\n")
        ok = header.startswith("WECHATPAY2-SHA256-RSA2048 ") and \
            fields.get("mchid") == self.wx.mchid and \
            abs(time.time() - int(fields.get("timestamp") or 0)) < 300 and \
            verify(self.wx.merchant_key, message.encode(), fields.get("signature", ""))
        if not ok:
            self.answer(401, {"code": "SIGN_ERROR", "message": "签名错误"})

    def body(self) -> dict[str, Any]:
        return json.loads(self.request.body or b"{}")  # type: ignore[no-any-return]


class PrepayHandler(WxPayHandler):
    def post(self, kind: str) -> None:
        b = self.body()
        no = str(b.get("out_trade_no", ""))
        total = (b.get("amount") or {}).get("total")
        if b.get("mchid") != self.wx.mchid or not no or not isinstance(total, int) or \
                total <= 0 or (kind == "jsapi" and not (b.get("payer") or {}).get("openid")) \
                or (kind == "h5" and not ((b.get("scene_info") or {}).get("h5_info")
                                          and b["scene_info"].get("payer_client_ip"))):
            self.answer(400, {"code": "PARAM_ERROR", "message": "参数错误"})
            return
        expected = self.wx.appids.get(kind)
        if expected and b.get("appid") != expected:  # an APP pay under the mini-program's
            self.answer(400, {"code": "PARAM_ERROR",  # appid, or the other way round
                              "message": "appid和mch_id不匹配" if b.get("appid") not in
                              self.wx.appids.values() else "交易类型与appid不匹配"})
            return
        tx = self.wx.transactions.get(no)
        if tx is not None and tx["amount"] != total:
            self.answer(400, {"code": "INVALID_REQUEST", "message": "订单号重复"})
            return
        if tx is None:
            tx = self.wx.transactions[no] = {
                "out_trade_no": no, "appid": b.get("appid"), "mchid": self.wx.mchid,
                "amount": total, "state": "NOTPAY", "notify_url": b.get("notify_url"),
                "openid": (b.get("payer") or {}).get("openid", ""), "kind": kind,
                "prepay_id": "wx" + uuid.uuid4().hex, "transaction_id": ""}
        if kind == "h5":  # the cashier page WeChat gives a phone's browser; in the sandbox
            # the payer confirms through /sandbox/payments/<order>/confirm instead
            self.answer(200, {"h5_url": "https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb"
                                        f"?prepay_id={tx['prepay_id']}&package=sandbox"})
            return
        self.answer(200, {"prepay_id": tx["prepay_id"]})


def transaction_view(tx: dict[str, Any]) -> dict[str, Any]:
    view = {"appid": tx["appid"], "mchid": tx["mchid"], "out_trade_no": tx["out_trade_no"],
            "transaction_id": tx["transaction_id"], "trade_state": tx["state"],
            "trade_type": tx.get("kind", "jsapi").upper(), "amount": {"total": tx["amount"],
                                              "payer_total": tx["amount"], "currency": "CNY"},
            "payer": {"openid": tx["openid"]}}
    if tx["state"] == "SUCCESS":
        view["success_time"] = tx["success_time"]
    return view


class QueryHandler(WxPayHandler):
    def get(self, no: str) -> None:
        tx = self.wx.transactions.get(no)
        if tx is None:
            self.answer(404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"})
            return
        self.answer(200, transaction_view(tx))


class CloseHandler(WxPayHandler):
    def post(self, no: str) -> None:
        tx = self.wx.transactions.get(no)
        if tx is None:
            self.answer(404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"})
        elif tx["state"] == "SUCCESS":
            self.answer(400, {"code": "ORDERPAID", "message": "订单已支付"})
        else:
            tx["state"] = "CLOSED"
            self.answer(204)


def refund_view(refund: dict[str, Any], total: int) -> dict[str, Any]:
    view = {"refund_id": refund["refund_id"], "out_refund_no": refund["out_refund_no"],
            "out_trade_no": refund["out_trade_no"], "transaction_id": refund["transaction_id"],
            "channel": "ORIGINAL", "user_received_account": "支付用户零钱",
            "create_time": refund["create_time"], "status": refund["status"],
            "amount": {"refund": refund["amount"], "total": total,
                       "payer_refund": refund["amount"], "payer_total": total,
                       "currency": "CNY"}}
    if refund["status"] == "SUCCESS":
        view["success_time"] = refund["success_time"]
    return view


class RefundHandler(WxPayHandler):
    def post(self) -> None:
        b = self.body()
        out_refund_no = str(b.get("out_refund_no", ""))
        tx = self.wx.transactions.get(str(b.get("out_trade_no", "")))
        refund = (b.get("amount") or {}).get("refund")
        if tx is None or tx["state"] not in ("SUCCESS", "REFUND"):
            self.answer(400, {"code": "RESOURCE_NOT_EXISTS", "message": "订单不存在或未支付"})
            return
        existing = self.wx.refunds.get(out_refund_no)
        if existing is None:  # the same out_refund_no never pays twice
            already = sum(r["amount"] for r in self.wx.refunds.values()
                          if r["out_trade_no"] == tx["out_trade_no"] and
                          r["status"] in ("PROCESSING", "SUCCESS"))
            if not isinstance(refund, int) or refund <= 0 or already + refund > tx["amount"]:
                self.answer(400, {"code": "INVALID_REQUEST", "message": "退款金额错误"})
                return
            existing = self.wx.refunds[out_refund_no] = {
                "refund_id": "50" + uuid.uuid4().hex[:20], "out_refund_no": out_refund_no,
                "out_trade_no": tx["out_trade_no"], "transaction_id": tx["transaction_id"],
                "amount": refund, "status": "PROCESSING", "notify_url": b.get("notify_url"),
                "create_time": beijing_now()}
            outcome = self.wx.refund_outcomes.pop(0) if self.wx.refund_outcomes else "SUCCESS"
            asyncio.get_running_loop().create_task(self._settle(existing, tx, outcome))
        self.answer(200, refund_view(existing, tx["amount"]))

    async def _settle(self, refund: dict[str, Any], tx: dict[str, Any], outcome: str) -> None:
        """The bank answers a moment later; the merchant hears it by notification."""
        await asyncio.sleep(self.wx.refund_delay)
        refund["status"] = outcome
        if outcome == "SUCCESS":
            refund["success_time"] = beijing_now()
            refunded = sum(r["amount"] for r in self.wx.refunds.values()
                           if r["out_trade_no"] == tx["out_trade_no"] and
                           r["status"] == "SUCCESS")
            if refunded == tx["amount"]:
                tx["state"] = "REFUND"
        if not refund.get("notify_url"):
            return
        if self.wx.drop_refund_notices > 0:  # a lost notice: only a refund query tells
            self.wx.drop_refund_notices -= 1
            return
        payload = {"mchid": self.wx.mchid, "out_trade_no": refund["out_trade_no"],
                   "transaction_id": refund["transaction_id"],
                   "out_refund_no": refund["out_refund_no"], "refund_id": refund["refund_id"],
                   "refund_status": outcome,
                   "user_received_account": "支付用户零钱",
                   "amount": {"total": tx["amount"], "refund": refund["amount"],
                              "payer_total": tx["amount"], "payer_refund": refund["amount"]}}
        if outcome == "SUCCESS":
            payload["success_time"] = refund["success_time"]
        body = json.dumps({
            "id": str(uuid.uuid4()), "create_time": beijing_now(),
            "resource_type": "encrypt-resource", "event_type": f"REFUND.{outcome}",
            "summary": {"SUCCESS": "退款成功", "CLOSED": "退款关闭"}.get(outcome, "退款异常"),
            "resource": {**encrypt_resource(self.wx.v3, payload, "refund"),
                         "original_type": "refund"}}).encode()
        await deliver(self.wx, refund["notify_url"], body, refund["out_refund_no"])


class RefundQueryHandler(WxPayHandler):
    def get(self, out_refund_no: str) -> None:
        refund = self.wx.refunds.get(out_refund_no)
        if refund is None:
            self.answer(404, {"code": "RESOURCE_NOT_EXISTS", "message": "退款单不存在"})
            return
        tx = self.wx.transactions[refund["out_trade_no"]]
        self.answer(200, refund_view(refund, tx["amount"]))


def beijing_now() -> str:
    return dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).isoformat(timespec="seconds")


def beijing_today() -> dt.date:
    return dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()


async def deliver(wx: WxPayState, url: str, body: bytes, what: str) -> None:
    """POST a signed notice until the merchant answers 2xx (the real schedule, compressed)."""
    for delay in (0.0, *RETRY_DELAYS):
        await asyncio.sleep(delay)
        headers = {**wx.signed_headers(body), "Content-Type": "application/json"}
        wx.notices = [*wx.notices[-19:], {"headers": headers, "body": body.decode()}]
        try:
            resp = await AsyncHTTPClient().fetch(url, method="POST", body=body,
                                                 headers=headers, raise_error=False,
                                                 request_timeout=5)
            if 200 <= resp.code < 300:
                wx.delivered.append(what)
                return
        except (HTTPClientError, OSError):
            continue


BILL_HEADER = ("交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,"
               "交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,"
               "充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,"
               "费率备注")


class TradeBillHandler(WxPayHandler):
    """The day's trade bill: a download URL and the SHA1 of the file behind it."""

    def get(self) -> None:
        day = self.get_argument("bill_date", "")
        try:
            asked = dt.date.fromisoformat(day)
        except ValueError:
            self.answer(400, {"code": "PARAM_ERROR", "message": "bill_date格式错误"})
            return
        if asked >= beijing_today():  # a day's bill is made the next morning
            self.answer(400, {"code": "INVALID_REQUEST", "message": "账单日期必须早于今天"})
            return
        if not any(tx["state"] in ("SUCCESS", "REFUND") and
                   str(tx.get("success_time", "")).startswith(day)
                   for tx in self.wx.transactions.values()) and \
                not any(str(r.get("success_time", "")).startswith(day)
                        for r in self.wx.refunds.values()):
            self.answer(400, {"code": "NO_STATEMENT_EXIST", "message": "账单文件不存在"})
            return
        rows = [BILL_HEADER]
        total = 0
        for tx in self.wx.transactions.values():
            if tx["state"] not in ("SUCCESS", "REFUND") or \
                    not str(tx.get("success_time", "")).startswith(day):
                continue
            total += tx["amount"]
            fee = tx["amount"] * 6 // 1000
            cells = [tx["success_time"][:19].replace("T", " "), tx["appid"], tx["mchid"], "0",
                     "", tx["transaction_id"], tx["out_trade_no"], tx["openid"],
                     tx.get("kind", "jsapi").upper(),
                     "SUCCESS", "OTHERS", "CNY", f"{tx['amount'] / 100:.2f}", "0.00", "0", "0",
                     "0.00", "0.00", "", "", "客运车票", "", f"{fee / 100:.5f}", "0.60%",
                     f"{tx['amount'] / 100:.2f}", "0.00", ""]
            rows.append(",".join("`" + c for c in cells))
        refunded = 0
        for refund in self.wx.refunds.values():  # refund rows: the day the money went back
            if refund["status"] != "SUCCESS" or \
                    not str(refund.get("success_time", "")).startswith(day):
                continue
            tx = self.wx.transactions[refund["out_trade_no"]]
            refunded += refund["amount"]
            cells = [refund["success_time"][:19].replace("T", " "), tx["appid"], tx["mchid"],
                     "0", "", tx["transaction_id"], tx["out_trade_no"], tx["openid"],
                     tx.get("kind", "jsapi").upper(), "REFUND", "OTHERS", "CNY", "0.00", "0.00",
                     refund["refund_id"], refund["out_refund_no"],
                     f"{refund['amount'] / 100:.2f}", "0.00", "ORIGINAL", "SUCCESS", "客运车票",
                     "", "0.00000", "0.60%", "0.00", f"{refund['amount'] / 100:.2f}", ""]
            rows.append(",".join("`" + c for c in cells))
        rows.append("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额")
        rows.append(f"`{len(rows) - 2},`{total / 100:.2f},`{refunded / 100:.2f},`0.00,`0.00,"
                    f"`{total / 100:.2f},`{refunded / 100:.2f}")
        content = ("\r\n".join(rows) + "\r\n").encode()
        token = uuid.uuid4().hex
        self.application.settings["bills"][token] = content
        self.answer(200, {"hash_type": "SHA1", "hash_value": hashlib.sha1(content).hexdigest(),  # noqa: S324
                          "download_url": f"{self.request.protocol}://{self.request.host}"
                                          f"/v3/billdownload/file?token={token}"})


class BillFileHandler(WxPayHandler):
    def get(self) -> None:
        content = self.application.settings["bills"].get(self.get_argument("token", ""))
        if content is None:
            self.answer(404, {"code": "NOT_FOUND", "message": "账单不存在"})
            return
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.finish(content)


def platform_certificate(state: WxPayState) -> bytes:
    """A self-signed X.509 certificate of the platform key, serial = ``cert_serial``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA (sandbox)")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(state.platform_key.public_key())
            .serial_number(int(state.cert_serial, 16))
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .sign(state.platform_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


class CertificatesHandler(WxPayHandler):
    def get(self) -> None:
        if not self.wx.cert_serial:
            self.answer(404, {"code": "NOT_FOUND", "message": "public-key mode"})
            return
        self.wx.certificate_requests = getattr(self.wx, "certificate_requests", 0) + 1
        pem = platform_certificate(self.wx)
        nonce = secrets.token_hex(6)
        ciphertext = AESGCM(self.wx.v3).encrypt(nonce.encode(), pem, b"certificate")
        now = dt.datetime.now(dt.timezone(dt.timedelta(hours=8)))
        self.answer(200, {"data": [{
            "serial_no": self.wx.cert_serial, "effective_time": now.isoformat(),
            "expire_time": (now + dt.timedelta(days=365)).isoformat(),
            "encrypt_certificate": {"algorithm": "AEAD_AES_256_GCM", "nonce": nonce,
                                    "associated_data": "certificate",
                                    "ciphertext": base64.b64encode(ciphertext).decode()}}]})


class ControlHandler(RequestHandler):
    """Sandbox-only: the payer confirms; faults; what was refunded."""

    @property
    def wx(self) -> WxPayState:
        return self.application.settings["wxpay"]  # type: ignore[no-any-return]

    def get(self, action: str) -> None:
        self.finish({"refunds": list(self.wx.refunds.values()),
                     "delivered": self.wx.delivered, "notices": self.wx.notices,
                     "certificate_requests": getattr(self.wx, "certificate_requests", 0)})

    def post(self, action: str) -> None:
        b = json.loads(self.request.body or b"{}")
        if action == "faults":
            self.wx.faults.update({k: int(b[k]) for k in ("drop", "duplicate", "delay_ms",
                                                          "reorder") if k in b})
            self.finish({"faults": self.wx.faults})
            return
        if action == "refunds":  # how the next refunds end, e.g. {"outcomes": ["CLOSED"]},
            if "outcomes" in b:  # how long they take, how many of their notices are lost
                self.wx.refund_outcomes = [str(o) for o in b["outcomes"]]
            if "delay_ms" in b:
                self.wx.refund_delay = int(b["delay_ms"]) / 1000
            if "drop_notices" in b:
                self.wx.drop_refund_notices = int(b["drop_notices"])
            self.finish({"outcomes": self.wx.refund_outcomes,
                         "delay_ms": int(self.wx.refund_delay * 1000),
                         "drop_notices": self.wx.drop_refund_notices})
            return
        if action == "seed":  # {"day", "count", "refunds", "prefix"}: a busy past day at once
            self.finish(self._seed(str(b["day"]), int(b["count"]), int(b.get("refunds", 0)),
                                   str(b.get("prefix", "KYSEED"))))
            return
        tx = self.wx.transactions.get(str(b.get("out_trade_no", "")))
        if action == "age":
            if tx is None or not tx.get("success_time"):
                self.set_status(404)
                self.finish({"error": "no paid transaction"})
                return
            back = dt.timedelta(days=int(b.get("days", 1)), seconds=int(b.get("seconds", 0)))
            paid = dt.datetime.fromisoformat(tx["success_time"])
            tx["success_time"] = (paid - back).isoformat()
            for refund in self.wx.refunds.values():  # its refunds move with it
                if refund["out_trade_no"] == tx["out_trade_no"] and refund.get("success_time"):
                    refund["success_time"] = (dt.datetime.fromisoformat(
                        refund["success_time"]) - back).isoformat()
            self.finish({"out_trade_no": tx["out_trade_no"],
                         "success_time": tx["success_time"]})
            return
        if action != "confirm" or tx is None or tx["state"] not in ("NOTPAY", "SUCCESS"):
            self.set_status(404)
            self.finish({"error": "no payable transaction"})
            return
        if tx["state"] == "NOTPAY":
            tx.update(state="SUCCESS", transaction_id="42" + uuid.uuid4().hex[:26],
                      success_time=dt.datetime.now(dt.timezone(dt.timedelta(hours=8)))
                      .isoformat(timespec="seconds"))
        asyncio.get_running_loop().create_task(self._notify(tx))
        self.finish({"out_trade_no": tx["out_trade_no"], "trade_state": tx["state"]})

    def _seed(self, day: str, count: int, refunds: int, prefix: str) -> dict[str, Any]:
        """``count`` transactions paid during ``day`` and ``refunds`` of them refunded the
        same day (whole), as if payers had been busy: scale for reconciliation tests."""
        start = dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone(dt.timedelta(hours=8)))
        rng = random.Random(f"{day}:{count}:{prefix}")
        made, back = [], []
        for i in range(count):
            at = (start + dt.timedelta(seconds=rng.randrange(86_400))).isoformat()
            tx = {"out_trade_no": f"{prefix}{i:06d}", "transaction_id": "42" + uuid.uuid4().hex[:26],
                  "amount": rng.randrange(500, 30_000), "state": "SUCCESS", "success_time": at,
                  "appid": next(iter(self.wx.appids.values()), "wx-sandbox"),
                  "mchid": self.wx.mchid, "openid": "o-seed", "kind": "jsapi"}
            self.wx.transactions[tx["out_trade_no"]] = tx
            made.append({k: tx[k] for k in ("out_trade_no", "transaction_id", "amount",
                                            "success_time")})
        for tx in made[:refunds]:
            refund = {"refund_id": "50" + uuid.uuid4().hex[:20],
                      "out_refund_no": "RF" + tx["out_trade_no"],
                      "out_trade_no": tx["out_trade_no"], "transaction_id": tx["transaction_id"],
                      "amount": tx["amount"], "status": "SUCCESS",
                      "create_time": tx["success_time"], "success_time": tx["success_time"]}
            self.wx.refunds[refund["out_refund_no"]] = refund
            back.append({k: refund[k] for k in ("out_refund_no", "out_trade_no", "amount",
                                                "success_time")})
        return {"transactions": made, "refunds": back}

    async def _notify(self, tx: dict[str, Any]) -> None:
        wx = self.wx
        if wx.faults["drop"] > 0:
            wx.faults["drop"] -= 1
            return
        if wx.faults["delay_ms"]:
            await asyncio.sleep(wx.faults["delay_ms"] / 1000)
        if wx.faults["reorder"] > 0:  # keep notices back, then send the newest first
            wx.held.append(tx)
            if len(wx.held) < wx.faults["reorder"]:
                return
            held, wx.held, wx.faults["reorder"] = list(reversed(wx.held)), [], 0
            for earlier in held:
                await self._deliver(earlier)
            return
        copies = 1
        if wx.faults["duplicate"] > 0:
            copies, wx.faults["duplicate"] = wx.faults["duplicate"], 0
        await asyncio.gather(*[self._deliver(tx) for _ in range(copies)])

    async def _deliver(self, tx: dict[str, Any]) -> None:
        payload = {**transaction_view(tx), "success_time": tx.get("success_time")}
        body = json.dumps({
            "id": str(uuid.uuid4()), "create_time": payload["success_time"],
            "resource_type": "encrypt-resource", "event_type": "TRANSACTION.SUCCESS",
            "summary": "支付成功",
            "resource": encrypt_resource(self.wx.v3, payload, "transaction")}).encode()
        await deliver(self.wx, tx["notify_url"], body, tx["out_trade_no"])


def wxpay_routes() -> list[tuple[str, type[RequestHandler]]]:
    return [
        (r"/v3/pay/transactions/(jsapi|app|h5)", PrepayHandler),
        (r"/v3/pay/transactions/out-trade-no/([^/?]+)", QueryHandler),
        (r"/v3/pay/transactions/out-trade-no/([^/?]+)/close", CloseHandler),
        (r"/v3/refund/domestic/refunds", RefundHandler),
        (r"/v3/refund/domestic/refunds/([^/?]+)", RefundQueryHandler),
        (r"/v3/bill/tradebill", TradeBillHandler),
        (r"/v3/certificates", CertificatesHandler),
        (r"/v3/billdownload/file", BillFileHandler),
        (r"/_sandbox/wechatpay/([a-z]+)", ControlHandler),
    ]
