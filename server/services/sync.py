"""Data sync from station systems: pull, normalize, upsert idempotently, detect changes.

A full pull brings stations, routes with stops and fares, schedules and departures; an
incremental pull brings departures changed since the station's last cursor. Every document
is compared with what we hold: new, changed and unchanged are counted, fare changes and
departure status changes are listed, and on a full pull a future departure the station no
longer lists is withdrawn. Each run is recorded in ``sync_runs``. A station that is down or
answers garbage leaves the last good data in place and is taken off online sale; the next
good run puts it back.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from server.clock import local_today, now_ms
from server.errors import DomainError
from server.exchange.base import SyncBatch
from server.exchange.errors import BadStationResponse, ExchangeError
from server.paging import FIRST_PAGE, Page, find_page
from server.security.principal import Principal
from server.services.audit import AuditService
from server.services.departures import DepartureChanges
from server.services.rules import RuleService
from server.services.search import NetworkCache
from server.services.seats import SeatService
from server.storage.departures import DepartureRecords, passenger_changes
from server.storage.network import KINDS, NetworkRecords

log = logging.getLogger(__name__)

# the fields each kind of document takes from the station (ours, like system config, stay)
FIELDS = {
    "carriers": ("code", "name", "division", "licence_no"),
    "vehicles": ("plate", "carrier_id", "model", "seats", "grade"),
    "drivers": ("licence_no", "carrier_id", "name", "licence_class"),
    "stations": ("code", "name", "grade", "division", "city", "address", "location"),
    "routes": ("code", "name", "origin_station_id", "destination_station_id", "distance_km",
               "highway_km"),
    "stops": ("route_id", "seq", "station_id", "name", "city", "division", "distance_km",
              "boarding", "alighting"),
    "fares": ("route_id", "from_seq", "to_seq", "guide_price", "station_fee", "prices"),
    "schedules": ("code", "route_id", "station_id", "carrier_id", "departs_at_local", "nature",
                  "type", "seats"),
    "departures": ("schedule_id", "schedule_code", "route_id", "station_id", "carrier_id",
                   "service_date", "departs_at", "seats", "status", "vendor_ref"),
}
DEFAULTS = {
    "carriers": {"status": "active"},
    "vehicles": {"status": "active"},
    "drivers": {"status": "active"},
    "routes": {"grade": "class_2", "type": "intercity", "status": "active"},
    "schedules": {"status": "active"},
    "departures": {"inventory": "proxied", "online": True, "vehicle_id": "", "driver_ids": []},
    "stations": {"status": "active"},
    "fares": {},
    "stops": {},
}
FARES_EFFECTIVE = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class SyncService:
    """Pulls station data through the exchange layer."""

    def __init__(self, db: AsyncDatabase[Any], seats: SeatService,
                 audit: AuditService, network: NetworkCache,
                 rules: RuleService | None = None) -> None:
        self._audit = audit
        self._departures = DepartureRecords(db)
        self._network = NetworkRecords(db)
        self._cache = network
        self._db = db
        self._seats = seats
        self._changes = DepartureChanges(db, seats.events, rules)  # the process's rules

    async def proxied_stations(self, scope: dict[str, Any] | None = None
                               ) -> list[dict[str, Any]]:
        return await self._db.stations.find(
            {"system.vendor": {"$in": ["rest", "xml"]}, **(scope or {})}).to_list()

    async def sync_all(self, full: bool = False) -> list[dict[str, Any]]:
        """One run per station system (a system may serve several stations)."""
        runs, seen = [], set()
        for station in await self.proxied_stations():
            system = _system_key(station)
            if system not in seen:
                seen.add(system)
                runs.append(await self.sync_station(station["_id"], full=full))
        return runs

    async def sync_on_demand(self, actor: Principal, station_id: str, full: bool = False
                             ) -> dict[str, Any]:
        """An operator syncs one station now (audited)."""
        run = await self.sync_station(station_id, full)
        await self._audit.record(actor, "station.sync", target=station_id,
                                 details={"outcome": run["outcome"]})
        return run

    async def sync_station(self, station_id: str, full: bool = False) -> dict[str, Any]:
        """One sync run of the system serving this station (and its sibling stations)."""
        station = await self._db.stations.find_one({"_id": station_id})
        if station is None:
            raise DomainError("STATION_NOT_FOUND")
        served = [s["_id"] for s in await self.proxied_stations()
                  if _system_key(s) == _system_key(station)] or [station_id]
        cursor = (station.get("sync") or {}).get("cursor")
        kind = "full" if full or not cursor else "incremental"
        started = now_ms()  # as stored, so the answer and the record agree
        clock = time.perf_counter()
        run: dict[str, Any] = {"station_id": station_id, "station_ids": served, "kind": kind,
                               "started_at": started, "outcome": "running"}
        run["_id"] = (await self._db.sync_runs.insert_one(run)).inserted_id
        try:
            exchange = self._seats.registry.for_station(station)
            batch = await self._seats._station_call(  # recorded like every station call
                station, f"pull_{kind}",
                lambda: exchange.pull(None if kind == "full" else cursor))
            self._check(set(served), batch, kind)
            counts, changes = await self._apply(station, batch, kind)
        except ExchangeError as exc:
            run.update(outcome="failed", error=exc.code, detail=str(exc.details)[:300],
                       duration_ms=round(1000 * (time.perf_counter() - clock), 1))
            await self._db.sync_runs.replace_one({"_id": run["_id"]}, run)
            if isinstance(exc, BadStationResponse):
                for sid in served:
                    await self._seats.mark_offline(sid, f"sync: {exc.code}")
            log.warning("sync failed", extra={"fields": {"station_id": station_id,
                                                         "error": exc.code}})
            return run
        await self._db.stations.update_many(
            {"_id": {"$in": served}},
            {"$set": {"sync.cursor": batch.cursor, "sync.last_ok_at": started,
                      "sync.last_kind": kind}})
        for sid in served:
            await self._seats.mark_online(sid)
        try:
            await self._changes.announce()
        except (RedisError, PyMongoError) as exc:  # kept in `unannounced` for the next run
            log.warning("departure changes not announced yet: %s", type(exc).__name__)
        run.update(outcome="ok", counts=counts, changes=changes[:200],
                   duration_ms=round(1000 * (time.perf_counter() - clock), 1))
        await self._db.sync_runs.replace_one({"_id": run["_id"]}, run)
        return run

    async def status(self, actor: Principal, text: str | None = None,
                     online: bool | None = None, page: Page = FIRST_PAGE
                     ) -> tuple[list[dict[str, Any]], int, int]:
        """A page of the proxied stations the actor may see (whose code or name has
        ``text``; online or not), by code: online or not, the last finished sync run and the
        one under way (if any), the last hour of calls. With how many match, and how many of
        those matching ``text`` are online."""
        query: dict[str, Any] = {"system.vendor": {"$in": ["rest", "xml"]},
                                 **actor.station_query()}
        if text:
            pattern = {"$regex": re.escape(text), "$options": "i"}
            query["$or"] = [{"_id": pattern}, {"name": pattern}]
        up = await self._db.stations.count_documents({**query, "online": {"$ne": False}})
        if online is not None:
            query["online"] = {"$ne": False} if online else False
        stations, total = await find_page(self._db.stations, query, [("_id", 1)], page)
        return await self._health(stations), total, up

    async def _health(self, stations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        out = []
        for station in stations:
            last = await self._db.sync_runs.find_one(
                {"station_id": station["_id"], "outcome": {"$ne": "running"}},
                sort=[("started_at", -1)])
            running = await self._db.sync_runs.find_one(
                {"station_id": station["_id"], "outcome": "running"},
                {"kind": 1, "started_at": 1}, sort=[("started_at", -1)])
            calls: dict[str, int] = {}
            latencies: list[float] = []
            async for call in self._db.station_calls.find(
                    {"station_id": station["_id"], "at": {"$gte": since}},
                    {"outcome": 1, "latency_ms": 1}).sort("at", -1).limit(2000):
                calls[call["outcome"]] = calls.get(call["outcome"], 0) + 1
                latencies.append(float(call["latency_ms"]))
            latencies.sort()
            out.append({
                "station_id": station["_id"], "name": station["name"],
                "vendor": station["system"]["vendor"], "online": station.get("online", True),
                "offline_reason": station.get("offline_reason", ""),
                "last_sync": {k: last.get(k) for k in ("kind", "started_at", "outcome",
                                                        "duration_ms", "counts", "error")}
                if last else None,
                "sync_running": {"kind": running["kind"], "started_at": running["started_at"]}
                if running else None,
                "calls_last_hour": calls,
                "p50_ms": latencies[len(latencies) // 2] if latencies else None,
                "p99_ms": latencies[int(len(latencies) * 0.99)] if latencies else None})
        return out

    @staticmethod
    def _check(served: set[str], batch: SyncBatch, kind: str) -> None:
        """A system speaks only for the stations it serves: anything else is a bad
        response, not data."""
        for dep in batch.departures:
            if dep["station_id"] not in served:
                raise BadStationResponse(detail=f"departure of another station {dep['_id']}")
            if dep["seats"] < 1 or dep["seats"] > 80:
                raise BadStationResponse(detail=f"seat count {dep['seats']}")
        for sch in batch.schedules:
            if sch["station_id"] not in served:
                raise BadStationResponse(detail=f"schedule of another station {sch['_id']}")
        for st in batch.stations:
            if st["_id"] not in served:
                raise BadStationResponse(detail=f"station it does not serve {st['_id']}")

    async def _apply(self, station: dict[str, Any], batch: SyncBatch, kind: str
                     ) -> tuple[dict[str, dict[str, int]], list[dict[str, Any]]]:
        served = [s["_id"] for s in await self.proxied_stations()
                  if _system_key(s) == _system_key(station)] or [station["_id"]]
        counts: dict[str, dict[str, int]] = {}
        changes: list[dict[str, Any]] = []
        # departures carry their schedule's carrier
        carriers = {s["_id"]: s["carrier_id"] for s in batch.schedules}
        missing = {d["schedule_id"] for d in batch.departures} - set(carriers)
        if missing:
            async for sch in self._db.schedules.find({"_id": {"$in": list(missing)}},
                                                     {"carrier_id": 1}):
                carriers[sch["_id"]] = sch["carrier_id"]
        for dep in batch.departures:
            dep["carrier_id"] = carriers.get(dep["schedule_id"], "")
            if not dep["carrier_id"]:
                raise BadStationResponse(detail=f"unknown schedule {dep['schedule_id']}")
        for fare in batch.fares:
            fare.setdefault("effective_from", FARES_EFFECTIVE)

        now = dt.datetime.now(dt.UTC)
        for name in KINDS:
            docs: list[dict[str, Any]] = getattr(batch, name)
            mirrored = await self._network.mirror(
                name, docs, FIELDS[name], at=now, stamp="synced_at",
                on_insert=lambda doc, name=name: {**DEFAULTS[name],
                                                  **_insert_extras(name, doc, station)})
            counts[name] = mirrored.counts
            if name == "fares":
                changes += [{"kind": "fare", "id": old["_id"],
                             "adult_before": (old.get("prices") or {}).get("adult"),
                             "adult_after": diff["prices"].get("adult")}
                            for old, diff in mirrored.changed if "prices" in diff]
        mirrored = await self._departures.mirror(
            batch.departures, FIELDS["departures"], at=now,
            on_insert=lambda doc: {**DEFAULTS["departures"]})
        counts["departures"] = mirrored.counts
        changes += [change for old, diff in mirrored.changed
                    for change in passenger_changes(old, diff)]
        if any(c["new"] or c["changed"] for k, c in counts.items() if k != "departures"):
            await self._cache.changed()

        if kind == "full":
            listed = {d["_id"] for d in batch.departures}
            withdrawn = await self._db.departures.find(
                {"station_id": {"$in": served}, "inventory": "proxied",
                 "service_date": {"$gte": local_today().isoformat()},
                 "status": {"$ne": "cancelled"}, "_id": {"$nin": list(listed)}},
                {"_id": 1}).to_list()
            if withdrawn:
                ids = [d["_id"] for d in withdrawn]
                for i in ids:
                    change = {"kind": "withdrawn", "id": i, "before": "", "after": "cancelled"}
                    await self._departures.withdrawn(i, change, dt.datetime.now(dt.UTC))
                    changes.append(change)
            counts["departures"]["withdrawn"] = len(withdrawn)
        return counts, changes


def _system_key(station: dict[str, Any]) -> tuple[str, str]:
    system = station.get("system") or {}
    return system.get("vendor", ""), system.get("base_url", station["_id"])


def _insert_extras(name: str, doc: dict[str, Any], station: dict[str, Any]) -> dict[str, Any]:
    """What a new document needs beyond the station's fields."""
    if name == "fares":
        return {"effective_from": doc["effective_from"]}
    if name == "stations":  # a station first seen through a sibling's system shares it
        return {"system": station["system"]}
    return {}


