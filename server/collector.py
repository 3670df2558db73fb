"""The cyclic garbage collector in a serving process.

CPython finds reference cycles by walking every object the collector tracks in the
generations it collects; a full (generation 2) collection walks the whole heap. A process
holding thousands of WebSocket connections keeps a large heap of long-lived objects (a
connection is ~50 tracked objects: its handler, stream, protocol, buffers and watches), and
each full collection walked all of them — 0.25–1 s with 10,000 connections
(``keyun_gc_pause_seconds``), a pause every request and every watcher of the process waits
through, the p99 of a fan-out.

So what has lived a while is moved out of the collector's sight (``gc.freeze``): every
:data:`SETTLE` seconds the process collects what is not frozen (only what came since the
last time: short) and freezes what survived. Reference counting still frees a frozen object
when its last reference goes — a closed connection is freed at once, as it leaves no cycle
behind (``tests/test_units.py``) — only garbage *cycles* among frozen objects would wait:
every :data:`FULL` seconds everything is unfrozen and collected once (one longer pause,
rare, logged with its length), so such cycles never pile up.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

SETTLE = 60.0  # seconds between collecting the young and freezing what survived
FULL = 3600.0  # seconds between full collections of everything (frozen included)


def settle() -> None:
    """Collect what is not frozen, freeze what survived."""
    gc.collect()
    gc.freeze()


def collect_all() -> float:
    """Unfreeze, collect everything, freeze again; the pause in seconds."""
    started = time.perf_counter()
    gc.unfreeze()
    settle()
    return time.perf_counter() - started


async def keep(settle_every: float = SETTLE, full_every: float = FULL) -> None:
    """Run for the life of the process (cancelled at shutdown)."""
    full_at = time.monotonic() + full_every
    while True:
        await asyncio.sleep(settle_every)
        if time.monotonic() >= full_at:
            full_at = time.monotonic() + full_every
            pause = collect_all()
            log.info("full garbage collection", extra={"fields": {
                "pause_ms": round(pause * 1000, 1), "frozen": gc.get_freeze_count()}})
        else:
            settle()
