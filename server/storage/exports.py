"""Back-office exports: ``exports`` (one per file a staff member asked for: what, its progress,
how it ended) and ``export_chunks`` (the finished file in pieces under MongoDB's 16 MB
document limit). Both expire a day after the export was asked for. The only writer of the
two."""

from __future__ import annotations

import datetime as dt
from typing import Any

from bson import Binary
from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

CHUNK = 1 << 20  # bytes of the file per chunk document


class ExportRecords:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._exports = db.exports
        self._chunks = db.export_chunks

    async def create(self, export: dict[str, Any]) -> None:
        await self._exports.insert_one(export)

    async def get(self, export_id: str) -> dict[str, Any] | None:
        return await self._exports.find_one({"_id": export_id})  # type: ignore[no-any-return]

    async def of(self, who: str, limit: int) -> list[dict[str, Any]]:
        """The exports ``who`` (a staff id) asked for, newest first."""
        return await self._exports.find({"requested_by.id": who}).sort(
            "created_at", DESCENDING).limit(limit).to_list()

    async def running(self, who: str, alive_since: dt.datetime) -> int:
        """How many of ``who``'s exports are running (heard of since ``alive_since``)."""
        return await self._exports.count_documents({
            "requested_by.id": who, "status": "running", "heartbeat_at": {"$gte": alive_since}})

    async def progress(self, export_id: str, phase: str, done: int, total: int,
                       at: dt.datetime) -> None:
        await self._exports.update_one({"_id": export_id, "status": "running"}, {"$set": {
            "phase": phase, "progress": {"done": done, "total": total}, "heartbeat_at": at}})

    async def finished(self, export_id: str, data: bytes, rows: int, at: dt.datetime) -> None:
        """The file stored, then the export done (a reader never sees a part of a file)."""
        export = await self.get(export_id)
        if export is None:
            return
        await self._chunks.delete_many({"export_id": export_id})
        pieces = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
        await self._chunks.insert_many([
            {"_id": f"{export_id}:{n}", "export_id": export_id, "n": n, "data": Binary(piece),
             "expires_at": export["expires_at"]} for n, piece in enumerate(pieces)])
        await self._exports.update_one({"_id": export_id, "status": "running"}, {"$set": {
            "status": "done", "phase": "done", "rows": rows, "size": len(data),
            "progress": {"done": rows, "total": rows}, "finished_at": at, "heartbeat_at": at,
            "chunks": len(pieces)}})

    async def failed(self, export_id: str, error: dict[str, str], at: dt.datetime) -> None:
        await self._exports.update_one({"_id": export_id, "status": "running"}, {"$set": {
            "status": "failed", "error": error, "finished_at": at}})

    async def data(self, export_id: str) -> bytes:
        pieces = await self._chunks.find({"export_id": export_id}).sort("n", 1).to_list()
        return b"".join(bytes(p["data"]) for p in pieces)
