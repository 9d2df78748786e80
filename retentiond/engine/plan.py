"""The plan of a run as a value: what each stage of a rule would do now, store by store.

The plan (`RulePlan`) holds the cutoff, a survey of every store and the verdict of the safety
guards. Planning only reads; `apply` is the only path that deletes.

Stages: a `delete` rule has one stage. An `anonymize` rule has one (anonymize what is older than
`keep`) or two (`then_delete_after`: first delete what is older than that, then anonymize the
rest older than `keep`). Each stage is a `RulePlan` of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from retentiond.config.model import Rule
from retentiond.engine.undated import Undated
from retentiond.policy.rules import NO_HOLDS, Holds
from retentiond.stores import Survey

DELETE, ANONYMIZE = "delete", "anonymize"


@dataclass(frozen=True)
class StorePlan:
    label: str
    kind: str
    survey: Survey
    batch_size: int  # rows per batch; adaptive stores (batch_time): the first batch's
    absent: str | None = None  # why an optional store is not there
    since: datetime | None = None  # anonymize: the previous complete run's cutoff
    failed: str | None = None  # why the store could not be opened or surveyed in this run
    batch_time: float | None = None  # adaptive batches: the seconds each one aims at
    undated: Undated | None = None  # objects no date can be read from, if any
    undated_failure: str | None = None  # why the store fails for them (beyond the tolerated)

    @property
    def batches(self) -> int | None:
        """How many batches deleting the expired objects takes, at least; None when their size
        adapts to their duration (batch_time)."""
        if self.survey.batches is not None:
            return self.survey.batches
        if self.batch_time is not None:
            return None
        return -(-self.survey.expired // self.batch_size)

    @property
    def fraction(self) -> float:
        return self.survey.expired / self.survey.total if self.survey.total else 0.0


@dataclass(frozen=True)
class RulePlan:
    rule: Rule
    cutoff: datetime
    stores: list[StorePlan]
    refusal: str | None  # why a run would be refused; None when it may proceed
    stage: str = DELETE
    holds: Holds = NO_HOLDS
    forced: tuple[str, ...] = ()  # guards overridden with --force (recorded in the log)
    # holds the log shows in force over this rule that the config no longer has (refused)
    vanished: tuple[str, ...] = ()
    # holds in force over this rule that match no object of any age in its stores
    unmatched: tuple[str, ...] = ()

    @property
    def expired(self) -> int:
        return sum(s.survey.expired for s in self.stores)

    @property
    def held(self) -> int:
        return sum(s.survey.held for s in self.stores)


def matching_nothing(plans: list[RulePlan]) -> list[str]:
    """Holds that match nothing in every rule planned that they cover."""
    covered = {hold for p in plans for hold in p.holds.ids}
    matched = {hold for p in plans for hold in p.holds.ids if hold not in p.unmatched}
    return sorted(covered - matched)
