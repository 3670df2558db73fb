"""Native inventory: seat holds on one hot departure, beside the raw Lua script."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pymongo import AsyncMongoClient

from bench.run import Bench, Row
from server.app import connect_redis
from server.exchange.base import HoldRequest
from server.storage.inventory import NativeInventory, new_hold_id
from server.storage.seat_scripts import SeatScripts, departure_keys

TITLE = "Native inventory: seat holds on one hot departure"
NOTES = [
    "Holds: each buyer holds one seat and releases it again, so the departure never sells "
    "out; figures count holds per second (each followed by its release, on both sides).",
    "The hold path is `NativeInventory.hold` + `release`: the Lua script, the departure's "
    "expiry index and the write-behind hold journal to MongoDB. The raw baseline calls the "
    "same `hold` and `release` scripts with redis-py from one client, sequentially and "
    "pipelined (100 pairs per round trip).",
]
CONCURRENCY = 32


async def _hot_departure(db: Any) -> dict[str, Any]:
    native = await db.stations.distinct("_id", {"system.vendor": "native"})
    dep = await db.departures.find_one({"station_id": {"$in": native}, "status": "on_sale"},
                                       sort=[("seats", -1), ("departs_at", -1)])
    assert dep is not None
    return dep


async def _service_rate(inventory: NativeInventory, dep: dict[str, Any], seconds: float
                        ) -> float:
    count = 0
    deadline = time.perf_counter() + seconds

    async def buyer() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            hold = await inventory.hold(dep["_id"], HoldRequest(new_hold_id(), "miniapp", 1, 0,
                                                                1, ttl_seconds=600))
            await inventory.release(dep["_id"], hold.hold_id)
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*[buyer() for _ in range(CONCURRENCY)])
    return count / (time.perf_counter() - started)


async def _raw_rates(scripts: SeatScripts, dep_id: str, seconds: float) -> tuple[float, float]:
    hold, release = scripts._scripts["hold"], scripts._scripts["release"]
    keys = departure_keys(dep_id)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds / 2:
        hid = new_hold_id()
        await hold(keys=keys, args=[dep_id, hid, "miniapp", 0, 1, 600000, 1, ""])
        await release(keys=keys, args=[dep_id, hid])
        n += 1
    sequential = n / (time.perf_counter() - started)
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds / 2:
        pipe = scripts.redis.pipeline(transaction=False)
        for _ in range(50):
            hid = new_hold_id()
            await hold(keys=keys, args=[dep_id, hid, "miniapp", 0, 1, 600000, 1, ""],
                       client=pipe)
            await release(keys=keys, args=[dep_id, hid], client=pipe)
        await pipe.execute()
        n += 50
    return sequential, n / (time.perf_counter() - started)


async def run(bench: Bench) -> list[Row]:
    mongo: AsyncMongoClient[Any] = AsyncMongoClient(bench.mongo_uri, tz_aware=True)
    redis = connect_redis(bench.redis_url, max_connections=CONCURRENCY + 4)
    db = mongo[bench.db_name]
    inventory = NativeInventory(db, redis)
    try:
        dep = await _hot_departure(db)
        await inventory.availability(dep["_id"])  # loaded before timing
        path = await _service_rate(inventory, dep, bench.seconds)
        await inventory.flush()
        sequential, piped = await _raw_rates(SeatScripts(redis), dep["_id"], bench.seconds)
    finally:
        await inventory.close()
        await redis.aclose()
        await mongo.close()
    return [
        Row(f"hold path, {CONCURRENCY} concurrent buyers (NativeInventory.hold)", path,
            "holds/s", "raw hold script, one client, sequential", sequential,
            f"target ≥ 0.5; pipelined raw script: {piped:,.0f} holds/s"),
        Row("raw hold script, one client, pipelined ×50", piped, "holds/s",
            "raw hold script, one client, sequential", sequential, "redis-py asyncio"),
    ]
