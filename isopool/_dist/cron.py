"""Cron expressions: the standard five fields, parsed and stepped here, pure.

Written in-house (about a hundred lines) rather than taken from ``croniter``: the
queue needs two things only, parse and "next tick after t", and the dependency would
sit in every worker for them. Supported, as in Vixie cron / cronie::

    minute hour day-of-month month day-of-week
    *   5   1-5   */15   10-50/10   1,15,30   jan-dec   sun-sat (0 and 7 are Sunday)

and the shorthands @yearly (@annually), @monthly, @weekly, @daily (@midnight),
@hourly. When both day fields are restricted (neither starts with ``*``), a day
matches if *either* does (cron's rule). A ``CRON_TZ=Area/City`` (or ``TZ=``) prefix
sets the zone the fields are read in (default UTC). Local times that a DST change
skips do not fire; a repeated hour fires once, on its first pass.
"""

from __future__ import annotations

import dataclasses
import datetime
import zoneinfo
from typing import Final

__all__ = ["Cron"]

_MONTHS: Final = (
    "jan",
    "feb",
    "mar",
    "apr",
    "may",
    "jun",
    "jul",
    "aug",
    "sep",
    "oct",
    "nov",
    "dec",
)
_WEEKDAYS: Final = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_NAMES: Final = {
    3: {m: i + 1 for i, m in enumerate(_MONTHS)},
    4: {d: i for i, d in enumerate(_WEEKDAYS)},
}
_BOUNDS: Final = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_FIELDS: Final = ("minute", "hour", "day of month", "month", "day of week")
_SHORTHANDS: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_SEARCH_DAYS: Final = 366 * 9  # "0 0 29 2 *" may wait 8 years (2096 -> 2104)


def _value(text: str, index: int) -> int:
    names = _NAMES.get(index, {})
    if text.lower() in names:
        return names[text.lower()]
    if not text.isdigit():
        raise ValueError(f"cron {_FIELDS[index]}: {text!r} is not a number")
    return int(text)


def _field(text: str, index: int) -> frozenset[int]:
    low, high = _BOUNDS[index]
    out: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text.isdigit() else 0
        if step_text and step < 1:
            raise ValueError(f"cron {_FIELDS[index]}: bad step in {part!r}")
        if body == "*":
            first, last = low, high
        elif "-" in body:
            a, _, b = body.partition("-")
            first, last = _value(a, index), _value(b, index)
        else:
            first = last = _value(body, index)
            if step:
                last = high
        if not (low <= first <= high and low <= last <= high) or first > last:
            raise ValueError(f"cron {_FIELDS[index]}: {part!r} is outside {low}-{high}")
        out.update(range(first, last + 1, step or 1))
    if index == 4 and 7 in out:
        out = (out - {7}) | {0}
    return frozenset(out)


@dataclasses.dataclass(frozen=True, slots=True)
class Cron:
    """A parsed cron expression; ``next_after`` gives its next tick.

    Attributes:
        text: The expression as given.
        zone: The IANA time zone its fields are read in.
    """

    text: str
    zone: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 is Sunday
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, text: str, zone: str | None = None) -> Cron:
        """Parse ``text``; raise ValueError naming the field that is wrong."""
        if not isinstance(text, str):
            raise TypeError(f"a cron expression must be a string, got {text!r}")
        spec = text.strip()
        for prefix in ("CRON_TZ=", "TZ="):
            if spec.startswith(prefix):
                zone_text, _, spec = spec[len(prefix) :].partition(" ")
                zone = zone or zone_text
        spec = _SHORTHANDS.get(spec.strip().lower(), spec)
        fields = spec.split()
        if len(fields) != 5:
            raise ValueError(f"cron expression {text!r} needs five fields, got {len(fields)}")
        zone = zone or "UTC"
        try:
            zoneinfo.ZoneInfo(zone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"cron time zone {zone!r} is unknown") from exc
        minutes, hours, days, months, weekdays = (_field(f, i) for i, f in enumerate(fields))
        return cls(
            text=text.strip(),
            zone=zone,
            minutes=minutes,
            hours=hours,
            days=days,
            months=months,
            weekdays=weekdays,
            any_day=fields[2].startswith("*"),
            any_weekday=fields[4].startswith("*"),
        )

    def _day_matches(self, day: datetime.date) -> bool:
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def next_after(self, when: float) -> float:
        """The first tick strictly after Unix time ``when``, as a Unix time."""
        tz = zoneinfo.ZoneInfo(self.zone)
        local = datetime.datetime.fromtimestamp(when, tz).replace(tzinfo=None)
        day = local.date()
        start = local.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
        for _ in range(_SEARCH_DAYS):
            if day.month in self.months and self._day_matches(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        naive = datetime.datetime.combine(day, datetime.time(hour, minute))
                        if naive < start:
                            continue
                        aware = naive.replace(tzinfo=tz)
                        back = aware.astimezone(datetime.UTC).astimezone(tz)
                        if back.replace(tzinfo=None) != naive or aware.timestamp() <= when:
                            continue  # skipped by a DST change, or the hour's first pass
                        return aware.timestamp()
            day += datetime.timedelta(days=1)
        raise ValueError(f"cron expression {self.text!r} never fires")
