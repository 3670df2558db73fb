"""Passenger-flow forecasts (客流预测) and peak warnings.

A station's or a route's daily passengers for the next days, from its history (the flow day
cells), the travel calendar and what is already sold:

- **Model**: gradient-boosted regression trees (scikit-learn's histogram GBM, Poisson loss)
  on calendar features — weekday, day off, which holiday, adjusted working day (调休), days
  to the next holiday and since the last, the day inside 春运, the month — and the series'
  level a month earlier (known for every horizon up to 30 days).
- **Backtest**: the last eight weeks of history are held out, the model is trained on what
  came before and its mean absolute percentage error (MAPE) on those weeks is reported with
  every forecast; the forecast itself comes from a model trained on all of the history, and
  its interval from the backtest's errors (their 10th and 90th percentiles).
- **Pre-sales** (the booking curve): a day already partly sold is forecast at least at what
  is sold, plus what the model expects still to come — the share of a day's tickets usually
  still unsold that many days ahead (:data:`BOOKED_BY`, the intercity pattern of most tickets
  bought in the last two days; to be replaced by the curve measured from our own sales once
  a season of them exists).

Fitting is CPU work and runs in a worker thread; a forecast is kept for the day (per series
and length) in the process. The warnings job forecasts every station and route and raises a
warning where a day's forecast reaches the threshold share of the seats offered.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymongo.asynchronous.database import AsyncDatabase

from server.clock import local_today, now_ms
from server.errors import DomainError
from server.security.principal import Principal, region_prefix
from server.services.alerts import AlertService
from server.services.calendar import day_info, holiday_edges
from server.services.events import EventLog, Topic
from server.storage.flow import FlowCells, FlowWarnings

log = logging.getLogger(__name__)

HOLDOUT_DAYS = 56  # eight weeks
MIN_HISTORY_DAYS = HOLDOUT_DAYS + 70
LEVEL_LAG = (30, 58)  # the level feature: mean of the days 58 … 30 days before
HOLIDAYS = ("元旦", "春节", "清明节", "劳动节", "端午节", "中秋节", "国庆节")
# share of a day's tickets usually sold this many days ahead (0 = the day itself: all)
BOOKED_BY = (1.0, 0.55, 0.35, 0.25, 0.18, 0.14, 0.12, 0.1, 0.08, 0.06, 0.05)
MAX_DAYS = 30


def features(day: dt.date, level: float) -> list[float]:
    info = day_info(day)
    to_start, since_end = holiday_edges(day)
    return [day.weekday(), float(info.rest), float(HOLIDAYS.index(info.holiday) + 1
                                                   if info.holiday in HOLIDAYS else 0),
            float(info.adjusted_workday), float(to_start), float(since_end),
            float(info.rush_day if info.rush_day is not None else -40), level,
            day.month]


def _level(series: dict[dt.date, int], day: dt.date) -> float | None:
    values = [series[d] for k in range(LEVEL_LAG[0], LEVEL_LAG[1] + 1)
              if (d := day - dt.timedelta(days=k)) in series]
    return sum(values) / len(values) if len(values) >= 14 else None


def _rows(series: dict[dt.date, int], days: list[dt.date]) -> tuple[list[list[float]],
                                                                     list[int]]:
    x, y = [], []
    for day in days:
        level = _level(series, day)
        if level is not None and day in series:
            x.append(features(day, level))
            y.append(series[day])
    return x, y


def _model(x: list[list[float]], y: list[int]) -> Any:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    # one thread: a few hundred rows gain nothing from more, and the process's other
    # threads (the event loop among them) keep their cores
    with threadpool_limits(limits=1):
        return HistGradientBoostingRegressor(
            loss="poisson", max_iter=150, learning_rate=0.08, max_leaf_nodes=15,
            min_samples_leaf=8, categorical_features=[0, 2], random_state=7,
        ).fit(np.asarray(x), np.asarray(y, dtype=float))


@dataclass(frozen=True)
class Fitted:
    backtest_mape: float | None
    backtest: tuple[str, str]
    trained: tuple[str, str]
    days: int
    predictions: list[tuple[dt.date, float, float, float]]  # day, mean, low, high


def fit_and_predict(series: dict[dt.date, int], horizon: list[dt.date]) -> Fitted:
    """Backtest on the last eight weeks, then forecast ``horizon`` from all of it (CPU work).
    The interval is the backtest's own: the 10th and 90th percentiles of its relative errors
    around the forecast (what the model got wrong on days it had not seen)."""
    days = sorted(series)
    cut = days[-1] - dt.timedelta(days=HOLDOUT_DAYS)
    x_train, y_train = _rows(series, [d for d in days if d <= cut])
    x_test, y_test = _rows(series, [d for d in days if d > cut])
    predicted = _model(x_train, y_train).predict(np.asarray(x_test))
    pairs = [(float(p), a) for p, a in zip(predicted, y_test, strict=True) if a > 0 and p > 0]
    mape = round(sum(abs(p - a) / a for p, a in pairs) / len(pairs), 4) if pairs else None
    relative = sorted((a - p) / p for p, a in pairs) or [0.0]
    below = min(0.0, relative[int(0.1 * (len(relative) - 1))])
    above = max(0.0, relative[int(0.9 * (len(relative) - 1))])
    x_all, y_all = _rows(series, days)
    model = _model(x_all, y_all)
    out = []
    for day in horizon:
        level = _level(series, day) or (sum(y_all[-28:]) / max(1, len(y_all[-28:])))
        mean = float(model.predict(np.asarray([features(day, level)]))[0])
        out.append((day, mean, mean * (1 + below), mean * (1 + above)))
    return Fitted(mape, ((cut + dt.timedelta(days=1)).isoformat(), days[-1].isoformat()),
                  (days[0].isoformat(), days[-1].isoformat()), len(days), out)


def still_to_sell(days_ahead: int) -> float:
    """The share of a day's tickets usually still unsold ``days_ahead`` days before it."""
    if days_ahead < 0:
        return 0.0
    return 1.0 - BOOKED_BY[min(days_ahead, len(BOOKED_BY) - 1)]


def warning_topics(division: str) -> list[Topic]:
    """Where a warning is told: the province's, the city's and the county's watchers."""
    return [Topic("warnings", division[:n]) for n in (2, 4, 6) if len(division) >= n]


class Forecasts:
    def __init__(self, db: AsyncDatabase[Any], alerts: AlertService | None = None,
                 events: EventLog | None = None, threshold_percent: int = 90) -> None:
        self._db = db
        self._alerts = alerts
        self._events = events
        self.threshold = threshold_percent / 100
        self._warnings = FlowWarnings(db)
        self._cells = FlowCells(db)
        self._kept: dict[tuple[str, str, int, str], Fitted] = {}

    # --- peak warnings ------------------------------------------------------------------------
    async def warn(self, *, force: bool = False, today: dt.date | None = None) -> int:
        """Forecast every station and route with history for the next 30 days and keep a
        warning for each day whose forecast reaches the threshold share of its seats (or
        exceeds them); new ones are raised as alerts for the operator and told to the
        authorities watching the region. Once a day unless ``force``; how many warnings."""
        today = today or local_today()
        done = await self._cells.cursors.get("warnings")
        if not force and done is not None and local_today(done) >= today:
            return 0
        names = {s["_id"]: s async for s in self._db.stations.find({}, {"name": 1,
                                                                         "division": 1})}
        routes = {r["_id"]: r async for r in self._db.routes.find(
            {}, {"name": 1, "origin_station_id": 1})}
        docs: list[dict[str, Any]] = []
        forecast_any = False
        candidates = await self._with_history(today)
        for kind, field in (("station", "station_id"), ("route", "route_id")):
            for ref in sorted(candidates[field]):
                try:
                    result = await self.forecast(kind, ref, MAX_DAYS, today=today)
                except DomainError:
                    continue  # not enough history yet
                forecast_any = True
                station = names.get(ref if kind == "station" else
                                    routes.get(ref, {}).get("origin_station_id", ""), {})
                name = (station if kind == "station" else routes.get(ref, {})).get("name", ref)
                for row in result["days"]:
                    level = peak_level(row["load_factor"], self.threshold)
                    if level:
                        docs.append({"_id": f"{kind}:{ref}:{row['date']}", "kind": kind,
                                     "ref": ref, "name": name,
                                     "station_id": station.get("_id", ""),
                                     "region": station.get("division", ""), "level": level,
                                     **{k: row[k] for k in ("date", "passengers", "low",
                                                            "high", "seats", "load_factor",
                                                            "pre_sold", "holiday", "rush")},
                                     "threshold": self.threshold, "computed_at": now_ms()})
        new = await self._warnings.replace_from(today.isoformat(), docs)
        for doc in docs:
            if doc["_id"] in new:
                await self._tell(doc)
        if forecast_any:
            await self._cells.cursors.advance("warnings", now_ms())
        return len(docs)

    async def _with_history(self, today: dt.date) -> dict[str, set[str]]:
        """The stations and routes with enough months of history to forecast (one read of
        the month cells; the forecast itself checks the days)."""
        need = MIN_HISTORY_DAYS // 31 + 1
        months: dict[tuple[str, str], set[str]] = {}
        async for cell in self._db.flow_months.find(
                {"month": {"$lt": today.strftime("%Y-%m")}},
                {"month": 1, "station_id": 1, "route_id": 1}):
            for field in ("station_id", "route_id"):
                months.setdefault((field, cell[field]), set()).add(cell["month"])
        out: dict[str, set[str]] = {"station_id": set(), "route_id": set()}
        for (field, ref), seen in months.items():
            if len(seen) >= need:
                out[field].add(ref)
        return out

    async def _tell(self, doc: dict[str, Any]) -> None:
        what = "超出运力" if doc["level"] == "over_capacity" else "客流高峰"
        message = (f"{doc['date']} {doc['name']} 预测客流 {doc['passengers']} 人，"
                   f"运力 {doc['seats']} 座（{what}）")
        if self._alerts is not None:
            await self._alerts.raise_alert("passenger_flow_peak", f"flow:{doc['_id']}",
                                           message, {"warning": doc["_id"],
                                                     "date": doc["date"]})
        if self._events is not None:
            for topic in warning_topics(doc["region"]):
                await self._events.emit(topic, "warning", {
                    "id": doc["_id"], "message": message, "level": doc["level"],
                    "date": doc["date"]})

    async def upcoming(self, prefix: str) -> list[dict[str, Any]]:
        """The warnings from today on inside a region prefix (a WebSocket snapshot)."""
        today = local_today()
        return await self._listed(today, today + dt.timedelta(days=MAX_DAYS), region=prefix)

    async def warnings(self, actor: Principal, first: dt.date, last: dt.date,
                       kind: str | None = None) -> list[dict[str, Any]]:
        return await self._listed(first, last, kind=kind, station_id=actor.station_id,
                                  region=region_prefix(actor.region) if actor.region else None)

    async def _listed(self, first: dt.date, last: dt.date, *, kind: str | None = None,
                      region: str | None = None, station_id: str | None = None
                      ) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"date": {"$gte": first.isoformat(), "$lte": last.isoformat()}}
        if kind:
            query["kind"] = kind
        if region:
            query["region"] = {"$regex": "^" + region}
        if station_id:
            query["station_id"] = station_id
        out = []
        async for doc in self._warnings.find(query):
            doc["id"] = doc.pop("_id")
            doc["computed_at"] = doc["computed_at"].isoformat()
            out.append(doc)
        return out

    async def forecast_for(self, actor: Principal, kind: str, ref: str, days: int
                           ) -> dict[str, Any]:
        """:meth:`forecast` for a station or route inside ``actor``'s scope."""
        station_id = ref
        if kind == "route":
            found = await self._db.routes.find_one({"_id": ref}, {"origin_station_id": 1})
            if found is None:
                raise DomainError("NOT_FOUND", field="route")
            station_id = found["origin_station_id"]
        station = await self._db.stations.find_one({"_id": station_id}, {"division": 1})
        if station is None:
            raise DomainError("NOT_FOUND", field="station")
        if not actor.in_region(station.get("division")) or (
                actor.station_id and actor.station_id != station_id):
            raise DomainError("OUT_OF_SCOPE", field=kind)
        return await self.forecast(kind, ref, days)

    async def forecast(self, kind: str, ref: str, days: int, *,
                       today: dt.date | None = None) -> dict[str, Any]:
        """``kind`` ``station`` or ``route``: the next ``days`` days from today."""
        if not 1 <= days <= MAX_DAYS:
            raise DomainError("INVALID_VALUE", f"days must be 1 to {MAX_DAYS}.", field="days")
        today = today or local_today()
        field = "station_id" if kind == "station" else "route_id"
        horizon = [today + dt.timedelta(days=k) for k in range(days)]
        key = (kind, ref, days, today.isoformat())
        fitted = self._kept.get(key)  # the model's part, once a day; pre-sales always fresh
        if fitted is None:
            series = await self._series(field, ref, today)
            if len(series) < MIN_HISTORY_DAYS:
                raise DomainError("FORECAST_NO_HISTORY", field=kind,
                                  days_of_history=len(series), needed=MIN_HISTORY_DAYS)
            fitted = await asyncio.to_thread(fit_and_predict, series, horizon)
            if len(self._kept) > 512:
                self._kept.clear()
            self._kept[key] = fitted
        sold, seats = await self._ahead(field, ref, horizon)
        capacity = await self._timetabled_seats(field, ref)
        rows = []
        for day, mean, low, high in fitted.predictions:
            ahead = (day - today).days
            pre_sold = sold.get(day.isoformat(), 0)
            # what is sold stays sold; what the model expects beyond it still comes
            expected = max(mean, pre_sold + mean * still_to_sell(ahead))
            shift = expected - mean
            info = day_info(day)
            offered = seats.get(day.isoformat()) or capacity
            rows.append({"date": day.isoformat(), "passengers": round(expected),
                         "low": max(pre_sold, round(low + shift)),
                         "high": max(pre_sold, round(high + shift)), "pre_sold": pre_sold,
                         "seats": offered,
                         "load_factor": round(expected / offered, 4) if offered else None,
                         "holiday": info.holiday, "rest": info.rest,
                         "adjusted_workday": info.adjusted_workday, "rush": info.rush,
                         "calendar_estimated": info.estimated})
        result = {kind: ref, "days": rows, "model": {
            "kind": "gradient_boosted_trees", "library": "scikit-learn",
            "features": ["weekday", "rest", "holiday", "adjusted_workday", "to_holiday",
                         "since_holiday", "rush_day", "level_30d", "month"],
            "interval": "10th–90th percentile of the backtest's relative errors",
            "trained_on": {"from": fitted.trained[0], "to": fitted.trained[1],
                           "days": fitted.days},
            "backtest": {"mape": fitted.backtest_mape, "weeks": HOLDOUT_DAYS // 7,
                         "from": fitted.backtest[0], "to": fitted.backtest[1]}}}
        return result

    async def _series(self, field: str, ref: str, today: dt.date) -> dict[dt.date, int]:
        """Daily passengers of past days (every source of flow cells)."""
        first = (today - dt.timedelta(days=3 * 366)).isoformat()
        series: dict[dt.date, int] = {}
        async for cell in self._db.flow_days.find(
                {field: ref, "day": {"$gte": first, "$lt": today.isoformat()}},
                {"day": 1, "passengers": 1}):
            day = dt.date.fromisoformat(cell["day"])
            series[day] = series.get(day, 0) + int(cell["passengers"])
        return series

    async def _ahead(self, field: str, ref: str, horizon: list[dt.date]
                     ) -> tuple[dict[str, int], dict[str, int]]:
        """Passengers sold so far and seats offered, for the days ahead already planned."""
        sold: dict[str, int] = {}
        seats: dict[str, int] = {}
        async for cell in self._db.flow_days.find(
                {field: ref, "source": "live",
                 "day": {"$gte": horizon[0].isoformat(), "$lte": horizon[-1].isoformat()}},
                {"day": 1, "passengers": 1, "seats": 1}):
            sold[cell["day"]] = sold.get(cell["day"], 0) + int(cell["passengers"])
            seats[cell["day"]] = seats.get(cell["day"], 0) + int(cell["seats"])
        return sold, seats

    async def _timetabled_seats(self, field: str, ref: str) -> int:
        """A day's seats by the timetable: for days not planned yet."""
        total = 0
        async for sch in self._db.schedules.find({field: ref, "status": "active"},
                                                 {"seats": 1}):
            total += int(sch.get("seats", 0))
        return total


def peak_level(load_factor: float | None, threshold: float) -> str | None:
    if load_factor is None or math.isnan(load_factor):
        return None
    if load_factor >= 1.0:
        return "over_capacity"
    if load_factor >= threshold:
        return "peak"
    return None
