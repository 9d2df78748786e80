"""Applying a plan: the only path that deletes or rewrites, batch by batch, each one audited.

The audit intent of each batch (`batch_intent`: store, batch, planned) is written durably before
the batch is applied; its result (`batch_done`: what it deleted or anonymized) follows it, and
the next intent or the run's end syncs it. A batch that fails records what it did, then its store
fails; the rule's other stores are still enforced.

Holds are read again before every batch: a hold added by a reload during a run drops the batch
planned without it, is recorded in the log, and the store plans afresh with it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import structlog

from retentiond.config.model import Rule
from retentiond.engine.outcome import RunOutcome, StoreOutcome
from retentiond.engine.plan import ANONYMIZE, DELETE, RulePlan, StorePlan
from retentiond.errors import StoreError
from retentiond.evidence.log import AuditWriter
from retentiond.policy.rules import Holds
from retentiond.stores import Batch, BatchFailed, BatchResult, Store

log = structlog.get_logger()

Progress = Callable[[str, int, int], None]  # store label, deleted so far, expected


class Enforcing(Protocol):
    """What applying needs of the engine that runs it (`Engine`)."""

    @property
    def stop(self) -> threading.Event: ...

    @property
    def progress(self) -> Progress | None: ...

    def fresh_holds(self, rule: Rule, holds: Holds) -> Holds: ...

    def holds_changed(
        self, audit: AuditWriter, plan: RulePlan, store: Store, old: Holds, new: Holds
    ) -> None: ...


def apply_stage(
    engine: Enforcing, plan: RulePlan, stores: list[Store], audit: AuditWriter, outcome: RunOutcome
) -> str:
    """Apply one stage's batches, store by store; "interrupted" when a stop was requested."""
    holds = plan.holds
    failed_before = {s.label: s.failed for s in outcome.stores if s.failed}
    for store, store_plan in zip(stores, plan.stores, strict=True):
        result = StoreOutcome(
            store.label,
            store_plan.survey.unit,
            stage=plan.stage,
            absent=store_plan.absent is not None,
            failed=store_plan.failed or failed_before.get(store.label),
        )
        result.held, result.held_by = store_plan.survey.held, dict(store_plan.survey.held_by)
        outcome.stores.append(result)
        sweeps = plan.stage == DELETE and store.sweeps()
        if result.failed or (store_plan.survey.expired == 0 and not sweeps):
            continue
        try:
            if not _apply_store(engine, store, plan, store_plan, holds, audit, outcome, result):
                return "interrupted"
        except StoreError as error:
            # One store's failure (a folder gone, a table locked for good) must not keep
            # the others from being enforced; the run ends failed and names it.
            result.failed = str(error)
            log.error("store failed; the rule's other stores go on", store=store.label)
    return "interrupted" if engine.stop.is_set() else "done"


def _apply_store(
    engine: Enforcing,
    store: Store,
    plan: RulePlan,
    store_plan: StorePlan,
    holds: Holds,
    audit: AuditWriter,
    outcome: RunOutcome,
    result: StoreOutcome,
) -> bool:
    """The batches of one store; False when a stop was requested."""
    batches = _batches(store, plan, store_plan, holds)
    while True:
        if engine.stop.is_set():
            return False
        batch = next(batches, None)
        if batch is None:
            return True
        fresh = engine.fresh_holds(plan.rule, holds)
        if set(fresh.scopes) != set(holds.scopes):
            # A reload changed the holds: this batch was planned without them
            engine.holds_changed(audit, plan, store, holds, fresh)
            holds = fresh
            batches = _batches(store, plan, store_plan, holds)
            continue
        _apply_batch(engine, store, plan, store_plan, batch, audit, outcome, result)
        if store.pause:
            engine.stop.wait(store.pause)


def _batches(store: Store, plan: RulePlan, store_plan: StorePlan, holds: Holds) -> Iterator[Batch]:
    if plan.stage == ANONYMIZE:
        return store.anonymize_batches(plan.cutoff, holds, store_plan.since)
    return store.batches(plan.cutoff, holds)


def _apply_batch(
    engine: Enforcing,
    store: Store,
    plan: RulePlan,
    store_plan: StorePlan,
    batch: Batch,
    audit: AuditWriter,
    outcome: RunOutcome,
    result: StoreOutcome,
) -> None:
    intent: dict[str, Any] = {"store": store.label, "batch": batch.number}
    if plan.stage == ANONYMIZE:
        intent["stage"] = ANONYMIZE
    intent["planned"] = batch.planned
    if batch.span:
        intent["first_day"], intent["last_day"] = batch.span
    audit.append("batch_intent", run_id=outcome.run_id, **intent)
    try:
        applied = store.apply(batch, plan.cutoff)
    except BatchFailed as failure:
        # What the failed batch did is known: its result, then the store fails
        _batch_done(audit, store, plan, batch, failure.result, outcome, result, failure)
        raise
    _batch_done(audit, store, plan, batch, applied, outcome, result)
    if engine.progress:
        engine.progress(store.label, result.deleted + result.anonymized, store_plan.survey.expired)


def _batch_done(
    audit: AuditWriter,
    store: Store,
    plan: RulePlan,
    batch: Batch,
    applied: BatchResult,
    outcome: RunOutcome,
    result: StoreOutcome,
    failure: BatchFailed | None = None,
) -> None:
    """Count a batch's result and write its `batch_done` entry (`failed`, `code`, `sqlstate`
    when the batch failed: the codes only, never the database's words)."""
    result.batches += 1
    result.deleted += applied.deleted
    result.anonymized += applied.anonymized
    if applied.bytes is not None:
        result.bytes = (result.bytes or 0) + applied.bytes
    _add(result.skipped, applied.skipped)
    _add(result.counts, applied.counts)
    done: dict[str, Any] = {"store": store.label, "batch": batch.number}
    if plan.stage == ANONYMIZE:
        done["stage"] = ANONYMIZE
        done["anonymized"] = applied.anonymized
    done["deleted"] = applied.deleted
    if applied.bytes is not None:
        done["bytes"] = applied.bytes
    if applied.span:
        done["first_day"], done["last_day"] = applied.span
    if applied.skipped:
        done["skipped"] = dict(applied.skipped)
    if applied.counts:
        done["counts"] = dict(applied.counts)
    if failure is not None:
        done["failed"] = True
        done |= failure.error_fields()
    # The next intent or the run's end syncs it: one fsync per batch (AuditLog docstring)
    audit.append_unsynced("batch_done", run_id=outcome.run_id, **done)


def _add(totals: dict[str, int], more: Mapping[str, int]) -> None:
    for key, count in more.items():
        totals[key] = totals.get(key, 0) + count
