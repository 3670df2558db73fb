"""Payment providers: one interface, one module per provider, a registry (pretix-style).

``prepare`` moves no money; ``start`` creates the provider's transaction and returns what the
client needs to pay; ``query`` / ``close`` / ``refund`` act on it; ``parse_notification``
verifies and decodes an asynchronous notice; ``matching_id`` is what reconciliation matches a
statement line by. Amounts are integer fen everywhere.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from payments.local import LocalProvider


class PaymentError(Exception):
    """The provider refused or could not be reached; ``retry`` says whether to try again."""

    def __init__(self, message: str, *, retry: bool = False, code: str = "") -> None:
        super().__init__(message)
        self.retry = retry
        self.code = code  # the provider's own error code, when it gave one


class NotificationRejected(Exception):
    """A notification failed verification (signature, time window, decryption, identity)."""


@dataclass(frozen=True)
class Attempt:
    """One payment try of an order (our ``payments`` document, as providers need it)."""

    out_trade_no: str
    order_no: str
    amount: int
    description: str
    payer: dict[str, str] = field(default_factory=dict)  # e.g. {"openid": …}


@dataclass(frozen=True)
class ProviderState:
    """What the provider says of a transaction."""

    out_trade_no: str
    state: str  # pending, paid, closed, refunded, failed
    amount: int | None = None
    transaction_id: str = ""
    raw_state: str = ""
    account: str = ""  # the app the transaction was made under, when the provider says


@dataclass(frozen=True)
class RefundResult:
    """What the provider says of a refund: ``done`` (the money is back), ``processing``
    (asynchronous: a notification or a query tells later), ``closed`` (the provider gave
    up; a new refund may be made) or ``abnormal`` (the payer's account refused it: a person
    must act)."""

    out_refund_no: str
    state: str  # processing, done, closed, abnormal
    refund_id: str = ""
    amount: int | None = None
    raw_state: str = ""


class BasePaymentProvider(abc.ABC):
    identifier = ""
    methods: tuple[str, ...] = ()

    @abc.abstractmethod
    async def start(self, attempt: Attempt, method: str) -> dict[str, Any]:
        """Create the provider transaction; the parameters the client pays with."""

    @abc.abstractmethod
    async def query(self, out_trade_no: str) -> ProviderState:
        """Ask the provider what became of a transaction (recovers lost notifications)."""

    @abc.abstractmethod
    async def close(self, out_trade_no: str) -> None:
        """Close an unpaid transaction (then query: a close can race a payment)."""

    @abc.abstractmethod
    async def refund(self, out_trade_no: str, out_refund_no: str, amount: int,
                     total: int) -> RefundResult:
        """Refund; ``out_refund_no`` is stable, so a retried refund never pays twice."""

    @abc.abstractmethod
    async def parse_notification(self, headers: dict[str, str], body: bytes
                                 ) -> ProviderState | RefundResult:
        """Verify and decode a notification — of a payment or of a refund;
        NotificationRejected if it is not genuine."""

    async def refund_query(self, out_trade_no: str, out_refund_no: str) -> RefundResult:
        """Ask what became of a refund (recovers a lost refund notification)."""
        raise PaymentError(f"{self.identifier} cannot query refunds")

    async def statement(self, bill_date: str) -> list[Any]:
        """The provider's trade lines of a day (``payments.statements.StatementLine``)."""
        raise PaymentError(f"{self.identifier} has no statements")

    def scrub(self, attempt: dict[str, Any]) -> list[str]:
        """Fields of an old attempt to forget (personal or no longer useful data). Attempts
        never store the payer's identity; what a client paid with goes once it is stale."""
        return ["client_params", "receipt.reference"]

    def account_for(self, method: str) -> str:
        """The app a payment by ``method`` is made under ("" when the provider has one)."""
        return ""

    def matching_id(self, attempt: dict[str, Any]) -> str:
        """What a statement line is matched by."""
        return str(attempt["out_trade_no"])


Provider = BasePaymentProvider | LocalProvider


class ProviderRegistry:
    """Every way to pay, by identifier and by payment method: the remote providers this
    configuration has keys for, and the local ones (deposit, cash, card) always."""

    def __init__(self) -> None:
        self._providers: dict[str, Provider] = {}

    def register(self, provider: Provider) -> None:
        if provider.identifier in self._providers:
            raise ValueError(f"payment provider {provider.identifier!r} registered twice")
        self._providers[provider.identifier] = provider

    def get(self, identifier: str) -> Provider:
        return self._providers[identifier]

    def find(self, identifier: str) -> Provider | None:
        return self._providers.get(identifier)

    def methods(self) -> list[str]:
        return [m for p in self._providers.values() for m in p.methods]

    def remote(self) -> list[str]:
        """The providers outside the platform (they keep a fee, and send bills)."""
        return [i for i, p in self._providers.items() if isinstance(p, BasePaymentProvider)]

    def for_method(self, method: str) -> Provider | None:
        return next((p for p in self._providers.values() if method in p.methods), None)
