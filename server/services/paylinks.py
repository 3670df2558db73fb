"""Payment links (电话订票): a phone agent books for a caller and Keyun texts the caller a
link; the link opens a page on the caller's phone that pays the order with WeChat (H5) or
Alipay (WAP), and the order goes on as any other. The link is the order number and the
order's payment deadline, signed (HMAC-SHA256 under a key derived from the token secret): it
needs no sign-in, pays that order only, and lapses with the order's hold."""

from __future__ import annotations

import datetime as dt
from typing import Any

from server.clock import LOCAL_TZ, now_ms
from server.errors import DomainError
from server.security.principal import PASSENGER, Principal
from server.security.seals import Seal
from server.services.audit import AuditService
from server.services.orders import OrderService

LINK_METHODS = ("wechat_h5", "alipay_wap")  # what a phone's browser can pay with


class PayLinks:
    def __init__(self, secret: str, base_url: str, orders: OrderService,
                 audit: AuditService) -> None:
        self._seal = Seal(secret, "pay links")
        self._base = base_url.rstrip("/")
        self._orders = orders
        self._audit = audit

    def token(self, order_no: str, until: dt.datetime) -> str:
        stamp = int(until.timestamp())
        return f"{order_no}.{stamp}.{self._seal.sign(f'{order_no}.{stamp}')}"

    async def send(self, actor: Principal, order_no: str) -> dict[str, Any]:
        """Text the caller the link to pay an unpaid phone order (again: the same link)."""
        order = await self._orders.visible(actor, order_no)
        if order.get("channel") != "phone":
            raise DomainError("ORDER_NOT_FOUND")
        if order["status"] != "pending_payment" or order.get("pay_at_pickup"):
            raise DomainError("ORDER_NOT_PAYABLE", status=order["status"])
        url = f"{self._base}/pay/{self.token(order_no, order['expires_at'])}"
        await self._orders.notices.enqueue(
            f"pay_link:{order_no}", "pay_link", order_no,
            {"url": url, "amount": order["amount"], "expires_at": order["expires_at"]})
        await self._audit.staff_action(actor, "order.pay_link", target=order_no)
        return {"order_no": order_no, "url": url,
                "expires_at": order["expires_at"].astimezone(LOCAL_TZ).isoformat()}

    async def order(self, token: str) -> dict[str, Any]:
        """The order a link pays (PAY_LINK_INVALID: forged, lapsed or paid)."""
        order_no, _, rest = token.partition(".")
        stamp, _, signature = rest.partition(".")
        if not (stamp.isdigit() and self._seal.matches(f"{order_no}.{stamp}", signature)):
            raise DomainError("PAY_LINK_INVALID")
        order = await self._orders.stored(order_no)
        if order is None or int(stamp) < int(now_ms().timestamp()) or \
                order["status"] != "pending_payment":
            raise DomainError("PAY_LINK_INVALID", status=(order or {}).get("status"))
        return order

    @staticmethod
    def payer(order_no: str) -> Principal:
        """Who pays through a link: whoever holds it, for that order only."""
        return Principal(kind="link", id=order_no, role=PASSENGER)
