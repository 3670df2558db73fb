"""Payment links for phone bookings: the phone agent has the caller texted a link; the link's
page (plain HTML, no script: it works in any phone browser) shows the order and pays it with
WeChat or Alipay, by redirecting to the provider's cashier."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from handlers.base import ApiHandler, PageHandler, api, route
from server.clock import LOCAL_TZ
from server.errors import DomainError
from server.schema import DATETIME, FEN, array, obj, string
from server.security.principal import PHONE_AGENT
from server.services.paylinks import LINK_METHODS

if TYPE_CHECKING:
    from server.app import Services

SENT = obj({"order_no": string(), "url": string(), "expires_at": DATETIME},
           ["order_no", "url", "expires_at"])
SUMMARY = obj({"order_no": string(), "amount": FEN, "expires_at": DATETIME,
               "departure_id": string(), "tickets": array(obj({"seat": {"type": "integer"},
                                                               "passenger": string()})),
               "methods": array(string(enum=list(LINK_METHODS)))},
              ["order_no", "amount", "methods"])
PAY = obj({"method": string(enum=list(LINK_METHODS))}, ["method"])
STARTED = obj({"method": string(), "url": string(description="open this: the cashier")},
              ["method", "url"])
TOKEN = {"token": string(10, 120, pattern=r"^[A-Za-z0-9]+\.[0-9]+\.[0-9a-f]{32}$")}
NAMES = {"wechat_h5": "微信支付", "alipay_wap": "支付宝"}
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' https:"


async def _summary(services: Services, token: str) -> dict[str, Any]:
    order = await services.paylinks.order(token)
    allowed = services.orders.channel_of(order).payment_methods
    methods = [m for m in LINK_METHODS if m in allowed and services.payments.providers
               .for_method(m) is not None]
    view = await services.orders.get(services.paylinks.payer(order["order_no"]),
                                      order["order_no"])
    return {"order_no": order["order_no"], "amount": order["amount"],
            "expires_at": order["expires_at"].astimezone(LOCAL_TZ).isoformat(),
            "departure_id": order["departure_id"], "methods": methods,
            "tickets": [{"seat": t["seat"], "passenger": t["passenger"]["name"][:1] + "*"}
                        for t in view["tickets"]]}


async def _start(services: Services, token: str, method: str) -> str:
    order = await services.paylinks.order(token)
    started = await services.payments.start(services.paylinks.payer(order["order_no"]),
                                            order["order_no"], method)
    params = started["params"]
    return str(params.get("h5_url") or params.get("pay_url") or "")


class PayLinkSendHandler(ApiHandler):
    @api("Text the caller of a phone booking a link to pay it (WeChat or Alipay on their "
         "phone); asking again sends the same link", roles=(PHONE_AGENT,), response=SENT,
         tags=("orders",), errors=("ORDER_NOT_FOUND", "ORDER_NOT_PAYABLE"))
    async def post(self, order_no: str) -> None:
        self.write_json(await self.services.paylinks.send(self.principal, order_no))


class PayLinkHandler(ApiHandler):
    @api("What a payment link pays: the order, its amount and the ways to pay", path=TOKEN,
         response=SUMMARY, tags=("orders",), errors=("PAY_LINK_INVALID",))
    async def get(self, token: str) -> None:
        self.write_json(await _summary(self.services, token))


class PayLinkPayHandler(ApiHandler):
    @api("Pay through a link: the provider's cashier to open", path=TOKEN, body=PAY,
         response=STARTED, tags=("orders",),
         errors=("PAY_LINK_INVALID", "PAYMENT_METHOD_NOT_ALLOWED", "PAYMENT_IN_PROGRESS",
                 "PAYMENT_PROVIDER_ERROR", "ORDER_NOT_PAYABLE"))
    async def post(self, token: str) -> None:
        method = self.body["method"]
        self.write_json({"method": method, "url": await _start(self.services, token, method)})


class PayPage(PageHandler):
    """``/pay/<token>``: the page the text message links to."""

    @property
    def services(self) -> Services:
        return self.application.settings["services"]  # type: ignore[no-any-return]

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("Cache-Control", "no-store")
        self.set_header("Referrer-Policy", "no-referrer")

    async def get(self, token: str) -> None:
        await self._show(token)

    async def post(self, token: str) -> None:
        method = self.get_body_argument("method", "")
        try:
            if method not in LINK_METHODS:
                raise DomainError("PAYMENT_METHOD_NOT_ALLOWED")
            url = await _start(self.services, token, method)
        except DomainError as exc:
            await self._show(token, exc.message)
            return
        self.redirect(url)

    async def _show(self, token: str, problem: str = "") -> None:
        e = html.escape
        try:
            order = await _summary(self.services, token)
        except DomainError as exc:
            self.set_status(exc.status)
            self._page(f"<p class='bad'>{e(exc.message)}</p>")
            return
        seats = "、".join(f"{t['passenger']} {t['seat']}号座" for t in order["tickets"])
        buttons = "".join(
            f"<form method='post'><input type='hidden' name='method' value='{m}'>"
            f"<button>{NAMES[m]}</button></form>" for m in order["methods"])
        self._page(
            f"<p>订单 {e(order['order_no'])}</p><p>{e(seats)}</p>"
            f"<p class='amount'>¥{order['amount'] // 100}.{order['amount'] % 100:02d}</p>"
            f"<p>请在 {e(order['expires_at'][11:16])} 前支付，逾时座位将释放。</p>"
            + (f"<p class='bad'>{e(problem)}</p>" if problem else "") + buttons)

    def _page(self, body: str) -> None:
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(
            "<!doctype html><html lang='zh-CN'><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<title>支付车票</title><style>body{font-family:sans-serif;margin:1.5em;"
            "max-width:30em}.amount{font-size:2em}.bad{color:#c00}button{width:100%;"
            "padding:.8em;margin:.4em 0;font-size:1.1em}</style>"
            f"<h1>支付车票</h1>{body}</html>")


default_handlers = [
    route("/api/v1/orders/{order_no}/pay-link", PayLinkSendHandler),
    route("/api/v1/pay-links/{token}", PayLinkHandler),
    route("/api/v1/pay-links/{token}/pay", PayLinkPayHandler),
]
page_handlers = [route("/pay/{token}", PayPage)]
