"""Cutoff arithmetic: calendar months, month ends, DST changes; the bound for naive timestamps."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from retentiond.policy.durations import Duration, parse_duration
from retentiond.policy.rules import cutoff, latest_instant, naive_bound

BERLIN = ZoneInfo("Europe/Berlin")
# Zones whose DST changes are not at midnight, so a local calendar date is never skipped.
ZONES = [
    ZoneInfo(z)
    for z in (
        "Europe/Berlin",
        "America/New_York",
        "UTC",
        "Asia/Kolkata",
        "Australia/Lord_Howe",
        "Europe/London",
    )
]

instants = st.datetimes(
    min_value=datetime(2001, 1, 1), max_value=datetime(2090, 12, 31), timezones=st.just(UTC)
)


def test_three_months_before_may_31_is_february_28() -> None:
    now = datetime(2026, 5, 31, 12, 0, tzinfo=BERLIN)
    assert cutoff(now, parse_duration("3 months"), BERLIN) == datetime(
        2026, 2, 28, 12, 0, tzinfo=BERLIN
    )


def test_leap_year_february_29_is_used() -> None:
    now = datetime(2024, 5, 31, 12, 0, tzinfo=BERLIN)
    assert cutoff(now, parse_duration("P3M"), BERLIN) == datetime(2024, 2, 29, 12, 0, tzinfo=BERLIN)


def test_ninety_days_is_not_three_months() -> None:
    now = datetime(2026, 5, 31, 12, 0, tzinfo=BERLIN)
    assert cutoff(now, parse_duration("90d"), BERLIN) == datetime(2026, 3, 2, 12, 0, tzinfo=BERLIN)


def test_cutoff_in_a_skipped_hour_takes_the_earlier_instant() -> None:
    # 2027-03-28 02:30 does not exist in Berlin (clocks jump from 02:00 to 03:00)
    now = datetime(2027, 6, 28, 2, 30, tzinfo=BERLIN)
    assert cutoff(now, parse_duration("3 months"), BERLIN) == datetime(
        2027, 3, 28, 0, 30, tzinfo=UTC
    )


def test_cutoff_in_a_repeated_hour_takes_the_earlier_instant() -> None:
    # 2026-10-25 02:30 happens twice in Berlin; the first pass is 00:30 UTC
    now = datetime(2027, 1, 25, 2, 30, tzinfo=BERLIN)
    assert cutoff(now, parse_duration("3 months"), BERLIN) == datetime(
        2026, 10, 25, 0, 30, tzinfo=UTC
    )


def test_naive_bound_in_the_first_pass_of_a_repeated_hour_moves_back() -> None:
    first_pass = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST
    assert naive_bound(first_pass, BERLIN) == datetime(2026, 10, 25, 1, 30)
    second_pass = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # 02:30 CET
    assert naive_bound(second_pass, BERLIN) == datetime(2026, 10, 25, 2, 30)


@settings(max_examples=400)
@given(now=instants, months=st.integers(1, 60), zone=st.sampled_from(ZONES))
def test_month_cutoffs_land_on_the_same_wall_time_months_earlier(
    now: datetime, months: int, zone: ZoneInfo
) -> None:
    result = cutoff(now, Duration(months=months, text=f"{months}m"), zone)
    local_now = now.astimezone(zone)
    local_cut = result.astimezone(zone)
    year, month = divmod(local_now.year * 12 + local_now.month - 1 - months, 12)
    day = min(local_now.day, calendar.monthrange(year, month + 1)[1])
    assert (local_cut.year, local_cut.month, local_cut.day) == (year, month + 1, day)
    assert result < now - timedelta(days=28 * months) + timedelta(hours=3)


@settings(max_examples=400)
@given(now=instants, days=st.integers(1, 2000), zone=st.sampled_from(ZONES))
def test_cutoff_is_never_later_than_keep_allows(now: datetime, days: int, zone: ZoneInfo) -> None:
    result = cutoff(now, Duration(days=days, text=f"{days}d"), zone)
    # wall-clock days: a DST change inside the period shifts the instant by at most the change
    assert result <= now - timedelta(days=days) + timedelta(hours=1)
    assert result >= now - timedelta(days=days) - timedelta(hours=1, minutes=1)


# Instants near DST changes, where naive timestamps are ambiguous.
near_dst = st.builds(
    lambda base, minutes: base + timedelta(minutes=minutes),
    st.sampled_from(
        [
            datetime(2026, 10, 25, 1, 0, tzinfo=UTC),  # Berlin fall back
            datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # Berlin spring forward
            datetime(2026, 11, 1, 6, 0, tzinfo=UTC),  # New York fall back
        ]
    ),
    st.integers(-180, 180),
)


@settings(max_examples=1000)
@given(instant=near_dst, shift=st.integers(-150, 30), zone=st.sampled_from(ZONES[:2]))
def test_a_naive_value_below_the_bound_is_always_older_than_the_cutoff(
    instant: datetime, shift: int, zone: ZoneInfo
) -> None:
    """Safety rule 1 for naive columns: nothing newer than the cutoff can match `< bound`."""
    wall = instant.astimezone(zone).replace(tzinfo=None) + timedelta(minutes=shift)
    if wall < naive_bound(instant, zone):
        assert latest_instant(wall, zone) < instant or _skipped(wall, zone)


def _skipped(wall: datetime, zone: ZoneInfo) -> bool:
    """Wall times a spring-forward change skips: no PBX can have written them."""
    aware = wall.replace(tzinfo=zone)
    return aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != wall


def test_a_skipped_spring_wall_time_that_could_be_newer_stays_above_the_bound() -> None:
    """A PBX with a wrong clock writes 02:30 on the morning Berlin skips 02:00-02:59. Read with
    the winter offset it is 01:30 UTC: newer than a cutoff of 01:15 UTC (03:15 CEST), so the
    bound moves back to 02:15, below which every value is older in every reading."""
    from retentiond.policy.rules import latest_instant, naive_bound

    cutoff = datetime(2024, 3, 31, 1, 15, tzinfo=UTC)
    bound = naive_bound(cutoff, BERLIN)
    assert bound == datetime(2024, 3, 31, 2, 15)
    assert latest_instant(datetime(2024, 3, 31, 2, 14), BERLIN) < cutoff
    assert latest_instant(datetime(2024, 3, 31, 2, 15), BERLIN) >= cutoff
    # away from the change the bound is the cutoff's wall time
    assert naive_bound(datetime(2024, 6, 1, 3, 15, tzinfo=UTC), BERLIN) == datetime(
        2024, 6, 1, 5, 15
    )
