"""Passenger-flow statistics (客运信息监测): what each departure carried, kept up to date as
tickets are sold, refunded and depart, and read by day, station, route, carrier, channel or
region for any period.

The job re-reads what changed since its cursor (tickets issued or refunded, departures that
departed, were cancelled or re-synced), recomputes those departures' flow from their tickets,
then the day and month cells above them (:mod:`server.storage.flow`). A sweep adds departures
no ticket has touched yet (their seats are offered all the same), and once a day the day
that ended is recomputed whole. A request reads cells, never tickets: a year is twelve
months of month cells plus the days at its edges.

Definitions (JT/T 979.2's statistics, as the authority reads them):

- *passengers*: tickets sold and still valid (issued, picked up, checked in, or in the middle
  of a refund, void or change); *revenue*: their prices. Refunds count apart, with the amount
  paid back and the fee kept.
- *seats*: seats of the departures not cancelled; *load factor* (上座率) passengers ÷ seats.
- *departures* (班次): planned and not cancelled; *regular-run rate* (正班率) departures ÷
  scheduled; *on-time rate* (正点率) departures that left within the rules'
  ``on_time_tolerance_minutes`` of their time ÷ departures whose departure is known (signed
  off at the gate, or reported by the station system).
"""

from __future__ import annotations

import asyncio
import calendar as month_calendar
import datetime as dt
import logging
from collections.abc import Iterable
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from server.clock import local_today, now_ms
from server.errors import DomainError
from server.paging import FIRST_PAGE, Page
from server.security.principal import Principal, region_prefix
from server.services.rules import RuleService
from server.storage.cursors import dotted
from server.storage.flow import METRICS, FlowCells, add_into

log = logging.getLogger(__name__)

SOLD = frozenset({"issued", "picked_up", "checked_in", "refunding", "voiding", "changing"})
GROUPS = ("day", "station", "route", "carrier", "channel", "region")
MARGIN = dt.timedelta(minutes=2)
MAX_DAYS = 3 * 366


def departure_flow(dep: dict[str, Any], tickets: Iterable[dict[str, Any]],
                   channel_of: dict[str, str], region: str, tolerance_minutes: int,
                   at: dt.datetime) -> dict[str, Any]:
    """One departure's flow document, from the departure and every ticket on it."""
    cancelled = dep.get("status") == "cancelled"
    departed = dep.get("status") == "departed" and dep.get("departed_at") is not None
    late = (dep["departed_at"] - dep["departs_at"]) if departed else None
    delayed = (dep.get("disruption") or {}).get("kind") == "delayed"
    flow: dict[str, Any] = {
        "_id": dep["_id"], "day": dep["service_date"], "route_id": dep["route_id"],
        "carrier_id": dep.get("carrier_id", ""), "station_id": dep["station_id"],
        "region": region, "status": dep.get("status"), "departs_at": dep["departs_at"],
        "scheduled": 1, "departures": 0 if cancelled else 1, "cancelled": int(cancelled),
        "departed": int(departed),
        "on_time": int(departed and not delayed and late is not None
                       and late <= dt.timedelta(minutes=tolerance_minutes)),
        "seats": 0 if cancelled else int(dep.get("seats", 0)),
        "passengers": 0, "revenue": 0, "refunds": 0, "refund_amount": 0, "refund_fees": 0,
        "voids": 0, "passenger_km": 0, "channels": {}, "updated_at": at}
    for t in tickets:
        channel = channel_of.get(t["order_no"], "unknown")
        if t["status"] in SOLD:
            flow["passengers"] += 1
            flow["revenue"] += int(t["price"])
            flow["passenger_km"] += int(t.get("distance_km") or 0)
            sums = flow["channels"].setdefault(channel, {"passengers": 0, "revenue": 0})
            sums["passengers"] += 1
            sums["revenue"] += int(t["price"])
        elif t["status"] == "refunded":
            flow["refunds"] += 1
            flow["refund_amount"] += int((t.get("refund") or {}).get("amount", 0))
            flow["refund_fees"] += int((t.get("refund") or {}).get("fee", 0))
        elif t["status"] == "voided":
            flow["voids"] += 1
    return flow


def rates(row: dict[str, Any]) -> dict[str, Any]:
    """A row's sums with its ratios (None where the denominator is nothing)."""
    def ratio(a: str, b: str) -> float | None:
        return round(row[a] / row[b], 4) if row.get(b) else None
    out = {m: row.get(m, 0) for m in METRICS}
    out["load_factor"] = ratio("passengers", "seats")
    out["on_time_rate"] = ratio("on_time", "departed")
    out["regular_run_rate"] = ratio("departures", "scheduled")
    return out


def month_spans(first: dt.date, last: dt.date
                ) -> tuple[list[str], list[tuple[str, str, int]]]:
    """What to read for [first, last]: the month cells of its whole months, and day ranges
    with a sign — the days at its edges (+1), or, where a month is mostly inside, its month
    cell with the days outside taken back out (−1), whichever reads fewer days."""
    months: list[str] = []
    days: list[tuple[str, str, int]] = []
    day = first
    while day <= last:
        month_start = day.replace(day=1)
        month_end = day.replace(day=month_calendar.monthrange(day.year, day.month)[1])
        lo, hi = day, min(month_end, last)
        inside = (hi - lo).days + 1
        if inside * 2 <= (month_end - month_start).days + 1:
            days.append((lo.isoformat(), hi.isoformat(), 1))
        else:
            months.append(month_start.strftime("%Y-%m"))
            if lo > month_start:
                days.append((month_start.isoformat(), (lo - dt.timedelta(days=1)).isoformat(),
                             -1))
            if hi < month_end:
                days.append(((hi + dt.timedelta(days=1)).isoformat(), month_end.isoformat(),
                             -1))
        day = month_end + dt.timedelta(days=1)
    return months, days


class FlowStats:
    def __init__(self, db: AsyncDatabase[Any], rules: RuleService) -> None:
        self._db = db
        self._rules = rules
        self.cells = FlowCells(db)

    # --- keeping the aggregates ---------------------------------------------------------------
    async def run(self) -> int:
        """Recompute the departures touched since the last run; how many."""
        at = now_ms()
        touched: set[str] = set()
        for name, collection, field, key in (
                ("issued", "tickets", "issued_at", "departure_id"),
                ("returned", "tickets", "refund.at", "departure_id"),
                ("status", "departures", "status_at", "_id"),
                ("synced", "departures", "synced_at", "_id")):
            since = await self.cells.cursors.get(name)
            query = {field: {"$gte": since - MARGIN}} if since else {field: {"$exists": True}}
            last = None
            async for doc in self._db[collection].find(query, {key: 1, field: 1}):
                touched.add(doc[key])
                value = dotted(doc, field)
                last = value if last is None or value > last else last
            if last is not None:
                await self.cells.cursors.advance(name, min(last, at))
        return await self.recompute(touched, at)

    async def sweep(self, days_back: int = 1) -> int:
        """Departures no ticket has touched yet, from ``days_back`` days ago to the end of the
        sale window; and once a day, the day that ended, whole."""
        today = local_today()
        first = (today - dt.timedelta(days=days_back)).isoformat()
        last = (today + dt.timedelta(days=31)).isoformat()
        known = await self.cells.departure_ids(first, last)
        wanted = {d["_id"] async for d in self._db.departures.find(
            {"service_date": {"$gte": first, "$lte": last}}, {"_id": 1})}
        ids = wanted - known
        yesterday = (today - dt.timedelta(days=1)).isoformat()
        closed = await self.cells.cursors.get("closed")
        if closed is None or closed.date().isoformat() < yesterday:
            ids |= {d["_id"] async for d in self._db.departures.find(
                {"service_date": yesterday}, {"_id": 1})}
            await self.cells.cursors.advance(
                "closed", dt.datetime.fromisoformat(yesterday).replace(tzinfo=dt.UTC))
        return await self.recompute(ids, now_ms())

    async def recompute(self, departure_ids: Iterable[str], at: dt.datetime) -> int:
        ids = sorted(set(departure_ids))
        for i in range(0, len(ids), 200):
            await self._recompute_page(ids[i:i + 200], at)
        return len(ids)

    async def _recompute_page(self, ids: list[str], at: dt.datetime) -> None:
        deps = await self._db.departures.find({"_id": {"$in": ids}}).to_list()
        tickets: dict[str, list[dict[str, Any]]] = {d["_id"]: [] for d in deps}
        async for t in self._db.tickets.find(
                {"departure_id": {"$in": ids}},
                {"departure_id": 1, "order_no": 1, "status": 1, "price": 1, "distance_km": 1,
                 "refund.amount": 1, "refund.fee": 1}):
            tickets.setdefault(t["departure_id"], []).append(t)
        orders = {t["order_no"] for ts in tickets.values() for t in ts}
        channel_of = {o["order_no"]: o.get("channel", "unknown") async for o in
                      self._db.orders.find({"order_no": {"$in": sorted(orders)}},
                                           {"order_no": 1, "channel": 1})}
        regions = {s["_id"]: s.get("division", "") async for s in self._db.stations.find(
            {"_id": {"$in": sorted({d["station_id"] for d in deps})}}, {"division": 1})}
        docs = []
        for dep in deps:
            await asyncio.sleep(0)  # a page is ~200 departures: let requests in between
            rules = await self._rules.for_departure(dep)
            docs.append(departure_flow(dep, tickets.get(dep["_id"], []), channel_of,
                                       regions.get(dep["station_id"], ""),
                                       rules.on_time_tolerance_minutes, at))
        days = await self.cells.put_departures(docs)
        months = await self.cells.roll_days(days, at)
        await self.cells.roll_months(months, at)

    # --- reading ------------------------------------------------------------------------------
    async def stats(self, actor: Principal, group_by: str, first: dt.date, last: dt.date,
                    *, region: str | None = None, station: str | None = None,
                    route: str | None = None, carrier: str | None = None) -> dict[str, Any]:
        if group_by not in GROUPS:
            raise DomainError("STATS_GROUP_INVALID", field="group_by", allowed=list(GROUPS))
        if last < first or (last - first).days >= MAX_DAYS:
            raise DomainError("STATS_RANGE_INVALID", field="to", max_days=MAX_DAYS)
        query = self._scope(actor, region=region, station=station, route=route,
                            carrier=carrier)
        totals: dict[str, dict[str, Any]] = {}
        async for sign, cell in self._cells(query, first, last, by_day=group_by == "day",
                                            channels=group_by == "channel"):
            if group_by == "channel":
                for name, sums in (cell.get("channels") or {}).items():
                    row = totals.setdefault(name, {})
                    row["passengers"] = row.get("passengers", 0) + sign * sums["passengers"]
                    row["revenue"] = row.get("revenue", 0) + sign * sums["revenue"]
                continue
            add_into(totals.setdefault(_group_key(cell, group_by), {}), cell, sign)
        # (a group whose days all lie outside the period sums to nothing: not a row)
        totals = {k: v for k, v in totals.items()
                  if any(v.get(m) for m in (*METRICS, "passengers", "revenue"))}
        names = await self._names(group_by, totals)
        rows = []
        for key in sorted(totals):
            if group_by == "channel":
                row = {"key": key, "name": names.get(key, key),
                       "passengers": totals[key]["passengers"],
                       "revenue": totals[key]["revenue"]}
            else:
                row = {"key": key, "name": names.get(key, key), **rates(totals[key])}
            rows.append(row)
        grand: dict[str, Any] = {}
        for key in totals:
            if group_by != "channel":
                add_into(grand, totals[key])
        return {"group_by": group_by, "from": first.isoformat(), "to": last.isoformat(),
                "rows": rows, "total": rates(grand) if group_by != "channel" else {
                    "passengers": sum(r["passengers"] for r in rows),
                    "revenue": sum(r["revenue"] for r in rows)}}

    async def route_monitoring(self, actor: Principal, first: dt.date, last: dt.date, *,
                               thresholds: dict[str, float], region: str | None = None,
                               station: str | None = None, text: str | None = None,
                               flagged_only: bool = False, page: Page = FIRST_PAGE
                               ) -> dict[str, Any]:
        """Per route over the period: load factor, on-time and regular-run rates, each beside
        the same length of time just before (the trend); routes below a threshold flagged
        and listed first — what a route-approval review (线路审批) reads. A page of the routes
        (whose id or name has ``text``; only the flagged ones), how many match, how many are
        flagged in all."""
        span = (last - first).days + 1
        before = await self.stats(actor, "route", first - dt.timedelta(days=span),
                                  first - dt.timedelta(days=1), region=region, station=station)
        now = await self.stats(actor, "route", first, last, region=region, station=station)
        earlier = {r["key"]: r for r in before["rows"]}
        rows = []
        for row in now["rows"]:
            prev = earlier.get(row["key"], {})
            flags = [name for name, floor in thresholds.items()
                     if row.get(name) is not None and row[name] < floor]
            rows.append({"route_id": row["key"], "name": row["name"],
                         **{k: row[k] for k in ("passengers", "seats", "departures",
                                                "scheduled", "load_factor", "on_time_rate",
                                                "regular_run_rate")},
                         "trend": {k: _delta(row.get(k), prev.get(k))
                                   for k in ("load_factor", "on_time_rate",
                                             "regular_run_rate")},
                         "below": flags})
        rows.sort(key=lambda r: (not r["below"], r["load_factor"] or 0, r["route_id"]))
        flagged = sum(1 for r in rows if r["below"])
        wanted = [r for r in rows if (r["below"] or not flagged_only) and (
            not text or text.casefold() in f"{r['route_id']} {r['name'] or ''}".casefold())]
        shown, total = page.cut(wanted)
        return {"from": first.isoformat(), "to": last.isoformat(), "thresholds": thresholds,
                "routes": shown, "total": total, "flagged": flagged}

    def _scope(self, actor: Principal, *, region: str | None, station: str | None,
               route: str | None, carrier: str | None) -> dict[str, Any]:
        """The cell filter for what ``actor`` may see and asked for (403 outside its scope)."""
        query: dict[str, Any] = {}
        prefixes = []
        if actor.region:
            prefixes.append(region_prefix(actor.region))
        if region:
            asked = region_prefix(region)
            if actor.region and not (asked.startswith(prefixes[0])
                                     or prefixes[0].startswith(asked)):
                raise DomainError("OUT_OF_SCOPE", field="region")
            prefixes.append(asked)
        if prefixes:
            query["region"] = {"$regex": "^" + max(prefixes, key=len)}
        if actor.station_id:
            if station and station != actor.station_id:
                raise DomainError("OUT_OF_SCOPE", field="station")
            station = actor.station_id
        for field, value in (("station_id", station), ("route_id", route),
                             ("carrier_id", carrier)):
            if value:
                query[field] = value
        return query

    async def _cells(self, query: dict[str, Any], first: dt.date, last: dt.date, *,
                     by_day: bool, channels: bool) -> Any:
        if by_day:
            months, ranges = [], [(first.isoformat(), last.isoformat(), 1)]
        else:
            months, ranges = month_spans(first, last)
        if months:
            async for cell in self.cells.months({**query, "month": {"$in": months}},
                                                channels):
                yield 1, cell
        for lo, hi, sign in ranges:
            async for cell in self.cells.days({**query, "day": {"$gte": lo, "$lte": hi}},
                                              channels):
                yield sign, cell

    async def _names(self, group_by: str, totals: dict[str, Any]) -> dict[str, str]:
        keys = sorted(totals)
        if group_by == "station":
            return {s["_id"]: s["name"] async for s in self._db.stations.find(
                {"_id": {"$in": keys}}, {"name": 1})}
        if group_by == "route":
            return {r["_id"]: r["name"] async for r in self._db.routes.find(
                {"_id": {"$in": keys}}, {"name": 1})}
        if group_by == "carrier":
            return {c["_id"]: c["name"] async for c in self._db.carriers.find(
                {"_id": {"$in": keys}}, {"name": 1})}
        if group_by == "region":
            return {s["city_division"]: s["city"] async for s in self._db.stations.find(
                {"city_division": {"$in": keys}}, {"city": 1, "city_division": 1})}
        if group_by == "channel":
            return {c["code"]: c["name"] async for c in self._db.channels.find(
                {}, {"code": 1, "name": 1})}
        return {}


def _delta(now: float | None, before: float | None) -> float | None:
    return round(now - before, 4) if now is not None and before is not None else None


def _group_key(cell: dict[str, Any], group_by: str) -> str:
    if group_by == "day":
        return str(cell["day"])
    if group_by == "region":
        return str(cell.get("region", ""))[:4] + "00"
    return str(cell.get(f"{group_by}_id", ""))

