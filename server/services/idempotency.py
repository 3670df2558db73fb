"""Idempotency-Key support for mutating calls: one execution per key, the same answer replayed.

A key is scoped to the caller (principal or client address) and bound to a fingerprint of the
request (method, path, body). A second request with the same key and fingerprint gets the
stored response; with another fingerprint it is refused; while the first is still running the
second is told so instead of running twice. Failed executions release the key for a retry.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.errors import DomainError

KEY_TTL = dt.timedelta(hours=24)


class IdempotencyStore:
    """Records of Idempotency-Keys in MongoDB (collection ``idempotency``, TTL 24 h)."""

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._col = db.idempotency

    @staticmethod
    def fingerprint(method: str, path: str, body: bytes) -> str:
        return hashlib.sha256(b"%s %s\n%s" % (method.encode(), path.encode(), body)).hexdigest()

    async def begin(self, scope: str, key: str, fingerprint: str
                    ) -> tuple[int, Any] | None:
        """Claim the key; None to go ahead, or the stored (status, body) to replay."""
        now = dt.datetime.now(dt.UTC)
        try:
            await self._col.insert_one({"scope": scope, "key": key, "fingerprint": fingerprint,
                                        "state": "running", "created_at": now,
                                        "expires_at": now + KEY_TTL})
            return None
        except DuplicateKeyError:
            pass
        found = await self._col.find_one({"scope": scope, "key": key})
        if found is None:  # expired between the two calls: claim again
            return await self.begin(scope, key, fingerprint)
        if found["fingerprint"] != fingerprint:
            raise DomainError("IDEMPOTENCY_KEY_REUSED")
        if found["state"] == "running":
            raise DomainError("IDEMPOTENCY_IN_PROGRESS")
        return int(found["status"]), found["body"]

    async def complete(self, scope: str, key: str, status: int, body: Any) -> None:
        await self._col.update_one({"scope": scope, "key": key},
                                   {"$set": {"state": "done", "status": status, "body": body}})

    async def abandon(self, scope: str, key: str) -> None:
        await self._col.delete_one({"scope": scope, "key": key, "state": "running"})
