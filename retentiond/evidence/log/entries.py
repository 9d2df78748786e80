"""The deletion log's entries: the line format, its canonical JSON and the hash chain.

Each line is one entry. Its `hash` is the SHA-256 of the canonical JSON of the entry without
`hash`, and its `prev` is the hash of the entry before (GENESIS for the first), so changing,
removing or reordering any entry breaks the chain at a line `verify` can name.

The log holds category level evidence only (safety rule 6), so paths are refused outright
(`json_safe`). The format is described for other verifiers in docs/audit-log.md.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import PurePath
from types import MappingProxyType
from typing import Any

GENESIS = "0" * 64
RESERVED = frozenset({"seq", "ts", "type", "prev", "hash"})
CHECKPOINT = "checkpoint"  # a signature over the entry before it
CONTINUED = "continued"  # the first entry of a file that goes on from a rotated one
LOG_REPAIRED = "log_repaired"  # a torn last line was moved aside before this entry
# The entries that end a run of a rule, with the status each gives the run (None: the entry's
# own `status`).
RUN_END_STATUS: Mapping[str, str | None] = MappingProxyType(
    {"run_finished": None, "run_refused": "refused", "run_failed": "failed"}
)
RUN_ENDS = frozenset(RUN_END_STATUS)  # each gets a checkpoint
ERASURE_END = "erasure_finished"  # the end of an erasure (Art. 17): a run of no rule
CHECKPOINT_FIELDS = ("signed_seq", "signed_hash", "key_fingerprint", "signature")
# Entries are a few hundred bytes; the cap keeps reading a damaged file bounded in memory.
MAX_LINE = 1024 * 1024


@dataclass(frozen=True)
class Entry:
    """One entry of the log, as read back from its line."""

    seq: int
    type: str
    ts: str
    prev: str
    hash: str
    fields: dict[str, Any]


def canonical(obj: dict[str, Any]) -> bytes:
    """The bytes that are hashed: sorted keys, no spaces, UTF-8, so any verifier can recompute them.

    This is Python's json encoding, not RFC 8785; floats are written by their shortest repr.
    """
    text = json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode()


def line_text(obj: dict[str, Any]) -> str:
    """The written form of an entry: compact, keys in writing order, so `tail` reads naturally."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def utc_text(moment: datetime) -> str:
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
        return utc_text(value)
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


class Broken(Exception):
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


def parse_line(raw: bytes) -> Entry:
    """Check one line on its own: well-formed, hash correct, and exactly as retentiond writes it.

    The last check catches edits that keep the parsed value (an escape re-spelled, spaces added),
    so every changed byte is detected, not only those that change a value.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Broken("not valid UTF-8") from None
    if not text:
        raise Broken("empty line")
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        raise Broken("not valid JSON") from None
    if not isinstance(obj, dict):
        raise Broken("not a JSON object")
    seq = obj.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise Broken("missing or non-integer 'seq'")
    for key in ("ts", "type", "prev", "hash"):
        if not isinstance(obj.get(key), str):
            raise Broken(f"missing or non-text {key!r}", seq)
    claimed = obj.pop("hash")
    if hashlib.sha256(canonical(obj)).hexdigest() != claimed:
        raise Broken("hash mismatch: the entry was changed", seq)
    obj["hash"] = claimed
    if line_text(obj) != text:
        raise Broken("not in the form retentiond writes: the line was edited", seq)
    fields = {key: value for key, value in obj.items() if key not in RESERVED}
    return Entry(seq, obj["type"], obj["ts"], obj["prev"], claimed, fields)


def check_link(entry: Entry, prev_seq: int, prev_hash: str) -> None:
    """Check that `entry` follows the entry before it (or starts the chain)."""
    if prev_seq == 0:
        if entry.seq != 1:
            raise Broken(
                f"the first entry has seq {entry.seq}, not 1: entries were removed", entry.seq
            )
        if entry.prev != GENESIS:
            raise Broken("the first entry's prev is not GENESIS: entries were removed", 1)
        return
    if entry.seq != prev_seq + 1:
        raise Broken(f"sequence jumps from {prev_seq} to {entry.seq}", entry.seq)
    if entry.prev != prev_hash:
        raise Broken(
            f"prev does not match the hash of entry {prev_seq}: "
            "an entry was changed, removed or reordered",
            entry.seq,
        )


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
