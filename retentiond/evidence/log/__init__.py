"""The Löschprotokoll: an append-only, hash-chained JSON Lines log of every deletion.

This package is the log's public face; callers import from here (`from retentiond.evidence
import log as audit`). Its parts:

- `entries`: the line format, canonical JSON and the hash chain; the entry types.
- `reading`: the log's files (rotated ones first) and its entries, read with the chain checked.
- `verify`: the chain alone (`verify`) and the full check (`check_log`: checkpoints, signatures,
  expected heads).
- `keys`: signing keys and the signatures of checkpoints.
- `writer`: `AuditLog`, the one writer (lock, append with fsync, checkpoints), built on
  `logfile` (the file and folder, opened safely), `repair` (a torn last line moved aside) and
  `rotation` (a full or last year's file renamed, the chain going on in a new one).
- `opening`: the writer of the log a config names, with its rotation options (`open_log`).

The format is described for other verifiers in docs/audit-log.md.
"""

from retentiond.evidence.log.entries import (
    CHECKPOINT,
    CHECKPOINT_FIELDS,
    CONTINUED,
    ERASURE_END,
    GENESIS,
    LOG_REPAIRED,
    MAX_LINE,
    RESERVED,
    RUN_END_STATUS,
    RUN_ENDS,
    Entry,
    canonical,
    json_safe,
)
from retentiond.evidence.log.keys import (
    CREDENTIAL_NAME,
    Signer,
    SigningKeyError,
    VerifyKey,
    fingerprint,
    generate_key_pair,
    signed_message,
)
from retentiond.evidence.log.opening import SerialAuditLog, log_path, open_log, open_serial_log
from retentiond.evidence.log.reading import TornTail, log_files, read_entries
from retentiond.evidence.log.verify import LogCheck, Problem, Verification, check_log, verify
from retentiond.evidence.log.writer import AuditLog, AuditWriter, StaleHead

__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_FIELDS",
    "CONTINUED",
    "CREDENTIAL_NAME",
    "ERASURE_END",
    "GENESIS",
    "LOG_REPAIRED",
    "MAX_LINE",
    "RESERVED",
    "RUN_ENDS",
    "RUN_END_STATUS",
    "AuditLog",
    "AuditWriter",
    "Entry",
    "LogCheck",
    "Problem",
    "SerialAuditLog",
    "Signer",
    "SigningKeyError",
    "StaleHead",
    "TornTail",
    "Verification",
    "VerifyKey",
    "canonical",
    "check_log",
    "fingerprint",
    "generate_key_pair",
    "json_safe",
    "log_files",
    "log_path",
    "open_log",
    "open_serial_log",
    "read_entries",
    "signed_message",
    "verify",
]
