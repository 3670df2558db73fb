"""Helpers for inventory tests: a throw-away route and departure, and a hammering worker."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import sys
import uuid
from typing import Any

from server.clock import LOCAL_TZ

NOW = dt.datetime.now(dt.UTC)


async def make_departure(db: Any, *, seats: int = 8, stops: int = 3,
                         departs_in: dt.timedelta = dt.timedelta(days=2),
                         station_id: str | None = None) -> str:
    """Insert a route with ``stops`` stops and one departure on it; returns its id."""
    tag = uuid.uuid4().hex[:10]
    route_id = f"RT{tag}"
    station = await db.stations.find_one({"_id": station_id} if station_id else {})
    await db.routes.insert_one({
        "_id": route_id, "code": route_id, "name": "测试线", "origin_station_id": station["_id"],
        "destination_station_id": station["_id"], "distance_km": 100 * (stops - 1),
        "grade": "class_2", "type": "intercity", "status": "active"})
    await db.stops.insert_many([
        {"_id": f"{route_id}-{i}", "route_id": route_id, "seq": i, "name": f"站{i}",
         "city": station["city"], "division": station["division"], "distance_km": 100 * i}
        for i in range(stops)])
    await db.fares.insert_many([
        {"_id": f"{route_id}-{i}-{j}", "route_id": route_id, "from_seq": i, "to_seq": j,
         "guide_price": 3000 * (j - i), "station_fee": 100,
         "prices": {"adult": 2800 * (j - i), "child": 1400 * (j - i),
                    "student": 2100 * (j - i), "senior": 1400 * (j - i)},
         "effective_from": NOW - dt.timedelta(days=30)}
        for i in range(stops) for j in range(i + 1, stops)])
    departure_id = f"DT{tag}"
    departs_at = dt.datetime.now(dt.UTC) + departs_in  # from now, not from the import
    await db.departures.insert_one({
        "_id": departure_id, "schedule_id": f"SCH{tag}", "route_id": route_id,
        "station_id": station["_id"], "carrier_id": "C44010001",
        "service_date": departs_at.astimezone(LOCAL_TZ).date().isoformat(),
        "departs_at": departs_at, "seats": seats, "status": "on_sale",
        "inventory": "native"})
    return departure_id


async def _hammer(mongo_uri: str, redis_url: str, db_name: str, departure_id: str,
                  attempts: int, segments: int, seed: int) -> list[str]:
    from pymongo import AsyncMongoClient
    from redis.exceptions import RedisError

    from server.app import connect_redis
    from server.exchange.base import HoldRequest
    from server.exchange.errors import ExchangeError
    from server.storage.inventory import NativeInventory, new_hold_id

    rng = random.Random(seed)
    mongo: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri, tz_aware=True)
    redis = connect_redis(redis_url)
    inventory = NativeInventory(mongo[db_name], redis)
    sold: list[str] = []

    async def attempt() -> None:
        start = rng.randrange(segments)
        end = rng.randint(start + 1, segments)
        request = HoldRequest(new_hold_id(), rng.choice(["miniapp", "app", "web"]),
                              rng.choice([1, 1, 1, 2]), start, end, ttl_seconds=300)
        try:
            hold = await inventory.hold(departure_id, request)
            await inventory.sell(departure_id, hold.hold_id)
            sold.append(hold.hold_id)
        except ExchangeError:
            pass
        except (RedisError, AttributeError):
            # the connection failed under us (redis-py's cluster client, when a burst of first
            # commands races its learning of the slots, can find a connection closed
            # mid-handshake: AttributeError on its writer — hence the ping first): whether the
            # script ran is unknown — said so, and checked from the stores
            sold.append("?" + request.hold_id)

    await redis.ping()  # connected, and a cluster client has learnt the slots, as Keyun is
    await asyncio.gather(*[attempt() for _ in range(attempts)])
    await inventory.close()
    await mongo.close()
    await redis.aclose()
    return sold


async def processes_fight(db: Any, mongo_uri: str, redis_url: str, db_name: str,
                          departure_id: str, processes: int, attempts: int,
                          segments: int) -> dict[int, int]:
    """``processes`` hammering processes, ``attempts`` holds-and-sales each over random
    segments; checks from MongoDB that no seat segment was sold twice and that Redis shows
    exactly what was sold. Returns seat → sold segment mask."""
    import subprocess

    from server.app import connect_redis
    from server.exchange.base import segment_mask
    from server.storage.inventory import NativeInventory
    from tests.support import ROOT

    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.inventory_support", mongo_uri, redis_url, db_name,
        departure_id, str(attempts), str(segments), str(seed), stdout=subprocess.PIPE,
        cwd=ROOT) for seed in range(processes)]
    outputs = await asyncio.gather(*[p.communicate() for p in procs])
    assert all(p.returncode == 0 for p in procs)
    lines = {line for out, _ in outputs for line in out.decode().split() if line}
    sold = {line for line in lines if not line.startswith("?")}
    unknown = {line[1:] for line in lines if line.startswith("?")}
    assert sold, "nobody managed to buy anything"
    tried = processes * attempts
    assert len(unknown) <= tried // 10, f"{len(unknown)} of {tried} attempts lost their answer"
    records = await db.seat_holds.find({"departure_id": departure_id,
                                        "status": "sold"}).to_list()
    # every sale a hammer saw is recorded, and nothing else but what a lost answer hid
    assert sold <= {r["_id"] for r in records} <= sold | unknown
    per_seat: dict[int, int] = {}
    for rec in records:
        mask = segment_mask(rec["from_seq"], rec["to_seq"])
        for entry in rec["seats"]:
            assert per_seat.get(entry["seat"], 0) & mask == 0, "a seat segment sold twice"
            per_seat[entry["seat"]] = per_seat.get(entry["seat"], 0) | mask
    redis = connect_redis(redis_url)
    inventory = NativeInventory(db, redis)
    try:
        seats = await inventory.availability(departure_id)
    finally:
        await inventory.close()
        await redis.aclose()
    taken = dict(per_seat)  # and the seats still held by an attempt whose answer was lost
    async for rec in db.seat_holds.find({"_id": {"$in": sorted(unknown)}, "status": "held"}):
        for entry in rec["seats"]:
            taken[entry["seat"]] = taken.get(entry["seat"], 0) | segment_mask(
                rec["from_seq"], rec["to_seq"])
    assert {i + 1: m for i, m in enumerate(seats.occupancy) if m} == taken
    return per_seat


def hammer_main(args: list[str]) -> None:
    """Entry point of one hammering process: prints the ids of the sales it made."""
    mongo_uri, redis_url, db_name, departure_id, attempts, segments, seed = args
    sold = asyncio.run(_hammer(mongo_uri, redis_url, db_name, departure_id, int(attempts),
                               int(segments), int(seed)))
    print("\n".join(sold))


if __name__ == "__main__":
    hammer_main(sys.argv[1:])
