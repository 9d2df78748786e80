"""Cutoffs and the time arithmetic behind them. Pure logic, no I/O.

Every time inside retentiond is timezone-aware. Naive times exist only at a store's boundary, where
the PBX wrote wall-clock times in a known zone; these helpers convert them in the direction that
deletes less when a wall-clock time is ambiguous (autumn) or does not exist (spring).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, tzinfo

from retentiond.config.durations import Duration


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
    return wall
