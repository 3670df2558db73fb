"""Gate scans: admit-once scans of distinct tickets, beside the raw signature check."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import tempfile
import time
import uuid
from typing import Any

from pymongo import AsyncMongoClient

from bench.run import Bench, Row
from server.clock import LOCAL_TZ
from server.security import ticketcode
from server.security.pii import PiiVault
from server.services.audit import AuditService
from server.services.gate import GateKeys, GateService
from tests.support import TEST_SECRETS

TITLE = "Gate scans: signed codes admitted once"
STATION = "440111001"  # the demo gate's station
TICKETS = 4000
PER_DEPARTURE = 40
GATES = 16
NOTES = [
    f"Gate scans: {GATES} gates (separate load generator) `POST /api/v1/gate/scan` each code "
    f"once, from {TICKETS:,} issued tickets of departures boarding now: base45 decode, Ed25519 "
    "verify, time step, ticket and departure reads, the guarded `issued → checked_in` update "
    "and the scan log insert. The raw baseline is the least store work a scan needs, from "
    f"{GATES} concurrent clients straight to MongoDB: the guarded update of a ticket (by "
    "ticket number) and the insert of a scan record, on tickets the HTTP run did not scan. "
    "The signature check (decode + Ed25519 verify with `cryptography`, in a loop in one "
    "process) is given beside: ~0.3 ms of a scan.",
]


async def _seed(db: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Departures boarding in 20 minutes with issued tickets (straight into the database)."""
    await db.tickets.delete_many({"order_no": {"$regex": "^KYBENCHGATE"}})
    await db.departures.delete_many({"_id": {"$regex": "^BENCHGATE-"}})
    route = await db.routes.find_one({"origin_station_id": STATION})
    departs = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(minutes=20)
    deps = [{"_id": f"BENCHGATE-{i:04d}", "schedule_id": f"BENCHGATE-{i:04d}",
             "route_id": route["_id"], "station_id": STATION, "carrier_id": "C44010001",
             "service_date": departs.astimezone(LOCAL_TZ).date().isoformat(),
             "departs_at": departs, "seats": PER_DEPARTURE, "status": "on_sale",
             "inventory": "native"} for i in range(TICKETS // PER_DEPARTURE)]
    await db.departures.insert_many(deps)
    day = "991231"
    tickets = []
    for n in range(TICKETS):
        dep = deps[n // PER_DEPARTURE]
        tickets.append({
            "ticket_no": f"{STATION}{day}{n:05d}", "order_no": f"KYBENCHGATE{n // 4:06d}",
            "departure_id": dep["_id"], "seat": n % PER_DEPARTURE + 1, "ticket_type": "adult",
            "price": 4500, "status": "issued", "active": True, "pickup_code": f"{n:08d}",
            "passenger": {"name": "压测", "id_type": "resident_id",
                          "id_no_index": f"bench-{n}", "id_no_masked": "4401**********0000"}})
    clock = time.perf_counter()
    for i in range(0, len(tickets), 2000):
        await db.tickets.insert_many(tickets[i:i + 2000])
    print(f"   {len(tickets)} tickets seeded in {time.perf_counter() - clock:.1f} s", flush=True)
    by_id = {d["_id"]: d for d in deps}
    return [(t, by_id[t["departure_id"]]) for t in tickets]


async def run(bench: Bench) -> list[Row]:
    mongo: AsyncMongoClient[Any] = AsyncMongoClient(bench.mongo_uri, tz_aware=True)
    db = mongo[bench.db_name]
    try:
        pairs = await _seed(db)
        vault = PiiVault.from_config(TEST_SECRETS["KEYUN_PII_KEYS"],
                                     TEST_SECRETS["KEYUN_PII_INDEX_KEY"])
        gate = GateService(db, vault, GateKeys(db, vault), AuditService(db))
        clock = time.perf_counter()
        codes = [(await gate.code_for(t, d))["code"] for t, d in pairs]
        print(f"   {len(codes)} codes in {time.perf_counter() - clock:.1f} s", flush=True)
        token = await bench.login("gate")
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            for code in codes:
                f.write(json.dumps({"code": code}) + "\n")
            bodies = f.name
        got = await bench.http_load("/api/v1/gate/scan", concurrency=GATES, bodies=bodies,
                                    headers=[f"Authorization: Bearer {token}"])
        admitted = await db.tickets.count_documents(
            {"order_no": {"$regex": "^KYBENCHGATE"}, "status": "checked_in"})
        keys = await gate.keys.verifying()
        n, started = 0, time.perf_counter()
        while time.perf_counter() - started < bench.seconds:
            ticketcode.verify(codes[n % len(codes)], keys)
            n += 1
        verify_rate = n / (time.perf_counter() - started)
        raw, raw_p99 = await _raw_store_work(db, [t for t, _ in reversed(pairs)],
                                             bench.seconds)
    finally:
        await mongo.close()
    scanned = int(got["requests"])
    return [Row(f"gate scans, {GATES} gates, each code once (POST /api/v1/gate/scan)",
                got["rps"], "scans/s",
                f"raw store work of a scan ({GATES} clients: guarded update + scan insert)",
                raw, f"target ≥ 0.50; p50 {got['p50_ms']:.1f} ms, p99 {got['p99_ms']:.1f} ms "
                f"(target ≤ 50 ms; the raw store work alone: p99 {raw_p99:.0f} ms); "
                f"{admitted:,} of {scanned:,} scans admitted, errors {int(got['errors'])}; "
                f"Keyun CPU {got['server_cpu_pct']:.0f} %; the "
                f"signature check alone: {verify_rate:,.0f} codes/s in one process")]


async def _raw_store_work(db: Any, tickets: list[dict[str, Any]], seconds: float
                          ) -> tuple[float, float]:
    """The least a scan must ask of the store, from GATES concurrent clients: the guarded
    ``issued → checked_in`` update of a ticket and the insert of its scan record."""
    ids = [t["ticket_no"] for t in tickets]
    took: list[float] = []
    deadline = time.perf_counter() + seconds

    async def gate(offset: int) -> None:
        for n in range(offset, len(ids), GATES):
            if time.perf_counter() > deadline:
                return
            now, began = dt.datetime.now(dt.UTC), time.perf_counter()
            await db.tickets.update_one(
                {"ticket_no": ids[n], "status": {"$in": ["issued", "picked_up"]}},
                {"$set": {"status": "checked_in", "checked_in": {"at": now, "gate": "raw"}}})
            await db.gate_scans.insert_one({
                "_id": uuid.uuid4().hex, "at": now, "gate": f"raw-{offset}",
                "station_id": STATION, "staff_id": "raw", "source": "online",
                "departure_id": None, "realname": "not_checked", "outcome": "admitted",
                "ticket_no": ids[n]})
            took.append(time.perf_counter() - began)

    started = time.perf_counter()
    await asyncio.gather(*[gate(i) for i in range(GATES)])
    took.sort()
    return len(took) / (time.perf_counter() - started), 1000 * took[int(0.99 * len(took))]
