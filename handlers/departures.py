"""One departure with its stops, fares and seat map (search comes with booking)."""

from __future__ import annotations

from handlers.base import ApiHandler, api, route
from server.schema import DAY, array, integer, obj, string

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


class DepartureSearchHandler(ApiHandler):
    @api("Search departures: from a station or city to a city or stop on a date",
         query=SEARCH, response=SEARCH_RESULTS, tags=("search",),
         errors=("DATE_NOT_ON_SALE",))
    async def get(self) -> None:
        q = self.query
        self.write_json({"departures": await self.services.search.search(
            q["from"], q["to"], q["date"], after=q.get("after"), before=q.get("before"),
            station=q.get("station"), has_seats=q.get("has_seats", False),
            limit=q.get("limit", 100))})


class DepartureHandler(ApiHandler):
    @api("One departure with stops, fares and the seat map of a trip", query=DETAIL_QUERY,
         response=DEPARTURE, tags=("search",),
         errors=("DEPARTURE_NOT_FOUND", "INVALID_SEGMENT"))
    async def get(self, departure_id: str) -> None:
        self.write_json(await self.services.departures.detail(
            departure_id, self.query.get("from_seq", 0), self.query.get("to_seq")))


default_handlers = [route("/api/v1/departures", DepartureSearchHandler),
                    route("/api/v1/departures/{departure_id}", DepartureHandler)]
