"""The audit trail: every staff action, with actor, target, outcome, request id and address."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from server.context import client_ip_var, request_id_var
from server.security.principal import Principal

log = logging.getLogger(__name__)


class AuditService:
    """Writes and reads audit entries (collection ``audit``)."""

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._audit = db.audit

    async def record(self, actor: Principal | dict[str, Any], action: str, *,
                     target: str | None = None, outcome: str = "ok",
                     details: dict[str, Any] | None = None) -> None:
        """Append one entry; ``actor`` is a principal or, before sign-in, a description."""
        entry: dict[str, Any] = {
            "at": dt.datetime.now(dt.UTC),
            "actor": actor.audit_actor() if isinstance(actor, Principal) else actor,
            "action": action,
            "outcome": outcome,
            "request_id": request_id_var.get(),
            "ip": client_ip_var.get(),
        }
        if target is not None:
            entry["target"] = target
        if details:
            entry["details"] = details
        await self._audit.insert_one(entry)
        log.info("audit %s", action, extra={"fields": {"action": action, "outcome": outcome,
                                                        "target": target}})

    async def staff_action(self, actor: Principal, action: str, *, target: str | None = None,
                           details: dict[str, Any] | None = None) -> None:
        """Record what staff did for a passenger (selling, cancelling, refunding, changing);
        a member's own acts are in their order's history instead."""
        if actor.is_staff:
            await self.record(actor, action, target=target, details=details)

    async def list(self, *, action: str | None = None, actor_id: str | None = None,
                   limit: int = 50, before: dt.datetime | None = None) -> list[dict[str, Any]]:
        """Newest first, optionally filtered by action or actor."""
        query: dict[str, Any] = {}
        if action:
            query["action"] = action
        if actor_id:
            query["actor.id"] = actor_id
        if before:
            query["at"] = {"$lt": before}
        cursor = self._audit.find(query, {"_id": 0}).sort("at", -1).limit(limit)
        return [doc async for doc in cursor]
