"""How far a long request has got, for the page waiting on it (SPEC §4b: long jobs show
progress). The page names the work with an id of its own (``?progress=<id>`` on the request:
an import, …); the work reports ``done`` of ``total`` and its phase as it goes; the page reads
``GET /api/v1/admin/progress/{id}`` while it waits for the answer. Kept in Redis for ten
minutes under the staff member's id — nobody else reads it — so any process behind the
balancer answers. (Work that outlives a request — exports, settlement batches — keeps its
progress in its own record instead.)"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from server.security.principal import Principal

TTL = 600  # seconds a report is kept after its last word
EVERY = 0.3  # seconds between reports written (the last one always is)
Reporter = Callable[[int, int, str], Awaitable[None]]


class ProgressBoard:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    @staticmethod
    def _key(actor: Principal, work: str) -> str:
        return f"progress:{actor.id}:{work}"

    def reporter(self, actor: Principal, work: str) -> Reporter:
        """What the work calls as it goes: ``(done, total, phase)``; writes at most every
        :data:`EVERY` seconds, and always when the phase changes or the work is done."""
        last = {"at": 0.0, "phase": ""}

        async def report(done: int, total: int, phase: str) -> None:
            now = time.monotonic()
            if now - last["at"] < EVERY and phase == last["phase"] and done < total:
                return
            last.update(at=now, phase=phase)
            await self._redis.set(self._key(actor, work), json.dumps(
                {"done": done, "total": total, "phase": phase}), ex=TTL)

        return report

    async def read(self, actor: Principal, work: str) -> dict[str, Any] | None:
        raw = await self._redis.get(self._key(actor, work))
        return json.loads(raw) if raw else None
