"""Waitlist (候补购票): file a waitlist order on sold-out departures, see its place."""

from __future__ import annotations

from channels import CHANNELS
from handlers.base import ApiHandler, api, route
from handlers.orders import BUYERS, ORDER, ORDER_ERRORS, PASSENGER_IN
from server.errors import aware_time
from server.schema import DATETIME, PHONE, array, integer, obj, string

FILE = obj({
    "departure_ids": array(string(1, 64), minItems=1, maxItems=5,
                           description="acceptable departures of one route and day, in the "
                                       "order preferred"),
    "passengers": array(PASSENGER_IN, minItems=1), "contact_phone": PHONE,
    "deadline": {**DATETIME, "description": "unfilled by then: refunded in full; at the "
                                            "latest when online sale of the last departure "
                                            "closes"},
    "from_seq": integer(0), "to_seq": integer(1),
    "channel": string(enum=CHANNELS.online(), description="members: where they buy")},
    ["departure_ids", "passengers", "contact_phone", "deadline"])
WAITLIST_ORDER = {**ORDER, "properties": {
    **ORDER["properties"], "kind": string(enum=["waitlist"]),
    "waitlist": obj({"departure_ids": array(string()), "deadline": DATETIME,
                     "passengers": array({"type": "object"}), "filled_at": DATETIME,
                     "ahead": integer(0, description="waiting orders before this one")},
                    ["departure_ids", "deadline", "passengers"])}}


class WaitlistHandler(ApiHandler):
    @api("File a waitlist order (候补) on sold-out departures: prepaid like an order, filled "
         "automatically in the order filed when seats come back, refunded in full if not "
         "filled by its deadline", roles=BUYERS, body=FILE, response=WAITLIST_ORDER,
         status=201, tags=("orders",), idempotent=True,
         errors=(*ORDER_ERRORS, "WAITLIST_DEPARTURES_MIXED", "WAITLIST_DEADLINE_INVALID",
                 "WAITLIST_SEATS_AVAILABLE", "PASSENGER_ALREADY_WAITING"),
         description="Pay it with POST /api/v1/orders/{order_no}/pay; cancel it (refunded "
                     "while waiting) with POST /api/v1/orders/{order_no}/cancel.")
    async def post(self) -> None:
        b = self.body
        deadline = aware_time(b["deadline"], code="WAITLIST_DEADLINE_INVALID",
                              message="deadline is an RFC 3339 time with its offset.",
                              field="deadline")
        order = await self.services.waitlist.file(
            self.principal, b.get("channel"), b["departure_ids"], b["passengers"],
            b["contact_phone"], deadline, from_seq=b.get("from_seq"), to_seq=b.get("to_seq"))
        self.write_json(order, 201)


class WaitlistOrderHandler(ApiHandler):
    @api("A waitlist order and how many are waiting ahead of it", roles=BUYERS,
         response=WAITLIST_ORDER, tags=("orders",), errors=("ORDER_NOT_FOUND",))
    async def get(self, order_no: str) -> None:
        self.write_json(await self.services.waitlist.view(self.principal, order_no))


default_handlers = [
    route("/api/v1/waitlist", WaitlistHandler),
    route("/api/v1/waitlist/{order_no}", WaitlistOrderHandler),
]
