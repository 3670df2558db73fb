"""Exchange-layer endpoints over real HTTP: departure seat maps, station status, on-demand
sync, ticket sources; and scheduled work running in one process at a time."""

from __future__ import annotations

import asyncio
import datetime as dt
from urllib.parse import quote

import pytest

from server.app import connect_redis
from server.clock import local_today
from server.services.jobs import JobRunner
from tests.support import ApiClient


async def _native_departure(db, offset: int = 4) -> dict:
    day = (local_today() + dt.timedelta(days=offset)).isoformat()
    native = await db.stations.distinct("_id", {"system.vendor": "native"})
    async for dep in db.departures.find({"service_date": day, "station_id": {"$in": native},
                                         "status": "on_sale", "_id": {"$regex": "^S44"}}
                                        ).sort("_id", -1):  # the demo's, not tests' routes
        if await db.stops.count_documents({"route_id": dep["route_id"]}) >= 3:
            return dep
    raise AssertionError("no native departure with an intermediate stop")


@pytest.mark.gen_test
async def test_departure_detail_with_seat_map_and_trip_segments(api: ApiClient, db) -> None:
    dep = await _native_departure(db)
    resp = await api.get(f"/api/v1/departures/{dep['_id']}")
    assert resp.status == 200, resp.text
    body = resp.body
    assert body["inventory"] == "native" and body["on_sale_online"] is True
    assert len(body["seat_map"]) == dep["seats"]
    assert body["departs_at"].endswith("+08:00")
    assert body["stops"][0]["seq"] == 0 and len(body["stops"]) >= 3
    assert body["fares"]["child"] < body["fares"]["adult"]
    part = await api.get(f"/api/v1/departures/{dep['_id']}?from_seq=1")
    assert part.body["from_seq"] == 1 and part.body["fares"] != body["fares"]
    bad = await api.get(f"/api/v1/departures/{dep['_id']}?from_seq=2&to_seq=1")
    assert bad.status == 422 and bad.error_code == "INVALID_SEGMENT"
    missing = await api.get("/api/v1/departures/NOPE-20260101")
    assert missing.status == 404 and missing.error_code == "DEPARTURE_NOT_FOUND"


@pytest.mark.gen_test
async def test_station_status_and_on_demand_sync(api: ApiClient) -> None:
    operator = (await api.login("operator"))["token"]
    status = await api.get("/api/v1/admin/exchange/stations", token=operator)
    assert status.status == 200
    vendors = {s["station_id"]: s["vendor"] for s in status.body["stations"]}
    assert vendors == {"440304001": "rest", "440303001": "rest", "440507001": "xml",
                       "441402001": "xml"}
    assert status.body["total"] == 4
    # paged by code, found by part of the code or name, online or not
    part = await api.get("/api/v1/admin/exchange/stations?limit=2&offset=1", token=operator)
    assert [s["station_id"] for s in part.body["stations"]] == ["440304001", "440507001"]
    assert part.body["total"] == 4
    named = status.body["stations"][0]["name"]
    found = await api.get(f"/api/v1/admin/exchange/stations?q={quote(named)}", token=operator)
    assert [s["name"] for s in found.body["stations"]] == [named]
    up = await api.get("/api/v1/admin/exchange/stations?online=true", token=operator)
    down = await api.get("/api/v1/admin/exchange/stations?online=false", token=operator)
    assert up.body["total"] + down.body["total"] == 4 == up.body["online"] + down.body["total"]
    assert all(s["online"] for s in up.body["stations"])
    assert not any(s["online"] for s in down.body["stations"])
    run = await api.post("/api/v1/admin/stations/440507001/sync", {"full": True},
                         token=operator)
    assert run.status == 200 and run.body["outcome"] == "ok" and run.body["kind"] == "full"
    assert run.body["counts"]["departures"]["new"] == 0  # nothing new since the last sync
    assert run.body["counts"]["vehicles"]["unchanged"] > 0  # the fleet came over GBK XML
    status = await api.get("/api/v1/admin/exchange/stations", token=operator)
    xml = next(s for s in status.body["stations"] if s["station_id"] == "440507001")
    # the last finished run, even when the module's own sync job has begun another since
    assert xml["online"] and xml["last_sync"]["outcome"] == "ok"
    assert xml["last_sync"]["started_at"] >= run.body["started_at"]
    assert xml["calls_last_hour"].get("ok", 0) >= 1 and xml["p50_ms"] is not None
    gate = (await api.login("gate"))["token"]
    denied = await api.post("/api/v1/admin/stations/440507001/sync", {}, token=gate)
    assert denied.status == 403


@pytest.mark.gen_test
async def test_ticket_source_over_the_api_limits_holds(api: ApiClient, db, stores) -> None:
    from server.exchange.base import HoldRequest
    from server.exchange.errors import AllotmentExhausted
    from server.storage.inventory import NativeInventory, new_hold_id

    dep = await _native_departure(db, offset=5)
    operator = (await api.login("operator"))["token"]
    path = f"/api/v1/admin/ticket-sources/departure/{dep['_id']}"
    assert (await api.get(path, token=operator)).body["configured"] is False
    too_many = await api.request("PUT", path, json_body={"allotments": {"agent": 500}},
                                 token=operator)
    assert too_many.status == 422 and too_many.error_code == "TICKET_SOURCE_INVALID"
    unknown = await api.request("PUT", path, json_body={"allotments": {"pigeon": 1}},
                                token=operator)
    assert unknown.status == 400
    allot = dep["seats"] - 1
    ok = await api.request("PUT", path, json_body={
        "allotments": {"agent": allot}, "closed_channels": ["partner"],
        "release_before_minutes": 30}, token=operator)
    assert ok.status == 200 and ok.body["allotments"] == {"agent": allot}

    # buyers on other channels find only the one unreserved seat
    redis = connect_redis(stores.redis_url)
    inventory = NativeInventory(db, redis)
    try:
        await inventory.hold(dep["_id"], HoldRequest(new_hold_id(), "miniapp", 1, 0, 1))
        with pytest.raises(AllotmentExhausted):
            await inventory.hold(dep["_id"], HoldRequest(new_hold_id(), "miniapp", 1, 0, 1))
    finally:
        await inventory.close()
        await redis.aclose()
    entry = await db.audit.find_one({"action": "ticket_source.put",
                                     "target": f"departure:{dep['_id']}"})
    assert entry["actor"]["username"] == "operator"


@pytest.mark.gen_test(timeout=30)
async def test_scheduled_work_runs_in_one_process_at_a_time(stores) -> None:
    runs: dict[str, int] = {"a": 0, "b": 0}
    clients = [connect_redis(stores.redis_url), connect_redis(stores.redis_url)]
    runners = []
    for name, client in zip(("a", "b"), clients, strict=True):
        runner = JobRunner(client)

        async def job(name: str = name) -> None:
            runs[name] += 1

        runner.add("lease-test", 0.05, job)
        runners.append(runner)
    for runner in runners:
        runner.start()
    await asyncio.sleep(1.0)
    holders = [name for name, count in runs.items() if count]
    assert len(holders) == 1 and runs[holders[0]] > 5  # one process runs it, often
    first = holders[0]
    other = "b" if first == "a" else "a"
    await runners[0 if first == "a" else 1].stop()  # the holder goes away …
    await asyncio.sleep(1.0)
    await runners[1 if first == "a" else 0].stop()
    for client in clients:
        await client.aclose()
    assert runs[other] > 0  # … and the other takes over
