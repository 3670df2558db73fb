"""The map (GIS): stations and routes as GeoJSON FeatureCollections (RFC 7946: longitude
first, WGS 84), each with its passenger flow of the day and its peak warnings, inside the
reader's scope."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from server.security.principal import Principal
from server.services.flow import FlowStats
from server.services.forecast import MAX_DAYS, Forecasts

LEVELS = {"peak": 1, "over_capacity": 2}


class GeoViews:
    def __init__(self, db: AsyncDatabase[Any], flow: FlowStats, forecasts: Forecasts) -> None:
        self._db = db
        self._flow = flow
        self._forecasts = forecasts

    async def stations(self, actor: Principal, day: dt.date) -> dict[str, Any]:
        load = await self._load(actor, "station", day)
        warned = await self._warned(actor, "station", day)
        features = []
        async for s in self._db.stations.find(actor.station_query(), {
                "name": 1, "grade": 1, "city": 1, "division": 1, "location": 1, "status": 1,
                "system.vendor": 1}).sort("_id", 1):
            if not (s.get("location") or {}).get("coordinates"):
                continue
            features.append(_feature(s["location"], {
                "id": s["_id"], "name": s["name"], "grade": s.get("grade"),
                "city": s.get("city"), "division": s.get("division"),
                "status": s.get("status"), "system": (s.get("system") or {}).get("vendor"),
                **load.get(s["_id"], _empty()), **warned.get(s["_id"], _no_warning())}))
        return _collection(features, day)

    async def routes(self, actor: Principal, day: dt.date) -> dict[str, Any]:
        stations = {s["_id"]: s async for s in self._db.stations.find(
            actor.station_query(), {"location": 1, "name": 1})}
        load = await self._load(actor, "route", day)
        warned = await self._warned(actor, "route", day)
        everywhere = {s["_id"]: s async for s in self._db.stations.find({}, {"location": 1})}
        features = []
        async for r in self._db.routes.find(
                {"origin_station_id": {"$in": sorted(stations)}},
                {"name": 1, "origin_station_id": 1, "destination_station_id": 1,
                 "distance_km": 1, "status": 1, "grade": 1}).sort("_id", 1):
            ends = [(everywhere.get(r["origin_station_id"]) or {}).get("location"),
                    (everywhere.get(r["destination_station_id"]) or {}).get("location")]
            if not all(e and e.get("coordinates") for e in ends):
                continue
            line = {"type": "LineString", "coordinates": [e["coordinates"] for e in ends]}
            features.append(_feature(line, {
                "id": r["_id"], "name": r["name"], "origin": r["origin_station_id"],
                "destination": r["destination_station_id"],
                "distance_km": r.get("distance_km"), "status": r.get("status"),
                **load.get(r["_id"], _empty()), **warned.get(r["_id"], _no_warning())}))
        return _collection(features, day)

    async def _load(self, actor: Principal, kind: str, day: dt.date) -> dict[str, Any]:
        got = await self._flow.stats(actor, kind, day, day)
        return {row["key"]: {"passengers": row["passengers"], "seats": row["seats"],
                             "load_factor": row["load_factor"]} for row in got["rows"]}

    async def _warned(self, actor: Principal, kind: str, day: dt.date) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for w in await self._forecasts.warnings(actor, day, day + dt.timedelta(days=MAX_DAYS),
                                                kind):
            now = out.setdefault(w["ref"], _no_warning())
            now["warnings"] += 1
            if LEVELS[w["level"]] > LEVELS.get(now["warning_level"] or "", 0):
                now["warning_level"] = w["level"]
            now["next_warning"] = now["next_warning"] or w["date"]
        return out


def _empty() -> dict[str, Any]:
    return {"passengers": 0, "seats": 0, "load_factor": None}


def _no_warning() -> dict[str, Any]:
    return {"warnings": 0, "warning_level": None, "next_warning": None}


def _feature(geometry: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Feature", "id": properties["id"],
            "geometry": {"type": geometry["type"], "coordinates": geometry["coordinates"]},
            "properties": properties}


def _collection(features: list[dict[str, Any]], day: dt.date) -> dict[str, Any]:
    return {"type": "FeatureCollection", "date": day.isoformat(), "features": features}
