"""Foundation: the API edge and the raw stores it stands on."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis
from pymongo import AsyncMongoClient

from bench.run import Bench, Row

TITLE = "Foundation: API edge, raw Redis and MongoDB"
NOTES = [
    "HTTP figures: 32 keep-alive connections, closed loop, from `bench/loadgen.py` in its own "
    "process; 'loadgen CPU' near 100 % would mean the generator, not Keyun, was the limit.",
    "`bare JSON endpoint` is `GET /healthz`: Tornado routing, our base handler and JSON, no I/O.",
]


def _http_note(result: dict[str, float]) -> str:
    return (f"p99 {result['p99_ms']:.1f} ms; errors {int(result['errors'])}; "
            f"server CPU {result['server_cpu_pct']:.0f} %, loadgen CPU "
            f"{result['loadgen_cpu_pct']:.0f} %")


async def _redis_raw(url: str, seconds: float) -> tuple[float, float]:
    client = aioredis.Redis.from_url(url)
    try:
        n, deadline = 0, time.perf_counter() + seconds / 2
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            await client.ping()
            n += 1
        sequential = n / (time.perf_counter() - started)
        n, started = 0, time.perf_counter()
        deadline = started + seconds / 2
        while time.perf_counter() < deadline:
            pipe = client.pipeline(transaction=False)
            for _ in range(100):
                pipe.ping()
            await pipe.execute()
            n += 100
        return sequential, n / (time.perf_counter() - started)
    finally:
        await client.aclose()


async def _mongo_raw_inserts(uri: str, seconds: float, concurrency: int = 32) -> float:
    client: AsyncMongoClient[Any] = AsyncMongoClient(uri, w="majority")
    col = client.keyun_bench_raw.inserts
    count = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < deadline:
            await col.insert_one({"at": time.time(), "payload": "x" * 200})
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    rate = count / (time.perf_counter() - started)
    await client.drop_database("keyun_bench_raw")
    await client.close()
    return rate


async def run(bench: Bench) -> list[Row]:
    bare = await bench.http_load("/healthz")
    token = await bench.login("operator")
    me = await bench.http_load("/api/v1/me", headers=[f"Authorization: Bearer {token}"])
    search = await bench.http_load("/api/v1/stations?q=gz")
    audit = await bench.http_load("/api/v1/admin/audit?limit=20",
                                  headers=[f"Authorization: Bearer {token}"])
    seq, piped = await _redis_raw(bench.redis_url, bench.seconds)
    inserts = await _mongo_raw_inserts(bench.mongo_uri, bench.seconds)
    bare_note = (f"p99 {bare['p99_ms']:.1f} ms; server CPU {bare['server_cpu_pct']:.0f} %, "
                 f"loadgen CPU {bare['loadgen_cpu_pct']:.0f} %")
    return [
        Row("bare JSON endpoint (GET /healthz)", bare["rps"], "req/s",
            "itself", bare["rps"], bare_note),
        Row("authenticated request (GET /api/v1/me, JWT verify)", me["rps"], "req/s",
            "bare JSON endpoint", bare["rps"], _http_note(me)),
        Row("station look-up (GET /api/v1/stations?q=gz, cached network)", search["rps"], "req/s",
            "bare JSON endpoint", bare["rps"], _http_note(search)),
        Row("audit trail page (GET /api/v1/admin/audit, indexed sort)", audit["rps"], "req/s",
            "bare JSON endpoint", bare["rps"], _http_note(audit)),
        Row("raw Redis PING, pipelined ×100 (one client)", piped, "ops/s",
            "raw Redis PING, sequential (one client)", seq, "redis-py asyncio"),
        Row("raw MongoDB insert_one, 32 concurrent, w=majority", inserts, "ops/s",
            "itself", inserts, "PyMongo AsyncMongoClient"),
    ]
