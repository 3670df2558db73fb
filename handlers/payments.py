"""Paying for an order, provider notifications, statements, outlet deposits, refunds."""

from __future__ import annotations

import logging

from channels import CHANNELS
from handlers.base import ApiHandler, api, route
from handlers.orders import BUYERS
from payments.base import NotificationRejected
from server.errors import DomainError
from server.paging import PAGE_QUERY, TOTAL, Page
from server.schema import DATETIME, FEN, array, integer, obj, string
from server.security.principal import FINANCE, OPERATOR

log = logging.getLogger(__name__)

# every method some channel takes (each one a provider of the registry)
METHODS = sorted({m for c in CHANNELS.all() for m in c.payment_methods})
PAY = obj({"method": string(enum=METHODS),
           "tendered": FEN, "reference": string(1, 64, description="bank card slip")},
          ["method"])
PAY_OUT = obj({"order_no": string(), "out_trade_no": string(), "method": string(),
               "amount": FEN, "params": {"type": "object",
                                         "description": "what the client pays with"}},
              ["order_no", "out_trade_no", "method", "amount", "params"])


class PayHandler(ApiHandler):
    @api("Start paying an order: the provider's client parameters (e.g. wx.requestPayment)",
         roles=BUYERS, body=PAY, response=PAY_OUT, tags=("payments",), idempotent=True,
         errors=("ORDER_NOT_FOUND", "ORDER_NOT_PAYABLE", "PAYMENT_METHOD_NOT_ALLOWED",
                 "PAYMENT_IN_PROGRESS", "OUTLET_NOT_FOUND",
                 "PAYMENT_PROVIDER_ERROR", "INSUFFICIENT_BALANCE", "TENDER_TOO_LOW"))
    async def post(self, order_no: str) -> None:
        self.write_json(await self.services.payments.start(
            self.principal, order_no, self.body["method"], self.body.get("tendered"),
            self.body.get("reference", "")))


class WeChatNotifyHandler(ApiHandler):
    @api("WeChat Pay notification (signed, encrypted); 204 when handled", status=204,
         tags=("payments",), errors=("NOTIFICATION_REJECTED",),
         description="4xx tells WeChat Pay to deliver again later (it retries on its "
                     "schedule); a verified duplicate is answered 204 and changes nothing.")
    async def post(self) -> None:
        headers = dict(self.request.headers.get_all())
        try:
            await self.services.payments.notify("wechat", headers, self.request.body)
        except NotificationRejected as exc:
            log.warning("wechat notification rejected: %s", exc)
            raise DomainError("NOTIFICATION_REJECTED", str(exc)) from None
        self.write_json(None, 204)


class AlipayNotifyHandler(ApiHandler):
    @api("Alipay notification (form, RSA2); answered exactly 'success' when handled",
         tags=("payments",), content_type="text/plain", errors=("NOTIFICATION_REJECTED",),
         description="Anything but 'success' makes Alipay deliver again later; a refused "
                     "notification is a JSON 401 like every other error.")
    async def post(self) -> None:
        try:
            await self.services.payments.notify("alipay", dict(self.request.headers.get_all()),
                                                self.request.body)
        except NotificationRejected as exc:
            log.warning("alipay notification rejected: %s", exc)
            raise DomainError("NOTIFICATION_REJECTED", str(exc)) from None
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("success")


RECONCILIATION = obj({"provider": string(), "bill_date": string(format="date"),
                      "lines": {"type": "integer"}, "matched": {"type": "array"},
                      "amount_differs": {"type": "array"}, "only_provider": {"type": "array"},
                      "only_ours": {"type": "array"}, "clean": {"type": "boolean"},
                      "fees": FEN, "at": string(format="date-time")},
                     ["provider", "bill_date", "matched", "clean"])


class ReconcileHandler(ApiHandler):
    @api("Match a provider's daily statement to our payments, line by line",
         roles=(FINANCE, OPERATOR), response=RECONCILIATION, tags=("payments",),
         path={"bill_date": string(format="date")},
         errors=("NOT_FOUND", "INVALID_VALUE", "PAYMENT_PROVIDER_ERROR",
                 "STATEMENT_NOT_READY"))
    async def post(self, provider: str, bill_date: str) -> None:
        self.write_json(await self.services.payments.reconcile(self.principal, provider,
                                                               bill_date))


DEPOSIT = obj({"amount": integer(1, 10**12, description="fen"),
               "reference": string(1, 64, description="bank slip; a repeat records nothing")},
              ["amount", "reference"])
DEPOSITED = obj({"outlet_id": string(), "balance": {"type": "integer"}, "credit_limit": FEN,
                 "reference": string(), "recorded": {"type": "boolean"}},
                ["outlet_id", "balance", "recorded"])


class OutletDepositHandler(ApiHandler):
    @api("Record an agent outlet's deposit (top-up of its prepaid balance)",
         roles=(FINANCE, OPERATOR), body=DEPOSIT, response=DEPOSITED, tags=("payments",),
         errors=("OUTLET_NOT_FOUND",))
    async def post(self, outlet_id: str) -> None:
        self.write_json(await self.services.payments.deposit(
            self.principal, "outlet", outlet_id, self.body["amount"], self.body["reference"]))


default_handlers = [
    route("/api/v1/orders/{order_no}/pay", PayHandler),
    route("/api/v1/payments/notify/wechat", WeChatNotifyHandler),
    route("/api/v1/payments/notify/alipay", AlipayNotifyHandler),
    route("/api/v1/admin/statements/{provider}/{bill_date}", ReconcileHandler),
    route("/api/v1/admin/outlets/{outlet_id}/deposits", OutletDepositHandler),
]


REFUND = obj({"refund_id": string(), "order_no": string(), "ticket_no": string(),
              "amount": FEN, "status": string(enum=["requested", "sending", "processing",
                                                    "done", "failed", "attention"]),
              "reason": string(), "provider": string(), "provider_state": string(),
              "out_refund_no": string(), "error": string(), "created_at": DATETIME,
              "actions": array(obj({"action": string(), "note": string(), "at": DATETIME,
                                    "by": string()}))},
             ["refund_id", "order_no", "amount", "status"])
REFUND_LIST = obj({"refunds": array(REFUND), "total": TOTAL}, ["refunds", "total"])
REFUND_QUERY = obj({"status": string(enum=["requested", "sending", "processing", "done",
                                           "failed", "attention"]), **PAGE_QUERY})
REFUND_ACTION = obj({"note": string(1, 500, description="what was done, for the record")},
                    ["note"])


class RefundsHandler(ApiHandler):
    @api("Refunds, newest first; status=attention is finance's queue (closed, abnormal or "
         "refused at the provider)", roles=(FINANCE, OPERATOR), query=REFUND_QUERY,
         response=REFUND_LIST, tags=("payments",))
    async def get(self) -> None:
        rows, total = await self.services.payments.list_refunds(
            self.query.get("status"), Page.of(self.query, 100))
        self.write_json({"refunds": rows, "total": total})


class RefundRetryHandler(ApiHandler):
    @api("Send a closed or refused refund again, under a new refund number",
         roles=(FINANCE,), body=REFUND_ACTION, response=REFUND, tags=("payments",),
         idempotent=True, errors=("REFUND_NOT_FOUND", "REFUND_NOT_RETRYABLE"))
    async def post(self, refund_id: str) -> None:
        self.write_json(await self.services.payments.retry_refund(
            self.principal, refund_id, self.body["note"]))


class RefundResolveHandler(ApiHandler):
    @api("Record a refund finance paid back another way (e.g. after an ABNORMAL refund)",
         roles=(FINANCE,), body=REFUND_ACTION, response=REFUND, tags=("payments",),
         idempotent=True, errors=("REFUND_NOT_FOUND", "REFUND_NOT_RETRYABLE"))
    async def post(self, refund_id: str) -> None:
        self.write_json(await self.services.payments.resolve_refund(
            self.principal, refund_id, self.body["note"]))


ALERT = obj({"key": string(), "kind": string(), "message": string(), "status": string(),
             "count": integer(1), "details": {"type": "object"},
             "created_at": {**DATETIME, "description": "when it started"},
             "last_at": DATETIME, "ended_at": {**DATETIME, "description": "when it ended"},
             "ended_by": string(description="who closed it, or system: its cause went away")},
            ["key", "kind", "message", "status"])
ALERT_QUERY = obj({"status": string(enum=["open", "closed"]), "kind": string(1, 64),
                   **PAGE_QUERY})


class AlertsHandler(ApiHandler):
    @api("Operations alerts, newest first (open ones by default)",
         roles=(OPERATOR, FINANCE), query=ALERT_QUERY,
         response=obj({"alerts": array(ALERT), "total": TOTAL}, ["alerts", "total"]),
         tags=("admin",))
    async def get(self) -> None:
        rows, total = await self.services.alerts.page(
            self.query.get("status", "open"), self.query.get("kind"), Page.of(self.query, 100))
        self.write_json({"alerts": rows, "total": total})


default_handlers += [
    route("/api/v1/admin/refunds", RefundsHandler),
    route("/api/v1/admin/refunds/{refund_id}/retry", RefundRetryHandler),
    route("/api/v1/admin/refunds/{refund_id}/resolve", RefundResolveHandler),
    route("/api/v1/admin/alerts", AlertsHandler),
]
