"""`retentiond status`: is every rule within its deadline? Prints what `engine.status` computes.

Text for people (verdict per rule, its reasons, stores, holds) or `--json`. Exit 0 when no
deadline is exceeded (GREEN or AMBER), 4 when a rule is RED for its data, 1 when a store or the
deletion log cannot be read (the rules are in `engine.status`).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import click

from retentiond.cli.context import Context
from retentiond.cli.output import local_time
from retentiond.engine.status import (
    NO_HOLDS_LINE,
    HoldStatus,
    ReportHistory,
    RuleStatus,
    RunRecord,
    Status,
    StoreStatus,
    compute,
)
from retentiond.policy.rules import interval_text


@click.command(name="status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status_command(context: Context, as_json: bool) -> None:
    """Compliance per rule: oldest remaining vs deadline, last and next run, holds.

    Exit 0 when no deadline is exceeded (GREEN or AMBER), 4 when a rule is RED for its data,
    1 when a store or the deletion log cannot be read.
    """
    result = compute(context.loaded)
    if as_json:
        click.echo(json.dumps(status_json(result), indent=2))
    else:
        click.echo(status_text(result), nl=False)
    sys.exit(result.exit_code)


def status_json(result: Status) -> dict[str, Any]:
    return {
        "now": _iso(result.now),
        "timezone": str(result.zone),
        "verdict": result.verdict,
        "exit_code": result.exit_code,
        "audit_log": {"path": str(result.audit_path), "problem": result.audit_problem},
        "rules": [_rule_json(r) for r in result.rules],
        "reports": None if result.reports is None else _reports_json(result.reports),
    }


def _reports_json(reports: ReportHistory) -> dict[str, Any]:
    return {
        "last_sent": _iso(reports.last_success),
        "last_period": reports.last_period,
        "failing": dict(reports.failures),
        "last_error": reports.last_error if reports.failures else None,
    }


def _reports_line(reports: ReportHistory, zone: tzinfo) -> str:
    """`reports: last sent 2026-11 at ...; FAILING: 2026-12 (3 attempts: <fixed wording>)`."""
    if reports.last_success is None:
        line = "reports: none sent yet"
    else:
        when = local_time(reports.last_success, zone)
        line = f"reports: last sent {reports.last_period} at {when}"
    if reports.failures:
        failing = ", ".join(f"{key} ({n} failed attempts)" for key, n in reports.failures.items())
        line += f"; FAILING: {failing}, last: {reports.last_error}; the daemon retries"
    return line


def _rule_json(r: RuleStatus) -> dict[str, Any]:
    oldest = r.oldest
    rule = r.rule
    return {
        "rule": rule.name,
        "verdict": r.verdict,
        "reasons": [{"level": reason.level, "text": reason.text} for reason in r.reasons],
        "keep": str(rule.keep),
        "cutoff": _iso(r.cutoff),
        "keep_seconds": _seconds(r.now - r.cutoff),
        "schedule": rule.schedule.text if rule.schedule else None,
        "interval": interval_text(r.deadline.interval),
        "interval_seconds": _seconds(r.deadline.interval),
        "interval_assumed": not r.deadline.scheduled,
        "grace": str(r.deadline.grace),
        "deadline": {
            "period": r.deadline.period(),
            "iso": r.deadline.iso(),
            "instant": _iso(r.deadline_instant),
            "seconds": _seconds(r.now - r.deadline_instant),
        },
        "last_success": _run_json(r.history.last_success),
        "last_run": _run_json(r.history.last_run),
        "next_run": _iso(r.next_run),
        "oldest": _iso(oldest.oldest) if oldest else None,
        "oldest_age_seconds": _age(r.now, oldest.oldest) if oldest else None,
        "oldest_store": oldest.label if oldest else None,
        "total": r.total("total"),
        "expired": r.total("expired"),
        "overdue": r.total("overdue"),
        "left_behind": r.total("left_behind"),
        "held": r.total("held"),
        "holds": [
            {
                "id": h.id,
                "review_by": h.review_by.isoformat(),
                "review_overdue": h.review_overdue,
                "until": h.until.isoformat() if h.until else None,
                "held": h.held,
                "matches_nothing": h.matches_nothing,
            }
            for h in r.holds
        ],
        "refusal": r.refusal,
        "stores": [_store_json(r.now, s) for s in r.stores],
    }


def _run_json(run: RunRecord | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {
        "ts": _iso(run.ts),
        "status": run.status,
        "seq": run.seq,
        "run_id": run.run_id,
        "deleted": run.deleted,
        "cutoff": _iso(run.cutoff),
    }


def _store_json(now: datetime, s: StoreStatus) -> dict[str, Any]:
    return {
        "store": s.label,
        "kind": s.kind,
        "unit": s.unit,
        "total": s.total,
        "expired": s.expired,
        "overdue": s.overdue,
        "left_behind": s.left_behind,
        "held": s.held,
        "oldest": _iso(s.oldest),
        "oldest_age_seconds": _age(now, s.oldest),
        "skipped": dict(s.skipped),
        "undated": s.undated.count if s.undated else 0,
        "undated_tolerated": s.undated.tolerated if s.undated else None,
        "undated_failure": s.undated_failure,
        "absent": s.absent,
        "error": s.error,
    }


def status_text(result: Status) -> str:
    zone = result.zone
    lines = [f"status at {local_time(result.now, zone)} ({zone})"]
    for r in result.rules:
        lines += ["", *_rule_lines(r, zone)]
    lines.append("")
    if result.audit_problem:
        lines.append(f"deletion log {result.audit_path}: PROBLEM: {result.audit_problem}")
    if result.reports is not None:
        lines.append(_reports_line(result.reports, zone))
    lines.append(f"overall: {result.verdict.upper()} (exit {result.exit_code})")
    return "\n".join(lines) + "\n"


def _rule_lines(r: RuleStatus, zone: tzinfo) -> list[str]:
    rule, dl = r.rule, r.deadline
    if rule.schedule is not None:
        schedule = f"schedule {rule.schedule.text} (interval {interval_text(dl.interval)})"
        next_run = f"next run: {local_time(r.next_run, zone)}"
    else:
        schedule = "no schedule: assumed daily (run by `run --once` only)"
        next_run = "next run: none (no schedule)"
    lines = [
        f"rule {rule.name}: {r.verdict.upper()}",
        f"  keep {rule.keep}, {schedule}, grace {dl.grace}",
        f"  deadline {dl.period()}: overdue if older than {local_time(r.deadline_instant, zone)}",
        f"  last successful run: {_run_line(r.history.last_success, zone)}",
        f"  last run: {_run_line(r.history.last_run, zone)}",
        f"  {next_run}",
        f"  oldest remaining: {_oldest_line(r, zone)}",
    ]
    for s in r.stores:
        lines += _store_lines(s, zone)
    if r.holds:
        lines += [_hold_line(h) for h in r.holds]
    else:
        lines.append(f"  {NO_HOLDS_LINE}")
    if r.refusal:
        lines.append(f"  a run now would be refused: {r.refusal}")
    lines += [f"  {reason.level.upper()}: {reason.text}" for reason in r.reasons]
    return lines


def _hold_line(hold: HoldStatus) -> str:
    review = f"review by {hold.review_by}" + (" (OVERDUE)" if hold.review_overdue else "")
    until = f", until {hold.until}" if hold.until else ""
    nothing = ", MATCHES NOTHING" if hold.matches_nothing else ""
    return f"  hold {hold.id}: {hold.held} held{nothing}, {review}{until}"


def _run_line(run: RunRecord | None, zone: tzinfo) -> str:
    if run is None:
        return "none recorded"
    deleted = f", deleted {run.deleted}" if run.deleted is not None else ""
    return f"{local_time(run.ts, zone)}, {run.status}{deleted} (deletion log entry #{run.seq})"


def _oldest_line(r: RuleStatus, zone: tzinfo) -> str:
    store = r.oldest
    if store is None or store.oldest is None:
        if any(s.error for s in r.stores):
            return "unknown"
        return "unknown: none can be dated" if any(s.undated for s in r.surveyed) else "none"
    oldest = store.oldest
    if oldest < r.cutoff and store.held and not store.expired:
        verdict = "held: every expired object of this store is under a hold"
    elif oldest < r.deadline_instant:
        verdict = "past the deadline"
    elif oldest < r.cutoff:
        verdict = "past keep, within the deadline"
    else:
        verdict = "within keep"
    return (
        f"{local_time(oldest, zone)} in {store.label}, {_days(r.now - oldest)} old "
        f"(keep {_days(r.now - r.cutoff)}, deadline {_days(r.now - r.deadline_instant)}): "
        f"{verdict}"
    )


def _store_lines(s: StoreStatus, zone: tzinfo) -> list[str]:
    if s.error is not None:
        return [f"  {s.kind} {s.label}: FAILED: {s.error}"]
    if s.absent is not None:
        return [f"  {s.kind} {s.label}: not found (optional): {s.absent}"]
    lines = [
        f"  {s.kind} {s.label}: {s.total} {s.unit}, expired {s.expired}, overdue {s.overdue}, "
        f"left behind {s.left_behind}, held {s.held}, oldest {local_time(s.oldest, zone)}"
    ]
    if s.skipped:
        parts = ", ".join(f"{reason} {count}" for reason, count in sorted(s.skipped.items()))
        lines.append(f"    left alone: {parts}")
    if s.undated is not None and s.undated_failure is None:
        lines.append(f"    {s.undated.note()}")
    return lines


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment else None


def _seconds(span: timedelta) -> float:
    return round(span.total_seconds(), 3)


def _age(now: datetime, moment: datetime | None) -> float | None:
    return _seconds(now - moment) if moment else None


def _days(span: timedelta) -> str:
    hours = span.seconds // 3600
    return f"{span.days} d {hours} h" if span.days else f"{hours} h {span.seconds % 3600 // 60} min"
