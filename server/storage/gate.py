"""What the gates keep: the one owner of ``gate_keys`` (the ticket-code signing keys),
``gate_scans`` (every scan, online or uploaded, once by its nonce), ``gate_conflicts``
(tickets two offline gates both admitted) and ``departure_signoffs`` (发车签字)."""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError


class GateRecords:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._keys = db.gate_keys
        self._scans = db.gate_scans
        self._conflicts = db.gate_conflicts
        self._signoffs = db.departure_signoffs

    # --- signing keys -------------------------------------------------------------------------
    async def add_key(self, key: dict[str, Any]) -> None:
        await self._keys.insert_one(key)

    async def retire_all_but_newest(self, now: dt.datetime) -> None:
        """Retire every current key older (by created_at, then id) than the newest one."""
        newest = await self._keys.find_one(
            {"retired_at": None}, {"created_at": 1}, sort=[("created_at", -1), ("_id", -1)])
        if newest is not None:
            at, top = newest["created_at"], newest["_id"]
            await self._keys.update_many(
                {"retired_at": None, "$or": [{"created_at": {"$lt": at}},
                                             {"created_at": at, "_id": {"$lt": top}}]},
                {"$set": {"retired_at": now}})

    # --- scans, conflicts, sign-offs ----------------------------------------------------------
    async def scan(self, record: dict[str, Any]) -> bool:
        """Keep a scan; False if its nonce was kept already (an upload repeated)."""
        try:
            await self._scans.insert_one(record)
        except DuplicateKeyError:
            return False
        return True

    async def conflict(self, record: dict[str, Any]) -> None:
        """Keep a double admission (once per nonce)."""
        with contextlib.suppress(DuplicateKeyError):
            await self._conflicts.insert_one(record)

    async def sign_off(self, record: dict[str, Any]) -> bool:
        """False if the departure was signed off already."""
        try:
            await self._signoffs.insert_one(record)
        except DuplicateKeyError:
            return False
        return True
