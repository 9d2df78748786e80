"""The Löschprotokoll: an append-only, hash-chained JSON Lines log of every deletion.

Each line is one entry. Its `hash` is the SHA-256 of the canonical JSON of the entry without
`hash`, and its `prev` is the hash of the entry before (GENESIS for the first), so changing,
removing or reordering any entry breaks the chain at a line `verify` can name.

Safety rule 3 rests on this module: `append` returns only once the line is on disk (fsync), and
raises AuditError instead when it cannot be; after a failed append the log refuses further
appends, so the engine cannot delete anything the log did not record. The log holds category
level evidence only (safety rule 6), so paths are refused outright.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path, PurePath
from types import TracebackType
from typing import Any, BinaryIO, Self

from retentiond.errors import AuditError

GENESIS = "0" * 64
RESERVED = frozenset({"seq", "ts", "type", "prev", "hash"})
# Entries are a few hundred bytes; the cap keeps reading a damaged file bounded in memory.
MAX_LINE = 1024 * 1024
_TAIL_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Entry:
    """One entry of the log, as read back from its line."""

    seq: int
    type: str
    ts: str
    prev: str
    hash: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Verification:
    """The result of checking a whole log: intact, or where and why the chain first breaks."""

    ok: bool
    entries: int
    head: tuple[int, str]
    broken_at: int | None
    broken_seq: int | None
    reason: str | None


def canonical(obj: dict[str, Any]) -> bytes:
    """The bytes that are hashed: sorted keys, no spaces, UTF-8, so any verifier can recompute them.

    This is Python's json encoding, not RFC 8785; floats are written by their shortest repr.
    """
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode()


def _line_text(obj: dict[str, Any]) -> str:
    """The written form of an entry: compact, keys in writing order, so `tail` reads naturally."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_safe(value: Any, where: str) -> Any:
    """`value` with datetimes and dates as text. A wrong type is a bug in the caller: TypeError."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"audit field {where}: {value} is not valid JSON")
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise TypeError(f"audit field {where}: naive datetime; make it timezone-aware first")
        return _utc_text(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, PurePath):
        # File names can be personal data (safety rule 6): log counts or hashes instead.
        raise TypeError(f"audit field {where}: paths must not be written to the audit log")
    if isinstance(value, list | tuple):
        return [_json_safe(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise TypeError(f"audit field {where}: dictionary keys must be strings")
        return {key: _json_safe(item, f"{where}.{key}") for key, item in value.items()}
    raise TypeError(f"audit field {where}: {type(value).__name__} is not JSON-serialisable")


class _Broken(Exception):
    """Why a line fails verification; `line` is filled in by the reader that knows it."""

    def __init__(self, reason: str, seq: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.seq = seq
        self.line = 0


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_line(raw: bytes) -> Entry:
    """Check one line on its own: well-formed, hash correct, and exactly as retentiond writes it.

    The last check catches edits that keep the parsed value (an escape re-spelled, spaces added),
    so every changed byte is detected, not only those that change a value.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Broken("not valid UTF-8") from None
    if not text:
        raise _Broken("empty line")
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except ValueError:
        raise _Broken("not valid JSON") from None
    if not isinstance(obj, dict):
        raise _Broken("not a JSON object")
    seq = obj.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise _Broken("missing or non-integer 'seq'")
    for key in ("ts", "type", "prev", "hash"):
        if not isinstance(obj.get(key), str):
            raise _Broken(f"missing or non-text {key!r}", seq)
    claimed = obj.pop("hash")
    if hashlib.sha256(canonical(obj)).hexdigest() != claimed:
        raise _Broken("hash mismatch: the entry was changed", seq)
    obj["hash"] = claimed
    if _line_text(obj) != text:
        raise _Broken("not in the form retentiond writes: the line was edited", seq)
    fields = {key: value for key, value in obj.items() if key not in RESERVED}
    return Entry(seq, obj["type"], obj["ts"], obj["prev"], claimed, fields)


def _check_link(entry: Entry, prev_seq: int, prev_hash: str) -> None:
    """Check that `entry` follows the entry before it (or starts the chain)."""
    if prev_seq == 0:
        if entry.seq != 1:
            raise _Broken(
                f"the first entry has seq {entry.seq}, not 1: entries were removed", entry.seq
            )
        if entry.prev != GENESIS:
            raise _Broken("the first entry's prev is not GENESIS: entries were removed", 1)
        return
    if entry.seq != prev_seq + 1:
        raise _Broken(f"sequence jumps from {prev_seq} to {entry.seq}", entry.seq)
    if entry.prev != prev_hash:
        raise _Broken(
            f"prev does not match the hash of entry {prev_seq}: "
            "an entry was changed, removed or reordered",
            entry.seq,
        )


def _open_for_reading(path: Path) -> BinaryIO:
    try:
        return Path(path).open("rb")
    except FileNotFoundError:
        raise AuditError(f"the audit log {path} does not exist; check audit.path") from None
    except OSError as exc:
        raise AuditError(f"cannot read the audit log {path}: {exc.strerror}") from None


def _walk(path: Path) -> Iterator[Entry]:
    """Yield each intact entry in order; raise _Broken (with its line) at the first broken one."""
    with _open_for_reading(path) as log:
        prev_seq, prev_hash = 0, GENESIS
        line = 0
        while True:
            line += 1
            try:
                raw = log.readline(MAX_LINE + 1)
            except OSError as exc:
                raise AuditError(f"cannot read the audit log {path}: {exc.strerror}") from None
            try:
                if not raw:
                    return
                if not raw.endswith(b"\n"):
                    if len(raw) > MAX_LINE:
                        raise _Broken(f"line longer than {MAX_LINE} bytes")
                    raise _Broken("incomplete last line (the writer was interrupted)")
                entry = _parse_line(raw[:-1])
                _check_link(entry, prev_seq, prev_hash)
            except _Broken as broken:
                broken.line = line
                raise
            yield entry
            prev_seq, prev_hash = entry.seq, entry.hash


def verify(path: Path) -> Verification:
    """Check the whole chain in one streaming pass; report the first broken line, if any."""
    count, head = 0, (0, GENESIS)
    try:
        for entry in _walk(path):
            count, head = count + 1, (entry.seq, entry.hash)
    except _Broken as broken:
        return Verification(False, count, head, broken.line, broken.seq, broken.reason)
    return Verification(True, count, head, None, None, None)


def read_entries(path: Path) -> Iterator[Entry]:
    """Yield the entries in order, checking the chain as it goes.

    A report must not quietly skip a damaged part, so the first broken line raises AuditError
    after every intact entry before it was yielded.
    """
    try:
        yield from _walk(path)
    except _Broken as broken:
        raise AuditError(
            f"the audit log {path} is broken at line {broken.line} ({broken.reason}); "
            "run `retentiond audit verify`"
        ) from None


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise OSError(errno.EIO, "the file shrank while it was read")
    return data


def _last_line(fd: int, size: int) -> bytes:
    """The last line of a non-empty file ending in a newline, read backwards in chunks."""
    end = size - 1  # the final newline
    chunks: list[bytes] = []
    pos = end
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        chunk = _pread_exact(fd, pos - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            chunks.append(chunk[newline + 1 :])
            break
        chunks.append(chunk)
        pos = start
        if end - pos > MAX_LINE:
            raise _Broken(f"line longer than {MAX_LINE} bytes")
    return b"".join(reversed(chunks))


class AuditLog:
    """The writer. Holds the file open with an exclusive lock so only one retentiond appends."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._head = (0, GENESIS)
        self._failure: str | None = None

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last entry, or (0, GENESIS) for an empty log."""
        return self._head

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Create or open the log, lock it, and take the head from its last line.

        Only the last line is checked (the full chain is `retentiond audit verify`'s job), but a
        log that ends mid-line is refused: appending after it would bury the damage.
        """
        if self._fd is not None:
            raise RuntimeError("the audit log is already open")
        folder = self.path.absolute().parent
        if not folder.is_dir():
            raise AuditError(
                f"audit folder {folder} does not exist; create it or change audit.path"
            )
        fd = self._open_file(folder)
        try:
            self._lock(fd)
            self._head = self._read_head(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._failure = None

    def _open_file(self, folder: Path) -> int:
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        try:
            try:
                fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o640)
            except FileExistsError:
                return os.open(self.path, flags)
            try:
                os.fchmod(fd, 0o640)  # the umask must not change who may read the evidence
                _fsync_folder(folder)  # a new file is only durable once its folder entry is
            except BaseException:
                os.close(fd)
                raise
            return fd
        except OSError as exc:
            raise AuditError(
                f"cannot open the audit log {self.path} for writing: {exc.strerror}; "
                "check its owner, permissions, attributes (lsattr) and that the filesystem "
                "is writable"
            ) from None

    def _lock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AuditError(
                f"another retentiond process is writing {self.path}; wait for it to finish"
            ) from None
        except OSError as exc:
            raise AuditError(f"cannot lock the audit log {self.path}: {exc.strerror}") from None

    def _read_head(self, fd: int) -> tuple[int, str]:
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return (0, GENESIS)
            if _pread_exact(fd, 1, size - 1) != b"\n":
                raise AuditError(
                    f"the audit log {self.path} ends with an incomplete entry: a write was "
                    "interrupted (crash, power loss or full disk). Nothing will be deleted "
                    "until it is repaired: run `retentiond audit verify`, keep a copy of the "
                    "file, then remove the incomplete last line"
                )
            entry = _parse_line(_last_line(fd, size))
        except OSError as exc:
            raise AuditError(f"cannot read the audit log {self.path}: {exc.strerror}") from None
        except _Broken as broken:
            raise AuditError(
                f"the last entry of the audit log {self.path} is damaged ({broken.reason}); "
                "run `retentiond audit verify`"
            ) from None
        return (entry.seq, entry.hash)

    def append(self, type: str, **fields: Any) -> Entry:
        """Write one entry and fsync it; when this returns, the entry survives a power loss.

        Any write or sync failure raises AuditError and leaves the log refusing further appends,
        so nothing can be deleted that the log did not record.
        """
        if self._fd is None:
            raise RuntimeError("the audit log is not open")
        if self._failure is not None:
            raise AuditError(
                f"the audit log {self.path} failed earlier ({self._failure}); "
                "nothing more may be deleted until it can be written"
            )
        line = self._encode(type, fields)
        fd = self._fd
        try:
            size_before = os.fstat(fd).st_size
            written = os.write(fd, line)
            if written != len(line):
                _drop_partial_line(fd, size_before)
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)")
            os.fsync(fd)
        except OSError as exc:
            self._failure = exc.strerror or str(exc)
            raise AuditError(
                f"cannot write the audit log {self.path}: {self._failure}; "
                "nothing was deleted after this point"
            ) from None
        entry = _parse_line(line[:-1])
        self._head = (entry.seq, entry.hash)
        return entry

    def _encode(self, type: str, fields: dict[str, Any]) -> bytes:
        if not isinstance(type, str) or not type:
            raise TypeError("an audit entry needs a non-empty text type")
        reserved = RESERVED.intersection(fields)
        if reserved:
            raise TypeError(f"audit fields {sorted(reserved)} are reserved for the chain")
        seq, prev = self._head[0] + 1, self._head[1]
        obj: dict[str, Any] = {"seq": seq, "ts": _utc_text(datetime.now(UTC)), "type": type}
        obj.update((key, _json_safe(value, key)) for key, value in fields.items())
        obj["prev"] = prev
        try:
            obj["hash"] = hashlib.sha256(canonical(obj)).hexdigest()
            line = (_line_text(obj) + "\n").encode()
        except UnicodeEncodeError:
            raise TypeError("audit fields must be valid Unicode text") from None
        if len(line) > MAX_LINE:
            raise ValueError(f"audit entry of {len(line)} bytes; entries hold counts, not lists")
        return line

    def close(self) -> None:
        """Release the lock and the file. Every entry was already synced by `append`."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        # Nothing unsynced can be lost here: each append fsyncs before it returns.
        with contextlib.suppress(OSError):
            os.close(fd)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _drop_partial_line(fd: int, size_before: int) -> None:
    """Best effort: cut our own half-written line, so the log stays verifiable and reopenable.

    We hold the lock, so the bytes after `size_before` are ours. On an append-only (chattr +a)
    file this fails, and the next open reports the incomplete line instead.
    """
    try:
        os.ftruncate(fd, size_before)
        os.fsync(fd)
    except OSError:
        pass
