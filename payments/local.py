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
from server.security.principal import Principal
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


class AgentDeposit(LocalProvider):
    """An agent outlet's prepaid deposit, which may go down to minus its credit limit."""

    identifier = "agent_balance"
    methods = ("agent_balance",)
    account = "outlet"  # what a top-up names: the outlet

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._outlets = OutletRecords(db)

    def receipt(self, actor: Principal, amount: int, tendered: int | None,
                reference: str) -> dict[str, Any]:
        if not actor.outlet_id:
            raise DomainError("PAYMENT_METHOD_NOT_ALLOWED", field="method")
        return {}

    async def take(self, actor: Principal, amount: int, receipt: dict[str, Any],
                   session: AsyncClientSession) -> dict[str, Any] | None:
        debited = await self._outlets.debit(actor.outlet_id or "", amount, session)
        if debited is None:
            return None
        return {"balance": debited["balance"], "credit_limit": debited["credit_limit"]}

    async def refusal(self, actor: Principal, amount: int) -> DomainError:
        if await self._outlets.get(actor.outlet_id or "") is None:
            return DomainError("OUTLET_NOT_FOUND")
        return DomainError("INSUFFICIENT_BALANCE", amount=amount)

    async def pay_back(self, attempt: dict[str, Any], amount: int,
                        session: AsyncClientSession) -> dict[str, Any]:
        await self.credit(outlet_of(attempt) or "", amount, session)
        return {}

    def attempt_fields(self, actor: Principal) -> dict[str, Any]:
        return {"outlet_id": actor.outlet_id}

    def movement_fields(self, attempt: dict[str, Any]) -> dict[str, Any]:
        outlet_id = outlet_of(attempt)
        return {"outlet_id": outlet_id} if outlet_id else {}

    async def exists(self, outlet_id: str, session: AsyncClientSession | None = None
                     ) -> bool:
        return await self._outlets.get(outlet_id, session) is not None

    async def credit(self, outlet_id: str, amount: int,
                     session: AsyncClientSession | None = None) -> None:
        """Money back onto the deposit: a refund, or a top-up."""
        await self._outlets.credit(outlet_id, amount, session)

    async def balance(self, outlet_id: str) -> dict[str, int]:
        outlet = await self._outlets.get(outlet_id) or {}
        return {"balance": outlet.get("balance", 0),
                "credit_limit": outlet.get("credit_limit", 0)}


class PartnerDeposit(LocalProvider):
    """A partner's prepaid deposit (with its credit limit), paid from by the partner API's
    confirm; refunds go back to it. The balance is kept by ``server.storage.partners``."""

    identifier = "partner_deposit"
    methods = ("partner_deposit",)
    account = "partner"

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._partners = PartnerRecords(db)

    def receipt(self, actor: Principal, amount: int, tendered: int | None,
                reference: str) -> dict[str, Any]:
        if actor.kind != "partner":
            raise DomainError("PAYMENT_METHOD_NOT_ALLOWED", field="method")
        return {}

    async def take(self, actor: Principal, amount: int, receipt: dict[str, Any],
                   session: AsyncClientSession) -> dict[str, Any] | None:
        partner = await self._partners.debit(actor.id, amount, session)
        if partner is None:
            return None
        return {"balance": partner["balance"], "credit_limit": partner.get("credit_limit", 0)}

    async def refusal(self, actor: Principal, amount: int) -> DomainError:
        if await self._partners.get(actor.id) is None:
            return DomainError("PARTNER_NOT_FOUND")
        return DomainError("INSUFFICIENT_BALANCE", amount=amount)

    async def pay_back(self, attempt: dict[str, Any], amount: int,
                       session: AsyncClientSession) -> dict[str, Any]:
        await self.credit(attempt["partner_id"], amount, session)
        return {}

    def attempt_fields(self, actor: Principal) -> dict[str, Any]:
        return {"partner_id": actor.id}

    def movement_fields(self, attempt: dict[str, Any]) -> dict[str, Any]:
        return {"partner_id": attempt["partner_id"]} if attempt.get("partner_id") else {}

    async def exists(self, partner_id: str, session: AsyncClientSession | None = None
                     ) -> bool:
        return await self._partners.get(partner_id, session) is not None

    async def credit(self, partner_id: str, amount: int,
                     session: AsyncClientSession | None = None) -> None:
        await self._partners.credit(partner_id, amount, session)

    async def balance(self, partner_id: str) -> dict[str, int]:
        partner = await self._partners.get(partner_id) or {}
        return {"balance": partner.get("balance", 0),
                "credit_limit": partner.get("credit_limit", 0)}


class AtTheCounter(LocalProvider):
    """Money a kiosk or a station window took; refunds are paid out at the window."""

    def receipt(self, actor: Principal, amount: int, tendered: int | None,
                reference: str) -> dict[str, Any]:
        if actor.role not in ("kiosk", "station_staff"):
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
        if actor.role != "station_staff":
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
