"""What a run's entries in the deletion log say about its stages and stores.

Counts, labels, cutoffs and reasons only: the log never names an object, and of a hold only its
id. The first entry (`run_started`, or `run_refused`) carries each store's survey; the last one
(`run_finished`, `run_failed`) what each store did.
"""

from __future__ import annotations

from typing import Any

from retentiond.engine.outcome import StoreOutcome
from retentiond.engine.plan import ANONYMIZE, RulePlan


def survey_fields(plan: RulePlan) -> list[dict[str, Any]]:
    """Each store's survey, as a run's first entry (or its refusal) records it."""
    fields = []
    for s in plan.stores:
        store: dict[str, Any] = {
            "store": s.label,
            "kind": s.kind,
            "unit": s.survey.unit,
            "total": s.survey.total,
            "expired": s.survey.expired,
        }
        if plan.stage == ANONYMIZE:
            store["stage"] = ANONYMIZE
        if s.survey.held:
            store["held"] = s.survey.held
            store["held_by"] = dict(s.survey.held_by)
        if s.survey.skipped:
            # What the survey could not date or read (counts by reason): kept, and on record
            # from the run's first entry, not only from the batches that met them.
            store["skipped"] = dict(s.survey.skipped)
        if s.absent:
            store["absent"] = True
        if s.failed:
            store["failed"] = s.failed
        fields.append(store)
    return fields


def stage_fields(stages: list[RulePlan]) -> dict[str, Any]:
    """What a run's first entry says beyond the main stage's cutoff: the delete stage of a
    two-stage rule, and guards overridden with --force."""
    fields: dict[str, Any] = {}
    if stages[-1].stage == ANONYMIZE:
        fields["action"] = ANONYMIZE
    if len(stages) > 1:
        fields["delete_cutoff"] = stages[0].cutoff
        fields["then_delete_after"] = str(stages[0].rule.then_delete_after)
    forced = list(dict.fromkeys(reason for stage in stages for reason in stage.forced))
    if forced:
        fields["forced"] = forced
    if stages[-1].unmatched:  # ids only: what a hold names never enters the log
        fields["holds_matching_nothing"] = list(stages[-1].unmatched)
    return fields


def outcome_fields(store: StoreOutcome) -> dict[str, Any]:
    """What a store did, as the run's last entry (`run_finished`, `run_failed`) records it."""
    fields: dict[str, Any] = {"store": store.label}
    if store.stage == ANONYMIZE:
        fields["stage"] = ANONYMIZE
        fields["anonymized"] = store.anonymized
        if not store.absent:
            fields["smallest_group"] = store.smallest_group
    if store.absent:
        fields["absent"] = True
    fields |= {"deleted": store.deleted, "batches": store.batches, "remaining": store.remaining}
    if store.held:
        fields["held"] = store.held
        fields["held_by"] = store.held_by
    if store.failed:
        fields["failed"] = store.failed
    if store.undated is not None:
        # Counts and the tolerated share only; `undated_failed` says the run failed for them
        fields["undated"] = store.undated.count
        fields["undated_tolerated"] = store.undated.tolerated
        if store.undated_failure is not None:
            fields["undated_failed"] = True
    if store.bytes is not None:
        fields["bytes"] = store.bytes
    if store.skipped:
        fields["skipped"] = store.skipped
    if store.counts:
        fields["counts"] = store.counts
    return fields
