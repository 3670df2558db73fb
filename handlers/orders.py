"""Orders: create (seats held), read, list, cancel."""

from __future__ import annotations

from channels import CHANNELS
from handlers.base import ApiHandler, api, route
from server.schema import DATETIME, FEN, PHONE, array, integer, obj, string
from server.security.principal import AGENT, KIOSK, PASSENGER, PHONE_AGENT, STATION_STAFF
from server.vocabulary import ID_TYPES, TICKET_TYPES

BUYERS = (PASSENGER, AGENT, PHONE_AGENT, KIOSK, STATION_STAFF)

PASSENGER_IN = obj({
    "passenger_id": string(1, 40, description="a frequent passenger instead of the fields"),
    "caller_ticket": string(1, 40, description="a desk (agent, phone agent): a person the "
                                               "caller travelled with before, by that "
                                               "ticket's number (see /api/v1/callers)"),
    "name": string(1, 40), "id_type": string(enum=list(ID_TYPES)), "id_no": string(1, 20),
    "ticket_type": string(enum=list(TICKET_TYPES)), "seat": integer(1, 80)})
CHILD_IN = obj({"name": string(1, 40), "id_type": string(enum=list(ID_TYPES)),
                "id_no": string(1, 20)}, ["name"])
CREATE = obj({
    "departure_id": string(1, 64), "passengers": array(PASSENGER_IN, minItems=1),
    "children": array(CHILD_IN, description="accompanied children (携童), no seat"),
    "contact_phone": PHONE, "from_seq": integer(0), "to_seq": integer(1),
    "channel": string(enum=CHANNELS.online(), description="members: where they buy"),
    "pay_at_pickup": {"type": "boolean", "description": (
        "phone bookings: paid at the station window on pickup; the seats are held until "
        "the pickup deadline of the rules")}},
    ["departure_id", "passengers", "contact_phone"])
TICKET_OUT = obj({"ticket_no": string(), "seat": integer(1), "ticket_type": string(),
                  "price": FEN, "status": string(),
                  "distance_km": integer(0, description="行驶里程 of this ticket"),
                  "station_fee": {**FEN, "description": "站务费, part of the price"},
                  "with_child": integer(0, description="accompanied children (携童) riding "
                                                        "free with this passenger"),
                  "passenger": obj({"name": string(), "id_type": string(),
                                    "id_no": string(description="masked")},
                                   ["name", "id_type", "id_no"])},
                 ["ticket_no", "seat", "price", "status", "passenger"])
ORDER = obj({
    "order_no": string(), "status": string(enum=[
        "pending_payment", "waitlisted", "paid", "issued", "completed", "cancelled",
        "expired", "refunding", "refunded", "failed"]),
    "departure_id": string(), "channel": string(), "from_seq": integer(0),
    "to_seq": integer(1), "amount": FEN, "expires_at": DATETIME, "created_at": DATETIME,
    "pay_at_pickup": {"type": "boolean"},
    "disruption": obj({"kind": string(enum=["cancelled", "delayed"]), "reason": string(),
                       "options": array(string(enum=["refund", "change"])),
                       "deadline": DATETIME}, ["kind", "options", "deadline"]),
    "contact_phone": string(description="masked"), "children": array({"type": "object"}),
    "tickets": array(TICKET_OUT), "history": array({"type": "object"})},
    ["order_no", "status", "amount", "expires_at", "tickets"])
ORDER_LIST = obj({"orders": array(ORDER)}, ["orders"])
LIST_QUERY = obj({"status": string(), "limit": integer(1, 100),
                  "before": string(description="order_no to page from")}, additional=True)
ORDER_ERRORS = ("DEPARTURE_NOT_FOUND", "DEPARTURE_STOPPED", "NOT_ON_SALE_ONLINE",
                "SALE_CLOSED", "INVALID_SEGMENT", "NO_FARE", "INVALID_ID_NUMBER",
                "INVALID_PHONE", "TOO_MANY_PASSENGERS_IN_ORDER", "TOO_MANY_CHILDREN",
                "DUPLICATE_PASSENGER", "PASSENGER_ALREADY_BOOKED", "PASSENGER_NOT_FOUND",
                "SEAT_CHOICE_INCOMPLETE", "SEAT_TAKEN", "SOLD_OUT", "ALLOTMENT_EXHAUSTED",
                "QUOTA_EXCEEDED", "CHANNEL_NOT_ALLOWED", "STATION_UNAVAILABLE",
                "STATION_TIMEOUT", "PAYMENT_METHOD_NOT_ALLOWED", "PICKUP_DEADLINE_PASSED")


class OrdersHandler(ApiHandler):
    @api("Create an order: real-name passengers, seats held until the payment timeout",
         roles=BUYERS, body=CREATE, response=ORDER, status=201, tags=("orders",),
         idempotent=True, errors=ORDER_ERRORS,
         description="The amount comes from the fares; the client never sends one. "
                     "Send Idempotency-Key to retry safely.")
    async def post(self) -> None:
        b = self.body
        order = await self.services.orders.create(
            self.principal, b.get("channel"), b["departure_id"], b["passengers"],
            b["contact_phone"],
            children=b.get("children"), from_seq=b.get("from_seq"), to_seq=b.get("to_seq"),
            pay_at_pickup=bool(b.get("pay_at_pickup")))
        self.write_json(order, 201)

    @api("My orders, newest first (staff: their channel, outlet or station)", roles=BUYERS,
         query=LIST_QUERY, response=ORDER_LIST, tags=("orders",))
    async def get(self) -> None:
        self.write_json({"orders": await self.services.orders.list(
            self.principal, status=self.query.get("status"),
            limit=self.query.get("limit", 20), before=self.query.get("before"))})


class OrderHandler(ApiHandler):
    @api("One order with its tickets (someone else's: 404)", roles=BUYERS, response=ORDER,
         tags=("orders",), errors=("ORDER_NOT_FOUND",))
    async def get(self, order_no: str) -> None:
        self.write_json(await self.services.orders.get(self.principal, order_no))


class OrderCancelHandler(ApiHandler):
    @api("Cancel an unpaid order, its seats back on sale (or a waiting waitlist order, "
         "refunded in full)", roles=BUYERS, response=ORDER,
         tags=("orders",), idempotent=True,
         errors=("ORDER_NOT_FOUND", "ORDER_NOT_CANCELLABLE"))
    async def post(self, order_no: str) -> None:
        self.write_json(await self.services.orders.cancel(self.principal, order_no))


CALLER = obj({"caller_ticket": string(description="book this person again with it"),
              "name": string(), "id_type": string(enum=list(ID_TYPES)),
              "id_no": string(description="masked"), "ticket_type": string(),
              "last_booked_at": DATETIME, "trips": integer(1)},
             ["caller_ticket", "name", "id_type", "id_no"])


class CallersHandler(ApiHandler):
    @api("A desk's frequent caller: the people the caller (by phone number) travelled with "
         "on this seller's orders, most recent first, ID numbers masked; book one again with "
         "caller_ticket and the same contact_phone", roles=(AGENT, PHONE_AGENT),
         query=obj({"phone": PHONE}, ["phone"]),
         response=obj({"passengers": array(CALLER)}, ["passengers"]), tags=("orders",),
         errors=("INVALID_PHONE",))
    async def get(self) -> None:
        self.write_json({"passengers": await self.services.orders.callers_passengers(
            self.principal, self.query["phone"])})


default_handlers = [
    route("/api/v1/callers", CallersHandler),
    route("/api/v1/orders", OrdersHandler),
    route("/api/v1/orders/{order_no}", OrderHandler),
    route("/api/v1/orders/{order_no}/cancel", OrderCancelHandler),
]
