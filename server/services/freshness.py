"""Shared data cached in every process (the network, the rules) and a Redis counter its
writers bump: a process that sees the counter move reloads, so a change is everywhere within
about a second — and without Redis, within the cache's own lifetime."""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class SharedVersion:
    def __init__(self, redis: Redis | None, key: str, every: float = 1.0) -> None:
        self._redis = redis
        self._key = key
        self._every = every
        self._looked = 0.0

    async def bump(self) -> None:
        """Say the data changed."""
        self._looked = 0.0
        if self._redis is None:
            return
        try:
            await self._redis.incr(self._key)
        except RedisError:
            log.warning("change of %s not announced (Redis): others reload later", self._key)

    def due(self) -> bool:
        """Whether it is time to look at the counter again (and note that we do)."""
        now = time.monotonic()
        if now - self._looked < self._every:
            return False
        self._looked = now
        return True

    async def read(self) -> str:
        """The counter now ("" without Redis, or when Redis does not answer)."""
        if self._redis is None:
            return ""
        try:
            return str(await self._redis.get(self._key) or "")
        except RedisError:
            return ""
