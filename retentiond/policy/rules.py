"""Cutoffs, deadlines and the time arithmetic behind them. Pure logic, no I/O.

Every time inside retentiond is timezone-aware. Naive times exist only at a store's boundary, where
the PBX wrote wall-clock times in a known zone; these helpers convert them in the direction that
deletes less when a wall-clock time is ambiguous (autumn) or does not exist (spring).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Protocol

from retentiond.policy.durations import Duration
from retentiond.policy.schedule import Schedule
from retentiond.policy.subjects import Subject


def cutoff(now: datetime, keep: Duration, zone: tzinfo) -> datetime:
    """`now - keep` on the wall clock of `zone`, as an aware UTC instant.

    Calendar months stay calendar months (a cutoff three months before 31 May is 28 February).
    A wall time that a DST change skips or repeats resolves to the earlier instant, so the
    cutoff never moves forward because of DST.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    local = now.astimezone(zone).replace(tzinfo=None)
    return earliest_instant(keep.before(local), zone)


def earliest_instant(wall: datetime, zone: tzinfo) -> datetime:
    """The earliest instant a naive wall-clock time in `zone` can denote."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    return min(first, second)


def latest_instant(wall: datetime, zone: tzinfo) -> datetime:
    """The latest instant a naive wall-clock time in `zone` can denote (an object's age, safely)."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    return max(first, second)


def end_of_day(day: date, zone: tzinfo) -> datetime:
    """The last instant of a day in `zone`: an object known only by its day is that young."""
    next_midnight = datetime.combine(day + timedelta(days=1), time())
    return latest_instant(next_midnight, zone) - timedelta(microseconds=1)


def naive_bound(instant: datetime, zone: tzinfo) -> datetime:
    """The naive bound for a column of wall-clock times in `zone`.

    Every naive value strictly below the bound denotes an instant before `instant`. When the
    instant falls in the first pass of a repeated hour, the bound moves back by the repeat, so no
    row written in the second pass (which is newer) can be matched.
    """
    local = instant.astimezone(zone)
    wall = local.replace(tzinfo=None)
    first_offset = wall.replace(tzinfo=zone, fold=0).utcoffset()
    second_offset = wall.replace(tzinfo=zone, fold=1).utcoffset()
    if local.fold == 0 and first_offset is not None and second_offset is not None:
        repeat = first_offset - second_offset
        if repeat > timedelta(0):
            return wall - repeat
    return _before_skipped_times(wall, instant, zone)


def _before_skipped_times(wall: datetime, instant: datetime, zone: tzinfo) -> datetime:
    """The bound moved back to the first skipped wall time (spring) that could be newer.

    A PBX with a wrong clock may still write a wall time the spring change skips (02:30 on the
    last Sunday of March in Berlin). Read with the earlier offset, such a value is later than
    the instant just after the gap, so it must not fall below the bound.
    """
    bound = wall
    probe = wall - timedelta(hours=3)
    while probe < wall:
        if _skipped(probe, zone) and latest_instant(probe, zone) >= instant:
            return min(bound, probe)
        probe += timedelta(minutes=1)
    return bound


def _skipped(wall: datetime, zone: tzinfo) -> bool:
    """A wall time that does not exist in `zone` (the hour a spring change skips)."""
    round_trip = wall.replace(tzinfo=zone).astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    return round_trip != wall


# --- deadlines ---------------------------------------------------------------------------------

# A rule without a schedule is run by `run --once` from a timer or by hand; status assumes daily.
ASSUMED_INTERVAL = timedelta(days=1)
# Where the schedule's gaps are measured: a fixed stretch of calendar, so the interval of a rule
# does not change from one day to the next. 2024 is a leap year (a `29 2` schedule is found).
_INTERVAL_FROM = datetime(2024, 1, 1, tzinfo=UTC)
_INTERVAL_SPAN = timedelta(days=400)
_INTERVAL_MAX_TIMES = 3000  # per-minute schedules: their gaps show within two days


@functools.lru_cache(maxsize=256)
def schedule_interval(schedule: Schedule | None) -> timedelta:
    """The longest gap between two consecutive times of a schedule, on the wall clock.

    Measured with the daemon's trigger on a clock without DST, over more than a year: `daily` is
    1 day, `weekly` 7 days, `15 3 * * mon-fri` 3 days (Friday to Monday). The hour a DST change
    adds or removes is left to the grace, which is at least a day. No schedule: a day, assumed.
    Remembered per schedule: the 400 times of `daily` take a fifth of a second, and every run's
    guard, every deadline and each report's rule asks again (a fleet report, once per system).
    """
    if schedule is None:
        return ASSUMED_INTERVAL
    trigger = schedule.trigger(UTC)
    times: list[datetime] = []
    previous: datetime | None = None
    while len(times) < _INTERVAL_MAX_TIMES:
        moment = trigger.get_next_fire_time(previous, previous or _INTERVAL_FROM)
        if moment is None:
            break
        times.append(moment)
        previous = moment
        if len(times) >= 2 and moment - times[0] >= _INTERVAL_SPAN:
            break
    if len(times) < 2:  # parse_schedule refuses schedules that never happen; once is not a cycle
        raise ValueError(f"schedule {schedule.text!r} does not repeat")
    return max(later - earlier for earlier, later in itertools.pairwise(times))


@dataclass(frozen=True)
class Deadline:
    """The regular deletion period (ISO/IEC 27555): keep + the schedule's interval + a grace.

    An object older than `instant(now)` is overdue: every run the schedule made between
    `now - grace - interval` and `now - grace` was already past its cutoff, so regular
    processing should have deleted it.
    """

    keep: Duration
    interval: timedelta
    grace: Duration
    scheduled: bool  # False: the rule has no schedule and the interval is assumed (daily)

    def instant(self, now: datetime, zone: tzinfo) -> datetime:
        """Objects strictly older than this instant are overdue. Never after `cutoff(now)`.

        Normally `now - keep - interval - grace` on the wall clock of `zone`. Month ends clamp
        (three months before 31 May and before 29 May are both 28 February), so a cutoff can
        step back at midnight; the lowest cutoff any run in the window could have had is used,
        so a month end never turns objects overdue that no run could yet have deleted.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        latest = self.grace.before(now.astimezone(zone).replace(tzinfo=None))
        earliest = latest - self.interval
        runs = [earliest]
        midnight = datetime.combine(earliest.date() + timedelta(days=1), time())
        while midnight <= latest:
            runs.append(midnight)
            midnight += timedelta(days=1)
        return earliest_instant(min(self.keep.before(run) for run in runs), zone)

    def period(self) -> str:
        """The deadline as one calendar period: '3 months 2 days', '62 days', '1 year 1 hour'."""
        years, months, days, seconds = self._parts()
        hours, rest = divmod(seconds, 3600)
        parts = [
            _plural(years, "year"),
            _plural(months, "month"),
            _plural(days, "day"),
            _plural(hours, "hour"),
            _plural(rest // 60, "minute"),
        ]
        return " ".join(p for p in parts if p) or "0 days"

    def iso(self) -> str:
        """The same period in ISO 8601: P3M2D, P62D, P1YT1H."""
        years, months, days, seconds = self._parts()
        hours, rest = divmod(seconds, 3600)
        date_part = "".join(
            f"{n}{unit}" for n, unit in ((years, "Y"), (months, "M"), (days, "D")) if n
        )
        time_part = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (rest // 60, "M")) if n)
        if time_part:
            return f"P{date_part}T{time_part}"
        return f"P{date_part or '0D'}"

    def _parts(self) -> tuple[int, int, int, int]:
        months = (self.keep.years + self.grace.years) * 12 + self.keep.months + self.grace.months
        days = (self.keep.weeks + self.grace.weeks) * 7 + self.keep.days + self.grace.days
        days += self.interval.days
        return months // 12, months % 12, days, self.interval.seconds


def deadline(keep: Duration, schedule: Schedule | None, grace: Duration) -> Deadline:
    """The deadline of a rule: its keep, its schedule's interval (daily if none) and the grace."""
    return Deadline(keep, schedule_interval(schedule), grace, schedule is not None)


def interval_text(interval: timedelta) -> str:
    """'1 day', '7 days', '1 hour', '1 day 1 hour': how status names a schedule's interval."""
    hours, rest = divmod(interval.seconds, 3600)
    parts = [_plural(interval.days, "day"), _plural(hours, "hour"), _plural(rest // 60, "minute")]
    return " ".join(p for p in parts if p) or "0 minutes"


def _plural(count: int, unit: str) -> str:
    if not count:
        return ""
    return f"{count} {unit}" if count == 1 else f"{count} {unit}s"


@dataclass(frozen=True)
class HoldScope:
    """One hold as a store applies it: a window of object times and, optionally, whose objects.

    `start` is inclusive and `end` exclusive (aware instants); None leaves that side open. A hold
    without a subject holds every object in its window.
    """

    hold_id: str
    start: datetime | None = None
    end: datetime | None = None
    subject: Subject | None = None

    def in_window(self, when: datetime | None) -> bool:
        """An object of unknown time is in every window: a hold errs on the side of keeping."""
        if when is None:
            return True
        if self.start is not None and when < self.start:
            return False
        return self.end is None or when < self.end


@dataclass(frozen=True)
class Holds:
    """The holds in force for one rule at one moment. Stores exclude what they cover."""

    scopes: tuple[HoldScope, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.scopes)

    @property
    def ids(self) -> list[str]:
        return [scope.hold_id for scope in self.scopes]

    def covering(
        self, when: datetime | None, names: Callable[[Subject], bool] | None = None
    ) -> list[str]:
        """The ids of the holds that cover an object of time `when`.

        `names(subject)` says whether the object names the subject; a store that cannot tell
        whose an object is passes None, and every hold in the window then covers it.
        """
        return [
            scope.hold_id
            for scope in self.scopes
            if scope.in_window(when)
            and (scope.subject is None or names is None or names(scope.subject))
        ]

    def covers(self, when: datetime | None, names: Callable[[Subject], bool] | None = None) -> bool:
        return bool(self.covering(when, names))


NO_HOLDS = Holds()


class HoldTerms(Protocol):
    """What the policy reads of a legal hold: its dates, the rules it covers and whose objects.
    The config's `HoldConfig` has them; policy never imports the config."""

    @property
    def id(self) -> str: ...

    @property
    def review_by(self) -> date: ...

    @property
    def until(self) -> date | None: ...

    @property
    def rules(self) -> list[str] | None: ...  # None: every rule

    @property
    def from_(self) -> date | None: ...

    @property
    def to(self) -> date | None: ...

    def subject(self) -> Subject | None: ...


def hold_in_force(hold: HoldTerms, now: datetime, zone: tzinfo) -> bool:
    """A hold holds until the end of its `until` day; a passed `review_by` does not end it."""
    return hold.until is None or now < _start_of_day(hold.until + timedelta(days=1), zone)


def day_over(day: date, now: datetime, zone: tzinfo) -> bool:
    """Whether `day` has ended in `zone` at `now` (a hold's until day, read from the log)."""
    return now >= _start_of_day(day + timedelta(days=1), zone)


def review_overdue(hold: HoldTerms, now: datetime, zone: tzinfo) -> bool:
    return now >= _start_of_day(hold.review_by + timedelta(days=1), zone)


def holds_for(holds: Iterable[HoldTerms], rule: str, now: datetime, zone: tzinfo) -> Holds:
    """The holds in force for `rule` now, as windows of instants in the PBX's zone.

    A window covers whole days: from the start of `from` to the end of `to`, each taken at its
    widest where a DST change makes midnight ambiguous.
    """
    scopes = []
    for hold in holds:
        if hold.rules is not None and rule not in hold.rules:
            continue
        if not hold_in_force(hold, now, zone):
            continue
        start = None if hold.from_ is None else _start_of_day(hold.from_, zone)
        end = None if hold.to is None else _end_of_day_exclusive(hold.to, zone)
        scopes.append(HoldScope(hold.id, start, end, hold.subject()))
    return Holds(tuple(scopes))


def _start_of_day(day: date, zone: tzinfo) -> datetime:
    return earliest_instant(datetime.combine(day, time()), zone)


def _end_of_day_exclusive(day: date, zone: tzinfo) -> datetime:
    return latest_instant(datetime.combine(day + timedelta(days=1), time()), zone)
