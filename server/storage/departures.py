"""Departures (班次计划) — the one owner of their writes: planned from timetables, added by
hand, operated on, and mirrored from station systems by the sync.

A departure's status: ``on_sale`` ⇄ ``stopped`` → ``departed``; ``cancelled`` from either
before departure. A change passengers must hear of (cancelled, withdrawn, a new time) is
pushed onto the departure's ``unannounced`` list in the same update, and taken off once told
(``server.services.departures.announce``), so a crash between the two loses nothing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo import ReturnDocument, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from server.clock import now_ms
from server.storage.mirror import Mirrored, compare


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, dt.datetime) else str(value or "")


def passenger_changes(old: dict[str, Any], diff: dict[str, Any]) -> list[dict[str, Any]]:
    """What of a change to a departure its passengers must hear of: a new status, a new
    time."""
    told = []
    if "status" in diff:
        told.append({"kind": "departure_status", "id": old["_id"],
                     "before": old.get("status"), "after": diff["status"]})
    if "departs_at" in diff:
        told.append({"kind": "departure_time", "id": old["_id"],
                     "before": _iso(old.get("departs_at")), "after": _iso(diff["departs_at"])})
    return told


def _push_told(old: dict[str, Any], _doc: dict[str, Any], diff: dict[str, Any]
               ) -> dict[str, Any]:
    told = passenger_changes(old, diff)
    return {"$push": {"unannounced": {"$each": told}}} if told else {}


class DepartureRecords:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._departures = db.departures

    async def plan(self, docs: list[dict[str, Any]]) -> int:
        """Departures planned from timetables: each created once (an existing one is left
        as it is); how many were new."""
        created = 0
        for i in range(0, len(docs), 1000):
            result = await self._departures.bulk_write(
                [UpdateOne({"_id": d["_id"]}, {"$setOnInsert": d}, upsert=True)
                 for d in docs[i:i + 1000]], ordered=False)
            created += result.upserted_count
        return created

    async def mirror(self, docs: list[dict[str, Any]], fields: tuple[str, ...], *,
                     at: dt.datetime, on_insert: Any) -> Mirrored:
        """A station system's departures as it lists them: new ones created, changed ones
        updated, and what passengers must hear of pushed onto ``unannounced`` in the same
        write."""
        existing = {d["_id"]: d async for d in self._departures.find(
            {"_id": {"$in": [d["_id"] for d in docs]}})}
        mirrored = compare(existing, docs, fields, now=at, on_insert=on_insert,
                           on_change=_push_told, stamp="synced_at", versioned=False)
        for i in range(0, len(mirrored.ops), 1000):
            await self._departures.bulk_write(mirrored.ops[i:i + 1000], ordered=False)
        return mirrored

    async def add(self, doc: dict[str, Any]) -> None:
        """A departure added by hand (an extra bus); DuplicateKeyError if its id exists."""
        await self._departures.insert_one(doc)

    async def change(self, departure_id: str, from_statuses: list[str],
                     fields: dict[str, Any], tell: dict[str, Any] | None = None
                     ) -> dict[str, Any] | None:
        """Set ``fields`` if the departure's status is one of ``from_statuses`` (and push
        ``tell`` onto the changes passengers must hear of); the departure after, or None."""
        update: dict[str, Any] = {"$set": fields}
        if "status" in fields:  # the flow statistics re-read departures by it
            update["$set"] = {**fields, "status_at": now_ms()}
        if tell:
            update["$push"] = {"unannounced": tell}
        return await self._departures.find_one_and_update(  # type: ignore[no-any-return]
            {"_id": departure_id, "status": {"$in": from_statuses}}, update,
            return_document=ReturnDocument.AFTER)

    async def retime_unsold(self, departure_id: str, was: dt.datetime, when: dt.datetime
                            ) -> bool:
        """A planned departure nobody has a ticket on follows its schedule's new time."""
        done = await self._departures.update_one(
            {"_id": departure_id, "departs_at": was, "status": {"$in": ["on_sale", "stopped"]}},
            {"$set": {"departs_at": when}})
        return done.modified_count == 1

    async def withdrawn(self, departure_id: str, tell: dict[str, Any], at: dt.datetime) -> None:
        """The station system no longer lists it: cancelled, and passengers to be told."""
        await self._departures.update_one(
            {"_id": departure_id}, {"$set": {"status": "cancelled", "withdrawn_at": at,
                                             "status_at": at},
                                    "$push": {"unannounced": tell}})

    async def told(self, departure_id: str, change: dict[str, Any]) -> None:
        await self._departures.update_one({"_id": departure_id},
                                          {"$pull": {"unannounced": change}})

    async def disrupt(self, departure_id: str, disruption: dict[str, Any]) -> bool:
        """Mark a departure disrupted (cancelled, or delayed past the rules' threshold): its
        passengers may refund or change free of charge until ``deadline``, and are refunded
        after it. Once per departure; False if it was marked already."""
        done = await self._departures.update_one(
            {"_id": departure_id, "disruption": {"$exists": False}},
            {"$set": {"disruption": {**disruption, "settled": False}}})
        return done.modified_count == 1

    async def disruption_settled(self, departure_id: str) -> None:
        """Every passenger of a disrupted departure is handled."""
        await self._departures.update_one({"_id": departure_id},
                                          {"$set": {"disruption.settled": True}})

    async def departed(self, departure_id: str, at: dt.datetime) -> None:
        """Signed off at the gate: a native departure has left."""
        await self._departures.update_one(
            {"_id": departure_id, "inventory": "native",
             "status": {"$in": ["on_sale", "stopped"]}},
            {"$set": {"status": "departed", "departed_at": at, "status_at": at}})

    async def station_online(self, station_id: str, online: bool) -> None:
        """A proxied station's departures on or off online sale with their station."""
        await self._departures.update_many({"station_id": station_id, "inventory": "proxied"},
                                           {"$set": {"online": online}})
