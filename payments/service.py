"""Exactly-once money: payment attempts, notifications, active queries, refunds.

- Each try to pay is a ``payments`` document with its own unique ``out_trade_no``.
- A notification is verified by its provider, then settled by ``settle``: the attempt moves
  ``pending → paid`` in one guarded update, so 20 copies of one notice (or a notice and the
  active query) change it once; only the winner tells the order (``OrderService.mark_paid``).
- A payment that finds its order ended (expired, cancelled) is queued for refund, once.
- Refunds are ``refund_requests`` paid by a job with a stable ``out_refund_no`` derived from
  the request, so a crash between the provider's refund and our record refunds only once.
- Every money movement lands in ``money_movements`` (idempotent ids) for the ledger.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from tornado.httpclient import AsyncHTTPClient

from channels.base import get as channel
from payments.base import Attempt, NotificationRejected, PaymentError, ProviderRegistry
from server.errors import DomainError, calendar_day
from server.security.principal import Principal
from server.services.orders import OrderService, now_ms

log = logging.getLogger(__name__)

LOCAL = dt.timezone(dt.timedelta(hours=8))
QUERY_AFTER = dt.timedelta(seconds=60)
LOCAL_METHODS = ("agent_balance", "cash", "bank_card")
REFUND_STUCK_AFTER = dt.timedelta(seconds=60)


def refund_no(request_id: str) -> str:
    """The out_refund_no of a refund request: the same request, the same number, forever."""
    return "RF" + hashlib.sha256(request_id.encode()).hexdigest()[:30]


class PaymentService:
    def __init__(self, db: AsyncDatabase[Any], providers: ProviderRegistry,
                 orders: OrderService, sandbox_bases: dict[str, str] | None = None) -> None:
        self._db = db
        self.providers = providers
        self._orders = orders
        self._sandbox = sandbox_bases or {}

    # --- start ---------------------------------------------------------------------------------
    async def start(self, actor: Principal, order_no: str, method: str,
                    tendered: int | None = None, reference: str = "") -> dict[str, Any]:
        order = await self._db.orders.find_one({"order_no": order_no,
                                                **self._orders.scope(actor)})
        if order is None:
            raise DomainError("ORDER_NOT_FOUND")
        if order["status"] != "pending_payment" or order["expires_at"] <= now_ms():
            raise DomainError("ORDER_NOT_PAYABLE", status=order["status"])
        if method not in channel(order["channel"]).payment_methods:
            raise DomainError("PAYMENT_METHOD_NOT_ALLOWED", field="method",
                              allowed=list(channel(order["channel"]).payment_methods))
        tries = await self._db.payments.count_documents({"order_no": order_no})
        out_trade_no = f"{order_no}P{tries + 1:02d}"
        if method in LOCAL_METHODS:
            return await self._pay_locally(actor, order, method, out_trade_no, tendered,
                                           reference)
        provider = self.providers.for_method(method)
        if provider is None:
            raise DomainError("PAYMENT_METHOD_NOT_ALLOWED", field="method")
        payer: dict[str, str] = {}
        if method == "wechat_jsapi" and order.get("member_id"):
            member = await self._db.members.find_one({"_id": order["member_id"]})
            payer = {"openid": (member or {}).get("openid", "")}
        now = now_ms()
        await self._db.payments.insert_one({
            "out_trade_no": out_trade_no, "order_no": order_no, "provider": provider.identifier,
            "method": method, "amount": order["amount"], "status": "created",
            "created_at": now})
        try:
            params = await provider.start(Attempt(out_trade_no, order_no, order["amount"],
                                                  f"客运车票 {order_no}", payer), method)
        except PaymentError as exc:
            await self._db.payments.update_one({"out_trade_no": out_trade_no},
                                               {"$set": {"status": "failed",
                                                         "error": str(exc)[:200]}})
            raise DomainError("PAYMENT_PROVIDER_ERROR", str(exc)) from None
        await self._db.payments.update_one({"out_trade_no": out_trade_no},
                                           {"$set": {"status": "pending", "started_at": now,
                                                     "client_params": params}})
        return {"order_no": order_no, "out_trade_no": out_trade_no, "method": method,
                "amount": order["amount"], "params": params}

    async def _pay_locally(self, actor: Principal, order: dict[str, Any], method: str,
                           out_trade_no: str, tendered: int | None, reference: str
                           ) -> dict[str, Any]:
        """Money that never leaves the platform's hands: an agent's deposit (with credit),
        or what a kiosk took in cash or by card. Paid at once, by the actor's identity."""
        amount = order["amount"]
        receipt: dict[str, Any] = {}
        if method == "agent_balance":
            if not actor.outlet_id:
                raise DomainError("PAYMENT_METHOD_NOT_ALLOWED", field="method")
            outlet = await self._db.outlets.find_one({"_id": actor.outlet_id})
            if outlet is None:
                raise DomainError("OUTLET_NOT_FOUND")
            # atomic: the balance may go down to minus the credit limit, never further
            debited = await self._db.outlets.find_one_and_update(
                {"_id": actor.outlet_id,
                 "$expr": {"$gte": [{"$add": [{"$ifNull": ["$balance", 0]},
                                              "$credit_limit"]}, amount]}},
                {"$inc": {"balance": -amount}}, return_document=ReturnDocument.AFTER)
            if debited is None:
                raise DomainError("INSUFFICIENT_BALANCE", amount=amount)
            receipt = {"balance": debited["balance"], "credit_limit": debited["credit_limit"]}
        else:
            if actor.role != "kiosk" and actor.role != "station_staff":
                raise DomainError("PAYMENT_METHOD_NOT_ALLOWED", field="method")
            if method == "cash":
                if tendered is None or tendered < amount:
                    raise DomainError("TENDER_TOO_LOW", field="tendered")
                receipt = {"tendered": tendered, "change": tendered - amount}
            else:
                receipt = {"reference": reference}
        now = now_ms()
        attempt = {"out_trade_no": out_trade_no, "order_no": order["order_no"],
                   "provider": method, "method": method, "amount": amount, "status": "pending",
                   "created_at": now, "started_at": now, "actor": actor.audit_actor(),
                   "receipt": receipt}
        attempt["_id"] = (await self._db.payments.insert_one(attempt)).inserted_id
        outcome = await self.settle(attempt, "paid", amount, reference or out_trade_no)
        return {"order_no": order["order_no"], "out_trade_no": out_trade_no, "method": method,
                "amount": amount, "params": {**receipt, "outcome": outcome}}

    # --- notifications and queries --------------------------------------------------------
    async def notify(self, provider_id: str, headers: dict[str, str], body: bytes) -> str:
        """Verify and settle a provider notification (NotificationRejected if forged)."""
        provider = self.providers.get(provider_id)
        state = await provider.parse_notification(headers, body)
        attempt = await self._db.payments.find_one({"out_trade_no": state.out_trade_no,
                                                    "provider": provider_id})
        if attempt is None:
            raise NotificationRejected(f"unknown out_trade_no {state.out_trade_no}")
        return await self.settle(attempt, state.state, state.amount, state.transaction_id)

    async def settle(self, attempt: dict[str, Any], state: str, amount: int | None,
                     transaction_id: str) -> str:
        """Converge an attempt on the provider's state; each change happens once."""
        if state != "paid":
            if state == "closed":
                await self._db.payments.update_one(
                    {"_id": attempt["_id"], "status": {"$in": ["created", "pending"]}},
                    {"$set": {"status": "closed"}})
            return state
        if amount != attempt["amount"]:
            log.error("paid amount differs", extra={"fields": {
                "out_trade_no": attempt["out_trade_no"], "expected": attempt["amount"],
                "got": amount}})
            raise NotificationRejected("amount differs from the attempt")
        won = await self._db.payments.find_one_and_update(
            {"_id": attempt["_id"], "status": {"$in": ["created", "pending", "closed"]}},
            {"$set": {"status": "paid", "paid_at": now_ms(), "transaction_id": transaction_id}},
            return_document=ReturnDocument.AFTER)
        if won is None:
            return "already"
        await self._movement(f"pay:{attempt['out_trade_no']}", "payment", attempt,
                             attempt["amount"])
        outcome = await self._orders.mark_paid(attempt["order_no"], attempt["out_trade_no"],
                                               attempt["amount"])
        if outcome == "late":  # the order ended before the money came: give it back, once
            await self._db.refund_requests.update_one(
                {"_id": f"late:{attempt['out_trade_no']}"},
                {"$setOnInsert": {"order_no": attempt["order_no"], "amount": attempt["amount"],
                                  "reason": "paid after the order ended", "status": "requested",
                                  "payment_ref": attempt["out_trade_no"],
                                  "created_at": now_ms()}}, upsert=True)
        return outcome

    async def query_pending(self) -> int:
        """Attempts pending past the provider's window: ask (a notice may have been lost);
        attempts of orders that ended: close at the provider, then ask (a close can race a
        payment)."""
        cutoff = now_ms() - QUERY_AFTER
        settled = 0
        async for attempt in self._db.payments.find(
                {"status": "pending", "started_at": {"$lte": cutoff}}).limit(100):
            provider = self.providers.get(attempt["provider"])
            order = await self._db.orders.find_one({"order_no": attempt["order_no"]},
                                                   {"status": 1})
            try:
                if order and order["status"] != "pending_payment":
                    try:
                        await provider.close(attempt["out_trade_no"])
                    except PaymentError:
                        pass  # paid meanwhile (ORDERPAID): the query tells
                state = await provider.query(attempt["out_trade_no"])
            except PaymentError as exc:
                log.warning("payment query failed: %s", exc)
                continue
            await self.settle(attempt, state.state, state.amount, state.transaction_id)
            settled += 1
        return settled

    # --- refunds --------------------------------------------------------------------------
    async def execute_refunds(self) -> int:
        """Pay out requested refunds through the original channel, each exactly once."""
        stale = now_ms() - REFUND_STUCK_AFTER
        await self._db.refund_requests.update_many(  # a worker died mid-refund: try again
            {"status": "processing", "processing_at": {"$lte": stale}},
            {"$set": {"status": "requested"}})
        done = 0
        while True:
            request = await self._db.refund_requests.find_one_and_update(
                {"status": "requested"},
                {"$set": {"status": "processing", "processing_at": now_ms()}},
                return_document=ReturnDocument.AFTER)
            if request is None:
                return done
            await self._refund_one(request)
            done += 1

    async def _refund_one(self, request: dict[str, Any]) -> None:
        attempt = await self._db.payments.find_one({"out_trade_no": request.get("payment_ref"),
                                                    "status": {"$in": ["paid", "refunding",
                                                                       "refunded"]}})
        if attempt is None:
            await self._db.refund_requests.update_one(
                {"_id": request["_id"]}, {"$set": {"status": "failed",
                                                   "error": "no paid attempt to refund"}})
            return
        out_refund_no = refund_no(str(request["_id"]))
        if attempt["provider"] in LOCAL_METHODS:
            await self._refund_locally(request, attempt, out_refund_no)
            return
        provider = self.providers.get(attempt["provider"])
        try:
            result = await provider.refund(attempt["out_trade_no"], out_refund_no,
                                           int(request["amount"]), int(attempt["amount"]))
        except PaymentError as exc:
            await self._db.refund_requests.update_one(
                {"_id": request["_id"]},
                {"$set": {"status": "requested" if exc.retry else "failed",
                          "error": str(exc)[:200]}})
            return
        await self._db.refund_requests.update_one(
            {"_id": request["_id"]}, {"$set": {"status": "done", "out_refund_no": out_refund_no,
                                               "refund_id": result.refund_id,
                                               "done_at": now_ms()}})
        await self._movement(f"refund:{out_refund_no}", "refund", attempt,
                             int(request["amount"]), out_refund_no=out_refund_no)
        await self._refund_done(request, out_refund_no)
        order = await self._db.orders.find_one({"order_no": request["order_no"]},
                                               {"status": 1})
        if order and order["status"] == "failed":
            await self._orders.transition(request["order_no"], "refunded", "payment",
                                          "refunded after station failure",
                                          from_states={"failed"})

    async def _refund_locally(self, request: dict[str, Any], attempt: dict[str, Any],
                              out_refund_no: str) -> None:
        """Back to the agent's deposit; cash and card refunds are paid at the window."""
        movement = await self._db.money_movements.find_one({"_id": f"refund:{out_refund_no}"})
        if movement is None and attempt["provider"] == "agent_balance":
            outlet_id = attempt["actor"].get("outlet_id")
            await self._movement(f"refund:{out_refund_no}", "refund", attempt,
                                 int(request["amount"]), out_refund_no=out_refund_no)
            await self._db.outlets.update_one({"_id": outlet_id},
                                              {"$inc": {"balance": int(request["amount"])}})
        elif movement is None:
            await self._movement(f"refund:{out_refund_no}", "refund", attempt,
                                 int(request["amount"]), out_refund_no=out_refund_no,
                                 paid_out="at the station window")
        await self._db.refund_requests.update_one(
            {"_id": request["_id"]}, {"$set": {"status": "done", "out_refund_no": out_refund_no,
                                               "done_at": now_ms()}})
        await self._refund_done(request, out_refund_no)

    async def _refund_done(self, request: dict[str, Any], out_refund_no: str) -> None:
        """The money is on its way back: tell the order's watchers and the passenger."""
        details = {"refund_no": out_refund_no, "amount": int(request["amount"]),
                   "ticket_no": request.get("ticket_no", "")}
        await self._orders.announce(request["order_no"], "refund_done", details)
        await self._orders.notices.enqueue(f"refund_done:{request['_id']}", "refund_done",
                                           request["order_no"], details)

    async def deposit(self, actor: Principal, outlet_id: str, amount: int,
                      reference: str) -> dict[str, Any]:
        """An agent outlet's top-up: the balance and its ledger row, once per reference."""
        movement_id = f"deposit:{outlet_id}:{reference}"
        inserted = await self._db.money_movements.update_one(
            {"_id": movement_id},
            {"$setOnInsert": {"kind": "deposit", "provider": "agent_balance",
                              "order_no": f"outlet:{outlet_id}", "outlet_id": outlet_id,
                              "amount": amount, "reference": reference, "at": now_ms(),
                              "by": actor.id}}, upsert=True)
        if inserted.upserted_id is not None:
            outlet = await self._db.outlets.find_one_and_update(
                {"_id": outlet_id}, {"$inc": {"balance": amount}},
                return_document=ReturnDocument.AFTER)
            if outlet is None:
                await self._db.money_movements.delete_one({"_id": movement_id})
                raise DomainError("OUTLET_NOT_FOUND")
        else:
            outlet = await self._db.outlets.find_one({"_id": outlet_id})
        return {"outlet_id": outlet_id, "balance": outlet.get("balance", 0) if outlet else 0,
                "credit_limit": outlet["credit_limit"] if outlet else 0,
                "reference": reference, "recorded": inserted.upserted_id is not None}

    async def _movement(self, movement_id: str, kind: str, attempt: dict[str, Any],
                        amount: int, **extra: Any) -> None:
        await self._db.money_movements.update_one(
            {"_id": movement_id},
            {"$setOnInsert": {"kind": kind, "provider": attempt["provider"],
                              "order_no": attempt["order_no"],
                              "out_trade_no": attempt["out_trade_no"], "amount": amount,
                              "at": now_ms(), **extra}}, upsert=True)

    async def scrub_old(self, older_than: dt.timedelta = dt.timedelta(days=30)) -> int:
        """Drop what providers say to forget from attempts that are long settled."""
        cutoff = now_ms() - older_than
        count = 0
        async for attempt in self._db.payments.find(
                {"created_at": {"$lte": cutoff}, "scrubbed": {"$ne": True},
                 "status": {"$nin": ["created", "pending"]}}).limit(500):
            try:
                fields = self.providers.get(attempt["provider"]).scrub(attempt)
            except KeyError:  # local methods (deposit, cash, card)
                fields = ["receipt.reference"]
            await self._db.payments.update_one(
                {"_id": attempt["_id"]},
                {"$unset": dict.fromkeys(fields, ""), "$set": {"scrubbed": True}})
            count += 1
        return count

    # --- statements -----------------------------------------------------------------------
    async def reconcile(self, provider_id: str, bill_date: str) -> dict[str, Any]:
        """The provider's trade bill of a day matched line by line to our paid attempts."""
        from payments.statements import match

        day = calendar_day(bill_date, code="INVALID_VALUE", field="bill_date")
        try:
            provider = self.providers.get(provider_id)
        except KeyError:
            raise DomainError("NOT_FOUND", "No such payment provider.") from None
        try:
            lines = await provider.statement(bill_date)
        except PaymentError as exc:
            raise DomainError("PAYMENT_PROVIDER_ERROR", str(exc)) from None
        start = dt.datetime(day.year, day.month, day.day, tzinfo=LOCAL).astimezone(dt.UTC)
        ours = await self._db.payments.find(
            {"provider": provider_id, "status": {"$in": ["paid", "refunding", "refunded"]},
             "paid_at": {"$gte": start, "$lt": start + dt.timedelta(days=1)}},
            {"out_trade_no": 1, "amount": 1}).to_list()
        result = match(lines, ours)
        report = {"provider": provider_id, "bill_date": bill_date, "lines": len(lines),
                  "matched": result.matched, "amount_differs": result.amount_differs,
                  "only_provider": result.only_provider, "only_ours": result.only_ours,
                  "clean": result.clean, "fees": sum(line.fee for line in lines),
                  "at": now_ms()}
        await self._db.reconciliations.replace_one(
            {"_id": f"{provider_id}:{bill_date}"}, report, upsert=True)
        return report

    # --- sandbox ----------------------------------------------------------------------------
    async def sandbox_confirm(self, order_no: str) -> dict[str, Any]:
        """Stand-in for the payer confirming in WeChat: the sandbox pays and notifies."""
        attempt = await self._db.payments.find_one({"order_no": order_no,
                                                    "status": "pending"},
                                                   sort=[("created_at", -1)])
        base = self._sandbox.get(attempt["provider"], "") if attempt else ""
        if attempt is None or not base:
            raise DomainError("NOT_FOUND", "No payment of this order is waiting.")
        if attempt["provider"] == "alipay":  # the payer's app hands Alipay the signed order
            params = attempt.get("client_params") or {}
            signed = params.get("order_string") or params.get("pay_url", "?").split("?", 1)[1]
            resp = await AsyncHTTPClient().fetch(
                base.removesuffix("/gateway.do") + "/_sandbox/alipay/pay", method="POST",
                body=signed, raise_error=False)
        else:
            resp = await AsyncHTTPClient().fetch(
                f"{base}/_sandbox/wechatpay/confirm", method="POST",
                body=json.dumps({"out_trade_no": attempt["out_trade_no"]}), raise_error=False)
        if resp.code != 200:
            raise DomainError("NOT_FOUND", "The payment sandbox has no such transaction.")
        return {"order_no": order_no, "out_trade_no": attempt["out_trade_no"],
                "confirmed": True}
