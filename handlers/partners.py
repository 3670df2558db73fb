"""Partners: the operator's registry (keys shown once, deposits) and the signed partner API
(``/partner/v1``) third-party platforms sell through, with its own OpenAPI document."""

from __future__ import annotations

from typing import Any

from handlers.base import ApiHandler, api, route
from handlers.departures import SEARCH, SEARCH_RESULTS, search
from handlers.orders import CREATE, ORDER, ORDER_ERRORS
from handlers.payments import DEPOSIT
from handlers.tickets import QUOTE, REFUND
from server.paging import PAGE_QUERY, TOTAL, Page
from server.schema import DATETIME, FEN, array, integer, obj, string
from server.security.principal import FINANCE, OPERATOR, PARTNER, Principal

PARTNER_REFUND = obj({"expected_fee": REFUND["properties"]["expected_fee"]})

PARTNER_OUT = obj({"id": string(), "code": string(), "name": string(), "status": string(),
                   "webhook_url": string(), "balance": {"type": "integer"},
                   "credit_limit": FEN, "rate_per_minute": integer(1),
                   "daily_quota": {"type": ["integer", "null"], "minimum": 0}},
                  ["id", "code", "name", "status", "balance"])
PARTNER_PATCH = obj({"name": string(1, 64), "status": string(enum=["active", "suspended"]),
                     "credit_limit": integer(0, 10**10, description="fen"),
                     "webhook_url": string(8, 300, pattern="^https?://[!-~]+$"),
                     "rate_per_minute": integer(1, 100_000, description="signed requests a "
                                                                          "minute"),
                     "daily_quota": {"type": ["integer", "null"], "minimum": 0,
                                     "maximum": 1_000_000,
                                     "description": "tickets a day (null: no quota)"}},
                    minProperties=1)
KEYS_OUT = obj({"keys": array(obj({"key_id": string(), "created_at": DATETIME},
                                  ["key_id", "created_at"]))}, ["keys"])
PARTNER_IN = obj({"code": string(2, 32, pattern="^[A-Za-z0-9_-]+$"), "name": string(1, 64),
                  "credit_limit": integer(0, 10**10, description="fen"),
                  "webhook_url": string(8, 300, pattern="^https?://[!-~]+$",
                                        description="where order events go (https)")},
                 ["code", "name"])
KEY_OUT = obj({"key_id": string(), "secret": string(description="shown this once")},
              ["key_id", "secret"])
PARTNER_DEPOSITED = obj({"partner_id": string(), "balance": {"type": "integer"},
                         "credit_limit": FEN, "reference": string(),
                         "recorded": {"type": "boolean"}},
                        ["partner_id", "balance", "recorded"])
PARTNER_ORDER = {**CREATE, "properties": {k: v for k, v in CREATE["properties"].items()
                                          if k not in ("channel", "pay_at_pickup")}}
SIGNED_ERRORS = ("SIGNATURE_INVALID", "TIMESTAMP_OUT_OF_WINDOW", "NONCE_REUSED",
                 "PARTNER_SUSPENDED", "PARTNER_RATE_LIMITED")


class PartnersHandler(ApiHandler):
    @api("Partners (third-party sellers)", roles=(OPERATOR, FINANCE), query=obj(PAGE_QUERY),
         response=obj({"partners": array(PARTNER_OUT), "total": TOTAL}, ["partners", "total"]),
         tags=("partners",))
    async def get(self) -> None:
        rows, total = await self.services.partners.list(Page.of(self.query, 100))
        self.write_json({"partners": rows, "total": total})

    @api("Register a partner", roles=(OPERATOR,), body=PARTNER_IN, response=PARTNER_OUT,
         status=201, tags=("partners",), errors=("PARTNER_EXISTS", "WEBHOOK_URL_INVALID"))
    async def post(self) -> None:
        b = self.body
        self.write_json(await self.services.partners.create(
            self.principal, b["code"], b["name"], b.get("credit_limit", 0),
            b.get("webhook_url", "")), 201)


class PartnerHandler(ApiHandler):
    @api("Change a partner: suspend or resume it, its request rate, daily ticket quota, "
         "credit or webhook", roles=(OPERATOR,), body=PARTNER_PATCH, response=PARTNER_OUT,
         tags=("partners",), errors=("PARTNER_NOT_FOUND", "WEBHOOK_URL_INVALID"))
    async def patch(self, partner_id: str) -> None:
        self.write_json(await self.services.partners.update(self.principal, partner_id,
                                                            self.body))


class PartnerKeysHandler(ApiHandler):
    @api("A partner's live keys (ids only; secrets are never shown again)",
         roles=(OPERATOR,), response=KEYS_OUT, tags=("partners",))
    async def get(self, partner_id: str) -> None:
        self.write_json({"keys": await self.services.partners.keys(partner_id)})

    @api("A new API key for a partner: the secret is shown in this answer only. Two keys "
         "may be live at once, so a partner rotates without a gap: issue, switch, revoke",
         roles=(OPERATOR,), response=KEY_OUT, status=201, tags=("partners",),
         errors=("PARTNER_NOT_FOUND", "KEY_LIMIT"))
    async def post(self, partner_id: str) -> None:
        self.write_json(await self.services.partners.issue_key(self.principal, partner_id),
                        201)


class PartnerKeyRevokeHandler(ApiHandler):
    @api("Revoke a key: requests signed with it are refused from now on", roles=(OPERATOR,),
         status=204, tags=("partners",), errors=("KEY_NOT_FOUND",))
    async def post(self, partner_id: str, key_id: str) -> None:
        await self.services.partners.revoke_key(self.principal, partner_id, key_id)
        self.write_json(None, 204)


class PartnerDepositHandler(ApiHandler):
    @api("Record a partner's deposit (top-up of its prepaid balance)", roles=(FINANCE, OPERATOR),
         body=DEPOSIT, response=PARTNER_DEPOSITED, tags=("partners",),
         errors=("PARTNER_NOT_FOUND",))
    async def post(self, partner_id: str) -> None:
        self.write_json(await self.services.payments.deposit(
            self.principal, "partner", partner_id, self.body["amount"], self.body["reference"]))


# --- the partner API ----------------------------------------------------------------------------
class PartnerApiHandler(ApiHandler):
    """Signed requests (``server.security.signing``): the partner is who signed."""

    async def _principal_from_header(self) -> Principal | None:
        r = self.request
        headers: dict[str, Any] = dict(r.headers)
        return await self.services.partners.authenticate(
            r.method or "GET", r.path, r.query, headers, r.body or b"")


class PartnerDeparturesHandler(PartnerApiHandler):
    @api("Search departures", roles=(PARTNER,), query=SEARCH, response=SEARCH_RESULTS,
         tags=("partner",), errors=(*SIGNED_ERRORS, "DATE_NOT_ON_SALE"))
    async def get(self) -> None:
        await search(self)


class PartnerOrdersHandler(PartnerApiHandler):
    @api("Book: real-name passengers, seats held until the payment timeout; confirm to pay",
         roles=(PARTNER,), body=PARTNER_ORDER, response=ORDER, status=201, tags=("partner",),
         idempotent=True, errors=(*SIGNED_ERRORS, *ORDER_ERRORS, "PARTNER_QUOTA_EXCEEDED"))
    async def post(self) -> None:
        b = self.body
        self.write_json(await self.services.orders.create(
            self.principal, None, b["departure_id"], b["passengers"], b["contact_phone"],
            children=b.get("children"), from_seq=b.get("from_seq"), to_seq=b.get("to_seq")),
            201)


class PartnerOrderHandler(PartnerApiHandler):
    @api("One of the partner's orders (another's: 404)", roles=(PARTNER,), response=ORDER,
         tags=("partner",), errors=(*SIGNED_ERRORS, "ORDER_NOT_FOUND"))
    async def get(self, order_no: str) -> None:
        self.write_json(await self.services.orders.get(self.principal, order_no))


class PartnerConfirmHandler(PartnerApiHandler):
    @api("Confirm an order: paid from the partner's deposit, tickets issued", roles=(PARTNER,),
         response=ORDER, tags=("partner",), idempotent=True,
         errors=(*SIGNED_ERRORS, "ORDER_NOT_FOUND", "ORDER_NOT_PAYABLE", "PAYMENT_IN_PROGRESS",
                 "INSUFFICIENT_BALANCE"))
    async def post(self, order_no: str) -> None:
        await self.services.payments.start(self.principal, order_no, "partner_deposit")
        self.write_json(await self.services.orders.get(self.principal, order_no))


class PartnerRefundHandler(PartnerApiHandler):
    @api("Refund one ticket by the rules in force; the money goes back to the deposit",
         roles=(PARTNER,), body=PARTNER_REFUND, response=QUOTE, tags=("partner",),
         idempotent=True,
         errors=(*SIGNED_ERRORS, "TICKET_NOT_FOUND", "NOT_REFUNDABLE", "REFUND_FEE_CHANGED",
                 "TICKET_BUSY"))
    async def post(self, ticket_no: str) -> None:
        self.write_json(await self.services.tickets.refund(
            self.principal, ticket_no, self.body.get("expected_fee")))


class PartnerOpenApiHandler(ApiHandler):
    @api("The partner API's OpenAPI 3.1 document", tags=("docs",))
    async def get(self) -> None:
        self.set_header("Cache-Control", "public, max-age=60")
        self.write_json(self.application.settings["partner_openapi"])


default_handlers = [
    route("/api/v1/admin/partners", PartnersHandler),
    route("/api/v1/admin/partners/{partner_id}", PartnerHandler),
    route("/api/v1/admin/partners/{partner_id}/keys", PartnerKeysHandler),
    route("/api/v1/admin/partners/{partner_id}/keys/{key_id}/revoke", PartnerKeyRevokeHandler),
    route("/api/v1/admin/partners/{partner_id}/deposits", PartnerDepositHandler),
]
partner_handlers = [
    route("/partner/v1/departures", PartnerDeparturesHandler),
    route("/partner/v1/orders", PartnerOrdersHandler),
    route("/partner/v1/orders/{order_no}", PartnerOrderHandler),
    route("/partner/v1/orders/{order_no}/confirm", PartnerConfirmHandler),
    route("/partner/v1/tickets/{ticket_no}/refund", PartnerRefundHandler),
]
