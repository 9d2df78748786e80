"""When a rule runs: `hourly`, `daily HH:MM`, `weekly mon HH:MM`, or cron with weekday names.

`Schedule.trigger(zone)` gives the APScheduler trigger the daemon uses: wall-clock times in the
configured zone, each wall-clock time at most once a day even across DST changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SCHEDULE_HINT = (
    "write 'hourly', 'daily 03:15', 'weekly sun 03:15', or a cron expression such as "
    "'15 3 * * mon-fri' (weekdays by name)"
)

_HHMM = r"([01]?\d|2[0-3]):([0-5]\d)"
_DAILY = re.compile(rf"^daily\s+{_HHMM}$")
_WEEKLY = re.compile(rf"^weekly\s+([a-z]{{3}})\s+{_HHMM}$")
_CRON_FIELD = re.compile(r"^[\d*/,\-]+$")
_CRON_DOW = re.compile(r"^(\*|[a-z]{3}(-[a-z]{3})?(,[a-z]{3}(-[a-z]{3})?)*)$")


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule; `cron` holds the five fields (minute hour day month weekday)."""

    text: str
    cron: tuple[str, str, str, str, str]

    def trigger(self, zone: tzinfo) -> WallClockTrigger:
        return WallClockTrigger(self, zone)


def parse_schedule(text: str) -> Schedule:
    """Parse a schedule; raises ValueError with a hint. Numeric weekdays are refused on purpose:
    cron and APScheduler 3 disagree on what 0 means, and a wrong weekday is a silent mistake."""
    schedule = _parse(text)
    try:
        trigger = schedule.trigger(UTC)
    except ValueError as error:  # out-of-range values, ranges backwards, a step of 0
        raise ValueError(f"{text!r}: {error}") from None
    if trigger.get_next_fire_time(None, datetime.now(UTC)) is None:
        raise ValueError(f"{text!r} never happens (a day that no month has?)")
    return schedule


def _parse(text: str) -> Schedule:
    raw = " ".join(text.strip().lower().split())
    if raw == "hourly":
        return Schedule(text, ("0", "*", "*", "*", "*"))
    if daily := _DAILY.match(raw):
        return Schedule(text, (str(int(daily.group(2))), str(int(daily.group(1))), "*", "*", "*"))
    if weekly := _WEEKLY.match(raw):
        day = weekly.group(1)
        if day not in WEEKDAYS:
            raise ValueError(f"{day!r} is not a weekday; use one of {', '.join(WEEKDAYS)}")
        at_hour, at_minute = int(weekly.group(2)), int(weekly.group(3))
        return Schedule(text, (str(at_minute), str(at_hour), "*", "*", day))
    fields = raw.split(" ")
    if len(fields) == 5:
        minute, hour, dom, month, dow = fields
        if not all(_CRON_FIELD.match(f) for f in (minute, hour, dom, month)):
            raise ValueError(f"{text!r}: minute, hour, day and month must be numbers, ranges or *")
        if not _CRON_DOW.match(dow) or any(
            part not in WEEKDAYS for part in re.split(r"[,\-]", dow) if part != "*"
        ):
            raise ValueError(
                f"{text!r}: the weekday field takes names such as mon-fri, not numbers"
            )
        return Schedule(text, (minute, hour, dom, month, dow))
    raise ValueError(f"{text!r} is not a schedule: {SCHEDULE_HINT}")


class WallClockTrigger(BaseTrigger):  # type: ignore[misc]  # APScheduler 3 has no type hints
    """The schedule's times on the wall clock of `zone`, each at most once, DST included.

    APScheduler's CronTrigger follows the wall clock, but on the day summer time ends it fires a
    time in the repeated hour twice, and on the day it starts it returns a time that does not
    exist. Here a time in the repeated hour fires on its first pass only (still summer time), and
    a time skipped by the clock change fires once, at the first moment after the gap (02:30 on
    the spring-forward day in Europe/Berlin fires at 03:00 summer time).

    As in cron, a day of month and a weekday that are both given are alternatives: `0 3 1 * mon`
    runs on the 1st and on every Monday.
    """

    def __init__(self, schedule: Schedule, zone: tzinfo) -> None:
        minute, hour, day, month, weekday = schedule.cron
        common: dict[str, Any] = {"minute": minute, "hour": hour, "month": month, "timezone": zone}
        if day != "*" and weekday != "*":
            self._crons = [
                CronTrigger(day=day, **common),
                CronTrigger(day_of_week=weekday, **common),
            ]
        else:
            self._crons = [CronTrigger(day=day, day_of_week=weekday, **common)]
        self.schedule = schedule
        self.zone = zone

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        previous, start = previous_fire_time, now
        moment = None
        for _ in range(_MAX_SKIPS):
            candidates = [
                fire
                for fire in (cron.get_next_fire_time(previous, start) for cron in self._crons)
                if fire is not None
            ]
            if not candidates:
                return None
            # Aware datetimes of one zone compare by wall clock, ignoring fold: compare in UTC.
            raw = min(candidates, key=_utc)
            moment = _first_existing(raw)
            repeated = _in_second_pass(raw)
            already = previous_fire_time is not None and _utc(moment) <= _utc(previous_fire_time)
            if not repeated and not already:
                return moment
            previous = start = raw
        return moment  # unreachable for real zones: a repeated hour has at most 60 minutes

    def missed_since(self, moment: datetime, now: datetime) -> bool:
        """Whether a scheduled time came between `moment` (the last success) and `now`."""
        due = self.get_next_fire_time(None, moment)
        return due is not None and _utc(due) <= _utc(now)

    def __str__(self) -> str:
        return f"schedule[{self.schedule.text}, {self.zone}]"


# A per-minute schedule skips the 60 minutes of a repeated hour one at a time.
_MAX_SKIPS = 10_000


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def _wall(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None, fold=0)


def _exists(moment: datetime) -> bool:
    """False for a wall time inside a spring-forward gap (it never shows on the clock)."""
    zone = moment.tzinfo
    return _wall(_utc(moment).astimezone(zone)) == _wall(moment)


def _in_second_pass(moment: datetime) -> bool:
    """True for a wall time of the repeated hour when it shows for the second time."""
    return _exists(moment) and _utc(moment) > _utc(moment.replace(fold=0))


def _first_existing(moment: datetime) -> datetime:
    """`moment` itself, or for a time in a spring-forward gap the first moment after the gap."""
    if _exists(moment):
        return moment
    zone = moment.tzinfo
    after = moment.replace(fold=1).utcoffset()
    # Read with the offset after the change, the wall time is an instant before the change;
    # with the offset before it, one after. Bisect to the change itself.
    low, high = _utc(moment.replace(fold=1)), _utc(moment.replace(fold=0))
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) // 2
        if middle.astimezone(zone).utcoffset() == after:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0).astimezone(zone)
