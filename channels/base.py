"""Sales channels: each knows its code, its name and which payment methods it allows.

A channel is a way to sell (SPEC §1 渠道). Business rules per channel (allotments, quotas,
credit limits) hang off these identifiers; new channels register with :func:`register`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SalesChannel:
    """One way to sell seats."""

    identifier: str
    name: str
    kind: str
    payment_methods: tuple[str, ...]
    # whether each sale must come from a signed-in member (vs. staff acting for a caller)
    member_required: bool = False


_REGISTRY: dict[str, SalesChannel] = {}


def register(channel: SalesChannel) -> SalesChannel:
    """Add a channel to the registry (identifiers are unique)."""
    if channel.identifier in _REGISTRY:
        raise ValueError(f"channel {channel.identifier!r} registered twice")
    _REGISTRY[channel.identifier] = channel
    return channel


def get(identifier: str) -> SalesChannel:
    return _REGISTRY[identifier]


def all_channels() -> list[SalesChannel]:
    return list(_REGISTRY.values())


MINIAPP = register(SalesChannel("miniapp", "微信小程序", "miniapp", ("wechat_jsapi",), True))
APP = register(SalesChannel("app", "手机APP", "app", ("wechat_app", "alipay_app"), True))
WEB = register(SalesChannel("web", "网站(H5)", "web", ("alipay_wap", "wechat_jsapi"), True))
AGENT = register(SalesChannel("agent", "代售点", "agent", ("agent_balance",)))
KIOSK = register(SalesChannel("kiosk", "自助售票机", "kiosk", ("cash", "bank_card")))
PHONE = register(SalesChannel("phone", "电话订票", "phone", ("alipay_wap", "wechat_jsapi",
                                                              "pay_at_pickup")))
PARTNER = register(SalesChannel("partner", "第三方合作方", "partner", ("partner_settlement",)))
WINDOW = register(SalesChannel("window", "车站窗口", "window", ("cash", "bank_card")))
