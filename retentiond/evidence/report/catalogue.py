"""What the config states, as the report lists it: the organisation, the rule catalogue
(Regelkatalog) with each rule's regular deletion period, and the holds in force."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, tzinfo

from retentiond.config.model import Config, HoldConfig, Rule
from retentiond.evidence.report.values import HoldRow, Organisation, RuleRow, StoreRef
from retentiond.policy import rules
from retentiond.policy.durations import Duration
from retentiond.policy.rules import hold_in_force, review_overdue

NOT_SET = "not set"
CONTROLLER_NOT_SET = "not set (add organisation: to the config)"


def organisation(config: Config) -> Organisation:
    org = config.organisation
    if org is None:
        return Organisation(CONTROLLER_NOT_SET, NOT_SET, NOT_SET, configured=False)
    return Organisation(
        org.controller,
        org.dpo_contact or NOT_SET,
        org.processing_record or NOT_SET,
        configured=True,
    )


def rule_rows(config: Config) -> list[RuleRow]:
    """The rules in the order DIN 66398 lists them: by period, shortest first."""
    rows = [_rule_row(rule, config) for rule in config.rules]
    return sorted(rows, key=lambda row: (row.keep_days, row.name))


def _rule_row(rule: Rule, config: Config) -> RuleRow:
    _, interval = schedule_interval(rule)
    grace = config.safety.deadline_grace
    then = rule.then_delete_after
    stages: str = rule.action
    if then is not None:
        stages = f"anonymize after {rule.keep}, delete after {then}"
    return RuleRow(
        name=rule.name,
        description=rule.description or NOT_SET,
        purpose=rule.purpose or NOT_SET,
        legal_basis=rule.legal_basis or NOT_SET,
        start_event=rule.start_event,
        keep=str(rule.keep),
        deadline=deadline_text(rule.keep, interval, config.safety.deadline_grace),
        action=rule.action,
        schedule=rule.schedule.text if rule.schedule else "none (retentiond-once.timer, daily)",
        stores=[StoreRef(s.type, s.label, s.optional) for s in rule.stores],
        keep_days=approximate_days(rule.keep),
        stages=stages,
        then_delete_after=str(then) if then is not None else None,
        delete_deadline=deadline_text(then, interval, grace) if then is not None else None,
        min_keep=str(rule.min_keep) if rule.min_keep is not None else None,
        k_anonymity=rule.k_anonymity if rule.action == "anonymize" else None,
    )


def approximate_days(period: Duration) -> float:
    return period.years * 365.25 + period.months * 30.44 + period.weeks * 7 + period.days


def schedule_interval(rule: Rule) -> tuple[timedelta, str]:
    """The longest gap between two scheduled runs of the rule, and its text, as `status` has it."""
    interval = rules.schedule_interval(rule.schedule)
    return interval, rules.interval_text(interval)


def deadline_text(keep: Duration, interval: str, grace: Duration) -> str:
    """The regular deletion period as its three parts: keep + run interval + grace."""
    return f"{keep} + {interval} + {grace}"


def span_text(span: timedelta) -> str:
    """'1 day', '3 days', '1 hour', '1 day 6 hours' (as `retentiond status` names an interval)."""
    hours, rest = divmod(span.seconds, 3600)
    parts = [(span.days, "day"), (hours, "hour"), (rest // 60, "minute")]
    return " ".join(f"{n} {unit}{'s' if n != 1 else ''}" for n, unit in parts if n) or "0 minutes"


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
