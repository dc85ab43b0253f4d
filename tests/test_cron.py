"""The five-field cron parser and its next tick (isopool._dist.cron), pure: no Redis."""

from __future__ import annotations

import datetime

import pytest

from isopool._dist.cron import Cron

UTC = datetime.UTC


def ts(*args: int, tz: datetime.tzinfo = UTC) -> float:
    return datetime.datetime(*args, tzinfo=tz).timestamp()


def at(value: float, zone: str = "UTC") -> datetime.datetime:
    import zoneinfo

    return datetime.datetime.fromtimestamp(value, zoneinfo.ZoneInfo(zone))


def test_cron_every_five_minutes_next_is_next_multiple_strictly_after():
    """*/5 steps to the next multiple of five minutes, never the instant given."""
    cron = Cron.parse("*/5 * * * *")
    assert cron.next_after(ts(2026, 12, 1, 10, 2)) == ts(2026, 12, 1, 10, 5)
    assert cron.next_after(ts(2026, 12, 1, 10, 5)) == ts(2026, 12, 1, 10, 10)
    assert cron.next_after(ts(2026, 12, 31, 23, 59, 30)) == ts(2027, 1, 1, 0, 0)


def test_cron_ranges_lists_steps_and_names_parse():
    """Ranges, lists, stepped ranges and month/day names give the expected sets."""
    cron = Cron.parse("10-50/20 1,13 * jan-mar mon-fri")
    assert cron.minutes == {10, 30, 50}
    assert cron.hours == {1, 13}
    assert cron.months == {1, 2, 3}
    assert cron.weekdays == {1, 2, 3, 4, 5}
    assert Cron.parse("0 0 * * 7").weekdays == {0}  # 7 is Sunday too
    assert Cron.parse("5/15 * * * *").minutes == {5, 20, 35, 50}


def test_cron_weekday_field_picks_next_monday():
    """0 9 * * mon: the next Monday at 09:00 (2026-12-01 is a Tuesday)."""
    cron = Cron.parse("0 9 * * mon")
    assert cron.next_after(ts(2026, 12, 1, 10, 0)) == ts(2026, 12, 7, 9, 0)


def test_cron_both_day_fields_restricted_match_either():
    """Day of month 15 and Friday: whichever comes first (cron's OR rule)."""
    cron = Cron.parse("0 0 15 * fri")
    assert cron.next_after(ts(2026, 12, 1)) == ts(2026, 12, 4)  # a Friday
    assert cron.next_after(ts(2026, 12, 12)) == ts(2026, 12, 15)  # the 15th, a Tuesday


def test_cron_february_29_waits_for_a_leap_year():
    """0 0 29 2 * from December 2026 fires on 2028-02-29."""
    assert Cron.parse("0 0 29 2 *").next_after(ts(2026, 12, 1)) == ts(2028, 2, 29)


def test_cron_shorthands_expand():
    """@hourly, @daily and friends are the usual five fields."""
    assert Cron.parse("@hourly").next_after(ts(2026, 12, 1, 10, 30)) == ts(2026, 12, 1, 11, 0)
    assert Cron.parse("@daily").next_after(ts(2026, 12, 1, 10, 30)) == ts(2026, 12, 2)
    assert Cron.parse("@monthly").next_after(ts(2026, 12, 1, 10, 30)) == ts(2027, 1, 1)


def test_cron_time_zone_prefix_reads_fields_in_that_zone():
    """CRON_TZ=Europe/Paris 0 9 * * *: 09:00 in Paris is 08:00 UTC in winter."""
    cron = Cron.parse("CRON_TZ=Europe/Paris 0 9 * * *")
    assert cron.zone == "Europe/Paris"
    assert at(cron.next_after(ts(2026, 12, 1, 10)), "UTC").hour == 8
    assert Cron.parse("0 9 * * *", "America/New_York").zone == "America/New_York"


def test_cron_dst_gap_skips_the_missing_hour_repeated_hour_fires_once():
    """Paris skips 02:30 on 2026-03-29 (no tick that day) and repeats it on 2026-10-25 (one)."""
    cron = Cron.parse("30 2 * * *", "Europe/Paris")
    spring = cron.next_after(ts(2026, 3, 28, 12))
    assert at(spring, "Europe/Paris").date() == datetime.date(2026, 3, 30)
    autumn = cron.next_after(ts(2026, 10, 24, 12))
    assert at(autumn, "Europe/Paris").date() == datetime.date(2026, 10, 25)
    assert at(cron.next_after(autumn), "Europe/Paris").date() == datetime.date(2026, 10, 26)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("* * * *", "five fields"),
        ("60 * * * *", "minute"),
        ("* 24 * * *", "hour"),
        ("* * 0 * *", "day of month"),
        ("* * * 13 *", "month"),
        ("* * * * 8", "day of week"),
        ("*/0 * * * *", "step"),
        ("x * * * *", "not a number"),
        ("5-1 * * * *", "outside"),
        ("CRON_TZ=Mars/Olympus * * * * *", "time zone"),
    ],
)
def test_cron_bad_expression_raises_value_error_naming_the_field(text, match):
    """A bad expression is refused with the field (or zone) that is wrong."""
    with pytest.raises(ValueError, match=match):
        Cron.parse(text)
