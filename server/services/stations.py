"""Stations: public look-up by name, pinyin or initials (staff manage them as base data)."""

from __future__ import annotations

from typing import Any

from server.services.search import NetworkCache


def public_station(doc: dict[str, Any]) -> dict[str, Any]:
    """The API view of a station."""
    lng, lat = doc["location"]["coordinates"]
    return {"id": doc["_id"], "code": doc["code"], "name": doc["name"], "grade": doc["grade"],
            "city": doc["city"], "division": doc["division"], "address": doc.get("address", ""),
            "lng": lng, "lat": lat, "vendor": doc["system"]["vendor"],
            "status": doc["status"]}


class StationService:
    """Station look-up, from the cached network."""

    def __init__(self, network: NetworkCache) -> None:
        self._network = network

    async def search(self, q: str | None = None, city: str | None = None,
                     limit: int = 50) -> list[dict[str, Any]]:
        """Stations whose name contains ``q``, or whose name or city starts with ``q`` in
        pinyin or initials ("广州", "guangzhou" and "gz" all find 广州's stations), or whose
        pinyin contains a query of three letters or more ("tianhe")."""
        net = await self._network.get()
        text = (q or "").strip()
        low = text.lower()
        found = []
        for s in sorted(net.stations.values(), key=lambda s: (s["grade"], s["code"])):
            if s.get("status") != "active" or (city and s["city"] != city):
                continue
            if text and not (text in s["name"] or s["city"].startswith(text) or any(
                    str(s.get(k, "")).startswith(low) for k in (
                        "name_pinyin", "name_initials", "city_pinyin", "city_initials"))
                    or (len(low) >= 3 and low in str(s.get("name_pinyin", "")))):
                continue
            found.append(public_station(s))
            if len(found) >= limit:
                break
        return found
