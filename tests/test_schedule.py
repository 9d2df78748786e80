"""When rules run: every schedule form, weekdays by name, each wall-clock time once across DST."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from retentiond.policy.schedule import WallClockTrigger, parse_schedule

BERLIN = ZoneInfo("Europe/Berlin")


def trigger(text: str, zone: ZoneInfo = BERLIN) -> WallClockTrigger:
    return parse_schedule(text).trigger(zone)


def fires(text: str, start: str, count: int) -> list[str]:
    """The next `count` fire times after `start` (Berlin wall time), as the scheduler asks."""
    rule = trigger(text)
    now = datetime.fromisoformat(start).replace(tzinfo=BERLIN)
    previous = None
    times = []
    for _ in range(count):
        fire = rule.get_next_fire_time(previous, now)
        assert fire is not None
        times.append(fire.isoformat())
        previous = now = fire
    return times


# --- DST in Europe/Berlin: 2026-03-29 02:00 → 03:00, 2026-10-25 03:00 → 02:00 ---------------


def test_a_time_skipped_by_spring_forward_runs_once_at_the_end_of_the_gap() -> None:
    assert fires("daily 02:30", "2026-03-28 12:00", 3) == [
        "2026-03-29T03:00:00+02:00",  # 02:30 never shows on the clock: first moment after it
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_a_time_in_the_repeated_autumn_hour_runs_once() -> None:
    assert fires("daily 02:30", "2026-10-24 12:00", 3) == [
        "2026-10-25T02:30:00+02:00",  # the first pass, still summer time; not again at +01:00
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]


def test_hourly_skips_the_missing_hour_in_spring() -> None:
    assert fires("hourly", "2026-03-29 00:30", 4) == [
        "2026-03-29T01:00:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:00 does not exist; 03:00 is its first valid moment
        "2026-03-29T04:00:00+02:00",
        "2026-03-29T05:00:00+02:00",
    ]


def test_hourly_runs_the_repeated_hour_once_in_autumn() -> None:
    assert fires("hourly", "2026-10-25 00:30", 4) == [
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T03:00:00+01:00",  # not 02:00+01:00 a second time
        "2026-10-25T04:00:00+01:00",
    ]


def test_every_minute_never_repeats_a_wall_clock_minute() -> None:
    spring = fires("* * * * *", "2026-03-29 01:58", 4)
    assert spring == [
        "2026-03-29T01:58:00+01:00",
        "2026-03-29T01:59:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T03:01:00+02:00",
    ]
    autumn = fires("* * * * *", "2026-10-25 02:58", 3)
    assert autumn == [
        "2026-10-25T02:58:00+02:00",
        "2026-10-25T02:59:00+02:00",
        "2026-10-25T03:00:00+01:00",  # the second pass of 02:00-02:59 is skipped
    ]


def test_two_skipped_times_in_the_gap_make_one_run() -> None:
    assert fires("0,30 2 * * *", "2026-03-29 00:00", 2) == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:00:00+02:00",
    ]


def test_weekly_on_the_dst_sundays() -> None:
    assert fires("weekly sun 02:30", "2026-03-28 12:00", 2) == [
        "2026-03-29T03:00:00+02:00",
        "2026-04-05T02:30:00+02:00",
    ]
    assert fires("weekly sun 02:30", "2026-10-24 12:00", 2) == [
        "2026-10-25T02:30:00+02:00",
        "2026-11-01T02:30:00+01:00",
    ]


def test_the_scheduler_asking_again_mid_hour_gets_no_second_run() -> None:
    """The scheduler asks with the last fire time and the current time; during the repeated hour
    (02:45 winter time) the next run of 02:30 is tomorrow."""
    rule = trigger("daily 02:30")
    first = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN)
    now = datetime(2026, 10, 25, 2, 45, tzinfo=BERLIN, fold=1)
    assert rule.get_next_fire_time(first, now) == datetime(2026, 10, 26, 2, 30, tzinfo=BERLIN)


# --- every schedule form -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hourly", ["2026-11-26T13:00:00+01:00", "2026-11-26T14:00:00+01:00"]),
        ("daily 03:15", ["2026-11-27T03:15:00+01:00", "2026-11-28T03:15:00+01:00"]),
        ("daily 3:05", ["2026-11-27T03:05:00+01:00", "2026-11-28T03:05:00+01:00"]),
        ("weekly sun 04:00", ["2026-11-29T04:00:00+01:00", "2026-12-06T04:00:00+01:00"]),
        ("Weekly  MON 00:00", ["2026-11-30T00:00:00+01:00", "2026-12-07T00:00:00+01:00"]),
        ("15 3 * * mon-fri", ["2026-11-27T03:15:00+01:00", "2026-11-30T03:15:00+01:00"]),
        ("0 4 * * sat,sun", ["2026-11-28T04:00:00+01:00", "2026-11-29T04:00:00+01:00"]),
        ("*/20 * * * *", ["2026-11-26T12:40:00+01:00", "2026-11-26T13:00:00+01:00"]),
        ("0 1-2 1 * *", ["2026-12-01T01:00:00+01:00", "2026-12-01T02:00:00+01:00"]),
        ("30 2 1 1,7 *", ["2027-01-01T02:30:00+01:00", "2027-07-01T02:30:00+02:00"]),
    ],
)
def test_schedule_forms(text: str, expected: list[str]) -> None:
    # Thursday 2026-11-26 12:34 in Berlin
    assert fires(text, "2026-11-26 12:34", 2) == expected


def test_weekday_names_mean_what_they_say() -> None:
    """from_crontab reads 0 as Monday: names cannot be misread, numbers are refused."""
    sundays = fires("30 2 * * sun", "2026-11-26 12:00", 3)
    assert [datetime.fromisoformat(t).strftime("%a") for t in sundays] == ["Sun"] * 3
    with pytest.raises(ValueError, match="names"):
        parse_schedule("30 2 * * 0")


def test_day_of_month_and_weekday_are_alternatives_as_in_cron() -> None:
    assert fires("0 3 1 * mon", "2026-11-26 12:00", 3) == [
        "2026-11-30T03:00:00+01:00",  # a Monday
        "2026-12-01T03:00:00+01:00",  # the 1st, a Tuesday
        "2026-12-07T03:00:00+01:00",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("61 3 * * *", "higher than the maximum"),
        ("0 24 * * *", "higher than the maximum"),
        ("0 3 31 2 *", "never happens"),
        ("*/0 * * * *", "Increment"),
        ("0 3 * * sat-mon", "range"),
        ("weekly son 03:00", "not a weekday"),
        ("weekly sonntag 03:00", "not a schedule"),
        ("daily 3pm", "not a schedule"),
        ("0 3 * *", "not a schedule"),
    ],
)
def test_impossible_schedules_are_config_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_schedule(text)


def test_the_zone_is_the_configured_one_not_the_hosts() -> None:
    utc = trigger("daily 03:15", ZoneInfo("UTC"))
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    assert utc.get_next_fire_time(None, now) == datetime(2026, 11, 27, 3, 15, tzinfo=UTC)
    berlin = trigger("daily 03:15")
    assert berlin.get_next_fire_time(None, now) == datetime(2026, 11, 27, 2, 15, tzinfo=UTC)


# --- catch-up: was a scheduled time missed since the last success? ------------------------------


def test_a_rule_is_overdue_once_a_scheduled_time_passed_since_its_last_success() -> None:
    daily = trigger("daily 03:15")
    finished = datetime(2026, 11, 26, 3, 15, 40, tzinfo=BERLIN)  # the 03:15 run ended at 03:15:40
    assert not daily.missed_since(finished, datetime(2026, 11, 26, 23, 0, tzinfo=BERLIN))
    assert not daily.missed_since(finished, datetime(2026, 11, 27, 3, 14, tzinfo=BERLIN))
    assert daily.missed_since(finished, datetime(2026, 11, 27, 3, 15, tzinfo=BERLIN))
    late = datetime(2026, 11, 26, 5, 0, tzinfo=BERLIN)  # a run that ended late still counts
    assert daily.missed_since(late, datetime(2026, 11, 27, 4, 0, tzinfo=BERLIN))


def test_weekdays_only_is_not_overdue_over_the_weekend() -> None:
    weekdays = trigger("15 3 * * mon-fri")
    friday = datetime(2026, 11, 27, 3, 16, tzinfo=BERLIN)
    assert not weekdays.missed_since(friday, datetime(2026, 11, 29, 22, 0, tzinfo=BERLIN))
    assert weekdays.missed_since(friday, datetime(2026, 11, 30, 3, 16, tzinfo=BERLIN))
