"""The static network (道路客运基础数据) — the one writer of stations' base fields, carriers,
vehicles, drivers, routes, stops, schedules and fares, whichever way a change comes: staff
through the base data API, a file from the 运政 system, or a station system's sync.

Nothing is ever deleted: withdrawing is a status. Every record carries ``version``, one more
with each change, which ``update`` compares (optimistic concurrency: ``If-Match``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.storage.mirror import Mirrored, compare

KINDS = ("stations", "carriers", "vehicles", "drivers", "routes", "stops", "schedules",
         "fares")


def _version_is(version: int) -> dict[str, Any]:
    """Records loaded before versions existed count as version 0."""
    if version == 0:
        return {"$or": [{"version": 0}, {"version": {"$exists": False}}]}
    return {"version": version}


class NetworkRecords:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._db = db

    async def get(self, kind: str, record_id: str) -> dict[str, Any] | None:
        return await self._db[kind].find_one({"_id": record_id})  # type: ignore[no-any-return]

    async def many(self, kind: str, ids: list[str]) -> dict[str, dict[str, Any]]:
        return {d["_id"]: d async for d in self._db[kind].find({"_id": {"$in": ids}})}

    async def all(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every record of a kind (the network is small: thousands, not millions)."""
        return {d["_id"]: d async for d in self._db[kind].find({})}

    async def find(self, kind: str, query: dict[str, Any], *, skip: int = 0, limit: int = 50,
                   sort: list[tuple[str, int]] | None = None
                   ) -> tuple[list[dict[str, Any]], int]:
        """One page of the records matching ``query`` and how many match in all."""
        cursor = self._db[kind].find(query).sort(sort or [("_id", 1)]).skip(skip).limit(limit)
        return await cursor.to_list(), await self._db[kind].count_documents(query)

    async def count(self, kind: str, query: dict[str, Any]) -> int:
        return await self._db[kind].count_documents(query)

    async def create(self, kind: str, doc: dict[str, Any], at: dt.datetime) -> bool:
        """Insert a new record at version 1; False if its id is taken."""
        try:
            await self._db[kind].insert_one({**doc, "version": 1, "created_at": at,
                                             "updated_at": at})
        except DuplicateKeyError:
            return False
        return True

    async def update(self, kind: str, record_id: str, version: int, fields: dict[str, Any],
                     at: dt.datetime) -> dict[str, Any] | None:
        """Set ``fields`` if the record is still at ``version``; the record after, or None
        (missing, or changed meanwhile: the caller tells which)."""
        return await self._db[kind].find_one_and_update(  # type: ignore[no-any-return]
            {"_id": record_id, **_version_is(version)},
            {"$set": {**fields, "updated_at": at}, "$inc": {"version": 1}},
            return_document=ReturnDocument.AFTER)

    async def set_stops(self, route_id: str, stops: list[dict[str, Any]],
                        at: dt.datetime) -> None:
        """A route's stops as given (``{route}-{seq}``), written with the route."""
        mirrored = compare(await self.many("stops", [s["_id"] for s in stops]), stops,
                           [k for s in stops for k in s if k != "_id"], now=at)
        if mirrored.ops:
            await self._db.stops.bulk_write(mirrored.ops, ordered=False)

    async def mirror(self, kind: str, docs: list[dict[str, Any]], fields: tuple[str, ...], *,
                     at: dt.datetime, on_insert: Callable[[dict[str, Any]], dict[str, Any]]
                     = lambda _: {}, stamp: str = "updated_at", dry_run: bool = False
                     ) -> Mirrored:
        """Make the held records of ``kind`` say what ``docs`` say about ``fields``: new ones
        created, changed ones updated (version + 1), the rest left alone. A dry run only
        compares."""
        if kind not in KINDS:
            raise ValueError(kind)
        existing = await self.many(kind, [d["_id"] for d in docs])
        mirrored = compare(existing, docs, fields, now=at, on_insert=on_insert, stamp=stamp)
        if mirrored.ops and not dry_run:
            for i in range(0, len(mirrored.ops), 1000):
                await self._db[kind].bulk_write(mirrored.ops[i:i + 1000], ordered=False)
        return mirrored
