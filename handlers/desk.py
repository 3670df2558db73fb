"""The order desk (客服/异常处理): find any order the staff member may see by order or ticket
number, phone, ID number or departure; see its money; act on exceptions — issue a paid order
again, refund one that will not be issued, settle a ticket stuck half-way. Each act audited
by the service that does it."""

from __future__ import annotations

from handlers.base import ApiHandler, api, route
from handlers.orders import ORDER
from handlers.payments import REFUND
from server.paging import PAGE_QUERY, TOTAL, Page
from server.schema import DATETIME, FEN, PHONE, array, obj, string
from server.security.principal import FINANCE, OPERATOR, STATION_STAFF
from server.vocabulary import ID_TYPES

DESK = (OPERATOR, STATION_STAFF)
FIND = obj({"order_no": string(1, 40), "ticket_no": string(1, 40), "phone": PHONE,
            "id_type": string(enum=list(ID_TYPES)), "id_no": string(1, 20),
            "departure_id": string(1, 64), "status": ORDER["properties"]["status"],
            **PAGE_QUERY}, additional=True)
PAYMENT = obj({"out_trade_no": string(), "provider": string(), "method": string(),
               "amount": FEN, "status": string(), "created_at": DATETIME,
               "paid_at": {"type": ["string", "null"], "format": "date-time"}},
              ["out_trade_no", "provider", "amount", "status"])
DESK_ORDER = {**ORDER, "properties": {**ORDER["properties"],
                                      "payments": array(PAYMENT), "refunds": array(REFUND)}}
REASON = obj({"reason": string(1, 200, description="why, for the record")}, ["reason"])
ISSUED = obj({"order_no": string(), "outcome": string(enum=["issued", "failed", "paid"],
                                                       description="paid: the station "
                                                       "still does not answer")},
             ["order_no", "outcome"])
SETTLED = obj({"ticket_no": string(), "settled": {"type": "boolean"}, "status": string()},
              ["ticket_no", "settled", "status"])


class DeskOrdersHandler(ApiHandler):
    @api("Find orders (newest first) by order or ticket number, phone, ID number or "
         "departure; phone and ID are matched through their blind index and shown masked",
         roles=(*DESK, FINANCE), query=FIND,
         response=obj({"orders": array(ORDER), "total": TOTAL}, ["orders", "total"]),
         tags=("desk",), errors=("CRITERION_REQUIRED", "INVALID_ID_NUMBER", "INVALID_PHONE"))
    async def get(self) -> None:
        q = self.query
        orders, total = await self.services.orders.find(
            self.principal, order_no=q.get("order_no"), ticket_no=q.get("ticket_no"),
            phone=q.get("phone"), id_type=q.get("id_type", "resident_id"),
            id_no=q.get("id_no"), departure_id=q.get("departure_id"), status=q.get("status"),
            page=Page.of(q))
        self.write_json({"orders": orders, "total": total})


class DeskOrderHandler(ApiHandler):
    @api("One order with its full history, payments and refunds", roles=(*DESK, FINANCE),
         response=DESK_ORDER, tags=("desk",), errors=("ORDER_NOT_FOUND",))
    async def get(self, order_no: str) -> None:
        order = await self.services.orders.get(self.principal, order_no)
        self.write_json({**order, **await self.services.payments.of_order(order_no)})


class DeskIssueHandler(ApiHandler):
    @api("Issue a paid order again (its station call failed)", roles=DESK, response=ISSUED,
         tags=("desk",), errors=("ORDER_NOT_FOUND", "ORDER_NOT_ISSUABLE"))
    async def post(self, order_no: str) -> None:
        outcome = await self.services.orders.issue_again(self.principal, order_no)
        self.write_json({"order_no": order_no, "outcome": outcome})


class DeskRefundHandler(ApiHandler):
    @api("Refund a paid order that will not be issued: the whole amount back", roles=DESK,
         body=REASON, response=ORDER, tags=("desk",),
         errors=("ORDER_NOT_FOUND", "ORDER_NOT_ISSUABLE"))
    async def post(self, order_no: str) -> None:
        await self.services.orders.refund_unissued(self.principal, order_no,
                                                   self.body["reason"])
        self.write_json(await self.services.orders.get(self.principal, order_no))


class DeskSettleHandler(ApiHandler):
    @api("Settle a ticket stuck half-way through a refund, void or change, now",
         roles=DESK, response=SETTLED, tags=("desk",),
         errors=("TICKET_NOT_FOUND", "TICKET_NOT_STUCK"))
    async def post(self, ticket_no: str) -> None:
        self.write_json(await self.services.tickets.settle_now(self.principal, ticket_no))


default_handlers = [
    route("/api/v1/admin/orders", DeskOrdersHandler),
    route("/api/v1/admin/orders/{order_no}", DeskOrderHandler),
    route("/api/v1/admin/orders/{order_no}/issue", DeskIssueHandler),
    route("/api/v1/admin/orders/{order_no}/refund", DeskRefundHandler),
    route("/api/v1/admin/tickets/{ticket_no}/settle", DeskSettleHandler),
]
