"""The travel calendar: public holidays with their adjusted working days (调休) from the
``chinese-calendar`` package, and the Spring Festival travel rush (春运).

``chinese-calendar`` knows the State Council's published arrangements, which come out a year
at a time; for a year it does not know yet, a day is *estimated*: weekends rest, the fixed-date
holidays (New Year's Day, Labour Day 1–5 May, National Day 1–7 October) and the Spring
Festival week from the lunar new year table below, with no adjusted working days. Every
:class:`DayInfo` says whether it is estimated, so a forecast that leans on one can say so.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache

import chinese_calendar

# 春节 (lunar new year's day), for the rush and for years the package does not cover yet
LUNAR_NEW_YEAR = {
    2020: dt.date(2020, 1, 25), 2021: dt.date(2021, 2, 12), 2022: dt.date(2022, 2, 1),
    2023: dt.date(2023, 1, 22), 2024: dt.date(2024, 2, 10), 2025: dt.date(2025, 1, 29),
    2026: dt.date(2026, 2, 17), 2027: dt.date(2027, 2, 6), 2028: dt.date(2028, 1, 26),
    2029: dt.date(2029, 2, 13), 2030: dt.date(2030, 2, 3),
}
RUSH_BEFORE, RUSH_AFTER = 15, 25  # 春运: 15 days before the new year to 25 days after

HOLIDAY_NAMES = {  # chinese-calendar's English names → the names passengers know
    "New Year's Day": "元旦", "Spring Festival": "春节", "Tomb-sweeping Day": "清明节",
    "Labour Day": "劳动节", "Dragon Boat Festival": "端午节", "Mid-autumn Festival": "中秋节",
    "National Day": "国庆节",
}


@dataclass(frozen=True)
class DayInfo:
    day: dt.date
    rest: bool  # a day off (weekend or holiday, not an adjusted working day)
    holiday: str | None  # the holiday's Chinese name on its days off
    adjusted_workday: bool  # a weekend day worked instead (调休上班)
    rush: bool  # inside 春运
    rush_day: int | None  # days from the lunar new year inside 春运 (−15 … 25)
    estimated: bool  # the year's arrangement is not published in chinese-calendar

    def as_dict(self) -> dict[str, object]:
        return {"date": self.day.isoformat(), "rest": self.rest, "holiday": self.holiday,
                "adjusted_workday": self.adjusted_workday, "rush": self.rush,
                "estimated": self.estimated}


def _lunar_new_year(year: int) -> dt.date | None:
    return LUNAR_NEW_YEAR.get(year)


def _rush_day(day: dt.date) -> int | None:
    for year in (day.year, day.year + 1):
        lny = _lunar_new_year(year)
        if lny is not None and -RUSH_BEFORE <= (day - lny).days <= RUSH_AFTER:
            return (day - lny).days
    return None


def _estimated_holiday(day: dt.date) -> str | None:
    lny = _lunar_new_year(day.year)
    if lny is not None and -1 <= (day - lny).days <= 6:
        return "春节"
    if (day.month, day.day) == (1, 1):
        return "元旦"
    if day.month == 5 and day.day <= 5:
        return "劳动节"
    if day.month == 10 and day.day <= 7:
        return "国庆节"
    return None


@lru_cache(maxsize=4096)
def day_info(day: dt.date) -> DayInfo:
    rush = _rush_day(day)
    try:
        off, name = chinese_calendar.get_holiday_detail(day)
        workday = chinese_calendar.is_workday(day)
    except NotImplementedError:
        name = _estimated_holiday(day)
        return DayInfo(day, name is not None or day.weekday() >= 5, name, False,
                       rush is not None, rush, True)
    holiday = HOLIDAY_NAMES.get(str(name), str(name)) if off and name else None
    return DayInfo(day, not workday, holiday, workday and day.weekday() >= 5,
                   rush is not None, rush, False)


def holiday_edges(day: dt.date) -> tuple[int, int]:
    """How many days to the next day off that is a holiday's first (0 on it, capped at 7),
    and since the last holiday's last day off (0 on it, capped at 7): travel peaks on the
    eve of a holiday and on its last day."""
    to_start = next((k for k in range(8) if _starts_holiday(day + dt.timedelta(days=k))), 7)
    since_end = next((k for k in range(8) if _ends_holiday(day - dt.timedelta(days=k))), 7)
    return to_start, since_end


def _starts_holiday(day: dt.date) -> bool:
    info = day_info(day)
    return info.holiday is not None and day_info(day - dt.timedelta(days=1)).holiday is None


def _ends_holiday(day: dt.date) -> bool:
    info = day_info(day)
    return info.holiday is not None and day_info(day + dt.timedelta(days=1)).holiday is None
