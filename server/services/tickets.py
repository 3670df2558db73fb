"""Tickets after the sale: refund (退票) with a quoted fee, void (废票), change (改签).

Each operation first moves the ticket into a busy state with one guarded update, so two
refunds of one ticket cannot both run; then gives the seat back at the station (or takes the
new one); then records the outcome and, where money goes back, a refund request that the
payments capability pays through the original channel. If the station step fails, the
ticket returns to where it was and nothing else changed.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from server.clock import LOCAL_TZ, local_today, now_ms
from server.errors import DomainError
from server.exchange.base import HoldRequest, TicketInfo
from server.exchange.errors import DepartureNotFound, ExchangeError
from server.security.principal import Principal
from server.security.seals import Seal
from server.services.alerts import AlertService
from server.services.audit import AuditService
from server.services.jobs import RecordFailures
from server.services.orders import OrderService
from server.services.realname import id_index, same_person, validate
from server.services.rules import RuleService
from server.services.seats import SeatService
from server.storage import refunds
from server.storage.attempts import WindowLimit
from server.storage.departures import DepartureRecords
from server.storage.transactions import transact

log = logging.getLogger(__name__)

REFUNDABLE = ("issued", "picked_up")
BUSY = ("refunding", "voiding", "changing")  # half-way, with a plan to finish or undo
STUCK_AFTER = dt.timedelta(minutes=2)  # busy this long: its process died or the station hung
PICKUP_AHEAD, PICKUP_LATE = dt.timedelta(hours=24), dt.timedelta(hours=1)  # by ID card
STUCK_ALERT_AFTER = dt.timedelta(hours=1)  # and still not settled: an operator looks
PICKUP_FAILURES_PER_DEVICE = 10  # wrong pickup codes per kiosk or window in the window below
PICKUP_FAILURES_PER_STATION = 60
PICKUP_WINDOW_SECONDS = 600
QUOTE_VALID = dt.timedelta(minutes=10)  # a refund quote's offer holds this long


class TicketService:
    def __init__(self, db: AsyncDatabase[Any], seats: SeatService, rules: RuleService,
                 orders: OrderService, audit: AuditService, redis: Redis,
                 alerts: AlertService, quotes: Seal,
                 failures: RecordFailures | None = None) -> None:
        self.alerts = alerts
        self._quotes = quotes
        self.failures = failures or RecordFailures()
        self._pickup_by_device = WindowLimit(redis, "pickup-device",
                                              PICKUP_FAILURES_PER_DEVICE, PICKUP_WINDOW_SECONDS)
        self._pickup_by_station = WindowLimit(redis, "pickup-station",
                                               PICKUP_FAILURES_PER_STATION,
                                               PICKUP_WINDOW_SECONDS)
        self._db = db
        self._seats = seats
        self._rules = rules
        self._orders = orders
        self._holds = orders.holds  # hold, sell, release and return go through it
        self._book = orders.book  # and every write of a ticket
        self._audit = audit

    async def _load(self, actor: Principal, ticket_no: str
                    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        ticket = await self._db.tickets.find_one({"ticket_no": ticket_no})
        if ticket is None:
            raise DomainError("TICKET_NOT_FOUND")
        order = await self._db.orders.find_one({"order_no": ticket["order_no"],
                                                **self._orders.scope(actor)})
        if order is None:  # someone else's ticket looks like no ticket
            raise DomainError("TICKET_NOT_FOUND")
        dep = await self._db.departures.find_one({"_id": ticket["departure_id"]})
        return ticket, order, dep or {}

    async def visible(self, actor: Principal, ticket_no: str
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A ticket the actor may see, with its departure (TICKET_NOT_FOUND otherwise)."""
        ticket, _, dep = await self._load(actor, ticket_no)
        return ticket, dep

    async def pickup(self, actor: Principal, pickup_code: str, id_no: str | None = None,
                     id_type: str = "resident_id") -> dict[str, Any]:
        """取票 at a kiosk or window with the ticket's 8-digit pickup code (and the passenger's
        ID card when read): the station records the printed ticket. Only tickets of the
        actor's station; an unknown code and a wrong person look the same, and so does a
        used code unless the passenger's ID card was read. Wrong codes are limited per
        device and per station (8 digits are guessable without a limit)."""
        device, station = actor.id, actor.station_id or "-"
        wait = max(await self._pickup_by_device.blocked(device),
                   await self._pickup_by_station.blocked(station))
        if wait:
            raise DomainError("TOO_MANY_ATTEMPTS", retry_after=wait)
        try:
            return await self._pickup(actor, pickup_code, id_no, id_type)
        except DomainError as exc:
            if exc.code == "PICKUP_CODE_INVALID":
                await self._pickup_by_device.count(device)
                await self._pickup_by_station.count(station)
                await self._audit.record(actor, "ticket.pickup", outcome="denied",
                                         details={"reason": "wrong code"})
            raise

    async def _pickup(self, actor: Principal, pickup_code: str, id_no: str | None,
                      id_type: str) -> dict[str, Any]:
        found = []
        async for t in self._db.tickets.find({"pickup_code": pickup_code}):
            if t["status"] not in ("issued", "picked_up"):
                continue
            dep = await self._db.departures.find_one({"_id": t["departure_id"]}) or {}
            if actor.station_id and dep.get("station_id") != actor.station_id:
                continue
            if id_no is not None and not same_person(self._orders.vault, t["passenger"],
                                                     id_type, id_no):
                continue
            found.append((t, dep))
        if not found:
            raise DomainError("PICKUP_CODE_INVALID")
        if len(found) > 1:
            raise DomainError("PICKUP_NEEDS_ID")
        ticket, dep = found[0]
        if ticket["status"] == "picked_up":
            if id_no is None:  # a bare guess learns nothing from a used code
                raise DomainError("PICKUP_CODE_INVALID")
            raise DomainError("ALREADY_PICKED_UP",
                              at=ticket["picked_up"]["at"].astimezone(LOCAL_TZ).isoformat())
        return await self._print(actor, ticket, dep)

    async def pickup_by_id(self, actor: Principal, id_type: str, id_no: str
                           ) -> dict[str, Any]:
        """取票 with the ID card alone: the card reader's number finds this person's tickets
        at the actor's station leaving within a day (or left within the hour), through the
        blind index, and each not yet picked up is printed. Finding nothing counts against
        the device and the station like a wrong pickup code (a typed-in number could be a
        guess)."""
        device, station = actor.id, actor.station_id or "-"
        wait = max(await self._pickup_by_device.blocked(device),
                   await self._pickup_by_station.blocked(station))
        if wait:
            raise DomainError("TOO_MANY_ATTEMPTS", retry_after=wait)
        index = id_index(self._orders.vault, validate(id_type, id_no))
        today, now = local_today(), now_ms()
        departures = {d["_id"]: d async for d in self._db.departures.find(
            {"station_id": station,
             "service_date": {"$in": [today.isoformat(),
                                      (today + dt.timedelta(days=1)).isoformat()]},
             "departs_at": {"$gte": now - PICKUP_LATE, "$lte": now + PICKUP_AHEAD}})}
        tickets = await self._db.tickets.find(
            {"departure_id": {"$in": list(departures)}, "passenger.id_no_index": index,
             "status": {"$in": ["issued", "picked_up"]}}).sort("ticket_no", 1).to_list()
        if not tickets:
            await self._pickup_by_device.count(device)
            await self._pickup_by_station.count(station)
            await self._audit.record(actor, "ticket.pickup", outcome="denied",
                                     details={"reason": "no ticket for this ID today"})
            raise DomainError("NO_TICKETS_TODAY")
        out = []
        for ticket in tickets:
            dep = departures[ticket["departure_id"]]
            if ticket["status"] == "picked_up":
                out.append({**_picked(ticket, dep, ticket["picked_up"].get(
                    "station_ticket_no") or ticket["ticket_no"]), "already": True})
                continue
            try:
                out.append({**await self._print(actor, ticket, dep), "already": False})
            except DomainError as exc:
                if exc.code != "ALREADY_PICKED_UP":  # another window was quicker
                    raise
        return {"tickets": out}

    async def _print(self, actor: Principal, ticket: dict[str, Any], dep: dict[str, Any]
                     ) -> dict[str, Any]:
        """The station prints the ticket; it is picked up."""
        printed = await self._seats.pickup(ticket["departure_id"], ticket["sale_id"],
                                           ticket["seat"])
        if not await self._book.picked_up(ticket["_id"], {
                "at": now_ms(), "by": actor.label, "station_ticket_no": printed}):
            raise DomainError("ALREADY_PICKED_UP")
        await self._audit.record(actor, "ticket.pickup", target=ticket["ticket_no"])
        return _picked(ticket, dep, printed or ticket["ticket_no"])

    # --- refund -------------------------------------------------------------------------------
    async def quote(self, actor: Principal, ticket_no: str) -> dict[str, Any]:
        """The refund fee and amount under the rules in force, before anything happens — and,
        for a refundable ticket, the same as a signed offer (``quote``) that holds until
        ``valid_until``: refunding with it costs that fee even if a tier boundary passes
        meanwhile."""
        ticket, _, dep = await self._load(actor, ticket_no)
        quote = await self._quote(ticket, dep)
        if quote["refundable"]:
            now = now_ms()
            until = now + QUOTE_VALID
            if now < dep["departs_at"]:  # an offer made before departure ends with it
                until = min(until, dep["departs_at"])
            quote["valid_until"] = until.astimezone(LOCAL_TZ).isoformat()
            quote["quote"] = self._quotes.wrap({
                "ticket_no": ticket_no, "fee": quote["fee"], "price": ticket["price"],
                "rules_version": quote["rules_version"], "tier": quote.get("tier"),
                "for": f"{actor.kind}:{actor.id}", "until": int(until.timestamp())})
        return quote

    def _offer(self, actor: Principal, ticket: dict[str, Any], sealed: str
               ) -> dict[str, Any]:
        """A refund quote this platform signed, for this ticket and this caller, in time."""
        offer = self._quotes.unwrap(sealed)
        if offer is None:
            raise DomainError("QUOTE_INVALID", "The refund quote is not one Keyun signed, or "
                              "was altered.", field="quote")
        if offer.get("ticket_no") != ticket["ticket_no"] or \
                offer.get("price") != ticket["price"]:
            raise DomainError("QUOTE_INVALID", "The refund quote is for another ticket.",
                              field="quote")
        if offer.get("for") != f"{actor.kind}:{actor.id}":
            raise DomainError("QUOTE_INVALID", "The refund quote was made for someone else.",
                              field="quote")
        if int(offer.get("until", 0)) < now_ms().timestamp():
            raise DomainError("QUOTE_EXPIRED", field="quote")
        return offer

    async def _quote(self, ticket: dict[str, Any], dep: dict[str, Any]) -> dict[str, Any]:
        rules = await self._rules.for_departure(dep)
        disruption = (dep.get("disruption") or {}).get("kind")
        cancelled = dep.get("status") == "cancelled" or disruption == "cancelled"
        fee = None
        if ticket["status"] in REFUNDABLE:
            fee = rules.refund_fee(ticket["price"], dep["departs_at"], now_ms(),
                                   cancelled or disruption == "delayed")
        out: dict[str, Any] = {"ticket_no": ticket["ticket_no"], "price": ticket["price"],
                               "refundable": fee is not None, "rules_version": rules.version}
        if fee is None:
            out["reason"] = "departed" if ticket["status"] in REFUNDABLE else ticket["status"]
            return out
        tier = rules.tier(dep["departs_at"], now_ms())
        free = cancelled or disruption == "delayed"
        if tier is not None and not free:
            out["tier"] = {"hours_before": tier.hours_before, "rate_bp": tier.rate_bp,
                           "min_fee": tier.min_fee}
        out.update(fee=fee, refund_amount=ticket["price"] - fee,
                   explanation="班次取消，全额退款" if cancelled else
                   "班次延误，全额退款" if disruption == "delayed" else
                   _tier_words(rules, tier) if tier is not None else "已过发车时间，按规则退票")
        return out

    async def refund(self, actor: Principal, ticket_no: str,
                     expected_fee: int | None = None, quote: str | None = None
                     ) -> dict[str, Any]:
        """Refund a ticket at the fee of now — or, with a signed quote still valid, at the
        quote's fee (the lower one, should the departure have been cancelled since)."""
        ticket, order, dep = await self._load(actor, ticket_no)
        offer = self._offer(actor, ticket, quote) if quote else None
        now = await self._quote(ticket, dep)
        if not now["refundable"]:
            raise DomainError("NOT_REFUNDABLE", reason=now.get("reason"))
        if offer is not None and int(offer["fee"]) < now["fee"]:
            now.update(fee=int(offer["fee"]), refund_amount=ticket["price"] - int(offer["fee"]),
                       rules_version=offer["rules_version"], quoted=True)
            if offer.get("tier"):
                now["tier"] = offer["tier"]
            else:
                now.pop("tier", None)
        if offer is None and expected_fee is not None and expected_fee != now["fee"]:
            raise DomainError("REFUND_FEE_CHANGED", fee=now["fee"])
        if now.pop("quoted", False):
            now["explanation"] = "按报价时的退票费退票"
        await self._refund(ticket, order, now, actor.label, "refund")
        await self._audit.staff_action(actor, "ticket.refund", target=ticket_no,
                                       details={"fee": now["fee"],
                                                "amount": now["refund_amount"],
                                                "quoted": offer is not None})
        return {**now, "status": "refunded"}

    async def _refund(self, ticket: dict[str, Any], order: dict[str, Any],
                      quote: dict[str, Any], actor: str, reason: str) -> None:
        busy = await self._begin(ticket, "refunding", {
            "fee": quote["fee"], "amount": quote["refund_amount"], "actor": actor,
            "reason": reason})
        try:
            await self._holds.return_seats(ticket["departure_id"], ticket["sale_id"],
                                           (ticket["seat"],), "refund")
        except ExchangeError:
            await self._book.back_to(ticket["_id"], busy["status"])
            raise
        await self._finish(ticket, order, "refunded", quote["fee"], quote["refund_amount"],
                           actor, reason)

    async def settle_disruptions(self, limit: int = 20) -> int:
        """Disrupted departures past their deadline: every passenger who neither refunded
        nor changed is refunded in full. Each ticket once (a refunded one is no longer
        issued), so a run that dies half-way is finished by the next; the departure is
        marked settled when none is left. Returns the tickets refunded."""
        due = await self._db.departures.find(
            {"disruption.settled": False, "disruption.deadline": {"$lte": now_ms()}}
        ).limit(limit).to_list()
        refunded = 0
        for dep in due:
            query = {"departure_id": dep["_id"], "status": {"$in": list(REFUNDABLE)}}
            async for ticket in self._db.tickets.find(query):
                with self.failures.record("disruption-refunds", ticket["ticket_no"]):
                    order = await self._db.orders.find_one({"order_no": ticket["order_no"]})
                    quote = await self._quote(ticket, dep)
                    if order is None or not quote["refundable"]:
                        continue
                    try:
                        await self._refund(ticket, order, quote, "system",
                                           f"disruption: {dep['disruption']['kind']}")
                        refunded += 1
                    except (DomainError, ExchangeError) as exc:  # busy, or station silent
                        log.warning("disrupted ticket not refunded yet: %s", exc.code,
                                    extra={"fields": {"ticket_no": ticket["ticket_no"]}})
            # busy, or the station did not answer: left for the next run
            if not await self._db.tickets.count_documents(query, limit=1):
                await DepartureRecords(self._db).disruption_settled(dep["_id"])
        return refunded

    # --- void (废票) -------------------------------------------------------------------------
    async def void(self, actor: Principal, ticket_no: str, reason: str) -> dict[str, Any]:
        """Station staff cancel a misissued ticket: seat back on sale, full amount back."""
        ticket, order, dep = await self._load(actor, ticket_no)
        if ticket["status"] not in REFUNDABLE:
            raise DomainError("NOT_REFUNDABLE", reason=ticket["status"])
        window = (await self._rules.for_departure(dep)).void_window_minutes
        issued = ticket.get("issued_at") or ticket["created_at"]
        if now_ms() - issued > dt.timedelta(minutes=window):
            raise DomainError("VOID_WINDOW_PASSED", minutes=window)
        busy = await self._begin(ticket, "voiding", {
            "fee": 0, "amount": ticket["price"], "actor": actor.label,
            "reason": f"void: {reason}"})
        try:
            await self._holds.return_seats(ticket["departure_id"], ticket["sale_id"],
                                           (ticket["seat"],), "void")
        except ExchangeError:
            await self._book.back_to(ticket["_id"], busy["status"])
            raise
        await self._finish(ticket, order, "voided", 0, ticket["price"], actor.label,
                           f"void: {reason}")
        await self._audit.record(actor, "ticket.void", target=ticket_no,
                                 details={"reason": reason, "order_no": order["order_no"]})
        return {"ticket_no": ticket_no, "status": "voided", "refund_amount": ticket["price"]}

    async def _begin(self, ticket: dict[str, Any], busy: str, plan: dict[str, Any]
                     ) -> dict[str, Any]:
        """Mark the ticket busy with what is being done to it, so that if this process dies
        or the station does not answer, ``resolve_stuck`` can finish or undo it."""
        before = await self._book.begin(ticket["_id"], busy,
                                        {**plan, "from": ticket["status"]},
                                        list(REFUNDABLE), now_ms())
        if before is None:
            raise DomainError("TICKET_BUSY")
        return before  # type: ignore[no-any-return]

    async def _finish(self, ticket: dict[str, Any], order: dict[str, Any], status: str,
                      fee: int, amount: int, actor: str, reason: str) -> None:
        now = now_ms()

        async def write(session: AsyncClientSession) -> None:
            """The ticket ends and the money it is owed is asked for: both or neither."""
            await self._book.end(ticket["_id"], status, {
                "fee": fee, "amount": amount, "at": now, "reason": reason}, session)
            if self._orders.webhooks is not None:
                await self._orders.webhooks.ticket_ended(order, ticket, status, amount, now,
                                                         session)
            if amount > 0:
                await self._orders.refunds.owe(
                    refunds.for_ticket(ticket["ticket_no"]), order_no=order["order_no"],
                    amount=amount, reason=reason, payment_ref=order.get("payment_ref"),
                    session=session, ticket_no=ticket["ticket_no"], fee=fee)
        await transact(self._db, write)
        await self._orders.announce(order["order_no"], "ticket", {
            "ticket_no": ticket["ticket_no"], "status": status, "refund_amount": amount})
        left = await self._db.tickets.count_documents(
            {"order_no": order["order_no"], "active": True})
        if left == 0:
            await self._orders.transition(order["order_no"], "refunded", actor, reason,
                                          from_states={"issued", "refunding"})

    # --- recovery ----------------------------------------------------------------------------
    async def settle_now(self, actor: Principal, ticket_no: str) -> dict[str, Any]:
        """The order desk settles a ticket stuck half-way through a refund, void or change
        now, as the recovery job would (audited); ``settled`` False if the station still
        does not answer."""
        ticket, _, _ = await self._load(actor, ticket_no)
        if ticket["status"] not in BUSY:
            raise DomainError("TICKET_NOT_STUCK", status=ticket["status"])
        settled = bool(await self._resolve(ticket))
        await self._audit.record(actor, "ticket.settle", target=ticket_no,
                                 details={"was": ticket["status"], "settled": settled})
        after = await self._db.tickets.find_one({"_id": ticket["_id"]}, {"status": 1})
        return {"ticket_no": ticket_no, "settled": settled,
                "status": (after or ticket)["status"]}

    async def resolve_stuck(self, limit: int = 50) -> int:
        """Tickets left refunding, voiding or changing — the process died, or the station did
        not answer in time, mid-operation: ask the station what it did and finish or undo,
        never leave them so. One that cannot be settled now waits for the next run."""
        due = await self._db.tickets.find(
            {"status": {"$in": list(BUSY)},
             "busy_since": {"$lte": now_ms() - STUCK_AFTER}}).limit(limit).to_list()
        settled = 0
        for ticket in due:
            with self.failures.record("ticket-recovery", ticket["ticket_no"]):
                settled += await self._resolve(ticket)
        return settled

    async def _resolve(self, ticket: dict[str, Any]) -> int:
        busy = ticket.get("busy") or {}
        order = await self._db.orders.find_one({"order_no": ticket["order_no"]})
        if order is None:
            return 0
        back = busy.get("from", "issued")
        if ticket["status"] == "changing":
            # the new ticket would have been written with the old one's end (one transaction):
            # it was not, so the change is undone — a seat taken at the target goes back
            target, hold_id = busy.get("target", ""), busy.get("hold_id", "")
            try:
                taken = await self._seats.query(target, hold_id)
                if taken.status == "sold" and taken.seats:
                    await self._holds.return_seats(target, taken.sale_id, taken.seats)
                elif taken.status == "held":
                    await self._holds.release_change(target, hold_id)
            except DepartureNotFound:
                pass
            except ExchangeError as exc:
                log.warning("stuck change not undone yet: %s", exc.code,
                            extra={"fields": {"ticket_no": ticket["ticket_no"]}})
                return 0
            await self._book.back_to(ticket["_id"], back, from_status="changing",
                                     clear_busy=True)
            return 1
        try:
            sale = await self._seats.query(ticket["departure_id"], ticket["sale_id"])
            still_sold = sale.status in ("sold", "held") and ticket["seat"] in sale.seats
            if still_sold:  # the station never did it: do it now (the passenger asked)
                await self._holds.return_seats(
                    ticket["departure_id"], ticket["sale_id"], (ticket["seat"],),
                    "refund" if ticket["status"] == "refunding" else "void")
        except ExchangeError as exc:
            log.warning("stuck ticket not settled yet: %s", exc.code,
                        extra={"fields": {"ticket_no": ticket["ticket_no"]}})
            if ticket["busy_since"] <= now_ms() - STUCK_ALERT_AFTER:
                await self.alerts.raise_alert(
                    "ticket_stuck", f"ticket:{ticket['ticket_no']}",
                    f"车票 {ticket['ticket_no']} 退票/废票未完成：车站系统无应答（{exc.code}）",
                    {"ticket_no": ticket["ticket_no"], "status": ticket["status"]})
            return 0
        final = "refunded" if ticket["status"] == "refunding" else "voided"
        await self._finish(ticket, order, final, int(busy.get("fee", 0)),
                           int(busy.get("amount", ticket["price"])),
                           busy.get("actor", "system"), busy.get("reason", final))
        return 1

    # --- change (改签) -------------------------------------------------------------------------
    async def change(self, actor: Principal, ticket_no: str, departure_id: str
                     ) -> dict[str, Any]:
        """To another departure of the same route and stops, once, when the fare is the
        same: the new seat is taken and sold first, then the old one given back."""
        ticket, order, dep = await self._load(actor, ticket_no)
        rules = await self._rules.for_departure(dep)
        disruption = dep.get("disruption")  # a disrupted passenger changes freely, once more
        if disruption and disruption["deadline"] <= now_ms():
            disruption = None
        if ticket["status"] not in REFUNDABLE or (
                ticket.get("changes", 0) >= rules.changes_allowed and not disruption):
            raise DomainError("NOT_CHANGEABLE", reason="status or change count")
        if not disruption and dep["departs_at"] - now_ms() < dt.timedelta(
                minutes=rules.change_cutoff_minutes):
            raise DomainError("NOT_CHANGEABLE", reason="too close to departure")
        target = await self._db.departures.find_one({"_id": departure_id})
        if target is None or target["route_id"] != dep["route_id"] or \
                target["_id"] == dep["_id"]:
            raise DomainError("NOT_CHANGEABLE", reason="another departure of the same route",
                              field="departure_id")
        if target["status"] != "on_sale" or target["departs_at"] - now_ms() < dt.timedelta(
                minutes=rules.online_cutoff_minutes):
            raise DomainError("SALE_CLOSED", field="departure_id")
        fare = await self._db.fares.find_one(
            {"route_id": target["route_id"], "from_seq": ticket["from_seq"],
             "to_seq": ticket["to_seq"]}, sort=[("effective_from", -1)])
        new_price = None if fare is None else fare["prices"].get(ticket["ticket_type"])
        if new_price is None or (new_price != ticket["price"] and not disruption):
            raise DomainError("CHANGE_FARE_DIFFERS")
        # disrupted: a cheaper departure refunds the difference, a dearer one costs nothing
        difference = max(0, ticket["price"] - int(new_price)) if disruption else 0
        clash = await self._db.tickets.find_one(
            {"departure_id": departure_id, "active": True,
             "passenger.id_no_index": ticket["passenger"]["id_no_index"]})
        if clash is not None:
            raise DomainError("PASSENGER_ALREADY_BOOKED")
        hold_id = f"C{ticket['ticket_no']}"
        busy = await self._begin(ticket, "changing", {"target": departure_id,
                                                      "hold_id": hold_id,
                                                      "actor": actor.label})
        try:
            hold = await self._holds.hold(departure_id, HoldRequest(
                hold_id, order["channel"], 1, ticket["from_seq"], ticket["to_seq"],
                ttl_seconds=300, limited=self._orders.channel_of(order).limited),
                for_order=False)
            sale = await self._holds.sell(departure_id, hold_id, [TicketInfo(
                hold.seats[0], ticket["passenger"]["name"], ticket["ticket_type"],
                ticket["price"])])
        except ExchangeError:
            await self._book.back_to(ticket["_id"], busy["status"])
            raise
        now = now_ms()
        new = {k: v for k, v in ticket.items() if k not in ("_id", "refund")}
        new.update(ticket_no=f"{ticket['ticket_no']}C", departure_id=departure_id,
                   seat=hold.seats[0], status="issued", active=True, sale_id=sale.sale_id,
                   station_ticket_no=(sale.station_ticket_nos or ("",))[0],
                   changed_from=ticket["ticket_no"], changes=ticket.get("changes", 0) + 1,
                   price=ticket["price"] - difference, issued_at=now, created_at=now)
        new.pop("busy", None)
        new.pop("busy_since", None)

        async def write(session: AsyncClientSession) -> None:
            """The old ticket ends and the new one exists (and a fare difference is owed
            back): all or nothing."""
            await self._book.change(ticket["_id"], new, session)
            if difference:
                await self._orders.refunds.owe(
                    refunds.for_fare_difference(ticket["ticket_no"]),
                    order_no=order["order_no"], amount=difference,
                    reason="fare difference of a disruption change",
                    payment_ref=order.get("payment_ref"), session=session,
                    ticket_no=ticket["ticket_no"], fee=0)

        await transact(self._db, write)
        try:
            await self._holds.return_seats(dep["_id"], ticket["sale_id"], (ticket["seat"],))
        except ExchangeError as exc:  # the new ticket stands; the old seat is settled later
            log.error("old seat not returned after change: %s", exc.code,
                      extra={"fields": {"ticket_no": ticket_no}})
        await self._audit.staff_action(actor, "ticket.change", target=ticket_no,
                                       details={"to": new["ticket_no"],
                                                "departure_id": departure_id})
        return {"ticket_no": new["ticket_no"], "departure_id": departure_id,
                "seat": new["seat"], "status": "issued", "changed_from": ticket_no,
                "departs_at": target["departs_at"].astimezone(LOCAL_TZ).isoformat()}


def _tier_words(rules: Any, tier: Any) -> str:
    """``距发车2小时以上，按票价10%收取退票费（最低¥0.50）``."""
    above = [t.hours_before for t in rules.refund_tiers if t.hours_before > tier.hours_before]
    if tier.hours_before > 0:
        when = f"距发车{tier.hours_before:g}至{min(above):g}小时" if above else \
            f"距发车{tier.hours_before:g}小时以上"
    else:
        when = f"距发车不足{min(above):g}小时" if above else "发车前"
    rate = f"{tier.rate_bp / 100:g}%"
    return f"{when}，按票价{rate}收取退票费（最低¥{tier.min_fee / 100:.2f}）"


def _picked(ticket: dict[str, Any], dep: dict[str, Any], printed: str) -> dict[str, Any]:
    """A picked-up ticket as the kiosk or window shows it."""
    return {"ticket_no": ticket["ticket_no"], "status": "picked_up",
            "departure_id": ticket["departure_id"], "seat": ticket["seat"],
            "departs_at": dep["departs_at"].astimezone(LOCAL_TZ).isoformat(),
            "passenger": ticket["passenger"]["name"][:1] + "*",
            "ticket_type": ticket["ticket_type"], "station_ticket_no": printed}
