"""A Keyun process killed in the middle of a sale leaves nothing half-done.

Real processes, paused at a named point of the sale by a failpoint and killed there with
SIGKILL: no order without its tickets, no seats held for an order that does not exist (the
sweeper gives them back), and an order that was written keeps its seats."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.simple_httpclient import HTTPStreamClosedError

from devstack.embedded import free_port
from tests.booking_support import member, person
from tests.inventory_support import make_departure
from tests.reliability import record
from tests.support import ApiClient, KeyunProcess, keyun_env

ORPHAN_SECONDS = 2


@pytest.fixture(scope="module")
def keyun(stores, seeded, providers, workdir: Path) -> Iterator[KeyunProcess]:
    """This module's server sweeps orphan holds after two seconds (not one minute)."""
    env = keyun_env(KEYUN_MONGO_URI=stores.mongo_uri, KEYUN_REDIS_URL=stores.redis_url,
                    KEYUN_MONGO_DB=seeded, KEYUN_SEED_DEMO="false",
                    KEYUN_DATA_DIR=str(workdir / "test_crash"),
                    KEYUN_ORPHAN_HOLD_SECONDS=str(ORPHAN_SECONDS), **providers.env)
    server = KeyunProcess(env, workdir / "logs" / "test_crash.log", int(env["KEYUN_PORT"]))
    server.start()
    yield server
    server.stop()


def doomed(keyun: KeyunProcess, workdir: Path, failpoints: str, name: str) -> KeyunProcess:
    """A second server that stops at the failpoint (to be killed there)."""
    env = {**keyun.env, "KEYUN_PORT": str(free_port()), "KEYUN_FAILPOINTS": failpoints,
           "KEYUN_DATA_DIR": str(workdir / f"test_crash-{name}")}
    server = KeyunProcess(env, workdir / "logs" / f"test_crash-{name}.log",
                          int(env["KEYUN_PORT"]))
    server.start()
    return server


async def remaining(api: ApiClient, departure_id: str) -> int:
    return (await api.get(f"/api/v1/departures/{departure_id}")).body["remaining"]


async def until(predicate, seconds: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.2)
    return False


def died(answer: Any) -> bool:
    """The buyer's connection went down with the process (no answer came)."""
    return isinstance(answer, HTTPStreamClosedError) or getattr(answer, "status", 0) == 599


def order_body(departure_id: str, n: int = 1) -> dict[str, Any]:
    return {"departure_id": departure_id, "contact_phone": "13812345678",
            "passengers": [person() for _ in range(n)]}


@pytest.mark.reliability("R8")
@pytest.mark.gen_test(timeout=90)
async def test_killed_after_the_hold_the_seats_come_back(api: ApiClient, keyun, workdir,
                                                         db) -> None:
    dep = await make_departure(db, seats=5, stops=2)
    other = doomed(keyun, workdir, "orders.after_hold=pause:60", "after-hold")
    try:
        token = await member(api)
        buyers = [asyncio.ensure_future(ApiClient(other.base_url).post(
            "/api/v1/orders", order_body(dep, 2), token=token)) for _ in range(2)]

        async def all_held() -> bool:
            return await remaining(api, dep) == 1
        assert await until(all_held, 20), "the paused process never took the seats"
        other.stop(signal.SIGKILL)
        answers = await asyncio.gather(*buyers, return_exceptions=True)
        assert all(died(a) for a in answers), answers
    finally:
        other.stop(signal.SIGKILL)

    async def all_back() -> bool:
        return await remaining(api, dep) == 5
    assert await until(all_back, ORPHAN_SECONDS + 15), "orphan holds were never released"
    assert await db.orders.count_documents({"departure_id": dep}) == 0
    assert await db.tickets.count_documents({"departure_id": dep}) == 0
    claims = await db.hold_claims.find({"departure_id": dep}).to_list()
    assert len(claims) == 2 and {c["owner"] for c in claims} == {"sweeper"}
    # and the seats sell again
    again = await api.post("/api/v1/orders", order_body(dep, 5), token=await member(api))
    assert again.status == 201, again.text
    record("R8", load="2 orders of 2 seats on a 5-seat departure, through a Keyun process",
           faults="the process killed (SIGKILL) after holding the seats, before writing the "
                  "orders",
           checked="seats left; orders and tickets written; who released the holds",
           figure="both holds released by the sweeper within the orphan limit, 0 orders or "
                  "tickets left behind; all 5 seats sold again")


@pytest.mark.gen_test(timeout=90)
async def test_killed_after_the_order_is_written_the_order_keeps_its_seats(
        api: ApiClient, keyun, workdir, db) -> None:
    dep = await make_departure(db, seats=4, stops=2)
    other = doomed(keyun, workdir, "orders.after_write=pause:60", "after-write")
    try:
        token = await member(api)
        buyer = asyncio.ensure_future(ApiClient(other.base_url).post(
            "/api/v1/orders", order_body(dep, 3), token=token))

        async def written() -> bool:
            return await db.orders.count_documents({"departure_id": dep}) == 1
        assert await until(written, 20)
        other.stop(signal.SIGKILL)
        answer = (await asyncio.gather(buyer, return_exceptions=True))[0]
        assert died(answer), answer
    finally:
        other.stop(signal.SIGKILL)
    await asyncio.sleep(ORPHAN_SECONDS + 7)  # the sweeper ran (every 5 s) and let it be
    assert await remaining(api, dep) == 1
    order = await db.orders.find_one({"departure_id": dep})
    listed = (await api.get(f"/api/v1/orders/{order['order_no']}", token=token)).body
    assert listed["status"] == "pending_payment"
    assert [t["status"] for t in listed["tickets"]] == ["held"] * 3
    claim = await db.hold_claims.find_one({"_id": order["hold_id"]})
    assert claim["owner"] == "order"


@pytest.mark.gen_test(timeout=90)
async def test_an_order_too_slow_for_the_sweeper_is_refused_not_left_seatless(
        api: ApiClient, keyun, workdir, db) -> None:
    """Paused past the orphan limit but alive: the sweeper released the seats first, so the
    order must not be written (it would hold tickets for seats it no longer has)."""
    dep = await make_departure(db, seats=3, stops=2)
    slow = doomed(keyun, workdir, f"orders.after_hold=pause:{ORPHAN_SECONDS + 8}", "slow")
    try:
        answer = await ApiClient(slow.base_url).post("/api/v1/orders", order_body(dep, 2),
                                                     token=await member(api))
    finally:
        slow.stop()
    assert answer.status == 410 and answer.error_code == "HOLD_EXPIRED", answer.text
    assert await db.orders.count_documents({"departure_id": dep}) == 0
    assert await db.tickets.count_documents({"departure_id": dep}) == 0
    assert await remaining(api, dep) == 3
