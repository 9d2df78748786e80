"""`retentiond plan`: the dry run. What each rule would delete or anonymize now; changes nothing.

One store that cannot be opened or surveyed is marked FAILED and the rest are planned; exit 1
when a store could not be planned or holds objects that cannot be dated.
"""

from __future__ import annotations

import json
from datetime import tzinfo
from typing import Any

import click

from retentiond.cli.context import Context, pass_context, rules_named
from retentiond.cli.output import byte_size, fail, iso, local_time
from retentiond.engine.engine import Engine
from retentiond.engine.plan import RulePlan, matching_nothing
from retentiond.evidence.history import read_history
from retentiond.evidence.log.opening import log_path


@click.command()
@click.option("--rule", "rule_name", metavar="NAME", help="Only this rule.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def plan(ctx: Context, rule_name: str | None, as_json: bool) -> None:
    """Dry run: what each rule would delete now. Changes nothing."""
    loaded = ctx.loaded
    engine = Engine(loaded)
    plans: list[RulePlan] = []
    history = read_history(log_path(loaded.config))
    for rule in rules_named(loaded, rule_name):
        # One store that cannot be opened or surveyed is marked FAILED; the rest are planned.
        with engine.open_stores(rule, isolate=True) as stores:
            plans += engine.plans(rule, stores, history, isolate=True)
    if as_json:
        click.echo(json.dumps([plan_json(p) for p in plans], indent=2))
    else:
        for rule_plan in plans:
            print_plan(rule_plan, loaded.config.zone())
        for hold_id in matching_nothing(plans):
            click.echo(
                f"hold {hold_id}: MATCHES NOTHING: no object of any age in the stores of its "
                f"rules; it protects nothing. {UNMATCHED_ADVICE}"
            )
    failed = {s.label for p in plans for s in p.stores if s.failed}
    undated = {s.label for p in plans for s in p.stores if s.undated_failure}
    problems = [
        f"{len(failed)} store(s) could not be planned" if failed else "",
        f"{len(undated)} store(s) hold objects that cannot be dated" if undated else "",
    ]
    if failed or undated:
        fail("; ".join(p for p in problems if p) + "; see above", 1)


UNMATCHED_ADVICE = (
    "Check its numbers (international form, in quotes), extensions, from/to and rules"
)


def plan_json(rule_plan: RulePlan) -> dict[str, Any]:
    return {
        "rule": rule_plan.rule.name,
        "stage": rule_plan.stage,
        "keep": str(rule_plan.rule.keep),
        "cutoff": iso(rule_plan.cutoff),
        "refusal": rule_plan.refusal,
        "holds": rule_plan.holds.ids,
        "holds_not_found": list(rule_plan.vanished),
        "holds_matching_nothing": list(rule_plan.unmatched),
        "stores": [
            {
                "store": s.label,
                "kind": s.kind,
                "unit": s.survey.unit,
                "total": s.survey.total,
                "expired": s.survey.expired,
                "held": s.survey.held,
                "held_by": dict(s.survey.held_by),
                f"would_{rule_plan.stage}": 0 if rule_plan.refusal else s.survey.expired,
                "since": iso(s.since),
                "oldest": iso(s.survey.oldest),
                "expired_bytes": s.survey.expired_bytes,
                "batches": s.batches,
                "batch_time": s.batch_time,
                "skipped": dict(s.survey.skipped),
                "undated": s.survey.undated,
                "undated_failure": s.undated_failure,
                "warnings": list(s.survey.warnings),
                "absent": s.absent,
                "failed": s.failed,
            }
            for s in rule_plan.stores
        ],
    }


def print_plan(rule_plan: RulePlan, zone: tzinfo) -> None:
    rule = rule_plan.rule
    if rule_plan.stage == "anonymize":
        what = f"anonymize after {rule.keep}"
    elif rule.then_delete_after is not None:
        what = f"delete after {rule.then_delete_after}"
    else:
        what = f"keep {rule.keep}"
    click.echo(f"rule {rule.name}: {what}, cutoff {local_time(rule_plan.cutoff, zone)}")
    if rule_plan.holds:
        click.echo(f"  holds in force: {', '.join(rule_plan.holds.ids)}")
    for s in rule_plan.stores:
        survey = s.survey
        if s.absent:
            click.echo(f"  {s.kind} {s.label}: not found (optional): {s.absent}")
            continue
        if s.failed:
            click.echo(f"  {s.kind} {s.label}: FAILED: {s.failed}")
            continue
        oldest = local_time(survey.oldest, zone) if survey.oldest else "-"
        would = 0 if rule_plan.refusal else survey.expired
        size = f" ({byte_size(survey.expired_bytes)})" if survey.expired_bytes and would else ""
        since = f" (since {local_time(s.since, zone)})" if s.since else ""
        batches = (
            ""
            if not would
            else f" in batches of about {s.batch_time:g} s each"
            if s.batch_time is not None
            else f" in {s.batches} batches"
        )
        click.echo(
            f"  {s.kind} {s.label}: {survey.total} {survey.unit}, expired {survey.expired}, "
            f"held {survey.held}, oldest {oldest}, would {rule_plan.stage} {would}{size}{since}"
            f"{batches}"
        )
        if survey.skipped:
            parts = ", ".join(
                f"{reason} {count}" for reason, count in sorted(survey.skipped.items())
            )
            click.echo(f"    left alone: {parts}")
        if s.undated_failure is not None:
            click.echo(f"    FAILED: {s.undated_failure}")
        elif s.undated is not None:
            click.echo(f"    {s.undated.note()}")
        for warning in survey.warnings:
            click.echo(f"    warning: {warning}")
    if rule_plan.refusal:
        click.echo(f"  REFUSED: {rule_plan.refusal}")
    for reason in rule_plan.forced:
        click.echo(f"  FORCED (recorded): {reason}")
