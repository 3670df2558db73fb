"""The platform's own unified station system: seats in Redis (``services.inventory``)."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from server.exchange.base import (
    Availability,
    DepartureRef,
    Health,
    Hold,
    HoldRequest,
    Sale,
    SaleStatus,
    StationExchange,
    SyncBatch,
    TicketInfo,
)
from server.storage.inventory import NativeInventory


class NativeExchange(StationExchange):
    """Stations without a system of their own sell from the native inventory."""

    identifier = "native"

    def __init__(self, inventory: NativeInventory, redis: Redis) -> None:
        self.inventory = inventory
        self._redis = redis

    async def health(self) -> Health:
        started = time.perf_counter()
        await self._redis.ping()
        return Health(True, 1000 * (time.perf_counter() - started))

    async def remaining(self, departure: DepartureRef) -> Availability:
        return await self.inventory.availability(departure.id)

    async def hold(self, departure: DepartureRef, request: HoldRequest) -> Hold:
        return await self.inventory.hold(departure.id, request)

    async def release(self, departure: DepartureRef, hold_id: str) -> bool:
        return await self.inventory.release(departure.id, hold_id)

    async def sell(self, departure: DepartureRef, hold_id: str,
                   tickets: list[TicketInfo]) -> Sale:
        seats = await self.inventory.sell(departure.id, hold_id)
        return Sale(hold_id, departure.id, seats)

    async def query(self, departure: DepartureRef, sale_id: str) -> SaleStatus:
        status, seats = await self.inventory.status_of(sale_id)
        return SaleStatus(sale_id, status if status != "selling" else "held", seats)

    async def refund(self, departure: DepartureRef, sale_id: str,
                     seats: tuple[int, ...]) -> tuple[int, ...]:
        return await self.inventory.return_seats(departure.id, sale_id, seats, "refund")

    async def void(self, departure: DepartureRef, sale_id: str,
                   seats: tuple[int, ...]) -> tuple[int, ...]:
        return await self.inventory.return_seats(departure.id, sale_id, seats, "void")

    async def pickup(self, departure: DepartureRef, sale_id: str, seat: int) -> str:
        return ""  # our own tickets: the ticket number is Keyun's (see the booking service)

    async def pull(self, since: str | None = None) -> SyncBatch:
        return SyncBatch()  # the platform is this station's system: nothing to pull
