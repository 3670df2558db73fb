"""Third-party platforms selling through the signed partner API (``/partner/v1``): each
partner sees only its own orders and pays from its prepaid deposit."""

from __future__ import annotations

from typing import Any

from channels.base import SalesChannel
from server.security.principal import Principal


class Partner(SalesChannel):
    identifier, name, kind = "partner", "第三方合作方", "partner"
    payment_methods = ("partner_deposit",)

    def sold_by(self, actor: Principal) -> bool:
        return actor.kind == "partner"

    def order_scope(self, actor: Principal) -> dict[str, Any]:
        return {"partner_id": actor.id}
