"""Who owns an order's hold while the order is being written: the orphan journal and the
claims — their one owner (the story is in ``server.services.holds``).

- The orphan journal is a Redis sorted set of ``departure|hold`` noted before an order's
  seats are taken, scored by when (Unix seconds), dropped once the order stands.
- ``hold_claims`` has one document per contested hold; its unique ``_id`` lets exactly one
  of the order being written (``owner: "order"``) and the orphan sweeper
  (``owner: "sweeper"``) have it.
"""

from __future__ import annotations

import time
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis

from server.clock import now_ms

HOLD_JOURNAL = "orders:hold-journal"


def _entry(departure_id: str, hold_id: str) -> str:
    return f"{departure_id}|{hold_id}"


class HoldClaims:
    def __init__(self, db: AsyncDatabase[Any], redis: Redis) -> None:
        self._claims = db.hold_claims
        self._redis = redis

    # --- the orphan journal -------------------------------------------------------------------
    async def note(self, departure_id: str, hold_id: str) -> None:
        await self._redis.zadd(HOLD_JOURNAL, {_entry(departure_id, hold_id): time.time()})

    async def drop(self, departure_id: str, hold_id: str) -> None:
        await self._redis.zrem(HOLD_JOURNAL, _entry(departure_id, hold_id))

    async def noted_before(self, cutoff: float, limit: int) -> list[tuple[str, str]]:
        """Holds noted before ``cutoff`` (Unix seconds): (departure, hold) pairs."""
        entries = await self._redis.zrangebyscore(HOLD_JOURNAL, "-inf", cutoff, start=0,
                                                  num=limit)
        out = []
        for entry in entries:
            departure_id, _, hold_id = (entry.decode() if isinstance(entry, bytes)
                                        else entry).rpartition("|")
            out.append((departure_id, hold_id))
        return out

    # --- claims -------------------------------------------------------------------------------
    async def claim(self, departure_id: str, hold_id: str, owner: str,
                    session: AsyncClientSession | None = None) -> bool:
        """Claim a hold for ``owner``; False if someone already has it."""
        try:
            await self._claims.insert_one({"_id": hold_id, "owner": owner,
                                           "departure_id": departure_id, "at": now_ms()},
                                          session=session)
        except DuplicateKeyError:
            return False
        return True

    async def owner(self, hold_id: str) -> str | None:
        claim = await self._claims.find_one({"_id": hold_id}, {"owner": 1})
        return claim["owner"] if claim else None
