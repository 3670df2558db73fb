"""Clearing rules (清分规则): how each ticket's money is shared out, versioned and simulated.

A ticket of price P with station fee F (站务费, from the fare table) splits so:

- the departure station gets F;
- of the rest (P − F), by basis points: the seller's commission (an agent outlet or a
  partner platform; nothing when the passenger bought it themselves), the payment
  provider's fee (per provider), the platform's service fee;
- the carrier gets what is left — the named remainder party, so every fen lands somewhere
  and floor rounding is deterministic (each share is rounded down, the fen left over are
  the carrier's).

A refund fee splits the same way between the station, the platform and the carrier (the
remainder). A version holds lines matched by route, region (an admin division and all below
it), channel and ticket type; the line that names the most of them wins, then the earlier
line. Versions are effective-dated and never change; a draft is simulated over a past period
(per entity, what it received and what it would have under the draft) before it is
published.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from server.clock import LOCAL_TZ
from server.errors import DomainError, aware_time
from server.security.principal import Principal, region_prefix
from server.services.audit import AuditService
from server.storage.clearing import ClearingRuleVersions

BP = 10_000
MATCH_KEYS = ("route_id", "region", "channel", "ticket_type")
PLATFORM = "platform:keyun"
PAST_TOLERANCE = dt.timedelta(seconds=60)


@dataclass(frozen=True)
class Sale:
    """What clearing needs to know about one ticket."""

    ticket_no: str
    price: int
    station_fee: int
    ticket_type: str
    channel: str
    route_id: str
    region: str  # the departure station's division
    station_id: str
    carrier_id: str
    seller: str | None  # "outlet:<id>" or "partner:<id>", or None
    provider: str

    def matches(self, match: dict[str, str]) -> bool:
        for key, want in match.items():
            have = getattr(self, key)
            if key == "region":
                if not have.startswith(region_prefix(want)):
                    return False
            elif have != want:
                return False
        return True


# the rules in force when no version has been published
DEFAULT_LINE = {"match": {}, "commission_bp": 300, "platform_bp": 100,
                "refund_fee": {"station_bp": 3000, "platform_bp": 2000}}
DEFAULT_PROVIDER_BP = {"wechat": 60, "alipay": 60}
DEFAULT = {"_id": "default", "lines": [DEFAULT_LINE], "provider_fee_bp": DEFAULT_PROVIDER_BP,
           "remainder": "carrier"}


def _pick_line(version: dict[str, Any], sale: Sale) -> dict[str, Any]:
    best, best_score = None, -1
    for line in version["lines"]:
        match = line.get("match") or {}
        if sale.matches(match) and len(match) > best_score:
            best, best_score = line, len(match)
    return best or DEFAULT_LINE


def split_sale(version: dict[str, Any], sale: Sale) -> dict[str, int]:
    """The ticket's price shared out: account → fen, summing to the price exactly."""
    line = _pick_line(version, sale)
    net = sale.price - sale.station_fee
    shares: dict[str, int] = {}

    def give(account: str, fen: int) -> None:
        if fen:
            shares[account] = shares.get(account, 0) + fen

    give(f"station:{sale.station_id}", sale.station_fee)
    if sale.seller:
        give(sale.seller, net * int(line.get("commission_bp", 0)) // BP)
    provider_bp = int((version.get("provider_fee_bp") or {}).get(sale.provider, 0))
    give(f"provider:{sale.provider}", net * provider_bp // BP)
    give(PLATFORM, net * int(line.get("platform_bp", 0)) // BP)
    give(f"carrier:{sale.carrier_id}", sale.price - sum(shares.values()))
    return shares


def split_fee(version: dict[str, Any], sale: Sale, fee: int) -> dict[str, int]:
    """A refund fee shared out between the station, the platform and the carrier."""
    terms = _pick_line(version, sale).get("refund_fee") or {}
    shares: dict[str, int] = {}
    for account, bp in ((f"station:{sale.station_id}", terms.get("station_bp", 0)),
                        (PLATFORM, terms.get("platform_bp", 0))):
        if fee * int(bp) // BP:
            shares[account] = shares.get(account, 0) + fee * int(bp) // BP
    rest = fee - sum(shares.values())
    if rest:
        shares[f"carrier:{sale.carrier_id}"] = shares.get(f"carrier:{sale.carrier_id}", 0) + rest
    return shares


def check(body: dict[str, Any]) -> dict[str, Any]:
    """A version's lines and provider fees, validated: shares in basis points that never
    exceed the net fare, matches on known keys, the carrier as the remainder party."""
    lines = body.get("lines")
    if not isinstance(lines, list) or not lines:
        raise DomainError("CLEARING_RULE_INVALID", "A version has at least one line.",
                          field="lines")
    provider_bp = {str(k): int(v) for k, v in (body.get("provider_fee_bp") or {}).items()}
    if any(not 0 <= bp <= 1000 for bp in provider_bp.values()):
        raise DomainError("CLEARING_RULE_INVALID", "A provider fee is 0–10 % (0–1000 bp).",
                          field="provider_fee_bp")
    highest_provider = max(provider_bp.values(), default=0)
    checked = []
    for i, line in enumerate(lines):
        match = {k: str(v) for k, v in (line.get("match") or {}).items()}
        if set(match) - set(MATCH_KEYS):
            raise DomainError("CLEARING_RULE_INVALID", "A line matches on route_id, region, "
                              "channel and ticket_type only.", field=f"lines[{i}].match")
        commission, platform = int(line.get("commission_bp", 0)), int(line.get("platform_bp", 0))
        if commission < 0 or platform < 0 or commission + platform + highest_provider > BP:
            raise DomainError("CLEARING_RULE_INVALID", "Commission, platform and provider "
                              "shares together exceed the fare.", field=f"lines[{i}]")
        refund_fee = line.get("refund_fee") or {}
        station_bp, platform_fee_bp = (int(refund_fee.get("station_bp", 0)),
                                       int(refund_fee.get("platform_bp", 0)))
        if station_bp < 0 or platform_fee_bp < 0 or station_bp + platform_fee_bp > BP:
            raise DomainError("CLEARING_RULE_INVALID", "A refund fee's shares exceed the fee.",
                              field=f"lines[{i}].refund_fee")
        checked.append({"match": match, "commission_bp": commission, "platform_bp": platform,
                        "refund_fee": {"station_bp": station_bp,
                                       "platform_bp": platform_fee_bp}})
    if body.get("remainder", "carrier") != "carrier":
        raise DomainError("CLEARING_RULE_INVALID", "The carrier takes the remainder.",
                          field="remainder")
    return {"lines": checked, "provider_fee_bp": provider_bp, "remainder": "carrier"}


def _public(version: dict[str, Any], now: dt.datetime, in_force_id: str) -> dict[str, Any]:
    effective = version.get("effective_from")
    if version.get("status") == "draft":
        state = "draft"
    elif version["_id"] == in_force_id:
        state = "in_force"
    elif effective is not None and effective > now:
        state = "scheduled"
    else:
        state = "superseded"
    return {"id": version["_id"], "state": state, "note": version.get("note", ""),
            "effective_from": effective.astimezone(LOCAL_TZ).isoformat() if effective else None,
            "lines": version["lines"], "provider_fee_bp": version.get("provider_fee_bp", {}),
            "remainder": version.get("remainder", "carrier"),
            "created_by": (version.get("created_by") or {}).get("username", "")}


class ClearingRules:
    """Clearing rule versions: drafts, publishing, the version in force at an instant, and
    simulation of a draft over past sales."""

    def __init__(self, db: AsyncDatabase[Any], audit: AuditService) -> None:
        self._db = db
        self._versions = ClearingRuleVersions(db)
        self._audit = audit

    async def published(self) -> list[dict[str, Any]]:
        return await self._versions.published()

    @staticmethod
    def in_force(published: list[dict[str, Any]], at: dt.datetime) -> dict[str, Any]:
        """The version in force at ``at`` among published ones (oldest effective first)."""
        found = DEFAULT
        for version in published:
            if version["effective_from"] <= at:
                found = version
        return found

    async def list(self) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC)
        published = await self.published()
        current = self.in_force(published, now)
        every = await self._versions.every()
        return {"in_force": current["_id"],
                "versions": [_public(v, now, current["_id"]) for v in every]}

    async def create(self, actor: Principal, body: dict[str, Any]) -> dict[str, Any]:
        """A draft version, checked (``CLEARING_RULE_INVALID`` names the field)."""
        now = dt.datetime.now(dt.UTC)
        checked = check(body)
        for i, line in enumerate(checked["lines"]):
            route = line["match"].get("route_id")
            if route and await self._db.routes.count_documents({"_id": route}) == 0:
                raise DomainError("REFERENCE_NOT_FOUND", f"No such route: {route!r}.",
                                  field=f"lines[{i}].match.route_id")
        version = {"_id": f"CR{now:%Y%m%d%H%M%S}{secrets.token_hex(2).upper()}",
                   **checked, "status": "draft", "note": str(body.get("note", ""))[:200],
                   "created_at": now, "created_by": actor.audit_actor()}
        await self._versions.add(version)
        await self._audit.record(actor, "clearing_rules.create", target=version["_id"],
                                 details={"lines": len(version["lines"])})
        return _public(version, now, "")

    async def publish(self, actor: Principal, version_id: str, body: dict[str, Any]
                      ) -> dict[str, Any]:
        """A draft takes effect now or later; a published version never changes."""
        now = dt.datetime.now(dt.UTC)
        effective = now
        if body.get("effective_from"):
            effective = aware_time(body["effective_from"], code="INVALID_VALUE",
                                   field="effective_from",
                                   message="effective_from is an RFC 3339 time with its offset.")
            if effective < now - PAST_TOLERANCE:
                raise DomainError("RULE_EFFECTIVE_IN_PAST", field="effective_from")
        version = await self._versions.get(version_id)
        if version is None:
            raise DomainError("NOT_FOUND", "No such clearing rule version.")
        if not await self._versions.publish(version_id, effective, actor.audit_actor()):
            raise DomainError("CLEARING_RULE_PUBLISHED")
        await self._audit.record(actor, "clearing_rules.publish", target=version_id,
                                 details={"effective_from": effective.isoformat()})
        published = await self.published()
        version = await self._versions.get(version_id) or version
        return _public(version, now, self.in_force(published, now)["_id"])

    async def simulate(self, version_id: str, body: dict[str, Any],
                       sales: Any) -> dict[str, Any]:
        """Per entity, what the tickets sold from ``from`` to ``to`` paid it under the rules
        in force at each sale, and what they would have paid under this version."""
        version = await self._versions.get(version_id)
        if version is None:
            raise DomainError("NOT_FOUND", "No such clearing rule version.")
        now = dt.datetime.now(dt.UTC)
        until = _instant(body, "to", now)
        since = _instant(body, "from", until - dt.timedelta(days=30))
        if since >= until:
            raise DomainError("INVALID_VALUE", "from is before to.", field="from")
        published = await self.published()
        current: dict[str, int] = {}
        draft: dict[str, int] = {}
        tickets = 0
        async for sold_at, sale in sales(since, until):
            tickets += 1
            for account, fen in split_sale(self.in_force(published, sold_at), sale).items():
                current[account] = current.get(account, 0) + fen
            for account, fen in split_sale(version, sale).items():
                draft[account] = draft.get(account, 0) + fen
        rows = [{"entity": account, "current": current.get(account, 0),
                 "draft": draft.get(account, 0),
                 "difference": draft.get(account, 0) - current.get(account, 0)}
                for account in sorted(set(current) | set(draft))]
        return {"version": version_id, "from": since.astimezone(LOCAL_TZ).isoformat(),
                "to": until.astimezone(LOCAL_TZ).isoformat(), "tickets": tickets,
                "total_current": sum(current.values()), "total_draft": sum(draft.values()),
                "entities": rows}


def _instant(body: dict[str, Any], name: str, default: dt.datetime) -> dt.datetime:
    if not body.get(name):
        return default
    return aware_time(body[name], code="INVALID_VALUE", field=name,
                      message=f"{name} is an RFC 3339 time with its offset.")
