"""Operations alerts: what a person at the operator or in finance must look at.

An alert has a key naming its cause (``refund:<id>``), so raising it again while it is open
only counts the repeat; closing it records who closed it and why. The business-management
work adds station and sale alerts to the same collection.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from server.clock import LOCAL_TZ
from server.security.principal import Principal


class AlertService:
    """Writes and reads ``alerts`` (the only writer of that collection)."""

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._alerts = db.alerts

    async def raise_alert(self, kind: str, key: str, message: str,
                          details: dict[str, Any] | None = None) -> None:
        """Open the alert of ``key`` (or count one more occurrence of it while open)."""
        now = dt.datetime.now(dt.UTC)
        await self._alerts.update_one(
            {"_id": key},
            {"$setOnInsert": {"created_at": now},
             "$set": {"kind": kind, "message": message, "details": details or {},
                      "status": "open", "last_at": now},
             "$inc": {"count": 1}}, upsert=True)

    async def close(self, key: str, actor: Principal, outcome: str) -> None:
        await self._alerts.update_one(
            {"_id": key, "status": "open"},
            {"$set": {"status": "closed", "closed_at": dt.datetime.now(dt.UTC),
                      "closed_by": actor.username or actor.id, "outcome": outcome}})

    async def list(self, status: str | None = "open", kind: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        query: dict[str, Any] = {}
        if status:
            query["status"] = status
        if kind:
            query["kind"] = kind
        rows = await self._alerts.find(query).sort("last_at", -1).limit(limit).to_list()
        return [{"key": r["_id"], "kind": r["kind"], "message": r["message"],
                 "status": r["status"], "count": r.get("count", 1),
                 "details": r.get("details", {}),
                 "created_at": r["created_at"].astimezone(LOCAL_TZ).isoformat(),
                 "last_at": r["last_at"].astimezone(LOCAL_TZ).isoformat()} for r in rows]
