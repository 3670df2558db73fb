"""Keyun on a Redis Cluster for real: three masters of the same redis-server binary on
loopback ports, redis-py's cluster client (``KEYUN_REDIS_URL=redis+cluster://…``). Every key
group a script or transaction touches hashes to one slot; seat inventory fought over by
several processes, job leases, and a whole sale with its WebSocket events all work on it."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from redis.crc import key_slot

from devstack import embedded
from server.app import connect_redis
from server.clock import local_today
from server.services.events import Topic
from server.services.jobs import JobRunner
from server.storage.attempts import Backoff
from server.storage.seat_scripts import departure_keys
from tests.booking_support import person
from tests.inventory_support import make_departure, processes_fight
from tests.support import ApiClient, KeyunProcess, another_process, keyun_env
from tests.ws_support import Ws


@pytest.fixture(scope="module")
def cluster(workdir: Path) -> Iterator[embedded.RedisCluster]:
    nodes = embedded.RedisCluster(workdir / "redis-cluster", masters=3)
    nodes.start()
    yield nodes
    nodes.stop()


def _slots(keys: list[str]) -> set[int]:
    return {key_slot(k.encode()) for k in keys}


def test_every_key_group_a_script_or_transaction_touches_is_on_one_slot() -> None:
    for departure in ("S440106001-20261130-0800", "DTabc", "x{y}z"):
        keys = departure_keys(departure)
        topic = Topic("departure", departure)  # the seat scripts append to its stream
        assert len(_slots([*keys, topic.stream, topic.counter])) == 1, departure
    for kind, ref in (("order", "KY1"), ("member", "mbr_1"), ("warnings", "44")):
        topic = Topic(kind, ref)
        assert len(_slots([topic.stream, topic.counter])) == 1
    slow = Backoff(None, "login-ip", free=3, cap=60, memory=60)  # type: ignore[arg-type]
    assert len(_slots(list(slow._keys("198.18.0.1")))) == 1
    # and different departures spread over the cluster's slots
    assert len(_slots([departure_keys(f"D{i}")[0] for i in range(50)])) > 40


@pytest.mark.gen_test(timeout=300)
async def test_processes_fighting_over_one_departure_on_the_cluster(cluster, stores, seeded,
                                                                    db) -> None:
    dep = await make_departure(db, seats=30, stops=4)
    await processes_fight(db, stores.mongo_uri, cluster.url, seeded, dep, processes=3,
                          attempts=200, segments=3)


@pytest.mark.gen_test(timeout=60)
async def test_a_job_runs_in_one_process_at_a_time_and_moves_when_it_stops(cluster) -> None:
    runs: list[tuple[str, float, float]] = []

    def job(name: str) -> Any:
        async def run() -> None:
            start = time.monotonic()
            await asyncio.sleep(0.02)
            runs.append((name, start, time.monotonic()))
        return run

    clients = [connect_redis(cluster.url), connect_redis(cluster.url)]
    runners = [JobRunner(c) for c in clients]
    for name, runner in zip("AB", runners, strict=True):
        runner.add("cluster-probe", 0.05, job(name))
    try:
        for runner in runners:
            runner.start()
        await asyncio.sleep(1.5)
        first = {name for name, _, _ in runs}
        assert len(first) == 1 and len(runs) >= 10, runs
        holder = "AB".index(first.pop())
        await runners[holder].stop()  # gives the lease back
        before = len(runs)
        await asyncio.sleep(1.0)
        assert {name for name, _, _ in runs[before:]} == {"AB"[1 - holder]}
    finally:
        for runner in runners:
            await runner.stop()
        for client in clients:
            await client.aclose()
    ordered = sorted(runs, key=lambda r: r[1])
    assert all(a[2] <= b[1] for a, b in itertools.pairwise(ordered)), \
        "two runs overlapped"


@pytest.fixture(scope="module")
def node(cluster, stores, seeded, providers, workdir: Path) -> Iterator[KeyunProcess]:
    env = keyun_env(KEYUN_MONGO_URI=stores.mongo_uri, KEYUN_REDIS_URL=cluster.url,
                    KEYUN_MONGO_DB=seeded, KEYUN_SEED_DEMO="false",
                    KEYUN_DATA_DIR=str(workdir / "test_redis_cluster"), **providers.env)
    server = KeyunProcess(env, workdir / "logs" / "test_redis_cluster.log",
                          int(env["KEYUN_PORT"]))
    server.start()
    yield server
    server.stop()


@pytest.mark.gen_test(timeout=120)
async def test_a_sale_through_two_processes_on_the_cluster(node, workdir, db) -> None:
    with another_process(node, workdir, "test_redis_cluster-2") as other:
        station = await db.stations.find_one({"system.vendor": "native"}, {"_id": 1})
        departure_id = await make_departure(db, seats=6, stops=2, station_id=station["_id"])
        api, there = ApiClient(node.base_url), ApiClient(other.base_url)
        watcher = await Ws.connect(other.base_url)
        try:
            subscribed, frames = await watcher.subscribe(f"departure:{departure_id}")
            assert subscribed["type"] == "subscribed" and frames[0]["type"] == "snapshot"
            # sign-in by SMS: the code, its tries and the send limits live in Redis
            phone = "13700001234"
            assert (await api.post("/api/v1/auth/sms/send", {"phone": phone})).status == 200
            code = (await api.get(f"/sandbox/sms/last?phone={phone}")).body["code"]
            signed = await there.post("/api/v1/auth/sms/login", {"phone": phone, "code": code})
            assert signed.status == 200, signed.text
            token = signed.body["token"]
            # a search reads the counts of many departures, on many slots, at once
            tomorrow = (local_today() + dt.timedelta(days=1)).isoformat()
            found = await there.get(f"/api/v1/departures?from={quote('广州')}"
                                    f"&to={quote('深圳')}&date={tomorrow}")
            assert found.status == 200 and found.body["departures"], found.text
            made = await api.post("/api/v1/orders", {
                "departure_id": departure_id, "channel": "app",
                "contact_phone": "13812345678", "passengers": [person(), person()]},
                token=token)
            assert made.status == 201, made.text
            held, _ = await watcher.until(lambda f: f["type"] == "event", within=5)
            assert held["data"]["change"] == "held"
            order_no = made.body["order_no"]
            refused = await there.post(f"/api/v1/orders/{order_no}/pay",
                                       {"method": "wechat_jsapi"}, token=token)
            assert refused.status == 422, refused.text  # not JSAPI: no WeChat identity
            paid = await there.post(f"/api/v1/orders/{order_no}/pay",
                                    {"method": "wechat_app"}, token=token)
            assert paid.status == 200, paid.text
            await there.post(f"/sandbox/payments/{order_no}/confirm")
            for _ in range(50):
                got = (await there.get(f"/api/v1/orders/{order_no}", token=token)).body
                if got["status"] == "issued":
                    break
                await asyncio.sleep(0.1)
            assert got["status"] == "issued", got
            seats = (await api.get(f"/api/v1/departures/{departure_id}")).body
            assert seats["remaining"] == 4, seats
        finally:
            watcher.close()
    log = node.log_text() + other.log_text()
    assert "CROSSSLOT" not in log.upper() and "same key slot" not in log
    assert '"status": 500' not in log


@pytest.mark.gen_test(timeout=60)
async def test_a_burst_beyond_the_pool_waits_instead_of_failing_on_the_cluster(cluster) -> None:
    """redis-py's cluster client refuses a command when a node's pool is busy
    (MaxConnectionsError); Keyun's waits its turn, as the standalone client does."""
    redis = connect_redis(cluster.url, max_connections=4)
    try:
        await redis.ping()
        key = "burst:{one-slot}"  # every command on one node: the pool of four is the limit
        got = await asyncio.gather(*[redis.incr(key) for _ in range(200)])
        assert sorted(got) == list(range(1, 201))
        pipe = redis.pipeline(transaction=False)
        for _ in range(10):
            pipe.incr(key)
        done = await asyncio.gather(*[redis.pipeline(transaction=False).incr(key).execute()
                                      for _ in range(50)], pipe.execute())
        assert len(done) == 51
        assert int(await redis.get(key)) == 200 + 50 + 10
    finally:
        await redis.delete("burst:{one-slot}")
        await redis.aclose()
