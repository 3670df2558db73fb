"""Native seat inventory against real Redis and MongoDB: holds, sales, segments, expiry,
allotments, rebuild after a Redis restart, and many processes fighting over one departure."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from channels import CHANNELS
from devstack import embedded
from server.app import connect_redis
from server.exchange.base import HoldRequest, segment_mask
from server.exchange.errors import (
    AllotmentExhausted,
    ChannelNotAllowed,
    DepartureStopped,
    HoldExpired,
    InvalidSegment,
    NoSuchSeat,
    QuotaExceeded,
    SeatTaken,
    SoldOut,
)
from server.storage.inventory import NativeInventory, new_hold_id
from tests.inventory_support import make_departure, processes_fight
from tests.reliability import record


def req(count: int = 1, frm: int = 0, to: int = 2, seats=(), channel: str = "miniapp",
        ttl: int = 300) -> HoldRequest:
    return HoldRequest(new_hold_id(), channel, count, frm, to, tuple(seats), ttl,
                       limited=CHANNELS.get(channel).limited)  # as the order service asks


@pytest.fixture
def inventory(stores, db, io_loop):
    redis = connect_redis(stores.redis_url)
    inventory = NativeInventory(db, redis)
    yield inventory
    io_loop.run_sync(inventory.close)
    io_loop.run_sync(redis.aclose)


@pytest.mark.gen_test
async def test_hold_sell_release_and_seat_map(inventory, db) -> None:
    dep = await make_departure(db, seats=8)
    before = await inventory.availability(dep)
    assert (before.seats, before.segments, before.remaining) == (8, 2, 8)

    hold = await inventory.hold(dep, req(2))
    assert hold.seats == (1, 2)  # a pair side by side
    assert hold.expires_at > dt.datetime.now(dt.UTC)
    after = await inventory.availability(dep)
    assert after.remaining == 6 and set(after.held) == {1, 2}
    assert after.version > before.version

    assert await inventory.sell(dep, hold.hold_id) == (1, 2)
    assert await inventory.sell(dep, hold.hold_id) == (1, 2)  # a retried sell changes nothing
    sold = await inventory.availability(dep)
    assert sold.remaining == 6 and sold.held == ()
    assert (await db.seat_holds.find_one({"_id": hold.hold_id}))["status"] == "sold"

    other = await inventory.hold(dep, req(1))
    assert await inventory.release(dep, other.hold_id) is True
    assert await inventory.release(dep, other.hold_id) is False
    assert (await inventory.availability(dep)).remaining == 6
    await inventory.flush()
    assert (await db.seat_holds.find_one({"_id": other.hold_id}))["status"] == "released"


@pytest.mark.gen_test
async def test_chosen_seats_taken_seats_and_bad_requests(inventory, db) -> None:
    dep = await make_departure(db, seats=8)
    first = await inventory.hold(dep, req(2, seats=(5, 6)))
    assert first.seats == (5, 6)
    with pytest.raises(SeatTaken):
        await inventory.hold(dep, req(1, seats=(6,)))
    with pytest.raises(NoSuchSeat):
        await inventory.hold(dep, req(1, seats=(9,)))
    with pytest.raises(InvalidSegment):
        await inventory.hold(dep, req(1, frm=1, to=1))
    with pytest.raises(InvalidSegment):
        await inventory.hold(dep, req(1, frm=0, to=3))
    with pytest.raises(SoldOut):
        await inventory.hold(dep, req(7))
    # a group of three gets three adjacent numbers around the taken pair
    group = await inventory.hold(dep, req(3))
    assert group.seats == (1, 2, 3)
    same = HoldRequest(group.hold_id, "miniapp", 3, 0, 2)
    assert (await inventory.hold(dep, same)).seats == group.seats  # a retried hold


@pytest.mark.gen_test
async def test_segments_free_again_after_the_alighting_stop(inventory, db) -> None:
    dep = await make_departure(db, seats=4, stops=3)  # A(0) → B(1) → C(2)
    a_to_b = await inventory.hold(dep, req(4, frm=0, to=1))
    await inventory.sell(dep, a_to_b.hold_id)
    with pytest.raises(SoldOut):
        await inventory.hold(dep, req(1, frm=0, to=2))
    seats = await inventory.availability(dep)
    assert seats.remaining_between(0, 1) == 0 and seats.remaining_between(1, 2) == 4
    b_to_c = await inventory.hold(dep, req(4, frm=1, to=2))
    assert sorted(b_to_c.seats) == [1, 2, 3, 4]
    assert all(m == segment_mask(0, 2) for m in (await inventory.availability(dep)).occupancy)


@pytest.mark.gen_test
async def test_part_route_trips_fill_used_seats_first(inventory, db) -> None:
    dep = await make_departure(db, seats=4, stops=3)
    ab = await inventory.hold(dep, req(1, frm=0, to=1))
    bc = await inventory.hold(dep, req(1, frm=1, to=2))
    assert bc.seats == ab.seats  # best fit keeps whole-route seats free
    assert (await inventory.availability(dep)).remaining_between(0, 2) == 3


@pytest.mark.gen_test(timeout=30)
async def test_expired_hold_is_released_once_and_cannot_be_sold(inventory, db) -> None:
    dep = await make_departure(db, seats=2)
    hold = await inventory.hold(dep, req(2, ttl=1))
    with pytest.raises(SoldOut):
        await inventory.hold(dep, req(1))
    await asyncio.sleep(1.2)
    # nobody swept yet: the next buyer's hold releases the expired one itself
    again = await inventory.hold(dep, req(2))
    assert again.seats == (1, 2)
    assert (await db.seat_holds.find_one({"_id": hold.hold_id}))["status"] == "released"
    with pytest.raises(HoldExpired):
        await inventory.sell(dep, hold.hold_id)
    assert (await inventory.availability(dep)).remaining == 0


@pytest.mark.gen_test(timeout=60)
async def test_sweeper_releases_due_holds(inventory, db) -> None:
    dep = await make_departure(db, seats=6)
    holds = [await inventory.hold(dep, req(2, ttl=1)) for _ in range(3)]
    await asyncio.sleep(1.2)
    assert await inventory.sweep() >= 3
    assert (await inventory.availability(dep)).remaining == 6
    statuses = {(await db.seat_holds.find_one({"_id": h.hold_id}))["status"] for h in holds}
    assert statuses == {"released"}
    await inventory.sweep()  # a second sweep releases nothing twice
    assert (await inventory.availability(dep)).remaining == 6
    assert await db.seat_holds.count_documents({"departure_id": dep,
                                                "status": "released"}) == 3


@pytest.mark.gen_test(timeout=60)
async def test_holds_expiring_while_sells_are_in_flight(inventory, db) -> None:
    """Each hold ends sold or released, never both, and the seat map agrees with the records."""
    dep = await make_departure(db, seats=30, stops=2)
    holds = [await inventory.hold(dep, req(1, frm=0, to=1, ttl=1)) for _ in range(30)]
    created = dt.datetime.now(dt.UTC)

    async def sell_around_expiry(i: int, hold) -> str:
        delay = (hold.expires_at - created).total_seconds() - 0.05 + (i % 10) * 0.01
        await asyncio.sleep(max(0.0, delay))
        try:
            await inventory.sell(dep, hold.hold_id)
            return "sold"
        except HoldExpired:
            return "expired"

    outcomes = await asyncio.gather(*[sell_around_expiry(i, h) for i, h in enumerate(holds)],
                                    inventory.sweep())
    await asyncio.sleep(0.3)
    await inventory.sweep()
    records = {h.hold_id: (await db.seat_holds.find_one({"_id": h.hold_id}))["status"]
               for h in holds}
    for hold, outcome in zip(holds, outcomes[:-1], strict=True):
        assert records[hold.hold_id] == ("sold" if outcome == "sold" else "released")
    seats = await inventory.availability(dep)
    sold_seats = {h.seats[0] for h in holds if records[h.hold_id] == "sold"}
    taken = {i + 1 for i, m in enumerate(seats.occupancy) if m}
    assert taken == sold_seats


@pytest.mark.gen_test
async def test_allotments_caps_and_closed_channels(inventory, db) -> None:
    dep = await make_departure(db, seats=10)
    departure = await db.departures.find_one({"_id": dep})
    await db.ticket_sources.insert_one({
        "_id": f"departure:{dep}", "scope": "departure", "allotments": {"agent": 3, "kiosk": 2},
        "caps": {"web": 1}, "closed_channels": ["partner"], "release_before_minutes": 60,
        "updated_at": dt.datetime.now(dt.UTC)})
    assert departure["departs_at"] - dt.datetime.now(dt.UTC) > dt.timedelta(hours=1)

    with pytest.raises(AllotmentExhausted):
        await inventory.hold(dep, req(6))  # 10 seats, 5 reserved for agent and kiosk
    await inventory.hold(dep, req(5))
    with pytest.raises(AllotmentExhausted):
        await inventory.hold(dep, req(1, channel="app"))
    with pytest.raises(ChannelNotAllowed):
        await inventory.hold(dep, req(1, channel="partner"))
    assert len((await inventory.hold(dep, req(3, channel="agent"))).seats) == 3
    with pytest.raises(AllotmentExhausted):
        await inventory.hold(dep, req(1, channel="agent"))  # its allotment used, kiosk's left
    window = await inventory.hold(dep, req(2, channel="window"))  # the station's own window
    assert len(window.seats) == 2
    with pytest.raises(SoldOut):
        await inventory.hold(dep, req(1, channel="kiosk"))


@pytest.mark.gen_test
async def test_allotments_fall_back_to_the_pool_before_departure(inventory, db) -> None:
    dep = await make_departure(db, seats=4, departs_in=dt.timedelta(minutes=30))
    await db.ticket_sources.insert_one({
        "_id": f"departure:{dep}", "scope": "departure", "allotments": {"agent": 4},
        "release_before_minutes": 60, "updated_at": dt.datetime.now(dt.UTC)})
    assert len((await inventory.hold(dep, req(4))).seats) == 4  # within the last hour


@pytest.mark.gen_test
async def test_quota_cap_and_reconfigure_and_stop(inventory, db) -> None:
    dep = await make_departure(db, seats=6)
    await inventory.hold(dep, req(1, channel="web"))
    await db.ticket_sources.insert_one({
        "_id": f"departure:{dep}", "scope": "departure", "allotments": {}, "caps": {"web": 2},
        "updated_at": dt.datetime.now(dt.UTC)})
    await inventory.configure(dep)
    await inventory.hold(dep, req(1, channel="web"))
    with pytest.raises(QuotaExceeded):
        await inventory.hold(dep, req(1, channel="web"))
    await db.departures.update_one({"_id": dep}, {"$set": {"status": "cancelled"}})
    await inventory.configure(dep)
    with pytest.raises(DepartureStopped):
        await inventory.hold(dep, req(1))


@pytest.mark.gen_test
async def test_returned_seats_sell_again(inventory, db) -> None:
    dep = await make_departure(db, seats=2)
    hold = await inventory.hold(dep, req(2))
    await inventory.sell(dep, hold.hold_id)
    assert await inventory.return_seats(dep, hold.hold_id, (2,), "refund") == (2,)
    assert await inventory.return_seats(dep, hold.hold_id, (2,), "refund") == ()
    again = await inventory.hold(dep, req(1))
    assert again.seats == (2,)
    status, seats = await inventory.status_of(hold.hold_id)
    assert (status, seats) == ("sold", (1,))


@pytest.mark.reliability("R8")
@pytest.mark.gen_test(timeout=60)
async def test_redis_restart_rebuilds_from_mongodb_without_double_selling(own_redis, db) -> None:
    redis = connect_redis(embedded.redis_url(own_redis))
    inventory = NativeInventory(db, redis)
    dep = await make_departure(db, seats=6, stops=3)
    sold = await inventory.hold(dep, req(2, frm=0, to=2))
    await inventory.sell(dep, sold.hold_id)
    half = await inventory.hold(dep, req(1, frm=0, to=1))
    await inventory.sell(dep, half.hold_id)
    live = await inventory.hold(dep, req(1, frm=0, to=2, ttl=600))
    await inventory.release(dep, (await inventory.hold(dep, req(1))).hold_id)
    await inventory.close()
    await redis.aclose()

    # Redis dies and comes back empty on the same port
    own_redis.stop()
    own_redis.start()
    redis = connect_redis(embedded.redis_url(own_redis))
    inventory = NativeInventory(db, redis)
    try:
        seats = await inventory.availability(dep)  # loads from MongoDB
        taken = {i + 1 for i, m in enumerate(seats.occupancy) if m}
        assert taken == set(sold.seats) | set(half.seats) | set(live.seats)
        assert seats.remaining_between(1, 2) == 6 - 3  # the half trip left B→C free
        assert await inventory.sell(dep, live.hold_id) == live.seats  # the hold survived
        rest = await inventory.hold(dep, req(seats.remaining_between(0, 2), frm=0, to=2))
        assert not set(rest.seats) & taken
        with pytest.raises(SoldOut):
            await inventory.hold(dep, req(1, frm=0, to=2))
        record("R8", load="a 6-seat departure with sales, a part-route sale, a live hold "
                          "and a released one",
               faults="Redis stopped and started empty on the same port",
               checked="the seat map rebuilt from MongoDB; selling the hold; selling the rest",
               figure=f"{len(taken)} seats taken before = after; the live hold sold; the rest "
                      "sold without overlap, then sold out")
    finally:
        await inventory.close()
        await redis.aclose()


@pytest.mark.gen_test(timeout=300)
async def test_thousands_of_concurrent_holds_from_several_processes(stores, seeded, db) -> None:
    """4 processes × 500 attempts on a 40-seat, 3-segment departure: no seat segment twice."""
    dep = await make_departure(db, seats=40, stops=4)
    await processes_fight(db, stores.mongo_uri, stores.redis_url, seeded, dep, processes=4,
                          attempts=500, segments=3)


@pytest.mark.gen_test
async def test_another_process_sells_a_hold_whose_record_is_not_written_yet(stores, db) -> None:
    first, second = connect_redis(stores.redis_url), connect_redis(stores.redis_url)
    holder, seller = NativeInventory(db, first), NativeInventory(db, second)
    try:
        dep = await make_departure(db, seats=4)
        hold = await holder.hold(dep, req(2))
        assert await db.seat_holds.find_one({"_id": hold.hold_id}) is None  # still journaled
        assert await seller.sell(dep, hold.hold_id) == hold.seats
        await holder.flush()  # the late "held" record must not undo the sale
        record = await db.seat_holds.find_one({"_id": hold.hold_id})
        assert record["status"] == "sold"
        assert await holder.sell(dep, hold.hold_id) == hold.seats
    finally:
        await holder.close()
        await seller.close()
        await first.aclose()
        await second.aclose()


@pytest.mark.gen_test
async def test_seat_changes_are_published_per_departure(inventory, db, stores) -> None:
    import json

    dep = await make_departure(db, seats=5)
    await inventory.availability(dep)
    listener = connect_redis(stores.redis_url)
    pubsub = listener.pubsub()
    await pubsub.subscribe(f"ev:departure:{dep}")
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    try:
        hold = await inventory.hold(dep, req(2))
        await inventory.sell(dep, hold.hold_id)
        events = []
        while len(events) < 2:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
            assert message is not None, "no seat event"
            events.append(json.loads(message["data"]))
        assert [e["data"]["change"] for e in events] == ["held", "sold"]
        assert {e["topic"] for e in events} == {f"departure:{dep}"}
        assert events[0]["data"]["remaining"] == 3 and sorted(events[0]["data"]["seats"]) == [1, 2]
        assert events[1]["seq"] == events[0]["seq"] + 1
        # the same frames are kept for a client that reconnects
        kept = await listener.xrange(f"ev:{{dep:{dep}}}")
        assert [json.loads(f["f"]) for _, f in kept][-2:] == events
    finally:
        await pubsub.aclose()
        await listener.aclose()
