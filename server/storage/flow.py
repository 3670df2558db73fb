"""Passenger-flow aggregates, kept up to date as tickets are sold, refunded and depart; this
module is their only writer.

Three levels, each recomputed from the one below (set, never incremented, so re-running any
step is harmless and a process dying half-way leaves the next run to finish it):

- ``flow_departures`` — one document per departure: its seats, whether it ran, left on time
  or was cancelled, its passengers, revenue and refunds, by channel; recomputed from the
  departure and its tickets.
- ``flow_days`` — per day, route and carrier (``source`` ``live``; the generated demo history
  writes ``history`` cells of its own): the sums of the day's departures.
- ``flow_months`` — per month, route and carrier, every source: the sums of the month's days,
  so a year of statistics reads a few thousand small documents, not a year of departures.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from pymongo import ReplaceOne
from pymongo.asynchronous.database import AsyncDatabase

from server.storage.cursors import Cursors

# the numbers a departure, a day and a month carry, summed upwards
METRICS = ("scheduled", "departures", "cancelled", "departed", "on_time", "seats",
           "passengers", "revenue", "refunds", "refund_amount", "refund_fees", "voids",
           "passenger_km")
KEY_FIELDS = ("route_id", "carrier_id", "station_id", "region")


def add_into(total: dict[str, Any], doc: dict[str, Any], sign: int = 1) -> None:
    """Sum ``doc``'s metrics and channels into ``total`` (or take them out: ``sign`` −1)."""
    for m in METRICS:
        total[m] = total.get(m, 0) + sign * int(doc.get(m, 0))
    channels = total.setdefault("channels", {})
    for name, sums in (doc.get("channels") or {}).items():
        into = channels.setdefault(name, {"passengers": 0, "revenue": 0})
        into["passengers"] += sign * int(sums.get("passengers", 0))
        into["revenue"] += sign * int(sums.get("revenue", 0))


def day_cell_id(source: str, day: str, route_id: str, carrier_id: str) -> str:
    return f"{source}:{day}:{route_id}:{carrier_id}"


def _projection(channels: bool) -> dict[str, int]:
    return {"updated_at": 0} if channels else {"updated_at": 0, "channels": 0}


class FlowCells:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._departures = db.flow_departures
        self._days = db.flow_days
        self._months = db.flow_months
        self.cursors = Cursors(db.flow_cursors)

    # --- writing ------------------------------------------------------------------------------
    async def put_departures(self, docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
        """Each departure's flow as computed; the (day, route, carrier) cells to roll up."""
        if docs:
            await self._departures.bulk_write(
                [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in docs], ordered=False)
        return {(d["day"], d["route_id"], d["carrier_id"]) for d in docs}

    async def roll_days(self, keys: Iterable[tuple[str, str, str]], at: dt.datetime
                        ) -> set[tuple[str, str, str]]:
        """Recompute the live day cells of ``keys`` from their departures; the (month, route,
        carrier) cells to roll up."""
        ops, months = [], set()
        for day, route_id, carrier_id in sorted(set(keys)):
            total: dict[str, Any] = {}
            first: dict[str, Any] | None = None
            async for dep in self._departures.find(
                    {"day": day, "route_id": route_id, "carrier_id": carrier_id}):
                first = first or dep
                add_into(total, dep)
            if first is None:
                continue
            ops.append(ReplaceOne(
                {"_id": day_cell_id("live", day, route_id, carrier_id)},
                {"source": "live", "day": day, "month": day[:7],
                 **{k: first[k] for k in KEY_FIELDS}, **total, "updated_at": at}, upsert=True))
            months.add((day[:7], route_id, carrier_id))
        if ops:
            await self._days.bulk_write(ops, ordered=False)
        return months

    async def clear_history(self, first_day: str, last_day: str,
                            route_ids: list[str] | None = None) -> None:
        query: dict[str, Any] = {"source": "history",
                                 "day": {"$gte": first_day, "$lte": last_day}}
        if route_ids is not None:
            query["route_id"] = {"$in": route_ids}
        await self._days.delete_many(query)

    async def put_history(self, cells: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
        """Generated history day cells (``source`` ``history``), after
        :meth:`clear_history` (inserting is many times faster than replacing)."""
        for i in range(0, len(cells), 1000):
            await self._days.insert_many(cells[i:i + 1000], ordered=False)
        return {(c["month"], c["route_id"], c["carrier_id"]) for c in cells}

    async def roll_months(self, keys: Iterable[tuple[str, str, str]], at: dt.datetime) -> None:
        """Recompute the month cells of ``keys`` from their day cells (every source)."""
        wanted = sorted(set(keys))
        by_month: dict[str, set[tuple[str, str]]] = {}
        for month, route_id, carrier_id in wanted:
            by_month.setdefault(month, set()).add((route_id, carrier_id))
        ops = []
        for month, pairs in by_month.items():
            totals: dict[tuple[str, str], dict[str, Any]] = {}
            firsts: dict[tuple[str, str], dict[str, Any]] = {}
            routes = sorted({r for r, _ in pairs})
            async for cell in self._days.find({"month": month, "route_id": {"$in": routes}}):
                key = (cell["route_id"], cell["carrier_id"])
                if key in pairs:
                    firsts.setdefault(key, cell)
                    add_into(totals.setdefault(key, {}), cell)
            for (route_id, carrier_id), total in totals.items():
                first = firsts[(route_id, carrier_id)]
                ops.append(ReplaceOne(
                    {"_id": f"{month}:{route_id}:{carrier_id}"},
                    {"month": month, **{k: first[k] for k in KEY_FIELDS}, **total,
                     "updated_at": at}, upsert=True))
        for i in range(0, len(ops), 1000):
            await self._months.bulk_write(ops[i:i + 1000], ordered=False)


    # --- reading ------------------------------------------------------------------------------
    async def departure_ids(self, first_day: str, last_day: str) -> set[str]:
        return {d["_id"] async for d in self._departures.find(
            {"day": {"$gte": first_day, "$lte": last_day}}, {"_id": 1})}

    def days(self, query: dict[str, Any], channels: bool = True) -> Any:
        return self._days.find(query, _projection(channels))

    def months(self, query: dict[str, Any], channels: bool = True) -> Any:
        return self._months.find(query, _projection(channels))

    async def history_days(self) -> int:
        return await self._days.count_documents({"source": "history"})


class FlowWarnings:
    """``flow_warnings``: the peak warnings of the latest forecast run, one per series and
    day (the only writer)."""

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._warnings = db.flow_warnings

    async def replace_from(self, first_day: str, docs: list[dict[str, Any]]) -> set[str]:
        """The warnings from ``first_day`` on are now ``docs``: those not among them are
        cleared; returns the ids that are new."""
        wanted = {d["_id"] for d in docs}
        before = {d["_id"] async for d in self._warnings.find({"date": {"$gte": first_day}},
                                                              {"_id": 1})}
        stale = sorted(before - wanted)
        if stale:
            await self._warnings.delete_many({"_id": {"$in": stale}})
        if docs:
            await self._warnings.bulk_write([ReplaceOne({"_id": d["_id"]}, d, upsert=True)
                                             for d in docs], ordered=False)
        return wanted - before

    def find(self, query: dict[str, Any]) -> Any:
        return self._warnings.find(query).sort([("date", 1), ("load_factor", -1)])
