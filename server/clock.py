"""Time, one way: stored in UTC at BSON's millisecond precision, shown in Asia/Shanghai.

Service days (a departure's date, a statement's day) are Beijing calendar days, so "today"
turns at Beijing midnight whatever the machine's zone is.
"""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

LOCAL_TZ = ZoneInfo("Asia/Shanghai")


def now_ms() -> dt.datetime:
    """Now, at the millisecond precision BSON stores (so answers match what is kept)."""
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def local_today(now: dt.datetime | None = None) -> dt.date:
    """Today in Asia/Shanghai (service dates are local dates)."""
    return (now or dt.datetime.now(dt.UTC)).astimezone(LOCAL_TZ).date()


def day_start(day: dt.date) -> dt.datetime:
    """The UTC instant a local (Beijing) day begins."""
    return dt.datetime(day.year, day.month, day.day, tzinfo=LOCAL_TZ).astimezone(dt.UTC)


def parse_day(text: str) -> dt.date | None:
    """A day written YYYY-MM-DD only (not 20261124 nor 2026-W48-2), or None."""
    try:
        day = dt.date.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return day if day.isoformat() == text else None


_RFC3339 = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
                      r"([Zz]|[+-][0-9]{2}:[0-9]{2})$")


def parse_instant(text: str) -> dt.datetime | None:
    """An RFC 3339 time with its offset (``t``/``z`` in either case, any fraction), or
    None for anything else — a time without an offset too."""
    if not _RFC3339.match(text):
        return None
    text = text.replace("t", "T").replace("z", "Z")
    if text[17:19] == "60":  # a leap second (RFC 3339 has them, Python does not)
        text = text[:17] + "59.999999" + re.sub(r"^\.[0-9]+", "", text[19:])
    head, _, rest = text.partition(".")
    if rest:  # Python takes at most six digits of a fraction
        digits = re.match(r"[0-9]+", rest)
        assert digits is not None
        head += "." + digits.group()[:6].ljust(6, "0") + rest[digits.end():]
    try:
        at = dt.datetime.fromisoformat(head.replace(" ", "T"))
    except ValueError:
        return None
    return at if at.tzinfo is not None else None
