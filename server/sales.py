"""What the core asks of a sales channel (渠道); the channels themselves live in ``channels/``.

A channel answers who sells on it, how its orders may be paid, which orders its staff may
see and whether a ticket source may limit it (allotments, caps, closing). ``OrderService``
and ``PaymentService`` ask the channel; they keep no table of their own.
"""

from __future__ import annotations

from typing import Any, Protocol

from server.security.principal import Principal


class SalesChannel(Protocol):
    identifier: str
    name: str
    kind: str
    payment_methods: tuple[str, ...]
    limited: bool  # whether ticket sources may set allotments and caps or close it
    pay_at_pickup: bool  # whether a booking may be paid at the window on pickup

    def order_scope(self, actor: Principal) -> dict[str, Any]:
        """The orders a seller on this channel may see, as a filter of ``orders``."""
        ...


class SalesChannels(Protocol):
    def get(self, identifier: str) -> SalesChannel:
        """The channel of that identifier (KeyError if none)."""
        ...

    def selling(self, actor: Principal, requested: str | None = None) -> SalesChannel:
        """The channel an order by ``actor`` is sold on (a member picks among the online
        channels; staff sell on their own); DomainError if the request is not theirs."""
        ...

    def of(self, actor: Principal) -> SalesChannel | None:
        """The channel the actor sells on, if any (back-office staff sell on none)."""
        ...

    def all(self) -> list[SalesChannel]:
        ...
