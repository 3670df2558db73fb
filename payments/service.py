"""Exactly-once money: payment attempts, notifications, active queries, refunds.

- Each try to pay is a ``payments`` document with its own unique ``out_trade_no``.
- A notification is verified by its provider, then settled by ``settle``: the attempt moves
  ``pending → paid`` in one guarded update, so 20 copies of one notice (or a notice and the
  active query) change it once; only the winner tells the order (``OrderService.mark_paid``).
- A payment that finds its order ended (expired, cancelled) is queued for refund, once.
- Refunds are requests of ``server.storage.refunds`` (their one owner), paid by a job with a
  stable ``out_refund_no`` derived from the request, so a crash between the provider's
  refund and our record refunds only once.
- Every money movement lands in ``money_movements`` (idempotent ids) for the ledger.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from payments.base import (
    Attempt,
    BasePaymentProvider,
    NotificationRejected,
    PaymentError,
    ProviderRegistry,
    RefundResult,
)
from payments.local import LocalProvider, PrepaidDeposit
from server.clock import LOCAL_TZ, local_today, now_ms
from server.context import client_ip_var
from server.errors import DomainError, calendar_day
from server.paging import Page
from server.security.principal import Principal
from server.services.alerts import AlertService
from server.services.audit import AuditService
from server.services.jobs import RecordFailures
from server.services.orders import OrderService
from server.storage import refunds
from server.storage.payments import PaymentRecords
from server.storage.transactions import transact

log = logging.getLogger(__name__)

QUERY_AFTER = dt.timedelta(seconds=60)
REFUND_STUCK_AFTER = dt.timedelta(seconds=60)  # a refund being sent this long: its worker died
REFUND_RETRY_AFTER = dt.timedelta(seconds=30)  # the provider was unreachable: wait, then again
REFUND_QUERY_AFTER = dt.timedelta(seconds=60)  # processing this long with no notice: ask
ATTEMPT_STARTING = dt.timedelta(seconds=30)  # a created attempt older than this was abandoned


def refund_no(request_id: str) -> str:
    """The out_refund_no of a refund request: the same request, the same number, forever."""
    return "RF" + hashlib.sha256(request_id.encode()).hexdigest()[:30]


def refund_view(request: dict[str, Any]) -> dict[str, Any]:
    """A refund request as finance sees it."""
    return {"refund_id": str(request["_id"]), "order_no": request["order_no"],
            "ticket_no": request.get("ticket_no", ""), "amount": int(request["amount"]),
            "status": request["status"], "reason": request.get("reason", ""),
            "provider": request.get("provider", ""),
            "provider_state": request.get("provider_state", ""),
            "out_refund_no": request.get("out_refund_no", ""),
            "error": request.get("error", ""),
            "created_at": request["created_at"].astimezone(LOCAL_TZ).isoformat(),
            "actions": [{"action": a["action"], "note": a.get("note", ""),
                         "at": a["at"].astimezone(LOCAL_TZ).isoformat(),
                         "by": (a.get("by") or {}).get("username", "")}
                        for a in request.get("actions", [])]}


class PaymentService:
    def __init__(self, db: AsyncDatabase[Any], providers: ProviderRegistry,
                 orders: OrderService, alerts: AlertService, audit: AuditService,
                 failures: RecordFailures | None = None) -> None:
        self._db = db
        self.providers = providers
        self._orders = orders
        self.refunds = orders.refunds  # the refund aggregate's one owner
        self.alerts = alerts
        self.audit = audit
        self.failures = failures or RecordFailures()
        self.records = PaymentRecords(db)  # attempts, movements, statement reports
        # the prepaid deposits a top-up may go to, by what they belong to
        self.deposits: dict[str, PrepaidDeposit] = {}
        for provider_id in ("agent_balance", "partner_deposit"):
            found = providers.get(provider_id)
            assert isinstance(found, PrepaidDeposit)
            self.deposits[found.account] = found

    # --- start ---------------------------------------------------------------------------------
    async def start(self, actor: Principal, order_no: str, method: str,
                    tendered: int | None = None, reference: str = "") -> dict[str, Any]:
        """Start paying an order: one attempt at a time, recorded before any money moves.

        A second pay while one is being started is ``PAYMENT_IN_PROGRESS``; paying again
        with the method of an attempt still open gives that attempt's parameters back (one
        provider order, not two); another method opens a new attempt."""
        order = await self._db.orders.find_one({"order_no": order_no,
                                                **self._orders.scope(actor)})
        if order is None:
            raise DomainError("ORDER_NOT_FOUND")
        if order["status"] != "pending_payment" or order["expires_at"] <= now_ms():
            raise DomainError("ORDER_NOT_PAYABLE", status=order["status"])
        allowed = self._orders.channel_of(order).payment_methods
        provider = self.providers.for_method(method) if method in allowed else None
        if provider is None:
            raise DomainError("PAYMENT_METHOD_NOT_ALLOWED", field="method",
                              allowed=[m for m in allowed if self.providers.for_method(m)])
        if isinstance(provider, LocalProvider):  # checked before any attempt is recorded
            if not provider.accepts(order):
                raise DomainError("PAYMENT_METHOD_NOT_ALLOWED", field="method")
            receipt = provider.receipt(actor, order["amount"], tendered, reference)
            attempt, _ = await self._open_attempt(order, method, actor, provider)
            return await self._pay_locally(actor, order, attempt, provider, receipt,
                                           reference)
        payer: dict[str, str] = {}
        if method == "wechat_jsapi":  # paid inside WeChat by the member's WeChat identity
            member = await self._db.members.find_one({"_id": order.get("member_id")},
                                                     {"openid": 1}) or {}
            if not member.get("openid"):
                raise DomainError("PAYMENT_METHOD_NOT_ALLOWED",
                                  "Paying in the mini-program needs a WeChat sign-in; choose "
                                  "another payment method.", field="method")
            payer = {"openid": member["openid"]}
        attempt, reuse = await self._open_attempt(order, method, actor, provider)
        if reuse is not None:
            return reuse
        if method == "wechat_h5":  # WeChat wants the paying phone's address
            payer = {"client_ip": client_ip_var.get() or "127.0.0.1"}
        out_trade_no = attempt["out_trade_no"]
        try:
            params = await provider.start(Attempt(out_trade_no, order_no, order["amount"],
                                                  f"客运车票 {order_no}", payer), method)
        except PaymentError as exc:
            await self.records.failed(attempt["_id"], str(exc), only_created=False)
            raise DomainError("PAYMENT_PROVIDER_ERROR", str(exc)) from None
        await self.records.started(attempt["_id"], params)
        return {"order_no": order_no, "out_trade_no": out_trade_no, "method": method,
                "amount": order["amount"], "params": params}

    async def _open_attempt(self, order: dict[str, Any], method: str, actor: Principal,
                            provider: BasePaymentProvider | LocalProvider
                            ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Record a new attempt (status ``created``) under the next number, atomically: the
        unique ``out_trade_no`` lets one of two concurrent starts win. Returns the attempt,
        or the answer of an open attempt of the same method to give back instead."""
        order_no = order["order_no"]
        earlier = await self._db.payments.find({"order_no": order_no}).to_list()
        fresh_after = now_ms() - ATTEMPT_STARTING
        local = isinstance(provider, LocalProvider)
        for a in earlier:
            if a["status"] in ("paid", "refunding", "refunded"):
                raise DomainError("ORDER_NOT_PAYABLE", status="paid")
            if (a["status"] == "created" and a["created_at"] > fresh_after) or \
                    (a["status"] == "pending" and self._is_local(a)):
                raise DomainError("PAYMENT_IN_PROGRESS")
            if a["status"] == "pending" and a.get("method") == method and \
                    not local and a.get("client_params"):
                return a, {"order_no": order_no, "out_trade_no": a["out_trade_no"],
                           "method": method, "amount": a["amount"],
                           "params": a["client_params"]}
        now = now_ms()
        attempt: dict[str, Any] = {
            "out_trade_no": f"{order_no}P{len(earlier) + 1:02d}", "order_no": order_no,
            "provider": provider.identifier, "method": method, "amount": order["amount"],
            "status": "created", "created_at": now}
        if local:
            attempt["actor"] = actor.audit_actor()
        try:
            attempt["_id"] = await self.records.insert(attempt)
        except DuplicateKeyError:  # a concurrent start took this number first
            raise DomainError("PAYMENT_IN_PROGRESS") from None
        return attempt, None

    def _is_local(self, attempt: dict[str, Any]) -> bool:
        # (find: an attempt of a provider no longer configured is not local, and no error)
        return isinstance(self.providers.find(attempt["provider"]), LocalProvider)

    async def _pay_locally(self, actor: Principal, order: dict[str, Any],
                           attempt: dict[str, Any], provider: LocalProvider,
                           receipt: dict[str, Any], reference: str) -> dict[str, Any]:
        """Money that never leaves the platform's hands (an agent's deposit, what a kiosk or
        window took in cash or by card): the provider takes it and the attempt moves to
        ``pending`` in one transaction, so a crash never takes money without a record (the
        query job settles a pending local attempt)."""
        amount = order["amount"]
        mine = provider.attempt_fields(actor)

        async def take(session: AsyncClientSession) -> dict[str, Any] | None:
            found = await provider.take(actor, amount, receipt, session)
            if found is None:
                return None
            if not await self.records.taken(attempt["_id"], found, mine, session):
                raise DomainError("PAYMENT_IN_PROGRESS")  # aborts the taking with it
            return found

        found = await transact(self._db, take)
        if found is None:
            await self.records.failed(attempt["_id"], "refused by the provider")
            raise await provider.refusal(actor, amount)
        await self.audit.staff_action(actor, "payment.take", target=order["order_no"],
                                      details={"method": attempt["method"], "amount": amount,
                                               "out_trade_no": attempt["out_trade_no"]})
        attempt = {**attempt, "status": "pending", "receipt": found, **mine}
        outcome = await self.settle(attempt, "paid", amount,
                                    reference or attempt["out_trade_no"])
        return {"order_no": order["order_no"], "out_trade_no": attempt["out_trade_no"],
                "method": attempt["method"], "amount": amount,
                "params": {**found, "outcome": outcome}}

    # --- notifications and queries --------------------------------------------------------
    async def notify(self, provider_id: str, headers: dict[str, str], body: bytes) -> str:
        """Verify and apply a provider notification — of a payment or of a refund
        (NotificationRejected if forged, or for a provider we do not use)."""
        try:
            provider = self.providers.get(provider_id)
        except KeyError:
            raise NotificationRejected(f"{provider_id} is not configured here") from None
        state = await provider.parse_notification(headers, body)
        if isinstance(state, RefundResult):
            return await self.refund_update(state)
        attempt = await self._db.payments.find_one({"out_trade_no": state.out_trade_no,
                                                    "provider": provider_id})
        if attempt is None:
            raise NotificationRejected(f"unknown out_trade_no {state.out_trade_no}")
        expected = provider.account_for(attempt.get("method", ""))
        if state.account and expected and state.account != expected:
            raise NotificationRejected("notification names another app than the attempt's")
        return await self.settle(attempt, state.state, state.amount, state.transaction_id)

    async def settle(self, attempt: dict[str, Any], state: str, amount: int | None,
                     transaction_id: str) -> str:
        """Converge an attempt on the provider's state; each change happens once."""
        if state != "paid":
            if state == "closed":
                await self.records.closed(attempt["_id"])
            return state
        if amount != attempt["amount"]:
            log.error("paid amount differs", extra={"fields": {
                "out_trade_no": attempt["out_trade_no"], "expected": attempt["amount"],
                "got": amount}})
            raise NotificationRejected("amount differs from the attempt")
        async def record(session: AsyncClientSession) -> dict[str, Any] | None:
            """Paid, and its money movement (the ledger's source): both or neither."""
            won = await self.records.paid(attempt["_id"], transaction_id, session)
            if won is not None:
                await self._movement(f"pay:{attempt['out_trade_no']}", "payment", won,
                                     attempt["amount"], session)
            return won

        if await transact(self._db, record) is None:
            return "already"
        outcome = await self._orders.mark_paid(attempt["order_no"], attempt["out_trade_no"],
                                               attempt["amount"])
        if outcome == "late":  # the order ended before the money came: give it back, once
            await self.refunds.owe(refunds.for_late_payment(attempt["out_trade_no"]),
                                   order_no=attempt["order_no"], amount=attempt["amount"],
                                   reason="paid after the order ended",
                                   payment_ref=attempt["out_trade_no"])
        return outcome

    async def query_pending(self) -> int:
        """Attempts pending past the provider's window: ask (a notice may have been lost);
        attempts of orders that ended: close at the provider, then ask (a close can race a
        payment); attempts left ``created`` by a crash: close and settle, or fail. One bad
        attempt is logged and counted, never stops the others."""
        cutoff, abandoned = now_ms() - QUERY_AFTER, now_ms() - ATTEMPT_STARTING
        due = await self._db.payments.find(
            {"$or": [{"status": "pending", "started_at": {"$lte": cutoff}},
                     {"status": "created", "created_at": {"$lte": abandoned}}]}
        ).limit(100).to_list()
        settled = 0
        for attempt in due:
            with self.failures.record("payment-query", attempt["out_trade_no"]):
                settled += await self._follow_attempt(attempt)
        return settled

    async def _follow_attempt(self, attempt: dict[str, Any]) -> int:
        provider = self.providers.get(attempt["provider"])
        if isinstance(provider, LocalProvider):
            if attempt["status"] == "pending":  # debited (with the record), not yet settled
                await self.settle(attempt, "paid", attempt["amount"], attempt["out_trade_no"])
                return 1
            # created: nothing was taken
            await self.records.failed(attempt["_id"], "abandoned before any debit")
            return 0
        order = await self._db.orders.find_one({"order_no": attempt["order_no"]},
                                               {"status": 1})
        created = attempt["status"] == "created"  # its payer never got the parameters
        if created or (order and order["status"] != "pending_payment"):
            try:
                await provider.close(attempt["out_trade_no"])
            except PaymentError:
                pass  # paid meanwhile (ORDERPAID), or never created: the query tells
        try:
            state = await provider.query(attempt["out_trade_no"])
        except PaymentError as exc:
            if created and not exc.retry:  # the provider never heard of it
                await self.records.failed(attempt["_id"], str(exc))
            else:
                log.warning("payment query failed: %s", exc)
            return 0
        if created and state.state == "pending":
            await self.records.closed(attempt["_id"], only_created=True)
            return 0
        await self.settle(attempt, state.state, state.amount, state.transaction_id)
        return 1

    # --- refunds --------------------------------------------------------------------------
    async def execute_refunds(self) -> int:
        """Send requested refunds through the original channel, each exactly once; then
        ask after those still processing at their provider."""
        now = now_ms()
        await self.refunds.requeue_abandoned(now - REFUND_STUCK_AFTER)  # a worker died
        sent = 0
        while sent < 200:  # what is due now; a retried one waits for its retry_at
            request = await self.refunds.claim(now)
            if request is None:
                break
            with self.failures.record("refunds", request["_id"]):
                await self._refund_one(request)
            sent += 1
        await self.follow_refunds()
        return sent

    def _out_refund_no(self, request: dict[str, Any]) -> str:
        resubmits = int(request.get("resubmits", 0))
        return refund_no(str(request["_id"]) if not resubmits
                         else f"{request['_id']}#{resubmits}")

    async def _refund_one(self, request: dict[str, Any]) -> None:
        attempt = await self._db.payments.find_one({"out_trade_no": request.get("payment_ref"),
                                                    "status": {"$in": ["paid", "refunding",
                                                                       "refunded"]}})
        if attempt is None:
            await self.refunds.nothing_to_refund(request["_id"], "no paid attempt to refund")
            return
        out_refund_no = self._out_refund_no(request)
        await self.refunds.numbered(request["_id"], out_refund_no, attempt["provider"])
        request = {**request, "out_refund_no": out_refund_no}
        provider = self.providers.get(attempt["provider"])
        if isinstance(provider, LocalProvider):
            await self._refund_locally(request, attempt, provider, out_refund_no)
            return
        try:
            result = await provider.refund(attempt["out_trade_no"], out_refund_no,
                                           int(request["amount"]), int(attempt["amount"]))
        except PaymentError as exc:
            if exc.retry:
                await self.refunds.retry_later(request["_id"], str(exc),
                                               now_ms() + REFUND_RETRY_AFTER)
            else:  # refused (e.g. the merchant's balance is short): a person must act
                await self._refund_needs_attention(request, "refused", str(exc))
            return
        await self._apply_refund(request, attempt, result)

    async def _apply_refund(self, request: dict[str, Any], attempt: dict[str, Any],
                            result: RefundResult) -> str:
        """What the provider said of a refund, applied once: done, still processing, or a
        refund a person must look at (closed, abnormal)."""
        if result.state == "done":
            await self._refund_finished(request, attempt, result.refund_id)
        elif result.state in ("closed", "abnormal"):
            await self._refund_needs_attention(request, result.state,
                                               f"the provider says {result.raw_state}")
        else:
            await self.refunds.accepted(request["_id"], result.refund_id)
        return result.state

    async def refund_update(self, result: RefundResult) -> str:
        """A refund notification (verified by its provider): apply what it says."""
        request = await self.refunds.by_refund_no(result.out_refund_no)
        if request is None:
            raise NotificationRejected(f"unknown out_refund_no {result.out_refund_no}")
        if result.amount is not None and result.amount != int(request["amount"]):
            raise NotificationRejected("refund amount differs from the request")
        attempt = await self._db.payments.find_one({"out_trade_no": request["payment_ref"]})
        if attempt is None:
            raise NotificationRejected("refund of an unknown payment")
        return await self._apply_refund(request, attempt, result)

    async def follow_refunds(self) -> int:
        """Refunds processing at their provider longer than a notification takes: ask."""
        due = await self.refunds.processing_since(now_ms() - REFUND_QUERY_AFTER)
        for request in due:
            with self.failures.record("refund-query", request["_id"]):
                attempt = await self._db.payments.find_one(
                    {"out_trade_no": request["payment_ref"]})
                provider = self.providers.get(attempt["provider"])
                try:
                    result = await provider.refund_query(attempt["out_trade_no"],
                                                         request["out_refund_no"])
                except PaymentError as exc:
                    log.warning("refund query failed: %s", exc)
                    await self.refunds.asked(request["_id"])  # ask again later
                    continue
                if result.state == "processing":
                    await self.refunds.asked(request["_id"])
                else:
                    await self._apply_refund(request, attempt, result)
        return len(due)

    async def _refund_finished(self, request: dict[str, Any], attempt: dict[str, Any],
                               refund_id: str) -> None:
        """The money is back with the payer: record it once, then tell the passenger."""
        out_refund_no = request["out_refund_no"]

        async def record(session: AsyncClientSession) -> bool:
            if not await self.refunds.settle(request["_id"], session, refund_id=refund_id):
                return False  # a duplicate notice, or the query and a notice at once
            await self._movement(f"refund:{out_refund_no}", "refund", attempt,
                                 int(request["amount"]), session,
                                 out_refund_no=out_refund_no)
            await self._refund_notice(request, out_refund_no, session)
            return True

        if not await transact(self._db, record):
            return
        await self._refund_done(request, out_refund_no)
        order = await self._db.orders.find_one({"order_no": request["order_no"]},
                                               {"status": 1})
        if order and order["status"] == "failed":
            await self._orders.transition(request["order_no"], "refunded", "payment",
                                          "refunded after station failure",
                                          from_states={"failed"})

    async def _refund_needs_attention(self, request: dict[str, Any], state: str,
                                      detail: str) -> None:
        """A refund the provider closed, could not deliver or refused: finance's queue,
        and an operations alert."""
        if await self.refunds.needs_attention(request["_id"], state, detail) is None:
            return
        log.error("refund needs attention", extra={"fields": {
            "refund": request["_id"], "order_no": request["order_no"], "state": state}})
        await self.alerts.raise_alert(
            "refund_attention", f"refund:{request['_id']}",
            f"退款未完成（{state}）：订单 {request['order_no']}，{int(request['amount'])} 分",
            {"refund": str(request["_id"]), "order_no": request["order_no"],
             "amount": int(request["amount"]), "provider_state": state})

    async def _refund_locally(self, request: dict[str, Any], attempt: dict[str, Any],
                              provider: LocalProvider, out_refund_no: str) -> None:
        """Paid back by the provider in the refund's transaction, with its movement: to the
        agent's deposit, or out at the window for cash and card."""
        amount = int(request["amount"])

        async def credit(session: AsyncClientSession) -> bool:
            if not await self.refunds.settle(request["_id"], session,
                                             from_states=("sending", "attention"),
                                             out_refund_no=out_refund_no):
                return False
            paid_back = await provider.pay_back(attempt, amount, session)
            await self._movement(f"refund:{out_refund_no}", "refund", attempt, amount,
                                 session, out_refund_no=out_refund_no, **paid_back)
            await self._refund_notice(request, out_refund_no, session)
            return True

        if await transact(self._db, credit):
            await self._refund_done(request, out_refund_no)

    async def _refund_notice(self, request: dict[str, Any], out_refund_no: str,
                             session: AsyncClientSession) -> None:
        """The passenger's notice that the money is back, stored with the refund's end."""
        await self._orders.notices.enqueue(f"refund_done:{request['_id']}", "refund_done",
                                           request["order_no"],
                                           self._refund_details(request, out_refund_no),
                                           session=session)

    async def _refund_done(self, request: dict[str, Any], out_refund_no: str) -> None:
        """The money is on its way back: tell the order's watchers (after the commit)."""
        await self._orders.announce(request["order_no"], "refund_done",
                                    self._refund_details(request, out_refund_no))

    @staticmethod
    def _refund_details(request: dict[str, Any], out_refund_no: str) -> dict[str, Any]:
        return {"refund_no": out_refund_no, "amount": int(request["amount"]),
                "ticket_no": request.get("ticket_no", "")}

    # --- finance's refund queue -------------------------------------------------------------
    async def of_order(self, order_no: str) -> dict[str, Any]:
        """An order's money as the order desk shows it: every attempt to pay, every refund."""
        attempts = await self._db.payments.find({"order_no": order_no}).sort(
            "created_at", 1).to_list()
        return {"payments": [{
            "out_trade_no": a["out_trade_no"], "provider": a["provider"],
            "method": a.get("method", ""), "amount": int(a["amount"]), "status": a["status"],
            "created_at": a["created_at"].astimezone(LOCAL_TZ).isoformat(),
            "paid_at": a["paid_at"].astimezone(LOCAL_TZ).isoformat() if a.get("paid_at")
            else None} for a in attempts],
            "refunds": [refund_view(r) for r in await self.refunds.of_order(order_no)]}

    async def list_refunds(self, status: str | None, page: Page
                           ) -> tuple[list[dict[str, Any]], int]:
        """A page of refund requests, newest first (``attention``: those a person must act
        on), and how many match."""
        rows, total = await self.refunds.listed(status, page)
        return [refund_view(r) for r in rows], total

    async def retry_refund(self, actor: Principal, refund_id: str, note: str
                           ) -> dict[str, Any]:
        """A refund the provider closed or refused: send it again under a new number."""
        request = await self.refunds.get(refund_id)
        if request is None:
            raise DomainError("REFUND_NOT_FOUND")
        if request["status"] != "attention" or request.get("provider_state") == "abnormal":
            raise DomainError("REFUND_NOT_RETRYABLE", status=request["status"],
                              provider_state=request.get("provider_state", ""))
        moved = await self.refunds.resend(refund_id, actor.audit_actor(), note)
        if moved is None:
            raise DomainError("REFUND_NOT_RETRYABLE", status="changed")
        await self.alerts.close(f"refund:{refund_id}", actor, "retried")
        await self.audit.record(actor, "refund.retry", target=refund_id, details={"note": note})
        return refund_view(moved)

    async def resolve_refund(self, actor: Principal, refund_id: str, note: str
                             ) -> dict[str, Any]:
        """A refund finance paid back another way (e.g. to another bank account after an
        ABNORMAL refund): done, recorded with who and how, the passenger told."""
        request = await self.refunds.get(refund_id)
        if request is None:
            raise DomainError("REFUND_NOT_FOUND")
        if request["status"] != "attention":
            raise DomainError("REFUND_NOT_RETRYABLE", status=request["status"])
        attempt = await self._db.payments.find_one({"out_trade_no": request["payment_ref"]})
        out_refund_no = request.get("out_refund_no") or self._out_refund_no(request)

        async def record(session: AsyncClientSession) -> bool:
            if not await self.refunds.resolved(refund_id, actor.audit_actor(), note, session):
                return False
            if attempt is not None:
                await self._movement(f"refund:{out_refund_no}", "refund", attempt,
                                     int(request["amount"]), session,
                                     out_refund_no=out_refund_no, paid_out=note[:200])
            await self._refund_notice(request, out_refund_no, session)
            return True

        if not await transact(self._db, record):
            raise DomainError("REFUND_NOT_RETRYABLE", status="changed")
        await self.alerts.close(f"refund:{refund_id}", actor, "resolved")
        await self.audit.record(actor, "refund.resolve", target=refund_id,
                                details={"note": note})
        await self._refund_done(request, out_refund_no)
        return refund_view(await self.refunds.get(refund_id) or request)

    async def deposit(self, actor: Principal, account: str, account_id: str, amount: int,
                      reference: str) -> dict[str, Any]:
        """A prepaid deposit's top-up — an agent outlet's (``account`` "outlet") or a
        partner's ("partner"): the balance and its movement in one transaction, once per
        reference; audited."""
        deposits = self.deposits[account]
        field = deposits.field
        movement_id = f"deposit:{account_id}:{reference}"

        async def top_up(session: AsyncClientSession) -> bool:
            if not await deposits.exists(account_id, session):
                raise DomainError(deposits.missing)
            if not await self.records.movement(movement_id, {
                    "kind": "deposit", "provider": deposits.identifier,
                    "order_no": f"{account}:{account_id}", field: account_id,
                    "amount": amount, "reference": reference, "by": actor.id}, session):
                return False
            await deposits.credit(account_id, amount, session)
            return True

        recorded = await transact(self._db, top_up)
        await self.audit.record(actor, f"{account}.deposit", target=account_id,
                                details={"amount": amount, "reference": reference,
                                         "recorded": recorded})
        return {field: account_id, **await deposits.balance(account_id),
                "reference": reference, "recorded": recorded}

    async def _movement(self, movement_id: str, kind: str, attempt: dict[str, Any],
                        amount: int, session: AsyncClientSession | None = None,
                        **extra: Any) -> bool:
        """Record a money movement of an attempt once (by its id); True when this call
        recorded it."""
        provider = self.providers.get(attempt["provider"])
        if isinstance(provider, LocalProvider):
            extra = {**provider.movement_fields(attempt), **extra}
        return await self.records.movement(movement_id, {
            "kind": kind, "provider": attempt["provider"], "order_no": attempt["order_no"],
            "out_trade_no": attempt["out_trade_no"], "amount": amount, **extra}, session)

    async def scrub_old(self, older_than: dt.timedelta = dt.timedelta(days=30)) -> int:
        """Drop what providers say to forget from attempts that are long settled."""
        cutoff = now_ms() - older_than
        count = 0
        async for attempt in self._db.payments.find(
                {"created_at": {"$lte": cutoff}, "scrubbed": {"$ne": True},
                 "status": {"$nin": ["created", "pending"]}}).limit(500):
            try:
                fields = self.providers.get(attempt["provider"]).scrub(attempt)
            except KeyError:  # a provider no longer configured: what every one forgets
                fields = ["client_params", "receipt.reference"]
            await self.records.scrubbed(attempt["_id"], fields)
            count += 1
        return count

    # --- statements -----------------------------------------------------------------------
    async def reconcile(self, actor: Principal, provider_id: str, bill_date: str
                        ) -> dict[str, Any]:
        """The provider's trade bill of a day matched line by line to our paid attempts
        (audited)."""
        from payments.statements import match

        day = calendar_day(bill_date, code="INVALID_VALUE", field="bill_date")
        provider = self.providers.find(provider_id)
        if not isinstance(provider, BasePaymentProvider):  # unknown, or one with no bills
            raise DomainError("NOT_FOUND", "No such payment provider.")
        if day >= local_today():
            raise DomainError("STATEMENT_NOT_READY", bill_date=bill_date)
        try:
            lines = await provider.statement(bill_date)
        except PaymentError as exc:
            raise DomainError("PAYMENT_PROVIDER_ERROR", str(exc)) from None
        start = dt.datetime(day.year, day.month, day.day, tzinfo=LOCAL_TZ).astimezone(dt.UTC)
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
        await self.records.keep_report(f"{provider_id}:{bill_date}", report)
        await self.audit.record(actor, "payments.reconcile", target=f"{provider_id}:{bill_date}",
                                details={"clean": report["clean"]})
        return report

    async def waiting_attempt(self, order_no: str) -> dict[str, Any] | None:
        """The newest attempt of an order waiting for its payer, if any."""
        return await self._db.payments.find_one({"order_no": order_no, "status": "pending"},
                                                sort=[("created_at", -1)])
