"""Liveness and readiness: are MongoDB and Redis answering right now?"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pymongo import AsyncMongoClient
from redis.asyncio import Redis

CHECK_TIMEOUT = 2.0


class HealthService:
    """Pings the backing stores with a short timeout each."""

    def __init__(self, mongo: AsyncMongoClient[Any], redis: Redis) -> None:
        self._mongo = mongo
        self._redis = redis

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, per-store detail): ready only if every store answered in time."""
        mongo, redis = await asyncio.gather(
            self._probe(self._mongo.admin.command("ping")), self._probe(self._redis.ping()))
        checks = {"mongo": mongo, "redis": redis}
        return all(c["ok"] for c in checks.values()), checks

    @staticmethod
    async def _probe(call: Any) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(call, CHECK_TIMEOUT)
        except Exception as exc:
            return {"ok": False, "error": type(exc).__name__}
        return {"ok": True, "latency_ms": round(1000 * (time.perf_counter() - started), 2)}
