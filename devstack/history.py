"""A year (or any number of days) of plausible history for the demo province, as flow cells.

Generated per timetabled run of every schedule, then summed per day, route and carrier into
``history`` day cells (and their months) through :class:`server.storage.flow.FlowCells` —
history is statistics, not tickets: a year of the demo province is some 110,000 departures
and three million passengers, which no first start should have to write.

Demand, per departure: a route's own base load (its cities' sizes and its length), the week's
rhythm (Friday and Sunday high, midweek low; an adjusted working day (调休) is a working day),
public holidays from ``chinese-calendar`` (the eve and first day out, the last day back, the
middle of a golden week busy), the Spring Festival rush (春运: out of the big cities before
the new year, back into them after it, quiet on the days around it) — with noise, capped by
the seats. Refunds, voids, cancellations and late departures come with it, more at peaks.
Reproducible: every number comes from a seeded generator per day and schedule.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import random
from collections.abc import Callable
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from server.clock import local_today, now_ms
from server.services.calendar import day_info, holiday_edges
from server.storage.flow import FlowCells, day_cell_id

log = logging.getLogger(__name__)

SEED = 979
BIG_CITIES = {"440100", "440300", "441900", "440600"}  # 广州 深圳 东莞 佛山: where work is
WEEKDAY = (0.88, 0.84, 0.84, 0.9, 1.18, 1.06, 1.16)  # Monday … Sunday
CHANNEL_SHARES = (("miniapp", 0.36), ("app", 0.12), ("web", 0.05), ("window", 0.3),
                  ("agent", 0.07), ("kiosk", 0.06), ("phone", 0.02), ("partner", 0.02))


def demand_factor(day: dt.date, origin_big: bool, destination_big: bool) -> tuple[float, bool]:
    """How busy a day is for a route against an ordinary Tuesday, and whether it is a peak."""
    info = day_info(day)
    factor = WEEKDAY[day.weekday()]
    if info.adjusted_workday:
        factor = 0.95
    peak = False
    to_start, since_end = holiday_edges(day)
    if info.holiday:
        peak = True
        if to_start == 0:
            factor = 1.55  # the first day off: everyone leaves
        elif since_end == 0:
            factor = 1.5  # the last day: everyone comes back
        else:
            factor = 1.2
    elif to_start == 1:
        factor, peak = max(factor, 1.35), True  # the eve
    if info.rush_day is not None:
        r = info.rush_day
        peak = True
        if -15 <= r <= -2:  # home for the new year: out of the cities where work is
            ramp = 1.25 + 0.6 * (r + 15) / 13
            factor *= ramp if origin_big and not destination_big else (
                0.7 if destination_big and not origin_big else 1.1)
        elif -1 <= r <= 3:
            factor *= 0.45
        else:  # back to work
            ramp = 1.9 - 0.8 * (r - 4) / 21
            factor *= ramp if destination_big and not origin_big else (
                0.7 if origin_big and not destination_big else 1.1)
    return factor, peak


def _route_base(route: dict[str, Any], rng: random.Random) -> float:
    base = 0.5 + 0.25 * rng.random()
    km = route.get("distance_km", 200)
    return base * (1.1 if 80 <= km <= 350 else 0.9)


def generate_cells(day: dt.date, schedules: list[dict[str, Any]],
                   routes: dict[str, dict[str, Any]], stations: dict[str, dict[str, Any]],
                   fares: dict[str, int], at: dt.datetime) -> list[dict[str, Any]]:
    """The history day cells of one day."""
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for sch in schedules:
        route = routes.get(sch["route_id"])
        if route is None:
            continue
        origin = stations.get(route["origin_station_id"], {})
        dest = stations.get(route["destination_station_id"], {})
        base = _route_base(route, random.Random(f"{SEED}:{route['_id']}"))
        factor, peak = demand_factor(day, origin.get("city_division") in BIG_CITIES,
                                     dest.get("city_division") in BIG_CITIES)
        rng = random.Random(f"{SEED}:{day.isoformat()}:{sch['_id']}")
        seats = int(sch["seats"])
        cell = cells.setdefault((sch["route_id"], sch["carrier_id"]), {
            "_id": day_cell_id("history", day.isoformat(), sch["route_id"], sch["carrier_id"]),
            "source": "history", "day": day.isoformat(), "month": day.isoformat()[:7],
            "route_id": sch["route_id"], "carrier_id": sch["carrier_id"],
            "station_id": route["origin_station_id"], "region": origin.get("division", ""),
            "scheduled": 0, "departures": 0, "cancelled": 0, "departed": 0, "on_time": 0,
            "seats": 0, "passengers": 0, "revenue": 0, "refunds": 0, "refund_amount": 0,
            "refund_fees": 0, "voids": 0, "passenger_km": 0, "channels": {}, "updated_at": at})
        cell["scheduled"] += 1
        if rng.random() < (0.025 if peak else 0.012):
            cell["cancelled"] += 1
            continue
        wanted = seats * base * factor * math.exp(rng.gauss(0, 0.12))
        passengers = max(0, min(seats, round(wanted)))
        refunds = _binomial(rng, passengers, 0.05 if peak else 0.03)
        fare = fares.get(sch["route_id"], 5000)
        halves = _binomial(rng, passengers, 0.1)  # children and students pay half
        revenue = (passengers - halves) * fare + halves * (fare // 2)
        fee = max(50, fare // 10)
        cell["departures"] += 1
        cell["departed"] += 1
        cell["on_time"] += rng.random() < (0.86 if peak else 0.95)
        cell["seats"] += seats
        cell["passengers"] += passengers
        cell["revenue"] += revenue
        cell["refunds"] += refunds
        cell["refund_amount"] += refunds * (fare - fee)
        cell["refund_fees"] += refunds * fee
        cell["voids"] += rng.random() < 0.01
        cell["passenger_km"] += passengers * int(route.get("distance_km", 0))
    for cell in cells.values():
        _split_channels(cell, random.Random(cell["_id"]))
    return list(cells.values())


def _binomial(rng: random.Random, n: int, p: float) -> int:
    """About n·p, spread as a binomial would be (normal approximation, clamped)."""
    if n == 0:
        return 0
    return max(0, min(n, round(rng.gauss(n * p, math.sqrt(n * p * (1 - p))))))


def _split_channels(cell: dict[str, Any], rng: random.Random) -> None:
    left_p, left_r = cell["passengers"], cell["revenue"]
    for i, (name, share) in enumerate(CHANNEL_SHARES):
        if i == len(CHANNEL_SHARES) - 1:
            p, r = left_p, left_r
        else:
            p = min(left_p, round(cell["passengers"] * share * rng.uniform(0.8, 1.2)))
            r = min(left_r, cell["revenue"] * p // cell["passengers"]) \
                if cell["passengers"] else 0
        if p or r:
            cell["channels"][name] = {"passengers": p, "revenue": r}
        left_p, left_r = left_p - p, left_r - r


async def history_loaded(db: AsyncDatabase[Any]) -> bool:
    return await FlowCells(db).cursors.get("history") is not None


async def load_history(db: AsyncDatabase[Any], days: int, *, today: dt.date | None = None,
                       route_ids: list[str] | None = None,
                       progress: Callable[[int, int], None] | None = None) -> int:
    """Write ``days`` days of history ending yesterday (of every route, or of those named);
    the number of day cells. Idempotent: the period's history is cleared first, and marked
    complete (:func:`history_loaded`) only at the end, so a run cut short is redone whole."""
    today = today or local_today()
    wanted: dict[str, Any] = {"status": "active"}
    if route_ids is not None:
        wanted["route_id"] = {"$in": route_ids}
    schedules = await db.schedules.find(wanted).to_list()
    routes = {r["_id"]: r async for r in db.routes.find({})}
    stations = {s["_id"]: s async for s in db.stations.find(
        {}, {"division": 1, "city_division": 1})}
    fares: dict[str, int] = {}
    async for f in db.fares.find({"from_seq": 0}).sort("to_seq", 1):
        fares[f["route_id"]] = int(f["prices"]["adult"])  # the longest segment wins
    cells_store = FlowCells(db)
    at = now_ms()
    first = today - dt.timedelta(days=days)
    await cells_store.clear_history(first.isoformat(), (today - dt.timedelta(days=1)).isoformat(),
                                    route_ids)
    written, months, chunk = 0, set(), []
    for k in range(days):
        day = first + dt.timedelta(days=k)
        # (CPU work: off the event loop, which keeps serving meanwhile)
        chunk += await asyncio.to_thread(generate_cells, day, schedules, routes, stations,
                                         fares, at)
        if len(chunk) >= 3000 or k == days - 1:
            months |= await cells_store.put_history(chunk)
            written += len(chunk)
            chunk = []
            if progress:
                progress(k + 1, days)
    await cells_store.roll_months(months, at)
    if route_ids is None:
        await cells_store.cursors.advance("history", at)
    log.info("demo history written", extra={"fields": {"days": days, "cells": written}})
    return written
