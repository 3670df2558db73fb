"""The life of a seat hold, end to end: every act has one name and one place.

    hold ──→ claim (the order is written) ──→ sell (paid: issued) ──→ return (refund, void,
      │                                                                        change)
      └──→ release (unpaid order cancelled or expired, order never written, orphan, expiry)

- **hold** (``hold``): an order's hold is first noted in the orphan journal (a Redis
  sorted set kept by ``server.storage.hold_claims``, scored by time), then taken through
  ``SeatService.hold`` at the departure's exchange — the native inventory's ``hold`` script
  (``server/storage/inventory.lua``, which also writes the hold's record to ``seat_holds``
  behind, in batches) or the station's own system. A clear refusal drops the note; a
  timeout leaves it, since the station may hold the seats all the same.
- **claim** (``claim``): inside the transaction that writes the order, ``hold_claims`` gets
  ``{_id: hold, owner: "order"}``. The orphan sweeper claims with ``owner: "sweeper"``; the
  unique id lets exactly one of them win, so a slow order never loses its seats and a dead
  process never keeps them. After the order is written the note goes (``written``).
- **release**: an unpaid order that is cancelled or expires (the ``order-expiry`` job) gives
  its hold back (``release_ended``); an order that failed to be written gives it back at
  once (``release_unwritten``); a note older than ``orphan_after`` with no order is an
  orphan (``release_orphans``, the ``orphan-holds`` job). Independently, a hold that runs out
  is released by the native inventory itself — by whichever script touches the departure
  next and by the ``hold-sweeper`` job (``storage.inventory.NativeInventory.sweep``) — or
  by the station's own timeout for proxied departures. Every release is one atomic step:
  it happens once.
- **sell** (``sell``): a paid order's hold becomes a sale (``OrderService.issue``; a change
  of departure sells a fresh hold the same way).
- **return** (``return_seats``): sold seats go back on sale — a refund, a void, the old seat
  of a change.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis
from redis.exceptions import RedisError

from server.exchange.base import Hold, HoldRequest, Sale, TicketInfo
from server.exchange.errors import (
    BadStationResponse,
    DepartureNotFound,
    ExchangeError,
    HoldExpired,
    HoldNotFound,
    StationTimeout,
)
from server.services.seats import SeatService
from server.storage.hold_claims import HoldClaims

log = logging.getLogger(__name__)

class HoldClaimed(Exception):
    """The sweeper released this hold before its order could be written."""


class SeatHolds:
    """Hold, claim, release, sell and return seats, for orders and tickets."""

    def __init__(self, db: AsyncDatabase[Any], redis: Redis, seats: SeatService,
                 orphan_after: float = 60.0) -> None:
        self.orphan_after = orphan_after
        self._claims = HoldClaims(db, redis)  # the journal and the claims
        self._seats = seats

    # --- hold ---------------------------------------------------------------------------------
    async def hold(self, departure_id: str, request: HoldRequest, *,
                   for_order: bool = True, dep: dict[str, Any] | None = None) -> Hold:
        """Take seats for a while. An order's hold is noted first, so that if this process
        dies before the order is written the orphan sweeper gives the seats back (a change's
        hold is covered by the ticket's own recovery plan instead)."""
        if for_order:
            await self._claims.note(departure_id, request.hold_id)
        try:
            return await self._seats.hold(departure_id, request, dep)
        except ExchangeError as exc:
            # a clear refusal took nothing; after a timeout or a garbled answer the station
            # may hold the seats all the same, so the note stays for the sweeper
            if for_order and not isinstance(exc, (StationTimeout, BadStationResponse)):
                await self._claims.drop(departure_id, request.hold_id)
            raise

    # --- claim --------------------------------------------------------------------------------
    async def claim(self, departure_id: str, hold_id: str,
                    session: AsyncClientSession) -> None:
        """The order being written claims its hold (in the order's transaction);
        HoldClaimed if the orphan sweeper was first."""
        if not await self._claims.claim(departure_id, hold_id, "order", session):
            raise HoldClaimed()

    async def written(self, departure_id: str, hold_id: str) -> None:
        """The order stands: its note goes (if Redis fails now, the sweeper finds the hold
        claimed by the order and drops the note)."""
        try:
            await self._claims.drop(departure_id, hold_id)
        except RedisError:
            log.warning("hold journal entry left", extra={"fields": {"hold_id": hold_id}})

    # --- release ------------------------------------------------------------------------------
    async def release_unwritten(self, departure_id: str, hold_id: str) -> None:
        """The order was not written: give its hold back now (the note stays for the
        sweeper if the station cannot be told)."""
        await self._seats.release(departure_id, hold_id)
        await self._claims.drop(departure_id, hold_id)

    async def release_ended(self, order: dict[str, Any]) -> None:
        """An unpaid order ended (cancelled, expired): its seats go back on sale."""
        try:
            await self._seats.release(order["departure_id"], order["hold_id"])
        except ExchangeError as exc:  # the hold runs out at the station by itself
            log.warning("release failed: %s", exc.code,
                        extra={"fields": {"order_no": order["order_no"]}})

    async def release_change(self, departure_id: str, hold_id: str) -> None:
        """A change of departure that did not complete gives its held seat back."""
        await self._seats.release(departure_id, hold_id)

    async def release_orphans(self, limit: int = 100) -> int:
        """Notes older than ``orphan_after`` with no order: the process taking the hold died
        before writing its order. Whoever claims the hold first wins — the order or this
        sweeper."""
        released = 0
        for departure_id, hold_id in await self._claims.noted_before(
                time.time() - self.orphan_after, limit):
            if not await self._claims.claim(departure_id, hold_id, "sweeper") and \
                    await self._claims.owner(hold_id) == "order":  # written after all
                await self._claims.drop(departure_id, hold_id)
                continue
            try:
                await self._seats.release(departure_id, hold_id)
            except ExchangeError as exc:  # the claim stays ours: tried again next run
                if not isinstance(exc, (DepartureNotFound, HoldNotFound, HoldExpired)):
                    log.warning("orphan hold not released yet: %s", exc.code,
                                extra={"fields": {"hold_id": hold_id}})
                    continue
            await self._claims.drop(departure_id, hold_id)
            released += 1
            log.warning("orphan hold released (its order was never written)",
                        extra={"fields": {"hold_id": hold_id, "departure_id": departure_id}})
        return released

    # --- sell and return ----------------------------------------------------------------------
    async def sell(self, departure_id: str, hold_id: str, tickets: list[TicketInfo]) -> Sale:
        """A live hold becomes sold seats at the departure's exchange."""
        return await self._seats.sell(departure_id, hold_id, tickets)

    async def return_seats(self, departure_id: str, sale_id: str, seats: tuple[int, ...],
                           why: str = "refund") -> tuple[int, ...]:
        """Sold seats go back on sale: ``why`` is ``refund`` (also the old seat of a change)
        or ``void`` (a misissued ticket); returns the seats freed."""
        if why == "void":
            return await self._seats.void(departure_id, sale_id, seats)
        return await self._seats.refund(departure_id, sale_id, seats)
