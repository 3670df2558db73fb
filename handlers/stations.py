"""Station look-up for passengers (staff manage stations as base data: handlers.basedata)."""

from __future__ import annotations

from handlers.base import ApiHandler, api, route
from server.schema import DIVISION, array, integer, obj, string

STATION = obj({"id": string(), "code": string(), "name": string(), "grade": integer(1, 5),
               "city": string(), "division": DIVISION, "address": string(),
               "lng": {"type": "number"}, "lat": {"type": "number"},
               "vendor": string(enum=["native", "rest", "xml"]), "status": string()},
              ["id", "code", "name", "grade", "city", "division", "lng", "lat"])
STATION_LIST = obj({"stations": array(STATION)}, ["stations"])
SEARCH_QUERY = obj({"q": string(1, 40, description="name, pinyin or initials"),
                    "city": string(1, 20), "limit": integer(1, 200)}, additional=True)


class StationSearchHandler(ApiHandler):
    @api("Stations by name, pinyin or initials, optionally in one city", query=SEARCH_QUERY,
         response=STATION_LIST, tags=("search",))
    async def get(self) -> None:
        stations = await self.services.stations.search(
            self.query.get("q"), self.query.get("city"), self.query.get("limit", 50))
        self.write_json({"stations": stations})


default_handlers = [
    route("/api/v1/stations", StationSearchHandler),
]
