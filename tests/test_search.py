"""Search and station look-up over real HTTP."""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import time
from typing import Any

import pytest
from tornado.httpclient import HTTPRequest

from server.app import connect_redis
from server.clock import local_today
from server.exchange.base import HoldRequest
from server.storage.inventory import NativeInventory, new_hold_id
from tests.inventory_support import make_departure
from tests.support import ApiClient

EVENT_DELAY = 1.0  # seconds: a seat event reaches every process well within this


def day(offset: int = 1) -> str:
    return (local_today() + dt.timedelta(days=offset)).isoformat()


@pytest.mark.gen_test
async def test_station_lookup_by_chinese_pinyin_and_initials(api: ApiClient) -> None:
    for q in ("广州", "guangzhou", "gz", "GZ"):
        resp = await api.get(f"/api/v1/stations?q={q}")
        assert resp.status == 200
        cities = {s["city"] for s in resp.body["stations"]}
        assert "广州" in cities, q
    names = [s["name"] for s in (await api.get("/api/v1/stations?q=tianhe")).body["stations"]]
    assert names == ["广州天河客运站"]
    only = await api.get("/api/v1/stations?city=深圳")
    assert {s["city"] for s in only.body["stations"]} == {"深圳"}


@pytest.mark.gen_test
async def test_city_to_city_search_sorted_with_fares_and_seats(api: ApiClient) -> None:
    resp = await api.get(f"/api/v1/departures?from=广州&to=深圳&date={day(2)}")
    assert resp.status == 200, resp.text
    found = resp.body["departures"]
    assert len(found) >= 3
    times = [d["departs_at"] for d in found]
    assert times == sorted(times)
    for d in found:
        assert d["from"]["city"] == "广州" and d["to"]["city"] == "深圳"
        assert d["from"]["seq"] < d["to"]["seq"]
        assert d["fares"]["adult"] > d["fares"]["child"] > 0
        assert isinstance(d["fares"]["adult"], int) and d["remaining"] >= 0
        assert d["on_sale_online"] is True and d["carrier"]["name"]
        assert d["departs_at"].endswith("+08:00")
    pinyin = await api.get(f"/api/v1/departures?from=gz&to=shenzhen&date={day(2)}")
    assert [d["id"] for d in pinyin.body["departures"]] == [d["id"] for d in found]


@pytest.mark.gen_test
async def test_intermediate_boarding_and_filters(api: ApiClient) -> None:
    found = (await api.get(f"/api/v1/departures?from=广州&to=深圳&date={day(3)}")).body[
        "departures"]
    midway = [d for d in found if d["from"]["seq"] > 0]
    assert midway, "a route passing through 广州 boards there too"
    assert all(d["boards_at"] > d["departs_at"] for d in midway)
    window = await api.get(f"/api/v1/departures?from=广州&to=深圳&date={day(3)}"
                           "&after=12:00&before=18:00")
    assert all("12:00" <= d["boards_at"][11:16] <= "18:00" for d in window.body["departures"])
    assert len(window.body["departures"]) < len(found)
    station = found[0]["station"]["id"]
    one = await api.get(f"/api/v1/departures?from=广州&to=深圳&date={day(3)}"
                        f"&station={station}")
    assert {d["station"]["id"] for d in one.body["departures"]} == {station}


@pytest.mark.gen_test
async def test_proxied_departures_come_with_station_seats(api: ApiClient) -> None:
    resp = await api.get(f"/api/v1/departures?from=440304001&to=珠海&date={day(4)}")
    found = resp.body["departures"]
    assert found and all(d["station"]["id"] == "440304001" for d in found)
    assert all(d["remaining"] > 0 for d in found)


@pytest.mark.gen_test
async def test_bad_search_queries(api: ApiClient) -> None:
    for query in (f"from=广州&to=深圳&date={day(-1)}", f"from=广州&to=深圳&date={day(30)}"):
        resp = await api.get(f"/api/v1/departures?{query}")  # a day, but not one on sale
        assert resp.status == 422 and resp.error_code == "DATE_NOT_ON_SALE", query
    for query, field in [("from=广州&to=深圳&date=tomorrow", "date"),
                         (f"from=广州&date={day(1)}", "to"),
                         (f"from=广州&to=深圳&date={day(1)}&after=25:00", "after")]:
        resp = await api.get(f"/api/v1/departures?{query}")
        assert resp.status == 400 and resp.error_code == "INVALID_QUERY", query
        assert resp.body["error"]["field"] == field, query
    nowhere = await api.get(f"/api/v1/departures?from=广州&to=拉萨&date={day(1)}")
    assert nowhere.status == 200 and nowhere.body["departures"] == []


async def _searcher(api: ApiClient, path: str, departure_id: str, stop: asyncio.Event,
                    seen: list[tuple[float, int]]) -> None:
    """Search again and again; note (when the request was sent, the departure's seats)."""
    while not stop.is_set():
        sent = time.monotonic()
        resp = await api.get(path)
        assert resp.status == 200, resp.text
        mine = [d for d in resp.body["departures"] if d["id"] == departure_id]
        assert len(mine) == 1
        seen.append((sent, mine[0]["remaining"]))


@pytest.mark.gen_test(timeout=120)
async def test_search_shows_every_sale_within_the_event_delay(api: ApiClient, db: Any,
                                                              stores: Any) -> None:
    """Seats sold in another process, one at a time, while eight clients search the
    departure without pause: once a sale has returned, no search sent later than the event
    delay (a second, generously) shows the seat, and a sold-out departure is not offered
    with has_seats. Each process keeps search answers in memory, so this is what keeps
    them honest."""
    departure_id = await make_departure(db, seats=6, stops=3)
    dep = await db.departures.find_one({"_id": departure_id})
    redis = connect_redis(stores.redis_url)
    await redis.incr("network:version")  # the new route: every process reloads the network
    inventory = NativeInventory(db, redis)  # this test process: another writer than Keyun
    path = (f"/api/v1/departures?from=站0&to=站2&date={dep['service_date']}"
            f"&station={dep['station_id']}")
    deadline = time.monotonic() + 15
    while not [d for d in (await api.get(path)).body["departures"] if d["id"] == departure_id]:
        assert time.monotonic() < deadline, "the new departure never showed in search"
        await asyncio.sleep(0.2)
    stop, seen = asyncio.Event(), []
    searchers = [asyncio.ensure_future(_searcher(api, path, departure_id, stop, seen))
                 for _ in range(8)]
    sold: list[tuple[float, int]] = []  # (when the sale returned, seats left after it)
    try:
        await asyncio.sleep(0.3)
        for left in range(5, -1, -1):
            hold = await inventory.hold(departure_id, HoldRequest(
                new_hold_id(), "web", 1, 0, 2, ttl_seconds=300))
            await inventory.sell(departure_id, hold.hold_id)
            sold.append((time.monotonic(), left))
            await asyncio.sleep(0.25)
        await asyncio.sleep(1.2)
    finally:
        stop.set()
        await asyncio.gather(*searchers)
        await inventory.close()
        await redis.aclose()
    assert len(seen) > 50, "the searchers hardly searched"
    for done, left in sold:
        late = [(round(sent - done, 3), shown) for sent, shown in seen
                if sent > done + EVENT_DELAY and shown > left]
        assert not late, f"after the sale leaving {left}: searches sent later still showed {late}"
    assert any(sent > sold[-1][0] + EVENT_DELAY for sent, _ in seen), "none searched late"
    offered = await api.get(path + "&has_seats=true")
    assert departure_id not in [d["id"] for d in offered.body["departures"]]


@pytest.mark.gen_test(timeout=60)
async def test_a_search_asked_again_by_its_tag_is_304_until_a_seat_sells(
        api: ApiClient, db: Any, stores: Any) -> None:
    """The answer's entity tag is made with the kept answer: asked again with it, the same
    search is a 304 without a body; once a seat of a departure in it sells, the answer is
    200 with the new count and a new tag, within the event delay."""
    departure_id = await make_departure(db, seats=6, stops=3)
    dep = await db.departures.find_one({"_id": departure_id})
    redis = connect_redis(stores.redis_url)
    await redis.incr("network:version")
    inventory = NativeInventory(db, redis)
    path = (f"/api/v1/departures?from=站0&to=站2&date={dep['service_date']}"
            f"&station={dep['station_id']}")

    def seats_of(resp: Any) -> int | None:
        return next((d["remaining"] for d in resp.body["departures"]
                     if d["id"] == departure_id), None)

    try:
        deadline = time.monotonic() + 15
        while seats_of(first := await api.get(path)) is None:
            assert time.monotonic() < deadline, "the new departure never showed in search"
            await asyncio.sleep(0.2)
        assert first.status == 200 and first.headers["Etag"].startswith('"')
        again = await api.get(path, headers={"If-None-Match": first.headers["Etag"]})
        assert (again.status, again.raw) == (304, b"")
        assert again.headers["Etag"] == first.headers["Etag"]
        other = await api.get(path, headers={"If-None-Match": '"not-this-one"'})
        assert other.status == 200 and seats_of(other) == seats_of(first)
        # gzip from the kept answer's gzip form: the same JSON, a tag of its own
        zipped = await api.http.fetch(HTTPRequest(
            api.base_url + path, headers={"Accept-Encoding": "gzip"},
            decompress_response=False))
        assert zipped.headers["Content-Encoding"] == "gzip"
        assert "Accept-Encoding" in zipped.headers["Vary"]
        assert json.loads(gzip.decompress(zipped.body)) == first.body
        plain = await api.http.fetch(HTTPRequest(api.base_url + path,
                                                 decompress_response=False))
        assert "Content-Encoding" not in plain.headers and json.loads(plain.body) == first.body
        assert zipped.headers["Etag"] != plain.headers["Etag"]
        zipped_again = await api.http.fetch(HTTPRequest(
            api.base_url + path, decompress_response=False, headers={
                "Accept-Encoding": "gzip", "If-None-Match": zipped.headers["Etag"]}),
            raise_error=False)
        assert zipped_again.code == 304

        hold = await inventory.hold(departure_id, HoldRequest(
            new_hold_id(), "web", 1, 0, 2, ttl_seconds=300))
        await inventory.sell(departure_id, hold.hold_id)
        sold = time.monotonic()
        while (now := await api.get(
                path, headers={"If-None-Match": first.headers["Etag"]})).status == 304:
            assert time.monotonic() < sold + EVENT_DELAY, "the old answer outlived the sale"
            await asyncio.sleep(0.05)
        assert now.status == 200 and seats_of(now) == seats_of(first) - 1
        assert now.headers["Etag"] != first.headers["Etag"]
    finally:
        await inventory.close()
        await redis.aclose()


@pytest.mark.gen_test(timeout=60)
async def test_seat_view_keeps_no_snapshot_read_while_its_departure_changed(
        services: Any, db: Any, stores: Any) -> None:
    """A snapshot read from Redis while a seat event of its departure arrives may be older
    than the event: the view must not keep it (else search would show the seat until the
    next event of that departure, maybe never)."""
    departure_id = await make_departure(db, seats=4, stops=2)
    view = services.seats.view
    inventory = services.seats.registry.native.inventory
    await view.many([departure_id])  # starts the subscription
    deadline = time.monotonic() + 10
    while not view.live:
        assert time.monotonic() < deadline, "the seat view never subscribed"
        await asyncio.sleep(0.05)
    redis = connect_redis(stores.redis_url)
    other = NativeInventory(db, redis)  # another process's writes: heard only as events
    read = inventory.availability_many

    async def read_then_sell_elsewhere(ids: list[str]) -> dict[str, Any]:
        answer = await read(ids)  # 4 seats free ...
        heard = view.events
        hold = await other.hold(departure_id, HoldRequest(new_hold_id(), "web", 1, 0, 1,
                                                          ttl_seconds=300))
        await other.sell(departure_id, hold.hold_id)  # ... and now 3, before the answer is used
        for _ in range(500):  # until both events (held, sold) are heard, 5 s at most
            if view.events >= heard + 2:
                break
            await asyncio.sleep(0.01)
        return answer

    try:
        inventory.availability_many = read_then_sell_elsewhere
        assert (await view.many([departure_id]))[departure_id].remaining == 4  # as read
        inventory.availability_many = read
        assert (await view.many([departure_id]))[departure_id].remaining == 3
    finally:
        inventory.availability_many = read
        await other.close()
        await redis.aclose()


@pytest.mark.gen_test(timeout=60)
async def test_search_shows_the_fare_in_force_and_changes_when_a_new_one_starts(
        api: ApiClient, db: Any, stores: Any) -> None:
    departure_id = await make_departure(db, seats=4, stops=3)
    dep = await db.departures.find_one({"_id": departure_id})
    now = dt.datetime.now(dt.UTC)
    old = await db.fares.find_one({"route_id": dep["route_id"], "from_seq": 0, "to_seq": 2})
    starts = now + dt.timedelta(seconds=6)
    await db.fares.insert_many([
        {**old, "_id": f"{old['_id']}-soon", "effective_from": starts,
         "prices": {**old["prices"], "adult": old["prices"]["adult"] + 500}},
        {**old, "_id": f"{old['_id']}-later", "effective_from": now + dt.timedelta(days=1),
         "prices": {**old["prices"], "adult": old["prices"]["adult"] + 900}}])
    redis = connect_redis(stores.redis_url)
    await redis.incr("network:version")
    await redis.aclose()
    path = (f"/api/v1/departures?from=站0&to=站2&date={dep['service_date']}"
            f"&station={dep['station_id']}")

    async def adult() -> int | None:
        found = [d for d in (await api.get(path)).body["departures"] if d["id"] == departure_id]
        return found[0]["fares"]["adult"] if found else None

    seen = None
    while dt.datetime.now(dt.UTC) < starts - dt.timedelta(seconds=0.5):
        seen = await adult() or seen
        assert seen in (None, old["prices"]["adult"]), "a price shown before it starts"
        await asyncio.sleep(0.2)
    assert seen == old["prices"]["adult"], "the departure never showed in search"
    await asyncio.sleep((starts - dt.datetime.now(dt.UTC)).total_seconds() + 0.5)
    assert await adult() == old["prices"]["adult"] + 500  # the new one, not tomorrow's
