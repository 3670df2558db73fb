"""Agent outlets: the operator's registry and an agent's own account."""

from __future__ import annotations

from handlers.base import ApiHandler, api, route
from server.paging import PAGE_QUERY, TOTAL, Page
from server.schema import DATETIME, DAY, DIVISION, FEN, array, integer, obj, string
from server.security.principal import AGENT, AUTHORITY, FINANCE, OPERATOR

OUTLET = obj({"id": string(), "code": string(), "name": string(), "division": DIVISION,
              "status": string(enum=["active", "suspended"]), "credit_limit": FEN,
              "commission_bp": integer(0, 10_000), "balance": {"type": "integer"},
              "routes": array(string()), "stations": array(string()),
              "daily_quota": {"type": ["integer", "null"]},
              "departure_quota": {"type": ["integer", "null"]}},
             ["id", "code", "name", "status", "credit_limit", "balance"])
ROUTES = array(string(1, 40), maxItems=500, uniqueItems=True,
               description="the routes it may sell; empty: every route")
STATIONS = array(string(1, 40), maxItems=500, uniqueItems=True,
                 description="the stations whose departures it may sell; empty: every one")
DEPARTURE_QUOTA = {"type": ["integer", "null"], "minimum": 1, "maximum": 80,
                   "description": "tickets it may sell on one departure (null: no quota)"}
NEW_OUTLET = obj({"code": string(3, 20, pattern="^[A-Z0-9]+$"), "name": string(1, 60),
                  "division": DIVISION, "credit_limit": integer(0, 10**10),
                  "commission_bp": integer(0, 10_000), "routes": ROUTES,
                  "stations": STATIONS, "daily_quota": integer(1, 100_000),
                  "departure_quota": DEPARTURE_QUOTA}, ["code", "name", "division"])
CHANGE_OUTLET = obj({"name": string(1, 60), "status": string(enum=["active", "suspended"]),
                     "credit_limit": integer(0, 10**10), "commission_bp": integer(0, 10_000),
                     "routes": ROUTES, "stations": STATIONS,
                     "daily_quota": {"type": ["integer", "null"], "minimum": 1,
                                     "maximum": 100_000},
                     "departure_quota": DEPARTURE_QUOTA}, minProperties=1)
ACCOUNT = {**OUTLET, "properties": {**OUTLET["properties"],
                                    "credit_left": {"type": "integer"},
                                    "sold_today": integer(0),
                                    "quota_left": {"type": ["integer", "null"]},
                                    "month_sales": FEN, "month_commission": FEN}}
LIST_QUERY = obj({"division": DIVISION, **PAGE_QUERY}, additional=True)


class OutletsHandler(ApiHandler):
    @api("Agent outlets", roles=(OPERATOR, FINANCE, AUTHORITY), query=LIST_QUERY,
         response=obj({"outlets": array(OUTLET), "total": TOTAL}, ["outlets", "total"]),
         tags=("outlets",), errors=("OUT_OF_SCOPE",))
    async def get(self) -> None:
        rows, total = await self.services.outlets.list(
            self.principal, self.query.get("division"), Page.of(self.query, 100))
        self.write_json({"outlets": rows, "total": total})

    @api("Register an agent outlet", roles=(OPERATOR,), body=NEW_OUTLET, response=OUTLET,
         status=201, tags=("outlets",), errors=("OUTLET_EXISTS", "ROUTE_NOT_FOUND",
                                                      "REFERENCE_NOT_FOUND"))
    async def post(self) -> None:
        self.write_json(await self.services.outlets.create(self.principal, self.body), 201)


class OutletHandler(ApiHandler):
    @api("Change an outlet: suspend or reactivate it, its credit limit, commission, "
         "sellable routes or daily quota", roles=(OPERATOR,), body=CHANGE_OUTLET,
         response=OUTLET, tags=("outlets",), errors=("OUTLET_NOT_FOUND", "ROUTE_NOT_FOUND",
                                                   "REFERENCE_NOT_FOUND"))
    async def patch(self, outlet_id: str) -> None:
        self.write_json(await self.services.outlets.update(self.principal, outlet_id,
                                                           self.body))


class AgentAccountHandler(ApiHandler):
    @api("An agent's own outlet: deposit, credit left, today's tickets against its quota, "
         "this month's sales and commission", roles=(AGENT,), response=ACCOUNT,
         tags=("outlets",), errors=("OUTLET_NOT_FOUND",))
    async def get(self) -> None:
        self.write_json(await self.services.outlets.account(self.principal))


STATEMENT_LINE = obj({"id": string(), "kind": string(enum=["payment", "refund", "deposit"]),
                      "amount": integer(description="fen: + into the deposit (a top-up, a "
                                                    "refund), − out of it (a payment)"),
                      "at": DATETIME, "booked_on": DAY, "order_no": string(),
                      "note": string()}, ["id", "kind", "amount", "booked_on"],
                     additional=True)


class AgentStatementHandler(ApiHandler):
    @api("An agent's deposit statement (预存款流水): its payments, refunds and top-ups, the "
         "latest first, as the ledger booked them (within seconds)", roles=(AGENT,),
         query=obj(PAGE_QUERY),
         response=obj({"entries": array(STATEMENT_LINE), "total": TOTAL}, ["entries", "total"]),
         tags=("outlets",))
    async def get(self) -> None:
        rows, total = await self.services.ledger.statement(
            f"deposit:outlet:{self.principal.outlet_id}", Page.of(self.query))
        self.write_json({"entries": rows, "total": total})


default_handlers = [
    route("/api/v1/admin/outlets", OutletsHandler),
    route("/api/v1/admin/outlets/{outlet_id}", OutletHandler),
    route("/api/v1/agent/account", AgentAccountHandler),
    route("/api/v1/agent/account/entries", AgentStatementHandler),
]
