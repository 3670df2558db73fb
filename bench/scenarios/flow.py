"""Passenger-flow statistics: a year by station over HTTP beside a raw aggregate of the same
day cells."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from pymongo import AsyncMongoClient

from bench.run import Bench, Row
from devstack.history import load_history
from server.clock import local_today

TITLE = "Passenger-flow statistics"
NOTES = [
    "Statistics: the demo province with a year of generated history (`load_history`, 365 days, "
    "≈36,000 day cells of route × carrier), `GET /api/v1/stats?group_by=station` over the "
    "last 365 days as the operator, one request at a time over HTTP (so p50 is the answer "
    "time; the embedded store serves one query at a time anyway). The server reads "
    "month cells for the whole months and day cells for the days at the edges. The baseline "
    "is one raw MongoDB aggregation over the same day cells for the same period "
    "(`$match` on day, `$group` by station summing passengers, revenue and seats), "
    "sequential from one client — what answering from the day cells alone would cost, "
    "before any HTTP, JSON or authorisation.",
]


async def _raw_rate(db: Any, first: str, last: str, seconds: float) -> float:
    done, deadline = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        await (await db.flow_days.aggregate([
            {"$match": {"day": {"$gte": first, "$lte": last}}},
            {"$group": {"_id": "$station_id", "passengers": {"$sum": "$passengers"},
                        "revenue": {"$sum": "$revenue"}, "seats": {"$sum": "$seats"}}},
        ])).to_list()
        done += 1
    return done / (time.perf_counter() - start)


async def run(bench: Bench) -> list[Row]:
    mongo: AsyncMongoClient[Any] = AsyncMongoClient(bench.mongo_uri, tz_aware=True)
    db = mongo[bench.db_name]
    try:
        start = time.perf_counter()
        cells = await load_history(db, 365)
        print(f"   history: {cells:,} day cells in {time.perf_counter() - start:.1f} s",
              flush=True)
        today = local_today()
        first = (today - dt.timedelta(days=365)).isoformat()
        last = (today - dt.timedelta(days=1)).isoformat()
        token = await bench.login("operator")
        served = await bench.http_load(f"/api/v1/stats?group_by=station&from={first}&to={last}",
                                       headers=[f"Authorization: Bearer {token}"],
                                       concurrency=1)
        raw = await _raw_rate(db, first, last, bench.seconds)
    finally:
        await mongo.close()
    return [Row("stats: a year by station (GET /api/v1/stats)", served["rps"], "req/s",
                "raw aggregate of the same day cells, one client", raw,
                f"p50 {served.get('p50_ms', 0):.0f} ms, p99 {served.get('p99_ms', 0):.0f} ms; "
                f"server CPU {served['server_cpu_pct']:.0f} %")]
