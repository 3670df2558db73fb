"""Clearing and settlement (清分结算): settlement entities, clearing rules and their
simulation, the ledger, reconciliation runs and settlement batches with statements."""

from __future__ import annotations

from typing import Any

from handlers.base import ApiHandler, api, query_time, route
from server.paging import PAGE_QUERY, TOTAL, Page
from server.schema import DATETIME, DAY, DIVISION, array, integer, obj, string
from server.security.principal import FINANCE, OPERATOR
from server.services.kinds import CODE
from server.services.settlement import statement_csv, statement_xlsx
from server.tables import FORMATS
from server.vocabulary import TICKET_TYPES

READERS = (FINANCE, OPERATOR)
SIGNED_FEN = {"type": "integer", "description": "signed fen (debit positive)"}
ENTITY = obj({"id": string(description="its ledger account, e.g. carrier:C001"),
              "kind": string(enum=["carrier", "station", "outlet", "partner", "provider",
                                   "platform"]),
              "kind_name": string(), "ref": string(), "name": string(),
              "cycle_days": integer(0, 7, description="settled T+N"),
              "bank": obj({"bank_name": string(), "account_name": string(),
                           "account_no": string(description="masked")}),
              "relationships": array(obj({"route_id": string(), "station_id": string()})),
              "balance": SIGNED_FEN}, ["id", "kind", "name", "cycle_days", "balance"])
ENTITY_TERMS = obj({"id": string(1, 80), "cycle_days": integer(0, 7),
                    "bank": obj({"bank_name": string(1, 60), "account_name": string(1, 60),
                                 "account_no": string(6, 34, pattern="^[0-9]+$")},
                                ["bank_name", "account_name", "account_no"])}, ["id"])
REFUND_FEE = obj({"station_bp": integer(0, 10_000), "platform_bp": integer(0, 10_000)})
LINE = obj({"match": obj({"route_id": CODE, "region": DIVISION,
                          "channel": string(1, 24, pattern="^[a-z][a-z_]*$"),
                          "ticket_type": string(enum=list(TICKET_TYPES))}),
            "commission_bp": integer(0, 10_000, description="the seller's, of fare less 站务费"),
            "platform_bp": integer(0, 10_000), "refund_fee": REFUND_FEE})
RULE_BODY = obj({"lines": array(LINE, minItems=1, maxItems=200),
                 "provider_fee_bp": {"type": "object", "additionalProperties": integer(0, 1000),
                                     "propertyNames": {"pattern": "^[a-z][a-z_]{0,23}$"},
                                     "description": "basis points of the fare less 站务费"},
                 "remainder": string(enum=["carrier"]), "note": string(0, 200)}, ["lines"])
RULE_VERSION = obj({"id": string(), "state": string(enum=["draft", "scheduled", "in_force",
                                                           "superseded"]),
                    "effective_from": {"type": ["string", "null"]}, "note": string(),
                    "lines": array(LINE), "provider_fee_bp": obj({}, additional=True),
                    "remainder": string(), "created_by": string()}, ["id", "state", "lines"])
RULE_LIST = obj({"in_force": string(), "versions": array(RULE_VERSION)},
                ["in_force", "versions"])
PUBLISH = obj({"effective_from": DATETIME})
SIMULATE = obj({"from": DATETIME, "to": DATETIME})
SIMULATION = obj({"version": string(), "from": DATETIME, "to": DATETIME,
                  "tickets": integer(0), "total_current": SIGNED_FEN, "total_draft": SIGNED_FEN,
                  "entities": array(obj({"entity": string(), "current": SIGNED_FEN,
                                         "draft": SIGNED_FEN, "difference": SIGNED_FEN}))},
                 ["tickets", "entities"])
POSTING = obj({"account": string(), "amount": SIGNED_FEN}, ["account", "amount"])
ACCOUNTS = obj({"accounts": array(obj({"account": string(), "balance": SIGNED_FEN,
                                       "entries": integer(0),
                                       "updated_at": {"type": ["string", "null"]}})),
                "total": {**SIGNED_FEN, "description": "the balances of every account "
                                                       "matching, summed (zero: the ledger "
                                                       "balances)"},
                "count": TOTAL}, ["accounts", "total", "count"])
ENTRY = obj({"id": string(), "kind": string(), "postings": array(POSTING), "at": DATETIME,
             "booked_on": DAY, "event_at": DATETIME}, ["id", "kind", "postings"],
            additional=True)
ENTRIES = obj({"entries": array(ENTRY), "next": {"type": ["string", "null"]}},
              ["entries", "next"])
ENTRY_QUERY = obj({"account": string(1, 80), "from": DATETIME, "to": DATETIME,
                   "limit": integer(1, 500), "cursor": string(1, 80)})
RECONCILE = obj({"date": DAY, "source": string(
    1, 40, pattern="^(wechat|alipay|station:[A-Za-z0-9][A-Za-z0-9_-]{0,23})$",
    description="wechat or alipay (the provider's bill), or station:<id> (its daily sales "
                "detail)")},
                ["date", "source"])
DIFFERENCE = obj({"id": string(), "class": string(enum=["only_ours", "only_theirs",
                                                         "amount_differs", "status_differs"]),
                  "kind": string(enum=["payment", "refund", "sale", "return"]),
                  "ref": string(),
                  "ours": {"type": ["integer", "null"]}, "theirs": {"type": ["integer", "null"]},
                  "status": string(enum=["open", "resolved"])}, ["id", "class", "status"],
                 additional=True)
RUN = obj({"id": string(), "date": DAY, "source": string(), "lines": integer(0),
           "matched": integer(0), "totals": obj({}, additional=True),
           "open_differences": integer(0), "differences": array(DIFFERENCE)},
          ["id", "date", "source", "totals", "differences"], additional=True)
RUNS = obj({"runs": array(obj({}, additional=True)), "total": TOTAL}, ["runs", "total"])
RESOLVE = obj({"action": string(enum=["adjust", "accept"]), "note": string(1, 500),
               "account": string(1, 80, description="a station difference: the settlement "
                                 "entity that bears it, e.g. carrier:C001"),
               "amount": {**SIGNED_FEN, "minimum": -10**9, "maximum": 10**9,
                          "description": "a station difference: what the entity is owed "
                                         "(negative: owes); default the price difference"}},
              ["action", "note"])
SETTLE = obj({"through_date": DAY}, ["through_date"])
BATCH = obj({"id": string(), "through_date": DAY, "status": string(enum=["running", "done"]),
             "progress": obj({}, additional=True), "totals": obj({}, additional=True),
             "entities": array(obj({}, additional=True))}, ["id", "through_date", "status"],
            additional=True)
BATCHES = obj({"batches": array(BATCH), "total": TOTAL}, ["batches", "total"])


class EntitiesHandler(ApiHandler):
    @api("Settlement entities — carriers, stations, outlets, partners, payment providers, the "
         "operator — with their cycle T+N, bank account (masked), relationships and what the "
         "platform owes each now", roles=READERS,
         query=obj({"kind": string(enum=["carrier", "station", "outlet", "partner",
                                         "provider", "platform"]),
                    "q": string(1, 40, description="part of the account or the name"),
                    **PAGE_QUERY}),
         response=obj({"entities": array(ENTITY), "total": TOTAL}, ["entities", "total"]),
         tags=("settlement",))
    async def get(self) -> None:
        rows, total = await self.services.settlement.entities(
            self.query.get("kind"), self.query.get("q"), Page.of(self.query))
        self.write_json({"entities": rows, "total": total})

    @api("An entity's settlement terms: its cycle T+N (N ≤ 7) and bank account",
         roles=(FINANCE,), body=ENTITY_TERMS, response=ENTITY, idempotent=True,
         tags=("settlement",), errors=("REFERENCE_NOT_FOUND",))
    async def post(self) -> None:
        self.write_json(await self.services.settlement.save_entity(self.principal, self.body))


class ClearingRulesHandler(ApiHandler):
    @api("Clearing rule versions, newest first, and the one in force", roles=READERS,
         response=RULE_LIST, tags=("settlement",))
    async def get(self) -> None:
        self.write_json(await self.services.clearing.list())

    @api("A draft clearing rule version: lines by route, region, channel and ticket type "
         "(the most specific wins), provider fees; the carrier takes the remainder",
         roles=(FINANCE,), body=RULE_BODY, response=RULE_VERSION, status=201,
         idempotent=True, tags=("settlement",),
         errors=("CLEARING_RULE_INVALID", "REFERENCE_NOT_FOUND"))
    async def post(self) -> None:
        self.set_status(201)
        self.write_json(await self.services.clearing.create(self.principal, self.body))


class ClearingRulePublishHandler(ApiHandler):
    @api("A draft takes effect now or at a later time; published versions never change",
         roles=(FINANCE,), body=PUBLISH, response=RULE_VERSION, idempotent=True,
         tags=("settlement",),
         errors=("NOT_FOUND", "CLEARING_RULE_PUBLISHED", "RULE_EFFECTIVE_IN_PAST"))
    async def post(self, version_id: str) -> None:
        self.write_json(await self.services.clearing.publish(self.principal, version_id,
                                                             self.body))


class ClearingRuleSimulateHandler(ApiHandler):
    @api("What the tickets cleared in a past period paid each entity under the rules in "
         "force, beside what they would have under this version. Writes nothing",
         roles=READERS, body=SIMULATE, response=SIMULATION, tags=("settlement",),
         errors=("NOT_FOUND", "INVALID_VALUE"))
    async def post(self, version_id: str) -> None:
        self.write_json(await self.services.clearing.simulate(
            version_id, self.body, self.services.ledger.sales))


class AccountsHandler(ApiHandler):
    @api("A page of the ledger accounts by name and their balances (signed fen, debit "
         "positive), how many match (count) and their balances summed (total: all sum to "
         "zero)",
         roles=READERS, query=obj({"prefix": string(1, 40), **PAGE_QUERY}),
         response=ACCOUNTS, tags=("settlement",))
    async def get(self) -> None:
        rows, count, total = await self.services.ledger.accounts_page(
            self.query.get("prefix"), Page.of(self.query, 100))
        self.write_json({"accounts": rows, "total": total, "count": count})


class EntriesHandler(ApiHandler):
    @api("The journal: entries with their postings, oldest first; page with cursor",
         roles=READERS, query=ENTRY_QUERY, response=ENTRIES, tags=("settlement",),
         errors=("INVALID_VALUE",))
    async def get(self) -> None:
        q = self.query
        self.write_json(await self.services.ledger.entries(
            q.get("account"), query_time(q, "from"), query_time(q, "to"), int(q.get("limit", 100)),
            q.get("cursor")))


class ReconciliationsHandler(ApiHandler):
    @api("Reconciliation runs, newest first", roles=READERS,
         query=obj({"date": DAY, **PAGE_QUERY}), response=RUNS, tags=("settlement",))
    async def get(self) -> None:
        rows, total = await self.services.reconciliation.listed(self.query.get("date"),
                                                                Page.of(self.query))
        self.write_json({"runs": rows, "total": total})

    @api("Reconcile a day of a provider's bill against our payments and refunds: totals, "
         "then line by line; differences kept for finance", roles=(FINANCE, OPERATOR),
         body=RECONCILE, response=RUN, status=201, idempotent=True, tags=("settlement",),
         errors=("INVALID_VALUE", "REFERENCE_NOT_FOUND", "STATEMENT_NOT_READY",
                 "PAYMENT_PROVIDER_ERROR", "STATION_UNSUPPORTED", "STATION_UNAVAILABLE",
                 "STATION_TIMEOUT", "STATION_BAD_RESPONSE"))
    async def post(self) -> None:
        run = await self.services.reconciliation.run(self.principal, self.body["date"],
                                                     self.body["source"])
        self.set_status(201)
        self.write_json(run)


class ReconciliationHandler(ApiHandler):
    @api("One reconciliation run with its differences", roles=READERS, response=RUN,
         tags=("settlement",), errors=("NOT_FOUND",))
    async def get(self, run_id: str) -> None:
        self.write_json(await self.services.reconciliation.view(run_id))


class DifferencesHandler(ApiHandler):
    @api("A page of a run's differences in the order found (open or resolved ones)",
         roles=READERS, query=obj({"status": string(enum=["open", "resolved"]), **PAGE_QUERY}),
         response=obj({"differences": array(DIFFERENCE), "total": TOTAL},
                      ["differences", "total"]), tags=("settlement",), errors=("NOT_FOUND",))
    async def get(self, run_id: str) -> None:
        rows, total = await self.services.reconciliation.differences(
            run_id, self.query.get("status"), Page.of(self.query))
        self.write_json({"differences": rows, "total": total})


class ResolveHandler(ApiHandler):
    @api("Resolve a difference: an adjusting ledger entry, or accepted with a reason "
         "(audited)", roles=(FINANCE,), body=RESOLVE, response=DIFFERENCE, idempotent=True,
         tags=("settlement",), errors=("NOT_FOUND", "DIFFERENCE_RESOLVED",
                                       "NOTHING_TO_ADJUST", "ADJUSTMENT_ACCOUNT",
                                       "REFERENCE_NOT_FOUND"))
    async def post(self, run_id: str, diff_id: str) -> None:
        self.write_json(await self.services.reconciliation.resolve(
            self.principal, run_id, diff_id, self.body))


class SettlementsHandler(ApiHandler):
    @api("Settlement batches, newest first", roles=READERS, query=obj(PAGE_QUERY),
         response=BATCHES, tags=("settlement",))
    async def get(self) -> None:
        rows, total = await self.services.settlement.batches(Page.of(self.query))
        self.write_json({"batches": rows, "total": total})

    @api("Settle through a closed day: per entity, the entries due under its cycle T+N, "
         "netted, with a payout entry each. Once per day across processes: a second run "
         "returns the batch and adds nothing", roles=(FINANCE,), body=SETTLE, response=BATCH,
         idempotent=True, tags=("settlement",),
         errors=("INVALID_VALUE", "SETTLEMENT_DAY_OPEN", "SETTLEMENT_OUT_OF_ORDER",
                 "RECONCILIATION_OPEN", "RECONCILIATION_MISSING"))
    async def post(self) -> None:
        self.write_json(await self.services.settlement.run(self.principal,
                                                           self.body["through_date"]))


class SettlementHandler(ApiHandler):
    @api("One settlement batch: its progress, per-entity totals and payouts", roles=READERS,
         response=BATCH, tags=("settlement",), errors=("NOT_FOUND",))
    async def get(self, batch_id: str) -> None:
        self.write_json(await self.services.settlement.batch(batch_id))


class BatchEntitiesHandler(ApiHandler):
    @api("A page of what a batch settled per entity (by account)", roles=READERS,
         query=obj({"q": string(1, 40, description="part of the entity's account"),
                    **PAGE_QUERY}),
         response=obj({"entities": array(obj({}, additional=True)), "total": TOTAL},
                      ["entities", "total"]), tags=("settlement",), errors=("NOT_FOUND",))
    async def get(self, batch_id: str) -> None:
        rows, total = await self.services.settlement.batch_entities(
            batch_id, self.query.get("q"), Page.of(self.query))
        self.write_json({"entities": rows, "total": total})


PAYEE = obj({"entity": string(), "name": string(), "amount": integer(0)})
PAYOUTS = obj({"batch": string(), "through_date": DAY, "count": integer(0),
               "amount": integer(0, description="fen"),
               "lines": array(obj({"seq": integer(1), "entity": string(), "name": string(),
                                   "bank_name": string(), "account_name": string(),
                                   "account_no": string(description="masked"),
                                   "amount": integer(1), "settlement_code": string(),
                                   "purpose": string()})),
               "no_bank_account": array(PAYEE), "receivable": array(PAYEE)},
              ["batch", "count", "amount", "lines", "no_bank_account", "receivable"])


class PayoutsHandler(ApiHandler):
    @api("A batch's payout instructions: each payee with its bank account as settled "
         "(masked), who has no bank account yet, and who owes the platform", roles=READERS,
         response=PAYOUTS, tags=("settlement",), errors=("NOT_FOUND", "SETTLEMENT_RUNNING"))
    async def get(self, batch_id: str) -> None:
        payouts = await self.services.settlement.payouts(batch_id)
        for line in payouts["lines"]:
            line.pop("account_no_enc")
        self.write_json(payouts)


class PayoutFileHandler(ApiHandler):
    @api("The batch transfer file for the bank (批量付款文件, CSV in UTF-8 with a BOM): "
         "full account numbers, finance only, every export audited", roles=(FINANCE,),
         tags=("settlement",), content_type="text/csv",
         errors=("NOT_FOUND", "SETTLEMENT_RUNNING"))
    async def get(self, batch_id: str) -> None:
        name, data = await self.services.settlement.payout_file(self.principal, batch_id)
        self.set_header("Cache-Control", "no-store")
        self.attachment(name, "text/csv; charset=utf-8", data)


class StatementHandler(ApiHandler):
    def initialize(self, route: str = "unmatched", fmt: str = "csv", **_: Any) -> None:
        super().initialize(route)
        self.fmt = fmt

    @api("An entity's statement of a batch: header, lines, totals, the rule versions used "
         "(CSV in UTF-8 with a BOM, or XLSX)", roles=READERS, tags=("settlement",),
         content_type="application/octet-stream", errors=("NOT_FOUND",))
    async def get(self, batch_id: str, entity_id: str) -> None:
        fmt = self.fmt
        statement = await self.services.settlement.statement(batch_id, entity_id)
        name = f"{statement['settlement_code'].replace(':', '_')}.{fmt}"
        data = statement_csv(statement) if fmt == "csv" else statement_xlsx(statement)
        self.attachment(name, FORMATS[fmt], data)


default_handlers = [
    route("/api/v1/admin/settlement/entities", EntitiesHandler),
    route("/api/v1/admin/clearing-rules", ClearingRulesHandler),
    route("/api/v1/admin/clearing-rules/{version_id}/publish", ClearingRulePublishHandler),
    route("/api/v1/admin/clearing-rules/{version_id}/simulate", ClearingRuleSimulateHandler),
    route("/api/v1/admin/ledger/accounts", AccountsHandler),
    route("/api/v1/admin/ledger/entries", EntriesHandler),
    route("/api/v1/admin/reconciliations", ReconciliationsHandler),
    route("/api/v1/admin/reconciliations/{run_id}", ReconciliationHandler),
    route("/api/v1/admin/reconciliations/{run_id}/differences", DifferencesHandler),
    route("/api/v1/admin/reconciliations/{run_id}/differences/{diff_id}/resolve",
          ResolveHandler),
    route("/api/v1/admin/settlements", SettlementsHandler),
    route("/api/v1/admin/settlements/{batch_id}", SettlementHandler),
    route("/api/v1/admin/settlements/{batch_id}/entities", BatchEntitiesHandler),
    route("/api/v1/admin/settlements/{batch_id}/payouts", PayoutsHandler),
    route("/api/v1/admin/settlements/{batch_id}/payouts.csv", PayoutFileHandler),
    route("/api/v1/admin/settlements/{batch_id}/statements/{entity_id}.csv", StatementHandler,
          fmt="csv"),
    route("/api/v1/admin/settlements/{batch_id}/statements/{entity_id}.xlsx",
          StatementHandler, fmt="xlsx"),
]
