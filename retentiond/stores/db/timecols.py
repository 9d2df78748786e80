"""Time columns: how a column stores an instant, the bound every expired row is below, the edges
of a hold's window, and stored values read back as instants.

A column's form (`TimeKind`) follows from its declared type (`time_kind`): wall-clock times in
the configured zone, UTC timestamps, timezone-aware timestamps, dates alone, epoch seconds (as
numbers or, in an untyped SQLite column, as text) or date text. Bounds are computed in Python
from the run's cutoff, never from the database's NOW(). Conversions of a hold's window round
outwards, so a window only ever widens. Values below the floors (MariaDB zero dates, epoch 0, a
duration or milliseconds in the column) are undated: never expired, never the oldest.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import types as sqltypes

from retentiond.policy import rules
from retentiond.stores.db import dialects
from retentiond.stores.db.timekinds import (
    DATETIME_FLOOR,
    EPOCH_CEILING,
    EPOCH_FLOOR,
    TimeKind,
)

if TYPE_CHECKING:
    from retentiond.stores.db.dialects import Dialect

Side = Literal["from", "to"]
# The largest DST shift in tzdata is two hours (Antarctica/Troll): a wall-clock time near a hold's
# edge may have been written with any offset in force this close to it.
DST_REACH = timedelta(hours=2)


def time_kind(column_type: sqltypes.TypeEngine[Any], dialect: Dialect | str) -> TimeKind | None:
    """The form the declared type says; on SQLite `Dialect.stored_time_kind` asks the values."""
    return dialects.as_dialect(dialect).time_kind(column_type)


def _epoch_text(seconds: int) -> str:
    """Epoch seconds as text that sorts with the stored ten-digit values; clamped to them."""
    return str(min(max(seconds, EPOCH_FLOOR), EPOCH_CEILING - 1))


def time_bound(kind: TimeKind, dialect: Dialect | str, cutoff: datetime, zone: tzinfo) -> Any:
    """The value every expired row's time is strictly below (`time < bound`)."""
    if cutoff.tzinfo is None:
        raise ValueError("cutoff must be timezone-aware")
    if kind == "aware":
        return cutoff.astimezone(UTC)
    if kind == "utc":
        return cutoff.astimezone(UTC).replace(tzinfo=None)
    if kind == "epoch":
        return math.floor(cutoff.timestamp())
    if kind == "epoch_text":
        return _epoch_text(math.floor(cutoff.timestamp()))
    wall = rules.naive_bound(cutoff, zone)
    if kind == "date":
        # A row known by its day alone is as young as that day's end: only earlier days expire.
        return dialects.as_dialect(dialect).date_value(wall.date())
    if kind == "text":
        return wall.strftime("%Y-%m-%d %H:%M:%S")
    return wall


def hold_bound(
    kind: TimeKind, dialect: Dialect | str, instant: datetime, zone: tzinfo, side: Side
) -> Any:
    """A hold window's edge as the column stores times: `time >= from`, `time < to`.

    Conversions round outwards, so a window only ever widens: epoch seconds floor and ceil,
    a date column holds every day the window touches, and wall-clock times take the widest
    reading a DST change allows (see `widest_wall`).
    """
    if instant.tzinfo is None:
        raise ValueError("a hold's window must be timezone-aware")
    if kind == "aware":
        return instant.astimezone(UTC)
    if kind == "utc":
        return instant.astimezone(UTC).replace(tzinfo=None)
    if kind == "epoch":
        stamp = instant.timestamp()
        return math.floor(stamp) if side == "from" else math.ceil(stamp)
    if kind == "epoch_text":
        stamp = instant.timestamp()
        if side == "from":
            return _epoch_text(math.floor(stamp))
        # Past the last ten-digit second: above every stored value, fraction or not.
        return "9" * 11 if math.ceil(stamp) >= EPOCH_CEILING else _epoch_text(math.ceil(stamp))
    wall = widest_wall(instant, zone, side)
    if kind == "date":
        day = wall.date() if side == "from" else (wall - timedelta(microseconds=1)).date()
        day += timedelta(days=0 if side == "from" else 1)
        return dialects.as_dialect(dialect).date_value(day)
    if kind == "text":
        return _wall_text(wall, side)
    return wall


def widest_wall(instant: datetime, zone: tzinfo, side: Side) -> datetime:
    """The wall-clock edge that keeps every naive value that may denote a time inside.

    A naive value may have been written with any offset in force near it: in the repeated hour
    of autumn it can be either pass, and a value in the skipped hour of spring was read with
    either offset. The edge is taken with each offset in force within DST_REACH of the
    instant, the lowest for a window's start and the highest for its end. Near a DST change
    that may take in up to the shift more than the exact edge; never less.
    """
    utc = instant.astimezone(UTC).replace(tzinfo=None)
    walls = [
        utc + _offset(instant + shift, zone) for shift in (-DST_REACH, timedelta(0), DST_REACH)
    ]
    return min(walls) if side == "from" else max(walls)


def _offset(instant: datetime, zone: tzinfo) -> timedelta:
    return instant.astimezone(zone).utcoffset() or timedelta(0)


def _wall_text(wall: datetime, side: Side) -> str:
    if side == "to":
        if wall.microsecond:
            wall = wall.replace(microsecond=0) + timedelta(seconds=1)
        return wall.strftime("%Y-%m-%d %H:%M:%S")
    text_value = wall.strftime("%Y-%m-%d %H:%M:%S")
    # A value holding its day alone ("2024-03-01") sorts before that day's "00:00:00".
    return text_value[:10] if text_value.endswith(" 00:00:00") else text_value


def stored_instant(value: Any, kind: TimeKind, zone: tzinfo) -> datetime | None:
    """A stored time as an aware instant; None for NULL, zero dates and anything unparseable."""
    try:
        if value is None or isinstance(value, bool):
            return None
        if isinstance(value, datetime):
            if value.tzinfo is not None:
                return value.astimezone(UTC)
            if kind == "utc":
                return value.replace(tzinfo=UTC)
            return rules.latest_instant(value, zone)
        if isinstance(value, date):
            return rules.end_of_day(value, zone)
        if isinstance(value, int | float | Decimal):
            plausible = EPOCH_FLOOR <= value < EPOCH_CEILING
            return datetime.fromtimestamp(float(value), UTC) if plausible else None
        if isinstance(value, bytes):
            value = value.decode("ascii")
        if isinstance(value, str):
            return _instant_from_text(value.strip(), kind, zone)
    except (ValueError, OverflowError, OSError, UnicodeDecodeError):
        return None
    return None


def _instant_from_text(value: str, kind: TimeKind, zone: tzinfo) -> datetime | None:
    if kind in ("epoch", "epoch_text"):
        return stored_instant(float(value), kind, zone)
    if len(value) == 10:
        return stored_instant(date.fromisoformat(value), kind, zone)
    return stored_instant(datetime.fromisoformat(value), kind, zone)


def time_floor(kind: TimeKind, dialect: Dialect | str) -> Any:
    """The least stored value that is a real time in a column of `kind` (DATETIME_FLOOR,
    EPOCH_FLOOR as the column stores them)."""
    if kind == "epoch":
        return EPOCH_FLOOR
    if kind == "epoch_text":
        return str(EPOCH_FLOOR)
    if kind == "aware":
        return DATETIME_FLOOR.replace(tzinfo=UTC)
    if kind == "text":
        return DATETIME_FLOOR.date().isoformat()
    if kind == "date":
        return dialects.as_dialect(dialect).date_value(DATETIME_FLOOR.date())
    return DATETIME_FLOOR
