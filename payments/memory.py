"""An in-memory payment provider for pure unit tests: transactions and refunds live in
dicts, the payer is a method call, a notification is JSON signed with a shared secret.
It keeps the provider contract (idempotent refunds by ``out_refund_no``, close racing a
payment, statements of paid transactions) without a server; the HTTP sandboxes in
``sandbox/`` play WeChat Pay and Alipay for integration tests."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

from payments.base import (
    Attempt,
    BasePaymentProvider,
    NotificationRejected,
    PaymentError,
    ProviderState,
    RefundResult,
)
from payments.statements import StatementLine


@dataclass
class _Transaction:
    attempt: Attempt
    state: str = "pending"  # pending, paid, closed
    transaction_id: str = ""
    refunded: int = 0


class MemoryProvider(BasePaymentProvider):
    identifier = "memory"
    methods = ("memory",)

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(16)  # the provider's own: notices are signed
        self.transactions: dict[str, _Transaction] = {}
        self.refunds: dict[str, RefundResult] = {}

    # --- the payer and the provider's side ----------------------------------------------------
    def pay(self, out_trade_no: str) -> tuple[dict[str, str], bytes]:
        """The payer confirms: the transaction is paid; the notification the provider sends
        (headers, body)."""
        tx = self._get(out_trade_no)
        if tx.state == "pending":
            tx.state, tx.transaction_id = "paid", f"M{len(self.transactions):08d}"
        body = json.dumps({"out_trade_no": out_trade_no, "state": tx.state,
                           "amount": tx.attempt.amount,
                           "transaction_id": tx.transaction_id}).encode()
        return {"Signature": self.sign(body)}, body

    def sign(self, body: bytes) -> str:
        return hmac.new(self._secret, body, hashlib.sha256).hexdigest()

    # --- the provider contract ----------------------------------------------------------------
    async def start(self, attempt: Attempt, method: str) -> dict[str, Any]:
        if attempt.out_trade_no not in self.transactions:
            self.transactions[attempt.out_trade_no] = _Transaction(attempt)
        return {"pay": attempt.out_trade_no}

    async def query(self, out_trade_no: str) -> ProviderState:
        tx = self._get(out_trade_no)
        return ProviderState(out_trade_no, tx.state, tx.attempt.amount, tx.transaction_id)

    async def close(self, out_trade_no: str) -> None:
        tx = self._get(out_trade_no)
        if tx.state == "paid":
            raise PaymentError("ORDERPAID", code="ORDERPAID")
        tx.state = "closed"

    async def refund(self, out_trade_no: str, out_refund_no: str, amount: int,
                     total: int) -> RefundResult:
        if out_refund_no in self.refunds:  # the same refund asked again: the same answer
            return self.refunds[out_refund_no]
        tx = self._get(out_trade_no)
        if tx.state != "paid" or tx.refunded + amount > tx.attempt.amount:
            raise PaymentError("refund exceeds what was paid", code="INVALID_REQUEST")
        tx.refunded += amount
        result = RefundResult(out_refund_no, "done", f"R{len(self.refunds) + 1:08d}", amount)
        self.refunds[out_refund_no] = result
        return result

    async def refund_query(self, out_trade_no: str, out_refund_no: str) -> RefundResult:
        try:
            return self.refunds[out_refund_no]
        except KeyError:
            raise PaymentError("no such refund", code="RESOURCE_NOT_EXISTS") from None

    async def parse_notification(self, headers: dict[str, str], body: bytes
                                 ) -> ProviderState | RefundResult:
        if not hmac.compare_digest(headers.get("Signature", ""), self.sign(body)):
            raise NotificationRejected("bad signature")
        data = json.loads(body)
        return ProviderState(data["out_trade_no"], data["state"], data["amount"],
                             data["transaction_id"])

    async def statement(self, bill_date: str) -> list[Any]:
        return [StatementLine(no, tx.transaction_id, tx.attempt.amount, "SUCCESS")
                for no, tx in self.transactions.items() if tx.state == "paid"]

    def _get(self, out_trade_no: str) -> _Transaction:
        try:
            return self.transactions[out_trade_no]
        except KeyError:
            raise PaymentError("no such transaction", code="ORDERNOTEXIST") from None
