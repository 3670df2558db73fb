"""Stations: public look-up by name, pinyin or initials; staff listing scoped by region."""

from __future__ import annotations

import re
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from server.errors import DomainError
from server.security.principal import Principal, region_prefix

_PUBLIC_FIELDS = {"_id": 1, "code": 1, "name": 1, "grade": 1, "city": 1, "division": 1,
                  "address": 1, "location": 1, "system": 1, "status": 1}


def public_station(doc: dict[str, Any]) -> dict[str, Any]:
    """The API view of a station."""
    lng, lat = doc["location"]["coordinates"]
    return {"id": doc["_id"], "code": doc["code"], "name": doc["name"], "grade": doc["grade"],
            "city": doc["city"], "division": doc["division"], "address": doc.get("address", ""),
            "lng": lng, "lat": lat, "vendor": doc["system"]["vendor"],
            "status": doc["status"]}


class StationService:
    """Reads of the ``stations`` collection."""

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._stations = db.stations

    async def search(self, q: str | None = None, city: str | None = None,
                     limit: int = 50) -> list[dict[str, Any]]:
        """Stations whose name contains ``q`` or whose pinyin or initials start with it."""
        query: dict[str, Any] = {"status": "active"}
        if city:
            query["city"] = city
        if q:
            text = q.strip().lower()
            escaped = re.escape(text)
            query["$or"] = [{"name": {"$regex": re.escape(q.strip())}},
                            {"city": {"$regex": "^" + re.escape(q.strip())}},
                            {"name_pinyin": {"$regex": "^" + escaped}},
                            {"name_initials": {"$regex": "^" + escaped}}]
        cursor = self._stations.find(query, _PUBLIC_FIELDS).sort(
            [("grade", 1), ("code", 1)]).limit(limit)
        return [public_station(d) async for d in cursor]

    async def list_for(self, principal: Principal, division: str | None = None
                       ) -> list[dict[str, Any]]:
        """Stations a staff principal may see: an authority its region, station roles theirs."""
        query: dict[str, Any] = {}
        if division:
            if not principal.in_region(division):
                raise DomainError("OUT_OF_SCOPE", field="division")
            query["division"] = {"$regex": "^" + region_prefix(division)}
        elif principal.region:
            query["division"] = {"$regex": "^" + region_prefix(principal.region)}
        if principal.station_id:
            query["_id"] = principal.station_id
        cursor = self._stations.find(query, _PUBLIC_FIELDS).sort("code", 1)
        return [public_station(d) async for d in cursor]
