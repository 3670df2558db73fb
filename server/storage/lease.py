"""Leases in Redis: at most one process holds a named lease at a time (SET NX PX + token).

Scheduled work (hold sweeping, station sync) runs only in the process holding its lease, so it
runs once across any number of Keyun processes; if that process dies the lease lapses and
another takes over within one TTL.
"""

from __future__ import annotations

import uuid

from redis.asyncio import Redis

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    """A named, expiring, token-checked lease."""

    def __init__(self, redis: Redis, name: str, ttl_ms: int) -> None:
        self._redis = redis
        self.key = f"lease:{{{name}}}"
        self.ttl_ms = ttl_ms
        self.token = uuid.uuid4().hex
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def hold(self) -> bool:
        """Take the lease if free, or extend it if ours; True while we hold it."""
        if await self._renew(keys=[self.key], args=[self.token, self.ttl_ms]):
            return True
        return bool(await self._redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self.token])
