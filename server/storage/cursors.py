"""How far a job that re-reads its sources by time has read: one document per source in the
owner's own cursor collection (``{_id: name, at}``), only ever moved forward."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection


class Cursors:
    def __init__(self, collection: AsyncCollection[Any]) -> None:
        self._collection = collection

    async def get(self, name: str) -> dt.datetime | None:
        found = await self._collection.find_one({"_id": name})
        return found["at"] if found else None

    async def advance(self, name: str, at: dt.datetime) -> None:
        await self._collection.update_one({"_id": name}, {"$max": {"at": at}}, upsert=True)


def dotted(doc: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (``refund.at``), or None."""
    value: Any = doc
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
