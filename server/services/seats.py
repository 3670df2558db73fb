"""Seats of any departure, whoever owns them: the one service booking talks to.

It finds the departure's station, picks the adapter (native inventory or a station system),
records every station call (operation, latency, outcome) for monitoring, serves remaining
seats of proxied departures from a short-lived Redis cache, publishes seat events of proxied
departures (native ones publish from their scripts), and takes a station that fails at the
infrastructure level off online sale: its departures show "not on sale online" until a sync
or health probe succeeds again — never stale or invented seats.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from server.errors import DomainError
from server.exchange.base import (
    Availability,
    DepartureRef,
    Hold,
    HoldRequest,
    Sale,
    SaleStatus,
    StationExchange,
    TicketInfo,
)
from server.exchange.errors import (
    BadStationResponse,
    DepartureNotFound,
    DepartureStopped,
    ExchangeError,
    StationTimeout,
    StationUnreachable,
)
from server.exchange.registry import ExchangeRegistry
from server.services.events import EventLog, Topic
from server.services.seatview import SeatView
from server.storage.departures import DepartureRecords

log = logging.getLogger(__name__)
T = TypeVar("T")

PROXIED_CACHE_SECONDS = 10
STATION_SECONDS = 2.0  # a native station's document is read again after this long
INFRASTRUCTURE = (StationUnreachable, StationTimeout, BadStationResponse)
OUTCOME = {StationUnreachable: "unreachable", StationTimeout: "timeout",
           BadStationResponse: "bad_response"}


class SeatService:
    """Remaining seats, holds, sales and returns for any departure."""

    def __init__(self, db: AsyncDatabase[Any], redis: Redis, registry: ExchangeRegistry,
                 events: EventLog) -> None:
        self._db = db
        self._redis = redis
        self.registry = registry
        self.events = events
        self._departures = DepartureRecords(db)
        self.view = SeatView(redis, registry.native.inventory)
        self._asking: dict[str, asyncio.Future[Availability]] = {}  # station calls under way
        # native stations' documents: id → (when read, document)
        self._stations: dict[str, tuple[float, dict[str, Any]]] = {}

    # --- resolution ---------------------------------------------------------------------
    async def resolve(self, departure_id: str, dep: dict[str, Any] | None = None
                      ) -> tuple[dict[str, Any], dict[str, Any], DepartureRef, StationExchange]:
        """A departure, its station and the exchange that owns its seats (``dep``: its
        document, if the caller read it just now)."""
        if dep is None:
            dep = await self._db.departures.find_one({"_id": departure_id})
        if dep is None:
            raise DepartureNotFound(departure_id=departure_id)
        station = await self._station(dep["station_id"])
        if station is None:
            raise DepartureNotFound(departure_id=departure_id)
        segments = await self.registry.native.inventory.segments_of(dep["route_id"])
        ref = DepartureRef.from_doc(dep, segments)
        return dep, station, ref, self.registry.for_station(station)

    async def _station(self, station_id: str) -> dict[str, Any] | None:
        """A station's document. A native station's may be a couple of seconds old (its
        seats are ours whatever the document says); a station system's is read every time,
        since whether it is online decides each call to it."""
        kept = self._stations.get(station_id)
        if kept is not None and time.monotonic() - kept[0] < STATION_SECONDS:
            return kept[1]
        station = await self._db.stations.find_one({"_id": station_id})
        if station is not None and not self.is_proxied(station):
            if len(self._stations) > 10_000:
                self._stations.clear()
            self._stations[station_id] = (time.monotonic(), station)
        else:
            self._stations.pop(station_id, None)
        return station

    @staticmethod
    def is_proxied(station: dict[str, Any]) -> bool:
        return (station.get("system") or {}).get("vendor", "native") != "native"

    async def _station_call(self, station: dict[str, Any], operation: str,
                            call: Callable[[], Awaitable[T]]) -> T:
        """Run one call to a station system, record it, degrade the station on failure."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await call()
        except INFRASTRUCTURE as exc:
            outcome = OUTCOME[type(exc)]
            await self.mark_offline(station["_id"], f"{operation}: {exc.code}")
            raise
        except ExchangeError:
            outcome = "refused"
            raise
        finally:
            await self._db.station_calls.insert_one({
                "station_id": station["_id"], "vendor": station["system"]["vendor"],
                "operation": operation, "outcome": outcome,
                "latency_ms": round(1000 * (time.perf_counter() - started), 2),
                "at": dt.datetime.now(dt.UTC)})

    async def mark_offline(self, station_id: str, reason: str) -> None:
        """Take a station's departures off online sale (seats stay the station's)."""
        now = dt.datetime.now(dt.UTC)
        self._stations.pop(station_id, None)
        result = await self._db.stations.update_one(
            {"_id": station_id, "online": {"$ne": False}},
            {"$set": {"online": False, "offline_reason": reason, "offline_since": now}})
        if result.modified_count:
            await self._departures.station_online(station_id, False)
            log.warning("station taken off online sale",
                        extra={"fields": {"station_id": station_id, "reason": reason}})

    async def mark_online(self, station_id: str) -> None:
        self._stations.pop(station_id, None)
        result = await self._db.stations.update_one(
            {"_id": station_id, "online": False},
            {"$set": {"online": True}, "$unset": {"offline_reason": "", "offline_since": ""}})
        if result.modified_count:
            await self._departures.station_online(station_id, True)
            log.info("station back on online sale", extra={"fields": {"station_id": station_id}})

    def _require_online(self, station: dict[str, Any]) -> None:
        if self.is_proxied(station) and station.get("online") is False:
            raise DomainError("NOT_ON_SALE_ONLINE", reason=station.get("offline_reason", ""))

    # --- remaining seats ----------------------------------------------------------------
    async def availability(self, departure_id: str, *, fresh: bool = False,
                           dep: dict[str, Any] | None = None) -> Availability:
        """Remaining seats: native from Redis; proxied from a 10-second cache of the station."""
        dep, station, ref, exchange = await self.resolve(departure_id, dep)
        if not self.is_proxied(station):
            return await exchange.remaining(ref)
        if station.get("online") is False:
            return Availability(departure_id, dep["seats"], ref.segments, "offline", 0)
        if not fresh:
            cached = await self._redis.get(_cache_key(departure_id))
            if cached:
                return _from_cache(cached)
            asking = self._asking.get(departure_id)  # one station call for many searches
            if asking is None:
                asking = self._asking[departure_id] = asyncio.ensure_future(
                    self._ask_station(dep, station, ref, exchange))
                asking.add_done_callback(lambda _: self._asking.pop(departure_id, None))
            return await asyncio.shield(asking)
        return await self._ask_station(dep, station, ref, exchange)

    async def _ask_station(self, dep: dict[str, Any], station: dict[str, Any],
                           ref: DepartureRef, exchange: StationExchange) -> Availability:
        """Remaining seats from the station system, kept for a few seconds; watchers are told
        when the count changed."""
        departure_id = dep["_id"]
        try:
            seats = await self._station_call(station, "remaining",
                                             lambda: exchange.remaining(ref))
        except INFRASTRUCTURE:
            return Availability(departure_id, dep["seats"], ref.segments, "offline", 0)
        previous = await self._redis.set(_cache_key(departure_id), _to_cache(seats),
                                         ex=PROXIED_CACHE_SECONDS, get=True)
        if previous is None or _from_cache(previous).remaining != seats.remaining:
            await self.events.emit(Topic("departure", departure_id), "seats", {
                "change": "refreshed", "seats": [], "remaining": seats.remaining,
                "status": seats.status})
        return seats

    async def availability_many(self, departures: list[dict[str, Any]],
                                stations: dict[str, dict[str, Any]]) -> dict[str, Availability]:
        """Remaining seats of many departures whose documents the caller already has:
        native ones from this process's live view (Redis for those it does not hold),
        proxied ones through the cache (for search)."""
        native: list[str] = []
        proxied: list[dict[str, Any]] = []
        for d in departures:
            if self.is_proxied(stations.get(d["station_id"], {})):
                proxied.append(d)
            else:
                native.append(d["_id"])
        found: dict[str, Availability] = {}
        if native:
            found.update(await self.view.many(native))
        if not proxied:
            return found
        pipe = self._redis.pipeline(transaction=False)  # keys on many slots: not MGET
        for d in proxied:
            pipe.get(_cache_key(d["_id"]))
        missing = []
        for d, cached in zip(proxied, await pipe.execute(), strict=True):
            if d.get("online") is False:  # the station is off online sale
                found[d["_id"]] = Availability(d["_id"], d["seats"], 0, "offline", 0)
            elif cached:
                found[d["_id"]] = _from_cache(cached)
            else:
                missing.append(d["_id"])
        results = await asyncio.gather(*[self.availability(d) for d in missing],
                                       return_exceptions=True)
        for departure_id, result in zip(missing, results, strict=True):
            if isinstance(result, Availability):
                found[departure_id] = result
        return found

    # --- ticket operations --------------------------------------------------------------
    async def hold(self, departure_id: str, request: HoldRequest,
                   dep: dict[str, Any] | None = None) -> Hold:
        dep, station, ref, exchange = await self.resolve(departure_id, dep)
        if dep["status"] != "on_sale":
            raise DepartureStopped(detail=dep["status"])
        if not self.is_proxied(station):
            return await exchange.hold(ref, request)
        self._require_online(station)
        hold = await self._station_call(station, "hold", lambda: exchange.hold(ref, request))
        await self._after_change(departure_id)
        return hold

    async def release(self, departure_id: str, hold_id: str) -> bool:
        _, station, ref, exchange = await self.resolve(departure_id)
        if not self.is_proxied(station):
            return await exchange.release(ref, hold_id)
        released = await self._station_call(station, "release",
                                             lambda: exchange.release(ref, hold_id))
        await self._after_change(departure_id)
        return released

    async def sell(self, departure_id: str, hold_id: str, tickets: list[TicketInfo]) -> Sale:
        _, station, ref, exchange = await self.resolve(departure_id)
        if not self.is_proxied(station):
            return await exchange.sell(ref, hold_id, tickets)
        sale = await self._station_call(station, "sell",
                                        lambda: exchange.sell(ref, hold_id, tickets))
        await self._after_change(departure_id)
        return sale

    async def query(self, departure_id: str, sale_id: str) -> SaleStatus:
        _, station, ref, exchange = await self.resolve(departure_id)
        if not self.is_proxied(station):
            return await exchange.query(ref, sale_id)
        return await self._station_call(station, "query", lambda: exchange.query(ref, sale_id))

    async def refund(self, departure_id: str, sale_id: str, seats: tuple[int, ...]
                     ) -> tuple[int, ...]:
        return await self._return_seats("refund", departure_id, sale_id, seats)

    async def void(self, departure_id: str, sale_id: str, seats: tuple[int, ...]
                   ) -> tuple[int, ...]:
        return await self._return_seats("void", departure_id, sale_id, seats)

    async def _return_seats(self, operation: str, departure_id: str, sale_id: str,
                         seats: tuple[int, ...]) -> tuple[int, ...]:
        _, station, ref, exchange = await self.resolve(departure_id)
        method = exchange.refund if operation == "refund" else exchange.void
        if not self.is_proxied(station):
            return await method(ref, sale_id, seats)
        freed = await self._station_call(station, operation,
                                         lambda: method(ref, sale_id, seats))
        await self._after_change(departure_id)
        return freed

    async def pickup(self, departure_id: str, sale_id: str, seat: int) -> str:
        _, station, ref, exchange = await self.resolve(departure_id)
        if not self.is_proxied(station):
            return await exchange.pickup(ref, sale_id, seat)
        return await self._station_call(station, "pickup",
                                        lambda: exchange.pickup(ref, sale_id, seat))

    async def _after_change(self, departure_id: str) -> None:
        """A proxied departure changed through us: refresh the cache and tell watchers."""
        await self._redis.delete(_cache_key(departure_id))
        try:
            await self.availability(departure_id, fresh=True)
        except ExchangeError:
            pass  # the change itself succeeded; the next read tries again


def _cache_key(departure_id: str) -> str:
    """A proxied departure's cached count (the departure's hash tag: its slot)."""
    return f"avail:{{dep:{departure_id}}}"


def _to_cache(a: Availability) -> str:
    data = dataclasses.asdict(a)
    data["as_of"] = a.as_of.isoformat()
    return json.dumps(data)


def _from_cache(text: str) -> Availability:
    data = json.loads(text)
    data["as_of"] = dt.datetime.fromisoformat(data["as_of"])
    data["occupancy"] = tuple(data["occupancy"])
    data["held"] = tuple(data["held"])
    return Availability(**data)
