"""What a run did: per store and stage, the counts its log entries and the commands report.

A run ends `done`, `incomplete` (expired objects remain after it), `refused` (a guard stopped it
before anything was deleted), `failed` or `interrupted` (stopped on request after a batch). The
exit code of a command that ran rules follows from them (DESIGN.md command table).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from retentiond.engine.plan import DELETE
from retentiond.engine.undated import Undated


@dataclass
class StoreOutcome:
    label: str
    unit: str
    deleted: int = 0
    bytes: int | None = None
    batches: int = 0
    remaining: int | None = None  # expired objects left after the run (verification)
    skipped: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    stage: str = DELETE
    anonymized: int = 0
    held: int = 0
    held_by: dict[str, int] = field(default_factory=dict)
    smallest_group: int | None = None  # anonymize: k of the anonymized records (None: unknown)
    absent: bool = False  # an optional store that is not there
    failed: str | None = None  # why this store failed; the rule's other stores went on
    undated: Undated | None = None  # objects no date can be read from, after the run
    undated_failure: str | None = None  # beyond the tolerated share: the run fails


@dataclass
class RunOutcome:
    rule: str
    run_id: str
    cutoff: datetime | None
    status: str  # done | incomplete | refused | failed | interrupted
    message: str | None = None
    stores: list[StoreOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def deleted(self) -> int:
        return sum(s.deleted for s in self.stores)

    @property
    def anonymized(self) -> int:
        return sum(s.anonymized for s in self.stores)


EXIT_FOR_STATUS = {"done": 0, "incomplete": 1, "failed": 1, "interrupted": 1, "refused": 3}


def exit_code(outcomes: list[RunOutcome]) -> int:
    """0 all done; 1 if any run failed; else 3 if any was refused (DESIGN.md command table)."""
    codes = {EXIT_FOR_STATUS[o.status] for o in outcomes}
    if 1 in codes:
        return 1
    return 3 if 3 in codes else 0


def status_message(outcome: RunOutcome) -> str:
    if outcome.status == "interrupted":
        return "stopped on request after the current batch; the next run continues"
    left = sum(s.remaining or 0 for s in outcome.stores)
    return f"{left} expired objects remain after the run; see the daemon log and run again"
