"""The per-process fan-out of topic events to WebSocket connections.

One Redis pub/sub connection per process; a channel is subscribed while at least one local
connection watches its topic (one subscription per process per topic, not per connection).
A message is turned into bytes once and handed to every watcher; each watcher queues it
without waiting, so a slow or dead client never delays the others (see ``handlers.ws``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from server.services.events import Topic, channel_topic

log = logging.getLogger(__name__)

_SEQ = re.compile(rb'"seq":(\d+)')


class Watcher(Protocol):
    def deliver(self, topic: str, seq: int, frame: bytes) -> None: ...

    def shut(self, code: int, reason: str) -> None: ...

    def resync(self, reason: str, topics: list[str] | None = None) -> None: ...


class Hub:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watchers: dict[str, set[Watcher]] = {}
        self._lock = asyncio.Lock()
        self._confirmed: set[str] = set()  # channels Redis confirmed subscribing to
        self.connections: set[Watcher] = set()
        self.received = 0  # messages from Redis
        self.handed = 0  # frames handed to watchers
        self.on_fanout: Callable[[float], None] | None = None  # seconds to hand one event out

    def topics(self) -> int:
        return len(self._watchers)

    async def watch(self, topic: Topic, watcher: Watcher) -> None:
        """Start handing the topic's events to ``watcher``; returns once Redis confirmed the
        subscription is being made, so nothing raised after this call is missed."""
        async with self._lock:
            watchers = self._watchers.get(topic.name)
            if watchers is None:
                if self._pubsub is None:
                    self._pubsub = self._redis.pubsub()
                await self._pubsub.subscribe(topic.channel)
                self._watchers[topic.name] = watchers = set()
                if self._reader is None or self._reader.done():
                    self._reader = asyncio.create_task(self._read(), name="hub-reader")
            watchers.add(watcher)

    async def unwatch(self, topic: str, watcher: Watcher) -> None:
        async with self._lock:
            watchers = self._watchers.get(topic)
            if watchers is None:
                return
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[topic]
                if self._pubsub is not None:
                    with contextlib.suppress(RedisError, OSError):
                        await self._pubsub.unsubscribe(f"ev:{topic}")

    async def _read(self) -> None:
        assert self._pubsub is not None
        pubsub = self._pubsub
        lost = False
        while True:
            try:
                message = await pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:  # redis-py reconnects and re-subscribes
                if not lost:
                    log.warning("pub/sub connection lost: %s", type(exc).__name__)
                lost = True
                await asyncio.sleep(0.5)
                continue
            if lost:  # events may have been missed, and a restarted Redis restarts seqs
                lost = False
                log.info("pub/sub connection back; watchers told to resync")
                for watcher in list(self.connections):
                    watcher.resync("store_reconnected")
            if message is None:
                continue
            kind, channel = message.get("type"), message.get("channel")
            if kind == "subscribe":
                if channel in self._confirmed:  # redis-py re-subscribed after reconnecting
                    topic = channel_topic(channel)
                    log.info("pub/sub re-subscribed; watchers told to resync",
                             extra={"fields": {"topic": topic}})
                    for watcher in list(self._watchers.get(topic, ())):
                        watcher.resync("store_reconnected", [topic])
                self._confirmed.add(channel)
                continue
            if kind == "unsubscribe":
                self._confirmed.discard(channel)
                continue
            if kind != "message":
                continue
            self.received += 1
            data = message["data"]
            frame = data.encode() if isinstance(data, str) else data
            found = _SEQ.search(frame)
            if found is None:
                continue
            topic = channel_topic(channel)
            seq = int(found.group(1))
            started = time.perf_counter()
            for watcher in list(self._watchers.get(topic, ())):
                watcher.deliver(topic, seq, frame)
                self.handed += 1
            if self.on_fanout is not None:
                self.on_fanout(time.perf_counter() - started)

    async def close(self) -> None:
        """Close every connection (going away) and the pub/sub connection."""
        for watcher in list(self.connections):
            watcher.shut(1001, "server stopping")
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
