"""Waitlist (候补购票), as 12306 runs it.

A passenger who finds a departure sold out files a waitlist order: 1–5 real-name passengers
on one or more acceptable departures of the same route and day (in order of preference),
with a deadline, and prepays it — it is an order (``kind: "waitlist"``) that holds no seats:
``pending_payment ─pay→ waitlisted``. When seats come back (a refund, a released hold, an
extra bus, a bigger vehicle) the ``waitlist`` job fills waiting orders in the order they were
paid for: seats held for the whole party on the first acceptable departure that has them,
tickets written and the order moved ``waitlisted → paid`` in one transaction, then issued as
any paid order (and pushed to its watchers). An order that asks more seats than have come
back keeps its place: later orders do not jump it on that departure. At its deadline (or
when the passenger cancels) an unfilled order ends ``waitlisted → failed`` with its whole
amount owed back.

Exactly once: the job runs in one process at a time (a lease), and the move out of
``waitlisted`` is guarded inside the transaction that writes the tickets — of two fillers
(a process that lost its lease mid-run) one writes, the other gives its hold back.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from server.clock import LOCAL_TZ, now_ms
from server.errors import DomainError
from server.exchange.base import HoldRequest
from server.exchange.errors import ExchangeError
from server.sales import SalesChannels
from server.security.pii import mask_phone
from server.security.principal import Principal
from server.services.audit import AuditService
from server.services.jobs import RecordFailures
from server.services.members import normalize_phone
from server.services.orders import OrderService, new_order_no
from server.services.rules import RuleService
from server.services.seats import SeatService

log = logging.getLogger(__name__)

MAX_DEPARTURES = 5  # acceptable departures of one waitlist order
WAITING = ("pending_payment", "waitlisted")
PASS = 200  # waiting orders looked at per run, oldest first


class WaitlistService:
    def __init__(self, db: AsyncDatabase[Any], orders: OrderService, seats: SeatService,
                 rules: RuleService, channels: SalesChannels, audit: AuditService,
                 failures: RecordFailures | None = None) -> None:
        self._db = db
        self._orders = orders
        self._seats = seats
        self._rules = rules
        self._channels = channels
        self._audit = audit
        self.failures = failures or RecordFailures()

    # --- filing -------------------------------------------------------------------------------
    async def file(self, actor: Principal, channel: str | None, departure_ids: list[str],
                   passengers: list[dict[str, Any]], contact_phone: str, deadline: dt.datetime,
                   from_seq: int | None = None, to_seq: int | None = None) -> dict[str, Any]:
        """A waitlist order, awaiting its prepayment (paid like any order)."""
        sold_on = self._channels.selling(actor, channel)
        ids = list(dict.fromkeys(departure_ids))  # in the passenger's order, each once
        if not 1 <= len(ids) <= MAX_DEPARTURES:
            raise DomainError("INVALID_VALUE", f"Name 1 to {MAX_DEPARTURES} departures.",
                              field="departure_ids")
        deps = []
        for departure_id in ids:
            dep = await self._db.departures.find_one({"_id": departure_id})
            if dep is None:
                raise DomainError("DEPARTURE_NOT_FOUND", field="departure_ids")
            deps.append(dep)
        first = deps[0]
        if any(d["route_id"] != first["route_id"] or
               d["service_date"] != first["service_date"] for d in deps):
            raise DomainError("WAITLIST_DEPARTURES_MIXED", field="departure_ids")
        rules = await self._rules.for_departure(first)
        if not 1 <= len(passengers) <= rules.max_passengers:
            raise DomainError("TOO_MANY_PASSENGERS_IN_ORDER", limit=rules.max_passengers)
        phone = normalize_phone(contact_phone)
        frm, to = await self._orders.segment(first, from_seq, to_seq)
        for dep in deps:
            await self._orders.check_on_sale(dep, await self._rules.for_departure(dep))
        now = now_ms()
        last_sale = max(d["departs_at"] for d in deps) - dt.timedelta(
            minutes=rules.online_cutoff_minutes)
        if not now + dt.timedelta(minutes=1) <= deadline <= last_sale:
            raise DomainError(
                "WAITLIST_DEADLINE_INVALID", field="deadline",
                latest=last_sale.astimezone(LOCAL_TZ).isoformat())
        for dep in deps:  # a departure with seats is bought, not waited for
            seats = await self._seats.availability(dep["_id"])
            if seats.status == "on_sale" and \
                    seats.remaining_between(frm, to) >= len(passengers):
                raise DomainError("WAITLIST_SEATS_AVAILABLE", departure_id=dep["_id"])
        fare = await self._orders.fare(first["route_id"], frm, to)
        people = await self._orders.priced_people(actor, passengers, fare)
        indexes = [p["id_no_index"] for p in people]
        taken = await self._db.tickets.find_one(
            {"departure_id": {"$in": ids}, "active": True,
             "passenger.id_no_index": {"$in": indexes}})
        if taken is not None:
            raise DomainError("PASSENGER_ALREADY_BOOKED",
                              passenger=taken["passenger"]["id_no_masked"])
        if await self._db.orders.find_one(
                {"status": {"$in": list(WAITING)}, "waitlist.departure_ids": {"$in": ids},
                 "waitlist.passengers.id_no_index": {"$in": indexes}}, {"_id": 1}):
            raise DomainError("PASSENGER_ALREADY_WAITING", field="passengers")
        order_no = new_order_no(now)
        vault = self._orders.vault
        order = {
            "order_no": order_no, "kind": "waitlist", "channel": sold_on.identifier,
            "departure_id": first["_id"], "route_id": first["route_id"],
            "station_id": first["station_id"], "from_seq": frm, "to_seq": to,
            "status": "pending_payment", "amount": sum(p["price"] for p in people),
            "expires_at": min(now + dt.timedelta(minutes=rules.payment_timeout_minutes),
                              deadline),
            "created_at": now,
            "contact_phone_enc": vault.encrypt("phone", phone),
            "contact_phone_masked": mask_phone(phone),
            "contact_phone_index": vault.index("phone", phone),
            "children": [], "actor": actor.audit_actor(), "rules_version": rules.version,
            "pay_at_pickup": False,
            "waitlist": {"departure_ids": ids, "deadline": deadline, "passengers": people,
                         "fare_id": fare["_id"], "limited": sold_on.limited},
            "history": [{"at": now, "from": None, "to": "pending_payment",
                         "actor": actor.label, "reason": "waitlist filed"}]}
        for key, value in (("member_id", actor.id if actor.kind == "member" else None),
                           ("outlet_id", actor.outlet_id),
                           ("partner_id", actor.id if actor.kind == "partner" else None)):
            if value:
                order[key] = value
        await self._orders.book.add_order(order)
        await self._audit.staff_action(actor, "waitlist.file", target=order_no, details={
            "departure_ids": ids, "passengers": len(people), "amount": order["amount"]})
        return self._orders.public(order, [])

    async def view(self, actor: Principal, order_no: str) -> dict[str, Any]:
        """A waitlist order as its buyer sees it, with how many are waiting ahead of it."""
        order = await self._orders.get(actor, order_no)
        if order.get("kind") != "waitlist":
            raise DomainError("ORDER_NOT_FOUND")
        if order["status"] == "waitlisted":
            stored = await self._orders.stored(order_no) or {}
            w = stored.get("waitlist") or {}
            order["waitlist"]["ahead"] = await self._db.orders.count_documents({
                "kind": "waitlist", "status": "waitlisted",
                "waitlist.departure_ids": {"$in": w["departure_ids"]},
                "$or": [{"waitlist.queued_at": {"$lt": w["queued_at"]}},
                        {"waitlist.queued_at": w["queued_at"],
                         "order_no": {"$lt": order_no}}]})
        return order

    # --- the waitlist job ---------------------------------------------------------------------
    async def run(self) -> int:
        """One pass over the queue, oldest first: end what is past its deadline, fill what
        the seats that came back allow. The number of orders filled."""
        now = now_ms()
        waiting = await self._db.orders.find(
            {"kind": "waitlist", "status": "waitlisted"}).sort(
            [("waitlist.queued_at", 1), ("order_no", 1)]).limit(PASS).to_list()
        blocked: set[str] = set()  # an earlier order waits for more seats than are back
        filled = 0
        departures: dict[str, dict[str, Any] | None] = {}
        for order in waiting:
            with self.failures.record("waitlist", order["order_no"]):
                w = order["waitlist"]
                if w["deadline"] <= now:
                    await self._orders.end_waitlisted(order, "waitlist deadline passed",
                                                      "system")
                    continue
                for departure_id in w["departure_ids"]:
                    if departure_id in blocked:
                        continue
                    if departure_id not in departures:
                        departures[departure_id] = await self._db.departures.find_one(
                            {"_id": departure_id})
                    dep = departures[departure_id]
                    outcome = await self._fill_on(order, dep) if dep else "closed"
                    if outcome == "filled":
                        filled += 1
                        break
                    if outcome == "short":
                        blocked.add(departure_id)
        return filled

    async def _fill_on(self, order: dict[str, Any], dep: dict[str, Any]) -> str:
        """Try to fill the order on this departure: ``filled``; ``short`` (not enough seats
        back: it keeps its place); ``closed`` (no sale there now); ``taken`` (a passenger
        holds a seat there already, or the order was filled or ended meanwhile)."""
        rules = await self._rules.for_departure(dep)
        try:
            await self._orders.check_on_sale(dep, rules)
        except DomainError:
            return "closed"
        w, order_no = order["waitlist"], order["order_no"]
        people, frm, to = w["passengers"], order["from_seq"], order["to_seq"]
        # (native: from Redis; a station system: its answer cached a few seconds, so a long
        # queue does not call the station every second)
        seats = await self._seats.availability(dep["_id"])
        if seats.remaining_between(frm, to) < len(people):
            return "short"
        hold_id = f"H{order_no}W{secrets.token_hex(3)}"
        try:
            hold = await self._orders.holds.hold(dep["_id"], HoldRequest(
                hold_id=hold_id, channel=order["channel"], count=len(people), from_seq=frm,
                to_seq=to, ttl_seconds=rules.payment_timeout_minutes * 60,
                limited=bool(w.get("limited"))))
        except ExchangeError as exc:  # sold again meanwhile, or the station is away
            log.info("waitlist not filled on %s: %s", dep["_id"], exc.code,
                     extra={"fields": {"order_no": order_no}})
            return "short"
        station = await self._db.stations.find_one({"_id": dep["station_id"]}, {"code": 1})
        fare = await self._db.fares.find_one({"_id": w["fare_id"]}) or {}
        now = now_ms()
        tickets = [self._orders.ticket_doc(
            await self._orders.ticket_number(station["code"] if station else "000000000",
                                             dep["service_date"]),
            order_no, dep["_id"], seat, frm, to, person, fare, 0, now)
            for person, seat in zip(people, hold.seats, strict=True)]
        if not await self._orders.fill_waitlisted(order, dep, hold.hold_id, tickets):
            return "taken"
        log.info("waitlist order filled", extra={"fields": {
            "order_no": order_no, "departure_id": dep["_id"], "tickets": len(tickets)}})
        await self._orders.issue(order_no)
        return "filled"
