"""Third-party sellers: the one owner of ``partners`` (the registry and each partner's
prepaid deposit) and ``partner_keys`` (API keys; the secret sealed with the PII keys, shown
to the operator once), and of the Redis keys of used request nonces."""

from __future__ import annotations

from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.paging import Page, find_page


def nonce_key(key_id: str, nonce: str) -> str:
    """The Redis key marking a partner request's nonce as used."""
    return f"partner-nonce:{{{key_id}}}:{nonce}"


class PartnerRecords:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._partners = db.partners
        self._keys = db.partner_keys

    async def create(self, partner: dict[str, Any]) -> bool:
        """False if the code is taken."""
        try:
            await self._partners.insert_one(partner)
        except DuplicateKeyError:
            return False
        return True

    async def get(self, partner_id: str, session: AsyncClientSession | None = None
                  ) -> dict[str, Any] | None:
        return await self._partners.find_one({"_id": partner_id}, session=session)

    async def page(self, page: Page) -> tuple[list[dict[str, Any]], int]:
        return await find_page(self._partners, {}, [("created_at", 1), ("_id", 1)], page)

    async def add_key(self, key: dict[str, Any]) -> None:
        await self._keys.insert_one(key)

    async def key(self, key_id: str) -> dict[str, Any] | None:
        return await self._keys.find_one({"_id": key_id, "status": "active"})

    async def live_keys(self, partner_id: str) -> list[dict[str, Any]]:
        return await self._keys.find({"partner_id": partner_id, "status": "active"},
                                     {"secret_enc": 0}).sort("created_at", 1).to_list()

    async def revoke_key(self, partner_id: str, key_id: str, at: Any) -> bool:
        done = await self._keys.update_one(
            {"_id": key_id, "partner_id": partner_id, "status": "active"},
            {"$set": {"status": "revoked", "revoked_at": at}})
        return done.modified_count == 1

    async def update(self, partner_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        return await self._partners.find_one_and_update(  # type: ignore[no-any-return]
            {"_id": partner_id}, {"$set": fields}, return_document=ReturnDocument.AFTER)

    # --- the deposit --------------------------------------------------------------------------
    async def debit(self, partner_id: str, amount: int, session: AsyncClientSession
                    ) -> dict[str, Any] | None:
        """Take ``amount`` if deposit plus credit cover it; the partner after, or None."""
        return await self._partners.find_one_and_update(  # type: ignore[no-any-return]
            {"_id": partner_id, "status": "active",
             "$expr": {"$gte": [{"$add": [{"$ifNull": ["$balance", 0]},
                                          {"$ifNull": ["$credit_limit", 0]}]}, amount]}},
            {"$inc": {"balance": -amount}}, return_document=ReturnDocument.AFTER,
            session=session)

    async def credit(self, partner_id: str, amount: int,
                     session: AsyncClientSession | None = None) -> None:
        await self._partners.update_one({"_id": partner_id}, {"$inc": {"balance": amount}},
                                        session=session)
