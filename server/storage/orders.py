"""The order aggregate's one owner: ``orders`` and their ``tickets`` — every write of either.

Services decide (``OrderService`` sells and moves orders, ``TicketService`` refunds, voids,
changes and prints tickets, ``GateService`` admits them); this module is the only code that
writes the documents, so each status change below is one guarded update and can be found
here by name.

Order statuses: the state machine is ``TRANSITIONS``; ``move`` is the one guarded write that
changes an order's status, appending to its ``history``.

Ticket statuses::

    held ─issued→ issued ─┬─ picked_up ─┐
      │                   ├─ checked_in  │   refunding / voiding / changing: busy, with the
      └→ released         └─ (busy) ─────┴─→ refunded / voided / changed   plan to finish
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from server.vocabulary import ANONYMIZED

TRANSITIONS: dict[str, set[str]] = {
    "pending_payment": {"paid", "waitlisted", "cancelled", "expired"},
    "waitlisted": {"paid", "failed"},  # a waitlist order, paid: filled, or ended and refunded
    "paid": {"issued", "failed"},
    "issued": {"completed", "refunding", "refunded"},
    "refunding": {"issued", "refunded"},
    "failed": {"refunded"},
    "cancelled": set(), "expired": set(), "completed": set(), "refunded": set(),
}

Session = AsyncClientSession | None


class OrderBook:
    """Writes of orders and tickets."""

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._orders = db.orders
        self._tickets = db.tickets

    async def live_tickets(self, orders_query: dict[str, Any]) -> int:
        """Tickets still held by the unpaid or sold orders matching (what quotas count)."""
        orders = await self._orders.distinct("order_no", {
            **orders_query, "status": {"$in": ["pending_payment", "paid", "issued",
                                               "completed"]}})
        if not orders:
            return 0
        return await self._tickets.count_documents({"order_no": {"$in": orders},
                                                    "active": True})

    # --- orders -------------------------------------------------------------------------------
    async def insert(self, order: dict[str, Any], tickets: list[dict[str, Any]],
                     session: AsyncClientSession) -> None:
        """A new order with its held tickets (the caller's transaction makes it all or
        nothing; the unique indexes decide one person one seat and ticket numbers)."""
        await self._orders.insert_one(order, session=session)
        if tickets:  # (a waitlist order has none until it is filled)
            await self.add_tickets(tickets, session)

    async def add_order(self, order: dict[str, Any]) -> None:
        """A new order without tickets yet (a waitlist order)."""
        await self._orders.insert_one(order)

    async def add_tickets(self, tickets: list[dict[str, Any]],
                          session: AsyncClientSession) -> None:
        """Held tickets of an order (a waitlist order's, when it is filled)."""
        await self._tickets.insert_many(tickets, session=session)

    async def move(self, order_no: str, to: str, allowed: set[str], entry: dict[str, Any],
                   set_fields: dict[str, Any] | None, session: Session
                   ) -> dict[str, Any] | None:
        """The order to ``to`` if its status is in ``allowed``, with ``entry`` (at, actor,
        reason) appended to its history; the moved order, or None if it was not there."""
        at = entry["at"]
        doc = await self._orders.find_one_and_update(
            {"order_no": order_no, "status": {"$in": sorted(allowed)}},
            [{"$set": {"history": {"$concatArrays": ["$history", [
                {"at": at, "from": "$status", "to": to,
                 "actor": {"$literal": entry["actor"]},
                 "reason": {"$literal": entry["reason"]}}]]},
                "status": to, "updated_at": at,
                **{k: {"$literal": v} for k, v in (set_fields or {}).items()}}}],
            return_document=ReturnDocument.AFTER, session=session)
        return doc  # type: ignore[no-any-return]

    async def issue_attempted(self, order_no: str, at: dt.datetime) -> None:
        await self._orders.update_one({"order_no": order_no},
                                      {"$set": {"issue_attempted_at": at}})

    async def expiry_warned(self, order_no: str) -> None:
        await self._orders.update_one({"order_no": order_no}, {"$set": {"expiry_warned": True}})

    # --- tickets of an order ------------------------------------------------------------------
    async def release_tickets(self, order_no: str, session: Session, *,
                              only_held: bool = True) -> None:
        """The order's tickets end with it (and free their one-person-one-seat keys): the
        unsold ones when an unpaid order ends, all of them when issuing failed."""
        query: dict[str, Any] = {"order_no": order_no}
        if only_held:
            query["status"] = "held"
        await self._tickets.update_many(query, {"$set": {"status": "released",
                                                         "active": False}}, session=session)

    async def issued(self, ticket_id: Any, sale_id: str, station_ticket_no: str,
                     at: dt.datetime) -> None:
        await self._tickets.update_one(
            {"_id": ticket_id}, {"$set": {"status": "issued", "sale_id": sale_id,
                                          "station_ticket_no": station_ticket_no,
                                          "issued_at": at}})

    # --- one ticket ---------------------------------------------------------------------------
    async def picked_up(self, ticket_id: Any, picked: dict[str, Any]) -> bool:
        """issued → picked_up (a paper ticket printed); False if it was not issued."""
        done = await self._tickets.update_one({"_id": ticket_id, "status": "issued"},
                                              {"$set": {"status": "picked_up",
                                                        "picked_up": picked}})
        return done.modified_count == 1

    async def pickup_code(self, ticket_id: Any, code: str) -> str:
        """Give the ticket its pickup code once; the code it has."""
        await self._tickets.update_one({"_id": ticket_id, "pickup_code": {"$exists": False}},
                                       {"$set": {"pickup_code": code}})
        doc = await self._tickets.find_one({"_id": ticket_id}, {"pickup_code": 1})
        return str((doc or {}).get("pickup_code", code))  # the first one given stands

    async def check_in(self, ticket_id: Any, valid: list[str], record: dict[str, Any]
                       ) -> bool:
        """Admit at the gate: of concurrent scans exactly one matches. (update_one rather
        than find_one_and_update: the same guarantee, and SecantusDB runs findAndModify as
        a collection scan — docs/secantusdb.md)"""
        admitted = await self._tickets.update_one(
            {"_id": ticket_id, "status": {"$in": valid}},
            {"$set": {"status": "checked_in", "active": True, "checked_in": record}})
        return admitted.modified_count == 1

    async def begin(self, ticket_id: Any, busy: str, plan: dict[str, Any],
                    from_statuses: list[str], since: dt.datetime) -> dict[str, Any] | None:
        """Mark a ticket busy (refunding, voiding, changing) with the plan to finish or undo
        it; the ticket as it was, or None if it was not in one of ``from_statuses``."""
        before = await self._tickets.find_one_and_update(
            {"_id": ticket_id, "status": {"$in": from_statuses}},
            {"$set": {"status": busy, "busy_since": since, "busy": plan}},
            return_document=ReturnDocument.BEFORE)
        return before  # type: ignore[no-any-return]

    async def back_to(self, ticket_id: Any, status: str, *, from_status: str | None = None,
                      clear_busy: bool = False) -> None:
        """Undo a busy mark: the ticket is ``status`` again."""
        query: dict[str, Any] = {"_id": ticket_id}
        if from_status:
            query["status"] = from_status
        update: dict[str, Any] = {"$set": {"status": status}}
        if clear_busy:
            update["$unset"] = {"busy": "", "busy_since": ""}
        await self._tickets.update_one(query, update)

    async def end(self, ticket_id: Any, status: str, refund: dict[str, Any],
                  session: AsyncClientSession) -> None:
        """A ticket ends (refunded, voided) with what is paid back, in the caller's
        transaction with the refund request."""
        await self._tickets.update_one(
            {"_id": ticket_id},
            {"$set": {"status": status, "active": False, "refund": refund},
             "$unset": {"busy": "", "busy_since": ""}}, session=session)

    async def change(self, old_id: Any, new: dict[str, Any],
                     session: AsyncClientSession) -> None:
        """The old ticket ends and the new one exists (the caller's transaction)."""
        await self._tickets.update_one({"_id": old_id}, {"$set": {
            "status": "changed", "active": False, "changed_to": new["ticket_no"]}},
            session=session)
        await self._tickets.insert_one(new, session=session)

    # --- personal data past retention -----------------------------------------------------------
    async def anonymize(self, departure_ids: list[str], at: dt.datetime) -> tuple[int, int]:
        """Remove who travelled from the orders and tickets of these departures (their
        retention ran out): names, document numbers, contact phones and their blind indexes
        go; prices, fees, seats, channels, statuses and times — what settlement and the
        statistics read — stay. Repeating it changes nothing. Returns (orders, tickets).

        An anonymized ticket no longer holds its one-person-one-seat key (``active``): the
        key is the document's blind index, which is what anonymizing removes."""
        orders = await self._orders.update_many(
            {"departure_id": {"$in": departure_ids}, "anonymized_at": {"$exists": False}},
            [{"$set": {"anonymized_at": at, "contact_phone_masked": ANONYMIZED,
                       "children": {"$map": {"input": {"$ifNull": ["$children", []]},
                                             "in": {"name": ANONYMIZED}}}}},
             {"$unset": ["contact_phone_enc", "contact_phone_index"]}])
        await self._orders.update_many(  # a waitlist order's passengers, as tickets' below
            {"departure_id": {"$in": departure_ids},
             "waitlist.passengers.id_no_index": {"$exists": True}},
            [{"$set": {"waitlist.passengers": {"$map": {
                "input": "$waitlist.passengers",
                "in": {"name": ANONYMIZED, "id_type": "$$this.id_type",
                       "id_no_masked": ANONYMIZED, "ticket_type": "$$this.ticket_type",
                       "price": "$$this.price"}}}}}])
        tickets = await self._tickets.update_many(
            {"departure_id": {"$in": departure_ids}, "anonymized_at": {"$exists": False}},
            [{"$set": {"anonymized_at": at, "active": False,
                       "passenger": {"name": ANONYMIZED, "id_type": "$passenger.id_type",
                                     "id_no_masked": ANONYMIZED}}}])
        return orders.modified_count, tickets.modified_count
