"""Sales channels (渠道): one class per way to sell, and the registry that holds them.

Each channel says which principal sells on it (``sold_by``), the payment methods it takes
(each one a provider of ``payments``), which orders its sellers may see (``order_scope``)
and its booking rules: whether the buyer names the channel (members pick among the online
ones) and whether ticket sources may limit it (``limited``: the station's own window never
is). The core asks through ``server.sales``; the channel list of a deployment is here.
"""

from __future__ import annotations

from typing import Any, ClassVar

from server.errors import DomainError
from server.security.principal import Principal


class SalesChannel:
    """One way to sell seats. Subclasses set the class attributes."""

    identifier: ClassVar[str]
    name: ClassVar[str]  # as staff and reports show it
    kind: ClassVar[str]
    payment_methods: ClassVar[tuple[str, ...]]
    limited: ClassVar[bool] = True
    # a signed-in member buys on it (vs. staff selling for a caller at the counter or phone)
    member_required: ClassVar[bool] = False
    roles: ClassVar[tuple[str, ...]] = ()  # the staff roles that sell on it
    # a booking may be paid when the passenger picks the tickets up at the station window
    pay_at_pickup: ClassVar[bool] = False

    def sold_by(self, actor: Principal) -> bool:
        if self.member_required:
            return actor.kind == "member"
        return actor.is_staff and actor.role in self.roles

    def order_scope(self, actor: Principal) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<SalesChannel {self.identifier}>"


class SalesChannels:
    """The channels of a deployment, by identifier."""

    def __init__(self, channels: list[SalesChannel], default_online: str) -> None:
        self._by_id: dict[str, SalesChannel] = {}
        for channel in channels:
            if channel.identifier in self._by_id:
                raise ValueError(f"channel {channel.identifier!r} registered twice")
            self._by_id[channel.identifier] = channel
        self._default_online = self._by_id[default_online]

    def get(self, identifier: str) -> SalesChannel:
        return self._by_id[identifier]

    def all(self) -> list[SalesChannel]:
        return list(self._by_id.values())

    def online(self) -> list[str]:
        """The channels a member picks among."""
        return [c.identifier for c in self._by_id.values() if c.member_required]

    def limited(self) -> list[str]:
        return sorted(c.identifier for c in self._by_id.values() if c.limited)

    def of(self, actor: Principal) -> SalesChannel | None:
        if actor.kind == "member":
            return self._default_online
        return next((c for c in self._by_id.values() if c.sold_by(actor)), None)

    def selling(self, actor: Principal, requested: str | None = None) -> SalesChannel:
        if actor.kind == "member":
            channel = self._by_id.get(requested or self._default_online.identifier)
            if channel is None or not channel.sold_by(actor):
                raise DomainError("CHANNEL_NOT_ALLOWED", field="channel")
            return channel
        if requested is not None:
            raise DomainError("UNKNOWN_FIELD", "Staff sell on their own channel.",
                              field="channel")
        channel = self.of(actor)
        if channel is None:
            raise DomainError("FORBIDDEN", "This account sells on no channel.")
        return channel
