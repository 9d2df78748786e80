"""What earlier runs left in the audit log that a new run needs to decide safely.

- the last finished run of each rule and stage (its time, cutoff and per-store counts): the guard
  against sudden jumps compares with it, and anonymization continues from its cutoff;
- the holds the log has recorded (added, changed, not yet ended), so a run records each change
  of a hold exactly once;
- the runs a crash, a kill or a power loss interrupted and no `run_reconciled` entry has
  accounted for yet (`Interrupted`): a run that recorded no end, or a batch whose intent has no
  result. The engine reconciles each one exactly once, at the start of the next run.

The log is the only state retentiond keeps, besides a small file of keyed hold fingerprints
beside it (`fingerprints`), which lets a run notice that a hold's numbers changed without ever
writing a number, or a hash of one, into the log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from retentiond.errors import AuditError
from retentiond.evidence.log import ERASURE_END, RUN_ENDS, read_entries

log = structlog.get_logger()

HOLD_ENTRIES = ("hold_added", "hold_changed", "hold_ended")
RECONCILED = "run_reconciled"
_STARTS = ("run_started", "erasure_started")


@dataclass(frozen=True)
class PastRun:
    """A finished run of one rule's stage: when, with which cutoff, what each store did."""

    ts: datetime
    status: str
    cutoff: datetime | None
    stores: Mapping[str, Mapping[str, Any]]  # label -> the run_finished store fields
    hold_ids: frozenset[str] = frozenset()  # holds that kept objects in this run


@dataclass(frozen=True)
class OpenBatch:
    """A batch whose intent is in the log and its result is not: the process ended while the
    batch was applied (or before its result was synced). It removed between none and all of
    the `planned` objects."""

    store: str
    batch: int
    planned: int
    stage: str  # delete | anonymize | erase


@dataclass
class Interrupted:
    """A run (or an erasure) the log does not account for completely, not yet reconciled."""

    run_id: str
    rule: str | None = None  # None: an erasure, or a run whose start is in a removed file
    ticket: str | None = None  # an erasure's ticket
    end: str | None = None  # the type of the run's last entry, None when it recorded no end
    open_batches: dict[tuple[str, str, int], OpenBatch] = field(default_factory=dict)
    batches_done: int = 0
    deleted: int = 0  # what the batch results of the run confirm
    anonymized: int = 0

    @property
    def erasure(self) -> bool:
        return self.ticket is not None


@dataclass
class History:
    runs: dict[tuple[str, str], PastRun] = field(default_factory=dict)  # (rule, stage) -> last
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> last summary logged
    readable: bool = True
    interrupted: list[Interrupted] = field(default_factory=list)  # oldest first

    def last_run(self, rule: str, stage: str) -> PastRun | None:
        return self.runs.get((rule, stage))


def read_history(path: Path) -> History:
    """Fold the log into what a run needs. A broken or unreadable log yields an empty history
    (marked unreadable): guards that need the past then stay on their safe side."""
    history = History()
    starts: dict[str, dict[str, Any]] = {}
    runs = _Runs()
    try:
        for entry in read_entries(path):
            fields = entry.fields
            runs.read(entry.type, fields)
            if entry.type == "run_started":
                starts[str(fields.get("run_id"))] = fields
            elif entry.type == "run_finished":
                _finished(history, entry.ts, fields, starts.get(str(fields.get("run_id"))))
            elif entry.type in HOLD_ENTRIES:
                hold_id = str(fields.get("hold"))
                if entry.type == "hold_ended":
                    history.holds.pop(hold_id, None)
                else:
                    history.holds[hold_id] = dict(fields)
    except FileNotFoundError:
        return history
    except (AuditError, OSError) as error:
        log.warning(
            "audit log history not readable; guards that need it stay safe", reason=str(error)
        )
        return History(readable=False)
    history.interrupted = runs.interrupted()
    return history


class _Runs:
    """Follows every run through the log, keeping only what is still open: a run is dropped
    once it ended with every batch accounted for, or once it was reconciled."""

    def __init__(self) -> None:
        self.open: dict[str, Interrupted] = {}

    def read(self, kind: str, fields: Mapping[str, Any]) -> None:
        run_id = fields.get("run_id")
        if not isinstance(run_id, str):
            return
        if kind == RECONCILED:
            self.open.pop(run_id, None)
            return
        if kind in _STARTS:
            run = self.open.setdefault(run_id, Interrupted(run_id))
            if kind == "run_started":
                run.rule = _text(fields.get("rule"))
            else:
                run.ticket = _text(fields.get("ticket")) or ""
        elif kind == "batch_intent":
            run = self.open.setdefault(run_id, Interrupted(run_id))
            batch = OpenBatch(
                _text(fields.get("store")) or "",
                _count(fields.get("batch")),
                _count(fields.get("planned")),
                _text(fields.get("stage")) or "delete",
            )
            run.open_batches[(batch.stage, batch.store, batch.batch)] = batch
        elif kind == "batch_done":
            run = self.open.setdefault(run_id, Interrupted(run_id))
            stage = _text(fields.get("stage")) or "delete"
            key = (stage, _text(fields.get("store")) or "", _count(fields.get("batch")))
            run.open_batches.pop(key, None)
            run.batches_done += 1
            run.deleted += _count(fields.get("deleted"))
            run.anonymized += _count(fields.get("anonymized"))
        elif kind in RUN_ENDS or kind == ERASURE_END:
            run = self.open.get(run_id) or Interrupted(run_id, _text(fields.get("rule")))
            run.end = kind
            if run.open_batches:
                self.open[run_id] = run
            else:
                self.open.pop(run_id, None)

    def interrupted(self) -> list[Interrupted]:
        return list(self.open.values())


def _finished(
    history: History, ts: str, fields: Mapping[str, Any], started: Mapping[str, Any] | None
) -> None:
    rule = str(fields.get("rule"))
    stage = str(fields.get("stage") or "delete")
    cutoff = (started or {}).get("cutoff")
    stores = {
        str(store.get("store")): store
        for store in fields.get("stores") or []
        if isinstance(store, Mapping)
    }
    hold_ids = frozenset(hold for store in stores.values() for hold in (store.get("held_by") or {}))
    history.runs[(rule, stage)] = PastRun(
        _instant(ts) or datetime.min,
        str(fields.get("status")),
        _instant(cutoff) if isinstance(cutoff, str) else None,
        stores,
        hold_ids,
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _instant(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
