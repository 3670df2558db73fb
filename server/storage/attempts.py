"""Counting attempts in Redis, for rate limits and lockouts (the one implementation).

A :class:`WindowLimit` counts events per key (failed logins, failed pickups, SMS sent) in a
window that starts with the first; ``blocked`` says how long a key must wait once it reached
its limit. :class:`Backoff` slows a key down exponentially. Keys are spelled here, so
services name the thing counted (a user, an address, a phone, a device, a station), never
the Redis key.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis


@dataclass(frozen=True)
class WindowLimit:
    """At most ``limit`` events per ``window`` seconds for each key of ``name``."""

    redis: Redis
    name: str
    limit: int
    window: int

    def _key(self, subject: str) -> str:
        return f"limit:{self.name}:{{{subject}}}"

    async def blocked(self, *subjects: str) -> int:
        """Seconds to wait if any subject reached its limit, else 0."""
        pipe = self.redis.pipeline(transaction=False)
        for subject in subjects:
            pipe.get(self._key(subject))
            pipe.ttl(self._key(subject))
        values = await pipe.execute()
        wait = 0
        for count, ttl in zip(values[::2], values[1::2], strict=True):
            if int(count or 0) >= self.limit:
                wait = max(wait, int(ttl) if int(ttl) > 0 else self.window)
        return wait

    async def count(self, *subjects: str) -> list[int]:
        """Count one event of each subject; their counts now (atomically: of two racing
        callers, one sees the higher count)."""
        pipe = self.redis.pipeline(transaction=True)
        for subject in subjects:  # the window starts with the first event (Redis 6.2:
            pipe.set(self._key(subject), 0, ex=self.window, nx=True)  # no EXPIRE NX)
            pipe.incr(self._key(subject))
        values = await pipe.execute()
        return [int(v) for v in values[1::2]]

    async def wait(self, subject: str) -> int:
        """Seconds left of a subject's window (0 when none is open)."""
        ttl = int(await self.redis.ttl(self._key(subject)))
        return ttl if ttl > 0 else 0

    async def clear(self, *subjects: str) -> None:
        await self.redis.delete(*(self._key(s) for s in subjects))


@dataclass(frozen=True)
class Backoff:
    """Exponential slow-down per key: after ``free`` failures, each further failure makes
    the key wait 2, 4, 8 … seconds (at most ``cap``) before it may try again. Failures are
    forgotten ``memory`` seconds after the last one."""

    redis: Redis
    name: str
    free: int
    cap: int
    memory: int

    def _keys(self, subject: str) -> tuple[str, str]:
        return f"slow:{self.name}:{{{subject}}}:n", f"slow:{self.name}:{{{subject}}}:wait"

    async def wait(self, subject: str) -> int:
        """Seconds this subject must still wait (0: it may try)."""
        ttl = int(await self.redis.ttl(self._keys(subject)[1]))
        return ttl if ttl > 0 else 0

    async def fail(self, subject: str) -> int:
        """Count a failure; the wait it brings (0 while within the free ones)."""
        count_key, wait_key = self._keys(subject)
        pipe = self.redis.pipeline(transaction=True)
        pipe.incr(count_key)
        pipe.expire(count_key, self.memory)
        count = int((await pipe.execute())[0])
        if count <= self.free:
            return 0
        wait = min(self.cap, 2 ** (count - self.free))
        await self.redis.set(wait_key, 1, ex=wait)
        return wait
