"""Rule versions (业务规则): the one writer of ``rules``. A version is never changed once
stored — a new one, effective from its time, replaces it for its scope."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase


class RuleVersions:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._rules = db.rules

    async def add(self, version: dict[str, Any]) -> None:
        await self._rules.insert_one(version)

    async def all(self) -> list[dict[str, Any]]:
        """Every version, oldest effective first (a province has tens, not thousands)."""
        return await self._rules.find({}).sort([("effective_from", 1), ("_id", 1)]).to_list()
