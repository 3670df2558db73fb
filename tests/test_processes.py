"""Several worker processes on one port (KEYUN_PROCESSES=2), as production runs them.

A worker killed with SIGKILL under load is started again while the other keeps serving
(no 5xx from a worker that was not killed), and a node told to stop answers the requests
it is serving before its stores close.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from server.clock import local_today
from tests.reliability import record
from tests.support import KeyunProcess, keyun_env


def workers(node: KeyunProcess) -> set[int]:
    """The node's forked workers: its children running the same command line."""
    assert node.proc is not None
    parent = psutil.Process(node.proc.pid)
    mine = parent.cmdline()
    return {c.pid for c in parent.children() if c.is_running() and
            c.status() != psutil.STATUS_ZOMBIE and c.cmdline() == mine}


async def load(base_url: str, stop: asyncio.Event, outcomes: Counter[str],
               clients: int = 12) -> None:
    """Searches and health checks from ``clients`` clients, each on new connections (so
    the kernel spreads them over the workers), until ``stop``."""
    http = AsyncHTTPClient(force_instance=True, max_clients=clients)
    tomorrow = (local_today() + dt.timedelta(days=1)).isoformat()
    paths = [f"/api/v1/departures?from={quote('广州')}&to={quote('深圳')}&date={tomorrow}",
             "/healthz", "/api/v1/stations?q=gz"]

    async def client(n: int) -> None:
        while not stop.is_set():
            try:
                resp = await http.fetch(base_url + paths[n % len(paths)], raise_error=False,
                                        request_timeout=10, headers={"Connection": "close"})
                outcomes[f"{resp.code // 100}xx" if resp.code != 599 else "no_answer"] += 1
            except (OSError, HTTPClientError):  # refused, reset, closed: went down with a worker
                outcomes["no_answer"] += 1
            n += 1

    try:
        await asyncio.gather(*[client(i) for i in range(clients)])
    finally:
        http.close()


async def wait_for(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.mark.reliability("R13")
def test_killed_workers_are_started_again_and_the_node_keeps_serving(
        stores: Any, seeded: str, providers: Any, workdir: Path) -> None:
    env = keyun_env(KEYUN_MONGO_URI=stores.mongo_uri, KEYUN_REDIS_URL=stores.redis_url,
                    KEYUN_MONGO_DB=seeded, KEYUN_SEED_DEMO="false", KEYUN_PROCESSES="2",
                    KEYUN_DATA_DIR=str(workdir / "test_processes"), **providers.env)
    node = KeyunProcess(env, workdir / "logs" / "test_processes.log", int(env["KEYUN_PORT"]))
    node.start()
    killed: Counter[str] = Counter()  # the answers while workers were being killed

    async def scenario() -> None:
        first = workers(node)
        assert len(first) == 2, first
        warm = AsyncHTTPClient(force_instance=True)
        tomorrow = (local_today() + dt.timedelta(days=1)).isoformat()
        for _ in range(4):  # the day's departures into Redis, once, and both workers warm
            await warm.fetch(f"{node.base_url}/api/v1/departures?from={quote('广州')}"
                             f"&to={quote('深圳')}&date={tomorrow}", request_timeout=60)
        warm.close()
        stop, outcomes = asyncio.Event(), Counter[str]()
        running = asyncio.ensure_future(load(node.base_url, stop, outcomes))
        await asyncio.sleep(1.5)
        victim, survivor = sorted(first)
        os.kill(victim, signal.SIGKILL)
        assert await wait_for(lambda: len(workers(node) - first) == 1, 10), \
            "the killed worker was not started again"
        replacement = (workers(node) - first).pop()
        served = sum(outcomes.values())
        await asyncio.sleep(1.5)
        assert sum(outcomes.values()) > served + 20, "the node stopped serving"
        # the replacement serves: with the other original killed too, it is all there is
        # (the restart after a second death in a row comes after a short back-off)
        os.kill(survivor, signal.SIGKILL)
        assert await wait_for(lambda: replacement in workers(node) and
                              len(workers(node)) == 2, 10)
        served = sum(outcomes.values())
        await asyncio.sleep(1.5)
        stop.set()
        await running
        assert sum(outcomes.values()) > served + 20
        assert outcomes["5xx"] == 0, outcomes
        assert outcomes["2xx"] > 100 and outcomes["no_answer"] <= 24, outcomes
        killed.update(outcomes)

        # stopping under load: requests being served are answered, then everything stops
        stop, outcomes = asyncio.Event(), Counter[str]()
        running = asyncio.ensure_future(load(node.base_url, stop, outcomes))
        await asyncio.sleep(1.0)
        assert node.proc is not None
        children = psutil.Process(node.proc.pid).children(recursive=True)
        node.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(node.proc.wait, 40)
        stop.set()
        await running
        assert code == 0
        assert outcomes["5xx"] == 0, outcomes
        assert not [c for c in children if c.is_running() and
                    c.status() != psutil.STATUS_ZOMBIE], "something was left running"

    try:
        asyncio.run(scenario())
    finally:
        node.stop()
    log = node.log_text()
    assert "starting it again" in log
    assert '"status": 500' not in log
    record("R13", load="searches from 12 clients on a node of 2 worker processes "
                       "(KEYUN_PROCESSES=2)",
           faults="each worker killed with SIGKILL in turn; then SIGTERM to the node under load",
           checked="every answer; the workers started again; what was left running",
           figure=f"{killed['2xx']:,} answered 2xx, 0 5xx, {killed.get('no_answer', 0)} "
                  "connections dropped by the killed workers; both started again; the stop "
                  "answered all in flight and left nothing running")
