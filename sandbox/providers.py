"""Sandbox of the outside providers a passenger touches: WeChat login, SMS, WeChat Pay (and,
beside them, the ministry's exchange platform and the 运政 system: ``sandbox.ministry``).

    STATION_SIM_SECRET=… python -m sandbox.providers --port 9200

WeChat (same paths, parameters and answers as api.weixin.qq.com):
- ``GET /cgi-bin/token?grant_type=client_credential&appid=&secret=`` →
  ``{"access_token", "expires_in": 7200}`` (wechatpy fetches one even for code2session)
- ``GET /sns/jscode2session?appid=&secret=&js_code=&grant_type=authorization_code`` →
  ``{"openid", "session_key"}``, or ``{"errcode": 40029, "errmsg": "invalid code"}``; a code
  works once and for five minutes, as ``wx.login()`` codes do.

- ``POST /cgi-bin/message/subscribe/send?access_token=`` ``{"touser", "template_id", "page",
  "data"}`` → ``{"errcode": 0, "errmsg": "ok", "msgid"}``; errcode 43101 when the user has
  not accepted the template (``/_sandbox/wechat/refuse``), 40001 for a bad token.

SMS gateway: ``POST /sms/v1/send`` with ``Authorization: Bearer <key>`` and
``{"phone", "template", "params", "out_id"}`` → ``{"message_id"}``; a second message with an
``out_id`` already seen is not sent again (the first one's id comes back).

Electronic invoices (``payments/invoicing.py``): ``POST /einvoice/v1/invoices`` with
``Authorization: Bearer <key>`` → ``{"invoice_no", "issued_at"}``; a ``request_id`` seen
before gets its first answer; a red invoice must name an issued blue one (``original_no``)
and reverse its total exactly. ``GET /_sandbox/einvoice/issued`` → every invoice issued.

Sandbox controls (what a person would do on a phone): ``POST /_sandbox/wechat/login-code``
``{"openid"}`` → ``{"code"}`` (``wx.login()``), ``GET /_sandbox/sms/last?phone=`` → the last
message sent to that phone, ``GET /_sandbox/sms/messages?phone=`` → all of them,
``POST /_sandbox/wechat/refuse`` ``{"openid"}`` (the passenger declines subscribe messages),
``GET /_sandbox/wechat/messages?openid=`` → subscribe messages delivered to that user.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import uuid
from typing import Any

from tornado.web import Application, RequestHandler

from sandbox.station_rest import serve

CODE_TTL = dt.timedelta(minutes=5)


class State:
    def __init__(self, appid: str, app_secret: str, sms_key: str,
                 einvoice_key: str = "") -> None:
        self.einvoice_key = einvoice_key
        self.invoices: dict[str, dict[str, Any]] = {}  # by request_id
        self.appid = appid
        self.app_secret = app_secret
        self.sms_key = sms_key
        self.codes: dict[str, tuple[str, dt.datetime]] = {}
        self.tokens: set[str] = set()
        self.sms: dict[str, dict[str, Any]] = {}
        self.sms_count = 0
        self.sms_log: list[dict[str, Any]] = []
        self.sms_out_ids: dict[str, str] = {}
        self.refused: set[str] = set()
        self.subscribe_log: list[dict[str, Any]] = []


class Base(RequestHandler):
    @property
    def state(self) -> State:
        return self.application.settings["state"]  # type: ignore[no-any-return]

    def reply(self, payload: dict[str, Any], status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(payload, ensure_ascii=False))


class TokenHandler(Base):
    def get(self) -> None:
        if self.get_argument("appid", "") != self.state.appid or \
                self.get_argument("secret", "") != self.state.app_secret:
            self.reply({"errcode": 40013, "errmsg": "invalid appid or secret"})
            return
        token = secrets.token_urlsafe(32)
        self.state.tokens.add(token)
        self.reply({"access_token": token, "expires_in": 7200})


class Code2SessionHandler(Base):
    def get(self) -> None:
        if self.get_argument("appid", "") != self.state.appid or \
                self.get_argument("secret", "") != self.state.app_secret:
            self.reply({"errcode": 40013, "errmsg": "invalid appid"})
            return
        if self.get_argument("grant_type", "") != "authorization_code":
            self.reply({"errcode": 40002, "errmsg": "invalid grant_type"})
            return
        found = self.state.codes.pop(self.get_argument("js_code", ""), None)
        if found is None or found[1] < dt.datetime.now(dt.UTC):
            self.reply({"errcode": 40029, "errmsg": "invalid code"})
            return
        self.reply({"openid": found[0], "session_key": secrets.token_urlsafe(16)})


class LoginCodeHandler(Base):
    def post(self) -> None:
        openid = str(json.loads(self.request.body or b"{}").get("openid", ""))
        if not openid:
            self.reply({"error": "openid required"}, 400)
            return
        code = secrets.token_hex(16)
        self.state.codes[code] = (openid, dt.datetime.now(dt.UTC) + CODE_TTL)
        self.reply({"code": code})


class SmsSendHandler(Base):
    def post(self) -> None:
        if self.request.headers.get("Authorization") != f"Bearer {self.state.sms_key}":
            self.reply({"code": "Unauthorized", "message": "bad key"}, 401)
            return
        try:
            body = json.loads(self.request.body)
            phone, template, params = body["phone"], body["template"], body.get("params", {})
        except (ValueError, KeyError):
            self.reply({"code": "BadRequest", "message": "phone and template required"}, 400)
            return
        out_id = str(body.get("out_id") or "")
        if out_id and out_id in self.state.sms_out_ids:
            self.reply({"message_id": self.state.sms_out_ids[out_id]})
            return
        self.state.sms_count += 1
        message_id = uuid.uuid4().hex
        if out_id:
            self.state.sms_out_ids[out_id] = message_id
        message = {"message_id": message_id, "phone": phone, "template": template,
                   "params": params, "code": params.get("code"), "out_id": out_id,
                   "sent_at": dt.datetime.now(dt.UTC).isoformat()}
        self.state.sms[phone] = message
        self.state.sms_log.append(message)
        self.reply({"message_id": message_id})


class SmsLastHandler(Base):
    def get(self) -> None:
        found = self.state.sms.get(self.get_argument("phone", ""))
        if found is None:
            self.reply({"error": "no message to this phone"}, 404)
            return
        self.reply(found)


class SmsMessagesHandler(Base):
    def get(self) -> None:
        phone = self.get_argument("phone", "")
        self.reply({"messages": [m for m in self.state.sms_log if m["phone"] == phone]})


class SubscribeSendHandler(Base):
    def post(self) -> None:
        if self.get_argument("access_token", "") not in self.state.tokens:
            self.reply({"errcode": 40001, "errmsg": "invalid credential, access_token is invalid"})
            return
        try:
            body = json.loads(self.request.body)
            openid, template, data = body["touser"], body["template_id"], body["data"]
        except (ValueError, KeyError):
            self.reply({"errcode": 47001, "errmsg": "data format error"})
            return
        if openid in self.state.refused:
            self.reply({"errcode": 43101, "errmsg": "user refuse to accept the msg"})
            return
        if not isinstance(data, dict) or not all(
                isinstance(v, dict) and "value" in v for v in data.values()):
            self.reply({"errcode": 47003, "errmsg": "argument invalid! data.value"})
            return
        msgid = secrets.randbelow(10**12)
        self.state.subscribe_log.append({"openid": openid, "template_id": template,
                                         "page": body.get("page", ""), "data": data,
                                         "msgid": msgid})
        self.reply({"errcode": 0, "errmsg": "ok", "msgid": msgid})


class RefuseHandler(Base):
    def post(self) -> None:
        self.state.refused.add(str(json.loads(self.request.body or b"{}").get("openid", "")))
        self.reply({"ok": True})


class SubscribeMessagesHandler(Base):
    def get(self) -> None:
        openid = self.get_argument("openid", "")
        self.reply({"messages": [m for m in self.state.subscribe_log
                                 if m["openid"] == openid]})


class InvoiceIssueHandler(Base):
    def post(self) -> None:
        if not self.state.einvoice_key or self.request.headers.get(
                "Authorization", "") != f"Bearer {self.state.einvoice_key}":
            self.reply({"code": "UNAUTHORIZED"}, 401)
            return
        try:
            body = json.loads(self.request.body)
            request_id, kind, total = body["request_id"], body["kind"], int(body["total"])
            lines = body["lines"]
            title = body["buyer"]["title"]
        except (ValueError, KeyError, TypeError):
            self.reply({"code": "INVALID_REQUEST"}, 400)
            return
        seen = self.state.invoices.get(request_id)
        if seen is not None:
            self.reply({"invoice_no": seen["invoice_no"], "issued_at": seen["issued_at"]})
            return
        if not title or sum(int(ln["amount"]) for ln in lines) != total or \
                (kind == "blue") != (total > 0):
            self.reply({"code": "INVALID_AMOUNTS"}, 422)
            return
        if kind == "red":
            original = next((i for i in self.state.invoices.values()
                             if i["invoice_no"] == body.get("original_no")), None)
            if original is None or original["total"] != -total or original.get("reversed"):
                self.reply({"code": "ORIGINAL_NOT_REVERSIBLE"}, 422)
                return
            original["reversed"] = True
        now = dt.datetime.now(dt.timezone(dt.timedelta(hours=8)))
        number = f"{now:%y}44{len(self.state.invoices) + 1:016d}"  # 全电发票号码: 20 digits
        self.state.invoices[request_id] = {**body, "invoice_no": number,
                                           "issued_at": now.isoformat()}
        self.reply({"invoice_no": number, "issued_at": now.isoformat()})


class InvoicesIssuedHandler(Base):
    def get(self) -> None:
        self.reply({"invoices": list(self.state.invoices.values())})


def make_app(state: State, wxpay: Any = None, alipay: Any = None,
             ministry: Any = None) -> Application:
    from sandbox.alipay import alipay_routes
    from sandbox.ministry import ministry_routes
    from sandbox.wechatpay import wxpay_routes

    return Application([
        *(wxpay_routes() if wxpay is not None else []),
        *(alipay_routes() if alipay is not None else []),
        *(ministry_routes() if ministry is not None else []),
        (r"/cgi-bin/token", TokenHandler),
        (r"/sns/jscode2session", Code2SessionHandler),
        (r"/_sandbox/wechat/login-code", LoginCodeHandler),
        (r"/sms/v1/send", SmsSendHandler),
        (r"/_sandbox/sms/last", SmsLastHandler),
        (r"/_sandbox/sms/messages", SmsMessagesHandler),
        (r"/cgi-bin/message/subscribe/send", SubscribeSendHandler),
        (r"/_sandbox/wechat/refuse", RefuseHandler),
        (r"/_sandbox/wechat/messages", SubscribeMessagesHandler),
        (r"/einvoice/v1/invoices", InvoiceIssueHandler),
        (r"/_sandbox/einvoice/issued", InvoicesIssuedHandler),
    ], state=state, wxpay=wxpay, alipay=alipay, ministry=ministry, bills={})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--appid", default="wx-keyun-sandbox")
    args = parser.parse_args()
    state = State(args.appid, os.environ["SANDBOX_WECHAT_SECRET"], os.environ["SANDBOX_SMS_KEY"],
                  os.environ.get("SANDBOX_EINVOICE_KEY", ""))
    wxpay = None
    if os.environ.get("SANDBOX_WXPAY_MCHID"):
        from sandbox.wechatpay import WxPayState

        wxpay = WxPayState(os.environ["SANDBOX_WXPAY_MCHID"],
                           os.environ["SANDBOX_WXPAY_MERCHANT_PUBLIC"],
                           os.environ["SANDBOX_WXPAY_PLATFORM_PRIVATE"],
                           os.environ["SANDBOX_WXPAY_PLATFORM_SERIAL"],
                           os.environ["SANDBOX_WXPAY_V3_KEY"],
                           os.environ.get("SANDBOX_WXPAY_CERT_SERIAL", ""),
                           appids={"jsapi": os.environ.get("SANDBOX_WXPAY_APPID", args.appid),
                                   "app": os.environ.get("SANDBOX_WXPAY_APP_APPID", "")})
    alipay = None
    if os.environ.get("SANDBOX_ALIPAY_APP_ID"):
        from sandbox.alipay import AlipayState

        alipay = AlipayState(os.environ["SANDBOX_ALIPAY_APP_ID"],
                             os.environ["SANDBOX_ALIPAY_SELLER_ID"],
                             os.environ["SANDBOX_ALIPAY_APP_PUBLIC"],
                             os.environ["SANDBOX_ALIPAY_PRIVATE"])
    ministry = None
    if os.environ.get("SANDBOX_MINISTRY_SECRET"):
        from sandbox.ministry import MinistryState

        ministry = MinistryState(os.environ.get("SANDBOX_MINISTRY_PLATFORM", "440000"),
                                 os.environ["SANDBOX_MINISTRY_SECRET"])
    serve(make_app(state, wxpay, alipay, ministry), args.port)


if __name__ == "__main__":
    main()
