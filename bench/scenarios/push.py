"""Real-time push: events fanned out to many WebSocket watchers, beside a bare write loop."""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from typing import Any

import psutil
from pymongo import AsyncMongoClient
from tornado.httpclient import AsyncHTTPClient

from bench.run import Bench, Row, bound, histogram
from devstack.embedded import free_port
from server.app import connect_redis
from server.services.events import EventLog, Topic

TITLE = "Real-time push: seat events to WebSocket watchers"
CLIENTS = 100
RATES = (50, 200, 600)  # events per second raised on one departure
# idle subscribed connections: as near 20,000 as this machine's open-file limit (20,000 per
# process) leaves room for, beside the process's own files (stores' pools, logs, listener)
IDLE = 19_500
IDLE_PROCESSES = 3
FANOUT, FANOUT_RATE = 1000, 5  # one event to this many watchers, a few times a second
FANOUT_PROCESSES = 4  # the watchers' processes (one Python process reads ~5,000 frames/s)
NOTES = [
    f"Push: {CLIENTS} WebSocket clients (one separate process) watch one departure on one "
    "Keyun process; a producer raises seat events through `EventLog.emit` (the Lua script "
    "that seqs, keeps and publishes an event) at a fixed rate. Figures are event frames "
    "delivered per second summed over the clients, and p99 from the producer's clock to a "
    "client's receipt (same machine). The raw baseline is a bare Tornado server writing one "
    "pre-built frame to the same number of sockets in a loop, awaiting each round of writes "
    "(`bench/wsraw.py`): the most a Python process can push, with no Redis and no queues.",
    f"Idle connections: {IDLE:,} WebSocket clients ({IDLE_PROCESSES} processes) each "
    "subscribed to one departure, all open together and silent; the figure is the Keyun "
    "process's RSS growth divided by the connections (Tornado's stream and protocol objects, "
    "the connection's watcher and its send queue, kernel socket buffers not included). "
    f"Fan-out: {FANOUT:,} clients ({FANOUT_PROCESSES} processes) watch one departure while "
    f"events are raised at {FANOUT_RATE}/s; latency from the producer's clock to each "
    "client's receipt (the slowest client process's p50 and p99).",
]


async def _clients(url: str, topic: str, seconds: float, clients: int = CLIENTS,
                   hold: bool = False) -> tuple[Any, asyncio.Task[bytes]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.wsclients", "--url", url, "--topic", topic,
        "--clients", str(clients), "--seconds", str(seconds), *(["--hold"] if hold else []),
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 600)
    assert line.strip() == b"ready", line
    return proc, asyncio.ensure_future(proc.stdout.read())


async def _keyun(bench: Bench, dep_id: str, rate: int, clients: int = CLIENTS,
                 processes: int = 1) -> dict[str, float]:
    """Events raised at ``rate`` on one departure, watched by ``clients`` connections from
    ``processes`` client processes (so the clients' own Python is not what is measured).
    With several, frames add up and the slowest process's latencies are the figures."""
    redis = connect_redis(bench.redis_url)
    events = EventLog(redis)
    url = bench.base_url.replace("http://", "ws://") + "/ws"
    watchers = [await _clients(url, f"departure:{dep_id}", bench.seconds, clients // processes)
                for _ in range(processes)]
    try:
        topic = Topic("departure", dep_id)
        loop = asyncio.get_running_loop()
        started = loop.time()
        i = 0
        while not all(output.done() for _, output in watchers):
            due = started + i / rate
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            await events.emit(topic, "seats", {"change": "bench", "i": i,
                                               "t": time.time() * 1000})
            i += 1
        results = []
        for proc, output in watchers:
            await proc.wait()
            results.append(json.loads(await output))
        merged = {k: max(r[k] for r in results) for k in ("p50_ms", "p99_ms", "seconds")}
        merged.update({k: sum(r[k] for r in results)
                       for k in ("frames", "frames_per_s", "resyncs")})
        return merged
    finally:
        await redis.aclose()


async def _raw(seconds: float) -> dict[str, float]:
    port = free_port()
    server = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.wsraw",
                                                  "--port", str(port))
    try:
        await asyncio.sleep(1.0)
        proc, output = await _clients(f"ws://127.0.0.1:{port}/ws", "", seconds)
        await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/go?seconds={seconds}",
                                      method="POST", body=b"", request_timeout=seconds + 60)
        await proc.wait()
        return json.loads(await output)  # type: ignore[no-any-return]
    finally:
        server.terminate()
        await server.wait()


async def _idle(bench: Bench, dep_id: str) -> tuple[int, float, float]:
    """IDLE connections subscribed to a departure, from IDLE_PROCESSES client processes:
    (connections alive at the end, the server's RSS growth per connection in bytes, RSS)."""
    server = psutil.Process(bench.server_pid)
    gc_url = bench.base_url + "/healthz"
    await AsyncHTTPClient().fetch(gc_url)
    before = server.memory_info().rss
    url = bench.base_url.replace("http://", "ws://") + "/ws"
    hold = 600.0  # longer than connecting takes: all of them are open together
    started = await asyncio.gather(*[
        _clients(url, f"departure:{dep_id}", hold, IDLE // IDLE_PROCESSES, True)
        for _ in range(IDLE_PROCESSES)])
    await asyncio.sleep(2.0)
    after = server.memory_info().rss
    alive = sum(1 for c in server.net_connections("tcp") if c.status == "ESTABLISHED")
    for proc, output in started:
        proc.terminate()
        await proc.wait()
        output.cancel()
    return alive, (after - before) / IDLE, after


async def run(bench: Bench) -> list[Row]:
    mongo: AsyncMongoClient[Any] = AsyncMongoClient(bench.mongo_uri, tz_aware=True)
    try:
        native = await mongo[bench.db_name].stations.distinct("_id",
                                                              {"system.vendor": "native"})
        dep = await mongo[bench.db_name].departures.find_one(
            {"station_id": {"$in": native}, "status": "on_sale"})
    finally:
        await mongo.close()
    raw = await _raw(bench.seconds)
    alive, per_connection, rss = await _idle(bench, dep["_id"])
    before = await histogram(bench, "keyun_ws_fanout_seconds")
    fanout = await _keyun(bench, dep["_id"], FANOUT_RATE, FANOUT, FANOUT_PROCESSES)
    after = await histogram(bench, "keyun_ws_fanout_seconds")
    handed = {share: bound(before, after, share) for share in (0.5, 0.99)}
    rows = [
        Row(f"WebSocket connections held by one process, subscribed and idle ({IDLE:,})",
            per_connection / 1024, "KiB/connection", "—", 0.0,
            f"target 20,000 in one process: {alive:,} connections open at the measurement; "
            f"process RSS {rss / 2**20:,.0f} MiB with them (20,000 ≈ "
            f"{(rss + (20_000 - IDLE) * per_connection) / 2**20:,.0f} MiB); the machine's "
            f"open-file limit is {resource.getrlimit(resource.RLIMIT_NOFILE)[1]:,} per process",
            higher_is_better=False),
        Row(f"push, one event to {FANOUT:,} watchers ({FANOUT_RATE} events/s)",
            fanout["frames_per_s"], "frames/s", f"raw pre-built frame write loop, {CLIENTS} "
            "sockets", raw["frames_per_s"],
            f"target p99 ≤ 100 ms: p50 {fanout['p50_ms']:.1f} ms, p99 {fanout['p99_ms']:.1f} "
            f"ms event→client (the clients' {FANOUT_PROCESSES} processes share the 2 cores); "
            f"Keyun hands an event to all {FANOUT:,} sockets within {handed[0.5]:g} ms at "
            f"p50, {handed[0.99]:g} ms at p99 (its histogram's bucket bounds; the raw loop's "
            f"rate makes {FANOUT * 1000 / raw['frames_per_s']:.0f} ms for {FANOUT:,} writes); "
            f"resyncs {fanout['resyncs']}"),
    ]
    for rate in RATES:
        got = await _keyun(bench, dep["_id"], rate)
        rows.append(Row(
            f"push, {rate} events/s on one departure → {CLIENTS} watchers", got["frames_per_s"],
            "frames/s", f"raw pre-built frame write loop, {CLIENTS} sockets",
            raw["frames_per_s"],
            f"offered {rate * CLIENTS:,} frames/s; p50 {got['p50_ms']:.1f} ms, "
            f"p99 {got['p99_ms']:.1f} ms event→client; resyncs {got['resyncs']}"))
    return rows
