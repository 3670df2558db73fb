"""Sandbox of the outside providers a passenger touches: WeChat login, SMS, WeChat Pay.

    STATION_SIM_SECRET=… python -m sandbox.providers --port 9200

WeChat (same paths, parameters and answers as api.weixin.qq.com):
- ``GET /cgi-bin/token?grant_type=client_credential&appid=&secret=`` →
  ``{"access_token", "expires_in": 7200}`` (wechatpy fetches one even for code2session)
- ``GET /sns/jscode2session?appid=&secret=&js_code=&grant_type=authorization_code`` →
  ``{"openid", "session_key"}``, or ``{"errcode": 40029, "errmsg": "invalid code"}``; a code
  works once and for five minutes, as ``wx.login()`` codes do.

SMS gateway: ``POST /sms/v1/send`` with ``Authorization: Bearer <key>`` and
``{"phone", "template", "params"}`` → ``{"message_id"}``.

Sandbox controls (what a person would do on a phone): ``POST /_sandbox/wechat/login-code``
``{"openid"}`` → ``{"code"}`` (``wx.login()``), ``GET /_sandbox/sms/last?phone=`` → the last
message sent to that phone.
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
    def __init__(self, appid: str, app_secret: str, sms_key: str) -> None:
        self.appid = appid
        self.app_secret = app_secret
        self.sms_key = sms_key
        self.codes: dict[str, tuple[str, dt.datetime]] = {}
        self.tokens: set[str] = set()
        self.sms: dict[str, dict[str, Any]] = {}
        self.sms_count = 0


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
        self.state.sms_count += 1
        message_id = uuid.uuid4().hex
        self.state.sms[phone] = {"message_id": message_id, "template": template,
                                 "params": params, "code": params.get("code"),
                                 "sent_at": dt.datetime.now(dt.UTC).isoformat()}
        self.reply({"message_id": message_id})


class SmsLastHandler(Base):
    def get(self) -> None:
        found = self.state.sms.get(self.get_argument("phone", ""))
        if found is None:
            self.reply({"error": "no message to this phone"}, 404)
            return
        self.reply(found)


def make_app(state: State, wxpay: Any = None, alipay: Any = None) -> Application:
    from sandbox.alipay import alipay_routes
    from sandbox.wechatpay import wxpay_routes

    return Application([
        *(wxpay_routes() if wxpay is not None else []),
        *(alipay_routes() if alipay is not None else []),
        (r"/cgi-bin/token", TokenHandler),
        (r"/sns/jscode2session", Code2SessionHandler),
        (r"/_sandbox/wechat/login-code", LoginCodeHandler),
        (r"/sms/v1/send", SmsSendHandler),
        (r"/_sandbox/sms/last", SmsLastHandler),
    ], state=state, wxpay=wxpay, alipay=alipay, bills={})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--appid", default="wx-keyun-sandbox")
    args = parser.parse_args()
    state = State(args.appid, os.environ["SANDBOX_WECHAT_SECRET"], os.environ["SANDBOX_SMS_KEY"])
    wxpay = None
    if os.environ.get("SANDBOX_WXPAY_MCHID"):
        from sandbox.wechatpay import WxPayState

        wxpay = WxPayState(os.environ["SANDBOX_WXPAY_MCHID"],
                           os.environ["SANDBOX_WXPAY_MERCHANT_PUBLIC"],
                           os.environ["SANDBOX_WXPAY_PLATFORM_PRIVATE"],
                           os.environ["SANDBOX_WXPAY_PLATFORM_SERIAL"],
                           os.environ["SANDBOX_WXPAY_V3_KEY"],
                           os.environ.get("SANDBOX_WXPAY_CERT_SERIAL", ""))
    alipay = None
    if os.environ.get("SANDBOX_ALIPAY_APP_ID"):
        from sandbox.alipay import AlipayState

        alipay = AlipayState(os.environ["SANDBOX_ALIPAY_APP_ID"],
                             os.environ["SANDBOX_ALIPAY_SELLER_ID"],
                             os.environ["SANDBOX_ALIPAY_APP_PUBLIC"],
                             os.environ["SANDBOX_ALIPAY_PRIVATE"])
    serve(make_app(state, wxpay, alipay), args.port)


if __name__ == "__main__":
    main()
