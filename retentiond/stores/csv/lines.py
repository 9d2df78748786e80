"""The lines of a cdr_csv file: complete lines read from a descriptor, and their fields as written.

A last line without a newline is one Asterisk is still writing: it is never read as a line. A
field is rewritten the way it was written, quoted or bare, so an anonymized line differs from
the original only in the values that changed.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from retentiond.stores.fs.folders import CHANGED, READ_FLAGS, UNREADABLE, VANISHED, Skip

CHUNK = 1 << 20

# The cdr_csv date format (`%Y-%m-%d %T`) parsed without strptime, which is slow per line.
PLAIN_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %T")
PLAIN_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
# One field as written: quoted (doubled quotes inside) or bare.
_RAW_FIELD = re.compile(r'"(?:[^"]|"")*"|[^,"]*')
_NEEDS_QUOTES = re.compile(r'[,"\r\n]')


@dataclass(frozen=True, slots=True)
class Line:
    """One complete line of a file, read once: its fields (None: not one CSV record) and time."""

    raw: bytes
    fields: list[str] | None
    when: datetime | None


# -- fields --------------------------------------------------------------------------------------


def fields_as_written(body: str) -> list[str] | None:
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


def field_text(value: object, *, quoted: bool) -> str:
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
