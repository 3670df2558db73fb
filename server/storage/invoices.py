"""Electronic invoices: the one writer of ``invoices`` (each blue invoice of an order and the
red-letter ones that reverse them, with the provider's number and the PDF once issued) and
``invoice_cursors`` (how far the correction job has read refunds).

An order has at most one *current* blue invoice (a partial unique index). A refund after
invoicing replaces it in one transaction: the old blue stops being current, a red invoice
reversing it and — if anything is left to invoice — a new blue are requested together.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

from bson import Binary
from pymongo import ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from server.paging import Page, find_page
from server.storage.cursors import Cursors

WITHOUT_FILE = {"pdf": 0}
LISTED = [("requested_at", -1), ("_id", -1)]  # newest first


class InvoiceBook:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._invoices = db.invoices
        self.cursors = Cursors(db.invoice_cursors)

    async def add(self, invoice: dict[str, Any], session: AsyncClientSession | None = None
                  ) -> None:
        """A requested invoice (DuplicateKeyError: the order has a current blue one)."""
        await self._invoices.insert_one(invoice, session=session)

    async def replace(self, blue: dict[str, Any], red: dict[str, Any] | None,
                      new_blue: dict[str, Any] | None, at: dt.datetime,
                      session: AsyncClientSession) -> bool:
        """The order's current blue invoice gives way: reversed by ``red`` if it was issued
        (voided if it never was), followed by ``new_blue`` (if any is left to invoice).
        False if it was not current any more (another run did it)."""
        done = await self._invoices.update_one(
            {"_id": blue["_id"], "current": True},
            {"$set": {"current": False, "replaced_at": at,
                      "replaced_by": new_blue["_id"] if new_blue else None,
                      **({} if red else {"status": "void"})}}, session=session)
        if done.modified_count != 1:
            return False
        for invoice in (red, new_blue):
            if invoice is not None:
                await self._invoices.insert_one(invoice, session=session)
        return True

    async def issued(self, invoice_id: str, number: str, at: dt.datetime, pdf: bytes
                     ) -> dict[str, Any] | None:
        """requested → issued, with the provider's number and the PDF, once."""
        return await self._invoices.find_one_and_update(  # type: ignore[no-any-return]
            {"_id": invoice_id, "status": "requested"},
            {"$set": {"status": "issued", "invoice_no": number, "issued_at": at,
                      "pdf": Binary(pdf)}},
            projection=WITHOUT_FILE, return_document=ReturnDocument.AFTER)

    async def failed(self, invoice_id: str, error: str, at: dt.datetime) -> None:
        await self._invoices.update_one({"_id": invoice_id, "status": "requested"},
                                        {"$inc": {"attempts": 1},
                                         "$set": {"last_error": error, "last_attempt_at": at}})

    # --- reading ------------------------------------------------------------------------------
    async def get(self, invoice_id: str, *, with_file: bool = False) -> dict[str, Any] | None:
        return await self._invoices.find_one(  # type: ignore[no-any-return]
            {"_id": invoice_id}, None if with_file else WITHOUT_FILE)

    async def current(self, order_no: str) -> dict[str, Any] | None:
        return await self._invoices.find_one(  # type: ignore[no-any-return]
            {"order_no": order_no, "kind": "blue", "current": True}, WITHOUT_FILE)

    async def of_order(self, order_no: str) -> list[dict[str, Any]]:
        return await self._invoices.find({"order_no": order_no}, WITHOUT_FILE).sort(
            "requested_at", 1).to_list()

    async def to_send(self, before: dt.datetime, limit: int) -> list[dict[str, Any]]:
        """Requested invoices not tried since ``before``, oldest first."""
        return await self._invoices.find(
            {"status": "requested", "$or": [{"last_attempt_at": {"$lt": before}},
                                            {"last_attempt_at": {"$exists": False}}]},
            WITHOUT_FILE).sort("requested_at", 1).limit(limit).to_list()

    async def listed(self, query: dict[str, Any], page: Page
                     ) -> tuple[list[dict[str, Any]], int]:
        return await find_page(self._invoices, query, LISTED, page, WITHOUT_FILE)

    async def count(self, query: dict[str, Any]) -> int:
        return await self._invoices.count_documents(query)

    async def scan(self, query: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Every invoice matching ``query`` in the listing's order, read in batches."""
        async for invoice in self._invoices.find(query, WITHOUT_FILE).sort(LISTED).batch_size(
                500):
            yield invoice
