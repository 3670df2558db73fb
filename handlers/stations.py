"""Station look-up for passengers, station listing for staff (region-scoped)."""

from __future__ import annotations

from handlers.base import ApiHandler, api, route
from server.schema import DIVISION, array, integer, obj, string
from server.security.principal import AUTHORITY, FINANCE, GATE, KIOSK, OPERATOR, STATION_STAFF

STATION = obj({"id": string(), "code": string(), "name": string(), "grade": integer(1, 5),
               "city": string(), "division": DIVISION, "address": string(),
               "lng": {"type": "number"}, "lat": {"type": "number"},
               "vendor": string(enum=["native", "rest", "xml"]), "status": string()},
              ["id", "code", "name", "grade", "city", "division", "lng", "lat"])
STATION_LIST = obj({"stations": array(STATION)}, ["stations"])
SEARCH_QUERY = obj({"q": string(1, 40, description="name, pinyin or initials"),
                    "city": string(1, 20), "limit": integer(1, 200)}, additional=True)
ADMIN_QUERY = obj({"division": DIVISION}, additional=True)


class StationSearchHandler(ApiHandler):
    @api("Stations by name, pinyin or initials, optionally in one city", query=SEARCH_QUERY,
         response=STATION_LIST, tags=("search",))
    async def get(self) -> None:
        stations = await self.services.stations.search(
            self.query.get("q"), self.query.get("city"), self.query.get("limit", 50))
        self.write_json({"stations": stations})


class AdminStationsHandler(ApiHandler):
    @api("Stations visible to this staff member (authority: its region only)",
         roles=(OPERATOR, FINANCE, AUTHORITY, STATION_STAFF, GATE, KIOSK), query=ADMIN_QUERY,
         response=STATION_LIST, tags=("admin",), errors=("OUT_OF_SCOPE",))
    async def get(self) -> None:
        stations = await self.services.stations.list_for(self.principal,
                                                         self.query.get("division"))
        self.write_json({"stations": stations})


default_handlers = [
    route("/api/v1/stations", StationSearchHandler),
    route("/api/v1/admin/stations", AdminStationsHandler),
]
