"""Third-party partners selling through the partner API (issue 14 brings their accounts and
deposits). Until a partner principal exists nobody sells on it; ticket sources can already
give it an allotment or close it."""

from __future__ import annotations

from typing import Any

from channels.base import SalesChannel
from server.security.principal import Principal


class Partner(SalesChannel):
    identifier, name, kind = "partner", "第三方合作方", "partner"
    payment_methods = ()  # the partner's deposit, once partners have accounts

    def order_scope(self, actor: Principal) -> dict[str, Any]:
        return {"actor.id": actor.id}
