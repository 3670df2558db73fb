"""Payments and their attempts: the one owner of ``payments`` (one document per attempt to
pay an order), ``money_movements`` (every movement of money, once, by id) and
``reconciliations`` (the report of a provider's statement day).

An attempt's status::

    created ─start→ pending ─pay→ paid
       │  (local: taken)  │  └─close→ closed ─(a late payment)→ paid
       └─→ failed / closed

Each move is one update guarded by the states it may leave, so racing notifications,
queries and closes change an attempt once.
"""

from __future__ import annotations

from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from server.clock import now_ms


class PaymentRecords:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._attempts = db.payments
        self._movements = db.money_movements
        self._reports = db.reconciliations

    # --- attempts -----------------------------------------------------------------------------
    async def insert(self, attempt: dict[str, Any]) -> Any:
        """A new attempt (``created``); DuplicateKeyError if its number is taken."""
        return (await self._attempts.insert_one(attempt)).inserted_id

    async def started(self, attempt_id: Any, client_params: dict[str, Any]) -> None:
        """created → pending: the provider has the transaction, the payer its parameters."""
        await self._attempts.update_one({"_id": attempt_id, "status": "created"},
                                        {"$set": {"status": "pending", "started_at": now_ms(),
                                                  "client_params": client_params}})

    async def taken(self, attempt_id: Any, receipt: dict[str, Any], fields: dict[str, Any],
                    session: AsyncClientSession) -> bool:
        """created → pending for money taken locally, in the taking's transaction."""
        moved = await self._attempts.update_one(
            {"_id": attempt_id, "status": "created"},
            {"$set": {"status": "pending", "started_at": now_ms(), "receipt": receipt,
                      **fields}}, session=session)
        return moved.modified_count == 1

    async def failed(self, attempt_id: Any, error: str, *, only_created: bool = True) -> None:
        query: dict[str, Any] = {"_id": attempt_id}
        if only_created:
            query["status"] = "created"
        await self._attempts.update_one(query, {"$set": {"status": "failed",
                                                         "error": error[:200]}})

    async def closed(self, attempt_id: Any, *, only_created: bool = False) -> None:
        """The provider closed it (or it never began): nothing will be paid on it."""
        states = ["created"] if only_created else ["created", "pending"]
        await self._attempts.update_one({"_id": attempt_id, "status": {"$in": states}},
                                        {"$set": {"status": "closed"}})

    async def paid(self, attempt_id: Any, transaction_id: str,
                   session: AsyncClientSession | None = None) -> dict[str, Any] | None:
        """→ paid, once: the attempt as paid, or None if another caller got there first."""
        won = await self._attempts.find_one_and_update(
            {"_id": attempt_id, "status": {"$in": ["created", "pending", "closed"]}},
            {"$set": {"status": "paid", "paid_at": now_ms(), "transaction_id": transaction_id}},
            return_document=ReturnDocument.AFTER, session=session)
        return won  # type: ignore[no-any-return]

    async def scrubbed(self, attempt_id: Any, fields: list[str]) -> None:
        await self._attempts.update_one(
            {"_id": attempt_id},
            {"$unset": dict.fromkeys(fields, ""), "$set": {"scrubbed": True}})

    # --- money movements and statement reports ------------------------------------------------
    async def movement(self, movement_id: str, fields: dict[str, Any],
                       session: AsyncClientSession | None = None) -> bool:
        """Record a movement once (by its id); True when this call recorded it."""
        done = await self._movements.update_one(
            {"_id": movement_id}, {"$setOnInsert": {**fields, "at": now_ms()}}, upsert=True,
            session=session)
        return done.upserted_id is not None

    async def keep_report(self, report_id: str, report: dict[str, Any]) -> None:
        await self._reports.replace_one({"_id": report_id}, report, upsert=True)
