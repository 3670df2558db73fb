"""Reconciliation runs: the one writer of ``reconciliation_runs`` (a day of one source
matched against ours: totals, counts, how many differences are still open) and
``reconciliation_differences`` (each difference, until finance resolves it)."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.paging import Page, find_page


class ReconciliationRecords:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._runs = db.reconciliation_runs
        self._diffs = db.reconciliation_differences

    async def add(self, run: dict[str, Any], differences: list[dict[str, Any]],
                  session: AsyncClientSession) -> bool:
        """A run and its differences, together; False if a run of this id exists."""
        try:
            await self._runs.insert_one(run, session=session)
        except DuplicateKeyError:
            return False
        if differences:
            await self._diffs.insert_many(differences, session=session)
        return True

    async def get(self, run_id: str) -> dict[str, Any] | None:
        return await self._runs.find_one({"_id": run_id})

    async def differences(self, run_id: str) -> list[dict[str, Any]]:
        return await self._diffs.find({"run_id": run_id}).sort("seq", 1).to_list()

    async def differences_page(self, run_id: str, status: str | None, page: Page
                               ) -> tuple[list[dict[str, Any]], int]:
        query = {"run_id": run_id, **({"status": status} if status else {})}
        return await find_page(self._diffs, query, [("seq", 1)], page)

    async def difference(self, diff_id: str) -> dict[str, Any] | None:
        return await self._diffs.find_one({"_id": diff_id})

    async def resolve(self, diff_id: str, resolution: dict[str, Any],
                      session: AsyncClientSession) -> bool:
        """open → resolved, once; the run's count of open differences follows."""
        done = await self._diffs.update_one({"_id": diff_id, "status": "open"},
                                            {"$set": {"status": "resolved",
                                                      "resolution": resolution}},
                                            session=session)
        if done.modified_count != 1:
            return False
        diff = await self._diffs.find_one({"_id": diff_id}, {"run_id": 1}, session=session)
        await self._runs.update_one({"_id": diff["run_id"]},
                                    {"$inc": {"open_differences": -1}}, session=session)
        return True

    async def listed(self, query: dict[str, Any], page: Page
                     ) -> tuple[list[dict[str, Any]], int]:
        return await find_page(self._runs, query, [("created_at", -1), ("_id", 1)], page)
