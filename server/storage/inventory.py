"""Native seat inventory: Redis scripts decide, MongoDB remembers, Redis is rebuilt from it.

Write order is chosen so that no failure can sell a seat twice:

- hold: the script takes the seats atomically; the hold's record joins a journal that is
  written to ``seat_holds`` in batches within ~50 ms (a hold is temporary: losing the record
  of one in a crash only means its seats come free early — never a second sale).
- sell: the record is first marked ``selling`` (an intent), then the script turns the hold
  into a sale, then the record becomes ``sold``. A rebuild counts ``selling`` as taken, so a
  crash between the steps can at worst keep a seat blocked until the sweeper settles it —
  never free a sold one.
- return (refund/void): the script frees the seats first, then the record says so; a crash
  in between leaves the seat taken in MongoDB, the safe side again.

A departure not in Redis (first use, or Redis restarted) is loaded from MongoDB by a script
that only writes when nothing is there, so concurrent loaders cannot disagree. Expired holds
are released by whichever script touches the departure first, and by a sweeper (one process
at a time, under a lease); each release happens exactly once because it is one atomic
script step.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError
from redis.asyncio import Redis

from server.exchange.base import Availability, Hold, HoldRequest
from server.exchange.errors import (
    BY_REASON,
    DepartureNotFound,
    HoldExpired,
    HoldNotFound,
    InvalidSegment,
)
from server.storage.seat_scripts import EXPIRING, ScriptError, SeatScripts, holds_key, seats_key

log = logging.getLogger(__name__)

KEEP_AFTER_DEPARTURE = dt.timedelta(days=3)
JOURNAL_INTERVAL = 0.05
JOURNAL_BATCH = 500
SELLING_GRACE = dt.timedelta(seconds=60)
ACTIVE = ("held", "selling", "sold")


def _ms(when: dt.datetime) -> int:
    return int(when.timestamp() * 1000)


def _from_ms(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def _seats(csv: str) -> tuple[int, ...]:
    return tuple(int(s) for s in csv.split(",") if s)


class NativeInventory:
    """Seats of departures whose station has no system of its own."""

    def __init__(self, db: AsyncDatabase[Any], redis: Redis, *,
                 default_release_minutes: int = 120) -> None:
        self._db = db
        self._redis = redis
        self._scripts = SeatScripts(redis)
        self._segments: dict[str, int] = {}  # route id -> segments (routes rarely change)
        self._default_release = default_release_minutes
        self._journal: dict[str, dict[str, Any]] = {}  # hold records not yet in MongoDB
        self._flushing = asyncio.Lock()  # a flush waits for one already writing
        self._journal_wakeup = asyncio.Event()
        self._journal_task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[str], None]] = []

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(departure_id)`` right after this process changed a departure's
        seats (before the call that changed them returns)."""
        self._listeners.append(listener)

    def _changed(self, departure_id: str) -> None:
        for listener in self._listeners:
            listener(departure_id)

    # --- the hold journal (write-behind) ----------------------------------------------------
    def _journal_add(self, record: dict[str, Any]) -> None:
        self._journal[record["_id"]] = record
        if self._journal_task is None or self._journal_task.done():
            self._journal_task = asyncio.create_task(self._journal_loop(), name="hold-journal")
        if len(self._journal) >= JOURNAL_BATCH:
            self._journal_wakeup.set()

    async def _journal_loop(self) -> None:
        while self._journal:
            try:
                await asyncio.wait_for(self._journal_wakeup.wait(), JOURNAL_INTERVAL)
            except TimeoutError:
                pass
            self._journal_wakeup.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write journaled hold records now (duplicates — already written — are skipped).
        When it returns, every record journaled before the call is written (or back in the
        journal after a failure), also those a flush already under way had taken."""
        async with self._flushing:
            if not self._journal:
                return
            batch, self._journal = list(self._journal.values()), {}
            try:
                await self._db.seat_holds.insert_many(batch, ordered=False)
            except BulkWriteError as exc:
                if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                    log.error("hold journal write failed",
                              extra={"fields": {"holds": len(batch)}})
                    for record in batch:  # try again on the next round
                        self._journal.setdefault(record["_id"], record)
            except Exception:
                log.exception("hold journal write failed; retrying")
                for record in batch:
                    self._journal.setdefault(record["_id"], record)
                await asyncio.sleep(0.5)

    async def close(self) -> None:
        """Flush what is journaled (on shutdown)."""
        await self.flush()
        if self._journal_task is not None:
            self._journal_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._journal_task
            self._journal_task = None

    # --- loading -----------------------------------------------------------------------------
    async def segments_of(self, route_id: str) -> int:
        if route_id not in self._segments:
            stops = await self._db.stops.count_documents({"route_id": route_id})
            self._segments[route_id] = max(1, stops - 1)
        return self._segments[route_id]

    async def ticket_source(self, departure: dict[str, Any]) -> dict[str, Any]:
        """The effective ticket source: the departure's own, else its schedule's, else none."""
        for key in (f"departure:{departure['_id']}", f"schedule:{departure['schedule_id']}"):
            doc = await self._db.ticket_sources.find_one({"_id": key})
            if doc:
                return doc
        return {"allotments": {}, "caps": {}, "closed_channels": [],
                "release_before_minutes": self._default_release}

    def _release_at(self, departure: dict[str, Any], source: dict[str, Any]) -> int:
        if not source.get("allotments"):
            return 0
        minutes = int(source.get("release_before_minutes", self._default_release))
        return _ms(departure["departs_at"] - dt.timedelta(minutes=minutes))

    async def load(self, departure_id: str) -> bool:
        """Put a departure into Redis from MongoDB unless it is there; True if this loaded it."""
        dep = await self._db.departures.find_one({"_id": departure_id})
        if dep is None:
            raise DepartureNotFound(departure_id=departure_id)
        await self.flush()  # a rebuild must see every hold this process knows of
        segments = await self.segments_of(dep["route_id"])
        source = await self.ticket_source(dep)
        holds, sales = [], []
        async for rec in self._db.seat_holds.find({"departure_id": departure_id,
                                                   "status": {"$in": list(ACTIVE)}}):
            seats = [s["seat"] for s in rec["seats"] if s.get("active", True)]
            if not seats:
                continue
            entry = {"id": rec["_id"], "channel": rec["channel"], "from": rec["from_seq"],
                     "to": rec["to_seq"], "seats": seats}
            if rec["status"] == "held":
                holds.append({**entry, "exp": _ms(rec["expires_at"])})
            else:  # sold, or a sale that may have happened (selling): both stay taken
                sales.append(entry)
        status = "on_sale" if dep["status"] == "on_sale" else "stopped"
        result = await self._scripts.call(
            "load", departure_id, dep["seats"], segments, status,
            self._release_at(dep, source), _ms(dep["departs_at"] + KEEP_AFTER_DEPARTURE),
            json.dumps(source.get("allotments") or {}), json.dumps(source.get("caps") or {}),
            json.dumps(source.get("closed_channels") or []), json.dumps(holds),
            json.dumps(sales))
        loaded = result[1] == 1
        if loaded:
            self._changed(departure_id)
            log.info("inventory loaded", extra={"fields": {
                "departure_id": departure_id, "holds": len(holds), "sales": len(sales)}})
            if holds:
                await self._scripts.index_hold(departure_id, min(h["exp"] for h in holds),
                                               _ms(dt.datetime.now(dt.UTC)))
        return loaded

    async def _call(self, name: str, departure_id: str, *args: Any) -> list[Any]:
        """Run a script, loading the departure first if Redis does not have it."""
        for attempt in (1, 2):
            try:
                answer = await self._scripts.call(name, departure_id, *args)
            except ScriptError as exc:
                if exc.code == "NOT_LOADED" and attempt == 1:
                    await self.load(departure_id)
                    continue
                raise _exchange_error(exc) from None
            finally:
                if name != "snapshot":
                    self._changed(departure_id)  # also when it failed: it may have run
            return answer
        raise AssertionError("unreachable")

    # --- ticket operations ----------------------------------------------------------------
    async def hold(self, departure_id: str, request: HoldRequest) -> Hold:
        """Take seats for a while; recorded in MongoDB before the caller hears of it."""
        if request.count < 1:
            raise InvalidSegment("At least one seat.")
        result = await self._call(
            "hold", departure_id, request.hold_id, request.channel, request.from_seq,
            request.to_seq, request.ttl_seconds * 1000, request.count,
            ",".join(str(s) for s in request.seats), "1" if request.limited else "0")
        seats, expires_ms, released, fresh = _seats(result[1]), int(result[2]), result[4], \
            result[5] == "NEW"
        await self._mark_released(_split_ids(released))
        hold = Hold(request.hold_id, departure_id, seats, request.from_seq, request.to_seq,
                    _from_ms(expires_ms))
        if fresh:
            self._journal_add(_hold_record(hold, request.channel, "held"))
            await self._scripts.index_hold(departure_id, expires_ms,
                                           _ms(dt.datetime.now(dt.UTC)))
        return hold

    async def release(self, departure_id: str, hold_id: str) -> bool:
        """Give held seats back now (a cancelled order); False if they were already gone."""
        result = await self._call("release", departure_id, hold_id)
        if hold_id in self._journal:  # not written yet: it will be written as released
            self._journal[hold_id]["status"] = "released"
            return result[1] == 1
        await self._db.seat_holds.update_one(
            {"_id": hold_id, "status": "held"},
            {"$set": {"status": "released", "released_at": dt.datetime.now(dt.UTC),
                      "release_reason": "released"}})
        return result[1] == 1

    async def sell(self, departure_id: str, hold_id: str) -> tuple[int, ...]:
        """Turn a live hold into sold seats; idempotent; HoldExpired once it has run out."""
        now = dt.datetime.now(dt.UTC)
        if hold_id in self._journal:
            await self.flush()
        rec = await self._db.seat_holds.find_one_and_update(
            {"_id": hold_id, "departure_id": departure_id, "status": "held"},
            {"$set": {"status": "selling", "selling_at": now}})
        if rec is None:
            rec = await self._intent_from_redis(departure_id, hold_id, now)
        if rec is None:
            rec = await self._db.seat_holds.find_one({"_id": hold_id,
                                                      "departure_id": departure_id})
            if rec is None:
                raise HoldNotFound(hold_id=hold_id)
            if rec["status"] == "sold":
                return tuple(s["seat"] for s in rec["seats"])
            if rec["status"] != "selling":
                raise HoldExpired(hold_id=hold_id)
        try:
            result = await self._call("sell", departure_id, hold_id)
        except HoldNotFound:
            await self._db.seat_holds.update_one(
                {"_id": hold_id, "status": "selling"},
                {"$set": {"status": "released", "released_at": now,
                          "release_reason": "expired"}})
            raise HoldExpired(hold_id=hold_id) from None
        await self._mark_released(_split_ids(result[3]))
        await self._db.seat_holds.update_one(
            {"_id": hold_id}, {"$set": {"status": "sold", "sold_at": now}})
        return _seats(result[1])

    async def _intent_from_redis(self, departure_id: str, hold_id: str,
                                 now: dt.datetime) -> dict[str, Any] | None:
        """The hold's record is not in MongoDB (another process's journal had not written it,
        or it was lost): record the sell intent from the hold Redis still has."""
        raw = await self._redis.hget(holds_key(departure_id), hold_id)
        if raw is None:
            return None
        channel, expires_ms, frm, to, seats = raw.split("|")
        hold = Hold(hold_id, departure_id, _seats(seats), int(frm), int(to),
                    _from_ms(int(expires_ms)))
        record = {**_hold_record(hold, channel, "selling"), "selling_at": now}
        await self._db.seat_holds.update_one({"_id": hold_id}, {"$setOnInsert": record},
                                             upsert=True)
        return await self._db.seat_holds.find_one_and_update(
            {"_id": hold_id, "status": {"$in": ["held", "selling"]}},
            {"$set": {"status": "selling", "selling_at": now}})

    async def return_seats(self, departure_id: str, sale_id: str, seats: tuple[int, ...],
                        reason: str) -> tuple[int, ...]:
        """Return sold seats to sale (refund, void, change); returns the seats freed."""
        result = await self._call("unsell", departure_id, sale_id,
                                  ",".join(str(s) for s in seats))
        freed = _seats(result[1])
        rec = await self._db.seat_holds.find_one({"_id": sale_id})
        if rec is not None:
            for entry in rec["seats"]:
                if entry["seat"] in seats:
                    entry["active"] = False
                    entry["returned"] = reason
            left = any(e.get("active", True) for e in rec["seats"])
            await self._db.seat_holds.update_one(
                {"_id": sale_id}, {"$set": {"seats": rec["seats"],
                                            **({} if left else {"status": "returned"})}})
        return freed

    async def status_of(self, hold_id: str) -> tuple[str, tuple[int, ...]]:
        if hold_id in self._journal:
            await self.flush()
        rec = await self._db.seat_holds.find_one({"_id": hold_id})
        if rec is None:
            return "unknown", ()
        return rec["status"], tuple(s["seat"] for s in rec["seats"] if s.get("active", True))

    async def availability(self, departure_id: str) -> Availability:
        """Remaining seats and seat map, read from Redis (never a database scan)."""
        return _availability(departure_id, await self._call("snapshot", departure_id))

    async def availability_many(self, departure_ids: list[str]) -> dict[str, Availability]:
        """Many departures in one Redis round trip (departures not loaded yet load first)."""
        answers = await self._scripts.call_many("snapshot", departure_ids)
        out: dict[str, Availability] = {}
        for departure_id, answer in zip(departure_ids, answers, strict=True):
            if isinstance(answer, ScriptError) and answer.code == "NOT_LOADED":
                try:
                    out[departure_id] = await self.availability(departure_id)
                except DepartureNotFound:
                    continue
            elif not isinstance(answer, Exception):
                out[departure_id] = _availability(departure_id, answer)
        return out

    # --- ticket sources ---------------------------------------------------------------------
    async def configure(self, departure_id: str) -> None:
        """Apply the current departure status and ticket source to a loaded departure."""
        dep = await self._db.departures.find_one({"_id": departure_id})
        if dep is None:
            raise DepartureNotFound(departure_id=departure_id)
        if not await self._redis.exists(seats_key(departure_id)):
            return  # the next load reads the new settings
        source = await self.ticket_source(dep)
        await self._call("configure", departure_id,
                         "on_sale" if dep["status"] == "on_sale" else "stopped",
                         self._release_at(dep, source),
                         json.dumps(source.get("allotments") or {}),
                         json.dumps(source.get("caps") or {}),
                         json.dumps(source.get("closed_channels") or []))

    # --- expiry -------------------------------------------------------------------------------
    async def sweep(self, limit: int = 200) -> int:
        """Release due holds of every departure; settle stale sells. Returns holds released."""
        now_ms = _ms(dt.datetime.now(dt.UTC))
        due = await self._redis.zrangebyscore(EXPIRING, "-inf", now_ms, start=0, num=limit,
                                              withscores=True)
        released = 0
        for departure_id, seen in due:
            try:
                result = await self._scripts.call("expire", departure_id)
            except ScriptError:
                continue
            ids = _split_ids(result[1])
            if ids:
                self._changed(departure_id)
            released += len(ids)
            await self._mark_released(ids)
            await self._scripts.index_settle(departure_id, int(seen), int(result[2]))
        await self._settle_stale_selling()
        return released

    async def _settle_stale_selling(self) -> None:
        """A sell that died between its steps: Redis knows whether the sale happened."""
        cutoff = dt.datetime.now(dt.UTC) - SELLING_GRACE
        async for rec in self._db.seat_holds.find({"status": "selling",
                                                   "expires_at": {"$lt": cutoff}}).limit(100):
            try:
                await self.sell(rec["departure_id"], rec["_id"])
            except HoldExpired:
                log.warning("stale sell settled as released",
                            extra={"fields": {"hold_id": rec["_id"]}})

    async def _mark_released(self, ids: list[str]) -> None:
        for hold_id in ids:
            if hold_id in self._journal:
                self._journal[hold_id]["status"] = "released"
        if ids:
            await self._db.seat_holds.update_many(
                {"_id": {"$in": ids}, "status": "held"},
                {"$set": {"status": "released", "released_at": dt.datetime.now(dt.UTC),
                          "release_reason": "expired"}})


def _availability(departure_id: str, r: list[Any]) -> Availability:
    occupancy = _seats(r[5]) if r[5] else ()
    held = tuple(int(p.split(":")[0]) for p in r[6].split(",") if p)
    return Availability(departure_id=departure_id, seats=int(r[1]), segments=int(r[2]),
                        status=r[3], remaining=sum(1 for m in occupancy if m == 0),
                        occupancy=occupancy, held=held, version=int(r[4]))


def _hold_record(hold: Hold, channel: str, status: str) -> dict[str, Any]:
    return {"_id": hold.hold_id, "departure_id": hold.departure_id, "channel": channel,
            "from_seq": hold.from_seq, "to_seq": hold.to_seq,
            "seats": [{"seat": s, "active": True} for s in hold.seats], "status": status,
            "expires_at": hold.expires_at, "created_at": dt.datetime.now(dt.UTC)}


def new_hold_id() -> str:
    return "H" + uuid.uuid4().hex


def _split_ids(csv: Any) -> list[str]:
    return [s for s in str(csv or "").split(",") if s]


def _exchange_error(exc: ScriptError) -> Exception:
    kind = BY_REASON.get(exc.code)
    if kind is None:
        return exc
    return kind(detail=exc.detail) if exc.detail else kind()
