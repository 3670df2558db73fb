"""Search (班次查询): from a station or city, to a city or stop, on a date.

The static network — stations, routes, stops, fares, carriers — is read into the process and
reloaded when it changes (every writer bumps one Redis counter, which each process looks at
every second or so) and at least every minute; a search then costs one indexed query
for the day's departures of the matching routes plus remaining seats from the inventory
layer (Redis, or the short cache of a station's answer). Orders are never read.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from server.clock import LOCAL_TZ, local_today
from server.encoded import Encoded
from server.errors import DomainError, calendar_day
from server.services.freshness import SharedVersion
from server.services.rules import RuleService
from server.services.seats import PROXIED_CACHE_SECONDS, SeatService
from server.services.seatview import MAX_AGE

REFRESH_SECONDS = 60.0
CHECK_SECONDS = 1.0  # how often a process looks whether the network changed
VERSION_KEY = "network:version"
DAY_CACHE_SECONDS = 3.0  # a day's departures: statuses change by sync, seats come from Redis
AVERAGE_KMH = 60.0  # to estimate when a bus reaches an intermediate boarding stop
ANSWER_SECONDS = 5.0  # an encoded answer is served at most this long (while still valid)
ANSWERS_KEPT = 5000  # queries with a kept answer, per process


@dataclass
class Network:
    loaded_at: float = 0.0
    version: str = ""  # the shared change counter when this copy was read
    stations: dict[str, dict[str, Any]] = field(default_factory=dict)
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)
    stops: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # route → by seq
    # (route, from seq, to seq) → its fares, oldest effective_from first (future ones too)
    fares: dict[tuple[str, int, int], list[dict[str, Any]]] = field(default_factory=dict)
    carriers: dict[str, dict[str, Any]] = field(default_factory=dict)
    vehicles: dict[str, dict[str, Any]] = field(default_factory=dict)

    def fare(self, route_id: str, frm: int, to: int, at: dt.datetime
             ) -> tuple[dict[str, Any] | None, dt.datetime | None]:
        """The fare in force at ``at``, and when the next one takes over (None: none set)."""
        current, following = None, None
        for fare in self.fares.get((route_id, frm, to), ()):
            if fare["effective_from"] <= at:
                current = fare
            else:
                following = fare["effective_from"]
                break
        return current, following


class NetworkCache:
    """The static network of the province, in memory, refreshed in the background of reads."""

    def __init__(self, db: AsyncDatabase[Any], redis: Redis) -> None:
        self._db = db
        self._version = SharedVersion(redis, VERSION_KEY, CHECK_SECONDS)
        self._network = Network()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, *, own_writes: bool = False) -> Network:
        """The network; an old copy is served while one task reloads it in the background.
        With ``own_writes`` a change this process made is read before answering (an order
        priced right after its process changed a fare pays the new one)."""
        if not self._network.stations or (own_writes and self._network.loaded_at < 0):
            async with self._lock:  # nothing yet, or our own change: wait for the load
                if not self._network.stations or (own_writes and
                                                  self._network.loaded_at < 0):
                    self._network = await self._load()
        elif self._version.due() and not self._lock.locked():
            task = asyncio.get_running_loop().create_task(self._refresh())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return self._network

    async def _refresh(self) -> None:
        async with self._lock:
            stale = time.monotonic() - self._network.loaded_at > REFRESH_SECONDS
            if stale or await self._version.read() != self._network.version:
                self._network = await self._load()

    async def changed(self) -> None:
        """Say the network changed: every process reloads it within a second or two."""
        self._network.loaded_at = -REFRESH_SECONDS
        await self._version.bump()

    async def _load(self) -> Network:
        net = Network(loaded_at=time.monotonic(), version=await self._version.read())
        net.stations = {s["_id"]: s async for s in self._db.stations.find({})}
        net.routes = {r["_id"]: r async for r in self._db.routes.find({})}
        async for stop in self._db.stops.find({}).sort([("route_id", 1), ("seq", 1)]):
            net.stops.setdefault(stop["route_id"], []).append(stop)
        async for fare in self._db.fares.find({}).sort("effective_from", 1):
            net.fares.setdefault((fare["route_id"], fare["from_seq"], fare["to_seq"]),
                                 []).append(fare)
        net.carriers = {c["_id"]: c async for c in self._db.carriers.find({})}
        net.vehicles = {v["_id"]: v async for v in self._db.vehicles.find(
            {}, {"grade": 1, "seats": 1, "model": 1})}
        return net


@dataclass
class _Answer:
    """An encoded search answer and what it was made of."""

    body: Encoded
    net: Network
    listed: list[dict[str, Any]]  # the day's departures, as read (compared by identity)
    cutoff: int
    until: float  # monotonic
    ids: list[str]  # every departure considered, also those filtered out for seats
    stamp: tuple[int, tuple[int, ...]]  # their seat-view generations before reading seats


def _matches_place(stop: dict[str, Any], place: str, net: Network) -> bool:
    if stop.get("station_id") == place or stop["name"] == place or stop["city"] == place:
        return True
    station = net.stations.get(stop.get("station_id") or "")
    return bool(station) and place.lower() in (station.get("city_pinyin"),
                                               station.get("city_initials"))


class SearchService:
    def __init__(self, db: AsyncDatabase[Any], seats: SeatService, rules: RuleService,
                 network: NetworkCache) -> None:
        self._db = db
        self._seats = seats
        self._rules = rules
        self.network = network
        self._days: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._reading: dict[str, asyncio.Task[list[dict[str, Any]]]] = {}
        self._answers: dict[tuple[Any, ...], _Answer] = {}
        self._journeys: tuple[Network | None, dict[tuple[str, str], dict[str, tuple[int, int]]]
                              ] = (None, {})

    async def _departures_of(self, day: str) -> list[dict[str, Any]]:
        """The day's departures, sorted by time: re-read every few seconds by one task while
        the others keep using the copy they have (never one database read per search)."""
        cached = self._days.get(day)
        fresh = cached and time.monotonic() - cached[0] < DAY_CACHE_SECONDS
        if fresh:
            return cached[1]  # type: ignore[index]
        task = self._reading.get(day)
        if task is None:
            task = self._reading[day] = asyncio.get_running_loop().create_task(
                self._read_day(day))
        if cached:
            return cached[1]
        return await asyncio.shield(task)

    async def _read_day(self, day: str) -> list[dict[str, Any]]:
        try:
            found = await self._db.departures.find({"service_date": day}).sort(
                "departs_at", 1).to_list()
            now = time.monotonic()
            before = self._days.get(day)
            if before is not None and before[1] == found:
                found = before[1]  # unchanged: answers made from it stay good
            self._days = {d: v for d, v in self._days.items()
                          if now - v[0] < 10 * DAY_CACHE_SECONDS}
            self._days[day] = (now, found)
            return found
        finally:
            self._reading.pop(day, None)

    async def search(self, origin: str, destination: str, date: str, *,
                     after: str | None = None, before: str | None = None,
                     station: str | None = None, has_seats: bool = False,
                     limit: int = 100) -> Encoded:
        """Departures serving the journey between the two stations, by departure time, as
        the encoded ``{"departures": [...]}`` answer.

        An answer is kept per query and served again while nothing it was made of changed:
        the network, the day's departures (re-read every few seconds), the online cutoff,
        the seats of every departure it considered (the seat view's generations), and the
        time at which one of them closes for online sale. Never longer than
        ``ANSWER_SECONDS``."""
        rules = await self._rules.current()
        day = calendar_day(date, code="INVALID_QUERY", field="date")
        today = local_today()
        if not today <= day < today + dt.timedelta(days=rules.sale_days):
            raise DomainError("DATE_NOT_ON_SALE", f"Departures are on sale from today for "
                              f"{rules.sale_days} days.", field="date")
        net = await self.network.get()
        listed = await self._departures_of(day.isoformat())
        key = (origin, destination, day, after, before, station, has_seats, limit)
        cutoff = rules.online_cutoff_minutes
        view = self._seats.view
        kept = self._answers.get(key)
        now = time.monotonic()
        if kept is not None and kept.net is net and kept.listed is listed and \
                kept.cutoff == cutoff and now < kept.until and \
                view.generations(kept.ids) == kept.stamp:
            return kept.body
        candidates = self._candidates(origin, destination, listed, net, after, before, station)
        ids = [dep["_id"] for dep, *_ in candidates]
        stamp = view.generations(ids)
        live = view.live
        results, closes = await self._results(candidates, net, cutoff, has_seats, limit)
        body = Encoded.of(json.dumps({"departures": results}, ensure_ascii=False,
                                     separators=(",", ":")).encode())
        if live:
            until = now + ANSWER_SECONDS
            if closes is not None:  # a sale closing, or a count used falling due
                until = min(until, now + (closes - dt.datetime.now(dt.UTC)).total_seconds())
            if len(self._answers) >= ANSWERS_KEPT:
                self._answers.clear()
            self._answers[key] = _Answer(body, net, listed, cutoff, until, ids, stamp)
        return body

    def _candidates(self, origin: str, destination: str, listed: list[dict[str, Any]],
                    net: Network, after: str | None, before: str | None,
                    station: str | None) -> list[tuple[dict[str, Any], int, int, dt.datetime]]:
        """The day's departures serving the journey, with boarding and alighting stops and
        the estimated boarding time, after the time and station filters."""
        journeys = self._journeys_of(origin, destination, net)
        if not journeys:
            return []
        found = []
        for dep in listed:
            if dep["route_id"] not in journeys or (station and dep["station_id"] != station):
                continue
            frm, to = journeys[dep["route_id"]]
            boards_at = dep["departs_at"] + dt.timedelta(
                hours=net.stops[dep["route_id"]][frm]["distance_km"] / AVERAGE_KMH)
            local = boards_at.astimezone(LOCAL_TZ).strftime("%H:%M")
            if (after and local < after) or (before and local > before):
                continue
            found.append((dep, frm, to, boards_at))
        return found

    async def _results(self, candidates: list[tuple[dict[str, Any], int, int, dt.datetime]],
                       net: Network, cutoff: int, has_seats: bool, limit: int
                       ) -> tuple[list[dict[str, Any]], dt.datetime | None]:
        """The results, and the first moment they may no longer hold: a candidate closes for
        online sale, or a count they used is due to be read again (a station system's after
        its cache time, a native one after the seat view's longest keep)."""
        seats = await self._seats.availability_many([d for d, *_ in candidates], net.stations)
        now = dt.datetime.now(dt.UTC)
        closing = dt.timedelta(minutes=cutoff)
        kept = {True: dt.timedelta(seconds=PROXIED_CACHE_SECONDS),
                False: dt.timedelta(seconds=MAX_AGE)}
        closes: dt.datetime | None = None
        out = []
        for dep, frm, to, boards_at in candidates:
            avail = seats.get(dep["_id"])
            remaining = avail.remaining_between(frm, to) if avail and \
                avail.status != "offline" else 0
            reason = _not_on_sale(dep, avail, boards_at, now, cutoff)
            if reason is None:
                closes = _earlier(closes, boards_at - closing)
            if avail is not None:
                station = net.stations.get(dep["station_id"], {})
                due = avail.as_of + kept[self._seats.is_proxied(station)]
                closes = _earlier(closes, due)
            fare, next_fare = net.fare(dep["route_id"], frm, to, now)
            if next_fare is not None:  # a new price takes over: the answer must change then
                closes = _earlier(closes, next_fare)
            if has_seats and (reason or remaining == 0):
                continue
            if len(out) < limit:
                out.append(self._result(dep, frm, to, boards_at, remaining, reason, fare, net))
        return out, closes

    def _journeys_of(self, origin: str, destination: str, net: Network
                     ) -> dict[str, tuple[int, int]]:
        """Routes serving the journey: route → (boarding seq, alighting seq), worked out once
        per network copy."""
        if self._journeys[0] is not net or len(self._journeys[1]) > ANSWERS_KEPT:
            self._journeys = (net, {})
        known = self._journeys[1].get((origin, destination))
        if known is not None:
            return known
        journeys: dict[str, tuple[int, int]] = {}
        for route_id, stops in net.stops.items():
            boarding = next((s for s in stops if s.get("boarding", s["seq"] == 0)
                             and _matches_place(s, origin, net)), None)
            if boarding is None:
                continue
            alighting = next((s for s in stops if s["seq"] > boarding["seq"]
                              and s.get("alighting", True)
                              and _matches_place(s, destination, net)), None)
            if alighting is not None:
                journeys[route_id] = (boarding["seq"], alighting["seq"])
        self._journeys[1][(origin, destination)] = journeys
        return journeys

    @staticmethod
    def _result(dep: dict[str, Any], frm: int, to: int, boards_at: dt.datetime,
                remaining: int, reason: str | None, fare: dict[str, Any] | None,
                net: Network) -> dict[str, Any]:
        route = net.routes.get(dep["route_id"], {})
        stops = net.stops[dep["route_id"]]
        origin = net.stations.get(dep["station_id"], {})
        carrier = net.carriers.get(dep["carrier_id"], {})
        vehicle = net.vehicles.get(dep.get("vehicle_id") or "", {})
        return {
            "id": dep["_id"], "route_id": dep["route_id"], "route_name": route.get("name", ""),
            "station": {"id": dep["station_id"], "name": origin.get("name", "")},
            "service_date": dep["service_date"],
            "departs_at": dep["departs_at"].astimezone(LOCAL_TZ).isoformat(),
            "boards_at": boards_at.astimezone(LOCAL_TZ).isoformat(),
            "from": {"seq": frm, "name": stops[frm]["name"], "city": stops[frm]["city"]},
            "to": {"seq": to, "name": stops[to]["name"], "city": stops[to]["city"]},
            "stops": [s["name"] for s in stops],
            "distance_km": stops[to]["distance_km"] - stops[frm]["distance_km"],
            "carrier": {"id": dep["carrier_id"], "name": carrier.get("name", "")},
            "vehicle_grade": vehicle.get("grade", ""),
            "remaining": remaining,
            "fares": fare["prices"] if fare else {},
            "on_sale_online": reason is None,
            "not_on_sale_reason": reason,
        }


def _earlier(a: dt.datetime | None, b: dt.datetime) -> dt.datetime:
    return b if a is None or b < a else a


def _not_on_sale(dep: dict[str, Any], avail: Any, boards_at: dt.datetime, now: dt.datetime,
                 cutoff_minutes: int) -> str | None:
    if dep["status"] != "on_sale":
        return dep["status"]  # stopped, departed, cancelled
    if avail is None or avail.status == "offline" or dep.get("online") is False:
        return "station_offline"
    if avail.status != "on_sale":
        return "stopped"
    if boards_at - now < dt.timedelta(minutes=cutoff_minutes):
        return "sale_closed"
    return None
