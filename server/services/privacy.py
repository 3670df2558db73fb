"""Personal data past its time (PIPL): trip records anonymized, dormant accounts closed.

The road real-name rules keep who travelled (name, document, contact) for at least a year;
PIPL asks that it go once it is no longer needed. So a configurable time after a departure's
service date (``KEYUN_RETENTION_DAYS``, at least 366, default a year and thirty days) the
orders and tickets of that day lose their names, document numbers, contact phones and blind
indexes (``OrderBook.anonymize``), keeping the money, seats, channels and times that
settlement and the statistics read. The job walks service dates forward behind a cursor
(``retention_cursors``): a day is done once, a crash mid-day repeats it harmlessly.

An account nobody has signed in to (nor refreshed a token of, nor ordered with) for the same
time is closed as its owner could close it (``MemberService.close_dormant``): its phone,
openid and frequent passengers are deleted. Every run that changed something is audited.

Gate scans hold no personal data to remove: the ID number shown at a gate is compared with
the ticket's and never stored (``GateService.scan`` keeps the outcome only).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from server.clock import day_start, local_today
from server.services.audit import AuditService
from server.services.members import MemberService
from server.storage.cursors import Cursors
from server.storage.orders import OrderBook

log = logging.getLogger(__name__)

RETENTION_JOB = {"kind": "system", "id": "personal-data-retention"}
BATCH = 1000  # departures anonymized per update


class Retention:
    def __init__(self, db: AsyncDatabase[Any], book: OrderBook, members: MemberService,
                 audit: AuditService, days: int) -> None:
        self._db = db
        self._book = book
        self._members = members
        self._audit = audit
        self._cursors = Cursors(db.retention_cursors)
        self.days = days

    async def run(self, now: dt.datetime | None = None) -> dict[str, Any]:
        """The job: trips past retention anonymized, dormant accounts closed; what was done
        (audited when anything was)."""
        now = now or dt.datetime.now(dt.UTC)
        done = await self.anonymize_trips(now)
        done["members_closed"] = await self._members.close_dormant(
            now - dt.timedelta(days=self.days), RETENTION_JOB, now=now)
        if done["orders"] or done["tickets"] or done["members_closed"]:
            await self._audit.record(RETENTION_JOB, "privacy.retention", details=done)
            log.info("personal data past retention removed", extra={"fields": done})
        return done

    async def anonymize_trips(self, now: dt.datetime) -> dict[str, Any]:
        """Anonymize the orders and tickets of every service date whose retention has
        ended by ``now``, the cursor moved past each day done."""
        through = local_today(now) - dt.timedelta(days=self.days)
        done = {"through": through.isoformat(), "days": 0, "orders": 0, "tickets": 0}
        day = await self._first_day()
        while day is not None and day <= through:
            orders, tickets = await self._anonymize_day(day, now)
            done["days"] += 1
            done["orders"] += orders
            done["tickets"] += tickets
            await self._cursors.advance("travel", day_start(day))
            day += dt.timedelta(days=1)
        return done

    async def _first_day(self) -> dt.date | None:
        """The service date after the last one done, or the earliest there is."""
        cursor = await self._cursors.get("travel")
        if cursor is not None:
            return local_today(cursor) + dt.timedelta(days=1)
        first = await self._db.departures.find_one({}, {"service_date": 1},
                                                   sort=[("service_date", 1)])
        return dt.date.fromisoformat(first["service_date"]) if first else None

    async def _anonymize_day(self, day: dt.date, now: dt.datetime) -> tuple[int, int]:
        ids = sorted(await self._db.departures.distinct("_id",
                                                       {"service_date": day.isoformat()}))
        orders = tickets = 0
        for start in range(0, len(ids), BATCH):
            o, t = await self._book.anonymize(ids[start:start + BATCH], now)
            orders, tickets = orders + o, tickets + t
        return orders, tickets
