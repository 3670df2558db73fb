"""Departures as passengers see them: times, stops, fares and the seat map of one journey."""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from server.clock import LOCAL_TZ
from server.exchange.base import segment_mask
from server.exchange.errors import DepartureNotFound, InvalidSegment
from server.services.events import Topic
from server.services.seats import SeatService


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
        seats = await self._seats.availability(departure_id)
        if not self._seats.is_proxied(station):
            seq = seats.version
        online = seats.status != "offline" and dep.get("online", True)
        return seq, {
            "departure_id": departure_id, "status": dep["status"],
            "on_sale_online": dep["status"] == "on_sale" and online,
            "seats": dep["seats"], "segments": seats.segments,
            "remaining": seats.remaining if online else 0,
            "masks": list(seats.occupancy), "held": sorted(seats.held)}
