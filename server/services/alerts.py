"""Operations alerts: what a person at the operator or in finance must look at.

An alert has a key naming its cause (``refund:<id>``), so raising it again while it is open
only counts the repeat; closing it records who closed it and why. The business-management
work adds station and sale alerts to the same collection.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from redis.exceptions import RedisError

from server.clock import LOCAL_TZ
from server.paging import Page, find_page
from server.security.principal import Principal
from server.services.events import EventLog, Topic

log = logging.getLogger(__name__)


ALERTS = Topic("alerts", "ops")  # operators and finance watch it over the WebSocket


class AlertService:
    """Writes and reads ``alerts`` (the only writer of that collection); tells the watchers
    of the ``alerts:ops`` topic when one opens or ends."""

    def __init__(self, db: AsyncDatabase[Any], events: EventLog | None = None) -> None:
        self._alerts = db.alerts
        self._events = events

    async def raise_alert(self, kind: str, key: str, message: str,
                          details: dict[str, Any] | None = None) -> None:
        """Open the alert of ``key`` (or count one more occurrence of it while open)."""
        now = dt.datetime.now(dt.UTC)
        before = await self._alerts.find_one_and_update(
            {"_id": key},
            {"$setOnInsert": {"created_at": now},
             "$set": {"kind": kind, "message": message, "details": details or {},
                      "status": "open", "last_at": now},
             "$inc": {"count": 1}, "$unset": {"closed_at": "", "closed_by": "",
                                              "outcome": ""}}, upsert=True)
        if before is None or before.get("status") != "open":  # it starts (again) now
            if before is not None:
                await self._alerts.update_one({"_id": key}, {"$set": {"created_at": now}})
            await self._tell("opened", {"key": key, "kind": kind, "message": message,
                                        "details": details or {}})

    async def close(self, key: str, actor: Principal, outcome: str) -> None:
        await self._end(key, actor.username or actor.id, outcome)

    async def ended(self, key: str, outcome: str) -> None:
        """The cause went away by itself (the station is back, the order was issued)."""
        await self._end(key, "system", outcome)

    async def _end(self, key: str, by: str, outcome: str) -> None:
        done = await self._alerts.update_one(
            {"_id": key, "status": "open"},
            {"$set": {"status": "closed", "closed_at": dt.datetime.now(dt.UTC),
                      "closed_by": by, "outcome": outcome}})
        if done.modified_count:
            await self._tell("closed", {"key": key, "outcome": outcome})

    async def open_keys(self, kinds: tuple[str, ...]) -> set[str]:
        return {a["_id"] async for a in self._alerts.find(
            {"status": "open", "kind": {"$in": list(kinds)}}, {"_id": 1})}

    async def _tell(self, event: str, data: dict[str, Any]) -> None:
        if self._events is None:
            return
        try:
            await self._events.emit(ALERTS, event, data)
        except RedisError:  # the list is the record; a watcher resyncs from its snapshot
            log.warning("alert event not published")

    async def list(self, status: str | None = "open", kind: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        return (await self.page(status, kind, Page(0, limit)))[0]

    async def page(self, status: str | None, kind: str | None, page: Page
                   ) -> tuple[list[dict[str, Any]], int]:
        """A page of alerts, the latest first, and how many match."""
        query: dict[str, Any] = {}
        if status:
            query["status"] = status
        if kind:
            query["kind"] = kind
        rows, total = await find_page(self._alerts, query, [("last_at", -1), ("_id", 1)], page)
        return [{"key": r["_id"], "kind": r["kind"], "message": r["message"],
                 "status": r["status"], "count": r.get("count", 1),
                 "details": r.get("details", {}),
                 "created_at": r["created_at"].astimezone(LOCAL_TZ).isoformat(),
                 "last_at": r["last_at"].astimezone(LOCAL_TZ).isoformat(),
                 **({"ended_at": r["closed_at"].astimezone(LOCAL_TZ).isoformat(),
                     "ended_by": r.get("closed_by", "")} if r.get("closed_at") else {})}
                for r in rows], total


WATCHED = ("station_offline", "sync_stale", "not_issued", "refund_spike", "sale_pace")
SYNC_STALE = dt.timedelta(minutes=10)
NOT_ISSUED = dt.timedelta(minutes=1)
SPIKE_WINDOW, SPIKE_REFUNDS = dt.timedelta(minutes=10), 5
PACE_WINDOW, PACE_FACTOR, PACE_MIN = dt.timedelta(minutes=10), 4, 30


class OperationsWatch:
    """Looks at the whole operation every half minute and keeps one alert open per cause
    while it lasts: a station offline or not synced for ten minutes, a paid order not
    issued within a minute, five refunds on one departure within ten minutes, a channel
    selling four times its pace of the day before. A cause that goes away ends its alert
    (with when)."""

    def __init__(self, db: AsyncDatabase[Any], alerts: AlertService) -> None:
        self._db = db
        self._alerts = alerts

    async def run(self) -> int:
        now = dt.datetime.now(dt.UTC)
        found: dict[str, tuple[str, str, dict[str, Any]]] = {}
        async for st in self._db.stations.find({"online": False},
                                               {"name": 1, "offline_reason": 1}):
            found[f"station:{st['_id']}"] = ("station_offline", f"{st['name']} 车站系统离线",
                                             {"station_id": st["_id"],
                                              "reason": st.get("offline_reason", "")})
        async for st in self._db.stations.find(
                {"system.vendor": {"$in": ["rest", "xml"]}, "online": {"$ne": False},
                 "$or": [{"sync.last_ok_at": {"$lt": now - SYNC_STALE}},
                         {"sync.last_ok_at": {"$exists": False}}]}, {"name": 1}):
            found[f"sync:{st['_id']}"] = ("sync_stale", f"{st['name']} 超过10分钟未同步",
                                          {"station_id": st["_id"]})
        async for order in self._db.orders.find(
                {"status": "paid", "paid_at": {"$lt": now - NOT_ISSUED}},
                {"order_no": 1, "station_id": 1}).limit(200):
            found[f"issuing:{order['order_no']}"] = (
                "not_issued", f"订单 {order['order_no']} 已支付超过1分钟仍未出票",
                {"order_no": order["order_no"], "station_id": order.get("station_id")})
        async for row in await self._db.tickets.aggregate([
                {"$match": {"status": "refunded", "refund.at": {"$gte": now - SPIKE_WINDOW}}},
                {"$group": {"_id": "$departure_id", "n": {"$sum": 1}}},
                {"$match": {"n": {"$gte": SPIKE_REFUNDS}}}]):
            found[f"refund-spike:{row['_id']}"] = (
                "refund_spike", f"班次 {row['_id']} 10分钟内退票 {row['n']} 张",
                {"departure_id": row["_id"], "refunds": row["n"]})
        for (by, who), (recent, usual) in (await self._pace(now)).items():
            if recent >= PACE_MIN and recent > PACE_FACTOR * max(usual, 1.0):
                name = "渠道" if by == "channel" else "代售点"
                found[f"pace:{by}:{who}"] = (
                    "sale_pace", f"{name} {who} 10分钟售出 {recent} 单，远超平时",
                    {by: who, "recent": recent, "usual": round(usual, 1)})
        for key, (kind, message, details) in found.items():
            await self._alerts.raise_alert(kind, key, message, details)
        for key in await self._alerts.open_keys(WATCHED) - set(found):
            await self._alerts.ended(key, "cleared")
        return len(found)

    async def _pace(self, now: dt.datetime) -> dict[tuple[str, str], tuple[int, float]]:
        """Orders per channel and per outlet in the last ten minutes, and per ten minutes
        the day before."""
        out: dict[tuple[str, str], tuple[int, float]] = {}
        day = dt.timedelta(days=1)
        for by in ("channel", "outlet_id"):
            async for row in await self._db.orders.aggregate([
                    {"$match": {"created_at": {"$gte": now - day - PACE_WINDOW},
                                by: {"$exists": True}}},
                    {"$group": {"_id": f"${by}",
                                "recent": {"$sum": {"$cond": [
                                    {"$gte": ["$created_at", now - PACE_WINDOW]}, 1, 0]}},
                                "before": {"$sum": {"$cond": [
                                    {"$lt": ["$created_at", now - PACE_WINDOW]}, 1, 0]}}}}]):
                key = ("channel" if by == "channel" else "outlet", str(row["_id"]))
                out[key] = (int(row["recent"]), row["before"] / (day / PACE_WINDOW))
        return out
