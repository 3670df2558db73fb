"""One departure with its stops, fares and seat map (search comes with booking)."""

from __future__ import annotations

from handlers.base import ApiHandler, api, route
from server.schema import array, integer, obj, string

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


class DepartureHandler(ApiHandler):
    @api("One departure with stops, fares and the seat map of a trip", query=DETAIL_QUERY,
         response=DEPARTURE, tags=("search",),
         errors=("DEPARTURE_NOT_FOUND", "INVALID_SEGMENT"))
    async def get(self, departure_id: str) -> None:
        self.write_json(await self.services.departures.detail(
            departure_id, self.query.get("from_seq", 0), self.query.get("to_seq")))


default_handlers = [route("/api/v1/departures/{departure_id}", DepartureHandler)]
