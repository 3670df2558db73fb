"""Business rules (业务规则) as data: versioned, effective-dated, one place.

A rule set is a document in ``rules`` with an ``effective_from`` time; the one in force is the
latest whose time has come. Code reads rules only through :class:`RuleSet`; the defaults
below follow common road-passenger practice and apply until an operator stores a version.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class RefundTier:
    """From ``hours_before`` hours before departure (inclusive) on: this fee."""

    hours_before: float
    rate_bp: int  # basis points of the ticket price
    min_fee: int  # fen


@dataclass(frozen=True)
class RuleSet:
    version: str = "default"
    max_passengers: int = 5  # paying passengers per order
    max_free_children_per_adult: int = 1  # 携童
    sale_days: int = 10  # how far ahead departures are on sale
    online_cutoff_minutes: int = 30  # online sale closes this long before departure
    payment_timeout_minutes: int = 15  # the hold lasts this long
    pickup_deadline_minutes: int = 60  # a pay-at-pickup booking is paid by then, or released
    refund_tiers: tuple[RefundTier, ...] = field(default=(
        RefundTier(2.0, 1000, 50),  # ≥ 2 h before: 10 %, at least ¥0.5
        RefundTier(0.0, 2000, 100),  # < 2 h before: 20 %, at least ¥1
    ))
    refund_after_departure: bool = False
    changes_allowed: int = 1  # 改签 once
    disruption_delay_minutes: int = 60  # a delay this long is a disruption (free refund/change)
    change_cutoff_minutes: int = 30

    def refund_fee(self, price: int, departs_at: dt.datetime, now: dt.datetime,
                   cancelled_by_operator: bool = False) -> int | None:
        """The fee in fen, or None when no refund is possible any more."""
        if cancelled_by_operator:
            return 0
        hours = (departs_at - now).total_seconds() / 3600
        if hours < 0:
            return None if not self.refund_after_departure else price
        for tier in sorted(self.refund_tiers, key=lambda t: -t.hours_before):
            if hours >= tier.hours_before:
                return min(price, max(tier.min_fee, price * tier.rate_bp // 10000))
        return None

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> RuleSet:
        data = dict(doc.get("rules") or {})
        tiers = tuple(RefundTier(float(t["hours_before"]), int(t["rate_bp"]),
                                 int(t["min_fee"])) for t in data.pop("refund_tiers", []))
        known = {f for f in cls.__dataclass_fields__ if f not in {"version", "refund_tiers"}}
        kwargs = {k: v for k, v in data.items() if k in known}
        if tiers:
            kwargs["refund_tiers"] = tiers
        return cls(version=str(doc["_id"]), **kwargs)


class RuleService:
    """The rule set in force, cached briefly in the process."""

    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self._db = db
        self._cached: tuple[float, RuleSet] | None = None

    async def current(self, now: dt.datetime | None = None) -> RuleSet:
        if self._cached and time.monotonic() - self._cached[0] < CACHE_SECONDS and now is None:
            return self._cached[1]
        doc = await self._db.rules.find_one(
            {"effective_from": {"$lte": now or dt.datetime.now(dt.UTC)}},
            sort=[("effective_from", -1)])
        rules = RuleSet.from_doc(doc) if doc else RuleSet()
        if now is None:
            self._cached = (time.monotonic(), rules)
        return rules
