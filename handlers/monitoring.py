"""Passenger-flow monitoring (客运信息监测): statistics and route monitoring — an authority
sees its region, a station's staff their station, the operator and finance everything."""

from __future__ import annotations

import datetime as dt
from typing import Any

from handlers.base import ApiHandler, api, route
from server.clock import local_today
from server.errors import DomainError, calendar_day
from server.paging import PAGE_QUERY, TOTAL, Page
from server.schema import DAY, DIVISION, array, integer, obj, string
from server.security.principal import AUTHORITY, FINANCE, OPERATOR, STATION_STAFF
from server.services.flow import GROUPS
from server.services.kinds import CODE

READERS = (AUTHORITY, OPERATOR, FINANCE, STATION_STAFF)
RATE = {"type": ["number", "null"], "minimum": 0, "description": "0–1; null when nothing "
                                                                  "to divide by"}
COUNT = integer(0)
FILTERS = {"from": DAY, "to": DAY, "region": DIVISION, "station": CODE, "route": CODE}
ROW = obj({"key": string(), "name": string(), "passengers": COUNT,
           "revenue": integer(0, description="fen"), "seats": COUNT,
           "load_factor": RATE, "departures": COUNT, "scheduled": COUNT, "cancelled": COUNT,
           "departed": COUNT, "on_time": COUNT, "on_time_rate": RATE,
           "regular_run_rate": RATE, "refunds": COUNT,
           "refund_amount": integer(0, description="fen"),
           "refund_fees": integer(0, description="fen"), "voids": COUNT,
           "passenger_km": COUNT}, ["key", "passengers", "revenue"])
STATS = obj({"group_by": string(enum=list(GROUPS)), "from": DAY, "to": DAY,
             "rows": array(ROW), "total": obj({}, additional=True)},
            ["group_by", "rows", "total"])
TREND = obj({"load_factor": {"type": ["number", "null"]},
             "on_time_rate": {"type": ["number", "null"]},
             "regular_run_rate": {"type": ["number", "null"]}})
ROUTE_ROW = obj({"route_id": string(), "name": string(), "passengers": COUNT, "seats": COUNT,
                 "departures": COUNT, "scheduled": COUNT, "load_factor": RATE,
                 "on_time_rate": RATE, "regular_run_rate": RATE, "trend": TREND,
                 "below": array(string(enum=["load_factor", "on_time_rate",
                                             "regular_run_rate"]))},
                ["route_id", "load_factor", "below"])
ROUTES = obj({"from": DAY, "to": DAY, "thresholds": obj({}, additional=True),
              "routes": array(ROUTE_ROW), "total": TOTAL,
              "flagged": {**COUNT, "description": "routes flagged in all (every page)"}},
             ["routes", "total", "flagged"])
THRESHOLDS = {"min_load_factor": ("load_factor", 0.5), "min_on_time_rate": ("on_time_rate", 0.9),
              "min_regular_run_rate": ("regular_run_rate", 0.95)}


EARLIEST, LATEST = dt.date(2000, 1, 1), dt.date(2099, 12, 31)


def day_of(query: dict[str, Any], name: str) -> dt.date:
    """A day of the query, between 2000 and 2099 (what a statistic can be about)."""
    day = calendar_day(query[name], code="INVALID_VALUE", field=name)
    if not EARLIEST <= day <= LATEST:
        raise DomainError("DAY_OUT_OF_RANGE", field=name, earliest=EARLIEST.isoformat(),
                          latest=LATEST.isoformat())
    return day


def period(query: dict[str, Any], default_days: int = 30) -> tuple[dt.date, dt.date]:
    """``from`` and ``to`` (local days, inclusive); the last ``default_days`` by default."""
    last = day_of(query, "to") if query.get("to") else local_today()
    first = day_of(query, "from") if query.get("from") \
        else last - dt.timedelta(days=default_days - 1)
    if first > last:
        raise DomainError("STATS_RANGE_INVALID", field="from")
    return first, last


class StatsHandler(ApiHandler):
    @api("Passenger-flow statistics for a period (default: the last 30 days) by day, "
         "station, route, carrier, channel or region (city): passengers, revenue, seats, "
         "load factor (上座率), departures, on-time (正点率) and regular-run (正班率) rates, "
         "refunds. An authority sees its region, station staff their station. Served from "
         "aggregates kept up to date as tickets sell, refund and depart",
         roles=READERS, query=obj({"group_by": string(enum=list(GROUPS)), **FILTERS,
                                   "carrier": CODE}),
         response=STATS, tags=("monitoring",),
         errors=("STATS_RANGE_INVALID", "OUT_OF_SCOPE", "INVALID_VALUE", "DAY_OUT_OF_RANGE"))
    async def get(self) -> None:
        q = self.query
        first, last = period(q)
        self.write_json(await self.services.flow.stats(
            self.principal, q.get("group_by", "day"), first, last, region=q.get("region"),
            station=q.get("station"), route=q.get("route"), carrier=q.get("carrier")))


class RouteMonitoringHandler(ApiHandler):
    @api("Route monitoring for route approval: per route over a period, load factor, "
         "on-time and regular-run rates with their change against the period before; routes "
         "below the thresholds flagged and listed first",
         roles=READERS, query=obj({**FILTERS, **{name: {"type": "number", "minimum": 0,
                                                       "maximum": 1}
                                               for name in THRESHOLDS},
                                   "q": string(1, 40, description="part of the route's id or "
                                                                  "name"),
                                   "flagged": {"type": "boolean",
                                               "description": "only the routes flagged"},
                                   **PAGE_QUERY}),
         response=ROUTES, tags=("monitoring",),
         errors=("STATS_RANGE_INVALID", "OUT_OF_SCOPE", "INVALID_VALUE", "DAY_OUT_OF_RANGE"))
    async def get(self) -> None:
        q = self.query
        first, last = period(q)
        thresholds = {field: float(q.get(name, default))
                      for name, (field, default) in THRESHOLDS.items()}
        self.write_json(await self.services.flow.route_monitoring(
            self.principal, first, last, thresholds=thresholds, region=q.get("region"),
            station=q.get("station"), text=q.get("q"), flagged_only=bool(q.get("flagged")),
            page=Page.of(q)))


FORECAST_DAY = obj({"date": DAY, "passengers": COUNT, "low": COUNT, "high": COUNT,
                    "pre_sold": COUNT, "seats": COUNT, "load_factor": RATE,
                    "holiday": {"type": ["string", "null"]}, "rest": {"type": "boolean"},
                    "adjusted_workday": {"type": "boolean"}, "rush": {"type": "boolean"},
                    "calendar_estimated": {"type": "boolean"}},
                   ["date", "passengers", "low", "high", "seats"])
FORECAST = obj({"station": string(), "route": string(), "days": array(FORECAST_DAY),
                "model": obj({"kind": string(), "backtest": obj({
                    "mape": {"type": ["number", "null"]}, "weeks": COUNT,
                    "from": {"type": ["string", "null"]}, "to": {"type": ["string", "null"]}},
                    ["mape", "weeks"])}, ["kind", "backtest"], additional=True)},
               ["days", "model"])
WARNING = obj({"id": string(), "kind": string(enum=["station", "route"]), "ref": string(),
               "name": string(), "region": string(), "date": DAY,
               "level": string(enum=["peak", "over_capacity"]), "passengers": COUNT,
               "seats": COUNT, "load_factor": RATE}, ["id", "kind", "ref", "date", "level"],
              additional=True)


class ForecastHandler(ApiHandler):
    @api("Daily passenger forecast of a station or a route for the next days (default 14, at "
         "most 30): a gradient-boosted model on history, the holiday calendar (调休 and 春运 "
         "included) and what is already sold, with a 10–90 % interval, holiday flags, and the "
         "model's error on the last eight weeks of history held out (MAPE)",
         roles=READERS, query=obj({"station": CODE, "route": CODE, "days": integer(1, 30)}),
         response=FORECAST, tags=("monitoring",),
         errors=("FORECAST_TARGET", "OUT_OF_SCOPE", "NOT_FOUND", "FORECAST_NO_HISTORY"))
    async def get(self) -> None:
        q = self.query
        if bool(q.get("station")) == bool(q.get("route")):
            raise DomainError("FORECAST_TARGET", field="station")
        kind = "station" if q.get("station") else "route"
        ref = str(q[kind])
        self.write_json(await self.services.forecasts.forecast_for(
            self.principal, kind, ref, int(q.get("days", 14))))


class WarningsHandler(ApiHandler):
    @api("Passenger-flow peak warnings (客流预警) from the latest daily forecast: each "
         "station or route and day whose forecast reaches the threshold share of the seats "
         "offered (peak) or exceeds them (over_capacity), from today on (or a period). Also "
         "pushed: an alert for the operator, and the WebSocket topic warnings:<region> for "
         "authorities", roles=READERS,
         query=obj({"from": DAY, "to": DAY, "kind": string(enum=["station", "route"])}),
         response=obj({"warnings": array(WARNING), "threshold": RATE}, ["warnings"]),
         tags=("monitoring",), errors=("STATS_RANGE_INVALID", "INVALID_VALUE", "DAY_OUT_OF_RANGE"))
    async def get(self) -> None:
        q = self.query
        first = day_of(q, "from") if q.get("from") else local_today()
        last = day_of(q, "to") if q.get("to") else first + dt.timedelta(days=30)
        if last < first:
            raise DomainError("STATS_RANGE_INVALID", field="to")
        forecasts = self.services.forecasts
        self.write_json({"warnings": await forecasts.warnings(self.principal, first, last,
                                                              q.get("kind")),
                         "threshold": forecasts.threshold})


FEATURES = obj({"type": string(enum=["FeatureCollection"]), "date": DAY,
                "features": array(obj({"type": string(enum=["Feature"]), "id": string(),
                                       "geometry": obj({"type": string(),
                                                        "coordinates": {"type": "array"}},
                                                       ["type", "coordinates"]),
                                       "properties": obj({}, additional=True)},
                                      ["type", "geometry", "properties"]))},
               ["type", "features"])
GEO_QUERY = obj({"date": DAY})


class GeoStationsHandler(ApiHandler):
    @api("Stations on the map: a GeoJSON FeatureCollection of points (longitude, latitude; "
         "WGS 84) with the day's passengers, seats and load factor and their coming peak "
         "warnings (count, worst level, first day)", roles=READERS, query=GEO_QUERY,
         response=FEATURES, tags=("monitoring",), errors=("INVALID_VALUE", "DAY_OUT_OF_RANGE"))
    async def get(self) -> None:
        self.write_json(await self.services.geo.stations(self.principal, _day(self.query)))


class GeoRoutesHandler(ApiHandler):
    @api("Routes on the map: a GeoJSON FeatureCollection of lines from origin to destination "
         "station, with the day's load and coming peak warnings", roles=READERS,
         query=GEO_QUERY, response=FEATURES, tags=("monitoring",),
         errors=("INVALID_VALUE", "DAY_OUT_OF_RANGE"))
    async def get(self) -> None:
        self.write_json(await self.services.geo.routes(self.principal, _day(self.query)))


def _day(query: dict[str, Any]) -> dt.date:
    return day_of(query, "date") if query.get("date") else local_today()


EXPORT = obj({"id": string(), "date": DAY, "revision": COUNT,
              "status": string(enum=["building", "failed", "acknowledged", "mismatch"]),
              "files": array(obj({"name": string(), "element_set": string(), "rows": COUNT,
                                  "sha256": string()})),
              "rows": COUNT, "receipt": obj({}, additional=True),
              "differences": array(obj({"file": string(), "sent": COUNT,
                                        "counted": {"type": ["integer", "null"]}})),
              "error": string()}, ["id", "date", "status"], additional=True)
EXPORT_BODY = obj({"date": DAY, "resend": {"type": "boolean", "description":
                                           "build and send again though acknowledged"}},
                  ["date"])
MINISTRY_READERS = (OPERATOR, AUTHORITY)


class MinistryExportsHandler(ApiHandler):
    @api("The daily exchanges with the ministry's platform, newest first", roles=MINISTRY_READERS,
         response=obj({"exports": array(EXPORT)}, ["exports"]), tags=("monitoring",))
    async def get(self) -> None:
        self.write_json({"exports": await self.services.ministry.listed()})

    @api("Build a day's files for the ministry (base data changes, departures, tickets sold, "
         "refunds, voids, statistics: CSV under JT/T 979.2 element names, zipped with a "
         "signed manifest), send them, and reconcile the platform's receipt counts with "
         "ours (a difference is an alert). Once per day; again only with resend",
         roles=(OPERATOR,), body=EXPORT_BODY, response=EXPORT, status=201,
         idempotent=True, tags=("monitoring",),
         errors=("INVALID_VALUE", "DAY_OUT_OF_RANGE", "MINISTRY_DAY_OPEN",
                 "MINISTRY_EXPORT_RUNNING"))
    async def post(self) -> None:
        day = day_of(self.body, "date")
        self.set_status(201)
        self.write_json(await self.services.ministry.export(
            self.principal, day, resend=bool(self.body.get("resend"))))


class MinistryExportHandler(ApiHandler):
    @api("One day's exchange: its files (rows, SHA-256), the receipt and the reconciliation",
         roles=MINISTRY_READERS, response=EXPORT, tags=("monitoring",), errors=("NOT_FOUND",))
    async def get(self, export_id: str) -> None:
        self.write_json(await self.services.ministry.get(export_id))


class MinistryPackageHandler(ApiHandler):
    @api("The zip sent to the ministry, as sent (personal data in it masked; the operator "
         "only)", roles=(OPERATOR,), content_type="application/zip", tags=("monitoring",),
         errors=("NOT_FOUND",))
    async def get(self, export_id: str) -> None:
        name, data = await self.services.ministry.package(export_id)
        self.attachment(name, "application/zip", data)


class YunzhengPullsHandler(ApiHandler):
    @api("The latest pulls of base data changes from the provincial 运政 system",
         roles=(OPERATOR,), response=obj({"pulls": array(obj({}, additional=True))},
                                         ["pulls"]), tags=("monitoring",))
    async def get(self) -> None:
        pulls = await self.services.ministry.records.pulls()
        for p in pulls:
            p["at"] = p["at"].isoformat()
        self.write_json({"pulls": pulls})

    @api("Pull the 运政 system's base data changes now and import them (the hourly job's "
         "work): per kind the rows created, updated and unchanged, or why a file was refused "
         "(then nothing of it is written and it is asked for again)", roles=(OPERATOR,),
         response=obj({"kinds": obj({}, additional=True)}, ["kinds"], additional=True),
         tags=("monitoring",))
    async def post(self) -> None:
        self.write_json(await self.services.ministry.pull_base_data())


default_handlers = [
    route(r"/api/v1/admin/ministry/exports", MinistryExportsHandler),
    route(r"/api/v1/admin/ministry/exports/{export_id}.zip", MinistryPackageHandler),
    route(r"/api/v1/admin/ministry/exports/{export_id}", MinistryExportHandler),
    route(r"/api/v1/admin/ministry/yunzheng-pulls", YunzhengPullsHandler),
    route(r"/api/v1/geo/stations", GeoStationsHandler),
    route(r"/api/v1/geo/routes", GeoRoutesHandler),
    route(r"/api/v1/stats", StatsHandler),
    route(r"/api/v1/monitoring/routes", RouteMonitoringHandler),
    route(r"/api/v1/forecast", ForecastHandler),
    route(r"/api/v1/warnings", WarningsHandler),
]
