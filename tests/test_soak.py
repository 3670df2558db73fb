"""Load held: mixed traffic — searches, orders, payments, WebSocket watchers, gate scans,
refunds — on a node of two worker processes while a worker is restarted every cycle
(gracefully and killed, in turn). No error but the restarts' dropped connections; memory
flat; nothing sold twice. Ten minutes under ``make reliability``, half a minute in
``make test``."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import pytest
from pymongo import AsyncMongoClient
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from server.clock import local_today
from tests.booking_support import person
from tests.inventory_support import make_departure
from tests.reliability import record, scale
from tests.support import ApiClient, KeyunProcess, keyun_env
from tests.test_processes import wait_for, workers
from tests.ws_support import Ws

GATE_STATION = "440111001"  # the demo gate user's station
DROP_WINDOW = 6.0  # seconds after a restart in which a dropped connection is the restart's


class Traffic:
    """What every client saw: answers by kind, and when connections dropped."""

    def __init__(self) -> None:
        self.answers: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.dropped: list[float] = []
        self.restarts: list[float] = []

    async def call(self, api: ApiClient, method: str, path: str, kind: str,
                   body: Any = None, token: str | None = None,
                   expected: tuple[str, ...] = ()) -> Any:
        """The answer; None when the connection dropped (counted with its time) or the
        answer was an error other than the ``expected`` codes (kept as unexpected)."""
        try:
            resp = await api.request(method, path, json_body=body, token=token)
        except (TimeoutError, OSError, HTTPClientError):  # reset, refused, closed mid-answer
            self.dropped.append(time.monotonic())
            return None
        if resp.status == 599:
            self.dropped.append(time.monotonic())
            return None
        self.answers[f"{kind} {resp.status // 100}xx"] += 1
        if resp.status >= 400 and resp.error_code not in expected:
            self.unexpected.append(f"{method} {path} {resp.status} {resp.text[:200]}")
            return None
        return resp

    def unexplained_drops(self) -> list[float]:
        return [t for t in self.dropped
                if not any(0 <= t - r <= DROP_WINDOW for r in self.restarts)]


def _rss(node: KeyunProcess) -> tuple[int, int]:
    """(the supervisor's RSS, the largest worker's RSS) in bytes."""
    assert node.proc is not None
    main = psutil.Process(node.proc.pid)
    sizes = [psutil.Process(pid).memory_info().rss for pid in workers(node)]
    return main.memory_info().rss, max(sizes, default=0)


@pytest.mark.reliability("Soak")
def test_mixed_traffic_holds_while_a_worker_restarts_every_cycle(
        stores: Any, seeded: str, providers: Any, workdir: Path) -> None:
    seconds, cycle = scale(30, 600), scale(10, 60)
    env = keyun_env(KEYUN_MONGO_URI=stores.mongo_uri, KEYUN_REDIS_URL=stores.redis_url,
                    KEYUN_MONGO_DB=seeded, KEYUN_SEED_DEMO="false", KEYUN_PROCESSES="2",
                    KEYUN_DATA_DIR=str(workdir / "test_soak"), **providers.env)
    node = KeyunProcess(env, workdir / "logs" / "test_soak.log", int(env["KEYUN_PORT"]))
    node.start()
    traffic = Traffic()
    done: Counter[str] = Counter()
    memory: list[tuple[float, int, int]] = []
    try:
        asyncio.run(_soak(node, stores, seeded, seconds, cycle, traffic, done, memory))
    finally:
        node.stop()

    assert not traffic.unexpected, traffic.unexpected[:10]
    assert not [k for k in traffic.answers if k.endswith("5xx")], traffic.answers
    assert not traffic.unexplained_drops(), (traffic.unexplained_drops(), traffic.restarts)
    assert len(traffic.restarts) == seconds // cycle - (seconds % cycle == 0)
    assert done["admitted"] >= 3 and done["watched"] > 0, done
    third = max(1, len(memory) // 3)
    early = max(m[2] for m in memory[:third])
    late = max(m[2] for m in memory[-third:])
    assert late <= early * 1.5 + 20 * 2**20, f"worker memory grew: {early} → {late}"
    supervisor = memory[-1][1] - memory[0][1]
    assert supervisor <= 20 * 2**20, f"supervisor grew {supervisor} bytes"
    requests = sum(traffic.answers.values())
    record("Soak", load=f"{seconds // 60 or seconds} {'min' if seconds >= 60 else 's'} of "
                        f"mixed traffic on 2 worker processes: {requests:,} requests "
                        f"({requests / seconds:.0f}/s) — searches, {done['ordered']} orders "
                        f"paid on {done['departures']} buses of 80 seats, "
                        f"{done['admitted']} gate admissions, {done['refunded']} refunds, "
                        f"{done['watchers']} WebSocket watchers",
           faults=f"a worker restarted every {cycle} s ({len(traffic.restarts)} times; "
                  "SIGTERM and SIGKILL in turn)",
           checked="every answer; when connections dropped; workers' and supervisor's "
                   "memory; the departure's seats; paid orders",
           figure=f"0 5xx, 0 unexpected 4xx; {len(traffic.dropped)} connections dropped, "
                  f"all within {DROP_WINDOW:.0f} s of a restart; largest worker "
                  f"{early / 2**20:.0f} → {late / 2**20:.0f} MiB, supervisor "
                  f"{supervisor / 2**20:+.1f} MiB; {done['watched']:,} events watched, "
                  f"{done['resubscribed']} WebSocket reconnects; no seat sold twice")


async def _soak(node: KeyunProcess, stores: Any, seeded: str, seconds: int, cycle: int,
                traffic: Traffic, done: Counter[str],
                memory: list[tuple[float, int, int]]) -> str:
    client: AsyncMongoClient[Any] = AsyncMongoClient(stores.mongo_uri, tz_aware=True)
    api = ApiClient(node.base_url)
    api.http = AsyncHTTPClient(force_instance=True, max_clients=32)
    try:
        return await _soak_on(node, client[seeded], api, seconds, cycle, traffic, done,
                              memory)
    finally:
        api.http.close()
        await client.close()


async def _soak_on(node: KeyunProcess, db: Any, api: ApiClient, seconds: int, cycle: int,
                   traffic: Traffic, done: Counter[str],
                   memory: list[tuple[float, int, int]]) -> str:
    # buses of 80 seats leaving in 44 minutes (boarding open, online sale open for 14); when
    # one sells out the buyers go on to the next
    departures = [await make_departure(db, seats=80, stops=2,
                                       departs_in=dt.timedelta(minutes=44),
                                       station_id=GATE_STATION)
                  for _ in range(scale(2, 16))]
    on_sale = [0]
    departure_id = departures[0]
    gate = str((await api.login("gate"))["token"])
    stop = asyncio.Event()
    tomorrow = (local_today() + dt.timedelta(days=1)).isoformat()

    async def searcher(n: int) -> None:
        paths = [f"/api/v1/departures?from={quote('广州')}&to={quote('深圳')}&date={tomorrow}",
                 "/api/v1/stations?q=gz", f"/api/v1/departures/{departure_id}"]
        while not stop.is_set():
            await traffic.call(api, "GET", paths[n % len(paths)], "search")
            n += 1

    async def buyer(n: int) -> None:
        token = None
        while token is None and not stop.is_set():
            openid = "o-" + secrets.token_hex(8)
            code = await traffic.call(api, "POST", "/sandbox/wechat/login-code", "sign-in",
                                      {"openid": openid})
            signed = code and await traffic.call(api, "POST", "/api/v1/auth/wechat",
                                                 "sign-in", {"code": code.body["code"]})
            token = signed.body["token"] if signed else None
        while not stop.is_set() and on_sale[0] < len(departures):
            current = on_sale[0]
            if await _one_trip(api, traffic, token, gate, departures[current],
                               refund=n % 4 == 3, done=done) == "SOLD_OUT":
                on_sale[0] = max(on_sale[0], current + 1)
            n += 1

    async def watcher(n: int) -> None:
        topic = f"departure:{departures[n % len(departures)]}"
        while not stop.is_set():
            ws = None
            try:
                ws = await Ws.connect(node.base_url)
                await ws.subscribe(topic)
                done["resubscribed"] += 1
                while not stop.is_set():
                    try:
                        frame = await ws.recv(1.0)
                    except TimeoutError:
                        continue
                    done["watched"] += frame.get("type") == "event"
            except (TimeoutError, OSError, AssertionError, ValueError):
                await asyncio.sleep(0.2)  # its process went away: connect again
            finally:
                if ws is not None:
                    ws.close()

    async def restarter() -> None:
        n = 0
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), cycle)
                return
            except TimeoutError:
                pass
            before = workers(node)
            victim = sorted(before)[n % 2]
            traffic.restarts.append(time.monotonic())
            os.kill(victim, signal.SIGTERM if n % 2 == 0 else signal.SIGKILL)
            assert await wait_for(lambda b=before: len(workers(node) - b) == 1, 10), \
                "the worker was not started again"
            n += 1

    async def sampler() -> None:
        while not stop.is_set():
            memory.append((time.monotonic(), *_rss(node)))
            try:
                await asyncio.wait_for(stop.wait(), 2.0)
            except TimeoutError:
                pass

    watchers = scale(10, 50)
    done["watchers"] = watchers
    tasks = [*(asyncio.ensure_future(searcher(i)) for i in range(4)),
             *(asyncio.ensure_future(buyer(i)) for i in range(3)),
             *(asyncio.ensure_future(watcher(i)) for i in range(watchers)),
             asyncio.ensure_future(restarter()), asyncio.ensure_future(sampler())]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    done["resubscribed"] -= watchers  # the first subscription of each is no reconnect

    # what was sold, from the store: seats distinct; every paid order issued or refunded
    for departure in departures:
        tickets = await db.tickets.find({"departure_id": departure, "active": True},
                                        {"seat": 1}).to_list()
        seats = [t["seat"] for t in tickets]
        assert len(seats) == len(set(seats)) <= 80, "a seat sold twice"
    done["departures"] = on_sale[0] + 1
    for _ in range(100):
        paid = await db.money_movements.distinct("order_no", {"kind": "payment"})
        stuck = await db.orders.count_documents({"departure_id": {"$in": departures},
                                                 "order_no": {"$in": paid},
                                                 "status": {"$in": ["paid", "pending_payment"]}})
        if not stuck:
            break
        await asyncio.sleep(0.2)
    assert not stuck, f"{stuck} paid orders neither issued nor refunded"
    return departure_id


async def _one_trip(api: ApiClient, traffic: Traffic, token: str, gate: str,
                    departure_id: str, *, refund: bool, done: Counter[str]) -> str | None:
    """Order, pay, wait for the ticket, then board at the gate (or refund it); SOLD_OUT
    when the bus is full."""
    made = await traffic.call(api, "POST", "/api/v1/orders", "order", {
        "departure_id": departure_id, "channel": "miniapp", "contact_phone": "13812345678",
        "passengers": [person()]}, token, expected=("SOLD_OUT",))
    if made is None:
        return None
    if made.status != 201:
        done["sold_out"] += 1
        return "SOLD_OUT"
    order_no = made.body["order_no"]
    if await traffic.call(api, "POST", f"/api/v1/orders/{order_no}/pay", "pay",
                          {"method": "wechat_jsapi"}, token) is None:
        return
    if await traffic.call(api, "POST", f"/sandbox/payments/{order_no}/confirm", "pay") is None:
        return
    done["ordered"] += 1
    for _ in range(50):
        got = await traffic.call(api, "GET", f"/api/v1/orders/{order_no}", "order",
                                 token=token)
        if got is not None and got.body["status"] == "issued":
            break
        await asyncio.sleep(0.1)
    else:
        return
    ticket_no = got.body["tickets"][0]["ticket_no"]
    if refund:
        back = await traffic.call(api, "POST", f"/api/v1/tickets/{ticket_no}/refund",
                                  "refund", {}, token)
        done["refunded"] += back is not None
        return
    qr = await traffic.call(api, "GET", f"/api/v1/tickets/{ticket_no}/qr", "scan",
                            token=token)
    if qr is None:
        return
    scanned = await traffic.call(api, "POST", "/api/v1/gate/scan", "scan",
                                 {"code": qr.body["code"]}, gate)
    if scanned is not None:
        assert scanned.body["outcome"] == "admitted", scanned.body
        done["admitted"] += 1
