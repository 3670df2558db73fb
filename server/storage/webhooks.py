"""Partner webhooks (order and ticket events for the platform that sold them): the one
writer of ``webhooks``. A delivery is queued once per event (its id names the event), then
claimed by one process at a time (a lease, taken back if that process dies), and ends
delivered or, after its last attempt, failed."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

LEASE = dt.timedelta(seconds=30)


class WebhookDeliveries:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._webhooks = db.webhooks
        self._keys = db.partner_keys

    async def enqueue(self, delivery_id: str, partner_id: str, event: str,
                      data: dict[str, Any], at: dt.datetime,
                      session: AsyncClientSession | None = None) -> None:
        """Queue an event's delivery (again: nothing happens)."""
        await self._webhooks.update_one({"_id": delivery_id}, {"$setOnInsert": {
            "partner_id": partner_id, "event": event, "data": data, "at": at,
            "status": "pending", "attempts": 0, "next_at": at, "created_at": at}},
            upsert=True, session=session)

    async def claim(self, now: dt.datetime) -> dict[str, Any] | None:
        """One delivery that is due (or whose sender's lease ran out), now ours."""
        return await self._webhooks.find_one_and_update(  # type: ignore[no-any-return]
            {"$or": [{"status": "pending", "next_at": {"$lte": now}},
                     {"status": "sending", "lease_until": {"$lt": now}}]},
            {"$set": {"status": "sending", "lease_until": now + LEASE}},
            sort=[("next_at", 1)], return_document=ReturnDocument.AFTER)

    async def delivered(self, delivery_id: str, status: int, at: dt.datetime) -> None:
        await self._webhooks.update_one({"_id": delivery_id}, {
            "$set": {"status": "delivered", "delivered_at": at, "last_status": status},
            "$inc": {"attempts": 1}, "$unset": {"lease_until": ""}})

    async def failed_attempt(self, delivery_id: str, error: str, next_at: dt.datetime | None,
                             at: dt.datetime) -> None:
        """One more attempt failed: try again at ``next_at``, or (None) give up."""
        await self._webhooks.update_one({"_id": delivery_id}, {
            "$set": {"status": "pending" if next_at else "failed", "last_error": error[:300],
                     "last_attempt_at": at, **({"next_at": next_at} if next_at else {})},
            "$inc": {"attempts": 1}, "$unset": {"lease_until": ""}})

    async def signing_key(self, partner_id: str) -> dict[str, Any] | None:
        """The partner's newest live key: webhooks are signed with it."""
        return await self._keys.find_one({"partner_id": partner_id, "status": "active"},
                                         sort=[("created_at", -1)])
