"""The refund aggregate: money owed back to a payer, from the moment it is owed until it is
back (the only module that writes ``refund_requests``).

A refund request is owed for one reason, and its id says which, so owing it twice owes it
once: ``ticket:<ticket_no>`` (a ticket refunded or voided), ``full:<order_no>`` (a paid order
the station refused to issue), ``late:<out_trade_no>`` (a payment that arrived after its
order ended). Its life::

    requested ──claim──▶ sending ──provider accepted──▶ processing ──notice / query──▶ done
        ▲                   │  (dead worker: back to requested)        │
        └──retry (finance)──┴──────── closed / abnormal / refused ─────┴──▶ attention
                                                     resolve (finance) ──▶ done

``failed`` is a request with nothing to refund (no paid attempt). The payments capability
(``payments/service.py``) drives the life through the methods below; orders and tickets only
``owe``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from server.paging import Page, find_page

STATUSES = ("requested", "sending", "processing", "done", "failed", "attention")
IN_FLIGHT = ("sending", "processing")


def for_ticket(ticket_no: str) -> str:
    return f"ticket:{ticket_no}"


def for_order(order_no: str) -> str:
    return f"full:{order_no}"


def for_fare_difference(ticket_no: str) -> str:
    """A disrupted passenger changed to a cheaper departure: the difference, once."""
    return f"fare-diff:{ticket_no}"


def for_late_payment(out_trade_no: str) -> str:
    return f"late:{out_trade_no}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class RefundRequests:
    """Refund requests: owed once, claimed by one worker, settled once."""

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._requests = db.refund_requests

    # --- owing (orders, tickets, payments) ----------------------------------------------------
    async def owe(self, request_id: str, *, order_no: str, amount: int, reason: str,
                  payment_ref: str | None, session: AsyncClientSession | None = None,
                  **extra: Any) -> bool:
        """Owe ``amount`` back (once per id); True when this call made it owed."""
        done = await self._requests.update_one(
            {"_id": request_id},
            {"$setOnInsert": {"order_no": order_no, "amount": amount, "reason": reason,
                              "status": "requested", "payment_ref": payment_ref,
                              "created_at": _now(), **extra}},
            upsert=True, session=session)
        return done.upserted_id is not None

    # --- reading ----------------------------------------------------------------------------
    async def get(self, request_id: str) -> dict[str, Any] | None:
        return await self._requests.find_one({"_id": request_id})

    async def of_order(self, order_no: str) -> list[dict[str, Any]]:
        return await self._requests.find({"order_no": order_no}).sort(
            "created_at", 1).to_list()

    async def by_refund_no(self, out_refund_no: str) -> dict[str, Any] | None:
        return await self._requests.find_one({"out_refund_no": out_refund_no})

    async def listed(self, status: str | None, page: Page
                     ) -> tuple[list[dict[str, Any]], int]:
        query = {"status": status} if status else {}
        return await find_page(self._requests, query, [("created_at", -1), ("_id", 1)], page)

    async def processing_since(self, before: dt.datetime, limit: int = 100
                               ) -> list[dict[str, Any]]:
        """At their provider since before ``before``, with no outcome heard."""
        return await self._requests.find(
            {"status": "processing", "processing_at": {"$lte": before}}).limit(limit).to_list()

    # --- sending ------------------------------------------------------------------------------
    async def requeue_abandoned(self, before: dt.datetime) -> None:
        """Requests a worker took before ``before`` and never finished: its process died."""
        await self._requests.update_many({"status": "sending", "sending_at": {"$lte": before}},
                                         {"$set": {"status": "requested"}})

    async def claim(self, now: dt.datetime) -> dict[str, Any] | None:
        """The next request due, for this worker alone."""
        return await self._requests.find_one_and_update(
            {"status": "requested", "$or": [{"retry_at": {"$exists": False}},
                                            {"retry_at": {"$lte": now}}]},
            {"$set": {"status": "sending", "sending_at": _now()}},
            return_document=ReturnDocument.AFTER)

    async def numbered(self, request_id: str, out_refund_no: str, provider: str) -> None:
        """The refund number and provider it is sent under."""
        await self._requests.update_one({"_id": request_id},
                                         {"$set": {"out_refund_no": out_refund_no,
                                                   "provider": provider}})

    async def retry_later(self, request_id: str, error: str, at: dt.datetime) -> None:
        """The provider could not be reached: send again from ``at``."""
        await self._requests.update_one({"_id": request_id, "status": "sending"},
                                        {"$set": {"status": "requested", "error": error[:200],
                                                  "retry_at": at}})

    async def nothing_to_refund(self, request_id: str, error: str) -> None:
        await self._requests.update_one({"_id": request_id},
                                        {"$set": {"status": "failed", "error": error}})

    async def accepted(self, request_id: str, refund_id: str) -> None:
        """At the provider, outcome to come (a notice or a query tells)."""
        await self._requests.update_one(
            {"_id": request_id, "status": {"$in": list(IN_FLIGHT)}},
            {"$set": {"status": "processing", "processing_at": _now(),
                      "refund_id": refund_id}})

    async def asked(self, request_id: str) -> None:
        """Asked the provider, still processing: ask again later."""
        await self._requests.update_one({"_id": request_id, "status": "processing"},
                                        {"$set": {"processing_at": _now()}})

    # --- outcomes ---------------------------------------------------------------------------
    async def settle(self, request_id: str, session: AsyncClientSession, *,
                     from_states: tuple[str, ...] = IN_FLIGHT, **fields: Any) -> bool:
        """The money is back: done, once (False for a repeat, e.g. a duplicate notice)."""
        moved = await self._requests.update_one(
            {"_id": request_id, "status": {"$in": list(from_states)}},
            {"$set": {"status": "done", "done_at": _now(), **fields}}, session=session)
        return moved.modified_count == 1

    async def needs_attention(self, request_id: str, state: str, detail: str
                              ) -> dict[str, Any] | None:
        """Closed, abnormal or refused at the provider: finance's queue (None if it had
        already left flight)."""
        return await self._requests.find_one_and_update(
            {"_id": request_id, "status": {"$in": list(IN_FLIGHT)}},
            {"$set": {"status": "attention", "provider_state": state, "error": detail[:200],
                      "attention_at": _now()}})

    async def resend(self, request_id: str, actor: dict[str, Any], note: str
                     ) -> dict[str, Any] | None:
        """Finance sends a closed or refused refund again, under a new number."""
        return await self._requests.find_one_and_update(
            {"_id": request_id, "status": "attention"},
            {"$set": {"status": "requested"}, "$inc": {"resubmits": 1},
             "$unset": {"retry_at": "", "out_refund_no": ""},
             "$push": {"actions": {"action": "retry", "by": actor, "note": note,
                                   "at": _now()}}},
            return_document=ReturnDocument.AFTER)

    async def resolved(self, request_id: str, actor: dict[str, Any], note: str,
                       session: AsyncClientSession) -> bool:
        """Finance paid it back another way: done, with who and how."""
        moved = await self._requests.update_one(
            {"_id": request_id, "status": "attention"},
            {"$set": {"status": "done", "done_at": _now(), "resolved_manually": True},
             "$push": {"actions": {"action": "resolve", "by": actor, "note": note,
                                   "at": _now()}}}, session=session)
        return moved.modified_count == 1
