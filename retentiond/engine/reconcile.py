"""Reconciling interrupted runs (safety rule 8): each exactly once, before a run's first entry.

A run killed between a batch's intent and its result leaves
the log unable to say how much that batch removed. Before its own `run_started`, every run
writes one `run_reconciled` entry per earlier run the log does not account for (a run, or an
erasure, that recorded no end, or one with a batch intent without a result) that no
`run_reconciled` entry names yet; each is reconciled exactly once. Runs never overlap (the
daemon has one worker, and the log's lock keeps out other processes), so a run without an end
at this point was interrupted. The entry:

    run_id                   the interrupted run's id (not this run's)
    reconciled_by            this run's id: its survey counts what the interrupted run left
    reconciled               true
    rule                     the interrupted run's rule (absent when unknown: an erasure, or a
                             run whose start is in a rotated file that was removed)
    erasure, ticket          for an interrupted erasure: true and its ticket
    end                      the interrupted run's last entry (run_failed, ...); "none" when it
                             recorded no end
    batches_done, deleted    what the run's batch results confirm (and `anonymized`)
    open_batches             [{store, batch, planned, stage}]: intents without a result
    unconfirmed_deleted_max  the sum of `planned` of the open delete (and erase) batches: at
                             most this many more objects were deleted, unconfirmed
    unconfirmed_anonymized_max   the same for open anonymize batches (only when there are any)

A batch that was cut off removed between none and all of what it planned (an SQL batch is one
transaction: all or none; a files batch may stop half-way); no store can tell which afterwards,
since the log never names an object. The count that matters is established by the next survey:
the reconciling run's `run_started` counts what is still expired, and its verification that
nothing expired remains.
"""

from __future__ import annotations

from typing import Any

import structlog

from retentiond.engine.plan import ANONYMIZE
from retentiond.evidence.history import History, Interrupted
from retentiond.evidence.log import AuditWriter

log = structlog.get_logger()


def reconcile(audit: AuditWriter, run_id: str, history: History) -> None:
    """One `run_reconciled` entry for each earlier run the log does not account for."""
    for interrupted in history.interrupted:
        fields = reconciled_fields(interrupted)
        audit.append("run_reconciled", run_id=interrupted.run_id, reconciled_by=run_id, **fields)
        log.warning(
            "an interrupted run was reconciled; this run's survey counts what it left",
            interrupted_run=interrupted.run_id,
            interrupted_rule=interrupted.rule,
            end=fields["end"],
            open_batches=len(interrupted.open_batches),
            unconfirmed_deleted_max=fields["unconfirmed_deleted_max"],
        )


def reconciled_fields(run: Interrupted) -> dict[str, Any]:
    """The `run_reconciled` entry's fields beside the run ids (see the module docstring)."""
    fields: dict[str, Any] = {"reconciled": True}
    if run.rule is not None:
        fields["rule"] = run.rule
    if run.erasure:
        fields["erasure"], fields["ticket"] = True, run.ticket
    fields["end"] = run.end or "none"
    fields["batches_done"], fields["deleted"] = run.batches_done, run.deleted
    if run.anonymized:
        fields["anonymized"] = run.anonymized
    batches = list(run.open_batches.values())
    fields["open_batches"] = [
        {"store": b.store, "batch": b.batch, "planned": b.planned, "stage": b.stage}
        for b in batches
    ]
    fields["unconfirmed_deleted_max"] = sum(b.planned for b in batches if b.stage != ANONYMIZE)
    anonymized = [b.planned for b in batches if b.stage == ANONYMIZE]
    if anonymized:
        fields["unconfirmed_anonymized_max"] = sum(anonymized)
    return fields
