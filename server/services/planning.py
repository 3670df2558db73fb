"""Departure planning (发班计划): dated departures from timetabled schedules, idempotently.

Run at every start and whenever schedules change: for each active schedule and each day of
the window, the departure is created if missing and left alone if it exists (a departure
already on sale keeps its vehicle, seats and status).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from server.clock import LOCAL_TZ, local_today
from server.storage.departures import DepartureRecords


def departs_at(service_date: dt.date, local_time: str) -> dt.datetime:
    """The UTC instant of a local departure time on a service date."""
    hour, minute = (int(x) for x in local_time.split(":"))
    local = dt.datetime(service_date.year, service_date.month, service_date.day, hour, minute,
                        tzinfo=LOCAL_TZ)
    return local.astimezone(dt.UTC)


def departure_id(schedule_code: str, service_date: dt.date) -> str:
    return f"{schedule_code}-{service_date:%Y%m%d}"


def _pick(options: list[Any], *key: str) -> Any:
    """A stable choice (same schedule and day → same vehicle), independent of process."""
    digest = hashlib.sha256("|".join(key).encode()).digest()
    return options[int.from_bytes(digest[:4], "big") % len(options)]


async def plan_sale_window(db: AsyncDatabase[Any], sale_days: int) -> int:
    """Departures for every day on sale and for the day that goes on sale at the next local
    midnight, so that day is bookable from its first minute, not from the next planning run."""
    return await plan_departures(db, local_today(), sale_days + 1)


async def plan_departures(db: AsyncDatabase[Any], start: dt.date, days: int,
                          schedule_ids: list[str] | None = None) -> int:
    """Create missing departures for ``days`` days from ``start`` (of every active schedule,
    or of those named); return how many were new."""
    vehicles: dict[str, list[dict[str, Any]]] = {}
    async for v in db.vehicles.find({"status": "active"}, {"carrier_id": 1, "seats": 1}):
        vehicles.setdefault(v["carrier_id"], []).append(v)
    drivers: dict[str, list[str]] = {}
    async for d in db.drivers.find({"status": "active"}, {"carrier_id": 1}):
        drivers.setdefault(d["carrier_id"], []).append(d["_id"])
    routes = {r["_id"]: r async for r in db.routes.find({}, {"distance_km": 1})}

    native = await db.stations.distinct("_id", {"system.vendor": "native"})
    docs: list[dict[str, Any]] = []
    now = dt.datetime.now(dt.UTC)
    wanted: dict[str, Any] = {"status": "active", "station_id": {"$in": native}}
    if schedule_ids is not None:
        wanted["_id"] = {"$in": schedule_ids}
    async for sch in db.schedules.find(wanted):
        await asyncio.sleep(0)  # a schedule's days at a time: requests are served between
        fleet = vehicles.get(sch["carrier_id"]) or []
        crew = drivers.get(sch["carrier_id"]) or []
        two_drivers = routes.get(sch["route_id"], {}).get("distance_km", 0) > 400
        for offset in range(days):
            day = start + dt.timedelta(days=offset)
            vehicle = _pick(fleet, sch["code"], day.isoformat()) if fleet else None
            driver_ids = []
            if crew:
                first = _pick(crew, sch["code"], day.isoformat(), "driver")
                driver_ids = [first]
                if two_drivers and len(crew) > 1:
                    second = crew[(crew.index(first) + 1) % len(crew)]
                    driver_ids.append(second)
            seats = min(sch["seats"], vehicle["seats"]) if vehicle else sch["seats"]
            doc = {
                "_id": departure_id(sch["code"], day),
                "schedule_id": sch["_id"],
                "schedule_code": sch["code"],
                "route_id": sch["route_id"],
                "station_id": sch["station_id"],
                "carrier_id": sch["carrier_id"],
                "vehicle_id": vehicle["_id"] if vehicle else "",
                "driver_ids": driver_ids,
                "service_date": day.isoformat(),
                "departs_at": departs_at(day, sch["departs_at_local"]),
                "seats": seats,
                "status": "on_sale",
                "inventory": "native",
                "online": True,
                "created_at": now,
            }
            docs.append(doc)
    return await DepartureRecords(db).plan(docs)


async def retime_departures(db: AsyncDatabase[Any], schedule: dict[str, Any]) -> dict[str, int]:
    """A schedule's new time for its planned departures still to come that nobody has a
    ticket on; one with passengers keeps its time (the operator delays it, and they are told).
    """
    moved = kept = 0
    records = DepartureRecords(db)
    now = dt.datetime.now(dt.UTC)
    async for dep in db.departures.find(
            {"schedule_id": schedule["_id"], "inventory": "native", "nature": {"$ne": "extra"},
             "status": {"$in": ["on_sale", "stopped"]}, "departs_at": {"$gt": now}},
            {"service_date": 1, "departs_at": 1}):
        when = departs_at(dt.date.fromisoformat(dep["service_date"]),
                          schedule["departs_at_local"])
        if when <= now or when == dep["departs_at"]:
            continue
        if await db.tickets.find_one({"departure_id": dep["_id"], "active": True}, {"_id": 1}):
            kept += 1
        elif await records.retime_unsold(dep["_id"], dep["departs_at"], when):
            moved += 1
    return {"moved": moved, "kept": kept}
