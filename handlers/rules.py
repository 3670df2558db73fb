"""Business rules as managed data: their versions, a new version, a draft's dry run."""

from __future__ import annotations

from handlers.base import ApiHandler, api, route
from server.schema import DATETIME, FEN, array, integer, obj, string
from server.security.principal import AUTHORITY, FINANCE, OPERATOR

TIER = obj({"hours_before": {"type": "number", "minimum": 0, "maximum": 720},
            "rate_bp": integer(0, 100_000, description="basis points of the price"),
            "min_fee": FEN}, ["hours_before", "rate_bp", "min_fee"])
RULES = {
    "max_passengers": integer(1, 9, description="paying passengers per order"),
    "max_free_children_per_adult": integer(0, 3, description="携童"),
    "sale_days": integer(1, 60, description="days on sale ahead"),
    "online_cutoff_minutes": integer(0, 1440, description="online sale closes before "
                                                          "departure"),
    "payment_timeout_minutes": integer(5, 120, description="how long a hold lasts"),
    "pickup_deadline_minutes": integer(0, 1440, description="a pay-at-pickup booking is paid "
                                                            "this long before departure"),
    "refund_tiers": array(TIER, minItems=1, maxItems=10, description="from hours_before "
                                                                      "on: this fee"),
    "refund_after_departure": {"type": "boolean"},
    "changes_allowed": integer(0, 5, description="改签 per ticket"),
    "change_cutoff_minutes": integer(0, 1440),
    "void_window_minutes": integer(0, 1440, description="废票 this long after issue"),
    "disruption_delay_minutes": integer(10, 1440, description="a delay this long is a "
                                                              "disruption"),
    "on_time_tolerance_minutes": integer(0, 120, description="正点: left at most this long "
                                                             "after its time"),
    "invoice_station_fee_separately": {"type": "boolean",
                                       "description": "站务费 on its own invoice line"},
}
SCOPE = obj({"level": string(enum=["province", "region", "station", "route"]),
             "ref": string(0, 24, description="the division, station or route")}, ["level"])
PUBLISH = obj({"effective_from": {**DATETIME, "description": "now or later (default: now)"},
               "scope": SCOPE, "note": string(0, 200), **RULES})
DRY_RUN = obj({"from": DATETIME, "to": DATETIME, "scope": SCOPE, **RULES})
VERSION = obj({"id": string(), "effective_from": DATETIME, "scope": SCOPE,
               "rules": obj(RULES), "note": string(),
               "state": string(enum=["in_force", "scheduled", "superseded"]),
               "created_by": string()}, ["id", "effective_from", "scope", "rules", "state"])
LISTING = obj({"current": obj({**RULES, "version": string()}, additional=True),
               "versions": array(VERSION)}, ["current", "versions"])
CHANGE = obj({"ticket_no": string(), "fee_before": FEN, "fee_after": FEN},
             ["ticket_no", "fee_before", "fee_after"])
REPORT = obj({"from": DATETIME, "to": DATETIME, "orders": integer(0),
              "orders_refused": integer(0), "refunds": integer(0), "fees_changed": integer(0),
              "fees_before": FEN, "fees_after": FEN, "changes": array(CHANGE)},
             ["orders", "orders_refused", "refunds", "fees_changed"])


class RulesHandler(ApiHandler):
    @api("Rule versions, newest first, with the province's rules in force",
         roles=(OPERATOR, FINANCE, AUTHORITY), response=LISTING, tags=("rules",))
    async def get(self) -> None:
        self.write_json(await self.services.rules.list())

    @api("A new rule version: the rules it sets, from when (now or later), for which scope "
         "(province, region, station or route; the most specific in force says last)",
         roles=(OPERATOR,), body=PUBLISH, response=VERSION, status=201, idempotent=True,
         tags=("rules",), errors=("RULE_INVALID", "RULE_EFFECTIVE_IN_PAST",
                                  "REFERENCE_NOT_FOUND"))
    async def post(self) -> None:
        self.write_json(await self.services.rules.publish(self.principal, self.body))


class RulesDryRunHandler(ApiHandler):
    @api("A draft replayed against real past orders of its scope: refunds whose fee would "
         "differ, orders it would have refused. Writes nothing",
         roles=(OPERATOR, FINANCE), body=DRY_RUN, response=REPORT, tags=("rules",),
         errors=("RULE_INVALID", "REFERENCE_NOT_FOUND"))
    async def post(self) -> None:
        self.write_json(await self.services.rules.dry_run(self.body))


default_handlers = [
    route("/api/v1/admin/rules", RulesHandler),
    route("/api/v1/admin/rules/dry-run", RulesDryRunHandler),
]
