"""Verifying a stage after it was applied, and failing a run for what cannot be dated.

A delete stage is verified by a fresh survey: nothing expired and unheld may remain. An anonymize
stage is verified by its counts, and measures k, the smallest group of equal anonymized records.
Objects no date can be read from are never deleted; beyond the share a store tolerates they fail
the run (what could be dated was enforced): silent non-deletion must never end `done`.
"""

from __future__ import annotations

import structlog

from retentiond.config.model import Safety
from retentiond.engine.outcome import RunOutcome, StoreOutcome, status_message
from retentiond.engine.plan import ANONYMIZE, DELETE, RulePlan
from retentiond.engine.undated import undated, undated_failure
from retentiond.policy.rules import Holds
from retentiond.stores import Store

log = structlog.get_logger()


def verify_stage(
    stage: RulePlan,
    stores: list[Store],
    results: list[StoreOutcome],
    holds: Holds,
    safety: Safety,
) -> str:
    """Re-survey after a delete stage: nothing expired and unheld may remain. An anonymize
    stage is verified by its counts (every row visited was rewritten or already anonymous)
    and measures k, the smallest group of equal anonymized records. Either way the
    objects no date can be read from are counted (from the survey after a delete stage,
    the plan's before an anonymize stage): `fail_undated` judges them.

    `holds` are those in force now (`Engine.fresh_holds`)."""
    clean = True
    for index, (store, result) in enumerate(zip(stores, results, strict=True)):
        if result.failed:
            continue
        store_config = stage.rule.stores[index]
        if stage.stage == ANONYMIZE:
            result.smallest_group = store.smallest_group(stage.cutoff)
            survey = stage.stores[index].survey
        else:
            survey = store.survey(stage.cutoff, holds)
            result.remaining = survey.expired
            clean = clean and result.remaining == 0
        deletes = stage.stage == DELETE
        result.undated = undated(survey, store_config, safety, deletes=deletes)
        result.undated_failure = undated_failure(survey, store_config, safety, deletes=deletes)
    return "done" if clean else "incomplete"


def fail_undated(outcome: RunOutcome) -> None:
    """A store with more undated objects than it tolerates fails the run (what could be
    dated was enforced): silent non-deletion must never end `done`."""
    if outcome.status not in ("done", "incomplete", "failed"):
        return  # interrupted: the next run verifies
    failures: dict[str, StoreOutcome] = {}
    for store in outcome.stores:
        if store.undated_failure is not None:
            failures.setdefault(store.label, store)
    if not failures:
        return
    for store in failures.values():
        count = store.undated.count if store.undated else None
        log.error(
            "objects that cannot be dated remain; the run fails",
            store=store.label,
            undated=count,
        )
    messages = [f"{s.label}: {s.undated_failure}" for s in failures.values()]
    if outcome.message:
        messages.insert(0, outcome.message)
    elif outcome.status == "incomplete":
        messages.insert(0, status_message(outcome))
    outcome.status, outcome.message = "failed", "; ".join(messages)
