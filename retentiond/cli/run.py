"""`retentiond run`: the daemon (the rules on their schedules), or `--once`: the rules now.

The daemon runs in the foreground (systemd Type=notify) with its monitoring: metrics over HTTP
when configured, pings per rule. `run --once` enforces the rules now, prints what each run did
and exits with the runs' code (DESIGN.md command table); SIGTERM and SIGINT finish the current
batch first. Starting either, with its monitoring, is `service.launch`; this module parses and
prints.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, tzinfo
from typing import Any

import click

from retentiond import dberrors as dberror
from retentiond.cli.context import Context, pass_context, rules_named
from retentiond.cli.output import byte_size, fail, iso, local_time
from retentiond.config.loader import LoadedConfig
from retentiond.engine.holds import end_hold_refusal
from retentiond.engine.outcome import RunOutcome, exit_code
from retentiond.evidence import log as audit
from retentiond.service.launch import run_once, serve


@click.command()
@click.option("--once", is_flag=True, help="Enforce the rules now and exit.")
@click.option("--rule", "rule_name", metavar="NAME", help="Only this rule.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--force",
    is_flag=True,
    help="With --once: proceed past the min_keep and max_increase guards, and end holds the "
    "log shows in force that the config no longer has (recorded).",
)
@click.option(
    "--end-hold",
    "end_holds",
    multiple=True,
    metavar="ID",
    help="With --once: end a hold that was removed from the config on purpose (recorded).",
)
@pass_context
def run(
    ctx: Context,
    once: bool,
    rule_name: str | None,
    as_json: bool,
    force: bool,
    end_holds: tuple[str, ...],
) -> None:
    """Enforce the rules: as a daemon on their schedules, or with --once now and exit.

    The daemon runs in the foreground (systemd Type=notify): SIGHUP or a saved config reloads,
    SIGTERM finishes the current batch and exits 0.
    """
    if not once:
        if rule_name or as_json or force or end_holds:
            raise click.UsageError(
                "--rule, --json, --force and --end-hold go with --once; the daemon runs every rule"
            )
        dberror.show_server_text(None)  # the journal never gets a database's own words
        sys.exit(serve(ctx.loaded))
    loaded = ctx.loaded
    _check_end_holds(loaded, end_holds)
    outcomes = enforce(loaded, rule_name, as_json=as_json, force=force, end_holds=end_holds)
    sys.exit(exit_code(outcomes))


def _check_end_holds(loaded: LoadedConfig, end_holds: tuple[str, ...]) -> None:
    """--end-hold ends only a hold the log shows in force that the config no longer has."""
    refusal = end_hold_refusal(loaded.config, end_holds, datetime.now(UTC))
    if refusal is not None:
        fail(refusal, 2)


def enforce(
    loaded: LoadedConfig,
    rule_name: str | None,
    *,
    as_json: bool,
    force: bool = False,
    end_holds: tuple[str, ...] = (),
) -> list[RunOutcome]:
    """`run --once`: the rules now, then what each run did, as text or JSON."""
    show_progress = not as_json and sys.stderr.isatty()
    outcomes, head = run_once(
        loaded,
        rules_named(loaded, rule_name),
        progress=_progress if show_progress else None,
        after_rule=(lambda: click.echo("", err=True)) if show_progress else None,
        force=force,
        end_holds=end_holds,
    )
    if as_json:
        result = {"runs": [outcome_json(o) for o in outcomes], "audit_head": list(head)}
        click.echo(json.dumps(result, indent=2))
    else:
        for outcome in outcomes:
            print_outcome(outcome, loaded.config.zone())
        click.echo(f"audit log {audit.log_path(loaded.config)}: head #{head[0]} {head[1][:16]}")
    return outcomes


def outcome_json(outcome: RunOutcome) -> dict[str, Any]:
    return {
        "rule": outcome.rule,
        "run_id": outcome.run_id,
        "status": outcome.status,
        "message": outcome.message,
        "cutoff": iso(outcome.cutoff),
        "deleted": outcome.deleted,
        "anonymized": outcome.anonymized,
        "seconds": outcome.seconds,
        "stores": [
            {
                "store": s.label,
                "stage": s.stage,
                "unit": s.unit,
                "deleted": s.deleted,
                "anonymized": s.anonymized,
                "held": s.held,
                "held_by": s.held_by,
                "bytes": s.bytes,
                "batches": s.batches,
                "remaining": s.remaining,
                "undated": s.undated.count if s.undated else 0,
                "undated_failed": s.undated_failure is not None,
                "skipped": s.skipped,
                "counts": s.counts,
            }
            for s in outcome.stores
        ],
    }


def print_outcome(outcome: RunOutcome, zone: tzinfo) -> None:
    cutoff = local_time(outcome.cutoff, zone) if outcome.cutoff else "-"
    click.echo(f"rule {outcome.rule}: {outcome.status}, cutoff {cutoff}, {outcome.seconds:.1f} s")
    for s in outcome.stores:
        if s.absent:
            click.echo(f"  {s.label}: not found (optional)")
            continue
        size = f" ({byte_size(s.bytes)})" if s.bytes else ""
        held = f", {s.held} held" if s.held else ""
        if s.stage == "anonymize":
            click.echo(
                f"  {s.label}: anonymized {s.anonymized} {s.unit} in {s.batches} batches{held}"
            )
        else:
            if s.failed:
                remaining = f"FAILED: {s.failed}"
            elif s.undated_failure is not None and s.undated is not None:
                remaining = f"NOT verified: {s.undated.counts()} cannot be dated"
            elif s.remaining is None:
                remaining = "not verified (the run stopped first)"
            elif s.remaining == 0:
                remaining = "verified: none expired remain"
            else:
                remaining = f"{s.remaining} remain"
            click.echo(
                f"  {s.label}: deleted {s.deleted} {s.unit}{size} in {s.batches} batches, "
                f"{remaining}{held}"
            )
        if s.skipped:
            parts = ", ".join(f"{reason} {count}" for reason, count in sorted(s.skipped.items()))
            click.echo(f"    left alone: {parts}")
        if s.undated is not None and s.undated_failure is None:
            click.echo(f"    {s.undated.note()}")
        if s.counts:
            parts = ", ".join(f"{name} {count}" for name, count in sorted(s.counts.items()))
            click.echo(f"    also: {parts}")
    if outcome.message:
        click.echo(f"  {outcome.message}")


def _progress(label: str, done: int, expected: int) -> None:
    click.echo(f"\r  {label}: {done} / {expected}", nl=False, err=True)
