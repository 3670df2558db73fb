"""Departures: one with its stops, fares and seat map (search comes with booking), and the
operations staff perform on them."""

from __future__ import annotations

import datetime as dt

from handlers.base import ApiHandler, api, route
from server.errors import aware_time
from server.paging import PAGE_QUERY, TOTAL, Page
from server.schema import DATETIME, DAY, array, integer, obj, string
from server.security.principal import OPERATOR, STATION_STAFF


def _when(text: str, field: str = "departs_at") -> dt.datetime:
    return aware_time(text, code="INVALID_VALUE", field=field,
                      message=f"{field} must be an RFC 3339 time with its offset.")

SEAT = obj({"seat": integer(1), "state": string(enum=["free", "held", "sold"])},
           ["seat", "state"])
STOP = obj({"seq": integer(0), "name": string(), "city": string(), "station_id": string(),
            "distance_km": integer(0)}, ["seq", "name", "city"])
DEPARTURE = obj({
    "id": string(), "station_id": string(), "route_id": string(), "route_name": string(),
    "service_date": string(format="date"), "departs_at": string(format="date-time"),
    "status": string(enum=["on_sale", "stopped", "departed", "cancelled"]),
    "inventory": string(enum=["native", "proxied"]), "on_sale_online": {"type": "boolean"},
    "seats": integer(1), "from_seq": integer(0), "to_seq": integer(1), "remaining": integer(0),
    "stops": array(STOP), "fares": {"type": "object", "additionalProperties": integer(0)},
    "seat_map": array(SEAT)}, ["id", "departs_at", "status", "on_sale_online", "remaining",
                               "stops", "seat_map"])
DETAIL_QUERY = obj({"from_seq": integer(0, description="boarding stop (default: origin)"),
                    "to_seq": integer(1, description="alighting stop (default: terminal)")},
                   additional=True)


PLACE = obj({"seq": integer(0), "name": string(), "city": string()}, ["seq", "name", "city"])
RESULT = obj({
    "id": string(), "route_id": string(), "route_name": string(),
    "station": obj({"id": string(), "name": string()}, ["id", "name"]),
    "service_date": string(format="date"), "departs_at": string(format="date-time"),
    "boards_at": string(format="date-time", description="estimated at the boarding stop"),
    "from": PLACE, "to": PLACE, "stops": array(string()), "distance_km": integer(0),
    "carrier": obj({"id": string(), "name": string()}, ["id", "name"]),
    "vehicle_grade": string(), "remaining": integer(0),
    "fares": {"type": "object", "additionalProperties": integer(0),
              "description": "fen by ticket type"},
    "on_sale_online": {"type": "boolean"},
    "not_on_sale_reason": {"type": ["string", "null"], "enum": [
        None, "stopped", "departed", "cancelled", "station_offline", "sale_closed"]}},
    ["id", "departs_at", "from", "to", "remaining", "fares", "on_sale_online"])
SEARCH = obj({
    "from": string(1, 40, description="station id, city, or city pinyin/initials"),
    "to": string(1, 40, description="city, stop name or station id"),
    "date": {**DAY, "description": "local service date, YYYY-MM-DD"},
    "after": string(pattern="^([01]\\d|2[0-3]):[0-5]\\d$", description="HH:MM, boarding"),
    "before": string(pattern="^([01]\\d|2[0-3]):[0-5]\\d$"),
    "station": string(1, 20, description="only departures from this station"),
    "has_seats": {"type": "boolean"}, "limit": integer(1, 200)},
    ["from", "to", "date"], additional=True)
SEARCH_RESULTS = obj({"departures": array(RESULT)}, ["departures"])


async def search(handler: ApiHandler) -> None:
    """Answer a departure search (passengers here, partners through their API)."""
    q = handler.query
    handler.write_encoded(await handler.services.search.search(
        q["from"], q["to"], q["date"], after=q.get("after"), before=q.get("before"),
        station=q.get("station"), has_seats=q.get("has_seats", False),
        limit=q.get("limit", 100)))


class DepartureSearchHandler(ApiHandler):
    @api("Search departures: from a station or city to a city or stop on a date",
         query=SEARCH, response=SEARCH_RESULTS, tags=("search",),
         errors=("DATE_NOT_ON_SALE",))
    async def get(self) -> None:
        await search(self)


class DepartureHandler(ApiHandler):
    @api("One departure with stops, fares and the seat map of a trip", query=DETAIL_QUERY,
         response=DEPARTURE, tags=("search",),
         errors=("DEPARTURE_NOT_FOUND", "INVALID_SEGMENT"))
    async def get(self, departure_id: str) -> None:
        self.write_json(await self.services.departures.detail(
            departure_id, self.query.get("from_seq", 0), self.query.get("to_seq")))


default_handlers = [route("/api/v1/departures", DepartureSearchHandler),
                    route("/api/v1/departures/{departure_id}", DepartureHandler)]


# --- departure operations (operator; station staff for their station) ---------------------
OPERATORS = (OPERATOR, STATION_STAFF)
OPERATED = obj({"id": string(), "status": string(), "station_id": string(),
                "service_date": string(format="date"), "departs_at": DATETIME,
                "seats": integer(1), "vehicle_id": string(), "driver_ids": array(string()),
                "nature": string(), "schedule_id": string(),
                "carrier_id": string(description="whose vehicles and drivers it may have")},
               ["id", "status", "departs_at", "seats"])
REASON = obj({"reason": string(1, 200)}, ["reason"])
DELAY = obj({"departs_at": DATETIME, "reason": string(1, 200)}, ["departs_at", "reason"])
ASSIGN = obj({"vehicle_id": string(1, 40), "driver_ids": array(string(1, 40), maxItems=4,
                                                                uniqueItems=True)})
EXTRA = obj({"schedule_id": string(1, 40), "service_date": {**DAY},
             "departs_at": DATETIME, "vehicle_id": string(1, 40),
             "nature": string(enum=["extra"])}, ["schedule_id", "service_date"])
OP_ERRORS = ("DEPARTURE_NOT_FOUND", "DEPARTURE_PROXIED", "DEPARTURE_NOT_CHANGEABLE")


DAY_QUERY = obj({"date": {**DAY, "description": "service date"},
                 "station_id": string(1, 20),
                 "status": string(enum=["on_sale", "stopped", "departed", "cancelled"]),
                 "q": string(1, 40, description="a part of the departure id (schedule code)"),
                 **PAGE_QUERY}, ["date"], additional=True)
DAY_ROW = {**OPERATED, "properties": {**OPERATED["properties"], "route_name": string(),
                                      "station_name": string(), "inventory": string(),
                                      "disrupted": {"type": "boolean", "description": (
                                          "cancelled or much delayed: see its disruption")},
                                      "remaining": {"type": ["integer", "null"]}}}


class AdminDeparturesHandler(ApiHandler):
    @api("The departures of a service day by time, with seats left (station staff: their "
         "station's)", roles=OPERATORS, query=DAY_QUERY,
         response=obj({"departures": array(DAY_ROW), "total": TOTAL}, ["departures", "total"]),
         tags=("departures",))
    async def get(self) -> None:
        q = self.query
        rows, total = await self.services.departure_ops.of_day(
            self.principal, q["date"], q.get("station_id"), status=q.get("status"),
            q=q.get("q"), page=Page.of(q, 100))
        self.write_json({"departures": rows, "total": total})

    @api("Add an extra bus (加班车) of a schedule on a day of the sale window",
         roles=OPERATORS, body=EXTRA, response=OPERATED, status=201, tags=("departures",),
         errors=("SCHEDULE_NOT_FOUND", "DEPARTURE_PROXIED", "DATE_NOT_ON_SALE",
                 "DEPARTURE_TIME_INVALID", "VEHICLE_NOT_FOUND"))
    async def post(self) -> None:
        b = self.body
        self.write_json(await self.services.departure_ops.add_extra(
            self.principal, b["schedule_id"], b["service_date"],
            _when(b["departs_at"]) if b.get("departs_at") else None, b.get("vehicle_id")),
            201)


DISRUPTION = obj({
    "departure_id": string(), "status": string(),
    "disruption": {"type": ["object", "null"], "properties": {
        "kind": string(enum=["cancelled", "delayed"]), "reason": string(), "at": DATETIME,
        "deadline": DATETIME, "settled": {"type": "boolean"}},
        "description": "null: the departure is not disrupted"},
    "tickets": obj({"affected": integer(0), "refunded": integer(0), "changed": integer(0),
                    "in_progress": integer(0),
                    "open": integer(0, description="neither refunded nor changed yet: "
                                                   "refunded in full at the deadline")},
                   ["affected", "refunded", "changed", "in_progress", "open"]),
    "notices": obj({"sent": integer(0), "waiting": integer(0), "failed": integer(0)},
                   ["sent", "waiting", "failed"])},
    ["departure_id", "status", "disruption", "tickets", "notices"])


class DisruptionHandler(ApiHandler):
    @api("How a cancelled or much delayed departure's passengers are being looked after: "
         "tickets refunded, changed, under way or still open, and the notices sent",
         roles=OPERATORS, response=DISRUPTION, tags=("departures",),
         errors=("DEPARTURE_NOT_FOUND",))
    async def get(self, departure_id: str) -> None:
        self.write_json(await self.services.departure_ops.disruption(self.principal,
                                                                     departure_id))


class StopSaleHandler(ApiHandler):
    @api("Stop online sale of a departure", roles=OPERATORS, body=REASON, response=OPERATED,
         tags=("departures",), errors=OP_ERRORS)
    async def post(self, departure_id: str) -> None:
        self.write_json(await self.services.departure_ops.stop_sale(
            self.principal, departure_id, self.body["reason"]))


class ResumeSaleHandler(ApiHandler):
    @api("Resume online sale of a stopped departure", roles=OPERATORS, response=OPERATED,
         tags=("departures",), errors=OP_ERRORS)
    async def post(self, departure_id: str) -> None:
        self.write_json(await self.services.departure_ops.resume_sale(self.principal,
                                                                      departure_id))


class CancelHandler(ApiHandler):
    @api("Cancel a departure: off sale, every ticket holder told (refunds are fee-free)",
         roles=OPERATORS, body=REASON, response=OPERATED, tags=("departures",),
         errors=OP_ERRORS)
    async def post(self, departure_id: str) -> None:
        self.write_json(await self.services.departure_ops.cancel(
            self.principal, departure_id, self.body["reason"]))


class DelayHandler(ApiHandler):
    @api("Delay a departure to a later time; every ticket holder told", roles=OPERATORS,
         body=DELAY, response=OPERATED, tags=("departures",),
         errors=(*OP_ERRORS, "DEPARTURE_TIME_INVALID"))
    async def post(self, departure_id: str) -> None:
        self.write_json(await self.services.departure_ops.delay(
            self.principal, departure_id, _when(self.body["departs_at"]),
            self.body["reason"]))


class AssignHandler(ApiHandler):
    @api("Assign a vehicle and drivers", roles=OPERATORS, body=ASSIGN, response=OPERATED,
         tags=("departures",),
         errors=(*OP_ERRORS, "VEHICLE_NOT_FOUND", "VEHICLE_TOO_SMALL", "DRIVER_NOT_FOUND",
                 "CRITERION_REQUIRED"))
    async def post(self, departure_id: str) -> None:
        self.write_json(await self.services.departure_ops.assign(
            self.principal, departure_id, self.body.get("vehicle_id"),
            self.body.get("driver_ids")))


default_handlers += [
    route("/api/v1/admin/departures", AdminDeparturesHandler),
    route("/api/v1/admin/departures/{departure_id}/disruption", DisruptionHandler),
    route("/api/v1/admin/departures/{departure_id}/stop-sale", StopSaleHandler),
    route("/api/v1/admin/departures/{departure_id}/resume-sale", ResumeSaleHandler),
    route("/api/v1/admin/departures/{departure_id}/cancel", CancelHandler),
    route("/api/v1/admin/departures/{departure_id}/delay", DelayHandler),
    route("/api/v1/admin/departures/{departure_id}/assign", AssignHandler),
]
