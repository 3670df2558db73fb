"""The exchange layer against the real simulators and real stores: every ticket operation on
every adapter, seats vanishing at the station's window, stations that are down, slow, or
answer garbage or with the wrong signature, and data sync with change detection."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from devstack.demo import DEMO_VENDORS
from server.app import connect_redis
from server.clock import local_today
from server.errors import DomainError
from server.exchange.adapters import xmlcodec
from server.exchange.adapters.native import NativeExchange
from server.exchange.adapters.xml import XmlExchange
from server.exchange.base import HoldRequest, TicketInfo
from server.exchange.errors import (
    BadStationResponse,
    HoldExpired,
    SeatTaken,
    StationTimeout,
)
from server.exchange.registry import ExchangeRegistry
from server.services.audit import AuditService
from server.services.events import EventLog
from server.services.search import NetworkCache
from server.services.seats import SeatService
from server.services.sync import SyncService
from server.storage.inventory import NativeInventory, new_hold_id
from tests.reliability import record

VENDORS = ["native", "rest", "xml"]


class Stack:
    def __init__(self, db: Any, redis: Any, timeout: float = 1.0) -> None:
        self.db = db
        self.redis = redis
        self.inventory = inventory = NativeInventory(db, redis)
        self.seats = SeatService(db, redis, ExchangeRegistry(NativeExchange(inventory, redis),
                                                             timeout=timeout), EventLog(redis))
        self.sync = SyncService(db, self.seats, AuditService(db), NetworkCache(db, redis))


@pytest.fixture
def stack(stores, db, io_loop, simulators):
    redis = connect_redis(stores.redis_url)
    stack = Stack(db, redis)
    yield stack
    # leave the simulators healthy and the stations online for whoever comes next
    async def restore() -> None:
        for kind in ("rest", "xml"):
            await control(simulators, kind, "", {"delay_ms": 0, "fail": False, "garbage": False})
        await stack.sync.sync_all()
        await stack.inventory.close()
        await stack.seats.view.close()
        await redis.aclose()
    io_loop.run_sync(restore)


async def control(simulators, kind: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await AsyncHTTPClient().fetch(f"{simulators.url(kind)}/_control/{action}",
                                         method="POST", body=json.dumps(body))
    return json.loads(resp.body)


async def pick(db: Any, vendor: str, index: int, min_stops: int = 2) -> dict[str, Any]:
    """A future on-sale departure of a station on ``vendor``, distinct per ``index``."""
    stations = [c for c, v in DEMO_VENDORS.items() if v == vendor] if vendor != "native" \
        else await db.stations.distinct("_id", {"system.vendor": "native"})
    day = (local_today() + dt.timedelta(days=2 + index % 7)).isoformat()
    found = []
    async for dep in db.departures.find({"station_id": {"$in": stations}, "service_date": day,
                                         "status": "on_sale",
                                         "_id": {"$regex": "^S44"}}  # the demo's
                                        ).sort("_id", 1):
        if await db.stops.count_documents({"route_id": dep["route_id"]}) >= min_stops:
            found.append(dep)
    assert found, f"no {vendor} departure on {day}"
    return found[index // 7 % len(found)]


def tickets(seats) -> list[TicketInfo]:
    return [TicketInfo(s, "张三", "adult", 4500) for s in seats]


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.gen_test(timeout=60)
async def test_every_ticket_operation(stack, vendor: str) -> None:
    dep = await pick(stack.db, vendor, 0)
    seats = stack.seats
    before = await seats.availability(dep["_id"], fresh=True)
    assert before.seats == dep["seats"] and before.remaining > 4

    hold = await seats.hold(dep["_id"], HoldRequest(new_hold_id(), "miniapp", 2, 0,
                                                    before.segments))
    assert len(hold.seats) == 2
    assert (await seats.availability(dep["_id"])).remaining == before.remaining - 2
    assert (await seats.query(dep["_id"], hold.hold_id)).status == "held"

    sale = await seats.sell(dep["_id"], hold.hold_id, tickets(hold.seats))
    assert sorted(sale.seats) == sorted(hold.seats)
    status = await seats.query(dep["_id"], sale.sale_id)
    assert status.status == "sold" and sorted(status.seats) == sorted(hold.seats)
    if vendor != "native":
        assert len(sale.station_ticket_nos) == 2
        assert await seats.pickup(dep["_id"], sale.sale_id, hold.seats[0]) == \
            sale.station_ticket_nos[list(sale.seats).index(hold.seats[0])]

    assert await seats.refund(dep["_id"], sale.sale_id, (hold.seats[0],)) == (hold.seats[0],)
    assert (await seats.availability(dep["_id"])).remaining == before.remaining - 1
    assert await seats.void(dep["_id"], sale.sale_id, (hold.seats[1],)) == (hold.seats[1],)
    assert (await seats.availability(dep["_id"])).remaining == before.remaining
    assert (await seats.query(dep["_id"], sale.sale_id)).status == "returned"

    other = await seats.hold(dep["_id"], HoldRequest(new_hold_id(), "app", 1, 0,
                                                     before.segments, (hold.seats[0],)))
    with pytest.raises(SeatTaken):
        await seats.hold(dep["_id"], HoldRequest(new_hold_id(), "web", 1, 0, before.segments,
                                                 other.seats))
    assert await seats.release(dep["_id"], other.hold_id) is True
    assert (await seats.availability(dep["_id"])).remaining == before.remaining


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.gen_test(timeout=60)
async def test_segment_sale_frees_the_rest_of_the_route(stack, vendor: str) -> None:
    dep = await pick(stack.db, vendor, 1, min_stops=3)
    seats = stack.seats
    first = await seats.availability(dep["_id"], fresh=True)
    hold = await seats.hold(dep["_id"], HoldRequest(new_hold_id(), "miniapp", 1, 0, 1))
    await seats.sell(dep["_id"], hold.hold_id, tickets(hold.seats))
    after = await seats.availability(dep["_id"], fresh=True)
    assert after.remaining_between(0, 1) == first.remaining_between(0, 1) - 1
    assert after.remaining_between(1, first.segments) == \
        first.remaining_between(1, first.segments)
    later = await seats.hold(dep["_id"], HoldRequest(new_hold_id(), "app", 1, 1,
                                                     first.segments, hold.seats))
    assert later.seats == hold.seats  # the same seat, on the next segment


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.gen_test(timeout=60)
async def test_expired_hold_cannot_be_sold(stack, vendor: str) -> None:
    dep = await pick(stack.db, vendor, 2)
    segments = (await stack.seats.availability(dep["_id"], fresh=True)).segments
    hold = await stack.seats.hold(dep["_id"], HoldRequest(new_hold_id(), "miniapp", 1, 0,
                                                          segments, ttl_seconds=1))
    await asyncio.sleep(1.3)
    with pytest.raises(HoldExpired):
        await stack.seats.sell(dep["_id"], hold.hold_id, tickets(hold.seats))


@pytest.mark.gen_test(timeout=60)
async def test_seats_vanish_at_the_station_window(stack, simulators) -> None:
    dep = await pick(stack.db, "rest", 3)
    before = await stack.seats.availability(dep["_id"], fresh=True)
    free = [i + 1 for i, m in enumerate(before.occupancy) if m == 0]
    sold = await control(simulators, "rest", "window-sale",
                         {"tripId": dep["vendor_ref"], "seatNo": free[0]})
    assert sold["tripId"] == dep["vendor_ref"]
    with pytest.raises(SeatTaken):  # we still believed the seat free: the station says no
        await stack.seats.hold(dep["_id"], HoldRequest(new_hold_id(), "miniapp", 1, 0,
                                                       before.segments, (free[0],)))
    assert (await stack.seats.availability(dep["_id"], fresh=True)).remaining == \
        before.remaining - 1


@pytest.mark.reliability("R9")
@pytest.mark.parametrize("kind", ["rest", "xml"])
@pytest.mark.gen_test(timeout=60)
async def test_station_down_is_not_on_sale_online_never_wrong_seats(stack, simulators,
                                                                    kind: str) -> None:
    dep = await pick(stack.db, kind, 4)
    await stack.seats.availability(dep["_id"], fresh=True)
    await control(simulators, kind, "", {"fail": True})
    down = await stack.seats.availability(dep["_id"], fresh=True)
    assert down.status == "offline" and down.remaining == 0
    with pytest.raises(DomainError) as info:
        await stack.seats.hold(dep["_id"], HoldRequest(new_hold_id(), "miniapp", 1, 0, 1))
    assert info.value.code == "NOT_ON_SALE_ONLINE"
    assert (await stack.db.departures.find_one({"_id": dep["_id"]}))["online"] is False
    call = await stack.db.station_calls.find_one({"station_id": dep["station_id"]},
                                                 sort=[("at", -1)])
    assert call["outcome"] == "unreachable"
    count = await stack.db.departures.count_documents({"station_id": dep["station_id"]})
    run = await stack.sync.sync_station(dep["station_id"])
    assert run["outcome"] == "failed" and run["error"] == "STATION_UNAVAILABLE"
    assert await stack.db.departures.count_documents({"station_id": dep["station_id"]}) == count

    await control(simulators, kind, "", {"fail": False})
    assert (await stack.sync.sync_station(dep["station_id"]))["outcome"] == "ok"
    assert (await stack.db.departures.find_one({"_id": dep["_id"]}))["online"] is True
    assert (await stack.seats.availability(dep["_id"], fresh=True)).status == "on_sale"
    record("R9", load=f"a {kind.upper()} station system's departure on sale online",
           faults="the station stops answering mid-sale, then comes back",
           checked="what is offered online; the hold; the departures kept; the sync after",
           figure="shown as not on sale online, 0 seats offered, the hold refused; departures "
                  "kept as last synced; on sale again after the next sync")


@pytest.mark.reliability("R9")
@pytest.mark.parametrize("kind", ["rest", "xml"])
@pytest.mark.gen_test(timeout=60)
async def test_garbage_from_a_station_is_refused_and_keeps_last_good_data(
        stack, simulators, kind: str) -> None:
    dep = await pick(stack.db, kind, 5)
    snapshot = await stack.db.departures.find({"station_id": dep["station_id"]}).to_list()
    await control(simulators, kind, "", {"garbage": True})
    with pytest.raises(BadStationResponse):
        await stack.seats.hold(dep["_id"], HoldRequest(new_hold_id(), "miniapp", 1, 0, 1))
    run = await stack.sync.sync_station(dep["station_id"], full=True)
    assert run["outcome"] == "failed" and run["error"] == "STATION_BAD_RESPONSE"
    after = await stack.db.departures.find({"station_id": dep["station_id"]}).to_list()
    strip = ("online", "synced_at")
    assert [{k: v for k, v in d.items() if k not in strip} for d in after] == \
        [{k: v for k, v in d.items() if k not in strip} for d in snapshot]
    assert all(d["online"] is False for d in after)
    record("R9", load=f"a {kind.upper()} station system answering garbage",
           faults="malformed answers to a hold and to a full sync",
           checked="the hold; the station's departures afterwards",
           figure="the hold refused (no seat taken); every departure kept as last good, "
                  "taken off online sale")


@pytest.mark.gen_test(timeout=60)
async def test_slow_station_times_out(stack, simulators) -> None:
    dep = await pick(stack.db, "rest", 6)
    await control(simulators, "rest", "", {"delay_ms": 2500})  # the stack waits 1 s
    with pytest.raises(StationTimeout):
        await stack.seats.hold(dep["_id"], HoldRequest(new_hold_id(), "miniapp", 1, 0, 1))
    call = await stack.db.station_calls.find_one({"station_id": dep["station_id"],
                                                  "operation": "hold"}, sort=[("at", -1)])
    assert call["outcome"] == "timeout" and call["latency_ms"] >= 900


@pytest.mark.gen_test(timeout=60)
async def test_wrong_signature_is_refused_both_ways(stack, simulators) -> None:
    wrong = XmlExchange(simulators.url("xml"), "not-the-shared-secret")
    with pytest.raises(BadStationResponse):  # its answer cannot be verified: nothing trusted
        await wrong.health()
    # the station itself refuses a request whose signature does not match (code 1001)
    head = {"op": "PING", "appId": "x", "nonce": "n0",
            "timestamp": xmlcodec.local_time(dt.datetime.now(dt.UTC)), "sign": "0" * 32}
    resp = await AsyncHTTPClient().fetch(simulators.url("xml") + "/service", method="POST",
                                         body=xmlcodec.encode("request", head, {}))
    assert xmlcodec.decode(resp.body)[1]["code"] == "1001"
    # an answer whose fields were changed after signing, or that is old, is refused
    head = {"code": "0000", "msg": "ok", "nonce": "n1",
            "timestamp": xmlcodec.local_time(dt.datetime.now(dt.UTC))}
    body = {"zwh": "3,4"}
    head["sign"] = xmlcodec.sign(head, body, "s3cret")
    assert xmlcodec.verify(head, body, "s3cret")
    assert not xmlcodec.verify(head, {"zwh": "3,5"}, "s3cret")
    assert not xmlcodec.verify(head, body, "other")
    old = dict(head, timestamp=xmlcodec.local_time(dt.datetime.now(dt.UTC)
                                                   - dt.timedelta(minutes=6)))
    old["sign"] = xmlcodec.sign(old, body, "s3cret")
    assert not xmlcodec.verify(old, body, "s3cret")
    wire = xmlcodec.encode("response", head, {"名称": "汕头汽车客运中心站",
                                              "items": [{"a": "1"}]})
    assert wire.startswith(b"<?xml version='1.0' encoding='GBK'?>")
    assert "汕头".encode("gbk") in wire
    assert xmlcodec.decode(wire)[2] == {"名称": "汕头汽车客运中心站", "items": [{"a": "1"}]}
    with pytest.raises(xmlcodec.XmlFormatError):
        xmlcodec.decode(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]>'
                        b"<response><head/><body/></response>")


@pytest.mark.gen_test(timeout=120)
async def test_sync_detects_changes_and_is_idempotent(stack, simulators) -> None:
    station = "440304001"
    first = await stack.sync.sync_station(station, full=True)
    assert first["outcome"] == "ok"
    for kind in ("carriers", "vehicles", "drivers", "routes", "stops", "fares", "schedules"):
        assert sum(first["counts"][kind].values()) > 0, kind
    again = await stack.sync.sync_station(station, full=True)
    assert again["counts"]["departures"]["new"] == 0
    assert again["counts"]["departures"]["changed"] == 0
    assert again["counts"]["fares"]["changed"] == 0

    dep = await pick(stack.db, "rest", 7)
    route = dep["route_id"]
    fare = await stack.db.fares.find_one({"route_id": route, "from_seq": 0})
    await control(simulators, "rest", "price", {"routeCode": route,
                                                "adultFen": fare["prices"]["adult"] + 1000})
    await control(simulators, "rest", "trip-status", {"tripId": dep["vendor_ref"],
                                                      "status": "cancelled"})
    incremental = await stack.sync.sync_station(station)
    assert incremental["kind"] == "incremental"
    assert {"kind": "departure_status", "id": dep["_id"], "before": "on_sale",
            "after": "cancelled"} in incremental["changes"]
    assert (await stack.db.departures.find_one({"_id": dep["_id"]}))["status"] == "cancelled"
    full = await stack.sync.sync_station(station, full=True)
    price_changes = [c for c in full["changes"] if c["kind"] == "fare"]
    assert any(c["adult_after"] == fare["prices"]["adult"] + 1000 for c in price_changes)
    assert (await stack.db.fares.find_one({"_id": fare["_id"]}))["prices"]["adult"] == \
        fare["prices"]["adult"] + 1000
    runs = await stack.db.sync_runs.count_documents({"station_id": station})
    assert runs >= 4
