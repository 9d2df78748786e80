"""Planning a stage of a rule: survey every store at the cutoff, then judge the plan. Reads only.

Each store is surveyed with the holds in force (what they keep is counted, never planned); an
anonymize stage resumes where the last complete run stopped (`anonymized_since`). The guards
(`guards`) then decide whether a run may proceed. Holds in force that match no object of any age
in the rule's stores are named in the plan (`unmatched`): a mistyped number protects nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from retentiond.config.model import Config, Rule
from retentiond.engine.guards import guard, jump, min_keep
from retentiond.engine.plan import ANONYMIZE, DELETE, RulePlan, StorePlan
from retentiond.engine.undated import undated, undated_failure
from retentiond.errors import StoreError
from retentiond.evidence.history import History
from retentiond.policy.durations import Duration
from retentiond.policy.rules import Holds, HoldScope
from retentiond.policy.rules import cutoff as compute_cutoff
from retentiond.stores import AbsentStore, FailedStore, Store, Survey

log = structlog.get_logger()

# How far ahead of now a hold's objects are looked for (a PBX clock that ran ahead)
MATCH_PROBE_AHEAD = timedelta(days=366)


def plan_stage(
    config: Config,
    clock: Callable[[], datetime],
    force: bool,
    rule: Rule,
    stores: list[Store],
    stage: str,
    keep: Duration,
    holds: Holds,
    history: History,
    isolate: bool = False,
) -> RulePlan:
    now = clock()
    rule_cutoff = compute_cutoff(now, keep, config.zone())
    since = anonymized_since(rule, holds, history) if stage == ANONYMIZE else None
    safety = config.safety
    plans = []
    for i, store in enumerate(stores):
        failed = store.reason if isinstance(store, FailedStore) else None
        try:
            if stage == ANONYMIZE:
                survey = store.anonymize_survey(rule_cutoff, holds, since)
            else:
                survey = store.survey(rule_cutoff, holds)
        except StoreError as error:
            if not isolate:
                raise
            log.error("store survey failed; the rule's other stores go on", store=store.label)
            survey, failed = (
                Survey(unit=store.unit, total=0, expired=0, oldest=None),
                str(error),
            )
        absent = store.reason if type(store) is AbsentStore else None
        plans.append(
            StorePlan(
                store.label,
                store.kind,
                survey,
                store.batch_size,
                absent,
                since,
                failed,
                store.batch_time,
                undated=undated(survey, rule.stores[i], safety, deletes=stage == DELETE),
                undated_failure=undated_failure(
                    survey, rule.stores[i], safety, deletes=stage == DELETE
                ),
            )
        )
    refusal = guard(safety, now, rule_cutoff, stores, plans)
    forced: list[str] = []
    for check in (
        min_keep(rule, keep, stage),
        jump(rule, stage, plans, history, safety, clock),
    ):
        if check is None or refusal is not None:
            continue
        if force:
            forced.append(check)
        else:
            refusal = (
                check + "; if it is intended, run once with `run --once --force` "
                "(the override is recorded in the audit log)"
            )
    return RulePlan(rule, rule_cutoff, plans, refusal, stage, holds, tuple(forced))


def anonymized_since(rule: Rule, holds: Holds, history: History) -> datetime | None:
    """Where anonymization resumes: the cutoff of the last complete anonymize run, unless a
    hold that kept objects then has ended since (its objects are due now)."""
    last = history.last_run(rule.name, ANONYMIZE)
    if last is None or last.status != "done" or last.cutoff is None:
        return None
    if last.hold_ids - set(holds.ids):
        return None
    return last.cutoff


def unmatched_holds(
    stages: list[RulePlan], stores: list[Store], clock: Callable[[], datetime]
) -> tuple[str, ...]:
    """The holds that match nothing in these stores: no object of any age, held or not.

    A hold that keeps something expired matches; the others are looked for once more with
    a cutoff far ahead, so young objects count too. A hold by a number no store holds (a
    mistyped number, the wrong rules) protects nothing: plan, status and the report say so.
    """
    plan = stages[-1]
    holding = {
        hold
        for stage in stages
        for store_plan in stage.stores
        for hold, count in store_plan.survey.held_by.items()
        if count
    }
    return tuple(
        sorted(
            scope.hold_id
            for scope in plan.holds.scopes
            if scope.hold_id not in holding and not _matches(scope, stores, plan, clock)
        )
    )


def _matches(
    scope: HoldScope, stores: list[Store], plan: RulePlan, clock: Callable[[], datetime]
) -> bool:
    """Whether any store has an object of any age in the hold's scope. A store that failed
    cannot tell: then the hold is not called unmatched (the failure is reported itself)."""
    ahead = clock() + MATCH_PROBE_AHEAD
    for store, store_plan in zip(stores, plan.stores, strict=True):
        if store_plan.absent is not None:
            continue  # an optional store that is not there holds nothing
        if store_plan.failed is not None:
            return True
        try:
            survey = store.survey(ahead, Holds((scope,)))
        except StoreError:
            log.warning("a store could not be asked what a hold matches", store=store.label)
            return True
        if survey.held_by.get(scope.hold_id, 0):
            return True
    return False
