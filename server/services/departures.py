"""Departures: as passengers see them (times, stops, fares, the seat map of one journey),
how their changes reach passengers, and what staff do to them."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.clock import LOCAL_TZ, local_today, now_ms, parse_day, parse_instant
from server.errors import DomainError
from server.exchange.base import segment_mask
from server.exchange.errors import DepartureNotFound, InvalidSegment
from server.outbox import NoticeOutbox
from server.paging import Page, find_page
from server.security.principal import Principal
from server.services.audit import AuditService
from server.services.events import EventLog, Topic
from server.services.planning import departs_at as departs_at_local
from server.services.planning import departure_id as departure_id_of
from server.services.rules import RuleService
from server.services.seats import SeatService
from server.storage.departures import DepartureRecords
from server.storage.inventory import NativeInventory


class DepartureService:
    def __init__(self, db: AsyncDatabase[Any], seats: SeatService) -> None:
        self._db = db
        self._seats = seats

    async def detail(self, departure_id: str, from_seq: int = 0,
                     to_seq: int | None = None) -> dict[str, Any]:
        """One departure with the seat map between stops ``from_seq`` → ``to_seq``."""
        dep = await self._db.departures.find_one({"_id": departure_id})
        if dep is None:
            raise DepartureNotFound(departure_id=departure_id)
        stops = await self._db.stops.find({"route_id": dep["route_id"]}).sort(
            "seq", 1).to_list()
        last = len(stops) - 1
        to_seq = last if to_seq is None else to_seq
        if not 0 <= from_seq < to_seq <= last:
            raise InvalidSegment(from_seq=from_seq, to_seq=to_seq)
        route = await self._db.routes.find_one({"_id": dep["route_id"]}) or {}
        fare = await self._db.fares.find_one(
            {"route_id": dep["route_id"], "from_seq": from_seq, "to_seq": to_seq},
            sort=[("effective_from", -1)])
        seats = await self._seats.availability(departure_id)
        mask = segment_mask(from_seq, to_seq)
        held = set(seats.held)
        seat_map = [{"seat": i + 1,
                     "state": "free" if m & mask == 0 else ("held" if i + 1 in held
                                                            else "sold")}
                    for i, m in enumerate(seats.occupancy)]
        online = seats.status != "offline" and dep.get("online", True)
        return {
            "id": dep["_id"], "station_id": dep["station_id"], "route_id": dep["route_id"],
            "route_name": route.get("name", ""), "service_date": dep["service_date"],
            "departs_at": dep["departs_at"].astimezone(LOCAL_TZ).isoformat(),
            "status": dep["status"], "inventory": dep["inventory"],
            "on_sale_online": dep["status"] == "on_sale" and online,
            "seats": dep["seats"], "from_seq": from_seq, "to_seq": to_seq,
            "remaining": seats.remaining_between(from_seq, to_seq) if online else 0,
            "stops": [{"seq": s["seq"], "name": s["name"], "city": s["city"],
                       "station_id": s.get("station_id", ""),
                       "distance_km": s["distance_km"]} for s in stops],
            "fares": fare["prices"] if fare else {},
            "seat_map": seat_map if online else [],
        }

    async def snapshot(self, departure_id: str) -> tuple[int, dict[str, Any]]:
        """The seat state of a departure for a watcher, with the seq it is current as of:
        native seats come with their version; proxied ones with the last event's seq, read
        first (a later event may repeat what the snapshot shows, never miss something)."""
        dep, station, _, _ = await self._seats.resolve(departure_id)
        seq = await self._seats.events.last_seq(Topic("departure", departure_id))
        seats = await self._seats.availability(departure_id, dep=dep)  # not the seat view:
        # a snapshot it keeps may not yet know of an event this watcher would then miss
        if not self._seats.is_proxied(station):
            seq = seats.version
        online = seats.status != "offline" and dep.get("online", True)
        return seq, {
            "departure_id": departure_id, "status": dep["status"],
            "on_sale_online": dep["status"] == "on_sale" and online,
            "seats": dep["seats"], "segments": seats.segments,
            "remaining": seats.remaining if online else 0,
            "masks": list(seats.occupancy), "held": sorted(seats.held)}


class DepartureChanges:
    """Telling passengers of a departure's changes — by the station system (found by the
    sync) or by the operator: every passenger holding a ticket gets a notice and every
    watcher the event, once per change. The changes wait in the departure's
    ``unannounced`` list, written with the change itself, so a process that dies half-way
    leaves them for the next run instead of losing them.

    A cancellation, or a delay of at least the rules' ``disruption_delay_minutes``, makes
    the departure *disrupted* (one code path for both sources): until its deadline (the
    departure time) each passenger may refund or change to another departure of the route
    free of charge; whoever has done neither by then is refunded
    (``TicketService.settle_disruptions``)."""

    def __init__(self, db: AsyncDatabase[Any], events: EventLog,
                 rules: RuleService | None = None) -> None:
        self._db = db
        self._events = events
        self._rules = rules or RuleService(db)
        self._notices = NoticeOutbox(db)
        self._departures = DepartureRecords(db)

    async def announce(self) -> None:
        async for dep in self._db.departures.find({"unannounced.kind": {"$exists": True}},
                                                  {"unannounced": 1, "departs_at": 1,
                                                   "route_id": 1, "station_id": 1}):
            for change in dep.get("unannounced") or []:
                await self._disrupt(dep, change)
                details = {"change": change["kind"], "before": change.get("before", ""),
                           "after": change.get("after", "")}
                async for order in self._db.orders.find({"departure_id": dep["_id"],
                                                         "status": "issued"}, {"order_no": 1}):
                    await self._notices.enqueue(
                        f"departure_changed:{dep['_id']}:{change['kind']}:{details['after']}:"
                        f"{order['order_no']}", "departure_changed", order["order_no"], details)
                await self._events.emit(Topic("departure", dep["_id"]), "departure", details)
                await self._departures.told(dep["_id"], change)

    async def _disrupt(self, dep: dict[str, Any], change: dict[str, Any]) -> None:
        kind = change["kind"]
        cancelled = kind in ("cancelled", "withdrawn") or (
            kind == "departure_status" and change.get("after") == "cancelled")
        delayed = False
        before, after = (parse_instant(str(change.get("before") or "")),
                         parse_instant(str(change.get("after") or "")))
        if kind == "departure_time" and before and after:
            rules = await self._rules.for_departure(dep)
            delayed = after - before >= dt.timedelta(minutes=rules.disruption_delay_minutes)
        if cancelled or delayed:
            await self._departures.disrupt(dep["_id"], {
                "kind": "cancelled" if cancelled else "delayed",
                "reason": change.get("reason", ""), "at": now_ms(),
                "deadline": dep["departs_at"]})


class DepartureOperations:
    """What the operator (or station staff, for their station) does to the departures of a
    native station: stop and resume online sale, cancel, delay, assign a vehicle and
    drivers, add an extra bus. A proxied station does these in its own system and the sync
    brings them here, through the same announcement. Each act audited."""

    def __init__(self, db: AsyncDatabase[Any], inventory: NativeInventory,
                 changes: DepartureChanges, audit: AuditService, rules: RuleService,
                 seats: SeatService) -> None:
        self._db = db
        self._seats = seats
        self._inventory = inventory
        self._changes = changes
        self._audit = audit
        self._rules = rules
        self._departures = DepartureRecords(db)

    async def of_day(self, actor: Principal, day: str, station_id: str | None = None, *,
                     status: str | None = None, q: str | None = None,
                     page: Page | None = None) -> tuple[list[dict[str, Any]], int]:
        """A page of the departures of a service day, by time, with seats left (station
        staff: their station's; ``q``: a part of the departure id, e.g. the schedule code),
        and how many match."""
        query: dict[str, Any] = {"service_date": day}
        if actor.station_id or station_id:
            query["station_id"] = actor.station_id or station_id
        if status:
            query["status"] = status
        if q:
            query["_id"] = {"$regex": re.escape(q.strip()), "$options": "i"}
        deps, total = await find_page(self._db.departures, query,
                                      [("departs_at", 1), ("_id", 1)], page or Page(0, 500))
        stations = {s["_id"]: s async for s in self._db.stations.find(
            {"_id": {"$in": sorted({d["station_id"] for d in deps})}}, {"system": 1, "name": 1})}
        routes = {r["_id"]: r.get("name", "") async for r in self._db.routes.find(
            {"_id": {"$in": sorted({d["route_id"] for d in deps})}}, {"name": 1})}
        seats = await self._seats.availability_many(deps, stations)
        return [{**_operated(d), "route_name": routes.get(d["route_id"], ""),
                 "station_name": stations.get(d["station_id"], {}).get("name", ""),
                 "inventory": d["inventory"], "disrupted": bool(d.get("disruption")),
                 "remaining": seats[d["_id"]].remaining if d["_id"] in seats else None}
                for d in deps], total

    async def disruption(self, actor: Principal, departure_id: str) -> dict[str, Any]:
        """How a departure's disruption (a cancellation, a long delay) is being handled: its
        passengers' tickets — refunded, changed to another bus, being refunded or changed,
        still open (refunded in full at the deadline if they do nothing) — and the notices
        telling them, by state. Any departure the actor may see, native or proxied."""
        query: dict[str, Any] = {"_id": departure_id}
        if actor.station_id:
            query["station_id"] = actor.station_id
        dep = await self._db.departures.find_one(query, {"status": 1, "disruption": 1})
        if dep is None:
            raise DomainError("DEPARTURE_NOT_FOUND")
        tickets = {"refunded": 0, "changed": 0, "in_progress": 0, "open": 0}
        async for t in self._db.tickets.find({"departure_id": departure_id,
                                              "status": {"$in": list(AFFECTED)}}, {"status": 1}):
            tickets[AFFECTED[t["status"]]] += 1
        notices: dict[str, int] = {}
        async for n in self._db.notices.find(
                {"_id": {"$regex": f"^departure_changed:{re.escape(departure_id)}:"}},
                {"status": 1}):
            notices[n["status"]] = notices.get(n["status"], 0) + 1
        disruption = dep.get("disruption")
        return {"departure_id": departure_id, "status": dep["status"],
                "disruption": {**disruption,
                               "at": disruption["at"].astimezone(LOCAL_TZ).isoformat(),
                               "deadline": disruption["deadline"].astimezone(
                                   LOCAL_TZ).isoformat()} if disruption else None,
                "tickets": {**tickets, "affected": sum(tickets.values())},
                "notices": {"sent": notices.get("sent", 0),
                            "waiting": notices.get("pending", 0) + notices.get("sending", 0),
                            "failed": notices.get("failed", 0)}}

    async def _native(self, actor: Principal, departure_id: str) -> dict[str, Any]:
        dep = await self._db.departures.find_one({"_id": departure_id})
        if dep is None or (actor.station_id and dep["station_id"] != actor.station_id):
            raise DomainError("DEPARTURE_NOT_FOUND")
        if dep.get("inventory") != "native":
            raise DomainError("DEPARTURE_PROXIED")
        return dep

    async def _apply(self, actor: Principal, dep: dict[str, Any], action: str,
                     from_statuses: list[str], fields: dict[str, Any],
                     tell: dict[str, Any] | None, details: dict[str, Any]) -> dict[str, Any]:
        done = await self._departures.change(dep["_id"], from_statuses, fields, tell)
        if done is None:
            raise DomainError("DEPARTURE_NOT_CHANGEABLE", status=dep["status"])
        await self._inventory.configure(dep["_id"])  # on or off sale in the seat store
        if tell:
            await self._changes.announce()
        await self._audit.record(actor, f"departure.{action}", target=dep["_id"],
                                 details=details)
        return _operated(done)

    async def stop_sale(self, actor: Principal, departure_id: str, reason: str
                        ) -> dict[str, Any]:
        dep = await self._native(actor, departure_id)
        return await self._apply(actor, dep, "stop_sale", ["on_sale"],
                                 {"status": "stopped", "stop_reason": reason}, None,
                                 {"reason": reason})

    async def resume_sale(self, actor: Principal, departure_id: str) -> dict[str, Any]:
        dep = await self._native(actor, departure_id)
        if dep["departs_at"] <= now_ms():
            raise DomainError("DEPARTURE_NOT_CHANGEABLE", status="departed")
        return await self._apply(actor, dep, "resume_sale", ["stopped"],
                                 {"status": "on_sale", "stop_reason": ""}, None, {})

    async def cancel(self, actor: Principal, departure_id: str, reason: str
                     ) -> dict[str, Any]:
        """Cancelled: off sale, every ticket holder told (their refund is fee-free)."""
        dep = await self._native(actor, departure_id)
        tell = {"kind": "cancelled", "id": departure_id, "before": dep["status"],
                "after": "cancelled", "reason": reason}
        return await self._apply(actor, dep, "cancel", ["on_sale", "stopped"],
                                 {"status": "cancelled", "cancel_reason": reason,
                                  "cancelled_at": now_ms()}, tell, {"reason": reason})

    async def delay(self, actor: Principal, departure_id: str, departs_at: dt.datetime,
                    reason: str) -> dict[str, Any]:
        """A later departure time; every ticket holder told."""
        dep = await self._native(actor, departure_id)
        if departs_at <= dep["departs_at"] or departs_at <= now_ms():
            raise DomainError("DEPARTURE_TIME_INVALID", field="departs_at")
        before, after = (dep["departs_at"].astimezone(LOCAL_TZ).isoformat(),
                         departs_at.astimezone(LOCAL_TZ).isoformat())
        tell = {"kind": "departure_time", "id": departure_id, "before": before,
                "after": after, "reason": reason}
        return await self._apply(actor, dep, "delay", ["on_sale", "stopped"],
                                 {"departs_at": departs_at, "delayed_from": dep["departs_at"],
                                  "delay_reason": reason}, tell,
                                 {"before": before, "after": after, "reason": reason})

    async def assign(self, actor: Principal, departure_id: str, vehicle_id: str | None,
                     driver_ids: list[str] | None) -> dict[str, Any]:
        """A vehicle and drivers of the departure's carrier. A vehicle with fewer seats than
        the departure sells is refused (the seat map would not fit the bus)."""
        dep = await self._native(actor, departure_id)
        fields: dict[str, Any] = {}
        if vehicle_id is not None:
            vehicle = await self._db.vehicles.find_one({"_id": vehicle_id,
                                                        "status": "active"})
            if vehicle is None:
                raise DomainError("VEHICLE_NOT_FOUND", field="vehicle_id")
            if vehicle["seats"] < dep["seats"]:
                raise DomainError("VEHICLE_TOO_SMALL", seats=vehicle["seats"],
                                  needed=dep["seats"])
            fields["vehicle_id"] = vehicle_id
        if driver_ids is not None:
            found = await self._db.drivers.count_documents({"_id": {"$in": driver_ids},
                                                            "status": "active"})
            if found != len(set(driver_ids)):
                raise DomainError("DRIVER_NOT_FOUND", field="driver_ids")
            fields["driver_ids"] = driver_ids
        if not fields:
            raise DomainError("CRITERION_REQUIRED", "Give a vehicle_id, driver_ids or both.")
        return await self._apply(actor, dep, "assign", ["on_sale", "stopped"], fields, None,
                                 fields)

    async def add_extra(self, actor: Principal, schedule_id: str, service_date: str,
                        departs_at: dt.datetime | None, vehicle_id: str | None
                        ) -> dict[str, Any]:
        """An extra bus (加班车) of a schedule on a day of the sale window, with its own
        seats (the vehicle's, or the schedule's)."""
        schedule = await self._db.schedules.find_one({"_id": schedule_id, "status": "active"})
        if schedule is None or (actor.station_id and
                                schedule["station_id"] != actor.station_id):
            raise DomainError("SCHEDULE_NOT_FOUND", field="schedule_id")
        station = await self._db.stations.find_one({"_id": schedule["station_id"]},
                                                   {"system": 1}) or {}
        if (station.get("system") or {}).get("vendor", "native") != "native":
            raise DomainError("DEPARTURE_PROXIED")
        day = parse_day(service_date)
        if day is None:
            raise DomainError("INVALID_VALUE", field="service_date")
        rules = await self._rules.current()
        if not local_today() <= day <= local_today() + dt.timedelta(days=rules.sale_days):
            raise DomainError("DATE_NOT_ON_SALE", field="service_date")
        when = departs_at or departs_at_local(day, schedule["departs_at_local"])
        if when <= now_ms() or when.astimezone(LOCAL_TZ).date() != day:
            raise DomainError("DEPARTURE_TIME_INVALID", field="departs_at")
        seats = schedule["seats"]
        if vehicle_id is not None:
            vehicle = await self._db.vehicles.find_one({"_id": vehicle_id, "status": "active"})
            if vehicle is None:
                raise DomainError("VEHICLE_NOT_FOUND", field="vehicle_id")
            seats = vehicle["seats"]
        base = departure_id_of(schedule["code"], day)
        extras = await self._db.departures.count_documents({"extra_of": base})
        doc = {"_id": f"{base}-X{extras + 1}", "extra_of": base, "nature": "extra",
               "run": extras + 1,
               "schedule_id": schedule["_id"], "schedule_code": schedule["code"],
               "route_id": schedule["route_id"], "station_id": schedule["station_id"],
               "carrier_id": schedule["carrier_id"], "vehicle_id": vehicle_id or "",
               "driver_ids": [], "service_date": day.isoformat(), "departs_at": when,
               "seats": seats, "status": "on_sale", "inventory": "native", "online": True,
               "created_at": now_ms()}
        try:
            await self._departures.add(doc)
        except DuplicateKeyError:  # two extras added at once: the next number
            raise DomainError("DEPARTURE_NOT_CHANGEABLE", "Added just now by someone else; "
                              "look again.") from None
        await self._audit.record(actor, "departure.add_extra", target=doc["_id"],
                                 details={"schedule_id": schedule_id, "seats": seats})
        return _operated(doc)


# a disrupted departure's tickets, by how their passenger's case stands
AFFECTED = {"issued": "open", "picked_up": "open", "refunded": "refunded", "changed": "changed",
            "refunding": "in_progress", "changing": "in_progress"}


def _operated(dep: dict[str, Any]) -> dict[str, Any]:
    return {"id": dep["_id"], "status": dep["status"], "station_id": dep["station_id"],
            "service_date": dep["service_date"],
            "departs_at": dep["departs_at"].astimezone(LOCAL_TZ).isoformat(),
            "seats": dep["seats"], "vehicle_id": dep.get("vehicle_id", ""),
            "driver_ids": dep.get("driver_ids", []), "nature": dep.get("nature", "regular"),
            "schedule_id": dep["schedule_id"], "carrier_id": dep.get("carrier_id", "")}
