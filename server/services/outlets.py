"""Agent outlets (代售点): the operator's registry, what an outlet may sell, and its own
account. An outlet sells only while active, only the routes it was given (none listed:
every route) and at most its daily quota of tickets; it pays from its deposit down to minus
its credit limit and earns its commission (basis points) on what stays sold."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from server.clock import day_start, local_today
from server.errors import DomainError
from server.paging import Page
from server.security.principal import Principal, region_prefix
from server.services.audit import AuditService
from server.storage.orders import OrderBook
from server.storage.outlets import OutletRecords

SOLD = ("paid", "issued", "completed")  # what counts as sold for quota and commission
EDITABLE = ("name", "status", "credit_limit", "commission_bp", "routes", "stations",
            "daily_quota", "departure_quota")


def public_outlet(doc: dict[str, Any]) -> dict[str, Any]:
    return {"id": doc["_id"], "code": doc["code"], "name": doc["name"],
            "division": doc["division"], "status": doc["status"],
            "credit_limit": int(doc.get("credit_limit", 0)),
            "commission_bp": int(doc.get("commission_bp", 0)),
            "balance": int(doc.get("balance", 0)), "routes": list(doc.get("routes") or []),
            "stations": list(doc.get("stations") or []),
            "daily_quota": doc.get("daily_quota"),
            "departure_quota": doc.get("departure_quota")}


class OutletService:
    def __init__(self, db: AsyncDatabase[Any], audit: AuditService) -> None:
        self._db = db
        self._records = OutletRecords(db)
        self._orders = OrderBook(db)  # read: the tickets its quotas count
        self._audit = audit

    async def create(self, actor: Principal, fields: dict[str, Any]) -> dict[str, Any]:
        doc = {"_id": fields["code"], "code": fields["code"], "name": fields["name"],
               "division": fields["division"], "status": "active",
               "credit_limit": fields.get("credit_limit", 0),
               "commission_bp": fields.get("commission_bp", 0), "balance": 0,
               "routes": fields.get("routes", []), "stations": fields.get("stations", []),
               "daily_quota": fields.get("daily_quota"),
               "departure_quota": fields.get("departure_quota"),
               "created_at": dt.datetime.now(dt.UTC)}
        await self._check_routes(doc["routes"])
        await self._check_stations(doc["stations"])
        if not await self._records.create(doc):
            raise DomainError("OUTLET_EXISTS", field="code")
        await self._audit.record(actor, "outlet.create", target=doc["_id"],
                                 details={k: doc[k] for k in EDITABLE})
        return public_outlet(doc)

    async def list(self, actor: Principal, division: str | None = None,
                   page: Page | None = None) -> tuple[list[dict[str, Any]], int]:
        """A page of outlets (an authority's: its region's) and how many match."""
        if actor.region:  # an authority sees its region's outlets only
            if division and not actor.in_region(division):
                raise DomainError("OUT_OF_SCOPE")
            division = division or actor.region
        query = {"division": {"$regex": "^" + region_prefix(division)}} if division else {}
        rows, total = await self._records.page(query, page or Page(0, 500))
        return [public_outlet(o) for o in rows], total

    async def update(self, actor: Principal, outlet_id: str, fields: dict[str, Any]
                     ) -> dict[str, Any]:
        if "routes" in fields:
            await self._check_routes(fields["routes"])
        if "stations" in fields:
            await self._check_stations(fields["stations"])
        done = await self._records.update(outlet_id, fields)
        if done is None:
            raise DomainError("OUTLET_NOT_FOUND")
        await self._audit.record(actor, "outlet.update", target=outlet_id, details=fields)
        return public_outlet(done)

    async def _check_routes(self, routes: list[str]) -> None:
        if routes and await self._db.routes.count_documents(
                {"_id": {"$in": routes}}) != len(set(routes)):
            raise DomainError("ROUTE_NOT_FOUND", field="routes")

    async def _check_stations(self, stations: list[str]) -> None:
        if stations and await self._db.stations.count_documents(
                {"_id": {"$in": stations}}) != len(set(stations)):
            raise DomainError("REFERENCE_NOT_FOUND", "No such station.", field="stations")

    # --- selling ------------------------------------------------------------------------------
    async def may_sell(self, outlet_id: str, dep: dict[str, Any], tickets: int) -> None:
        """Refuse a sale the outlet may not make: suspended, a route or station it was not
        given, more tickets on this departure or today than its quotas."""
        outlet = await self._records.get(outlet_id)
        if outlet is None:
            raise DomainError("OUTLET_NOT_FOUND")
        if outlet["status"] != "active":
            raise DomainError("OUTLET_SUSPENDED")
        if outlet.get("routes") and dep["route_id"] not in outlet["routes"]:
            raise DomainError("ROUTE_NOT_SELLABLE", field="departure_id")
        if outlet.get("stations") and dep["station_id"] not in outlet["stations"]:
            raise DomainError("ROUTE_NOT_SELLABLE", "This outlet may not sell this station's "
                              "departures.", field="departure_id")
        per_departure = outlet.get("departure_quota")
        if per_departure is not None:
            held = await self._orders.live_tickets({"outlet_id": outlet_id,
                                           "departure_id": dep["_id"]})
            if held + tickets > per_departure:
                raise DomainError("OUTLET_QUOTA_EXCEEDED", "The outlet's quota of this "
                                  "departure is used up.", left=max(0, per_departure - held))
        quota = outlet.get("daily_quota")
        if quota is not None:
            sold = await self.sold_today(outlet_id)
            if sold + tickets > quota:
                raise DomainError("OUTLET_QUOTA_EXCEEDED", left=max(0, quota - sold))

    async def sold_today(self, outlet_id: str) -> int:
        """Tickets the outlet's orders hold today (unpaid ones too: they hold seats)."""
        return await self._orders.live_tickets({"outlet_id": outlet_id, "created_at": {
            "$gte": day_start(local_today())}})

    # --- the agent's own account -------------------------------------------------------------
    async def account(self, actor: Principal) -> dict[str, Any]:
        if not actor.outlet_id:
            raise DomainError("OUTLET_NOT_FOUND")
        outlet = await self._records.get(actor.outlet_id)
        if outlet is None:
            raise DomainError("OUTLET_NOT_FOUND")
        today = local_today()
        month = day_start(today.replace(day=1))
        sales = 0
        async for order in self._db.orders.find(
                {"outlet_id": actor.outlet_id, "created_at": {"$gte": month},
                 "status": {"$in": list(SOLD)}}, {"amount": 1}):
            sales += int(order["amount"])
        sold = await self.sold_today(actor.outlet_id)
        balance, credit = int(outlet.get("balance", 0)), int(outlet.get("credit_limit", 0))
        quota = outlet.get("daily_quota")
        return {**public_outlet(outlet), "credit_left": balance + credit,
                "sold_today": sold, "quota_left": None if quota is None else max(0, quota - sold),
                "month_sales": sales,
                "month_commission": sales * int(outlet.get("commission_bp", 0)) // 10_000}
