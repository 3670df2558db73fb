"""Settlement: the one writer of ``settlement_entities`` (who is paid, how often, where to)
and ``settlement_batches`` (each T+N run: per entity what it covered and its net)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.paging import Page, find_page


class SettlementRecords:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._entities = db.settlement_entities
        self._batches = db.settlement_batches

    # --- entities ---------------------------------------------------------------------------
    async def entity_settings(self) -> dict[str, dict[str, Any]]:
        return {e["_id"]: e async for e in self._entities.find({})}

    async def save_entity(self, entity_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        return await self._entities.find_one_and_update(  # type: ignore[no-any-return]
            {"_id": entity_id}, {"$set": fields}, upsert=True,
            return_document=ReturnDocument.AFTER)

    # --- batches ------------------------------------------------------------------------------
    async def open_batch(self, batch: dict[str, Any]) -> bool:
        """The batch of a day, once across processes: False when it exists already."""
        try:
            await self._batches.insert_one(batch)
            return True
        except DuplicateKeyError:
            return False

    async def claim(self, batch_id: str, runner: str, stale_before: dt.datetime,
                    now: dt.datetime) -> bool:
        """Run a batch: one that nobody runs yet, or whose runner stopped heartbeating (it
        died). One caller wins; the others see it running."""
        done = await self._batches.update_one(
            {"_id": batch_id, "status": "running",
             "$or": [{"owner": None}, {"heartbeat_at": {"$lt": stale_before}}]},
            {"$set": {"owner": runner, "heartbeat_at": now}})
        return done.modified_count == 1

    async def sized(self, batch_id: str, total: int) -> None:
        await self._batches.update_one({"_id": batch_id}, {"$set": {"progress.total": total}})

    async def progress(self, batch_id: str, entity: dict[str, Any], done: int,
                       now: dt.datetime) -> None:
        await self._batches.update_one(
            {"_id": batch_id, "entities.entity": {"$ne": entity["entity"]}},
            {"$push": {"entities": entity},
             "$set": {"progress.done": done, "heartbeat_at": now}})

    async def finish(self, batch_id: str, totals: dict[str, Any], now: dt.datetime) -> None:
        await self._batches.update_one({"_id": batch_id},
                                       {"$set": {"status": "done", "finished_at": now,
                                                 "totals": totals}})

    async def get(self, batch_id: str) -> dict[str, Any] | None:
        return await self._batches.find_one({"_id": batch_id})

    async def latest_before(self, through: str) -> dict[str, Any] | None:
        return await self._batches.find_one({"through_date": {"$lt": through}},
                                            sort=[("through_date", -1)])

    async def later_than(self, through: str) -> dict[str, Any] | None:
        return await self._batches.find_one({"through_date": {"$gt": through}})

    async def listed(self, page: Page) -> tuple[list[dict[str, Any]], int]:
        return await find_page(self._batches, {}, [("through_date", -1), ("_id", 1)], page,
                               {"entities": 0})
