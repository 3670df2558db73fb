"""Orders and real-name tickets (订单 / 车票), with an explicit state machine.

    pending_payment ─pay→ paid ─issue→ issued ─(all boarded)→ completed
          │ cancel / expire      └─station refuses→ failed ─→ refunded
          ↓                                 issued ─refund→ refunding → refunded
    cancelled / expired

    a waitlist order (候补, ``server/services/waitlist.py``): pending_payment ─pay→ waitlisted
    ─seats come back→ paid (on one of its departures) ─issue→ issued; cancelled or unfilled
    at its deadline: waitlisted → failed ─→ refunded, in full

Every transition is one atomic update guarded by the state it leaves, recorded in the
order's ``history`` with time, actor and reason; so of two racing transitions (expiry and
payment, say) exactly one happens, and the loser learns it. Seats are held through the
exchange layer with the payment timeout of the rules in force; the hold is released exactly
once when an unpaid order ends. A paid order is issued at the station; if the station
refuses, the order fails and a full refund is requested — never paid without a ticket.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from server import failpoints
from server.clock import LOCAL_TZ, local_today, now_ms
from server.errors import DomainError
from server.exchange.base import HoldRequest, TicketInfo
from server.exchange.errors import (
    ExchangeError,
    StationTimeout,
    StationUnreachable,
)
from server.outbox import NoticeOutbox
from server.paging import FIRST_PAGE, Page, find_page
from server.sales import SalesChannel, SalesChannels
from server.security.pii import PiiVault, mask_id, mask_phone
from server.security.principal import Principal
from server.services.audit import AuditService
from server.services.events import EventLog, Topic
from server.services.holds import HoldClaimed, SeatHolds
from server.services.jobs import RecordFailures
from server.services.members import MemberService, normalize_phone
from server.services.outlets import OutletService
from server.services.partners import PartnerService
from server.services.realname import id_index, validate
from server.services.rules import RuleService
from server.services.search import Network, NetworkCache
from server.services.webhooks import WebhookService
from server.storage import refunds
from server.storage.orders import TRANSITIONS, OrderBook
from server.storage.transactions import transact

log = logging.getLogger(__name__)

CHILD_TYPES = {"child"}
ISSUE_RETRY_AFTER = dt.timedelta(seconds=10)
EXPIRY_WARNING = dt.timedelta(minutes=5)


# KEYS: a ticket serial counter; ARGV: the highest serial in use. Raise it to that, take the next.
_SERIAL_FROM = """
if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return redis.call('INCR', KEYS[1])
"""


# KEYS: one person's booking claim on a departure; ARGV: the claim. Deleted only if still ours.
_RELEASE_CLAIM = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
BOOKING_CLAIM_MS = 30_000  # longer than any order takes to write; gone if its process dies


def _booking_key(departure_id: str, id_index: str) -> str:
    """An order for this person on this departure is being made (one key: any Redis slot)."""
    return f"booking:{{{departure_id}}}:{id_index}"


# writes that belong to an order's move to a new state: (the moved order, the transaction)
Also = Callable[[dict[str, Any], "AsyncClientSession | None"], Awaitable[None]]


class _NotWaiting(Exception):
    """The waitlist order was filled or ended by someone else meanwhile."""


class TicketNumberTaken(Exception):
    """A ticket number was in use already (the serial counter fell behind MongoDB)."""


DISRUPTABLE = ("issued", "refunding", "refunded", "completed")  # orders a disruption shows on


def _disruption(order: dict[str, Any], dep: dict[str, Any] | None) -> dict[str, Any]:
    """What a passenger of a disrupted departure may do, and until when: a fee-free refund
    or change (after the deadline the rest is refunded by itself)."""
    found = (dep or {}).get("disruption")
    if not found or order["status"] not in DISRUPTABLE:
        return {}
    open_ = found["deadline"] > now_ms() and order["status"] == "issued"
    return {"disruption": {"kind": found["kind"], "reason": found.get("reason", ""),
                           "options": ["refund", "change"] if open_ else [],
                           "deadline": found["deadline"].astimezone(LOCAL_TZ).isoformat()}}


def new_order_no(now: dt.datetime) -> str:
    """``KY`` + local date + 10 random digits: unguessable, sortable by day."""
    return f"KY{now.astimezone(LOCAL_TZ):%Y%m%d}{secrets.randbelow(10**10):010d}"


class OrderService:
    def __init__(self, db: AsyncDatabase[Any], redis: Redis, holds: SeatHolds,
                 events: EventLog, rules: RuleService, members: MemberService,
                 vault: PiiVault, channels: SalesChannels, audit: AuditService,
                 failures: RecordFailures | None = None,
                 outlets: OutletService | None = None,
                 webhooks: WebhookService | None = None,
                 partners: PartnerService | None = None,
                 network: NetworkCache | None = None) -> None:
        self._network = network  # stops, fares and station codes, as search reads them
        self._outlets = outlets
        self._partners = partners
        self.webhooks = webhooks  # a partner's orders are told to the partner
        self.failures = failures or RecordFailures()
        self._db = db
        self._redis = redis
        self.holds = holds  # the hold lifecycle's one owner
        self._events = events
        self._rules = rules
        self._members = members
        self._vault = vault
        self._channels = channels
        self._audit = audit
        self.notices = NoticeOutbox(db)
        self.refunds = refunds.RefundRequests(db)
        self.book = OrderBook(db)  # the order aggregate's writes
        self._serial_from = redis.register_script(_SERIAL_FROM)
        self._release_claim = redis.register_script(_RELEASE_CLAIM)

    # --- create -----------------------------------------------------------------------------
    async def create(self, actor: Principal, channel: str | None, departure_id: str,
                     passengers: list[dict[str, Any]], contact_phone: str, *,
                     children: list[dict[str, Any]] | None = None,
                     from_seq: int | None = None, to_seq: int | None = None,
                     pay_at_pickup: bool = False) -> dict[str, Any]:
        sold_on = self._channels.selling(actor, channel)
        dep = await self._db.departures.find_one({"_id": departure_id})
        if dep is None:
            raise DomainError("DEPARTURE_NOT_FOUND", field="departure_id")
        rules = await self._rules.for_departure(dep)  # its route's, station's, region's
        children = children or []
        if not 1 <= len(passengers) <= rules.max_passengers:
            raise DomainError("TOO_MANY_PASSENGERS_IN_ORDER", limit=rules.max_passengers)
        grown_ups = sum(1 for p in passengers if p.get("ticket_type", "adult")
                        not in CHILD_TYPES)
        if len(children) > grown_ups * rules.max_free_children_per_adult:
            raise DomainError("TOO_MANY_CHILDREN", field="children")
        phone = normalize_phone(contact_phone)
        if actor.outlet_id and self._outlets is not None:  # its status, routes and quota
            await self._outlets.may_sell(actor.outlet_id, dep, len(passengers))
        if actor.kind == "partner" and self._partners is not None:  # its daily quota
            await self._partners.may_sell(actor.id, len(passengers))
        frm, to = await self.segment(dep, from_seq, to_seq)
        await self.check_on_sale(dep, rules)
        hold_for = dt.timedelta(minutes=rules.payment_timeout_minutes)
        if pay_at_pickup:  # held until the pickup deadline, paid at the window by then
            if not sold_on.pay_at_pickup:
                raise DomainError("PAYMENT_METHOD_NOT_ALLOWED", field="pay_at_pickup")
            hold_for = dep["departs_at"] - dt.timedelta(
                minutes=rules.pickup_deadline_minutes) - now_ms()
            if hold_for < dt.timedelta(minutes=rules.payment_timeout_minutes):
                raise DomainError("PICKUP_DEADLINE_PASSED", field="pay_at_pickup")
        fare = await self.fare(dep["route_id"], frm, to)
        people = await self.priced_people(actor, passengers, fare, caller=phone)
        seen = {person["id_no_index"] for person in people}
        chosen = [p.get("seat") for p in passengers]
        if any(chosen) and not all(chosen):
            raise DomainError("SEAT_CHOICE_INCOMPLETE", field="passengers")
        # one person, one seat: the unique index of active tickets decides. A station's
        # system is asked first (its seats are not taken for a refusal); on our own
        # inventory the question is asked only when the order cannot be made
        if dep.get("inventory") != "native":
            await self._refuse_booked(departure_id, seen)

        # the same person ordered twice at once (a double tap, a scalper's burst) waits for
        # nobody's seat: one attempt per person and departure is under way at a time
        claim = secrets.token_hex(8)
        if not await self._claim_people(departure_id, sorted(seen), claim):
            raise DomainError("PASSENGER_ALREADY_BOOKED")
        try:
            now = now_ms()
            order_no = new_order_no(now)
            hold_id = f"H{order_no}"
            try:
                hold = await self.holds.hold(departure_id, HoldRequest(
                    hold_id=hold_id, channel=sold_on.identifier, count=len(people),
                    from_seq=frm, to_seq=to,
                    seats=tuple(int(s) for s in chosen) if all(chosen) else (),
                    ttl_seconds=int(hold_for.total_seconds()), limited=sold_on.limited),
                    dep=dep)
            except Exception:  # sold out, say — but already booked is the truer answer
                await self._refuse_booked(departure_id, seen)
                raise
            await failpoints.reach("orders.after_hold")
            station_code = await self.station_code(dep["station_id"])
            tickets = []
            carried = _carried(people, len(children), rules.max_free_children_per_adult)
            for person, seat, with_child in zip(people, hold.seats, carried, strict=True):
                tickets.append(self.ticket_doc(
                    await self.ticket_number(station_code, dep["service_date"]),
                    order_no, departure_id, seat, frm, to, person, fare, with_child, now))
            order = {
                "order_no": order_no, "channel": sold_on.identifier, "departure_id": departure_id,
                "route_id": dep["route_id"], "station_id": dep["station_id"], "from_seq": frm,
                "to_seq": to, "status": "pending_payment",
                "amount": sum(t["price"] for t in tickets), "hold_id": hold.hold_id,
                "expires_at": hold.expires_at, "created_at": now,
                "contact_phone_enc": self._vault.encrypt("phone", phone),
                "contact_phone_masked": mask_phone(phone),
                "contact_phone_index": self._vault.index("phone", phone),
                "children": [self._child(c) for c in children],
                "actor": actor.audit_actor(), "rules_version": rules.version,
                "pay_at_pickup": pay_at_pickup,
                "history": [{"at": now, "from": None, "to": "pending_payment",
                             "actor": actor.label, "reason": "created"}]}
            if actor.kind == "member":
                order["member_id"] = actor.id
            if actor.outlet_id:
                order["outlet_id"] = actor.outlet_id
            if actor.kind == "partner":
                order["partner_id"] = actor.id
            try:
                for attempt in range(3):
                    try:
                        await self._write_order(order, tickets)
                        break
                    except TicketNumberTaken:
                        if attempt == 2:
                            raise
                        for t in tickets:  # the counter fell behind (Redis lost it): catch up
                            t["ticket_no"] = await self.ticket_number(
                                station_code, dep["service_date"], recount=True)
            except HoldClaimed:  # too late: the sweeper took this process for dead
                raise DomainError("HOLD_EXPIRED") from None
            except DuplicateKeyError:
                await self.holds.release_unwritten(departure_id, hold.hold_id)
                await self._refuse_booked(departure_id, seen)
                raise DomainError("PASSENGER_ALREADY_BOOKED") from None
            except Exception:
                await self.holds.release_unwritten(departure_id, hold.hold_id)
                raise
            await failpoints.reach("orders.after_write")
            await self.holds.written(departure_id, hold.hold_id)
            await self._audit.staff_action(actor, "order.create", target=order_no,
                                           details={"channel": sold_on.identifier,
                                                    "departure_id": departure_id,
                                                    "amount": order["amount"]})
            log.info("order created", extra={"fields": {"order_no": order_no,
                                                         "departure_id": departure_id,
                                                         "tickets": len(tickets)}})
            return self.public(order, tickets)
        finally:
            await self._release_people(departure_id, sorted(seen), claim)

    async def _refuse_booked(self, departure_id: str, indexes: set[str]) -> None:
        """PASSENGER_ALREADY_BOOKED, naming the person, if one of them holds a ticket on it."""
        taken = await self._db.tickets.find_one(
            {"departure_id": departure_id, "active": True,
             "passenger.id_no_index": {"$in": sorted(indexes)}})
        if taken is not None:
            raise DomainError("PASSENGER_ALREADY_BOOKED",
                              passenger=taken["passenger"]["id_no_masked"])

    async def _net(self) -> Network | None:
        return None if self._network is None else await self._network.get(own_writes=True)

    async def station_code(self, station_id: str) -> str:
        """The station's code, for ticket numbers."""
        net = await self._net()
        station = net.stations.get(station_id) if net else None
        if station is None:  # newer than the network copy
            station = await self._db.stations.find_one({"_id": station_id}, {"code": 1})
        return str(station["code"]) if station else "000000000"

    async def segment(self, dep: dict[str, Any], from_seq: int | None, to_seq: int | None
                      ) -> tuple[int, int]:
        """The boarding and alighting stops asked for (default: the whole route)."""
        net = await self._net()
        if net is not None and dep["route_id"] in net.stops:
            stops = len(net.stops[dep["route_id"]])
        else:  # a route newer than the network copy
            stops = await self._db.stops.count_documents({"route_id": dep["route_id"]})
        frm = 0 if from_seq is None else from_seq
        to = stops - 1 if to_seq is None else to_seq
        if not 0 <= frm < to <= stops - 1:
            raise DomainError("INVALID_SEGMENT", field="to_seq")
        return frm, to

    async def fare(self, route_id: str, frm: int, to: int) -> dict[str, Any]:
        """The fare of a route's segment in force now."""
        net = await self._net()
        if net is not None:
            fare, _ = net.fare(route_id, frm, to, now_ms())
            if fare is not None:
                return fare
        fare = await self._db.fares.find_one(
            {"route_id": route_id, "from_seq": frm, "to_seq": to,
             "effective_from": {"$lte": now_ms()}}, sort=[("effective_from", -1)])
        if fare is None:
            raise DomainError("NO_FARE")
        return fare  # type: ignore[no-any-return]

    async def priced_people(self, actor: Principal, passengers: list[dict[str, Any]],
                            fare: dict[str, Any], caller: str | None = None
                            ) -> list[dict[str, Any]]:
        """The passengers validated, encrypted and priced; each person once (``caller``: the
        order's contact phone, normalized, whose past passengers a desk may name)."""
        people = [await self.person(actor, p, i, caller) for i, p in enumerate(passengers)]
        seen: set[str] = set()
        for person in people:
            if person["id_no_index"] in seen:
                raise DomainError("DUPLICATE_PASSENGER", field="passengers")
            seen.add(person["id_no_index"])
            price = fare["prices"].get(person["ticket_type"])
            if price is None:
                raise DomainError("NO_FARE", ticket_type=person["ticket_type"])
            person["price"] = int(price)
        return people

    def ticket_doc(self, ticket_no: str, order_no: str, departure_id: str, seat: int,
                   frm: int, to: int, person: dict[str, Any], fare: dict[str, Any],
                   with_child: int, now: dt.datetime) -> dict[str, Any]:
        """A held ticket of an order (issued when the order is paid and the station sells)."""
        return {
            "ticket_no": ticket_no, "order_no": order_no, "departure_id": departure_id,
            "seat": seat, "from_seq": frm, "to_seq": to, "ticket_type": person["ticket_type"],
            "price": person["price"], "status": "held", "active": True,
            "distance_km": int(fare.get("distance_km", 0)),
            "station_fee": int(fare.get("station_fee", 0)), "with_child": with_child,
            "passenger": {k: person[k] for k in ("name", "id_type", "id_no_enc",
                                                  "id_no_index", "id_no_masked")},
            "created_at": now}

    async def _claim_people(self, departure_id: str, indexes: list[str], claim: str) -> bool:
        """Mark an order for these people on this departure under way (all or none)."""
        pipe = self._redis.pipeline(transaction=False)
        for index in indexes:
            pipe.set(_booking_key(departure_id, index), claim, nx=True, px=BOOKING_CLAIM_MS)
        got = await pipe.execute()
        if all(got):
            return True
        await self._release_people(departure_id, [i for i, ok in zip(indexes, got, strict=True)
                                                  if ok], claim)
        return False

    async def _release_people(self, departure_id: str, indexes: list[str], claim: str) -> None:
        await asyncio.gather(*[self._release_claim(keys=[_booking_key(departure_id, index)],
                                                   args=[claim]) for index in indexes])

    async def _write_order(self, order: dict[str, Any], tickets: list[dict[str, Any]]) -> None:
        """Order and tickets together or not at all; a concurrent order on the same index
        keys is retried, and the unique index gives the real answer."""
        async def write(session: AsyncClientSession) -> None:
            await self.holds.claim(order["departure_id"], order["hold_id"], session)
            await self.book.insert(order, tickets, session)
        try:
            await transact(self._db, write)
        except BulkWriteError as exc:
            dups = [e for e in exc.details.get("writeErrors", []) if e.get("code") == 11000]
            if any("ticket_no" in (e.get("keyPattern") or {}) for e in dups):
                raise TicketNumberTaken() from None
            if dups:
                raise DuplicateKeyError("one person one seat") from None
            raise

    async def check_on_sale(self, dep: dict[str, Any], rules: Any) -> None:
        if dep["status"] != "on_sale":
            raise DomainError("DEPARTURE_STOPPED", status=dep["status"])
        if dep.get("online") is False:
            raise DomainError("NOT_ON_SALE_ONLINE")
        left = dep["departs_at"] - now_ms()
        if left < dt.timedelta(minutes=rules.online_cutoff_minutes):
            raise DomainError("SALE_CLOSED")
        if dt.date.fromisoformat(dep["service_date"]) >= local_today() + dt.timedelta(
                days=rules.sale_days):
            raise DomainError("SALE_CLOSED", message="Not on sale yet.")

    async def person(self, actor: Principal, p: dict[str, Any], index: int,
                     caller: str | None = None) -> dict[str, Any]:
        """A passenger entry → validated, encrypted, indexed (from a frequent passenger, a
        caller's past trip or typed in)."""
        if p.get("passenger_id"):
            if actor.kind != "member":
                raise DomainError("PASSENGER_NOT_FOUND", field=f"passengers[{index}]")
            doc, id_no = await self._members.passenger_document(actor.id, p["passenger_id"])
            name, id_type = doc["name"], doc["id_type"]
        elif p.get("caller_ticket"):
            name, id_type, id_no = await self._caller_passenger(actor, p["caller_ticket"],
                                                                caller, index)
        else:
            missing = [k for k in ("name", "id_type", "id_no") if not p.get(k)]
            if missing:
                raise DomainError("MISSING_FIELD", f"Field 'passengers[{index}].{missing[0]}' "
                                  "is required.", field=f"passengers[{index}].{missing[0]}")
            name, id_type, id_no = p["name"].strip(), p["id_type"], p["id_no"]
        try:
            document = validate(id_type, id_no)
        except DomainError as exc:
            exc.details["field"] = f"passengers[{index}].{exc.details.get('field', 'id_no')}"
            raise
        return {"name": name, "id_type": document.id_type,
                "id_no_enc": self._vault.encrypt("id_no", document.id_no),
                "id_no_index": id_index(self._vault, document),
                "id_no_masked": mask_id(document.id_no),
                "ticket_type": p.get("ticket_type", "adult")}

    # --- the desks' callers ---------------------------------------------------------------------
    async def callers_passengers(self, actor: Principal, phone: str, limit: int = 20
                                 ) -> list[dict[str, Any]]:
        """Who a caller — known by their phone number — travelled with on the orders this
        seller may see (an outlet's, the phone desk's), most recent first, each person once.
        The desk books them again by ``caller_ticket`` instead of having ID numbers read out
        again; the numbers are never shown whole. Anonymized trips are forgotten."""
        index = self._vault.index("phone", normalize_phone(phone))
        orders = await self._db.orders.find(
            {"contact_phone_index": index, **self.scope(actor)}, {"order_no": 1}).sort(
            "created_at", -1).limit(50).to_list()
        people: dict[str, dict[str, Any]] = {}
        async for t in self._db.tickets.find(
                {"order_no": {"$in": [o["order_no"] for o in orders]},
                 "passenger.id_no_enc": {"$exists": True}},
                {"ticket_no": 1, "passenger": 1, "ticket_type": 1, "created_at": 1}).sort(
                "created_at", -1):
            known = people.get(t["passenger"]["id_no_index"])
            if known:
                known["trips"] += 1
                continue
            people[t["passenger"]["id_no_index"]] = {
                "caller_ticket": t["ticket_no"], "name": t["passenger"]["name"],
                "id_type": t["passenger"]["id_type"], "id_no": t["passenger"]["id_no_masked"],
                "ticket_type": t.get("ticket_type", "adult"), "last_booked_at": t["created_at"],
                "trips": 1}
        return list(people.values())[:limit]

    async def _caller_passenger(self, actor: Principal, ticket_no: str, caller: str | None,
                                index: int) -> tuple[str, str, str]:
        """The person of a past ticket, if its order had this order's contact phone and the
        seller may see it (an outlet cannot name another's customers)."""
        ticket = await self._db.tickets.find_one({"ticket_no": ticket_no},
                                                 {"order_no": 1, "passenger": 1})
        order = None
        if ticket and caller and "id_no_enc" in ticket["passenger"]:
            order = await self._db.orders.find_one(
                {"order_no": ticket["order_no"],
                 "contact_phone_index": self._vault.index("phone", caller),
                 **self.scope(actor)}, {"_id": 1})
        if order is None:
            raise DomainError("PASSENGER_NOT_FOUND", "No such past passenger of this caller "
                              "(the same contact phone, at this desk).",
                              field=f"passengers[{index}]")
        person = ticket["passenger"]  # type: ignore[index]
        return (person["name"], person["id_type"],
                self._vault.decrypt("id_no", person["id_no_enc"]))

    def _child(self, c: dict[str, Any]) -> dict[str, Any]:
        child: dict[str, Any] = {"name": str(c["name"]).strip()}
        if c.get("id_no"):
            document = validate(c.get("id_type", "resident_id"), c["id_no"])
            child.update(id_type=document.id_type, id_no_masked=mask_id(document.id_no),
                         id_no_enc=self._vault.encrypt("id_no", document.id_no))
        return child

    async def ticket_number(self, station_code: str, service_date: str,
                         recount: bool = False) -> str:
        """Region + station code (9) + service date (yymmdd) + serial (5). The serial counter
        lives in Redis; a new counter — or, with ``recount``, one that fell behind because
        Redis lost it — goes on from the highest number MongoDB holds."""
        day = service_date.replace("-", "")[2:]
        prefix, key = f"{station_code}{day}", f"ticket_serial:{{{station_code}}}:{day}"
        serial = int(await self._redis.incr(key))
        if serial == 1 or recount:
            last = await self._db.tickets.find_one(
                {"ticket_no": {"$gte": f"{prefix}00000", "$lte": f"{prefix}99999"}},
                {"ticket_no": 1}, sort=[("ticket_no", -1)])
            floor = int(last["ticket_no"][-5:]) if last else 0
            if floor >= serial:
                serial = int(await self._serial_from(keys=[key], args=[floor]))
            await self._redis.expire(key, 40 * 86400)
        return f"{prefix}{serial:05d}"

    # --- read -------------------------------------------------------------------------------
    async def get(self, actor: Principal, order_no: str) -> dict[str, Any]:
        """The order and its tickets as of one moment (a read-only snapshot transaction): a
        move and the ticket writes that belong to it are seen together or not at all."""
        async def read(session: AsyncClientSession) -> dict[str, Any]:
            order = await self._visible(actor, order_no, session)
            tickets = await self._db.tickets.find({"order_no": order_no}, session=session).sort(
                "seat", 1).to_list()
            dep = None
            if order["status"] in DISRUPTABLE:  # (an order not yet sold has nothing to see)
                dep = await self._db.departures.find_one({"_id": order["departure_id"]},
                                                         {"disruption": 1}, session=session)
            return {**self.public(order, tickets), **_disruption(order, dep)}
        return await transact(self._db, read)

    async def list(self, actor: Principal, *, status: str | None = None, limit: int = 20,
                   before: str | None = None) -> list[dict[str, Any]]:
        query = self.scope(actor)
        if status:
            query["status"] = status
        if before:
            query["order_no"] = {"$lt": before}

        async def read(session: AsyncClientSession) -> list[dict[str, Any]]:
            orders = await self._db.orders.find(query, session=session).sort(
                "created_at", -1).limit(limit).to_list()
            numbers = [o["order_no"] for o in orders]
            tickets: dict[str, list[dict[str, Any]]] = {}
            async for t in self._db.tickets.find({"order_no": {"$in": numbers}},
                                                 session=session).sort("seat", 1):
                tickets.setdefault(t["order_no"], []).append(t)
            return [self.public(o, tickets.get(o["order_no"], [])) for o in orders]
        return await transact(self._db, read)  # one moment, as for a single order

    # --- the order desk (operator; station staff for their station) -------------------------
    async def find(self, actor: Principal, *, order_no: str | None = None,
                   ticket_no: str | None = None, phone: str | None = None,
                   id_type: str = "resident_id", id_no: str | None = None,
                   departure_id: str | None = None, status: str | None = None,
                   page: Page = FIRST_PAGE) -> tuple[list[dict[str, Any]], int]:
        """A page of the orders matching every criterion given, newest first, and how many
        match: a phone or an ID number is found through its blind index (never stored or
        compared in clear)."""
        if not any((order_no, ticket_no, phone, id_no, departure_id)):
            raise DomainError("CRITERION_REQUIRED")
        query: dict[str, Any] = dict(self.scope(actor))
        numbers: set[str] | None = {order_no} if order_no else None
        if ticket_no:
            found = await self._db.tickets.distinct("order_no", {"ticket_no": ticket_no})
            numbers = set(found) if numbers is None else numbers & set(found)
        if id_no:
            index = id_index(self._vault, validate(id_type, id_no))
            found = await self._db.tickets.distinct("order_no",
                                                    {"passenger.id_no_index": index})
            numbers = set(found) if numbers is None else numbers & set(found)
        if numbers is not None:
            query["order_no"] = {"$in": sorted(numbers)}
        if phone:
            query["contact_phone_index"] = self._vault.index("phone", normalize_phone(phone))
        if departure_id:
            query["departure_id"] = departure_id
        if status:
            query["status"] = status

        async def read(session: AsyncClientSession) -> tuple[list[dict[str, Any]], int]:
            orders, total = await find_page(self._db.orders, query,
                                            [("created_at", -1), ("_id", -1)], page,
                                            session=session)
            tickets: dict[str, list[dict[str, Any]]] = {}
            async for t in self._db.tickets.find(
                    {"order_no": {"$in": [o["order_no"] for o in orders]}},
                    session=session).sort("seat", 1):
                tickets.setdefault(t["order_no"], []).append(t)
            return [self.public(o, tickets.get(o["order_no"], [])) for o in orders], total
        return await transact(self._db, read)

    async def issue_again(self, actor: Principal, order_no: str) -> str:
        """A paid order whose station call failed: try issuing now (audited)."""
        order = await self._visible(actor, order_no)
        if order["status"] != "paid":
            raise DomainError("ORDER_NOT_ISSUABLE", status=order["status"])
        outcome = await self.issue(order_no)
        await self._audit.record(actor, "order.issue_again", target=order_no,
                                 details={"outcome": outcome})
        return outcome

    async def refund_unissued(self, actor: Principal, order_no: str, reason: str) -> None:
        """A paid order that will not be issued: it fails and its full amount is owed back
        (audited)."""
        order = await self._visible(actor, order_no)
        if order["status"] != "paid":
            raise DomainError("ORDER_NOT_ISSUABLE", status=order["status"])
        await self._fail(order, f"refunded at the order desk: {reason}")
        await self._audit.record(actor, "order.refund_unissued", target=order_no,
                                 details={"reason": reason})

    @property
    def vault(self) -> PiiVault:
        return self._vault

    def scope(self, actor: Principal) -> dict[str, Any]:
        """The orders the actor may see, as a filter: a seller what its channel lets it see;
        back-office staff their station's, or all."""
        channel = self._channels.of(actor)
        if channel is not None:
            return channel.order_scope(actor)
        return {"station_id": actor.station_id} if actor.station_id else {}

    def channel_of(self, order: dict[str, Any]) -> SalesChannel:
        """The channel an order was sold on."""
        return self._channels.get(order["channel"])

    async def visible(self, actor: Principal, order_no: str) -> dict[str, Any]:
        """The stored order if the actor may see it (ORDER_NOT_FOUND otherwise)."""
        return await self._visible(actor, order_no)

    async def stored(self, order_no: str) -> dict[str, Any] | None:
        """The stored order, whoever asks (for callers that checked who may see it)."""
        return await self._db.orders.find_one({"order_no": order_no})  # type: ignore[no-any-return]

    async def _visible(self, actor: Principal, order_no: str,
                       session: AsyncClientSession | None = None) -> dict[str, Any]:
        """The order if the actor may see it; otherwise the same 404 as a missing one, so
        order numbers cannot be probed."""
        order = await self._db.orders.find_one({"order_no": order_no, **self.scope(actor)},
                                               session=session)
        if order is None:
            raise DomainError("ORDER_NOT_FOUND")
        return order

    # --- transitions --------------------------------------------------------------------------
    async def transition(self, order_no: str, to: str, actor: str, reason: str,
                         set_fields: dict[str, Any] | None = None,
                         from_states: set[str] | None = None,
                         also: Also | None = None) -> dict[str, Any] | None:
        """Move the order to ``to`` if it is in a state that may; None if it was not.

        ``also(order, session)`` are the writes that belong to the move (tickets released, a
        refund requested): stored in one transaction with it, so no reader sees the order
        moved without them and no crash leaves one without the other."""
        allowed = from_states or {s for s, nxt in TRANSITIONS.items() if to in nxt}
        now = now_ms()

        async def move(session: AsyncClientSession | None) -> dict[str, Any] | None:
            doc = await self.book.move(order_no, to, allowed,
                                       {"at": now, "actor": actor, "reason": reason},
                                       set_fields, session)
            if doc is not None and also is not None:
                await also(doc, session)
            if doc is not None and self.webhooks is not None:
                await self.webhooks.order_changed(doc, session)
            return doc  # type: ignore[no-any-return]

        doc = await (move(None) if also is None else transact(self._db, move))
        if doc is not None:
            log.info("order %s → %s", order_no, to,
                     extra={"fields": {"order_no": order_no, "to": to, "reason": reason}})
            await self.announce(order_no, "status", {
                "from": doc["history"][-1]["from"], "to": to, "status": to, "reason": reason})
        return doc

    async def announce(self, order_no: str, event: str, data: dict[str, Any]) -> None:
        """Tell the order's watchers, after the change is stored. Never fails the change: a
        watcher that missed it gets a snapshot when it resubscribes."""
        try:
            await self._events.emit(Topic("order", order_no), event, data)
        except RedisError as exc:
            log.warning("order event not published: %s", type(exc).__name__,
                        extra={"fields": {"order_no": order_no, "event": event}})

    async def cancel(self, actor: Principal, order_no: str) -> dict[str, Any]:
        order = await self._visible(actor, order_no)
        if order["status"] == "waitlisted":  # paid, waiting for seats: the money goes back
            if not await self.end_waitlisted(order, "waitlist cancelled by buyer",
                                             actor.label):
                raise DomainError("ORDER_NOT_CANCELLABLE", status="paid")
            await self._audit.staff_action(actor, "order.cancel", target=order_no)
            return await self.get(actor, order_no)
        done = await self.transition(order_no, "cancelled", actor.label,
                                     "cancelled by buyer", from_states={"pending_payment"},
                                     also=self._release_tickets)
        if done is None:
            raise DomainError("ORDER_NOT_CANCELLABLE", status=order["status"])
        if done.get("hold_id"):  # (a waitlist order holds nothing until it is filled)
            await self.holds.release_ended(done)
        await self._audit.staff_action(actor, "order.cancel", target=order_no)
        return await self.get(actor, order_no)

    async def expire_due(self, limit: int = 100) -> int:
        """Close unpaid orders whose time is up; each exactly once, seats released."""
        due = await self._db.orders.find(
            {"status": "pending_payment", "expires_at": {"$lte": now_ms()}},
            {"order_no": 1}).limit(limit).to_list()
        closed = 0
        for row in due:
            with self.failures.record("order-expiry", row["order_no"]):
                done = await self.transition(row["order_no"], "expired", "system",
                                             "payment timeout", from_states={"pending_payment"},
                                             also=self._release_tickets)
                if done is not None:  # this process won the race
                    if done.get("hold_id"):
                        await self.holds.release_ended(done)
                    closed += 1
        return closed

    async def warn_expiring(self, limit: int = 200) -> int:
        """Unpaid orders with less than five minutes left: one reminder each (none for an
        order younger than a minute — its buyer is still at the payment page)."""
        now = now_ms()
        due = await self._db.orders.find(
            {"status": "pending_payment", "expiry_warned": {"$ne": True},
             "expires_at": {"$gt": now, "$lte": now + EXPIRY_WARNING},
             "created_at": {"$lte": now - dt.timedelta(minutes=1)}},
            {"order_no": 1, "expires_at": 1}).limit(limit).to_list()
        for row in due:
            with self.failures.record("payment-reminders", row["order_no"]):
                await self.notices.enqueue(
                    f"payment_expiring:{row['order_no']}", "payment_expiring",
                    row["order_no"],
                    {"expires_at": row["expires_at"].astimezone(LOCAL_TZ).isoformat()})
                await self.book.expiry_warned(row["order_no"])
        return len(due)

    async def _release_tickets(self, order: dict[str, Any],
                               session: AsyncClientSession | None) -> None:
        """The order's unsold tickets end with it (and free their one-person-one-seat keys)."""
        await self.book.release_tickets(order["order_no"], session)

    # --- payment and issuing (the payments capability calls mark_paid) ----------------------
    async def mark_paid(self, order_no: str, payment_ref: str, amount: int) -> str:
        """A payment for this order succeeded. Returns what became of the order:
        ``issued``, ``failed`` (a refund is requested), ``paid`` (issuing will be retried),
        ``already`` (a repeated notice), or ``late`` (the order had ended: refund it)."""
        order = await self._db.orders.find_one({"order_no": order_no})
        if order is None:
            raise DomainError("ORDER_NOT_FOUND")
        if amount != order["amount"]:
            raise DomainError("INVALID_VALUE", "Paid amount differs from the order amount.")
        # a waitlist order, paid, waits in the queue for seats (the waitlist fills it)
        to = "waitlisted" if order.get("kind") == "waitlist" else "paid"
        now = now_ms()
        done = await self.transition(order_no, to, "payment", f"paid {payment_ref}",
                                     {"payment_ref": payment_ref, "paid_at": now,
                                      **({"waitlist.queued_at": now} if to == "waitlisted"
                                         else {})},
                                     from_states={"pending_payment"})
        if done is None:  # not awaiting payment any more: this payment, again, or too late
            fresh = await self._db.orders.find_one({"order_no": order_no}, {"payment_ref": 1})
            if fresh and fresh.get("payment_ref") == payment_ref:
                return "already"
            return "late"
        if to == "waitlisted":
            return "waitlisted"
        return await self.issue(order_no)

    async def issue(self, order_no: str) -> str:
        """Sell the held seats at the station; paid → issued, or failed with a refund."""
        order = await self._db.orders.find_one({"order_no": order_no})
        if order is None or order["status"] != "paid":
            return order["status"] if order else "unknown"
        await self.book.issue_attempted(order_no, now_ms())
        tickets = await self._db.tickets.find({"order_no": order_no}).sort("seat", 1).to_list()
        infos = [TicketInfo(t["seat"], t["passenger"]["name"], t["ticket_type"], t["price"])
                 for t in tickets]
        try:
            sale = await self.holds.sell(order["departure_id"], order["hold_id"], infos)
        except (StationUnreachable, StationTimeout) as exc:
            log.warning("issuing deferred: %s", exc.code,
                        extra={"fields": {"order_no": order_no}})
            return "paid"  # the issuing job tries again; a refund follows if it never can
        except ExchangeError as exc:
            await self._fail(order, f"station refused: {exc.code}")
            return "failed"
        numbers = dict(zip(sale.seats, sale.station_ticket_nos, strict=False))
        for t in tickets:
            await self.book.issued(t["_id"], sale.sale_id, numbers.get(t["seat"], ""),
                                   now_ms())
        done = await self.transition(order_no, "issued", "station", "tickets issued",
                                     {"sale_id": sale.sale_id}, from_states={"paid"})
        if done is not None:
            await self.notices.enqueue(f"ticket_issued:{order_no}", "ticket_issued", order_no,
                                       {"tickets": [t["ticket_no"] for t in tickets]})
        return "issued"

    def _refund_owed(self, reason: str) -> Also:
        """The writes of a paid order ending without a journey: its tickets released, its
        whole amount owed back (the payments capability pays it through the original
        channel)."""
        async def owe(done: dict[str, Any], session: AsyncClientSession | None) -> None:
            await self.book.release_tickets(done["order_no"], session, only_held=False)
            await self.refunds.owe(refunds.for_order(done["order_no"]),
                                   order_no=done["order_no"], amount=done["amount"],
                                   reason=reason, payment_ref=done.get("payment_ref"),
                                   session=session)
        return owe

    async def _fail(self, order: dict[str, Any], reason: str) -> None:
        done = await self.transition(order["order_no"], "failed", "station", reason,
                                     from_states={"paid"}, also=self._refund_owed(reason))
        if done is None:
            return
        log.error("order failed after payment; refund requested",
                  extra={"fields": {"order_no": order["order_no"], "reason": reason}})

    # --- waitlist orders (the waitlist decides; these are the order's writes) -------------
    async def end_waitlisted(self, order: dict[str, Any], reason: str, actor: str) -> bool:
        """A waitlist order that will not be filled (cancelled, or its deadline passed):
        waitlisted → failed with its whole amount owed back, once. False if it was not
        waiting any more (filled or ended meanwhile)."""
        done = await self.transition(order["order_no"], "failed", actor, reason,
                                     from_states={"waitlisted"},
                                     also=self._refund_owed(reason))
        return done is not None

    async def fill_waitlisted(self, order: dict[str, Any], dep: dict[str, Any],
                              hold_id: str, tickets: list[dict[str, Any]]) -> bool:
        """A waitlist order gets its seats: waitlisted → paid on this departure with its
        tickets and the hold claimed, in one transaction. False (nothing written) if the
        order is not waiting any more or a passenger holds a seat there already."""
        now = now_ms()

        async def write(session: AsyncClientSession) -> None:
            await self.holds.claim(dep["_id"], hold_id, session)
            moved = await self.book.move(
                order["order_no"], "paid", {"waitlisted"},
                {"at": now, "from": "waitlisted", "to": "paid", "actor": "waitlist",
                 "reason": f"waitlist filled on {dep['_id']}"},
                {"departure_id": dep["_id"], "station_id": dep["station_id"],
                 "hold_id": hold_id, "waitlist.filled_at": now}, session)
            if moved is None:
                raise _NotWaiting()
            await self.book.add_tickets(tickets, session)

        try:
            await transact(self._db, write)
        except (_NotWaiting, HoldClaimed, DuplicateKeyError, BulkWriteError) as exc:
            if isinstance(exc, BulkWriteError) and not all(
                    e.get("code") == 11000 for e in exc.details.get("writeErrors", [])):
                raise
            await self.holds.release_unwritten(dep["_id"], hold_id)
            return False
        await self.holds.written(dep["_id"], hold_id)
        await self.announce(order["order_no"], "status", {
            "from": "waitlisted", "to": "paid", "status": "paid",
            "reason": "waitlist filled", "departure_id": dep["_id"]})
        return True

    async def retry_issuing(self) -> int:
        """Paid orders the station could not be reached for: try again; when their hold
        ran out meanwhile, the sale fails and the refund is requested."""
        cutoff = now_ms() - ISSUE_RETRY_AFTER
        stuck = await self._db.orders.find(
            {"status": "paid", "$or": [{"issue_attempted_at": {"$lte": cutoff}},
                                       {"issue_attempted_at": {"$exists": False}}]},
            {"order_no": 1}).limit(50).to_list()
        for row in stuck:
            with self.failures.record("order-issuing", row["order_no"]):
                await self.issue(row["order_no"])
        return len(stuck)

    # --- views ------------------------------------------------------------------------------
    def public(self, order: dict[str, Any], tickets: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "order_no": order["order_no"], "status": order["status"],
            "departure_id": order["departure_id"], "channel": order["channel"],
            "from_seq": order["from_seq"], "to_seq": order["to_seq"],
            "amount": order["amount"], "pay_at_pickup": bool(order.get("pay_at_pickup")),
            "expires_at": order["expires_at"].astimezone(LOCAL_TZ).isoformat(),
            "created_at": order["created_at"].astimezone(LOCAL_TZ).isoformat(),
            "contact_phone": order["contact_phone_masked"],
            "children": [{"name": c["name"], **({"id_no": c["id_no_masked"]}
                                                if c.get("id_no_masked") else {})}
                         for c in order.get("children", [])],
            "tickets": [{"ticket_no": t["ticket_no"], "seat": t["seat"],
                         "ticket_type": t["ticket_type"], "price": t["price"],
                         "status": t["status"], "distance_km": t.get("distance_km", 0),
                         "station_fee": t.get("station_fee", 0),
                         "with_child": t.get("with_child", 0), "passenger": {
                             "name": t["passenger"]["name"],
                             "id_type": t["passenger"]["id_type"],
                             "id_no": t["passenger"]["id_no_masked"]}} for t in tickets],
            "history": [{"at": h["at"].astimezone(LOCAL_TZ).isoformat(), "from": h["from"],
                         "to": h["to"], "reason": h["reason"]}
                        for h in order.get("history", [])],
            **_waitlist_view(order),
        }


def _waitlist_view(order: dict[str, Any]) -> dict[str, Any]:
    """A waitlist order's acceptable departures, deadline and passengers (masked)."""
    w = order.get("waitlist")
    if not w:
        return {}
    return {"kind": "waitlist", "waitlist": {
        "departure_ids": w["departure_ids"],
        "deadline": w["deadline"].astimezone(LOCAL_TZ).isoformat(),
        "passengers": [{"name": p["name"], "id_type": p["id_type"], "id_no": p["id_no_masked"],
                        "ticket_type": p["ticket_type"], "price": p["price"]}
                       for p in w["passengers"]],
        **({"filled_at": w["filled_at"].astimezone(LOCAL_TZ).isoformat()}
           if w.get("filled_at") else {})}}


def _carried(people: list[dict[str, Any]], children: int, per_adult: int) -> list[int]:
    """How many of the order's accompanied children ride with each passenger (携童): one by
    one on the grown-ups' tickets, in order, at most ``per_adult`` each."""
    out = []
    for person in people:
        take = min(children, per_adult) if person["ticket_type"] not in CHILD_TYPES else 0
        out.append(take)
        children -= take
    return out
