"""Members and their frequent passengers: the one owner of ``members``, ``passengers`` and
the Redis key of a phone's pending sign-in code."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError


def sign_in_code_key(phone_index: str) -> str:
    """The hash of the code last sent to a phone (by its blind index) and its tries."""
    return f"sms:code:{{{phone_index}}}"


class MemberRecords:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._members = db.members
        self._passengers = db.passengers

    async def signed_in(self, field: str, value: str, fields: dict[str, Any],
                        at: dt.datetime) -> dict[str, Any]:
        """The member found by ``field`` (an openid, a phone's index), created on the first
        sign-in with ``fields``; DuplicateKeyError if a concurrent first sign-in won."""
        member = await self._members.find_one_and_update(
            {field: value},
            {"$setOnInsert": {"_id": "mbr_" + uuid.uuid4().hex[:20], "created_at": at,
                              "status": "active", **fields},
             "$set": {"last_login_at": at}},
            upsert=True, return_document=ReturnDocument.AFTER)
        return member  # type: ignore[no-any-return]

    async def add_passenger(self, doc: dict[str, Any]) -> bool:
        """False if the member has this person already."""
        try:
            await self._passengers.insert_one(doc)
        except DuplicateKeyError:
            return False
        return True

    async def remove_passenger(self, member_id: str, passenger_id: str) -> bool:
        """False if the member has no such passenger."""
        result = await self._passengers.delete_one({"_id": passenger_id,
                                                    "member_id": member_id})
        return result.deleted_count == 1

    async def seen(self, member_id: str, at: dt.datetime) -> None:
        """The account was in use at ``at`` (a refreshed token, an order): as a sign-in."""
        await self._members.update_one({"_id": member_id}, {"$max": {"last_login_at": at}})

    async def close(self, member_id: str, at: dt.datetime) -> int:
        """Close an account for good: its sign-in identities (openid, phone) and profile go,
        so signing in again makes a new account; a tombstone with the id stays, as orders
        and the audit trail name it. Its frequent passengers are deleted. Returns how many."""
        await self._members.update_one(
            {"_id": member_id},
            {"$set": {"status": "closed", "closed_at": at},
             "$unset": {"openid": "", "phone_enc": "", "phone_index": "", "phone_masked": "",
                        "nickname": ""}})
        removed = await self._passengers.delete_many({"member_id": member_id})
        return removed.deleted_count
