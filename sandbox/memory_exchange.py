"""An in-memory station exchange for pure unit tests: the simulated vendor system of
``sandbox.station_core`` behind the ``StationExchange`` interface, without HTTP or a
vendor dialect. The REST and XML simulators serve the same system over the wire for
integration tests; this one answers in-process, so the exchange contract (idempotent holds,
sells and releases; refusals as ``server.exchange.errors``) can be checked in
milliseconds."""

from __future__ import annotations

import datetime as dt

from sandbox.station_core import SimError, StationSystem
from server.exchange import errors
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

REFUSALS: dict[str, type[errors.ExchangeError]] = {
    "SEAT_TAKEN": errors.SeatTaken, "SOLD_OUT": errors.SoldOut,
    "CLOSED": errors.DepartureStopped, "BAD": errors.InvalidSegment,
    "NO_LOCK": errors.HoldExpired, "NO_ORDER": errors.SaleNotFound,
    "NO_TRIP": errors.DepartureNotFound}


def _refusal(exc: SimError) -> errors.ExchangeError:
    return REFUSALS.get(exc.reason, errors.BadStationResponse)(detail=exc.detail)


class MemoryExchange(StationExchange):
    identifier = "memory"

    def __init__(self, system: StationSystem) -> None:
        self.system = system

    async def health(self) -> Health:
        return Health(ok=True, latency_ms=0.0)

    async def remaining(self, departure: DepartureRef) -> Availability:
        try:
            trip = self.system.trip(departure.vendor_ref)
        except SimError as exc:
            raise _refusal(exc) from None
        occupancy = tuple(trip.occupancy)
        return Availability(departure.id, trip.seats, trip.segments, trip.status,
                            remaining=sum(1 for o in occupancy if o == 0),
                            occupancy=occupancy)

    async def hold(self, departure: DepartureRef, request: HoldRequest) -> Hold:
        try:
            lock = self.system.lock(departure.vendor_ref, request.hold_id, request.count,
                                    list(request.seats), request.from_seq, request.to_seq,
                                    request.ttl_seconds)
        except SimError as exc:
            raise _refusal(exc) from None
        return Hold(request.hold_id, departure.id, tuple(lock.seats), lock.from_seq,
                    lock.to_seq, lock.expires_at, vendor_ref=lock.lock_id)

    async def release(self, departure: DepartureRef, hold_id: str) -> bool:
        return self.system.unlock(hold_id)

    async def sell(self, departure: DepartureRef, hold_id: str,
                   tickets: list[TicketInfo]) -> Sale:
        try:
            order = self.system.sell(hold_id)
        except SimError as exc:
            raise _refusal(exc) from None
        return Sale(order.order_id, departure.id, tuple(order.seats),
                    tuple(order.tickets[s] for s in order.seats))

    async def query(self, departure: DepartureRef, sale_id: str) -> SaleStatus:
        if sale_id in self.system.locks:
            return SaleStatus(sale_id, "held", tuple(self.system.locks[sale_id].seats))
        try:
            order = self.system.order(sale_id)
        except SimError:
            return SaleStatus(sale_id, "unknown")
        left = tuple(s for s in order.seats if s not in order.returned)
        return SaleStatus(sale_id, "sold" if left else "returned", left)

    async def refund(self, departure: DepartureRef, sale_id: str,
                     seats: tuple[int, ...]) -> tuple[int, ...]:
        return self._return(sale_id, seats, "refunded")

    async def void(self, departure: DepartureRef, sale_id: str,
                   seats: tuple[int, ...]) -> tuple[int, ...]:
        return self._return(sale_id, seats, "voided")

    def _return(self, sale_id: str, seats: tuple[int, ...], status: str) -> tuple[int, ...]:
        try:
            return tuple(self.system.return_seats(sale_id, list(seats), status))
        except SimError as exc:
            raise _refusal(exc) from None

    async def pickup(self, departure: DepartureRef, sale_id: str, seat: int) -> str:
        try:
            return self.system.pickup(sale_id, seat)
        except SimError as exc:
            raise _refusal(exc) from None

    async def pull(self, since: str | None = None) -> SyncBatch:
        """Base data (first pull) in our own shape, and the departures changed since."""
        now = dt.datetime.now(dt.UTC)
        system = self.system
        batch = SyncBatch(cursor=now.isoformat())
        if since is None:
            batch.stations = [dict(s) for s in system.stations]
            batch.carriers, batch.vehicles = list(system.carriers), list(system.vehicles)
            batch.drivers, batch.routes = list(system.drivers), list(system.routes)
            batch.stops, batch.fares = list(system.stops), list(system.fares)
            batch.schedules = list(system.schedules)
        changed = system.trips_since(dt.datetime.fromisoformat(since) if since else None)
        for trip in changed:
            batch.departures.append({
                "_id": f"{trip.schedule_code}-{trip.service_date:%Y%m%d}",
                "schedule_id": trip.schedule_code, "schedule_code": trip.schedule_code,
                "route_id": trip.route_code, "station_id": trip.station_code,
                "service_date": trip.service_date.isoformat(), "departs_at": trip.departs_at,
                "seats": trip.seats, "status": trip.status, "vendor_ref": trip.trip_id})
        return batch

