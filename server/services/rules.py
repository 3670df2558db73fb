"""Business rules (业务规则) as data: versioned, effective-dated, scoped, one place.

A version is a document in ``rules``: the rules it sets (any of :class:`RuleSet`'s fields),
the time it takes effect and its scope — the province, a region (an admin division and all
below it), a station or a route. For a departure the rules in force are layered: the
defaults below, then the latest province version in force, then the region's (the wider
region first), the station's and the route's — the most specific says last. Every order
records the versions it was sold under; a refund quote names them and the tier it used.
Code reads rules only through :class:`RuleSet`.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from server.clock import LOCAL_TZ
from server.errors import DomainError, aware_time
from server.security.principal import Principal, region_prefix
from server.services.audit import AuditService
from server.services.freshness import SharedVersion
from server.storage.rules import RuleVersions

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
    on_time_tolerance_minutes: int = 10  # 正点: left at most this long after its time
    change_cutoff_minutes: int = 30
    void_window_minutes: int = 30  # 废票: a misissued ticket is voided this soon after issue
    invoice_station_fee_separately: bool = False  # 站务费 its own line on invoices

    def tier(self, departs_at: dt.datetime, now: dt.datetime) -> RefundTier | None:
        """The refund tier a refund at ``now`` falls in (None: none before departure)."""
        hours = (departs_at - now).total_seconds() / 3600
        if hours < 0:
            return None
        for tier in sorted(self.refund_tiers, key=lambda t: -t.hours_before):
            if hours >= tier.hours_before:
                return tier
        return None

    def refund_fee(self, price: int, departs_at: dt.datetime, now: dt.datetime,
                   cancelled_by_operator: bool = False) -> int | None:
        """The fee in fen, or None when no refund is possible any more."""
        if cancelled_by_operator:
            return 0
        if departs_at < now:
            return None if not self.refund_after_departure else price
        tier = self.tier(departs_at, now)
        if tier is None:
            return None
        return min(price, max(tier.min_fee, price * tier.rate_bp // 10000))

    def layered(self, doc: dict[str, Any]) -> RuleSet:
        """These rules with a version's on top."""
        data = dict(doc.get("rules") or {})
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in RULE_FIELDS
                                  and k != "refund_tiers"}
        if data.get("refund_tiers"):
            kwargs["refund_tiers"] = tuple(
                RefundTier(float(t["hours_before"]), int(t["rate_bp"]), int(t["min_fee"]))
                for t in data["refund_tiers"])
        label = str(doc["_id"]) if self.version == "default" else f"{self.version}+{doc['_id']}"
        return replace(self, version=label, **kwargs)

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in RULE_FIELDS}
        out["refund_tiers"] = [asdict(t) for t in self.refund_tiers]
        return out


RULE_FIELDS = tuple(f for f in RuleSet.__dataclass_fields__ if f != "version")
LEVELS = ("province", "region", "station", "route")


@dataclass(frozen=True)
class Where:
    """What a rule version's scope is matched against: a departure's route and station, and
    the station's admin division."""

    route_id: str = ""
    station_id: str = ""
    division: str = ""


def _applies(scope: dict[str, Any], where: Where | None) -> bool:
    level, ref = scope.get("level", "province"), scope.get("ref", "")
    if level == "province":
        return True
    if where is None:
        return False
    if level == "region":
        return bool(where.division) and where.division.startswith(region_prefix(ref))
    return ref == (where.station_id if level == "station" else where.route_id)


def _specificity(scope: dict[str, Any]) -> tuple[int, int]:
    level = scope.get("level", "province")
    wide = len(region_prefix(scope.get("ref", ""))) if level == "region" else 0
    return LEVELS.index(level), wide


def resolve(versions: list[dict[str, Any]], where: Where | None, at: dt.datetime) -> RuleSet:
    """The rules in force at ``at`` for ``where`` (None: the province's)."""
    latest = _latest_in_force([v for v in versions if _applies(v.get("scope") or {}, where)],
                              at)
    rules = RuleSet()
    for version in sorted(latest.values(),
                          key=lambda v: _specificity(v.get("scope") or {})):
        rules = rules.layered(version)
    return rules



class RuleService:
    """Rule versions: the ones in force for a departure (every version cached in the
    process, reloaded when one is published anywhere), new versions checked and stored, and
    a draft replayed against past orders."""

    def __init__(self, db: AsyncDatabase[Any], redis: Redis | None = None,
                 audit: AuditService | None = None) -> None:
        self._db = db
        self._versions = RuleVersions(db)
        self._audit = audit
        self._changes = SharedVersion(redis, VERSION_KEY)
        self._held: tuple[float, str, list[dict[str, Any]]] | None = None
        self._divisions: dict[str, str] = {}
        self._current: tuple[list[dict[str, Any]], dt.datetime, RuleSet] | None = None

    async def versions(self) -> list[dict[str, Any]]:
        held = self._held
        if held and time.monotonic() - held[0] < CACHE_SECONDS and (
                not self._changes.due() or await self._changes.read() == held[1]):
            return held[2]
        seen = await self._changes.read()
        versions = await self._versions.all()
        self._held = (time.monotonic(), seen, versions)
        return versions

    async def current(self, now: dt.datetime | None = None) -> RuleSet:
        """The province's rules in force (now, or at ``now``). Now's are resolved again only
        when the versions change or the next scheduled one takes effect (every search asks)."""
        versions = await self.versions()
        if now is not None:
            return resolve(versions, None, now)
        at = dt.datetime.now(dt.UTC)
        held = self._current
        if held is not None and held[0] is versions and at < held[1]:
            return held[2]
        until = min((v["effective_from"] for v in versions if v["effective_from"] > at),
                    default=dt.datetime.max.replace(tzinfo=dt.UTC))
        rules = resolve(versions, None, at)
        self._current = (versions, until, rules)
        return rules

    async def for_departure(self, dep: dict[str, Any], now: dt.datetime | None = None
                            ) -> RuleSet:
        """The rules in force for a departure: its route's, its station's, its region's."""
        versions = await self.versions()
        division = ""
        if any((v.get("scope") or {}).get("level") == "region" for v in versions):
            division = await self._division(dep["station_id"])
        where = Where(route_id=dep["route_id"], station_id=dep["station_id"],
                      division=division)
        return resolve(versions, where, now or dt.datetime.now(dt.UTC))

    async def _division(self, station_id: str) -> str:
        if station_id not in self._divisions:
            station = await self._db.stations.find_one({"_id": station_id}, {"division": 1})
            self._divisions[station_id] = (station or {}).get("division", "")
        return self._divisions[station_id]

    # --- managing versions --------------------------------------------------------------------
    async def list(self) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC)
        versions = await self.versions()
        in_force = {id(v) for v in _latest_in_force(versions, now).values()}
        current = resolve(versions, None, now)
        return {"current": current.as_dict() | {"version": current.version},
                "versions": [_public(v, in_force=id(v) in in_force, now=now)
                             for v in reversed(versions)]}

    async def publish(self, actor: Principal, body: dict[str, Any]) -> dict[str, Any]:
        """A new version, checked: effective now or later, a scope that exists, tiers that
        do not overlap, no fee above the price."""
        now = dt.datetime.now(dt.UTC)
        effective = _effective(body, now)
        scope = await self._scope(body.get("scope"))
        rules = _checked({k: body[k] for k in RULE_FIELDS if k in body})
        version = {"_id": f"RV{now:%Y%m%d%H%M%S}{secrets.token_hex(2).upper()}",
                   "effective_from": effective, "scope": scope, "rules": rules,
                   "note": body.get("note", ""), "created_at": now,
                   "created_by": actor.audit_actor()}
        await self._versions.add(version)
        await self._changes.bump()
        self._held = None
        if self._audit is not None:
            await self._audit.record(actor, "rules.publish", target=version["_id"],
                                     details={"scope": scope, "rules": rules,
                                              "effective_from": effective.isoformat()})
        return _public(version, in_force=effective <= now, now=now)

    async def _scope(self, scope: dict[str, Any] | None) -> dict[str, str]:
        level = (scope or {}).get("level", "province")
        ref = str((scope or {}).get("ref", ""))
        if level == "province":
            return {"level": level, "ref": ""}
        if level == "region":
            if not re.fullmatch(r"[1-9][0-9]{5}", ref):
                raise DomainError("RULE_INVALID", "A region is a six-digit admin division.",
                                  field="scope.ref")
        elif await self._db[f"{level}s"].count_documents({"_id": ref}) == 0:
            raise DomainError("REFERENCE_NOT_FOUND", f"No such {level}: {ref!r}.",
                              field="scope.ref")
        return {"level": level, "ref": ref}

    async def dry_run(self, body: dict[str, Any]) -> dict[str, Any]:
        """What a draft would have changed on real past orders (``from``–``to``, the last 30
        days by default) of its scope: refunds whose fee differs under it, orders it would
        have refused."""
        now = dt.datetime.now(dt.UTC)
        until = _instant(body, "to", now)
        since = _instant(body, "from", until - dt.timedelta(days=30))
        scope = await self._scope(body.get("scope"))
        draft = {"_id": "draft", "effective_from": since, "scope": scope,
                 "rules": _checked({k: body[k] for k in RULE_FIELDS if k in body})}
        versions = [*await self.versions(), draft]
        query: dict[str, Any] = {"created_at": {"$gte": since, "$lt": until}}
        if scope["level"] in ("station", "route"):
            query[f"{scope['level']}_id"] = scope["ref"]
        orders = await self._db.orders.find(query).sort("created_at", -1).limit(
            DRY_RUN_ORDERS).to_list()
        tickets: dict[str, list[dict[str, Any]]] = {}
        async for ticket in self._db.tickets.find(
                {"order_no": {"$in": [o["order_no"] for o in orders]}},
                {"order_no": 1, "ticket_no": 1, "price": 1, "status": 1, "refund": 1}):
            tickets.setdefault(ticket["order_no"], []).append(ticket)
        departures = {d["_id"]: d async for d in self._db.departures.find(
            {"_id": {"$in": list({o["departure_id"] for o in orders})}})}
        report: dict[str, Any] = {
            "from": since.isoformat(), "to": until.isoformat(), "orders": 0,
            "orders_refused": 0, "refunds": 0, "fees_changed": 0, "fees_before": 0,
            "fees_after": 0, "changes": []}
        for order in orders:
            dep = departures.get(order["departure_id"])
            if dep is None:
                continue
            where = Where(dep["route_id"], dep["station_id"],
                          await self._division(dep["station_id"]))
            if not _applies(scope, where):
                continue
            report["orders"] += 1
            mine = tickets.get(order["order_no"], [])
            if _refused(order, dep, len(mine), resolve(versions, where, order["created_at"])):
                report["orders_refused"] += 1
            for ticket in mine:
                refund = ticket.get("refund") or {}
                if ticket["status"] != "refunded" or refund.get("reason") != "refund":
                    continue  # disruptions and the desk's refunds do not follow the tiers
                report["refunds"] += 1
                fee = int(refund.get("fee", 0))
                would = resolve(versions, where, refund["at"]).refund_fee(
                    ticket["price"], dep["departs_at"], refund["at"])
                would = ticket["price"] if would is None else would
                report["fees_before"] += fee
                report["fees_after"] += would
                if would != fee:
                    report["fees_changed"] += 1
                    if len(report["changes"]) < 50:
                        report["changes"].append({"ticket_no": ticket["ticket_no"],
                                                  "fee_before": fee, "fee_after": would})
        return report


VERSION_KEY = "rules:version"
ONLINE = ("miniapp", "app", "web", "partner")  # the channels the online cut-off binds
DRY_RUN_ORDERS = 20_000  # the newest of the period, at most


def _instant(body: dict[str, Any], name: str, default: dt.datetime) -> dt.datetime:
    if not body.get(name):
        return default
    return aware_time(body[name], code="INVALID_VALUE", field=name,
                      message=f"{name} is an RFC 3339 time with its offset.")


def _latest_in_force(versions: list[dict[str, Any]], now: dt.datetime
                     ) -> dict[tuple[str, str], dict[str, Any]]:
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for version in versions:  # oldest effective first: a later one replaces its scope's
        if version["effective_from"] <= now:
            scope = version.get("scope") or {}
            latest[(scope.get("level", "province"), scope.get("ref", ""))] = version
    return latest


def _public(version: dict[str, Any], *, in_force: bool, now: dt.datetime) -> dict[str, Any]:
    scope = version.get("scope") or {"level": "province", "ref": ""}
    return {"id": str(version["_id"]), "effective_from": version["effective_from"].isoformat(),
            "scope": scope, "rules": version.get("rules") or {},
            "note": version.get("note", ""),
            "state": "in_force" if in_force else
            "scheduled" if version["effective_from"] > now else "superseded",
            "created_by": (version.get("created_by") or {}).get("username", "")}


def _effective(body: dict[str, Any], now: dt.datetime) -> dt.datetime:
    if not body.get("effective_from"):
        return now
    when = aware_time(body["effective_from"], code="INVALID_VALUE", field="effective_from",
                      message="effective_from is an RFC 3339 time with its offset.")
    if when < now - PAST_TOLERANCE:
        raise DomainError("RULE_EFFECTIVE_IN_PAST", field="effective_from")
    return when


PAST_TOLERANCE = dt.timedelta(seconds=60)  # clocks differ a little


def _checked(rules: dict[str, Any]) -> dict[str, Any]:
    """Rules that make sense together, or RULE_INVALID naming the field."""
    if not rules:
        raise DomainError("RULE_INVALID", "A version sets at least one rule.", field="rules")
    tiers = rules.get("refund_tiers")
    if tiers is not None:
        hours = [float(t["hours_before"]) for t in tiers]
        if len(set(hours)) != len(hours):
            raise DomainError("RULE_INVALID", "Two refund tiers start at the same time before "
                              "departure: tiers may not overlap.", field="refund_tiers")
        for i, tier in enumerate(tiers):
            if tier["rate_bp"] > 10_000:
                raise DomainError("RULE_INVALID", "A refund fee above 100 % of the price.",
                                  field=f"refund_tiers[{i}].rate_bp")
        ordered = sorted(tiers, key=lambda t: -float(t["hours_before"]))
        rates = [t["rate_bp"] for t in ordered]
        if rates != sorted(rates):
            raise DomainError("RULE_INVALID", "A refund nearer departure never costs less "
                              "than one further from it.", field="refund_tiers")
        rules["refund_tiers"] = [{"hours_before": float(t["hours_before"]),
                                  "rate_bp": int(t["rate_bp"]), "min_fee": int(t["min_fee"])}
                                 for t in ordered]
    if rules.get("payment_timeout_minutes", 15) > rules.get("pickup_deadline_minutes", 60) \
            and "pickup_deadline_minutes" in rules:
        raise DomainError("RULE_INVALID", "The pickup deadline is longer than a payment.",
                          field="pickup_deadline_minutes")
    return rules


def _refused(order: dict[str, Any], dep: dict[str, Any], tickets: int, rules: RuleSet
             ) -> bool:
    """Whether the rules would have refused an order as it was made."""
    if tickets > rules.max_passengers:
        return True
    left = dep["departs_at"] - order["created_at"]
    if order.get("channel") in ONLINE and \
            left < dt.timedelta(minutes=rules.online_cutoff_minutes):
        return True
    made = order["created_at"].astimezone(LOCAL_TZ).date()
    return dt.date.fromisoformat(dep["service_date"]) >= made + dt.timedelta(
        days=rules.sale_days)
