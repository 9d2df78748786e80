"""The report's verdicts: whether each rule met its deadline at every moment of the period
(the compliance matrix), and whether what a rule anonymized may be called anonymous."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from retentiond.config.model import Rule
from retentiond.evidence.report.catalogue import deadline_text, schedule_interval, span_text
from retentiond.evidence.report.replay import Replay
from retentiond.evidence.report.values import (
    Anonymization,
    ComplianceRow,
    FieldTransform,
    StoreAnonymization,
)
from retentiond.policy.durations import Duration, parse_duration

# A rule without a schedule is run by retentiond-once.timer, daily.
UNSCHEDULED_INTERVAL = timedelta(days=1)


def compliance(replay: Replay, systems: list[str]) -> list[ComplianceRow]:
    config = replay.config
    rows = []
    window_end = min(replay.period.end, replay.generated)
    for system in systems:
        names = [rule.name for rule in config.rules]
        names += sorted({r.rule for r in replay.runs.values() if r.system == system} - set(names))
        for name in names:
            rows.append(_compliance_row(replay, system, name, window_end))
    return rows


def _compliance_row(replay: Replay, system: str, name: str, window_end: datetime) -> ComplianceRow:
    config = replay.config
    grace = config.safety.deadline_grace
    try:
        rule: Rule | None = config.rule(name)
    except KeyError:
        rule = None
    if rule is not None:
        keep: Duration | None = rule.keep
        interval, interval_text = schedule_interval(rule)
    else:
        keep = _parse_keep(replay.keeps.get((system, name), ""))
        interval = UNSCHEDULED_INTERVAL
        interval_text = f"{span_text(interval)} (assumed)"
    keep_text = str(keep) if keep else "unknown"
    deadline = deadline_text(keep, interval_text, grace) if keep else "unknown"
    successes = sorted(replay.successes.get((system, name), []))
    last = replay.last.get((system, name))
    verdict, level, why = verdict_for(
        successes,
        last[1] if last else None,
        replay.period.start,
        window_end,
        lambda t: t + interval + grace.delta(),
        replay.period.zone,
    )
    if rule is None:
        why = f"{why}; the rule is not in this config (keep from the log)"
    return ComplianceRow(
        held=last[3] if last else None,
        system=system,
        rule=name,
        keep=keep_text,
        deadline=deadline,
        last_success=max((t for t in successes if replay.period.contains(t)), default=None),
        last_run=last[0] if last else None,
        last_status=last[1] if last else None,
        remaining=last[2] if last else None,
        verdict=verdict,
        level=level,
        note=why,
    )


def _parse_keep(text: str) -> Duration | None:
    try:
        return parse_duration(text) if text else None
    except ValueError:
        return None


def verdict_for(
    successes: Sequence[datetime],
    last_status: str | None,
    start: datetime,
    end: datetime,
    covered_until: Callable[[datetime], datetime],
    zone: tzinfo = UTC,
) -> tuple[str, str, str]:
    """Whether the deadline held at every moment from `start` to `end`.

    A verified run (status done) at T leaves nothing older than keep, so until
    `covered_until(T)` = T + run interval + grace nothing can be older than the deadline. A moment
    not covered by any earlier verified run is a moment the deadline may have been exceeded.
    """
    if end <= start:
        return "not evaluated", "amber", "the period has not begun"
    done = sorted(t for t in successes if t <= end)
    if not done:
        return "no verified run", "red", "no run of this rule ended done (verified) by then"
    gaps: list[tuple[datetime, datetime]] = []
    cursor = start
    earlier = [t for t in done if t <= start]
    covered = covered_until(earlier[-1]) if earlier else None
    leading: datetime | None = None
    if covered is None:
        leading = done[0]  # no verified run before the period: evidence starts with the first
        cursor = done[0]
        covered = covered_until(done[0])
    for moment in (t for t in done if t > cursor):
        if moment > covered:
            gaps.append((covered, moment))
        covered = max(covered, covered_until(moment))
    if covered < end:
        gaps.append((covered, end))
    if gaps:
        first, last = max(gaps, key=lambda g: g[1] - g[0])
        days = (last - first).total_seconds() / 86400
        return (
            "deadline exceeded",
            "red",
            f"no verified run for {days:.1f} days beyond the allowed interval "
            f"({_date(first, zone)} to {_date(last, zone)})",
        )
    if leading is not None and leading > start:
        return (
            "met since the first verified run",
            "amber",
            f"not evidenced before {_date(leading, zone)}: no verified run earlier in the log",
        )
    if last_status not in (None, "done"):
        return "met", "amber", f"the last run in the period ended {last_status}"
    return "met", "green", "every moment of the period was within the deadline"


def _date(moment: datetime, zone: tzinfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


# --- anonymized or pseudonymized ------------------------------------------------------------------


def anonymization(replay: Replay) -> list[Anonymization]:
    """Per anonymize rule: each store's transforms and latest measured smallest group.

    "anonymized" only when every store of the rule, on every system that anonymized it,
    last measured a smallest group of at least the rule's k; else "pseudonymized"."""
    results = []
    for rule in replay.config.rules:
        if rule.action != "anonymize":
            continue
        k = rule.k_anonymity
        stores = []
        for store in rule.stores:
            transforms: dict[str, Any] = getattr(store, "anonymize", None) or {}
            named = store.type == "csv"
            fields = [
                FieldTransform(f"field {key}" if named else key, transform.describe())
                for key, transform in transforms.items()
            ]
            measured = [
                group
                for (_, rule_name, label), (_, group) in replay.groups.items()
                if rule_name == rule.name and label == store.label
            ]
            known = bool(measured) and all(g is not None for g in measured)
            smallest = min((g for g in measured if g is not None), default=None)
            stores.append(
                StoreAnonymization(
                    store.label,
                    store.type,
                    fields,
                    smallest,
                    known,
                    _wording(smallest, known, k),
                )
            )
        below = [s.smallest_group for s in stores if s.smallest_group is not None]
        lowest = min(below, default=None)
        # a group measured below k settles it; else every store that anonymized anything
        # must have been measured (an optional store absent everywhere holds nothing)
        below_k = lowest is not None and lowest < k
        measured_labels = {label for (_, _, label) in replay.groups}
        absent_only = replay.absent_seen - measured_labels
        present = [s for s in stores if s.measured or s.store not in absent_only]
        settled = below_k or (bool(present) and all(s.measured for s in present))
        wording = _wording(lowest, settled, k)
        results.append(Anonymization(rule.name, k, wording, wording == ANONYMIZED, stores))
    return results


ANONYMIZED = "anonymized"


def _wording(smallest: int | None, measured: bool, k: int) -> str:
    if not measured or smallest is None:
        return "pseudonymized (group sizes not measured)"
    if smallest < k:
        return f"pseudonymized (smallest group {smallest} < {k})"
    return ANONYMIZED
