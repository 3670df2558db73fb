"""Each process's live view of remaining seats of native departures, for search.

A search shows remaining seats of ~20 departures; reading them from Redis on every search
costs a pipeline of snapshot scripts and parsing their replies — most of a search's time at
peak. Instead each process keeps the last snapshot of every departure it was asked about and
drops it when the departure changes. Every change of a native departure's seats runs an
inventory script that publishes a seat event on ``ev:departure:<id>`` (see
``inventory.lua``); the view listens to all of them with one pattern subscription, so a
cached snapshot lives until the next event of its departure — a search shows a sale no later
than the event takes to arrive (milliseconds), and changes made by this process are applied
before the call that made them returns.

Correctness rules:

- A snapshot read while an event of its departure arrived is not kept (each departure has a
  generation, bumped by every event; a read keeps its answer only if the generation did not
  move while it was under way). Callers that build something of their own from snapshots
  (search's encoded answers) take :meth:`generations` before they read and compare after.
- While the subscription is not confirmed (start, reconnecting after Redis was lost) nothing
  is kept and every read goes to Redis; losing the connection empties the view.
- A snapshot is kept at most ``MAX_AGE`` seconds even without an event, so a subscription
  that failed silently cannot show old seats for longer than that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from server.exchange.base import Availability
from server.storage.inventory import NativeInventory

log = logging.getLogger(__name__)

PATTERN = "ev:departure:*"
PREFIX = len("ev:departure:")
MAX_AGE = 5.0  # seconds a snapshot is kept without hearing of its departure
MAX_TRACKED = 50_000  # departures with a generation; beyond this the view starts afresh


class SeatView:
    def __init__(self, redis: Redis, inventory: NativeInventory) -> None:
        self._redis = redis
        self._inventory = inventory
        self._snapshots: dict[str, tuple[float, Availability]] = {}
        self._generations: dict[str, int] = {}
        self._epoch = 0  # bumped whenever the view starts afresh
        self._live = False  # the pattern subscription is confirmed
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self.events = 0  # seat events heard (for tests and metrics)
        inventory.on_change(self.touch)

    # --- reading ---------------------------------------------------------------------------
    def generations(self, departure_ids: list[str]) -> tuple[int, tuple[int, ...]]:
        """A stamp of the departures' state: equal later only if none of them changed (and
        the view did not start afresh) in between."""
        gens = self._generations
        return self._epoch, tuple(gens.get(d, 0) for d in departure_ids)

    @property
    def live(self) -> bool:
        return self._live

    async def many(self, departure_ids: list[str]) -> dict[str, Availability]:
        """Remaining seats of native departures: kept snapshots, the others in one round trip
        to Redis (and kept when nothing changed while they were read)."""
        self._start()
        found: dict[str, Availability] = {}
        missing: list[str] = []
        now = time.monotonic()
        for departure_id in departure_ids:
            kept = self._snapshots.get(departure_id)
            if kept is not None and now - kept[0] < MAX_AGE:
                found[departure_id] = kept[1]
            else:
                missing.append(departure_id)
        if not missing:
            return found
        live, stamp = self._live, self.generations(missing)
        read = await self._inventory.availability_many(missing)
        found.update(read)
        if live and self._live and self.generations(missing) == stamp:
            for departure_id, availability in read.items():
                self._snapshots[departure_id] = (now, availability)
        return found

    # --- changes ---------------------------------------------------------------------------
    def touch(self, departure_id: str) -> None:
        """The departure changed: forget its snapshot (called for every seat event, and by
        the inventory right after this process changed a departure)."""
        self._generations[departure_id] = self._generations.get(departure_id, 0) + 1
        self._snapshots.pop(departure_id, None)
        if len(self._generations) > MAX_TRACKED:
            self._afresh()

    def _afresh(self) -> None:
        self._epoch += 1
        self._snapshots.clear()
        self._generations.clear()

    # --- the subscription ------------------------------------------------------------------
    def _start(self) -> None:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read(),
                                                                  name="seat-view")

    async def _read(self) -> None:
        pubsub = self._pubsub = self._redis.pubsub()
        while True:
            try:
                if not pubsub.patterns:
                    await pubsub.psubscribe(PATTERN)
                message = await pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:  # redis-py reconnects and re-subscribes
                if self._live:
                    log.warning("seat view lost its subscription: %s", type(exc).__name__)
                self._live = False
                self._afresh()
                await asyncio.sleep(0.5)
                continue
            if message is None:
                continue
            kind = message.get("type")
            if kind == "pmessage":
                self.events += 1
                self.touch(message["channel"][PREFIX:])
            elif kind == "psubscribe":
                self._afresh()  # whatever happened before the subscription is unknown
                self._live = True

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()
            self._pubsub = None
        self._live = False
