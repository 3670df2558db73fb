"""Sandbox helpers (SPEC §4): stand-ins for what a person does on a phone.

Mounted only when Keyun runs with sandboxes (``KEYUN_SANDBOX``), never in production. They
forward to the provider sandbox, which plays WeChat and the SMS gateway.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient

from handlers.base import ApiHandler, api, route
from server.errors import DomainError
from server.schema import PHONE, obj, string

LOGIN_CODE = obj({"openid": string(1, 64)}, ["openid"])
CODE = obj({"code": string()}, ["code"])
SMS_QUERY = obj({"phone": PHONE}, ["phone"], additional=True)
CONFIRMED = obj({"order_no": string(), "out_trade_no": string(),
                 "confirmed": {"type": "boolean"}}, ["order_no", "confirmed"])


class SandboxHandler(ApiHandler):
    async def forward(self, base: str, path: str, method: str = "GET",
                      body: object = None) -> dict[str, object]:
        if not base:
            raise DomainError("SERVICE_UNAVAILABLE", "No provider sandbox is configured.")
        resp = await AsyncHTTPClient().fetch(
            base + path, method=method, raise_error=False,
            body=json.dumps(body) if body is not None else None)
        if resp.code == 404:
            raise DomainError("NOT_FOUND", "Nothing was sent to this phone.")
        if resp.code != 200:
            raise DomainError("SERVICE_UNAVAILABLE")
        return json.loads(resp.body)  # type: ignore[no-any-return]


class WeChatLoginCodeHandler(SandboxHandler):
    @api("Sandbox: what wx.login() gives the mini-program for this openid", body=LOGIN_CODE,
         response=CODE, tags=("sandbox",))
    async def post(self) -> None:
        got = await self.forward(self.config.wechat_api_base, "/_sandbox/wechat/login-code",
                                 "POST", {"openid": self.body["openid"]})
        self.write_json({"code": got["code"]})


class SmsLastHandler(SandboxHandler):
    @api("Sandbox: the code of the last SMS sent to a phone", query=SMS_QUERY, response=CODE,
         tags=("sandbox",), errors=("NOT_FOUND",))
    async def get(self) -> None:
        got = await self.forward(self.config.sms_api_base,
                                 "/_sandbox/sms/last?phone=" + quote(self.query["phone"]))
        self.write_json({"code": str(got.get("code") or "")})


class PaymentConfirmHandler(ApiHandler):
    @api("Sandbox: the payer confirms in WeChat or Alipay; the provider sandbox pays and "
         "notifies", response=CONFIRMED, tags=("sandbox",), errors=("NOT_FOUND",))
    async def post(self, order_no: str) -> None:
        attempt = await self.services.payments.waiting_attempt(order_no)
        if attempt is None or attempt["provider"] not in ("wechat", "alipay"):
            raise DomainError("NOT_FOUND", "No payment of this order is waiting.")
        if attempt["provider"] == "alipay":  # the payer's app hands Alipay the signed order
            params = attempt.get("client_params") or {}
            signed = params.get("order_string") or params.get("pay_url", "?").split("?", 1)[1]
            resp = await AsyncHTTPClient().fetch(
                self.config.alipay_gateway.removesuffix("/gateway.do") + "/_sandbox/alipay/pay",
                method="POST", body=signed, raise_error=False)
        else:
            resp = await AsyncHTTPClient().fetch(
                f"{self.config.wechatpay_api_base}/_sandbox/wechatpay/confirm", method="POST",
                body=json.dumps({"out_trade_no": attempt["out_trade_no"]}), raise_error=False)
        if resp.code != 200:
            raise DomainError("NOT_FOUND", "The payment sandbox has no such transaction.")
        self.write_json({"order_no": order_no, "out_trade_no": attempt["out_trade_no"],
                         "confirmed": True})


default_handlers = [
    route("/sandbox/wechat/login-code", WeChatLoginCodeHandler),
    route("/sandbox/sms/last", SmsLastHandler),
    route("/sandbox/payments/{order_no}/confirm", PaymentConfirmHandler),
]
