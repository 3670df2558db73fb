"""Agent outlets (代售点): the one owner of ``outlets`` — the registry (status, credit limit,
commission, sellable routes, daily quota) and each outlet's prepaid deposit."""

from __future__ import annotations

from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.paging import Page, find_page


class OutletRecords:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._outlets = db.outlets

    async def create(self, outlet: dict[str, Any]) -> bool:
        """False if the code is taken."""
        try:
            await self._outlets.insert_one(outlet)
        except DuplicateKeyError:
            return False
        return True

    async def get(self, outlet_id: str, session: AsyncClientSession | None = None
                  ) -> dict[str, Any] | None:
        return await self._outlets.find_one({"_id": outlet_id}, session=session)

    async def page(self, query: dict[str, Any], page: Page
                   ) -> tuple[list[dict[str, Any]], int]:
        return await find_page(self._outlets, query, [("_id", 1)], page)

    async def update(self, outlet_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        return await self._outlets.find_one_and_update(  # type: ignore[no-any-return]
            {"_id": outlet_id}, {"$set": fields}, return_document=ReturnDocument.AFTER)

    # --- the deposit --------------------------------------------------------------------------
    async def debit(self, outlet_id: str, amount: int, session: AsyncClientSession
                    ) -> dict[str, Any] | None:
        """Take ``amount`` if deposit plus credit cover it; the outlet after, or None."""
        return await self._outlets.find_one_and_update(  # type: ignore[no-any-return]
            {"_id": outlet_id,
             "$expr": {"$gte": [{"$add": [{"$ifNull": ["$balance", 0]}, "$credit_limit"]},
                                amount]}},
            {"$inc": {"balance": -amount}}, return_document=ReturnDocument.AFTER,
            session=session)

    async def credit(self, outlet_id: str, amount: int,
                     session: AsyncClientSession | None = None) -> None:
        await self._outlets.update_one({"_id": outlet_id}, {"$inc": {"balance": amount}},
                                       session=session)
