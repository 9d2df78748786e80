"""Ages of files: from their modification time, the YYYY/MM/DD folders above them, or the time
stamp in their names.

An age is the instant a file is as young as: a folder date or a bare day in a name makes a file
as young as the end of that day (or month), a wall time in a name is read in the configured zone
(the latest instant it can mean, so a DST fold only delays a deletion). A name can hold other
digit runs (numbers dialled, unique ids): among valid candidates the youngest wins.
"""

from __future__ import annotations

import calendar
import os
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, tzinfo

from retentiond.policy.rules import end_of_day, latest_instant

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# FreePBX `...-YYYYMMDD-HHMMSS-<uniqueid>`, 3CX `..._YYYYMMDDhhmmss(<id>)`, or a bare `YYYYMMDD`.
FREEPBX_TIME = re.compile(rb"(?<![0-9])([0-9]{8})-([0-9]{6})(?![0-9])")
_COMPACT_TIME = re.compile(rb"(?<![0-9])([0-9]{14})(?![0-9])")
_DAY_ONLY = re.compile(rb"(?<![0-9])([0-9]{8})(?![0-9])")


def mtime_age(status: os.stat_result) -> datetime:
    """The modification time, floored to the microsecond (which never moves it across a cutoff)."""
    return _EPOCH + timedelta(microseconds=status.st_mtime_ns // 1000)


def path_age(folder: Sequence[bytes], zone: tzinfo) -> datetime | None:
    """The end of the day (YYYY/MM/DD) or month (YYYY/MM) named by the folders nearest the file."""
    digits = [name.decode("ascii") if name.isdigit() else "" for name in folder]
    for end in range(len(digits), 0, -1):
        window = ["", "", "", *digits[:end]][-3:]  # the folder and its two parents
        lengths = tuple(len(name) for name in window)
        if lengths == (4, 2, 2):
            year, month, day = window
            return end_of_named_day(int(year), int(month), int(day), zone)
        if lengths[1:] == (4, 2):
            year, month = window[1:]
            return _end_of_month(int(year), int(month), zone)
    return None


def filename_age(name: bytes, zone: tzinfo) -> datetime | None:
    """The time stamp in a file name, read as wall time in `zone`.

    A name can hold other digit runs (numbers dialled, unique ids); among valid candidates of the
    most specific form the youngest wins, so a look-alike can only delay a deletion.
    """
    for pattern in (FREEPBX_TIME, _COMPACT_TIME):
        times = [_wall_time(b"".join(match.groups()), zone) for match in pattern.finditer(name)]
        valid = [time for time in times if time is not None]
        if valid:
            return max(valid)
    days = [_day_digits(match.group(1), zone) for match in _DAY_ONLY.finditer(name)]
    valid = [day for day in days if day is not None]
    return max(valid) if valid else None


def _wall_time(digits: bytes, zone: tzinfo) -> datetime | None:
    text = digits.decode("ascii")
    try:
        wall = datetime(
            int(text[0:4]),
            int(text[4:6]),
            int(text[6:8]),
            int(text[8:10]),
            int(text[10:12]),
            int(text[12:14]),
        )
        return latest_instant(wall, zone)
    except (ValueError, OverflowError):
        return None


def _day_digits(digits: bytes, zone: tzinfo) -> datetime | None:
    text = digits.decode("ascii")
    return end_of_named_day(int(text[0:4]), int(text[4:6]), int(text[6:8]), zone)


def end_of_named_day(year: int, month: int, day: int, zone: tzinfo) -> datetime | None:
    """The end of that day in `zone`; None when no such day exists."""
    try:
        return end_of_day(date(year, month, day), zone)
    except (ValueError, OverflowError):
        return None


def _end_of_month(year: int, month: int, zone: tzinfo) -> datetime | None:
    if not 1 <= month <= 12:
        return None
    return end_of_named_day(year, month, calendar.monthrange(year, month)[1], zone)
