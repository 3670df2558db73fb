"""A process killed in the middle of posting to the ledger leaves no entry half-posted, and
the next run posts every entry exactly once.

The posting process runs against a database server of this test's own: it is killed with
SIGKILL inside a posting transaction (the ``ledger.in_transaction`` failpoint), which leaves
that transaction open on the server. MongoDB aborts an abandoned transaction after its
lifetime limit (``transactionLifetimeLimitSeconds``, 60 s); the test asks the server to end
it at once with ``killAllSessions`` — which it may do only on a server no other test uses."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from devstack.embedded import ChildServer, mongo_server, mongo_uri
from server.services.alerts import AlertService
from server.services.audit import AuditService
from server.services.clearing import ClearingRules
from server.services.ledger import Ledger
from tests.reliability import record
from tests.support import keyun_env

MOVEMENTS = 1_000
DB = "ledger_crash"


@pytest.fixture(scope="module")
def own_store(workdir: Path) -> Iterator[ChildServer]:
    server = mongo_server(workdir / "ledger-crash-store", memory=True)
    server.start()
    yield server
    server.stop()


def movements(count: int, first: int, now: dt.datetime) -> list[dict[str, Any]]:
    """Payments and refunds as the payments capability records them, a second apart."""
    rng = random.Random(first)
    out = []
    for i in range(first, first + count):
        kind = "refund" if i % 7 == 3 else "payment"
        out.append({"_id": f"{'ref' if kind == 'refund' else 'pay'}:KY{i:08d}", "kind": kind,
                    "amount": rng.randrange(100, 30_000),
                    "provider": rng.choice(["wechat", "alipay"]), "order_no": f"O{i:08d}",
                    "at": now - dt.timedelta(seconds=MOVEMENTS - i)})
    return out


def start_poster(uri: str, log: Path) -> subprocess.Popen[bytes]:
    """The posting job in a process of its own, armed to stop inside its transaction."""
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.ledger_poster", uri, DB], stdout=out, stderr=out,
            env=keyun_env(KEYUN_FAILPOINTS="ledger.in_transaction=pause:60"))


@pytest.mark.reliability("R14")
@pytest.mark.gen_test(timeout=120)
async def test_killed_while_posting_nothing_is_half_posted_and_nothing_twice(
        own_store: ChildServer, workdir: Path) -> None:
    uri = mongo_uri(own_store)
    client: AsyncMongoClient = AsyncMongoClient(uri, tz_aware=True)
    db = client[DB]
    ledger = Ledger(db, ClearingRules(db, AuditService(db)), AlertService(db))
    now = dt.datetime.now(dt.UTC)
    first, rest = movements(MOVEMENTS // 2, 0, now), movements(MOVEMENTS // 2, MOVEMENTS // 2,
                                                               now)
    await db.money_movements.insert_many(first)
    assert await ledger.run() == len(first)  # the job's earlier runs
    await db.money_movements.insert_many(rest)
    before = {a["_id"]: a["balance"] async for a in db.ledger_accounts.find({})}

    (workdir / "logs").mkdir(exist_ok=True)
    reached = workdir / "logs" / "ledger-poster.log"
    poster = start_poster(uri, reached)
    try:
        for _ in range(300):
            if "failpoint reached" in reached.read_text():
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the posting process never reached its failpoint: "
                        + reached.read_text()[-2000:])
        poster.send_signal(signal.SIGKILL)
        poster.wait(10)
    finally:
        if poster.poll() is None:
            poster.kill()
    # the killed transaction had written a hundred entries and their balances: none is seen
    assert await db.ledger_entries.count_documents({}) == len(first)
    assert {a["_id"]: a["balance"] async for a in db.ledger_accounts.find({})} == before
    await client.admin.command({"killAllSessions": []})  # what the server does after 60 s
    # the next run (here, another process's) posts the rest, each once; running again adds
    # nothing, and every balance is its entries' sum
    assert await ledger.run() == len(rest)
    assert await ledger.run() == 0
    assert await db.ledger_entries.count_documents({}) == MOVEMENTS
    ids = {e["_id"] async for e in db.ledger_entries.find({}, {"_id": 1})}
    assert ids == {f"mv:{m['_id']}" for m in first + rest}
    report = await ledger.check()
    assert report["differences"] == {} and report["journal_total"] == 0, report
    payable = sum(m["amount"] * (-1 if m["kind"] == "payment" else 1) for m in first + rest)
    held = await db.ledger_accounts.find_one({"_id": "payable:orders"})
    assert held["balance"] == payable
    record("R14", load=f"{MOVEMENTS:,} payments and refunds posted by the ledger job, half "
                       "before the crash",
           faults="the posting process killed (SIGKILL) inside a transaction of 100 entries",
           checked="entries and balances after the kill; entry ids, balances recomputed from "
                   "the journal after the next runs",
           figure=f"0 of the killed transaction's entries seen; then {len(rest)} posted "
                  f"once each, a further run posted 0, balances equal the journal's sums")
    await client.close()
