"""Ledger and settlement: postings per second beside raw inserts of the same documents, and a
settlement run over 100,000 tickets beside the raw aggregation it cannot do without."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import random
import time
import tracemalloc
from typing import Any

import psutil
from pymongo import AsyncMongoClient

from bench.run import Bench, Row
from server.clock import local_today
from server.security.pii import PiiVault, new_key_spec
from server.security.principal import FINANCE, Principal
from server.services.alerts import AlertService
from server.services.audit import AuditService
from server.services.clearing import ClearingRules
from server.services.events import EventLog
from server.services.ledger import PER_TRANSACTION, Ledger
from server.services.settlement import Settlement
from server.storage.collections import ensure_schema
from server.storage.ledger import LedgerBook

TITLE = "Ledger and settlement"
NOTES = [
    "Ledger postings: one poster (the posting job holds a lease, so postings are sequential; "
    "racing posters only conflict on the platform's busy accounts) `LedgerBook.post` of "
    "sale-like entries (6 postings: payable, carrier, station, outlet, provider, platform) — "
    "each one MongoDB transaction (snapshot reads, majority writes) with an existence check, "
    "the entry insert and six balance `$inc` upserts. The baseline inserts the same entry "
    "documents with `insert_one` from one client, no transaction and no balances. The "
    "posting job posts a page's entries in transactions of 100 (`LedgerBook.post_many`: "
    "each account's balance moves once per batch by its sum); its baseline is `insert_many` "
    "of the same 100 documents.",
    "Settlement: 100,000 tickets' sale entries over 40 carriers, 30 stations, 20 outlets, "
    "booked three days before, settled T+1 through yesterday by `Settlement.run` (per "
    "entity: its period's entries summed, a payout entry posted, the batch written). Peak "
    "Python memory from tracemalloc. The baseline is one raw aggregation summing the same "
    "entries per account ($unwind, $group) — the least any settlement must read.",
]
POSTERS = 1  # the posting job is one process (a lease): postings are sequential by design
TICKETS = int(os.environ.get("BENCH_SETTLEMENT_TICKETS", "100000"))
BENCH_LEDGER_DB = "keyun_bench_ledger"


def _entry(i: int, rng: random.Random, booked_on: str, at: dt.datetime) -> dict[str, Any]:
    price = rng.randrange(1_000, 30_000)
    station_fee = price // 20
    outlet = price * 3 // 100
    provider = price * 6 // 1000
    platform = price // 100
    shares = {f"station:ST{rng.randrange(30):03d}": station_fee,
              f"outlet:OU{rng.randrange(20):03d}": outlet, "provider:wechat": provider,
              "platform:keyun": platform}
    shares[f"carrier:CA{rng.randrange(40):03d}"] = price - sum(shares.values())
    return {"_id": f"sale:B{i:09d}", "kind": "sale", "at": at, "booked_on": booked_on,
            "event_at": at, "order_no": f"BO{i:09d}", "ticket_no": f"B{i:09d}",
            "rule_version": "default",
            "postings": [{"account": "payable:orders", "amount": price},
                         *({"account": a, "amount": -v} for a, v in shares.items())],
            "ticket": {"price": price, "shares": shares,
                       "sale": {"seller": "outlet:OU000", "channel": "agent",
                                "station_id": "ST000"}}}


async def _posting_rate(book: LedgerBook, raw: Any, seconds: float
                        ) -> tuple[float, float, float, float]:
    rng = random.Random(1)
    today, now = local_today().isoformat(), dt.datetime.now(dt.UTC)
    counter = iter(range(10**9))

    async def timed(write: Any, size: int) -> float:
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await write([_entry(next(counter), rng, today, now) for _ in range(size)])
                done += size
        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(POSTERS)])
        return done / (time.perf_counter() - start)

    posted = await timed(lambda entries: book.post(entries[0]), 1)
    inserted = await timed(lambda entries: raw.insert_one(entries[0]), 1)
    batched = await timed(book.post_many, PER_TRANSACTION)
    inserted_many = await timed(raw.insert_many, PER_TRANSACTION)
    return posted, inserted, batched, inserted_many


async def _settlement(db: Any) -> tuple[float, float, float, int]:
    rng = random.Random(2)
    booked = (local_today() - dt.timedelta(days=3)).isoformat()
    at = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    balances: dict[str, int] = {}
    for first in range(0, TICKETS, 5_000):
        chunk = [_entry(i, rng, booked, at) for i in range(first, first + 5_000)]
        for entry in chunk:
            for p in entry["postings"]:
                balances[p["account"]] = balances.get(p["account"], 0) + p["amount"]
        await db.ledger_entries.insert_many(chunk, ordered=False)
    print(f"   {TICKETS:,} entries inserted", flush=True)
    # the balances the posting job would have kept beside those entries
    for account, balance in balances.items():
        await db.ledger_accounts.replace_one({"_id": account},
                                             {"balance": balance, "entries": 0, "updated_at": at},
                                             upsert=True)
    start = time.perf_counter()
    rows = [r async for r in await db.ledger_entries.aggregate([
        {"$match": {"booked_on": booked}}, {"$unwind": "$postings"},
        {"$group": {"_id": "$postings.account", "sum": {"$sum": "$postings.amount"}}}])]
    raw = time.perf_counter() - start
    print(f"   raw aggregation {raw:.1f} s", flush=True)
    assert len(rows) == len(balances)
    vault = PiiVault.from_config(new_key_spec(), base64.b64encode(os.urandom(32)).decode())
    audit = AuditService(db)
    ledger = Ledger(db, ClearingRules(db, audit), AlertService(db, _NoEvents()))
    settlement = Settlement(db, ledger, vault, audit, ["wechat", "alipay"])
    actor = Principal(kind="staff", id="bench", role=FINANCE, username="bench")
    rss = psutil.Process().memory_info().rss
    tracemalloc.start()
    start = time.perf_counter()
    batch = await settlement.run(actor, (local_today() - dt.timedelta(days=1)).isoformat())
    took = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert batch["status"] == "done", batch
    rss_growth = psutil.Process().memory_info().rss - rss
    return took, raw, peak / 2**20, max(0, rss_growth) // 2**20


class _NoEvents(EventLog):
    """Alerts need an event log; the benchmark raises none."""

    def __init__(self) -> None:  # no Redis
        pass


async def run(bench: Bench) -> list[Row]:
    mongo: AsyncMongoClient[Any] = AsyncMongoClient(bench.mongo_uri, tz_aware=True,
                                                    w="majority")
    await mongo.drop_database(BENCH_LEDGER_DB)
    db = mongo[BENCH_LEDGER_DB]
    try:
        await ensure_schema(db)
        posted, inserted, batched, inserted_many = await _posting_rate(
            LedgerBook(db), db.raw_entries, bench.seconds)
        print(f"   postings {posted:,.1f}/s, raw inserts {inserted:,.1f}/s; in batches "
              f"{batched:,.1f}/s, raw insert_many {inserted_many:,.1f}/s", flush=True)
        await db.ledger_entries.delete_many({})
        await db.ledger_accounts.delete_many({})
        took, raw, peak_mib, rss_mib = await _settlement(db)
    finally:
        await mongo.drop_database(BENCH_LEDGER_DB)
        await mongo.close()
    return [
        Row("ledger postings, one poster (LedgerBook.post)", posted,
            "entries/s", "raw MongoDB insert_one of the same entries, one client",
            inserted, "one transaction per entry: entry + 6 balance upserts"),
        Row(f"ledger postings in batches of {PER_TRANSACTION} (LedgerBook.post_many, as the "
            "posting job)", batched, "entries/s",
            f"raw MongoDB insert_many of the same entries, {PER_TRANSACTION} at a time",
            inserted_many, "one transaction per batch: the entries + one $inc per account"),
        Row(f"settlement run over {TICKETS:,} tickets (Settlement.run)", took, "s",
            "raw aggregation of the same entries per account", raw,
            f"peak Python memory {peak_mib:,.1f} MiB (RSS grew {rss_mib} MiB)",
            higher_is_better=False),
    ]
