"""Failpoints: named places in the code where a test can make a process stop and wait.

A process killed in the middle of selling a seat must leave nothing half-done; the tests prove
it by pausing a real Keyun process exactly there and killing it. ``KEYUN_FAILPOINTS`` names
the places (``orders.after_hold=pause:30`` — wait 30 s at that point, then go on); unset, as
it always is in production (the setting is refused there), ``reach()`` is one dict lookup.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

# every failpoint the code has; a setting naming another one is a mistake, refused at start
NAMES = ("orders.after_hold", "orders.after_write", "ledger.in_transaction")

_active: dict[str, float] = {}


def parse(text: str) -> dict[str, float]:
    """``name=pause:seconds[,…]`` → {name: seconds}; ValueError names what is wrong."""
    points: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, action = part.partition("=")
        kind, _, arg = action.partition(":")
        if name not in NAMES:
            raise ValueError(f"unknown failpoint {name!r} (known: {', '.join(NAMES)})")
        if kind != "pause":
            raise ValueError(f"{name}: the action must be pause:<seconds>, got {action!r}")
        try:
            seconds = float(arg)
        except ValueError:
            raise ValueError(f"{name}: pause needs seconds, got {arg!r}") from None
        if not 0 < seconds <= 3600:
            raise ValueError(f"{name}: pause must be between 0 and 3600 seconds")
        points[name] = seconds
    return points


def configure(text: str) -> None:
    _active.clear()
    _active.update(parse(text))
    for name, seconds in _active.items():
        log.warning("failpoint armed: %s pauses %.1f s", name, seconds)


async def reach(name: str) -> None:
    seconds = _active.get(name)
    if seconds is not None:
        log.warning("failpoint reached: %s", name)
        await asyncio.sleep(seconds)
