"""The double-entry ledger: the one writer of ``ledger_entries`` (the journal),
``ledger_accounts`` (each account's balance) and ``ledger_cursors`` (how far the posting job
has read its sources).

An entry's postings are signed fen, debit positive, and sum to zero. The entry and the
balances it moves are written in one transaction; its id is derived from the event it
records, so posting it twice posts it once. Entries are never updated: a correction is a
new, reversing entry. Every balance can be recomputed from the entries (``recomputed``).
"""

from __future__ import annotations

import asyncio
import random
import re
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from server import failpoints
from server.paging import Page, find_page
from server.storage.cursors import Cursors
from server.storage.transactions import transact

CONTENDED_ATTEMPTS = 6  # each a whole transaction run (itself retried a few times)


class UnbalancedEntry(ValueError):
    """Postings that do not sum to zero: a bug in whoever built them, never stored."""


def _balanced(entry: dict[str, Any]) -> None:
    postings = entry["postings"]
    if sum(p["amount"] for p in postings) != 0 or not postings:
        raise UnbalancedEntry(entry["_id"])
    if any(not isinstance(p["amount"], int) for p in postings):
        raise UnbalancedEntry(f"{entry['_id']}: amounts are integer fen")


class LedgerBook:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._db = db
        self._entries = db.ledger_entries
        self._accounts = db.ledger_accounts
        self.cursors = Cursors(db.ledger_cursors)

    # --- posting ----------------------------------------------------------------------------
    async def post(self, entry: dict[str, Any]) -> bool:
        """Store the entry and move its accounts' balances, once; True when this call did."""
        return await self.post_many([entry]) == 1

    async def post_many(self, entries: list[dict[str, Any]]) -> int:
        """Store entries and move their accounts' balances in one transaction — each
        account's balance moves once by its sum, so a page of sales costs one write on the
        busy payable account, not one each. An entry posted before (a racing poster, a run
        killed after its commit) makes the batch go entry by entry: none posts twice. The
        number this call posted."""
        for entry in entries:
            _balanced(entry)
        if not entries:
            return 0
        moves: dict[str, int] = {}
        counts: dict[str, int] = {}
        for entry in entries:
            for posting in entry["postings"]:
                moves[posting["account"]] = moves.get(posting["account"], 0) + posting["amount"]
                counts[posting["account"]] = counts.get(posting["account"], 0) + 1
        at = max(entry["at"] for entry in entries)

        async def write(session: AsyncClientSession) -> int:
            if len(entries) == 1:  # a repeat: a duplicate key, either way
                await self._entries.insert_one(entries[0], session=session)
            else:
                await self._entries.insert_many(entries, session=session)
            for account in sorted(moves):  # (one order everywhere: fewer conflicts)
                await self._accounts.update_one(
                    {"_id": account},
                    {"$inc": {"balance": moves[account], "entries": counts[account]},
                     "$set": {"updated_at": at}}, upsert=True, session=session)
            await failpoints.reach("ledger.in_transaction")
            return len(entries)

        for attempt in range(CONTENDED_ATTEMPTS):
            try:
                return await transact(self._db, write)
            except (DuplicateKeyError, BulkWriteError) as exc:
                if isinstance(exc, BulkWriteError) and not all(
                        e.get("code") == 11000 for e in exc.details.get("writeErrors", [])):
                    raise
                if len(entries) == 1:  # posted before: nothing moves
                    return 0
                return sum([await self.post_many([entry]) for entry in entries])
            except OperationFailure as exc:
                # busy accounts (the platform's, the payable) under racing posters: wait a
                # random, growing while and try again before giving the records up to the
                # next run
                if not exc.has_error_label("TransientTransactionError") or \
                        attempt == CONTENDED_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(random.uniform(0, 0.02 * 2 ** attempt))
        raise AssertionError("unreachable")

    # --- reading ------------------------------------------------------------------------------
    async def get(self, entry_id: str) -> dict[str, Any] | None:
        return await self._entries.find_one({"_id": entry_id})

    async def existing(self, entry_ids: list[str]) -> set[str]:
        """Which of these entries are in the journal already."""
        if not entry_ids:
            return set()
        return {e["_id"] async for e in self._entries.find({"_id": {"$in": entry_ids}},
                                                           {"_id": 1})}

    async def of_account(self, account: str, page: Page) -> tuple[list[dict[str, Any]], int]:
        """A page of the entries posting to ``account``, the latest first, and how many."""
        return await find_page(self._entries, {"postings.account": account},
                               [("booked_on", -1), ("at", -1), ("_id", -1)], page)

    def find(self, query: dict[str, Any], limit: int = 0,
                   sort: list[tuple[str, int]] | None = None) -> Any:
        """A cursor over entries (the caller iterates)."""
        cursor = self._entries.find(query).sort(sort or [("at", 1), ("_id", 1)])
        return cursor.limit(limit) if limit else cursor

    async def accounts(self, prefix: str | None = None) -> list[dict[str, Any]]:
        return await self._accounts.find(_prefixed(prefix)).sort("_id", 1).to_list()

    async def accounts_page(self, prefix: str | None, page: Page
                            ) -> tuple[list[dict[str, Any]], int, int]:
        """A page of the accounts (whose name starts with ``prefix``) by name, how many
        there are and the sum of all their balances."""
        query = _prefixed(prefix)
        rows, count = await find_page(self._accounts, query, [("_id", 1)], page)
        summed = await (await self._accounts.aggregate([
            {"$match": query}, {"$group": {"_id": None, "sum": {"$sum": "$balance"}}}])).to_list()
        return rows, count, int(summed[0]["sum"]) if summed else 0

    async def has_account(self, account: str) -> bool:
        return await self._accounts.count_documents({"_id": account}, limit=1) > 0

    async def recomputed(self) -> dict[str, int]:
        """Every account's balance summed from the journal itself."""
        out: dict[str, int] = {}
        async for row in await self._entries.aggregate([
                {"$unwind": "$postings"},
                {"$group": {"_id": "$postings.account", "sum": {"$sum": "$postings.amount"}}}]):
            out[row["_id"]] = int(row["sum"])
        return out

    async def summed_by_account(self, booked_on: dict[str, str], accounts: list[str]
                                ) -> list[dict[str, Any]]:
        """For entries booked in a range (payouts aside): per account, day, kind, rule
        version and posting role (``fee`` for a refund fee's share), the postings' sum and
        count — one pass, summed by the database."""
        rows, wanted = [], set(accounts)
        async for row in await self._entries.aggregate([
                {"$match": {"booked_on": booked_on, "kind": {"$ne": "payout"}}},
                {"$unwind": "$postings"},
                {"$group": {"_id": {"a": "$postings.account", "d": "$booked_on", "k": "$kind",
                                    "v": "$rule_version", "r": "$postings.role"},
                            "sum": {"$sum": "$postings.amount"}, "count": {"$sum": 1}}}]):
            key = row["_id"]
            if key["a"] not in wanted:  # (the rows are few: filtered here, not per posting)
                continue
            rows.append({"account": key["a"], "booked_on": key["d"], "kind": key["k"],
                         "rule_version": key.get("v"), "role": key.get("r"),
                         "sum": row["sum"], "count": row["count"]})
        return rows

    async def sources_by_day(self, booked_on: dict[str, str]
                             ) -> set[tuple[str, str | None, str | None]]:
        """For entries booked in a range (payouts aside): each (day, payment provider,
        station of the ticket) whose money they moved."""
        return {(row["_id"]["d"], row["_id"].get("p"), row["_id"].get("s"))
                async for row in await self._entries.aggregate([
                    {"$match": {"booked_on": booked_on, "kind": {"$ne": "payout"}}},
                    {"$group": {"_id": {"d": "$booked_on", "p": "$provider",
                                        "s": "$ticket.sale.station_id"}}}])}

    # --- the posting job's read positions ---------------------------------------------------


def _prefixed(prefix: str | None) -> dict[str, Any]:
    return {"_id": {"$regex": f"^{re.escape(prefix)}"}} if prefix else {}
