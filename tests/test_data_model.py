"""The data model: validators refuse bad documents, unique indexes hold, set-up is idempotent."""

from __future__ import annotations

import datetime as dt

import pytest
from pymongo.errors import DuplicateKeyError, WriteError

from server.storage.collections import COLLECTIONS, ensure_schema

NOW = dt.datetime(2026, 11, 24, tzinfo=dt.UTC)


@pytest.mark.gen_test
async def test_every_collection_exists_with_its_indexes(db) -> None:
    names = set(await db.list_collection_names())
    for spec in COLLECTIONS:
        assert spec.name in names
        info = await db[spec.name].index_information()
        for index in spec.indexes:
            assert index.document["name"] in info, (spec.name, index.document["name"])


@pytest.mark.gen_test
async def test_ensure_schema_twice_changes_nothing(db) -> None:
    before = {s.name: sorted(await db[s.name].index_information()) for s in COLLECTIONS}
    await ensure_schema(db)
    after = {s.name: sorted(await db[s.name].index_information()) for s in COLLECTIONS}
    assert before == after


def _payment(**over):
    doc = {"out_trade_no": "T-" + str(over.pop("n", 1)), "order_no": "O1", "provider": "wechat",
           "amount": 4500, "status": "created", "created_at": NOW}
    doc.update(over)
    return doc


@pytest.mark.gen_test
async def test_money_must_be_integer_fen(db) -> None:
    with pytest.raises(WriteError) as info:
        await db.payments.insert_one(_payment(n="float", amount=45.0))
    assert info.value.code == 121
    with pytest.raises(WriteError):
        await db.payments.insert_one(_payment(n="neg", amount=-1))
    await db.payments.insert_one(_payment(n="ok", amount=4500))
    await db.payments.delete_one({"out_trade_no": "T-ok"})


@pytest.mark.gen_test
async def test_required_fields_and_enums_are_enforced(db) -> None:
    with pytest.raises(WriteError):
        await db.stations.insert_one({"code": "X1", "name": "无坐标站"})
    with pytest.raises(WriteError):
        await db.departures.insert_one({
            "schedule_id": "s", "route_id": "r", "station_id": "st", "carrier_id": "c",
            "service_date": "2026-11-24", "departs_at": NOW, "seats": 45,
            "status": "flying", "inventory": "native"})
    with pytest.raises(WriteError):  # a division that is not GB/T 2260 shaped
        await db.carriers.insert_one({"code": "CX", "name": "n", "division": "44",
                                      "status": "active"})


@pytest.mark.gen_test
async def test_natural_keys_are_unique(db) -> None:
    station = await db.stations.find_one({})
    clone = {k: v for k, v in station.items() if k != "_id"}
    with pytest.raises(DuplicateKeyError):
        await db.stations.insert_one(clone)
    departure = await db.departures.find_one({})
    clone = {k: v for k, v in departure.items() if k != "_id"}
    with pytest.raises(DuplicateKeyError):
        await db.departures.insert_one(clone)


@pytest.mark.gen_test
async def test_one_person_one_seat_per_departure_among_active_tickets(db) -> None:
    def ticket(no: str, active: bool) -> dict:
        return {"ticket_no": no, "order_no": "O-dm", "departure_id": "D-dm",
                "ticket_type": "adult", "price": 4500, "status": "issued", "active": active,
                "passenger": {"name": "张三", "id_type": "resident_id",
                              "id_no_index": "blind-index-1", "id_no_masked": "4401**1234"}}
    try:
        await db.tickets.insert_one(ticket("TK-dm-1", True))
        with pytest.raises(DuplicateKeyError):
            await db.tickets.insert_one(ticket("TK-dm-2", True))
        await db.tickets.insert_one(ticket("TK-dm-3", False))  # a refunded ticket may remain
    finally:
        await db.tickets.delete_many({"order_no": "O-dm"})
