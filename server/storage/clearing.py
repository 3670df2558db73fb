"""Clearing rule versions: the one writer of ``clearing_rules``. A draft is published once,
and then never changes — a new version, effective from its time, replaces it."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase


class ClearingRuleVersions:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._versions = db.clearing_rules

    async def add(self, version: dict[str, Any]) -> None:
        await self._versions.insert_one(version)

    async def get(self, version_id: str) -> dict[str, Any] | None:
        return await self._versions.find_one({"_id": version_id})

    async def publish(self, version_id: str, effective: dt.datetime,
                      by: dict[str, Any]) -> bool:
        """draft → published, once."""
        done = await self._versions.update_one(
            {"_id": version_id, "status": "draft"},
            {"$set": {"status": "published", "effective_from": effective,
                      "published_by": by}})
        return done.modified_count == 1

    async def published(self) -> list[dict[str, Any]]:
        """Published versions, oldest effective first."""
        return await self._versions.find({"status": "published"}).sort(
            [("effective_from", 1), ("_id", 1)]).to_list()

    async def every(self) -> list[dict[str, Any]]:
        return await self._versions.find({}).sort("created_at", -1).limit(200).to_list()
