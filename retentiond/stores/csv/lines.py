"""The lines of a cdr_csv file: complete lines read from a descriptor, and their fields as written.

A last line without a newline is one Asterisk is still writing: it is never read as a line. A
field is rewritten the way it was written, quoted or bare, so an anonymized line differs from
the original only in the values that changed.
"""

from __future__ import annotations

import csv
import errno
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from retentiond.policy.anonymize import Transform, anonymize_row
from retentiond.policy.rules import latest_instant
from retentiond.stores.fs.folders import CHANGED, READ_FLAGS, UNREADABLE, VANISHED, Skip

CHUNK = 1 << 20

# A line whose time cannot be read (counted in lines, in Survey.skipped and BatchResult.skipped).
UNPARSEABLE = "unparseable"

# The cdr_csv date format (`%Y-%m-%d %T`) parsed without strptime, which is slow per line.
_PLAIN_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %T")
_PLAIN_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
# One field as written: quoted (doubled quotes inside) or bare.
_RAW_FIELD = re.compile(r'"(?:[^"]|"")*"|[^,"]*')
_NEEDS_QUOTES = re.compile(r'[,"\r\n]')


@dataclass(frozen=True, slots=True)
class Line:
    """One complete line of a file, read once: its fields (None: not one CSV record) and time."""

    raw: bytes
    fields: list[str] | None
    when: datetime | None


class LineReader:
    """Reads cdr_csv lines: their fields, and the instant the time field denotes."""

    def __init__(self, time_field: int, time_format: str, zone: tzinfo) -> None:
        self.time_field = time_field
        self.time_format = time_format
        self.zone = zone
        self._plain_time = time_format in _PLAIN_TIME_FORMATS

    def read(self, raw: bytes) -> Line:
        """One raw line read: its fields (None: not one CSV record) and its time."""
        text = raw.decode("utf-8", "surrogateescape")
        try:
            fields = next(csv.reader((text.rstrip("\n"),), strict=True))
        except (csv.Error, StopIteration):
            return Line(raw, None, None)
        return Line(raw, fields, self._line_time(fields))

    def _line_time(self, fields: list[str]) -> datetime | None:
        """The (latest) instant a line's time field denotes, or None when it cannot be read."""
        if len(fields) <= self.time_field:
            return None
        value = fields[self.time_field]
        try:
            if self._plain_time and _PLAIN_TIME.fullmatch(value):
                wall = datetime.fromisoformat(value)
            else:
                wall = datetime.strptime(value, self.time_format)
            if wall.tzinfo is not None:  # the format carried an offset: the instant is exact
                return wall.astimezone(UTC)
            return latest_instant(wall, self.zone)
        except (ValueError, OverflowError):
            return None


def anonymized_line(line: Line, transforms: Mapping[str, Transform]) -> bytes | None:
    """The line with its fields transformed, quoting kept; None when nothing changes.

    Raises Skip(UNPARSEABLE) for a line whose fields cannot be rewritten one by one.
    """
    fields = line.fields
    text = line.raw.decode("utf-8", "surrogateescape")
    body = text.rstrip("\r\n")
    raw_fields = _raw_fields(body)
    if fields is None or raw_fields is None or len(raw_fields) != len(fields):
        raise Skip(UNPARSEABLE)
    fitting = {key: t for key, t in transforms.items() if int(key) < len(fields)}
    changes = anonymize_row(fitting, {str(i): value for i, value in enumerate(fields)})
    if not changes:
        return None
    for key, value in changes.items():
        position = int(key)
        raw_fields[position] = _field_text(value, quoted=raw_fields[position].startswith('"'))
    rewritten = ",".join(raw_fields) + text[len(body) :]
    return rewritten.encode("utf-8", "surrogateescape")


# -- fields --------------------------------------------------------------------------------------


def _raw_fields(body: str) -> list[str] | None:
    """One line's fields as written, quotes kept; None when a quote sits inside a bare field."""
    fields: list[str] = []
    position = 0
    while True:
        match = _RAW_FIELD.match(body, position)
        if match is None:  # pragma: no cover - the pattern matches the empty string
            return None
        fields.append(match.group())
        position = match.end()
        if position == len(body):
            return fields
        if body[position] != ",":
            return None
        position += 1


def _field_text(value: object, *, quoted: bool) -> str:
    """A new value written as the field was (quoted or bare), quoted where it must be."""
    text = "" if value is None else str(value)
    if quoted or _NEEDS_QUOTES.search(text):
        return '"' + text.replace('"', '""') + '"'
    return text


# -- files ---------------------------------------------------------------------------------------


def open_file(root_fd: int, name: bytes) -> int:
    try:
        return os.open(name, READ_FLAGS, dir_fd=root_fd)
    except FileNotFoundError:
        raise Skip(VANISHED) from None
    except PermissionError:
        raise Skip(UNREADABLE) from None
    except OSError as error:
        # ELOOP: now a symlink. Anything else: cannot be read.
        raise Skip(CHANGED if error.errno == errno.ELOOP else UNREADABLE) from None


def complete_lines(fd: int, stop: int) -> Iterator[bytes]:
    """The newline-terminated lines in the first `stop` bytes, newline included.

    Bytes after the last newline are a line still being written; the caller copies them verbatim.
    """
    offset = 0
    pending = b""
    while offset < stop:
        chunk = os.pread(fd, min(CHUNK, stop - offset), offset)
        if not chunk:
            return  # shorter than when it was opened: truncated meanwhile
        offset += len(chunk)
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            yield line + b"\n"
