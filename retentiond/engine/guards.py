"""The safety guards a plan must pass before anything is deleted; a failed one refuses the run.

Refused always: a cutoff in the future, a database clock that differs from the host's by more
than `safety.max_clock_skew`, a store of which more than `safety.max_delete_fraction` would go.
Refused unless the run is forced (`run --once --force`, recorded): a keep shorter than the rule's
`min_keep`, and a store that would lose far more than its previous run did per interval
(`safety.max_increase`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from retentiond.config.model import Rule, Safety
from retentiond.engine.plan import DELETE, StorePlan
from retentiond.evidence.history import History
from retentiond.policy.durations import Duration
from retentiond.policy.rules import schedule_interval
from retentiond.stores import Store


def min_keep(rule: Rule, keep: Duration, stage: str) -> str | None:
    """A keep shorter than the rule's min_keep: a typo, most likely."""
    if rule.min_keep is None or (stage == DELETE and rule.then_delete_after is not None):
        return None
    if keep.shorter_than(rule.min_keep):
        return (
            f"keep ({keep}) is shorter than the rule's min_keep ({rule.min_keep}); "
            "check it for a typo (3d for 3 months?)"
        )
    return None


def jump(
    rule: Rule,
    stage: str,
    plans: list[StorePlan],
    history: History,
    safety: Safety,
    clock: Callable[[], datetime],
) -> str | None:
    """A store that would remove far more than its previous run did per interval."""
    last = history.last_run(rule.name, stage)
    if last is None:
        return None
    interval = schedule_interval(rule.schedule).total_seconds()
    elapsed = max((clock() - last.ts).total_seconds(), interval)
    for plan in plans:
        before = last.stores.get(plan.label)
        if before is None:
            continue
        previous = _int(before.get("deleted")) + _int(before.get("anonymized"))
        expected = max(previous * elapsed / interval, safety.max_increase_floor)
        if plan.survey.expired > safety.max_increase * expected:
            return (
                f"{plan.label}: would {stage} {plan.survey.expired} {plan.survey.unit}, more "
                f"than {safety.max_increase:g} times what its previous run did per interval "
                f"({previous}; safety.max_increase)"
            )
    return None


def guard(
    safety: Safety,
    now: datetime,
    rule_cutoff: datetime,
    stores: list[Store],
    plans: list[StorePlan],
) -> str | None:
    """A cutoff in the future, clocks that differ, or too large a share of a store."""
    if rule_cutoff > now:
        return "the cutoff is in the future; check the host clock and the rule's keep"
    for store in stores:
        skew = store.clock_skew()
        if skew is not None and abs(skew) > timedelta(seconds=safety.max_clock_skew):
            return (
                f"{store.label}: the database clock differs from the host clock by "
                f"{abs(skew).total_seconds():.0f} s (allowed: {safety.max_clock_skew:.0f} s, "
                "safety.max_clock_skew); fix the clocks (NTP) before deleting by age"
            )
    for plan in plans:
        if plan.fraction > safety.max_delete_fraction:
            return (
                f"{plan.label}: would delete {plan.survey.expired} of {plan.survey.total} "
                f"{plan.survey.unit} ({plan.fraction:.0%}), more than "
                f"safety.max_delete_fraction ({safety.max_delete_fraction:.0%}). If that is "
                "intended (e.g. the first run on years of data), raise "
                "safety.max_delete_fraction for this run"
            )
    return None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
