"""Time, one way: stored in UTC at BSON's millisecond precision, shown in Asia/Shanghai.

Service days (a departure's date, a statement's day) are Beijing calendar days, so "today"
turns at Beijing midnight whatever the machine's zone is.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

LOCAL_TZ = ZoneInfo("Asia/Shanghai")


def now_ms() -> dt.datetime:
    """Now, at the millisecond precision BSON stores (so answers match what is kept)."""
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def local_today(now: dt.datetime | None = None) -> dt.date:
    """Today in Asia/Shanghai (service dates are local dates)."""
    return (now or dt.datetime.now(dt.UTC)).astimezone(LOCAL_TZ).date()


def local_iso(at: dt.datetime) -> str:
    """A stored time as the API shows it: ISO 8601 in Beijing time."""
    return at.astimezone(LOCAL_TZ).isoformat()
