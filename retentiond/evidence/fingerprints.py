"""Hold fingerprints beside the log: how a run notices that a hold's numbers changed.

The log says of a hold everything but its numbers and extensions (`HoldConfig.summary`), so a
swap of one number for another leaves the summary alone. What shows it is a fingerprint of the
hold's whole definition, kept in `holds.json` beside the log (0600), never in it.

That fingerprint is an HMAC-SHA256 under a random 32-byte key kept beside it (`holds.key`,
0600, never logged): with every other field in the log, a plain hash of the definition gives the
numbers away to anyone who can try candidates (an unsalted SHA-256 fell in 3 s). A file written
before the key existed holds plain SHA-256 values; it is compared that way once, then rewritten
keyed, so an upgrade does not make every hold look changed.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from retentiond import safefiles

log = structlog.get_logger()

FILE = "holds.json"
KEY_FILE = "holds.key"
KEYED = "hmac-sha256"  # the `hash` of a file written with the key
KEY_BYTES = 32
_MAX_FILE = 16 * 1024 * 1024


@dataclass(frozen=True)
class Fingerprints:
    """The fingerprints the last run saved, and the means to compare a hold with them.

    `key` None: no usable key (none yet, or lost); `legacy`: the saved values are plain SHA-256
    from before the key. A hold with nothing saved, or nothing to compare with, is unchanged.
    """

    saved: Mapping[str, str] = field(default_factory=dict)
    key: bytes | None = None
    legacy: bool = False

    def of(self, definition: Mapping[str, Any]) -> str | None:
        """The definition's fingerprint in the form the saved ones have."""
        if self.legacy:
            return hashlib.sha256(_canonical(definition)).hexdigest()
        return None if self.key is None else keyed(self.key, definition)

    def changed(self, hold_id: str, definition: Mapping[str, Any]) -> bool:
        saved, now = self.saved.get(hold_id), self.of(definition)
        return saved is not None and now is not None and not hmac.compare_digest(saved, now)

    def outdated(self, definitions: Mapping[str, Mapping[str, Any]]) -> bool:
        """Whether the file must be written for these holds (in force now)."""
        if self.legacy or set(self.saved) != set(definitions):
            return True
        return any(self.changed(hold_id, d) for hold_id, d in definitions.items())


def keyed(key: bytes, definition: Mapping[str, Any]) -> str:
    return hmac.new(key, _canonical(definition), hashlib.sha256).hexdigest()


def fingerprints_path(audit_path: Path) -> Path:
    return audit_path.parent / FILE


def key_path(audit_path: Path) -> Path:
    return audit_path.parent / KEY_FILE


def read_fingerprints(audit_path: Path) -> Fingerprints:
    """What `write_fingerprints` saved beside this log; empty (nothing to compare) when there
    is no file yet or it cannot be used, with a warning saying why."""
    try:
        with safefiles.folder(audit_path.parent) as folder:
            try:
                raw = safefiles.read(folder, FILE, _MAX_FILE)
            except FileNotFoundError:
                return Fingerprints(key=_read_key(folder))
            return _parse(json.loads(raw), _read_key(folder))
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        log.warning(
            "hold fingerprints not readable: a change of a hold's numbers since the last run "
            "is not seen this time",
            reason=reason,
        )
        return Fingerprints()


def write_fingerprints(audit_path: Path, definitions: Mapping[str, Mapping[str, Any]]) -> None:
    """Save the keyed fingerprints of these holds (id -> definition), atomically and readable
    by retentiond only; the key is made on first use. A failure is a warning: the log already
    recorded what changed."""
    try:
        with safefiles.folder(audit_path.parent, guarded=True) as folder:
            key = _read_key(folder) or _new_key(folder)
            prints = {hold_id: keyed(key, d) for hold_id, d in definitions.items()}
            payload = json.dumps({"hash": KEYED, "holds": prints}, sort_keys=True).encode()
            safefiles.replace(folder, FILE, payload, 0o600)
    except OSError as error:
        log.warning("hold fingerprints not saved", reason=error.strerror or str(error))


def _parse(data: Any, key: bytes | None) -> Fingerprints:
    if not isinstance(data, dict):
        raise ValueError(f"{FILE} is not a JSON object")
    if data.get("hash") == KEYED and isinstance(data.get("holds"), dict):
        if key is None:
            raise ValueError(f"{KEY_FILE}, the key of {FILE}, is missing")
        return Fingerprints(_texts(data["holds"]), key)
    # Written before the key: hold id -> plain SHA-256. Compared once, then rewritten keyed.
    return Fingerprints(_texts(data), key, legacy=True)


def _texts(prints: dict[Any, Any]) -> dict[str, str]:
    return {str(hold_id): str(value) for hold_id, value in prints.items()}


def _read_key(folder: int) -> bytes | None:
    try:
        key = safefiles.read(folder, KEY_FILE, KEY_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(key) != KEY_BYTES:
        raise OSError(
            errno.EINVAL,
            f"{KEY_FILE} beside the audit log is not a {KEY_BYTES}-byte key; remove it and "
            f"{FILE} (the next run makes new ones)",
        )
    return key


def _new_key(folder: int) -> bytes:
    key = secrets.token_bytes(KEY_BYTES)
    try:
        safefiles.write_new(folder, KEY_FILE, key, 0o600)
    except FileExistsError:
        # Another process made one meanwhile (or something else has the name): use that one.
        found = _read_key(folder)
        if found is None:
            raise
        return found
    return key


def _canonical(definition: Mapping[str, Any]) -> bytes:
    return json.dumps(definition, sort_keys=True, default=str).encode()
