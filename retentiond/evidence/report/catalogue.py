"""What the config states, as the report lists it: the organisation, the rule catalogue
(Regelkatalog) with each rule's regular deletion period, and the holds in force."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, tzinfo

from retentiond.config.model import Config, HoldConfig, Rule
from retentiond.evidence.report.values import HoldRow, Organisation, RuleRow, StoreRef
from retentiond.evidence.report.wording import (
    ENGLISH,
    label,
    period_text,
    schedule_text,
    span_text,
)
from retentiond.i18n import N_, Words
from retentiond.policy import rules
from retentiond.policy.durations import Duration
from retentiond.policy.rules import hold_in_force, review_overdue

NOT_SET = N_("not set")
CONTROLLER_NOT_SET = N_("not set (add organisation: to the config)")
# When a rule's period starts (config: start_event), as the catalogue names it.
START_EVENTS = {"object time": N_("object time")}
UNSCHEDULED = N_("none (retentiond-once.timer, daily)")


def organisation(config: Config, said: Words = ENGLISH) -> Organisation:
    org = config.organisation
    not_set = said.gettext(NOT_SET)
    if org is None:
        return Organisation(said.gettext(CONTROLLER_NOT_SET), not_set, not_set, configured=False)
    return Organisation(
        org.controller,
        org.dpo_contact or not_set,
        org.processing_record or not_set,
        configured=True,
    )


def rule_rows(config: Config, said: Words = ENGLISH) -> list[RuleRow]:
    """The rules in the order DIN 66398 lists them: by period, shortest first."""
    rows = [_rule_row(rule, config, said) for rule in config.rules]
    return sorted(rows, key=lambda row: (row.keep_days, row.name))


def _rule_row(rule: Rule, config: Config, said: Words) -> RuleRow:
    _, interval = schedule_interval(rule, said)
    grace = config.safety.deadline_grace
    then = rule.then_delete_after
    stages = label(said, rule.action)
    if then is not None:
        stages = said.gettext("anonymize after {keep}, delete after {then}").format(
            keep=period_text(said, rule.keep), then=period_text(said, then)
        )
    not_set = said.gettext(NOT_SET)
    start = START_EVENTS.get(rule.start_event)
    return RuleRow(
        name=rule.name,
        description=rule.description or not_set,
        purpose=rule.purpose or not_set,
        legal_basis=rule.legal_basis or not_set,
        start_event=said.gettext(start) if start else rule.start_event,
        keep=period_text(said, rule.keep),
        deadline=deadline_text(rule.keep, interval, config.safety.deadline_grace, said),
        action=rule.action,
        schedule=schedule_text(said, rule.schedule) if rule.schedule else said.gettext(UNSCHEDULED),
        stores=[StoreRef(s.type, s.label, s.optional) for s in rule.stores],
        keep_days=approximate_days(rule.keep),
        stages=stages,
        then_delete_after=period_text(said, then) if then is not None else None,
        delete_deadline=deadline_text(then, interval, grace, said) if then is not None else None,
        min_keep=period_text(said, rule.min_keep) if rule.min_keep is not None else None,
        k_anonymity=rule.k_anonymity if rule.action == "anonymize" else None,
    )


def approximate_days(period: Duration) -> float:
    return period.years * 365.25 + period.months * 30.44 + period.weeks * 7 + period.days


def schedule_interval(rule: Rule, said: Words = ENGLISH) -> tuple[timedelta, str]:
    """The longest gap between two scheduled runs of the rule, and its text, as `status` has it
    (in `said`'s language)."""
    interval = rules.schedule_interval(rule.schedule)
    return interval, span_text(interval, said)


def deadline_text(keep: Duration, interval: str, grace: Duration, said: Words = ENGLISH) -> str:
    """The regular deletion period as its three parts: keep + run interval + grace."""
    return f"{period_text(said, keep)} + {interval} + {period_text(said, grace)}"


# --- reading the logs ----------------------------------------------------------------------------


def hold_rows(holds: Iterable[HoldConfig], now: datetime, zone: tzinfo) -> list[HoldRow]:
    """The holds in force at `now`, by counts of numbers and extensions only."""
    return [
        HoldRow(
            id=hold.id,
            reason=hold.reason,
            approved_by=hold.approved_by,
            review_by=hold.review_by,
            review_overdue=review_overdue(hold, now, zone),
            until=hold.until,
            rules=list(hold.rules) if hold.rules is not None else None,
            from_day=hold.from_,
            to_day=hold.to,
            numbers=len(hold.numbers),
            extensions=len(hold.extensions),
        )
        for hold in holds
        if hold_in_force(hold, now, zone)
    ]
