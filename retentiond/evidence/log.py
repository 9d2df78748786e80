"""The Löschprotokoll: an append-only, hash-chained JSON Lines log of every deletion.

Each line is one entry. Its `hash` is the SHA-256 of the canonical JSON of the entry without
`hash`, and its `prev` is the hash of the entry before (GENESIS for the first), so changing,
removing or reordering any entry breaks the chain at a line `verify` can name.

Safety rule 3 rests on this module: `append` returns only once the line is on disk (fsync), and
raises AuditError instead when it cannot be; after a failed append the log refuses further
appends, so the engine cannot delete anything the log did not record. The log holds category
level evidence only (safety rule 6), so paths are refused outright.

Signed checkpoints: a `checkpoint` entry carries an Ed25519 signature over the seq and hash of
the entry before it. The hash commits to every earlier entry, so one signature seals the whole
log up to that point; the engine writes one after the last entry of every run (`Signer`,
`AuditLog.checkpoint`). `check_log` verifies the chain, the signatures, and that no run lost its
checkpoint. The format is described for other verifiers in docs/audit-log.md.

Rotation: `AuditLog.rotate_if_due` renames a full (or last year's) file to `<path>.<N>` and starts
`<path>` with a `continued` entry that carries the previous file's name, last seq and hash; seq
and prev simply go on, so the chain runs unbroken through all files. `verify`, `read_entries`
and `check_log` read `<path>.1`, `<path>.2`, ... then `<path>`, and name a missing or misplaced
file.

Interrupted writes: a power loss can leave the log ending in a torn last line, a prefix of the
entry being written (or zeros the filesystem had not filled yet): no newline, not complete JSON.
That line was never synced, so the entry it began never counted (an intent whose batch was not
applied, or a batch result the next run reconciles). `verify` reports it apart from damage; the
writer, on `open`, moves its bytes to a side file `<path>.torn-<UTC time>` and records their
count and SHA-256 in a `log_repaired` entry, so the chain goes on from the last complete entry
and nothing is lost. Anything else at the end (a complete line that fails its hash, a line
without its newline that is complete JSON) stays damage that a person must look at.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import fnmatch
import glob
import hashlib
import json
import math
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path, PurePath
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, Self

import structlog

from retentiond import safefiles
from retentiond.errors import AuditError

if TYPE_CHECKING:
    # Imported where keys are used: cryptography's OpenSSL is about 10 MiB of resident memory
    # that a daemon without audit.signing_key never needs.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

GENESIS = "0" * 64
RESERVED = frozenset({"seq", "ts", "type", "prev", "hash"})
CHECKPOINT = "checkpoint"  # a signature over the entry before it
CONTINUED = "continued"  # the first entry of a file that goes on from a rotated one
LOG_REPAIRED = "log_repaired"  # a torn last line was moved aside before this entry
RUN_ENDS = frozenset({"run_finished", "run_refused", "run_failed"})  # each gets a checkpoint
CHECKPOINT_FIELDS = ("signed_seq", "signed_hash", "key_fingerprint", "signature")
# The systemd credential name (LoadCredential=signing-key:...) preferred over audit.signing_key.
CREDENTIAL_NAME = "signing-key"
# Entries are a few hundred bytes; the cap keeps reading a damaged file bounded in memory.
MAX_LINE = 1024 * 1024
_TAIL_CHUNK = 64 * 1024
_MAX_KEY_FILE = 64 * 1024
_HASH = re.compile(r"[0-9a-f]{64}")
_OPEN_ATTEMPTS = 5
_TORN_MARK = ".torn-"  # side files: <path>.torn-<UTC time>, never a rotated file's name
_UNRECORDED = ".unrecorded"  # a side file whose log_repaired entry is not written yet
_TORN_REASON = "incomplete last line"

log = structlog.get_logger()


def _utcnow() -> datetime:
    return datetime.now(UTC)


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
    """The result of checking a whole log: intact, or where and why the chain first breaks.

    `broken_at` is the line in `broken_file` (a base name: the log or one of its rotated files).
    `begins_after` names the file the oldest one present continues from, when that file is gone
    (rotated files removed after their retention period): the entries in it cannot be checked.
    """

    ok: bool
    entries: int
    head: tuple[int, str]
    broken_at: int | None
    broken_seq: int | None
    reason: str | None
    files: tuple[str, ...] = ()
    broken_file: str | None = None
    begins_after: str | None = None
    torn_tail: TornTail | None = None  # an incomplete last line after the intact entries


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
            f"the last line is incomplete ({_count(self.bytes, 'byte')} at {self.file}:"
            f"{self.line}, likely a power loss while it was written); the next run moves it "
            "aside and records that in the log"
        )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


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


def json_safe(value: Any, where: str) -> Any:
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
        return [json_safe(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise TypeError(f"audit field {where}: dictionary keys must be strings")
        return {key: json_safe(item, f"{where}.{key}") for key, item in value.items()}
    raise TypeError(f"audit field {where}: {type(value).__name__} is not JSON-serialisable")


class _Broken(Exception):
    """Why a line fails verification; `line` and `file` are filled in by the reader."""

    def __init__(self, reason: str, seq: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.seq = seq
        self.line = 0
        self.file: str | None = None


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
    except (ValueError, RecursionError):
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _rotation_number(path: Path, name: str) -> int | None:
    """N for a file named `<path>.<N>` (N = 1, 2, ...; no leading zeros), else None."""
    prefix = path.name + "."
    suffix = name[len(prefix) :] if name.startswith(prefix) else ""
    if suffix.isascii() and suffix.isdigit() and not suffix.startswith("0"):
        return int(suffix)
    return None


def _rotated(path: Path) -> list[tuple[int, Path]]:
    """The rotated files `<path>.<N>` in the folder, ordered by N."""
    folder = path.parent
    try:
        children = list(folder.iterdir())
    except OSError as exc:
        raise AuditError(f"cannot list the audit folder {folder}: {exc.strerror}") from None
    found = []
    for child in children:
        number = _rotation_number(path, child.name)
        if number is not None:
            found.append((number, child))
    return sorted(found)


def _same_file(path: Path, info: os.stat_result) -> bool:
    try:
        mine = path.stat()
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (info.st_dev, info.st_ino)


@dataclass
class _WalkState:
    """What a walk learned besides the entries: the files, and where the log begins."""

    files: list[str] = field(default_factory=list)
    begins_after: str | None = None
    torn: TornTail | None = None


def _walk(path: Path, state: _WalkState) -> Iterator[tuple[str, int, Entry]]:
    """Yield (file name, line, entry) for each intact entry, oldest file first; raise _Broken
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
        files = [file for _, file in _rotated(path) if not _same_file(file, info)]
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
                    if last and _cut_short(raw):
                        if line == 1 and several:
                            torn_only = _Broken(
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
                            raise _Broken(
                                f"a continued entry inside {file.name}, not at its start: "
                                "log files were joined",
                                entry.seq,
                            )
                        _check_link(entry, prev_seq, prev_hash)
                    except _Broken as broken:
                        broken.line, broken.file = line, file.name
                        raise
                    yield file.name, line, entry
                    prev_seq, prev_hash = entry.seq, entry.hash
                if line == 0 and several:
                    empty = _Broken(
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
            raise _Broken(f"line longer than {MAX_LINE} bytes")
        if _is_json(raw):
            raise _Broken(
                "the last line has no newline, yet is complete JSON, so no write was cut short "
                "there: retentiond ends every line with a newline; the line was edited, or "
                "lost exactly its newline"
            )
        raise _Broken(
            "incomplete last line in a rotated file (a file is complete when it is rotated): "
            "it was cut or edited"
        )
    return _parse_line(raw[:-1])


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return True


def _cut_short(raw: bytes) -> bool:
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
    state: _WalkState,
) -> tuple[int, str]:
    """Check the first entry of a file after the first (or a first file that continues a
    removed one); return the (seq, hash) the entry must link to."""
    name = files[index].name
    if entry.type != CONTINUED:
        before = files[index - 1].name
        raise _Broken(
            f"{name} does not start with a continued entry, so it does not go on from "
            f"{before}: log files were replaced or renamed",
            entry.seq,
        )
    named = entry.fields.get("previous_file")
    previous_seq = entry.fields.get("previous_seq")
    previous_hash = entry.fields.get("previous_hash")
    if not (isinstance(named, str) and _is_int(previous_seq) and isinstance(previous_hash, str)):
        raise _Broken(
            "a continued entry without previous_file, previous_seq and previous_hash", entry.seq
        )
    if previous_seq != entry.seq - 1 or previous_hash != entry.prev:
        raise _Broken("the continued entry contradicts its own seq and prev", entry.seq)
    if index == 0:
        if any(file.name == named for file in files):
            raise _Broken(
                f"{name} goes on from {named}, which is here too, but not before it: "
                "log files were renamed or reordered",
                entry.seq,
            )
        state.begins_after = named
        return previous_seq, previous_hash
    before = files[index - 1].name
    if named != before:
        if any(file.name == named for file in files):
            raise _Broken(
                f"{name} goes on from {named}, but the file before it is {before}: "
                "log files were renamed or reordered",
                entry.seq,
            )
        raise _Broken(
            f"{named} is missing: {name} goes on from it (after entry {previous_seq}), but "
            f"the file before it here is {before}",
            entry.seq,
        )
    if (previous_seq, previous_hash) != (prev_seq, prev_hash):
        raise _Broken(
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
    return [file for _, file in _rotated(path) if not _same_file(file, info)] + [path]


def verify(path: Path) -> Verification:
    """Check the whole chain, through every rotated file, in one streaming pass; report the
    first broken line, if any. Signatures are `check_log`'s job."""
    state = _WalkState()
    count, head = 0, (0, GENESIS)
    try:
        for _, _, entry in _walk(path, state):
            count, head = count + 1, (entry.seq, entry.hash)
    except _Broken as broken:
        return Verification(
            False,
            count,
            head,
            broken.line,
            broken.seq,
            broken.reason,
            tuple(state.files),
            broken.file,
            state.begins_after,
        )
    return Verification(
        True,
        count,
        head,
        None,
        None,
        None,
        tuple(state.files),
        None,
        state.begins_after,
        state.torn,
    )


def read_entries(path: Path) -> Iterator[Entry]:
    """Yield the entries in order, through every rotated file, checking the chain as it goes.

    A report must not quietly skip a damaged part, so the first broken line raises AuditError
    after every intact entry before it was yielded. An incomplete last line (a power loss) is
    no entry and no damage: reading ends before it.
    """
    try:
        for _, _, entry in _walk(path, _WalkState()):
            yield entry
    except _Broken as broken:
        raise AuditError(
            f"the audit log {path} is broken at line {broken.line} of {broken.file} "
            f"({broken.reason}); run `retentiond audit verify`"
        ) from None


# --- keys and signatures -----------------------------------------------------------------------


class SigningKeyError(AuditError):
    """The signing key cannot be used; a run that should be signed is failed instead."""


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, in hex: how entries and people name a key."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def signed_message(seq: int, hash: str, key_fingerprint: str) -> bytes:
    """The bytes a checkpoint's signature is over."""
    return canonical({"seq": seq, "hash": hash, "fingerprint": key_fingerprint})


class Signer:
    """An Ed25519 private key that signs checkpoints. Read it with `from_file`/`from_config`."""

    def __init__(self, key: Ed25519PrivateKey, source: Path | None = None) -> None:
        self._key = key
        self.source = source
        self.fingerprint = fingerprint(key.public_key())

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        """Read a PEM (PKCS#8, unencrypted) Ed25519 private key.

        A key that users other than its owner may read or change is refused: never sign with a
        key others could have copied.
        """
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SigningKeyError(
                f"the signing key {path} does not exist; create one with "
                "`retentiond audit keygen` or correct audit.signing_key"
            ) from None
        except OSError as exc:
            raise SigningKeyError(f"cannot read the signing key {path}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SigningKeyError(f"the signing key {path} is not a regular file")
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o077:
                raise SigningKeyError(
                    f"the signing key {path} has mode {mode:04o}: users other than its owner may "
                    "read or change it, so it is not used and nothing is signed or deleted. "
                    f"Run `chmod 600 {path}` (or hand it to the service with LoadCredential=, "
                    "see docs/audit-log.md); if others could read it, treat it as exposed: "
                    "create a new key and give the DPO the new public key"
                )
            data = os.read(fd, _MAX_KEY_FILE + 1)
        except OSError as exc:
            raise SigningKeyError(f"cannot read the signing key {path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise SigningKeyError(
                f"the signing key {path} is not an unencrypted PEM private key; create one with "
                "`retentiond audit keygen`"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(
                f"the signing key {path} is not an Ed25519 key; create one with "
                "`retentiond audit keygen`"
            )
        return cls(key, path)

    @classmethod
    def from_config(cls, configured: Path) -> Signer:
        """The service's key: the systemd credential `signing-key` when the service has one
        ($CREDENTIALS_DIRECTORY, from LoadCredential=signing-key:<file>), else `configured`
        (audit.signing_key), read directly, e.g. by root running `run --once` from a shell."""
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials:
            candidate = Path(credentials) / CREDENTIAL_NAME
            if candidate.is_file():
                return cls.from_file(candidate)
        return cls.from_file(configured)

    def sign(self, seq: int, hash: str) -> dict[str, Any]:
        """The fields of a checkpoint entry that signs entry `seq` with hash `hash`."""
        signature = self._key.sign(signed_message(seq, hash, self.fingerprint))
        return {
            "signed_seq": seq,
            "signed_hash": hash,
            "key_fingerprint": self.fingerprint,
            "signature": base64.b64encode(signature).decode("ascii"),
        }

    def verify_key(self) -> VerifyKey:
        return VerifyKey(self._key.public_key(), self.fingerprint)


@dataclass(frozen=True)
class VerifyKey:
    """A public key that checks checkpoints (the one `retentiond audit keygen` gave the DPO)."""

    key: Ed25519PublicKey
    fingerprint: str

    @classmethod
    def from_pem(cls, data: bytes, source: str = "the public key") -> VerifyKey:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise AuditError(
                f"{source} is not a PEM public key (the .pub file of `retentiond audit keygen`)"
            ) from None
        if not isinstance(key, Ed25519PublicKey):
            raise AuditError(f"{source} is not an Ed25519 public key")
        return cls(key, fingerprint(key))

    @classmethod
    def from_file(cls, path: Path) -> VerifyKey:
        try:
            with Path(path).open("rb") as file:
                data = file.read(_MAX_KEY_FILE + 1)
        except OSError as exc:
            raise AuditError(f"cannot read the public key {path}: {exc.strerror}") from None
        return cls.from_pem(data, f"{path}")

    def verify(self, seq: int, hash: str, signature: str) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            raw = base64.b64decode(signature.encode("ascii"), validate=True)
            self.key.verify(raw, signed_message(seq, hash, self.fingerprint))
        except (InvalidSignature, binascii.Error, UnicodeEncodeError, ValueError):
            return False
        return True

    def pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def generate_key_pair(out_dir: Path, name: str = "retentiond") -> tuple[Path, Path, str]:
    """Write `<name>.key` (private, PKCS#8 PEM, mode 0600) and `<name>.pub` (public, 0644) in
    `out_dir` (created 0700 if missing); return both paths and the fingerprint.

    Never overwrites: a key that signed checkpoints must stay, or its signatures cannot be
    checked against the public key the DPO holds.
    """
    if not name or "/" in name or name.startswith(".") or name != name.strip():
        raise SigningKeyError(f"key name {name!r}: use a plain file name such as 'retentiond'")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise SigningKeyError(f"cannot create the folder {out_dir}: {exc.strerror}") from None
    private, public = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = VerifyKey(key.public_key(), "").pem()
    try:
        with safefiles.folder(out_dir) as folder:
            _write_new(folder, private, private_pem, 0o600)
            try:
                _write_new(folder, public, public_pem, 0o644)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(private.name, dir_fd=folder)
                raise
    except SigningKeyError:
        raise
    except OSError as exc:
        raise SigningKeyError(f"cannot use the folder {out_dir}: {exc.strerror}") from None
    return private, public, fingerprint(key.public_key())


def _write_new(folder: int, path: Path, data: bytes, mode: int) -> None:
    """The key file, whole, in the opened folder; never over an existing file or link."""
    try:
        safefiles.write_new(folder, path.name, data, mode)
    except FileExistsError:
        raise SigningKeyError(
            f"{path} already exists; keygen never overwrites a key (its checkpoints "
            "could no longer be checked): choose another --name or --out-dir"
        ) from None
    except OSError as exc:
        raise SigningKeyError(f"cannot write {path}: {exc.strerror}") from None


# --- the full check: chain, checkpoints, signatures, expected heads ------------------------------


@dataclass(frozen=True)
class Problem:
    """One reason the log is not intact. `kind`: chain, checkpoint, order, signature, key,
    missing_checkpoint, no_checkpoints, head; with `strict`, also unsigned_tail and torn_tail
    (what an interrupted run left for the next one to finish, otherwise warnings)."""

    kind: str
    message: str
    seq: int | None = None
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        if self.file is not None and self.line:
            return f"{self.file}:{self.line}: {self.message}"
        return self.message


@dataclass(frozen=True)
class LogCheck:
    """What `check_log` found. `ok` means: chain intact, every checkpoint in place and (when
    keys were given) validly signed by one of them, every expected head present; with `strict`
    also nothing left unsigned after the last checkpoint and no incomplete last line."""

    chain: Verification
    checkpoints: int
    valid_signatures: int  # checkpoints whose signature one of the given keys confirmed
    signatures_checked: bool  # keys were given
    last_checkpoint: Entry | None
    unsigned_tail: int  # entries after the last checkpoint (a run in progress or interrupted)
    problems: tuple[Problem, ...]
    warnings: tuple[str, ...]
    torn_tail: TornTail | None = None  # an incomplete last line (chain.torn_tail)

    @property
    def ok(self) -> bool:
        return not self.problems


class _Checkpoints:
    """Checks the checkpoints while the entries stream past, in log order."""

    def __init__(self, keys: Sequence[VerifyKey], heads: Sequence[tuple[int, str]]) -> None:
        self.keys = {key.fingerprint: key for key in keys}
        self.heads: dict[int, set[str]] = {}
        for seq, hash in heads:
            self.heads.setdefault(seq, set()).add(hash)
        self.seen_heads: set[int] = set()
        self.problems: list[Problem] = []
        self.count = 0
        self.valid = 0
        self.last: Entry | None = None
        self.pending: tuple[str, int, Entry] | None = None  # a run end awaiting its checkpoint
        self.tail = 0
        self.first_unsigned: tuple[str, int, Entry] | None = None
        self.tail_runs = 0  # entries of runs among the tail
        self.ended_unsigned = False  # the tail holds a run end that could not be signed
        self.run_entries = 0

    def problem(self, kind: str, message: str, where: tuple[str, int, Entry] | None) -> None:
        if where is None:
            self.problems.append(Problem(kind, message))
        else:
            file, line, entry = where
            self.problems.append(Problem(kind, message, entry.seq, file, line))

    def entry(self, file: str, line: int, entry: Entry) -> None:
        where = (file, line, entry)
        expected = self.heads.get(entry.seq)
        if expected is not None:
            self.seen_heads.add(entry.seq)
            for hash in sorted(expected - {entry.hash}):
                self.problem(
                    "head",
                    f"entry {entry.seq} has hash {entry.hash}, not the expected head {hash}: "
                    "the log was rewritten after that head was copied",
                    where,
                )
        if entry.type == CHECKPOINT:
            self.checkpoint(where)
            return
        self.tail += 1
        if self.first_unsigned is None:
            self.first_unsigned = where
        if "run_id" not in entry.fields:
            return  # not part of a run: a config reload, a repair, the start of a rotated file
        self.run_entries += 1
        self.tail_runs += 1
        if self.pending is not None:
            self.missing(self.pending)
            self.pending = None
        if entry.type in RUN_ENDS:
            if entry.fields.get("unsigned") is True:
                # A run failed because its key could not be used, so no checkpoint could
                # follow it; the next checkpoint signs it along with everything before.
                self.ended_unsigned = True
            else:
                self.pending = where

    def missing(self, pending: tuple[str, int, Entry]) -> None:
        if self.last is None:
            return  # before the first checkpoint: signing was not set up yet
        entry = pending[2]
        rule = entry.fields.get("rule")
        self.problem(
            "missing_checkpoint",
            f"missing checkpoint after entry {entry.seq} ({entry.type}"
            + (f" of rule {rule}" if isinstance(rule, str) else "")
            + "): every run ends with a signed checkpoint, so it was removed, or it could not "
            "be written (see the daemon log)",
            pending,
        )

    def checkpoint(self, where: tuple[str, int, Entry]) -> None:
        entry = where[2]
        self.count += 1
        previous, self.last = self.last, entry
        self.pending, self.tail, self.first_unsigned, self.tail_runs = None, 0, None, 0
        self.ended_unsigned = False
        signed_seq, signed_hash, key_fingerprint, signature = (
            entry.fields.get(name) for name in CHECKPOINT_FIELDS
        )
        if not (
            _is_int(signed_seq)
            and isinstance(signed_hash, str)
            and isinstance(key_fingerprint, str)
            and isinstance(signature, str)
        ):
            self.problem(
                "checkpoint",
                f"checkpoint {entry.seq} lacks signed_seq, signed_hash, key_fingerprint or "
                "signature",
                where,
            )
            return
        assert isinstance(signed_seq, int) and isinstance(signed_hash, str)  # for mypy
        previous_signed = previous.fields.get("signed_seq") if previous is not None else None
        if isinstance(previous_signed, int) and signed_seq <= previous_signed:
            self.problem(
                "order",
                f"checkpoint {entry.seq} is out of order: it signs entry {signed_seq}, but "
                f"checkpoint {previous.seq if previous else '?'} before it already signed "
                f"entry {previous_signed}",
                where,
            )
        elif signed_seq != entry.seq - 1:
            self.problem(
                "checkpoint",
                f"checkpoint {entry.seq} signs entry {signed_seq}, not the entry just before "
                f"it ({entry.seq - 1}): entries were inserted or removed before it, or the "
                "checkpoint was moved (and the chain recomputed)",
                where,
            )
        elif signed_hash != entry.prev:
            self.problem(
                "checkpoint",
                f"checkpoint {entry.seq} signs hash {signed_hash} for entry {signed_seq}, but "
                f"that entry's hash is {entry.prev}: entries before it were changed (and the "
                "chain recomputed)",
                where,
            )
        if not self.keys:
            return
        key = self.keys.get(key_fingerprint)
        if key is None:
            given = ", ".join(sorted(self.keys))
            self.problem(
                "key",
                f"checkpoint {entry.seq} was signed by another key ({key_fingerprint}), not by "
                f"the given public key ({given})",
                where,
            )
        elif not key.verify(signed_seq, signed_hash, signature):
            self.problem(
                "signature",
                f"checkpoint {entry.seq}: bad signature: the checkpoint was changed or forged",
                where,
            )
        else:
            self.valid += 1

    def unsigned(self) -> str:
        """What the entries after the last checkpoint are, and who signs them."""
        one = self.tail == 1
        entries, verb = f"{self.tail} entr{'y' if one else 'ies'}", "is" if one else "are"
        text = f"{entries} after the last signed checkpoint {verb} hash-chained but not yet signed"
        if self.pending is not None or self.ended_unsigned:
            return (
                f"{text}: the run that wrote them ended without its checkpoint (it was "
                "interrupted, or could not use the signing key); the next run signs them"
            )
        if self.tail_runs:
            return (
                f"{text}: a run is in progress (its checkpoint will sign them) or was "
                "interrupted (the next run signs them)"
            )
        return f"{text}: written between runs; the next run signs them"

    def finish(self, chain: Verification, first_seq: int | None, strict: bool) -> list[str]:
        """The checks that need the whole log; returns the warnings."""
        warnings: list[str] = []
        if chain.begins_after is not None:
            warnings.append(
                f"the log begins at entry {first_seq}, going on from {chain.begins_after}, "
                "which is not here (removed after its retention period?); entries before "
                "it cannot be checked"
            )
        if not chain.ok:
            return warnings  # the chain problem is reported; the rest would only guess
        last_seq = chain.head[0]
        for seq in sorted(set(self.heads) - self.seen_heads):
            if seq > last_seq:
                self.problem(
                    "head",
                    f"the log was cut: it ends at entry {last_seq}, but the expected head is "
                    f"entry {seq}",
                    None,
                )
            else:
                self.problem(
                    "head",
                    f"the expected head entry {seq} is not in the files here (the log begins "
                    f"at entry {first_seq})",
                    None,
                )
        if self.count and self.tail:
            # A kill between a run's last entry and its checkpoint leaves exactly this, and the
            # next run signs it first; a checkpoint removed from the end looks the same, which
            # only a head copied off the host (--head) can tell.
            if strict:
                self.problem("unsigned_tail", self.unsigned(), self.first_unsigned)
            else:
                warnings.append(self.unsigned())
        torn = chain.torn_tail
        if torn is not None:
            if strict:
                self.problems.append(
                    Problem("torn_tail", torn.describe(), None, torn.file, torn.line)
                )
            else:
                warnings.append(torn.describe())
        if self.count == 0 and self.run_entries:
            if self.keys:
                self.problem(
                    "no_checkpoints",
                    "no checkpoints: the log was never signed or the checkpoints were removed",
                    None,
                )
            else:
                warnings.append("no checkpoints: the log is not signed (audit.signing_key)")
        elif self.count and not self.keys:
            warnings.append(
                "signatures not checked: give the public key (--public-key) to check them"
            )
        return warnings


def check_log(
    path: Path,
    keys: Sequence[VerifyKey] = (),
    heads: Sequence[tuple[int, str]] = (),
    *,
    strict: bool = False,
) -> LogCheck:
    """Check the chain through every file, every checkpoint's place and, with `keys`, its
    signature; that each run (after signing began) ends with a checkpoint, or is the last and
    still unsigned; and that each expected head (seq, hash), copied off the host earlier, is
    still in the log.

    What an interrupted run leaves for the next one (entries after the last checkpoint, an
    incomplete last line) is a warning, or with `strict` a problem."""
    state = _WalkState()
    checker = _Checkpoints(keys, heads)
    count, head, first_seq = 0, (0, GENESIS), None
    chain_problem: Problem | None = None
    broken: _Broken | None = None
    try:
        for file, line, entry in _walk(path, state):
            if first_seq is None:
                first_seq = entry.seq
            checker.entry(file, line, entry)
            count, head = count + 1, (entry.seq, entry.hash)
    except _Broken as error:
        broken = error
        where = "" if error.seq is None else f" (entry {error.seq})"
        chain_problem = Problem(
            "chain", f"chain broken{where}: {error.reason}", error.seq, error.file, error.line
        )
    chain = Verification(
        broken is None,
        count,
        head,
        broken.line if broken else None,
        broken.seq if broken else None,
        broken.reason if broken else None,
        tuple(state.files),
        broken.file if broken else None,
        state.begins_after,
        state.torn,
    )
    warnings = checker.finish(chain, first_seq, strict)
    problems = list(checker.problems)
    if chain_problem is not None:
        problems.append(chain_problem)
    return LogCheck(
        chain,
        checker.count,
        checker.valid,
        bool(keys),
        checker.last,
        checker.tail,
        tuple(problems),
        tuple(warnings),
        state.torn,
    )


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


class AuditWriter(Protocol):
    """What a run needs of the log's writer: an `AuditLog`, or in the daemon's run process a
    proxy that has the daemon (the one writer, which holds the lock) append each entry."""

    path: Path

    @property
    def head(self) -> tuple[int, str]: ...

    @property
    def last_entry(self) -> Entry | None: ...

    def append(self, type: str, **fields: Any) -> Entry: ...

    def append_unsynced(self, type: str, **fields: Any) -> Entry: ...

    def checkpoint(self, signer: Signer) -> Entry: ...

    def rotate_if_due(self) -> Entry | None: ...


class _StaleHead(Exception):
    """A checkpoint was signed for a head that another append has moved on from meanwhile."""


class AuditLog:
    """The writer. Holds the file open with an exclusive lock so only one retentiond appends.

    Rotation is off unless asked for: `rotate_bytes` starts a new file once the current one is
    larger, `rotate_yearly` once the last entry is from another (UTC) year than `clock()`. It
    happens only in `rotate_if_due`, which the engine calls before the first entry of a run,
    so a run never spans two files. `clock` also stamps the entries (tests fake it).

    `open` repairs what a power loss can leave: a torn last line is moved aside and recorded
    (`repairs` holds the `log_repaired` entries it wrote, for the caller to report).
    """

    def __init__(
        self,
        path: Path,
        *,
        rotate_bytes: int | None = None,
        rotate_yearly: bool = False,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if rotate_bytes is not None and rotate_bytes < 1:
            raise ValueError("rotate_bytes must be positive")
        self.path = Path(path)
        self.rotate_bytes = rotate_bytes
        self.rotate_yearly = rotate_yearly
        self._clock = clock
        self._fd: int | None = None
        self._folder_fd: int | None = None  # every name beside the log is resolved in it
        self._head = (0, GENESIS)
        self._last: Entry | None = None
        self._failure: str | None = None
        self.repairs: list[Entry] = []
        # Appends, checkpoints and rotation from several threads (the daemon) stay in order.
        self._mutex = threading.RLock()

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last entry, or (0, GENESIS) for an empty log."""
        return self._head

    @property
    def last_entry(self) -> Entry | None:
        """The last entry of the log (None when empty), e.g. to see whether it is signed."""
        return self._last

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

        Only the last line is checked (the full chain is `retentiond audit verify`'s job). A torn
        last line (a power loss during a write) is moved aside to `<path>.torn-<UTC time>` and
        a `log_repaired` entry records its size and SHA-256; any other damage at the end is
        refused: appending after it would bury it.

        The log is never opened through a symlink, and a folder or log that others may write
        to (or, for root, that another user owns) is refused: see `safefiles`.
        """
        if self._fd is not None:
            raise RuntimeError("the audit log is already open")
        self._folder_fd = self._open_folder()
        try:
            fd, unrecorded = self._open_current()
        except BaseException:
            self._close_folder()
            raise
        self._head = (self._last.seq, self._last.hash) if self._last else (0, GENESIS)
        self._fd = fd
        self._failure = None
        self.repairs = []
        try:
            for side_file in unrecorded:
                self._record_moved_tail(side_file)
        except BaseException:
            self.close()
            raise

    def _open_folder(self) -> int:
        folder = self.path.absolute().parent
        try:
            return safefiles.open_guarded_folder(folder)
        except FileNotFoundError:
            raise AuditError(
                f"audit folder {folder} does not exist; create it or change audit.path"
            ) from None
        except safefiles.UnsafePlace as unsafe:
            raise AuditError(f"refusing to write the audit log: {unsafe.strerror}") from None
        except OSError as exc:
            raise AuditError(f"cannot open the audit folder {folder}: {exc.strerror}") from None

    def _open_current(self) -> tuple[int, list[str]]:
        """The log, opened and locked, after repairs; and the side files still to record."""
        for _ in range(_OPEN_ATTEMPTS):
            fd = self._open_file()
            try:
                self._lock_file(fd)
                if not self._is_current(fd):
                    # Rotated away between our open and our lock: open the new file instead.
                    os.close(fd)
                    continue
                if self._rotates or self._exists(self._staging_name):
                    self._repair_rotation(fd)
                unrecorded = self._move_torn_tail(fd)
                self._last = self._read_last(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            return fd, unrecorded
        raise AuditError(
            f"the audit log {self.path} was replaced {_OPEN_ATTEMPTS} times while it was "
            "opened; is another program rotating it?"
        )

    @property
    def _folder(self) -> int:
        if self._folder_fd is None:
            raise RuntimeError("the audit log is not open")
        return self._folder_fd

    def _exists(self, name: str) -> bool:
        try:
            self._lstat(name)
        except FileNotFoundError:
            return False
        return True

    def _close_folder(self) -> None:
        fd, self._folder_fd = self._folder_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def sign_tail(self, signer: Signer) -> Entry | None:
        """Sign what the log ends with unless a checkpoint already does (entries an interrupted
        run, a failed key or a repair left unsigned); return the checkpoint written, if any.
        For the start of a run, or of the daemon, with a usable key."""
        with self._mutex:
            last = self._last
            if last is None or last.type == CHECKPOINT:
                return None
            return self.checkpoint(signer)

    def _move_torn_tail(self, fd: int) -> list[str]:
        """Move a torn last line into a new side file and cut the log after its last complete
        line; return the side files whose `log_repaired` entry is still to be written.

        Crash-safe in this order: the side file is written and synced under a name ending in
        `.unrecorded`, the log is cut and synced, the entry is appended, the side file gets its
        final name. An open after a crash in between finishes what is left: a side file whose
        bytes the log still ends with is a redundant copy and goes; any other is recorded.
        """
        try:
            unrecorded = self._unrecorded_side_files()
            size = os.fstat(fd).st_size
            found = _find_torn_tail(fd, size)
            if found is None:
                return unrecorded
            offset, torn = found
            if offset > 0:
                _parse_line(_last_line(fd, offset))  # one torn line, not more damage before it
            elif _rotated(self.path):
                raise AuditError(
                    f"the audit log {self.path} holds only an incomplete line, but after a "
                    "rotation it starts with a complete continued entry: it was emptied or "
                    "replaced; run `retentiond audit verify`"
                )
            for side_file in list(unrecorded):
                if torn.startswith(safefiles.read(self._folder, side_file, len(torn) + 1)):
                    os.unlink(side_file, dir_fd=self._folder)
                    unrecorded.remove(side_file)
            side_file = self._write_side_file(fd, torn)
            try:
                os.ftruncate(fd, offset)
                os.fsync(fd)
                os.fsync(self._folder)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(side_file, dir_fd=self._folder)  # the bytes are still in the log
                raise AuditError(
                    f"the audit log {self.path} ends with an incomplete line "
                    f"({_count(len(torn), 'byte')}, likely a power loss while it was written) "
                    f"that cannot be moved aside: {exc.strerror}. Nothing will be deleted until "
                    "it is. If the file is append-only (chattr +a), remove the attribute for "
                    "one run (chattr -a, then retentiond run --once, then chattr +a)"
                ) from None
        except OSError as exc:
            raise AuditError(
                f"cannot move the incomplete last line of the audit log {self.path} aside: "
                f"{exc.strerror}; the audit folder must be writable"
            ) from None
        except _Broken as broken:
            raise AuditError(
                f"the audit log {self.path} ends with damage, not with a write cut short "
                f"({broken.reason}). Nothing will be deleted until a person has looked at it: "
                "run `retentiond audit verify`"
            ) from None
        unrecorded.append(side_file)
        return unrecorded

    def _unrecorded_side_files(self) -> list[str]:
        """Side files a crash left before their `log_repaired` entry was written, oldest first.
        Only regular files: a symlink planted under such a name is not followed."""
        pattern = f"{glob.escape(self.path.name)}{_TORN_MARK}*{_UNRECORDED}"
        try:
            found = sorted(fnmatch.filter(os.listdir(self._folder), pattern))  # noqa: PTH208 - an fd
            return [name for name in found if self._is_regular(name)]
        except OSError:
            return []  # a folder we may not list: there is nothing of ours to finish either

    def _is_regular(self, name: str) -> bool:
        return stat.S_ISREG(self._lstat(name).st_mode)

    def _lstat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self._folder, follow_symlinks=False)

    def _write_side_file(self, log_fd: int, torn: bytes) -> str:
        """Write the torn bytes, synced, to `<path>.torn-<UTC time>.unrecorded` (mode 0600)."""
        stamp = self._clock().astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        for attempt in range(1, 100):
            name = f"{self.path.name}{_TORN_MARK}{stamp}" + (f"-{attempt}" if attempt > 1 else "")
            staged = name + _UNRECORDED
            if self._exists(name):
                continue
            try:
                side_fd = safefiles.create(self._folder, staged, 0o600)
            except FileExistsError:
                continue
            break
        else:
            raise AuditError(f"no free name for a side file of the audit log {self.path}")
        try:
            _copy_owner(log_fd, side_fd)  # the service must be able to finish root's repair
            safefiles.write_all(side_fd, torn)
            os.fsync(side_fd)
        except OSError:
            os.close(side_fd)
            with contextlib.suppress(OSError):
                os.unlink(staged, dir_fd=self._folder)
            raise
        os.close(side_fd)
        os.fsync(self._folder)  # the copy is durable before the log is cut
        return staged

    def _record_moved_tail(self, staged: str) -> None:
        """Append the `log_repaired` entry for a side file (unless a crash came right after
        it was written) and give the side file its final name."""
        final = staged.removesuffix(_UNRECORDED)
        last = self._last
        recorded = (
            last is not None and last.type == LOG_REPAIRED and last.fields.get("moved_to") == final
        )
        if not recorded:
            try:
                size, digest = self._size_and_sha256(staged)
            except OSError as exc:
                raise AuditError(
                    f"cannot read {self.path.with_name(staged)}, the incomplete last line moved "
                    f"aside from the audit log: {exc.strerror}"
                ) from None
            # Counts and a hash only: the bytes themselves stay in the side file.
            entry = self.append(
                LOG_REPAIRED,
                reason=_TORN_REASON,
                removed_bytes=size,
                removed_sha256=digest,
                moved_to=final,
            )
            self.repairs.append(entry)
            log.warning(
                "the deletion log ended with an incomplete line (a power loss while it was "
                "written?): moved aside and recorded",
                removed_bytes=size,
                moved_to=final,
                seq=entry.seq,
            )
        try:
            try:
                os.link(staged, final, src_dir_fd=self._folder, dst_dir_fd=self._folder)
            except FileExistsError:
                if not self._same_name(final, self._lstat(staged)):
                    raise
            os.unlink(staged, dir_fd=self._folder)
            os.fsync(self._folder)
        except OSError as exc:
            raise AuditError(
                f"cannot rename {self.path.with_name(staged)} to {final} after recording it in "
                f"the audit log: {exc.strerror}"
            ) from None

    def _size_and_sha256(self, name: str) -> tuple[int, str]:
        fd = os.open(name, safefiles.READ_FLAGS, dir_fd=self._folder)
        with os.fdopen(fd, "rb") as file:
            digest, size = hashlib.sha256(), 0
            while chunk := file.read(_TAIL_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()

    def _same_name(self, name: str, info: os.stat_result) -> bool:
        """Whether `name` in the log's folder is the file `info` describes (not a symlink)."""
        try:
            mine = self._lstat(name)
        except OSError:
            return False
        return (mine.st_dev, mine.st_ino) == (info.st_dev, info.st_ino)

    @property
    def _rotates(self) -> bool:
        return self.rotate_bytes is not None or self.rotate_yearly

    @property
    def _staging_name(self) -> str:
        return self.path.name + ".rotating"

    def _open_file(self) -> int:
        """The log itself, created if missing; never through a symlink, never a FIFO or a
        device, never a file others may write (`safefiles.problems`)."""
        access = os.O_RDWR | os.O_APPEND
        try:
            try:
                fd = safefiles.create(self._folder, self.path.name, 0o640, access)
            except FileExistsError:
                flags = access | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                fd = os.open(self.path.name, flags, dir_fd=self._folder)
            else:
                try:
                    os.fsync(self._folder)  # a new file is only durable once its folder entry is
                except BaseException:
                    os.close(fd)
                    raise
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise AuditError(
                    f"the audit log {self.path} is a symbolic link; retentiond does not follow "
                    "it: set audit.path to the real file, or remove the link"
                ) from None
            raise AuditError(
                f"cannot open the audit log {self.path} for writing: {exc.strerror}; "
                "check its owner, permissions, attributes (lsattr) and that the filesystem "
                "is writable"
            ) from None
        try:
            self._require_plain_file(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _require_plain_file(self, fd: int) -> None:
        try:
            info = os.fstat(fd)
        except OSError as exc:
            raise AuditError(f"cannot read the audit log {self.path}: {exc.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise AuditError(
                f"the audit log {self.path} is not a regular file; move it away, or set "
                "audit.path to a file"
            )
        found = safefiles.problems(info, self.path, "file")
        if found:
            raise AuditError("refusing to write the audit log: " + "; ".join(found))

    def _lock_file(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AuditError(
                f"another retentiond process is writing {self.path}; wait for it to finish"
            ) from None
        except OSError as exc:
            raise AuditError(f"cannot lock the audit log {self.path}: {exc.strerror}") from None

    def _is_current(self, fd: int) -> bool:
        try:
            mine = os.fstat(fd)
        except OSError as exc:
            raise AuditError(f"cannot read the audit log {self.path}: {exc.strerror}") from None
        return self._same_name(self.path.name, mine)

    def _repair_rotation(self, fd: int) -> None:
        """Undo a rotation a crash interrupted (we hold the lock, so no rotation is running):
        the half-made next file goes, and so does a rotated name still linked to this file."""
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._staging_name, dir_fd=self._folder)
            rotated = _rotated(self.path)
            if rotated and self._same_name(rotated[-1][1].name, os.fstat(fd)):
                os.unlink(rotated[-1][1].name, dir_fd=self._folder)
        except OSError as exc:
            raise AuditError(
                f"cannot repair an interrupted rotation of the audit log {self.path}: "
                f"{exc.strerror}"
            ) from None

    def _read_last(self, fd: int) -> Entry | None:
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return None
            if _pread_exact(fd, 1, size - 1) != b"\n":
                raise AuditError(
                    f"the audit log {self.path} ends with an incomplete entry: a write was "
                    "interrupted (crash, power loss or full disk). Nothing will be deleted "
                    "until it is repaired: run `retentiond audit verify`, keep a copy of the "
                    "file, then remove the incomplete last line"
                )
            return _parse_line(_last_line(fd, size))
        except OSError as exc:
            raise AuditError(f"cannot read the audit log {self.path}: {exc.strerror}") from None
        except _Broken as broken:
            raise AuditError(
                f"the last entry of the audit log {self.path} is damaged ({broken.reason}); "
                "run `retentiond audit verify`"
            ) from None

    def append(self, type: str, **fields: Any) -> Entry:
        """Write one entry and fsync it; when this returns, the entry survives a power loss.

        Any write or sync failure raises AuditError and leaves the log refusing further appends,
        so nothing can be deleted that the log did not record.
        """
        if type == CONTINUED:
            raise TypeError("continued entries start a rotated file; only rotation writes them")
        with self._mutex:
            fd = self._writable_fd()
            if type == CHECKPOINT:
                self._check_checkpoint(fields)
            line = self._encode(type, fields)
            return self._write(fd, line)

    def append_unsynced(self, type: str, **fields: Any) -> Entry:
        """Write one entry whose durability can wait for the next `append`'s fsync, which
        flushes it too. For a batch's result: the next batch's intent (or the run's end) is
        written with fsync before anything more is changed, so one fsync per batch suffices.
        A crash in between loses at most this result, and the next run reconciles the batch.
        """
        if type in (CONTINUED, CHECKPOINT):
            raise TypeError(f"{type} entries are always synced")
        with self._mutex:
            fd = self._writable_fd()
            return self._write(fd, self._encode(type, fields), sync=False)

    def checkpoint(self, signer: Signer) -> Entry:
        """Sign the head and append the signature as a `checkpoint` entry.

        The entry signs the one right before it; if another thread appends meanwhile, the head
        is signed again. Raises AuditError like `append`.
        """
        for _ in range(100):
            seq, head_hash = self.head
            if seq == 0:
                raise ValueError("an empty audit log has nothing to sign")
            entry = self.append_signature(signer.sign(seq, head_hash))
            if entry is not None:
                return entry
        raise AuditError(f"the audit log {self.path} changed while a checkpoint was signed")

    def append_signature(self, fields: dict[str, Any]) -> Entry | None:
        """Append a checkpoint signed elsewhere (`Signer.sign` of the head): the daemon writes
        those of its run processes without reading the key. None when the head has moved on
        since it was signed: sign the new head and try again. Raises AuditError like `append`.
        """
        try:
            return self.append(CHECKPOINT, **fields)
        except _StaleHead:
            return None

    def _check_checkpoint(self, fields: dict[str, Any]) -> None:
        if set(fields) != set(CHECKPOINT_FIELDS):
            raise TypeError(f"a checkpoint has exactly the fields {list(CHECKPOINT_FIELDS)}")
        if (fields["signed_seq"], fields["signed_hash"]) != self._head:
            raise _StaleHead

    def rotate_if_due(self) -> Entry | None:
        """Start a new file if rotation is due; call it only between runs.

        Returns the `continued` entry that starts the new file, or None. On failure (folder not
        writable, `chattr +a` on the file) it raises AuditError and the log goes on in the
        current file, with nothing lost, unless the folder could not be synced after the
        switch: then the log refuses appends like after a failed append.
        """
        with self._mutex:
            fd = self._writable_fd()
            reason = self._rotation_due(fd)
            if reason is None:
                return None
            return self._rotate(fd, reason)

    def _rotation_due(self, fd: int) -> str | None:
        last = self._last
        if last is None:
            return None
        if self.rotate_bytes is not None:
            try:
                size = os.fstat(fd).st_size
            except OSError as exc:
                raise AuditError(f"cannot read the audit log {self.path}: {exc.strerror}") from None
            if size > self.rotate_bytes:
                return "size"
        if self.rotate_yearly:
            year = last.ts[:4]
            if year.isdigit() and int(year) != self._clock().astimezone(UTC).year:
                return "year"
        return None

    def _next_number(self, fd: int) -> int:
        """One more than any rotated file there is or was: names are never reused, even after
        old files were removed, so a `previous_file` always means one file."""
        highest = max((number for number, _ in _rotated(self.path)), default=0)
        data = os.pread(fd, MAX_LINE + 1, 0)
        newline = data.find(b"\n")
        if newline > 0:
            with contextlib.suppress(_Broken):
                first = _parse_line(data[:newline])
                named = first.fields.get("previous_file")
                if first.type == CONTINUED and isinstance(named, str):
                    highest = max(highest, _rotation_number(self.path, named) or 0)
        return highest + 1

    def _rotate(self, fd: int, reason: str) -> Entry:
        """Rename the current file to `<path>.<N>` and start `<path>` with a continued entry.

        `<path>` exists at every moment: the new file is made and locked under a staging name,
        the current file gets its rotated name as a second link, then the new file is renamed
        over `<path>`. A crash in between leaves the staging file and the extra link, which the
        next `open` removes (and readers ignore).
        """
        try:
            number = self._next_number(fd)
        except OSError as exc:
            raise AuditError(f"cannot read the audit log {self.path}: {exc.strerror}") from None
        rotated = self.path.with_name(f"{self.path.name}.{number}")
        seq, prev = self._head
        line = self._encode(
            CONTINUED,
            {
                "previous_file": rotated.name,
                "previous_seq": seq,
                "previous_hash": prev,
                "reason": reason,
            },
        )
        staging, folder = self._staging_name, self._folder
        new_fd: int | None = None
        linked = False
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging, dir_fd=folder)
            new_fd = safefiles.create(folder, staging, 0o640, os.O_RDWR | os.O_APPEND)
            _copy_owner(fd, new_fd)
            fcntl.flock(new_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            safefiles.write_all(new_fd, line)
            os.fsync(new_fd)
            os.link(self.path.name, rotated.name, src_dir_fd=folder, dst_dir_fd=folder)
            linked = True
            os.replace(staging, self.path.name, src_dir_fd=folder, dst_dir_fd=folder)
        except OSError as exc:
            if linked:
                with contextlib.suppress(OSError):
                    os.unlink(rotated.name, dir_fd=folder)
            with contextlib.suppress(OSError):
                os.unlink(staging, dir_fd=folder)
            if new_fd is not None:
                os.close(new_fd)
            raise AuditError(
                f"cannot rotate the audit log {self.path} ({exc.strerror}); it goes on in the "
                "current file and nothing is lost. Rotation needs a writable folder and no "
                "append-only attribute (chattr +a) on the file"
            ) from None
        with contextlib.suppress(OSError):
            os.close(fd)
        self._fd = new_fd
        entry = _parse_line(line[:-1])
        self._head, self._last = (entry.seq, entry.hash), entry
        try:
            os.fsync(folder)
        except OSError as exc:
            # Until the rename is durable, a power loss could bring back the old names: appends
            # to the new file could then be lost, so none are made.
            self._failure = exc.strerror or str(exc)
            raise AuditError(
                f"cannot sync the audit folder after rotating {self.path}: {self._failure}; "
                "nothing was deleted after this point"
            ) from None
        return entry

    def _writable_fd(self) -> int:
        if self._fd is None:
            raise RuntimeError("the audit log is not open")
        if self._failure is not None:
            raise AuditError(
                f"the audit log {self.path} failed earlier ({self._failure}); "
                "nothing more may be deleted until it can be written"
            )
        return self._fd

    def _write(self, fd: int, line: bytes, sync: bool = True) -> Entry:
        try:
            size_before = os.fstat(fd).st_size
            written = os.write(fd, line)
            if written != len(line):
                _drop_partial_line(fd, size_before)
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)")
            if sync:
                os.fsync(fd)
        except OSError as exc:
            self._failure = exc.strerror or str(exc)
            raise AuditError(
                f"cannot write the audit log {self.path}: {self._failure}; "
                "nothing was deleted after this point"
            ) from None
        entry = _parse_line(line[:-1])
        self._head, self._last = (entry.seq, entry.hash), entry
        return entry

    def _encode(self, type: str, fields: dict[str, Any]) -> bytes:
        if not isinstance(type, str) or not type:
            raise TypeError("an audit entry needs a non-empty text type")
        reserved = RESERVED.intersection(fields)
        if reserved:
            raise TypeError(f"audit fields {sorted(reserved)} are reserved for the chain")
        seq, prev = self._head[0] + 1, self._head[1]
        obj: dict[str, Any] = {"seq": seq, "ts": _utc_text(self._clock()), "type": type}
        obj.update((key, json_safe(value, key)) for key, value in fields.items())
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
        self._close_folder()
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        # Nothing unsynced can be lost here: each append fsyncs before it returns.
        with contextlib.suppress(OSError):
            os.close(fd)


def _copy_owner(source_fd: int, target_fd: int) -> None:
    """Give a new log file the owner of the old one (root rotating the service's log must not
    leave it a file it cannot write). Best effort: only root may give files away."""
    with contextlib.suppress(OSError):
        info = os.fstat(source_fd)
        mine = os.fstat(target_fd)
        if (info.st_uid, info.st_gid) != (mine.st_uid, mine.st_gid):
            os.fchown(target_fd, info.st_uid, info.st_gid)


def _find_torn_tail(fd: int, size: int) -> tuple[int, bytes] | None:
    """(offset, bytes) of a torn last line, None when the file ends with a newline; _Broken when
    the end is damaged otherwise (too long for an entry, or complete JSON without a newline)."""
    if size == 0 or _pread_exact(fd, 1, size - 1) == b"\n":
        return None
    start = max(0, size - MAX_LINE - 1)
    data = _pread_exact(fd, size - start, start)
    newline = data.rfind(b"\n")
    torn = data[newline + 1 :]
    if (newline < 0 and start > 0) or len(torn) > MAX_LINE:
        raise _Broken(f"a last line longer than {MAX_LINE} bytes")
    if not _cut_short(torn):
        raise _Broken("a last line without its newline that is complete JSON")
    return start + newline + 1, torn


def _drop_partial_line(fd: int, size_before: int) -> None:
    """Best effort: cut our own half-written line, so the log stays verifiable and reopenable.

    We hold the lock, so the bytes after `size_before` are ours. On an append-only (chattr +a)
    file this fails, and the next open reports the incomplete line (it cannot cut it either).
    """
    try:
        os.ftruncate(fd, size_before)
        os.fsync(fd)
    except OSError:
        pass
