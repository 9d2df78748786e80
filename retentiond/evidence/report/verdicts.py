"""The report's verdicts: whether each rule met its deadline at every moment of the period
(the compliance matrix), and whether what a rule anonymized may be called anonymous."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from retentiond.config.model import Rule
from retentiond.evidence.report.catalogue import deadline_text, schedule_interval
from retentiond.evidence.report.replay import Replay
from retentiond.evidence.report.values import (
    Anonymization,
    ComplianceRow,
    FieldTransform,
    StoreAnonymization,
)
from retentiond.evidence.report.wording import (
    ENGLISH,
    decimal,
    label,
    period_text,
    span_text,
    whole,
)
from retentiond.i18n import N_, Words
from retentiond.policy.anonymize import (
    Blank,
    Bucket,
    CoarsenTime,
    Constant,
    MapValues,
    TruncateDigits,
)
from retentiond.policy.durations import Duration, parse_duration

# A rule without a schedule is run by retentiond-once.timer, daily.
UNSCHEDULED_INTERVAL = timedelta(days=1)


def compliance(replay: Replay, systems: list[str]) -> list[ComplianceRow]:
    """A row per system and rule, its verdict and note in the words of `replay.words`."""
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
    said = replay.words
    grace = config.safety.deadline_grace
    try:
        rule: Rule | None = config.rule(name)
    except KeyError:
        rule = None
    if rule is not None:
        keep: Duration | None = rule.keep
        interval, interval_text = schedule_interval(rule, said)
    else:
        keep = _parse_keep(replay.keeps.get((system, name), ""))
        interval = UNSCHEDULED_INTERVAL
        interval_text = said.gettext("{span} (assumed)").format(span=span_text(interval, said))
    unknown = said.gettext("unknown")
    keep_text = period_text(said, keep) if keep else unknown
    deadline = deadline_text(keep, interval_text, grace, said) if keep else unknown
    successes = sorted(replay.successes.get((system, name), []))
    last = replay.last.get((system, name))
    verdict, level, why = verdict_for(
        successes,
        last[1] if last else None,
        replay.period.start,
        window_end,
        lambda t: t + interval + grace.delta(),
        replay.period.zone,
        said,
    )
    if rule is None:
        why = said.gettext("{why}; the rule is not in this config (keep from the log)").format(
            why=why
        )
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
    said: Words = ENGLISH,
) -> tuple[str, str, str]:
    """Whether the deadline held at every moment from `start` to `end`.

    A verified run (status done) at T leaves nothing older than keep, so until
    `covered_until(T)` = T + run interval + grace nothing can be older than the deadline. A moment
    not covered by any earlier verified run is a moment the deadline may have been exceeded.
    The verdict and its note are in `said`'s language; the level is an identifier.
    """
    _ = said.gettext
    if end <= start:
        return _(NOT_EVALUATED), "amber", _("the period has not begun")
    done = sorted(t for t in successes if t <= end)
    if not done:
        return _(NO_VERIFIED_RUN), "red", _("no run of this rule ended done (verified) by then")
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
        note = _("no verified run for {days} days beyond the allowed interval ({first} to {last})")
        return (
            _(EXCEEDED),
            "red",
            note.format(
                days=decimal(said, days, 1),
                first=said.moment(first, zone),
                last=said.moment(last, zone),
            ),
        )
    if leading is not None and leading > start:
        note = _("not evidenced before {moment}: no verified run earlier in the log")
        return _(MET_SINCE_FIRST), "amber", note.format(moment=said.moment(leading, zone))
    if last_status not in (None, "done"):
        note = _("the last run in the period ended {status}")
        return _(MET), "amber", note.format(status=label(said, last_status))
    return _(MET), "green", _("every moment of the period was within the deadline")


# The verdicts, in English (translated where a row is made; summary.py shortens them).
MET = N_("met")
MET_SINCE_FIRST = N_("met since the first verified run")
EXCEEDED = N_("deadline exceeded")
NO_VERIFIED_RUN = N_("no verified run")
NOT_EVALUATED = N_("not evaluated")


# --- anonymized or pseudonymized ------------------------------------------------------------------


def anonymization(replay: Replay) -> list[Anonymization]:
    """Per anonymize rule: each store's transforms and latest measured smallest group.

    "anonymized" only when every store of the rule, on every system that anonymized it,
    last measured a smallest group of at least the rule's k; else "pseudonymized"."""
    said = replay.words
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
                FieldTransform(
                    said.gettext("field {key}").format(key=key) if named else key,
                    _transform_text(transform, said),
                )
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
                    _wording(smallest, known, k, said),
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
        anonymous = settled and lowest is not None and lowest >= k
        wording = _wording(lowest, settled, k, said)
        results.append(Anonymization(rule.name, k, wording, anonymous, stores))
    return results


ANONYMIZED = N_("anonymized")


def _transform_text(transform: Any, said: Words) -> str:
    """How the report names a field's transform (policy/anonymize.py's `describe`, in words)."""
    _ = said.gettext
    if isinstance(transform, TruncateDigits):
        return _("last {digits} digits replaced by x").format(digits=transform.digits)
    if isinstance(transform, Blank):
        return _("blanked")
    if isinstance(transform, Constant):
        return _("replaced by the constant {value}").format(value=repr(transform.value))
    if isinstance(transform, CoarsenTime) and transform.unit == "hour":
        return _("time cut down to the hour")
    if isinstance(transform, CoarsenTime) and transform.unit == "day":
        return _("time cut down to the day")
    if isinstance(transform, Bucket):
        bounds = ", ".join(map(str, transform.bounds))
        return _("put into buckets {bounds}").format(bounds=bounds)
    if isinstance(transform, MapValues):
        groups = len(set(dict(transform.mapping).values()))
        return _("mapped to {groups} groups, others to {default}").format(
            groups=groups, default=repr(transform.default)
        )
    return str(transform.describe())


def _wording(smallest: int | None, measured: bool, k: int, said: Words) -> str:
    if not measured or smallest is None:
        return said.gettext("pseudonymized (group sizes not measured)")
    if smallest < k:
        return said.gettext("pseudonymized (smallest group {smallest} < {k})").format(
            smallest=whole(said, smallest), k=whole(said, k)
        )
    return said.gettext(ANONYMIZED)
