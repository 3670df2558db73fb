"""Events of topics clients watch over the WebSocket: ``departure:<id>`` and ``order:<no>``.

Every event is written once, as the final frame text, and gets the next ``seq`` of its topic.
It goes two ways in one Lua call: into a bounded Redis stream (``ev:{tag}``, the topic's last
events, for a client that reconnects with ``since=<seq>``) and onto the pub/sub channel
``ev:<topic>``, which every server process with a watcher of the topic subscribes to once.

Seat events of native departures are raised inside the inventory scripts (seq = the
departure's ``ver``); everything else — proxied departures' refreshed counts, departure
changes, order transitions — through :meth:`EventLog.emit`.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

EVENTS_KEPT = 500  # per topic; an older since gets a fresh snapshot instead
ORDER_EVENTS_TTL = 7 * 86400  # an order's stream lives a week after its last event
DEPARTURE_EVENTS_TTL = 3 * 86400

TOPIC = re.compile(r"^(departure|order|alerts|warnings):([A-Za-z0-9_.:-]{1,80})$")

# KEYS: counter, stream. ARGV: channel, topic, event, data json, kept, ttl seconds.
_EMIT = """
local seq = redis.call('INCR', KEYS[1])
local frame = '{"type":"event","topic":' .. cjson.encode(ARGV[2]) .. ',"seq":' .. seq ..
  ',"event":' .. cjson.encode(ARGV[3]) .. ',"data":' .. ARGV[4] .. '}'
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 's', seq, 'f', frame)
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('PUBLISH', ARGV[1], frame)
return seq
"""


@dataclass(frozen=True)
class Topic:
    kind: str  # departure | order | alerts | warnings
    ref: str

    @classmethod
    def parse(cls, text: str) -> Topic | None:
        m = TOPIC.match(text) if isinstance(text, str) else None
        return cls(m.group(1), m.group(2)) if m else None

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.ref}"

    @property
    def channel(self) -> str:
        return f"ev:{self.name}"

    @property
    def tag(self) -> str:
        # departures share the inventory's hash tag: their seat scripts write the stream
        if self.kind == "departure":
            return f"{{dep:{self.ref}}}"
        return f"{{{self.kind}:{self.ref}}}"

    @property
    def stream(self) -> str:
        return f"ev:{self.tag}"

    @property
    def counter(self) -> str:
        return f"evseq:{self.tag}"


def channel_topic(channel: str) -> str:
    """``ev:departure:D`` → ``departure:D``."""
    return channel[3:]


class EventLog:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._emit = redis.register_script(_EMIT)

    async def emit(self, topic: Topic, event: str, data: dict[str, Any]) -> int:
        """Raise an event on a topic (after the change it tells of is stored)."""
        ttl = ORDER_EVENTS_TTL if topic.kind == "order" else DEPARTURE_EVENTS_TTL
        payload = json.dumps({**data, "at": int(time.time() * 1000)}, ensure_ascii=False,
                             separators=(",", ":"), default=str)
        return int(await self._emit(keys=[topic.counter, topic.stream],
                                    args=[topic.channel, topic.name, event, payload,
                                          EVENTS_KEPT, ttl]))

    async def last_seq(self, topic: Topic) -> int:
        """The seq of the topic's newest kept event (0: none)."""
        last = await self._redis.xrevrange(topic.stream, count=1)
        return int(last[0][1]["s"]) if last else 0

    async def since(self, topic: Topic, seq: int) -> list[tuple[int, str]] | None:
        """The kept events after ``seq``, oldest first, as (seq, frame); None when some of
        them are no longer kept (or the topic's seq went back: Redis lost it), so the caller
        sends a snapshot instead."""
        entries = await self._redis.xrange(topic.stream)
        events = [(int(fields["s"]), fields["f"]) for _, fields in entries]
        if not events:
            return [] if seq == 0 else None
        first, last = events[0][0], events[-1][0]
        if seq > last or seq < first - 1:
            return None
        return [(s, f) for s, f in events if s > seq]
