"""The exchange with the ministry and the 运政 system: ``ministry_exports`` (one per day: its
files, package, receipt and reconciliation), ``ministry_cursors`` (how far each pull of 运政
changes has read) and ``yunzheng_pulls`` (each pull's report). The only writer of the three."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import Binary
from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.clock import now_ms
from server.storage.cursors import Cursors

STALE = dt.timedelta(minutes=10)  # a build claimed this long ago was abandoned


class MinistryRecords:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._exports = db.ministry_exports
        self.cursors = Cursors(db.ministry_cursors)
        self._pulls = db.yunzheng_pulls

    async def get(self, export_id: str, with_package: bool = False) -> dict[str, Any] | None:
        return await self._exports.find_one(  # type: ignore[no-any-return]
            {"_id": export_id}, None if with_package else {"package": 0})

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        return await self._exports.find({}, {"package": 0}).sort(
            "date", DESCENDING).limit(limit).to_list()

    async def claim(self, export_id: str, day: str, at: dt.datetime) -> bool:
        """This process builds the day's export now; False while another one is (unless it
        was abandoned)."""
        try:
            await self._exports.insert_one({"_id": export_id, "date": day, "status": "building",
                                            "revision": 1, "created_at": at, "claimed_at": at})
            return True
        except DuplicateKeyError:
            pass
        taken = await self._exports.update_one(
            {"_id": export_id, "$or": [{"status": {"$ne": "building"}},
                                       {"claimed_at": {"$lt": at - STALE}}]},
            {"$set": {"status": "building", "claimed_at": at}, "$inc": {"revision": 1}})
        return taken.modified_count == 1

    async def built(self, export_id: str, manifest: dict[str, Any], package: bytes) -> None:
        await self._exports.update_one({"_id": export_id}, {"$set": {
            "files": manifest["files"], "format": manifest["format"],
            "rows": sum(f["rows"] for f in manifest["files"]), "package": Binary(package),
            "package_bytes": len(package), "sent_at": now_ms()},
            "$unset": {"receipt": "", "differences": "", "error": ""}})

    async def answered(self, export_id: str, status: str, receipt: dict[str, Any],
                       differences: list[dict[str, Any]]) -> None:
        await self._exports.update_one({"_id": export_id}, {"$set": {
            "status": status, "receipt": receipt, "differences": differences,
            "answered_at": now_ms()}})

    async def release(self, export_id: str, status: str, error: str) -> None:
        await self._exports.update_one({"_id": export_id},
                                       {"$set": {"status": status, "error": error}})


    async def pulled(self, report: dict[str, Any]) -> None:
        await self._pulls.insert_one({**report, "at": now_ms()})

    async def pulls(self, limit: int = 20) -> list[dict[str, Any]]:
        return await self._pulls.find({}, {"_id": 0}).sort("at", DESCENDING).limit(
            limit).to_list()
