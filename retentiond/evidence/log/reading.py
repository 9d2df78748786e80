"""Reading the deletion log: its files, oldest first, and its entries, the chain checked as they
stream past (`walk`, under `read_entries`, `verify` and `check_log`).

Rotation renames a full file to `<path>.<N>` and starts `<path>` with a `continued` entry that
carries the previous file's name, last seq and hash, so the chain runs unbroken through all
files. Readers take `<path>.1`, `<path>.2`, ... then `<path>`, and name a missing or misplaced
file.

Interrupted writes: a power loss can leave the log ending in a torn last line, a prefix of the
entry being written (or zeros the filesystem had not filled yet): no newline, not complete JSON.
That line was never synced, so the entry it began never counted (an intent whose batch was not
applied, or a batch result the next run reconciles). Reading ends before it (`TornTail`): it is
reported apart from damage. Anything else at the end (a complete line that fails its hash, a
line without its newline that is complete JSON) stays damage that a person must look at.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from retentiond.errors import AuditError
from retentiond.evidence.log.entries import (
    CONTINUED,
    GENESIS,
    MAX_LINE,
    Broken,
    Entry,
    check_link,
    is_int,
    parse_line,
)

TAIL_CHUNK = 64 * 1024


@dataclass(frozen=True)
class TornTail:
    """A last line a write left incomplete (a power loss): not an entry, and not damage.

    `line` is its line in `file`; `after_seq` the entry it follows (0: none). The writer moves
    these bytes aside when it next opens the log, recording `bytes` and `sha256`.
    """

    file: str
    line: int
    bytes: int
    sha256: str
    after_seq: int

    def describe(self) -> str:
        return (
            f"the last line is incomplete ({counted(self.bytes, 'byte')} at {self.file}:"
            f"{self.line}, likely a power loss while it was written); the next run moves it "
            "aside and records that in the log"
        )


def counted(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _open_for_reading(path: Path) -> BinaryIO:
    try:
        return Path(path).open("rb")
    except FileNotFoundError:
        raise AuditError(f"the audit log {path} does not exist; check audit.path") from None
    except OSError as exc:
        raise AuditError(f"cannot read the audit log {path}: {exc.strerror}") from None


def rotation_number(path: Path, name: str) -> int | None:
    """N for a file named `<path>.<N>` (N = 1, 2, ...; no leading zeros), else None."""
    prefix = path.name + "."
    suffix = name[len(prefix) :] if name.startswith(prefix) else ""
    if suffix.isascii() and suffix.isdigit() and not suffix.startswith("0"):
        return int(suffix)
    return None


def rotated_files(path: Path) -> list[tuple[int, Path]]:
    """The rotated files `<path>.<N>` in the folder, ordered by N."""
    folder = path.parent
    try:
        children = list(folder.iterdir())
    except OSError as exc:
        raise AuditError(f"cannot list the audit folder {folder}: {exc.strerror}") from None
    found = []
    for child in children:
        number = rotation_number(path, child.name)
        if number is not None:
            found.append((number, child))
    return sorted(found)


def same_file(path: Path, info: os.stat_result) -> bool:
    try:
        mine = path.stat()
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (info.st_dev, info.st_ino)


@dataclass
class WalkState:
    """What a walk learned besides the entries: the files, and where the log begins."""

    files: list[str] = field(default_factory=list)
    begins_after: str | None = None
    torn: TornTail | None = None


def walk(path: Path, state: WalkState) -> Iterator[tuple[str, int, Entry]]:
    """Yield (file name, line, entry) for each intact entry, oldest file first; raise Broken
    (with its file and line) at the first broken one.

    `path` is opened before the folder is listed, so a rotation meanwhile cannot make a file
    look missing: a rotated name that is the file already open is left out (that also covers a
    rotation interrupted between its two renames).
    """
    path = Path(path)
    with _open_for_reading(path) as current:
        try:
            info = os.fstat(current.fileno())
        except OSError as exc:
            raise AuditError(f"cannot read the audit log {path}: {exc.strerror}") from None
        files = [file for _, file in rotated_files(path) if not same_file(file, info)]
        files.append(path)
        state.files = [file.name for file in files]
        several = len(files) > 1
        prev_seq, prev_hash = 0, GENESIS
        for index, file in enumerate(files):
            last = index == len(files) - 1
            opened = contextlib.nullcontext(current) if last else _open_for_reading(file)
            with opened as handle:
                line = 0
                for raw in _raw_lines(handle, file):
                    line += 1
                    if last and cut_short(raw):
                        if line == 1 and several:
                            torn_only = Broken(
                                f"{file.name} holds only an incomplete line, but the current "
                                "file of a rotated log always starts with a complete continued "
                                "entry: it was emptied or replaced"
                            )
                            torn_only.line, torn_only.file = line, file.name
                            raise torn_only
                        digest = hashlib.sha256(raw).hexdigest()
                        state.torn = TornTail(file.name, line, len(raw), digest, prev_seq)
                        return  # it is the end of the file: readline stops short only there
                    try:
                        entry = _entry_from(raw)
                        if line == 1 and (index > 0 or entry.type == CONTINUED):
                            prev_seq, prev_hash = _continuation(
                                files, index, entry, prev_seq, prev_hash, state
                            )
                        elif entry.type == CONTINUED:
                            raise Broken(
                                f"a continued entry inside {file.name}, not at its start: "
                                "log files were joined",
                                entry.seq,
                            )
                        check_link(entry, prev_seq, prev_hash)
                    except Broken as broken:
                        broken.line, broken.file = line, file.name
                        raise
                    yield file.name, line, entry
                    prev_seq, prev_hash = entry.seq, entry.hash
                if line == 0 and several:
                    empty = Broken(
                        f"{file.name} is empty, but a rotated log file always starts with "
                        "a continued entry: it was emptied or replaced"
                    )
                    empty.line, empty.file = 1, file.name
                    raise empty


def _raw_lines(handle: BinaryIO, file: Path) -> Iterator[bytes]:
    while True:
        try:
            raw = handle.readline(MAX_LINE + 1)
        except OSError as exc:
            raise AuditError(f"cannot read the audit log {file}: {exc.strerror}") from None
        if not raw:
            return
        yield raw


def _entry_from(raw: bytes) -> Entry:
    if not raw.endswith(b"\n"):
        if len(raw) > MAX_LINE:
            raise Broken(f"line longer than {MAX_LINE} bytes")
        if _is_json(raw):
            raise Broken(
                "the last line has no newline, yet is complete JSON, so no write was cut short "
                "there: retentiond ends every line with a newline; the line was edited, or "
                "lost exactly its newline"
            )
        raise Broken(
            "incomplete last line in a rotated file (a file is complete when it is rotated): "
            "it was cut or edited"
        )
    return parse_line(raw[:-1])


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return True


def cut_short(raw: bytes) -> bool:
    """Whether `raw`, the file's last line, is what an interrupted write leaves: no newline, at
    most one entry long, and not complete JSON (a prefix of a line never is; neither are the
    zeros a filesystem may leave where the data was not written yet)."""
    return not raw.endswith(b"\n") and len(raw) <= MAX_LINE and not _is_json(raw)


def _continuation(
    files: list[Path],
    index: int,
    entry: Entry,
    prev_seq: int,
    prev_hash: str,
    state: WalkState,
) -> tuple[int, str]:
    """Check the first entry of a file after the first (or a first file that continues a
    removed one); return the (seq, hash) the entry must link to."""
    name = files[index].name
    if entry.type != CONTINUED:
        before = files[index - 1].name
        raise Broken(
            f"{name} does not start with a continued entry, so it does not go on from "
            f"{before}: log files were replaced or renamed",
            entry.seq,
        )
    named = entry.fields.get("previous_file")
    previous_seq = entry.fields.get("previous_seq")
    previous_hash = entry.fields.get("previous_hash")
    if not (isinstance(named, str) and is_int(previous_seq) and isinstance(previous_hash, str)):
        raise Broken(
            "a continued entry without previous_file, previous_seq and previous_hash", entry.seq
        )
    if previous_seq != entry.seq - 1 or previous_hash != entry.prev:
        raise Broken("the continued entry contradicts its own seq and prev", entry.seq)
    if index == 0:
        if any(file.name == named for file in files):
            raise Broken(
                f"{name} goes on from {named}, which is here too, but not before it: "
                "log files were renamed or reordered",
                entry.seq,
            )
        state.begins_after = named
        return previous_seq, previous_hash
    before = files[index - 1].name
    if named != before:
        if any(file.name == named for file in files):
            raise Broken(
                f"{name} goes on from {named}, but the file before it is {before}: "
                "log files were renamed or reordered",
                entry.seq,
            )
        raise Broken(
            f"{named} is missing: {name} goes on from it (after entry {previous_seq}), but "
            f"the file before it here is {before}",
            entry.seq,
        )
    if (previous_seq, previous_hash) != (prev_seq, prev_hash):
        raise Broken(
            f"{name} goes on from entry {previous_seq} of {named}, but {named} ends with entry "
            f"{prev_seq}" + (" of another hash" if previous_seq == prev_seq else "") + ": "
            f"entries were removed from or added to the end of {named}, or it was replaced",
            entry.seq,
        )
    return prev_seq, prev_hash


def log_files(path: Path) -> list[Path]:
    """The files of the log, oldest first: every rotated `<path>.<N>` by N, then `path`."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise AuditError(f"the audit log {path} does not exist; check audit.path") from None
    except OSError as exc:
        raise AuditError(f"cannot read the audit log {path}: {exc.strerror}") from None
    return [file for _, file in rotated_files(path) if not same_file(file, info)] + [path]


def read_entries(path: Path) -> Iterator[Entry]:
    """Yield the entries in order, through every rotated file, checking the chain as it goes.

    A report must not quietly skip a damaged part, so the first broken line raises AuditError
    after every intact entry before it was yielded. An incomplete last line (a power loss) is
    no entry and no damage: reading ends before it.
    """
    try:
        for _, _, entry in walk(path, WalkState()):
            yield entry
    except Broken as broken:
        raise AuditError(
            f"the audit log {path} is broken at line {broken.line} of {broken.file} "
            f"({broken.reason}); run `retentiond audit verify`"
        ) from None


def pread_exact(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise OSError(errno.EIO, "the file shrank while it was read")
    return data


def last_line(fd: int, size: int) -> bytes:
    """The last line of a non-empty file ending in a newline, read backwards in chunks."""
    end = size - 1  # the final newline
    chunks: list[bytes] = []
    pos = end
    while pos > 0:
        start = max(0, pos - TAIL_CHUNK)
        chunk = pread_exact(fd, pos - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            chunks.append(chunk[newline + 1 :])
            break
        chunks.append(chunk)
        pos = start
        if end - pos > MAX_LINE:
            raise Broken(f"line longer than {MAX_LINE} bytes")
    return b"".join(reversed(chunks))
