"""Real-time push (C5): real WebSocket clients against two real Keyun processes sharing one
MongoDB and one Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

from devstack.embedded import free_port
from server.app import connect_redis
from server.services.events import EventLog, Topic
from tests.booking_support import member, native_departure, person
from tests.inventory_support import make_departure
from tests.reliability import record
from tests.support import ApiClient, KeyunProcess, another_process
from tests.ws_support import StalledClient, Ws


@pytest.fixture(scope="module")
def other(keyun: KeyunProcess, workdir: Path) -> Iterator[KeyunProcess]:
    """A second Keyun process on the same stores (what a load balancer spreads over); its
    WebSockets watching nothing are closed after 2 s."""
    with another_process(keyun, workdir, "test_push-2", KEYUN_WS_IDLE_SECONDS="2") as server:
        yield server


async def new_order(api: ApiClient, token: str, departure_id: str) -> dict[str, Any]:
    resp = await api.post("/api/v1/orders", {"departure_id": departure_id,
                                             "contact_phone": "13812345678",
                                             "passengers": [person()]}, token=token)
    assert resp.status == 201, resp.text
    return resp.body  # type: ignore[no-any-return]


@pytest.mark.gen_test(timeout=60)
async def test_a_hold_on_one_process_reaches_a_watcher_on_the_other_within_a_second(
        api, keyun, other, db) -> None:
    dep = await native_departure(db, 3, 0)
    watcher = await Ws.connect(other.base_url)  # anyone may watch seats: no token
    try:
        subscribed, before = await watcher.subscribe(f"departure:{dep['_id']}")
        assert subscribed["type"] == "subscribed"
        snapshot = before[0]
        assert snapshot["type"] == "snapshot" and snapshot["seq"] == subscribed["seq"]
        assert snapshot["data"]["seats"] == dep["seats"]
        free = snapshot["data"]["remaining"]

        token = await member(api)
        order = await new_order(api, token, dep["_id"])  # on the first process
        placed = time.monotonic()
        event, _ = await watcher.until(lambda f: f["type"] == "event"
                                       and f["data"]["change"] == "held", within=3)
        assert time.monotonic() - placed < 1.0
        assert event["topic"] == f"departure:{dep['_id']}"
        assert event["seq"] > snapshot["seq"]
        assert event["data"]["seats"] == [t["seat"] for t in order["tickets"]]
        assert event["data"]["remaining"] == free - 1
    finally:
        watcher.close()


@pytest.mark.gen_test(timeout=60)
async def test_order_events_go_to_the_owner_only(api, keyun, other, db) -> None:
    dep = await native_departure(db, 3, 1)
    owner, stranger = await member(api), await member(api)
    order = await new_order(api, owner, dep["_id"])
    topic = f"order:{order['order_no']}"
    mine = await Ws.connect(other.base_url, owner)
    theirs = await Ws.connect(other.base_url, stranger)
    anonymous = await Ws.connect(other.base_url)
    try:
        subscribed, before = await mine.subscribe(topic)
        assert subscribed["type"] == "subscribed"
        assert before[0]["type"] == "snapshot"
        assert before[0]["data"]["status"] == "pending_payment"
        refused, _ = await theirs.subscribe(topic)
        assert refused["type"] == "error" and refused["code"] == "ORDER_NOT_FOUND"
        refused, _ = await anonymous.subscribe(topic)
        assert refused["type"] == "error" and refused["code"] == "AUTH_REQUIRED"

        resp = await api.post(f"/api/v1/orders/{order['order_no']}/cancel", {}, token=owner)
        assert resp.status == 200, resp.text
        event, _ = await mine.until(lambda f: f["type"] == "event", within=3)
        assert event["event"] == "status" and event["topic"] == topic
        assert event["data"]["from"] == "pending_payment"
        assert event["data"]["to"] == "cancelled"
        assert event["seq"] == subscribed["seq"] + 1
        assert await theirs.nothing_for(0.5) == []
        assert await anonymous.nothing_for(0.1) == []
    finally:
        for ws in (mine, theirs, anonymous):
            ws.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_client_resumes_with_since_and_gets_exactly_what_it_missed(
        api, keyun, other, db, stores) -> None:
    dep = await native_departure(db, 3, 2)
    topic = f"departure:{dep['_id']}"
    first = await Ws.connect(keyun.base_url)
    subscribed, _ = await first.subscribe(topic)
    last_seen = subscribed["seq"]
    first.close()

    token = await member(api)
    orders = [await new_order(api, token, dep["_id"]) for _ in range(2)]
    again = await Ws.connect(other.base_url)  # reconnects through the other process
    try:
        subscribed, missed = await again.subscribe(topic, since=last_seen)
        assert [f["type"] for f in missed] == ["event", "event"]
        assert [f["seq"] for f in missed] == [last_seen + 1, last_seen + 2]
        assert [f["data"]["seats"] for f in missed] == [[o["tickets"][0]["seat"]]
                                                       for o in orders]
        assert subscribed["seq"] == last_seen + 2

        # a since beyond what the topic has (Redis lost it) → a snapshot, not silence
        subscribed, frames = await again.subscribe(topic, since=last_seen + 1000)
        assert frames[0]["type"] == "snapshot" and frames[0]["seq"] == last_seen + 2

        # a since older than what is kept → a snapshot too
        redis = connect_redis(stores.redis_url)
        try:
            await redis.xtrim(f"ev:{{dep:{dep['_id']}}}", maxlen=1, approximate=False)
        finally:
            await redis.aclose()
        subscribed, frames = await again.subscribe(topic, since=last_seen)
        assert [f["type"] for f in frames] == ["snapshot"]
        assert frames[0]["data"]["remaining"] == dep["seats"] - 2
    finally:
        again.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_stalled_client_does_not_delay_a_fast_one(api, keyun, other, db,
                                                          stores) -> None:
    dep = await native_departure(db, 3, 3)
    topic = f"departure:{dep['_id']}"
    stalled = StalledClient(other.port)
    stalled.send_text(json.dumps({"op": "subscribe", "topic": topic}))
    fast = await Ws.connect(other.base_url)
    redis = connect_redis(stores.redis_url)
    events = EventLog(redis)
    try:
        subscribed, _ = await fast.subscribe(topic)
        await asyncio.sleep(0.3)  # the stalled client's subscription is in place
        count, padding = 2000, "x" * 4000  # ~8 MB: far more than socket buffers hold

        async def produce() -> float:
            for i in range(count):
                await events.emit(Topic("departure", dep["_id"]), "seats",
                                  {"change": "test", "i": i, "padding": padding})
                if i % 50 == 49:
                    await asyncio.sleep(0.01)  # a busy departure, not an infinite firehose
            return time.monotonic()

        producer = asyncio.ensure_future(produce())
        got = []
        while len(got) < count:
            frame = await fast.recv(within=10)
            assert frame["type"] == "event", frame  # never told to resync
            got.append(frame)
        done = time.monotonic()
        emitted = await producer
        assert [f["data"]["i"] for f in got] == list(range(count))
        assert [f["seq"] for f in got] == list(range(subscribed["seq"] + 1,
                                                     subscribed["seq"] + 1 + count))
        # the fast client kept up with the producer: done about when emitting was
        assert done - emitted < 2.0, done - emitted

        # the stalled one was told it fell behind (or closed): never an unbounded queue
        seen = stalled.read_all(3.0)
        assert b'"type":"resync"' in seen or b"\x88" in seen
        metrics = await ApiClient(other.base_url).get("/metrics")
        assert "keyun_ws_resyncs_total 1.0" in metrics.text or \
            "keyun_ws_resyncs_total 2.0" in metrics.text
    finally:
        stalled.close()
        fast.close()
        await redis.aclose()


@pytest.mark.gen_test(timeout=60)
async def test_bad_frames_get_error_frames_and_the_connection_lives_on(keyun) -> None:
    ws = await Ws.connect(keyun.base_url)
    try:
        cases = [("{not json", "WS_BAD_FRAME"), ('["subscribe"]', "WS_BAD_FRAME"),
                 (json.dumps({"op": "dance"}), "WS_UNKNOWN_OP"),
                 (json.dumps({"op": "subscribe", "topic": "wallet:1"}), "WS_TOPIC_INVALID"),
                 (json.dumps({"op": "subscribe", "topic": "departure:NOPE"}),
                  "DEPARTURE_NOT_FOUND"),
                 (json.dumps({"op": "subscribe", "topic": "departure:X", "since": "1"}),
                  "WS_BAD_FRAME"),
                 (json.dumps({"op": "ping", "pad": "x" * 5000}), "WS_FRAME_TOO_LARGE"),
                 (b"\xff\xfe binary junk", "WS_BAD_FRAME")]
        for sent, code in cases:
            if isinstance(sent, bytes):  # a binary frame (junk in a text frame is a
                await ws.conn.write_message(sent, binary=True)  # protocol error: 1007)
            else:
                await ws.send(sent)
            frame = await ws.recv()
            assert frame["type"] == "error" and frame["code"] == code, (sent, frame)
            assert frame["message"]
        await ws.send({"op": "ping"})
        assert (await ws.recv())["type"] == "pong"
    finally:
        ws.close()


@pytest.mark.gen_test(timeout=60)
async def test_authentication_failures_are_refused_not_redirected(api, keyun) -> None:
    url = keyun.base_url.replace("http://", "ws://") + "/ws?access_token=forged"
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(url, connect_timeout=5)
    assert refused.value.code == 403

    ws = await Ws.connect(keyun.base_url)
    await ws.send({"op": "auth", "token": "forged.token.value"})
    assert await ws.closed() == 4401

    ws = await Ws.connect(keyun.base_url)
    await ws.send({"op": "auth", "token": await member(api)})
    assert (await ws.recv())["type"] == "authenticated"
    ws.close()


@pytest.mark.gen_test(timeout=60)
async def test_flooding_is_rate_limited_and_topics_are_capped(keyun, db) -> None:
    ws = await Ws.connect(keyun.base_url)
    try:
        for _ in range(80):
            await ws.send({"op": "ping"})
        frames = [await ws.recv() for _ in range(41)]
        assert any(f["type"] == "error" and f["code"] == "WS_RATE_LIMITED" for f in frames)
        assert sum(f["type"] == "pong" for f in frames) <= 41
    finally:
        ws.close()

    day_deps = await db.departures.find({"status": "on_sale", "inventory": "native"},
                                        {"_id": 1}).limit(51).to_list()
    ws = await Ws.connect(keyun.base_url)
    try:
        for d in day_deps[:50]:
            subscribed, _ = await ws.subscribe(f"departure:{d['_id']}")
            assert subscribed["type"] == "subscribed", subscribed
            await asyncio.sleep(0.05)  # stay under the frame rate
        refused, _ = await ws.subscribe(f"departure:{day_deps[50]['_id']}")
        assert refused["type"] == "error" and refused["code"] == "WS_TOO_MANY_TOPICS"
    finally:
        ws.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_connection_watching_nothing_is_closed_when_idle(other) -> None:
    ws = await Ws.connect(other.base_url)
    started = time.monotonic()
    assert await ws.closed(within=10) == 4008
    assert 1.5 < time.monotonic() - started < 8


@pytest.mark.reliability("R8")
@pytest.mark.gen_test(timeout=120)
async def test_watchers_are_told_to_resync_when_redis_comes_back(api, keyun, db, own_redis,
                                                                 workdir) -> None:
    from devstack.embedded import redis_url

    env = {**keyun.env, "KEYUN_PORT": str(free_port()), "KEYUN_REDIS_URL": redis_url(own_redis),
           "KEYUN_DATA_DIR": str(workdir / "test_push-3")}
    server = KeyunProcess(env, workdir / "logs" / "test_push-3.log", int(env["KEYUN_PORT"]))
    server.start()
    watcher = None
    try:
        dep = {"_id": await make_departure(db, seats=6, stops=2)}  # this test's alone
        topic = f"departure:{dep['_id']}"
        watcher = await Ws.connect(server.base_url)
        await watcher.subscribe(topic)
        own_redis.stop()  # Redis restarts and forgets everything (no persistence here)
        own_redis.start()
        told, _ = await watcher.until(lambda f: f["type"] == "resync", within=20)
        assert told["reason"] == "store_reconnected" and told["topics"] == [topic]
        # Redis may have lost state without an event: the client takes a fresh snapshot
        subscribed, frames = await watcher.subscribe(topic)
        assert subscribed["type"] == "subscribed", subscribed
        assert frames[0]["type"] == "snapshot"
        # and events flow again (the seats rebuilt from MongoDB)
        token = await member(ApiClient(server.base_url))
        await new_order(ApiClient(server.base_url), token, dep["_id"])
        event, _ = await watcher.until(lambda f: f["type"] == "event", within=5)
        assert event["data"]["change"] == "held", event
        assert event["seq"] == frames[0]["seq"] + 1
        record("R8", load="a WebSocket client watching a departure",
               faults="Redis restarted empty under the Keyun process",
               checked="the frames the client receives; events after",
               figure="told to resync (store_reconnected) within seconds; a fresh snapshot; "
                      "the next sale's event in sequence")
    finally:
        if watcher is not None:
            watcher.close()
        server.stop()
