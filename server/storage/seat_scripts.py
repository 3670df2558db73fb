"""Redis side of native seat inventory: the Lua scripts of ``inventory.lua``, loaded once.

Each script is registered with redis-py (EVALSHA, re-loaded only if Redis lost it) and is
called with the departure's six keys, which share one hash tag (``{dep:<id>}``) so the
whole departure lives on one Redis Cluster slot.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

SOURCE = Path(__file__).with_name("inventory.lua")
EXPIRING = "inv:expiring"  # zset: departure id -> its next hold expiry (ms), for the sweeper


class ScriptError(Exception):
    """A script refused: ``code`` is one of the inventory's reasons (SEAT_TAKEN, …)."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code} {detail}".strip())
        self.code = code
        self.detail = detail


def departure_keys(departure_id: str) -> list[str]:
    """The six keys of a departure's seats, in the order the scripts take them."""
    tag = f"{{dep:{departure_id}}}"
    return [f"inv:{tag}", f"inv:{tag}:alloc", f"inv:{tag}:holds", f"inv:{tag}:hexp",
            f"inv:{tag}:sold", f"ev:{tag}"]


def seats_key(departure_id: str) -> str:
    """The hash of a departure's seats (exists once the departure is loaded in Redis)."""
    return departure_keys(departure_id)[0]


def holds_key(departure_id: str) -> str:
    """The hash of a departure's live holds, by hold id."""
    return departure_keys(departure_id)[2]


def _split_scripts(text: str) -> dict[str, str]:
    prelude, *rest = re.split(r"^-- @@SCRIPT (\w+)\n", text, flags=re.MULTILINE)
    scripts = {}
    for name, body in zip(rest[::2], rest[1::2], strict=True):
        scripts[name] = prelude + "\n" + body
    return scripts


# The sweeper's index of departures with holds. A hold lowers its departure's entry (or
# replaces one that is already due); the sweeper only changes an entry it saw unchanged, so
# neither can lose the other's update. Single-key scripts: fine on Redis Cluster.
_INDEX_HOLD = """
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
local exp, now = tonumber(ARGV[2]), tonumber(ARGV[3])
if (not cur) or tonumber(cur) > exp or tonumber(cur) <= now then
  redis.call('ZADD', KEYS[1], exp, ARGV[1])
end
return 1
"""
_INDEX_SETTLE = """
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
if cur and tonumber(cur) == tonumber(ARGV[2]) then
  if tonumber(ARGV[3]) > 0 then redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  else redis.call('ZREM', KEYS[1], ARGV[1]) end
  return 1
end
return 0
"""


class SeatScripts:
    """The inventory scripts, bound to one Redis client."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(body)
            for name, body in _split_scripts(SOURCE.read_text()).items()}
        self._index_hold = redis.register_script(_INDEX_HOLD)
        self._index_settle = redis.register_script(_INDEX_SETTLE)

    async def call_many(self, name: str, departure_ids: list[str], *args: Any
                        ) -> list[list[Any] | ScriptError]:
        """One script over many departures in a single pipeline (one round trip). On Redis
        Cluster, where redis-py refuses scripts in a pipeline, the calls go concurrently,
        each to the node of its departure's slot."""
        if not departure_ids:
            return []
        script = self._scripts[name]
        results: list[Any]
        if isinstance(self.redis, RedisCluster):
            results = await asyncio.gather(*[
                script(keys=departure_keys(d), args=[d, *args]) for d in departure_ids],
                return_exceptions=True)
        else:
            pipe = self.redis.pipeline(transaction=False)
            for departure_id in departure_ids:
                await script(keys=departure_keys(departure_id), args=[departure_id, *args],
                             client=pipe)
            results = await pipe.execute(raise_on_error=False)
        out: list[list[Any] | ScriptError] = []
        for result in results:
            if isinstance(result, Exception):
                out.append(ScriptError("ERROR", str(result)))
            elif result and result[0] == "ERR":
                out.append(ScriptError(str(result[1]), str(result[2]) if len(result) > 2
                                       else ""))
            else:
                out.append(list(result))
        return out

    async def index_hold(self, departure_id: str, expires_ms: int, now_ms: int) -> None:
        """Tell the sweeper a hold of this departure falls due at ``expires_ms``."""
        await self._index_hold(keys=[EXPIRING], args=[departure_id, expires_ms, now_ms])

    async def index_settle(self, departure_id: str, seen_ms: int, next_ms: int) -> bool:
        """After a sweep: move the entry to ``next_ms`` (0: drop) if it still reads ``seen_ms``."""
        return bool(await self._index_settle(keys=[EXPIRING],
                                             args=[departure_id, seen_ms, next_ms]))

    async def call(self, name: str, departure_id: str, *args: Any) -> list[Any]:
        """Run a script; its {'ERR', code, detail} answers raise :class:`ScriptError`."""
        result = await self._scripts[name](keys=departure_keys(departure_id),
                                           args=[departure_id, *args])
        if result and result[0] == "ERR":
            raise ScriptError(str(result[1]), str(result[2]) if len(result) > 2 else "")
        return list(result)
