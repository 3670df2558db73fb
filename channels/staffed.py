"""Channels where staff sell for a passenger: agent outlets, kiosks, the phone desk and the
station's own window. Each sees the orders its own sellers may: an outlet its outlet's, a
kiosk what it sold itself (it sells any departure), the phone desk every phone booking, a
window its station's departures."""

from __future__ import annotations

from typing import Any

from channels.base import SalesChannel
from server.security.principal import AGENT, KIOSK, PHONE_AGENT, STATION_STAFF, Principal


class AgentOutlet(SalesChannel):
    identifier, name, kind = "agent", "代售点", "agent"
    payment_methods = ("agent_balance",)  # the outlet's prepaid deposit (with credit)
    roles = (AGENT,)

    def order_scope(self, actor: Principal) -> dict[str, Any]:
        return {"outlet_id": actor.outlet_id}


class Kiosk(SalesChannel):
    identifier, name, kind = "kiosk", "自助售票机", "kiosk"
    payment_methods = ("cash", "bank_card")
    roles = (KIOSK,)

    def order_scope(self, actor: Principal) -> dict[str, Any]:
        return {"actor.id": actor.id}


class PhoneDesk(SalesChannel):
    """A caller books by phone and pays by a link sent to them, or at the station window
    when picking the tickets up (seats held until the pickup deadline of the rules)."""

    identifier, name, kind = "phone", "电话订票", "phone"
    payment_methods = ("alipay_wap", "wechat_h5", "wechat_jsapi", "pay_at_pickup")
    roles = (PHONE_AGENT,)
    pay_at_pickup = True

    def order_scope(self, actor: Principal) -> dict[str, Any]:
        return {"channel": self.identifier}


class Window(SalesChannel):
    identifier, name, kind = "window", "车站窗口", "window"
    payment_methods = ("cash", "bank_card")
    roles = (STATION_STAFF,)
    limited = False  # the station's own window is never limited by a ticket source

    def order_scope(self, actor: Principal) -> dict[str, Any]:
        return {"station_id": actor.station_id}
