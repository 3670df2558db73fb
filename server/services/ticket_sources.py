"""Ticket sources (票源): which channels may sell a departure's seats, and how many.

Set per schedule (every departure of it) or per departure (overrides the schedule). An
allotment reserves seats for a channel until ``release_before_minutes`` before departure,
when unsold allotments fall back to the shared pool; a cap limits a channel; a closed
channel may not sell at all. The station's own window is never limited.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from server.clock import local_today
from server.errors import DomainError
from server.exchange.errors import DepartureNotFound
from server.security.principal import Principal
from server.services.audit import AuditService
from server.storage.inventory import NativeInventory

DEFAULT_RELEASE_MINUTES = 120


class TicketSourceService:
    def __init__(self, db: AsyncDatabase[Any], inventory: NativeInventory,
                 audit: AuditService, limited_channels: list[str]) -> None:
        self._limited = set(limited_channels)  # the channels a ticket source may limit
        self._db = db
        self._inventory = inventory
        self._audit = audit

    async def get(self, actor: Principal, scope: str, ref: str) -> dict[str, Any]:
        """The ticket source of a departure or schedule the actor may see (NOT_FOUND for
        another station's, as for one that does not exist)."""
        limits = actor.station_query()
        if limits:
            owner = await self._db[f"{scope}s"].find_one({"_id": ref}, {"station_id": 1})
            if owner is None or not await self._db.stations.count_documents(
                    {"$and": [{"_id": owner["station_id"]}, limits]}, limit=1):
                raise DomainError("NOT_FOUND")
        doc = await self._db.ticket_sources.find_one({"_id": f"{scope}:{ref}"})
        if doc is None:
            return {"scope": scope, "ref": ref, "allotments": {}, "caps": {},
                    "closed_channels": [], "release_before_minutes": DEFAULT_RELEASE_MINUTES,
                    "configured": False}
        return _public(doc)

    async def put(self, actor: Principal, scope: str, ref: str, allotments: dict[str, int],
                  caps: dict[str, int], closed_channels: list[str],
                  release_before_minutes: int) -> dict[str, Any]:
        """Validate, store, and apply to every affected departure already in Redis."""
        for name in [*allotments, *caps, *closed_channels]:
            if name not in self._limited:
                raise DomainError("TICKET_SOURCE_INVALID",
                                  f"{name!r} is not a channel that can be limited.",
                                  field="channels")
        if set(allotments) & set(closed_channels):
            raise DomainError("TICKET_SOURCE_INVALID",
                              "A closed channel cannot have an allotment.", field="allotments")
        if scope == "departure":
            dep = await self._db.departures.find_one({"_id": ref})
            if dep is None:
                raise DepartureNotFound(departure_id=ref)
            affected = [ref]
            seats = dep["seats"]
        else:
            schedule = await self._db.schedules.find_one({"_id": ref})
            if schedule is None:
                raise DomainError("TICKET_SOURCE_INVALID", "No such schedule.", field="ref")
            seats = schedule["seats"]
            affected = await self._db.departures.distinct(
                "_id", {"schedule_id": ref, "inventory": "native",
                        "service_date": {"$gte": local_today().isoformat()}})
        if sum(allotments.values()) > seats:
            raise DomainError("TICKET_SOURCE_INVALID",
                              f"Allotments add up to more than the {seats} seats.",
                              field="allotments")
        doc = {"_id": f"{scope}:{ref}", "scope": scope, "allotments": allotments,
               "caps": caps, "closed_channels": closed_channels,
               "release_before_minutes": release_before_minutes,
               "updated_at": dt.datetime.now(dt.UTC), "updated_by": actor.id}
        await self._db.ticket_sources.replace_one({"_id": doc["_id"]}, doc, upsert=True)
        for departure_id in affected:
            await self._inventory.configure(departure_id)
        await self._audit.record(actor, "ticket_source.put", target=doc["_id"],
                                 details={"allotments": allotments, "caps": caps,
                                          "closed_channels": closed_channels})
        return _public(doc)


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    scope, _, ref = doc["_id"].partition(":")
    return {"scope": scope, "ref": ref, "allotments": doc.get("allotments", {}),
            "caps": doc.get("caps", {}), "closed_channels": doc.get("closed_channels", []),
            "release_before_minutes": doc.get("release_before_minutes",
                                              DEFAULT_RELEASE_MINUTES),
            "configured": True}
