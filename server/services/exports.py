"""Back-office exports as jobs that show their progress (SPEC §4b: long jobs show progress).

A staff member asks for a file (``POST /api/v1/admin/invoices/exports``); the answer comes at
once with the export's id, and the export reads its rows in batches in the background,
recording how many it has read of how many, then builds the file in an executor thread (never
on the IOLoop) and stores it in pieces (:mod:`server.storage.exports`). The page polls the
export and downloads the file when it is done. Exports are the requester's own — other staff
cannot see them (they hold personal data such as buyers' tax numbers) — and expire after a
day. An export whose process stopped (a deploy, a crash) stops being heard of: after
:data:`STALE` it reads as failed, and the user asks again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from server.clock import LOCAL_TZ, now_ms
from server.errors import DomainError
from server.security.principal import Principal
from server.services.audit import AuditService
from server.storage.exports import ExportRecords
from server.tables import FORMATS, Source

log = logging.getLogger(__name__)

KEEP = dt.timedelta(days=1)
STALE = dt.timedelta(minutes=2)  # a running export not heard of this long was abandoned
BEAT = 0.5  # seconds between progress records while reading
PER_PERSON = 2  # exports one staff member may have running at once
BUILDING = 2  # files this process builds at once (CPU: the rest wait their turn)
ABANDONED = {"code": "EXPORT_ABANDONED",
             "message": "The server making this export stopped; ask for it again."}


class ExportService:
    def __init__(self, db: AsyncDatabase[Any], audit: AuditService) -> None:
        self.records = ExportRecords(db)
        self._audit = audit
        self._running: set[asyncio.Task[None]] = set()
        self._building = asyncio.Semaphore(BUILDING)

    async def start(self, actor: Principal, kind: str, source: Source, fmt: str,
                    filters: dict[str, Any]) -> dict[str, Any]:
        """Begin an export of ``source`` as ``fmt``; the export as it stands (running). A
        person clicking export again and again gets EXPORTS_BUSY, not a pile of jobs."""
        now = now_ms()
        if await self.records.running(actor.id, now - STALE) >= PER_PERSON:
            raise DomainError("EXPORTS_BUSY", limit=PER_PERSON)
        export = {
            "_id": f"EX{now.astimezone(LOCAL_TZ):%Y%m%d%H%M%S}{secrets.token_hex(3).upper()}",
            "kind": kind, "format": fmt, "filters": filters, "status": "running",
            "phase": "counting", "progress": {"done": 0, "total": 0},
            "filename": f"{source.name}-{now.astimezone(LOCAL_TZ):%Y%m%d-%H%M%S}.{fmt}",
            "requested_by": actor.audit_actor(), "created_at": now, "heartbeat_at": now,
            "expires_at": now + KEEP}
        await self.records.create(export)
        await self._audit.record(actor, "export.start", target=export["_id"],
                                 details={"kind": kind, "format": fmt})
        task = asyncio.get_running_loop().create_task(self._make(export["_id"], source, fmt))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return view(export)

    async def _make(self, export_id: str, source: Source, fmt: str) -> None:
        try:
            total = await source.count()
            await self.records.progress(export_id, "reading", 0, total, now_ms())
            rows: list[list[Any]] = []
            beat = time.monotonic()
            async for row in source.rows():
                rows.append(row)
                if time.monotonic() - beat >= BEAT:
                    beat = time.monotonic()
                    await self.records.progress(export_id, "reading", len(rows),
                                                max(total, len(rows)), now_ms())
            await self.records.progress(export_id, "writing", len(rows), len(rows), now_ms())
            await self.records.finished(export_id, await self._build(source, fmt, rows),
                                        len(rows), now_ms())
        except asyncio.CancelledError:
            await asyncio.shield(self.records.failed(export_id, ABANDONED, now_ms()))
            raise
        except Exception:
            log.exception("export %s failed", export_id)
            await self.records.failed(export_id, {
                "code": "EXPORT_FAILED", "message": "The export failed; ask for it again."},
                now_ms())

    async def at_once(self, source: Source, fmt: str, limit: int) -> bytes:
        """A short list's file in the answer itself (EXPORT_TOO_LARGE beyond ``limit`` rows:
        those are exported as a job)."""
        count = await source.count()
        if count > limit:
            raise DomainError("EXPORT_TOO_LARGE", rows=count, limit=limit)
        return await self._build(source, fmt, [row async for row in source.rows()])

    async def _build(self, source: Source, fmt: str, rows: list[list[Any]]) -> bytes:
        """The file, built in an executor thread, a few at a time per process."""
        async with self._building:
            return await asyncio.get_running_loop().run_in_executor(
                None, source.sheet.file, fmt, rows)

    async def get(self, actor: Principal, export_id: str) -> dict[str, Any]:
        return view(await self._own(actor, export_id))

    async def mine(self, actor: Principal, limit: int = 20) -> list[dict[str, Any]]:
        return [view(e) for e in await self.records.of(actor.id, limit)]

    async def file(self, actor: Principal, export_id: str) -> tuple[str, str, bytes]:
        """The finished file: its name, content type and bytes."""
        export = view(await self._own(actor, export_id))
        if export["status"] == "failed":
            raise DomainError("EXPORT_FAILED", export["error"]["message"],
                              reason=export["error"]["code"])
        if export["status"] != "done":
            raise DomainError("EXPORT_NOT_READY", progress=export["progress"])
        await self._audit.record(actor, "export.download", target=export_id)
        return (export["filename"], FORMATS[export["format"]],
                await self.records.data(export_id))

    async def _own(self, actor: Principal, export_id: str) -> dict[str, Any]:
        export = await self.records.get(export_id)
        if export is None or export["requested_by"].get("id") != actor.id:
            raise DomainError("EXPORT_NOT_FOUND", export_id=export_id)
        return export

    async def close(self) -> None:
        """Stop the exports this process is making (they read as abandoned)."""
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)


def view(export: dict[str, Any]) -> dict[str, Any]:
    out = {k: export[k] for k in ("kind", "format", "status", "phase", "progress", "filename",
                                  "created_at", "expires_at", "filters") if k in export}
    out["id"] = export["_id"]
    for k in ("rows", "size", "finished_at", "error"):
        if k in export:
            out[k] = export[k]
    if out["status"] == "running" and export["heartbeat_at"] < now_ms() - STALE:
        out.update(status="failed", error=ABANDONED)
    return out
