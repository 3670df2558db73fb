"""Tickets after the sale: refund quote and refund, void, change."""

from __future__ import annotations

from handlers.base import ApiHandler, api, route
from handlers.orders import BUYERS
from server.schema import DATETIME, FEN, array, integer, obj, string
from server.security.principal import KIOSK, OPERATOR, STATION_STAFF
from server.vocabulary import ID_TYPES

QUOTE = obj({"ticket_no": string(), "price": FEN, "refundable": {"type": "boolean"},
             "fee": FEN, "refund_amount": FEN, "explanation": string(), "reason": string(),
             "rules_version": string(), "status": string(),
             "tier": obj({"hours_before": integer(0), "rate_bp": integer(0),
                          "min_fee": FEN}),
             "quote": string(description="the offer, signed: refund with it until "
                                         "valid_until to pay this fee"),
             "valid_until": DATETIME},
            ["ticket_no", "price", "refundable"])
REFUND = obj({"expected_fee": integer(0, description="the fee the passenger was shown; "
                                                     "refused if it changed since"),
              "quote": string(1, 2000, description="a refund quote's signed offer: its fee "
                                                   "holds until its valid_until")})
VOID = obj({"reason": string(1, 200)}, ["reason"])
VOIDED = obj({"ticket_no": string(), "status": string(), "refund_amount": FEN},
             ["ticket_no", "status", "refund_amount"])
PICKUP = obj({"pickup_code": string(8, 8, pattern="^[0-9]{8}$"),
              "id_no": string(1, 40, description="the passenger's ID card, when read"),
              "id_type": string(1, 40)}, ["pickup_code"])
PICKED = obj({"ticket_no": string(), "status": string(), "departure_id": string(),
              "seat": integer(1), "departs_at": DATETIME, "passenger": string(),
              "ticket_type": string(), "station_ticket_no": string()},
             ["ticket_no", "status", "station_ticket_no"])
PICKUP_BY_ID = obj({"id_no": string(1, 40, description="as the card reader read it"),
                   "id_type": string(enum=list(ID_TYPES))}, ["id_no"])
PICKED_ALL = obj({"tickets": array({**PICKED, "properties": {
    **PICKED["properties"], "already": {"type": "boolean",
                                        "description": "picked up before this"}}})},
    ["tickets"])
CHANGE = obj({"departure_id": string(1, 64)}, ["departure_id"])
CHANGED = obj({"ticket_no": string(), "departure_id": string(), "seat": integer(1),
               "status": string(), "changed_from": string(), "departs_at": DATETIME},
              ["ticket_no", "departure_id", "seat", "status"])


class RefundQuoteHandler(ApiHandler):
    @api("What a refund would cost now (rules in force), before confirming: a signed offer "
         "of that fee, valid for ten minutes (and not past departure)", roles=BUYERS,
         response=QUOTE, tags=("tickets",), errors=("TICKET_NOT_FOUND",))
    async def get(self, ticket_no: str) -> None:
        self.write_json(await self.services.tickets.quote(self.principal, ticket_no))


class RefundHandler(ApiHandler):
    @api("Refund one ticket; the seat goes back on sale, the money back the way it came",
         roles=BUYERS, body=REFUND, response=QUOTE, tags=("tickets",), idempotent=True,
         errors=("TICKET_NOT_FOUND", "NOT_REFUNDABLE", "REFUND_FEE_CHANGED", "TICKET_BUSY",
                 "QUOTE_INVALID", "QUOTE_EXPIRED", "STATION_UNAVAILABLE",
                 "STATION_TIMEOUT"))
    async def post(self, ticket_no: str) -> None:
        self.write_json(await self.services.tickets.refund(
            self.principal, ticket_no, self.body.get("expected_fee"), self.body.get("quote")))


class VoidHandler(ApiHandler):
    @api("Void a misissued ticket (废票): full amount back, audited",
         roles=(STATION_STAFF, OPERATOR), body=VOID, response=VOIDED, tags=("tickets",),
         idempotent=True, errors=("TICKET_NOT_FOUND", "NOT_REFUNDABLE", "TICKET_BUSY",
                                   "VOID_WINDOW_PASSED"))
    async def post(self, ticket_no: str) -> None:
        self.write_json(await self.services.tickets.void(self.principal, ticket_no,
                                                         self.body["reason"]))


class PickupHandler(ApiHandler):
    @api("Pick up a ticket (取票) at a kiosk or window with its pickup code",
         roles=(KIOSK, STATION_STAFF), body=PICKUP, response=PICKED, tags=("tickets",),
         idempotent=True,
         errors=("PICKUP_CODE_INVALID", "PICKUP_NEEDS_ID", "ALREADY_PICKED_UP",
                 "TOO_MANY_ATTEMPTS", "STATION_UNAVAILABLE", "STATION_TIMEOUT"),
         description="A used code read without the passenger's ID card answers like a wrong "
                     "one; ten wrong codes from one kiosk or window in ten minutes (sixty "
                     "per station) are a 429 until the window ends.")
    async def post(self) -> None:
        b = self.body
        self.write_json(await self.services.tickets.pickup(
            self.principal, b["pickup_code"], b.get("id_no"), b.get("id_type", "resident_id")))


class PickupByIdHandler(ApiHandler):
    @api("Pick up with the ID card alone (刷身份证取票): the card reader's number finds the "
         "person's tickets of today at this station; each not yet picked up is printed",
         roles=(KIOSK, STATION_STAFF), body=PICKUP_BY_ID, response=PICKED_ALL,
         tags=("tickets",), idempotent=True,
         errors=("NO_TICKETS_TODAY", "INVALID_ID_NUMBER", "TOO_MANY_ATTEMPTS",
                 "STATION_UNAVAILABLE", "STATION_TIMEOUT"),
         description="Finding nothing counts like a wrong pickup code: ten from one kiosk or "
                     "window in ten minutes (sixty per station) are a 429 until the window "
                     "ends.")
    async def post(self) -> None:
        b = self.body
        self.write_json(await self.services.tickets.pickup_by_id(
            self.principal, b.get("id_type", "resident_id"), b["id_no"]))


class ChangeHandler(ApiHandler):
    @api("Change to another departure of the same route (改签), once, same fare",
         roles=BUYERS, body=CHANGE, response=CHANGED, tags=("tickets",), idempotent=True,
         errors=("TICKET_NOT_FOUND", "NOT_CHANGEABLE", "CHANGE_FARE_DIFFERS", "SALE_CLOSED",
                 "PASSENGER_ALREADY_BOOKED", "SOLD_OUT", "TICKET_BUSY"))
    async def post(self, ticket_no: str) -> None:
        self.write_json(await self.services.tickets.change(self.principal, ticket_no,
                                                           self.body["departure_id"]))


default_handlers = [
    route("/api/v1/tickets/pickup", PickupHandler),
    route("/api/v1/tickets/pickup-by-id", PickupByIdHandler),
    route("/api/v1/tickets/{ticket_no}/refund-quote", RefundQuoteHandler),
    route("/api/v1/tickets/{ticket_no}/refund", RefundHandler),
    route("/api/v1/tickets/{ticket_no}/void", VoidHandler),
    route("/api/v1/tickets/{ticket_no}/change", ChangeHandler),
]
