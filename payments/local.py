"""Money taken in the platform's own hands: an agent outlet's deposit, cash and bank card at
a kiosk or a station window. Providers of the registry like WeChat Pay and Alipay, but with
no transaction elsewhere to start, query or close: the money moves in the same MongoDB
transaction that moves the attempt to ``pending`` (``take``), and goes back in the one that
ends the refund (``pay_back``).

- ``AgentDeposit`` owns the outlets' balances (debit with credit, credit, top-up);
  ``PartnerDeposit`` pays from a partner's deposit (kept by ``server.storage.partners``).
- ``Cash`` and ``BankCard`` take what the seller keyed in; their refunds are paid at the
  window.
"""

from __future__ import annotations

import abc
from typing import Any

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from server.errors import DomainError
from server.security.principal import KIOSK, STATION_STAFF, Principal
from server.storage.outlets import OutletRecords
from server.storage.partners import PartnerRecords


class LocalProvider(abc.ABC):
    """A way to pay that settles at once, inside our own transaction."""

    identifier = ""
    methods: tuple[str, ...] = ()

    @abc.abstractmethod
    def receipt(self, actor: Principal, amount: int, tendered: int | None,
                reference: str) -> dict[str, Any]:
        """Check the tender before any attempt is recorded (DomainError if refused); what
        the attempt's receipt says."""

    async def take(self, actor: Principal, amount: int, receipt: dict[str, Any],
                   session: AsyncClientSession) -> dict[str, Any] | None:
        """Take the money inside the attempt's transaction: the receipt to record, or None
        when it cannot be taken (the transaction then records nothing)."""
        return receipt

    async def refusal(self, actor: Principal, amount: int) -> DomainError:
        """Why ``take`` gave None."""
        return DomainError("PAYMENT_METHOD_NOT_ALLOWED", field="method")

    @abc.abstractmethod
    async def pay_back(self, attempt: dict[str, Any], amount: int,
                        session: AsyncClientSession) -> dict[str, Any]:
        """Pay a refund back inside the refund's transaction; what its movement records."""

    def attempt_fields(self, actor: Principal) -> dict[str, Any]:
        """What the attempt records of whose money it is."""
        return {}

    def accepts(self, order: dict[str, Any]) -> bool:
        """Whether this order may be paid this way."""
        return True

    def movement_fields(self, attempt: dict[str, Any]) -> dict[str, Any]:
        """What a money movement of this attempt records beside the amount."""
        return {}

    def scrub(self, attempt: dict[str, Any]) -> list[str]:
        return ["receipt.reference"]


def outlet_of(attempt: dict[str, Any]) -> str | None:
    """The outlet whose deposit paid an attempt (older attempts name it in their actor)."""
    return attempt.get("outlet_id") or (attempt.get("actor") or {}).get("outlet_id")


class PrepaidDeposit(LocalProvider):
    """A prepaid deposit that may go down to minus its credit limit: an agent outlet's or a
    partner's. Subclasses say whose (``account``), how an actor names it, and where the
    balances are kept (``server.storage.outlets`` / ``server.storage.partners``)."""

    account = ""  # what a top-up names: "outlet" or "partner"
    missing = ""  # the error when the account does not exist
    records: OutletRecords | PartnerRecords

    @abc.abstractmethod
    def account_of(self, actor: Principal) -> str | None:
        """The deposit the actor pays from (None: this actor has none)."""

    @property
    def field(self) -> str:
        return f"{self.account}_id"

    def receipt(self, actor: Principal, amount: int, tendered: int | None,
                reference: str) -> dict[str, Any]:
        if not self.account_of(actor):
            raise DomainError("PAYMENT_METHOD_NOT_ALLOWED", field="method")
        return {}

    async def take(self, actor: Principal, amount: int, receipt: dict[str, Any],
                   session: AsyncClientSession) -> dict[str, Any] | None:
        debited = await self.records.debit(self.account_of(actor) or "", amount, session)
        if debited is None:
            return None
        return {"balance": debited["balance"], "credit_limit": debited.get("credit_limit", 0)}

    async def refusal(self, actor: Principal, amount: int) -> DomainError:
        if not await self.exists(self.account_of(actor) or ""):
            return DomainError(self.missing)
        return DomainError("INSUFFICIENT_BALANCE", amount=amount)

    async def pay_back(self, attempt: dict[str, Any], amount: int,
                       session: AsyncClientSession) -> dict[str, Any]:
        await self.credit(self.paid_from(attempt) or "", amount, session)
        return {}

    def paid_from(self, attempt: dict[str, Any]) -> str | None:
        return attempt.get(self.field)

    def attempt_fields(self, actor: Principal) -> dict[str, Any]:
        return {self.field: self.account_of(actor)}

    def movement_fields(self, attempt: dict[str, Any]) -> dict[str, Any]:
        account_id = self.paid_from(attempt)
        return {self.field: account_id} if account_id else {}

    async def exists(self, account_id: str, session: AsyncClientSession | None = None
                     ) -> bool:
        return await self.records.get(account_id, session) is not None

    async def credit(self, account_id: str, amount: int,
                     session: AsyncClientSession | None = None) -> None:
        """Money back onto the deposit: a refund, or a top-up."""
        await self.records.credit(account_id, amount, session)

    async def balance(self, account_id: str) -> dict[str, int]:
        found = await self.records.get(account_id) or {}
        return {"balance": found.get("balance", 0),
                "credit_limit": found.get("credit_limit", 0)}


class AgentDeposit(PrepaidDeposit):
    """An agent outlet's deposit, paid from by its agents."""

    identifier = "agent_balance"
    methods = ("agent_balance",)
    account, missing = "outlet", "OUTLET_NOT_FOUND"

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self.records = OutletRecords(db)

    def account_of(self, actor: Principal) -> str | None:
        return actor.outlet_id

    def paid_from(self, attempt: dict[str, Any]) -> str | None:
        return outlet_of(attempt)


class PartnerDeposit(PrepaidDeposit):
    """A partner's deposit, paid from by the partner API's confirm."""

    identifier = "partner_deposit"
    methods = ("partner_deposit",)
    account, missing = "partner", "PARTNER_NOT_FOUND"

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self.records = PartnerRecords(db)

    def account_of(self, actor: Principal) -> str | None:
        return actor.id if actor.kind == "partner" else None


class AtTheCounter(LocalProvider):
    """Money a kiosk or a station window took; refunds are paid out at the window."""

    def receipt(self, actor: Principal, amount: int, tendered: int | None,
                reference: str) -> dict[str, Any]:
        if actor.role not in (KIOSK, STATION_STAFF):
            raise DomainError("PAYMENT_METHOD_NOT_ALLOWED", field="method")
        return self.tender(amount, tendered, reference)

    @abc.abstractmethod
    def tender(self, amount: int, tendered: int | None, reference: str) -> dict[str, Any]:
        ...

    async def pay_back(self, attempt: dict[str, Any], amount: int,
                        session: AsyncClientSession) -> dict[str, Any]:
        return {"paid_out": "at the station window"}


class Cash(AtTheCounter):
    identifier = "cash"
    methods = ("cash",)

    def tender(self, amount: int, tendered: int | None, reference: str) -> dict[str, Any]:
        if tendered is None or tendered < amount:
            raise DomainError("TENDER_TOO_LOW", field="tendered")
        return {"tendered": tendered, "change": tendered - amount}


class PayAtPickup(AtTheCounter):
    """A phone booking paid at the station window when its tickets are picked up: cash
    (``tendered``) or bank card (``reference`` of the slip). Only station staff take it,
    only for an order booked to be paid so."""

    identifier = "pay_at_pickup"
    methods = ("pay_at_pickup",)

    def receipt(self, actor: Principal, amount: int, tendered: int | None,
                reference: str) -> dict[str, Any]:
        if actor.role != STATION_STAFF:
            raise DomainError("PAYMENT_METHOD_NOT_ALLOWED", field="method")
        return self.tender(amount, tendered, reference)

    def tender(self, amount: int, tendered: int | None, reference: str) -> dict[str, Any]:
        if tendered is None:
            if not reference:
                raise DomainError("TENDER_TOO_LOW", field="tendered")
            return {"paid_by": "bank_card", "reference": reference}
        return {"paid_by": "cash", **Cash().tender(amount, tendered, reference)}

    def accepts(self, order: dict[str, Any]) -> bool:
        return bool(order.get("pay_at_pickup"))


class BankCard(AtTheCounter):
    identifier = "bank_card"
    methods = ("bank_card",)

    def tender(self, amount: int, tendered: int | None, reference: str) -> dict[str, Any]:
        return {"reference": reference}
