"""Command line: parses, calls the engine or the audit log, prints. Exit codes as in DESIGN.md."""

from __future__ import annotations

import importlib
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from types import FrameType
from typing import Any, ClassVar, NoReturn

import click

from retentiond import __version__, logs, safefiles
from retentiond.config.loader import LoadedConfig, config_path, load_config
from retentiond.config.model import Rule
from retentiond.config.pbxfiles import THREECX_MASTER_ACCOUNT, is_3cx_settings
from retentiond.engine.engine import Engine
from retentiond.engine.holds import vanished_holds
from retentiond.engine.observers import RunObserver
from retentiond.engine.outcome import RunOutcome, exit_code
from retentiond.engine.plan import RulePlan
from retentiond.errors import ConfigError, RetentiondError
from retentiond.evidence import log as audit
from retentiond.evidence.history import read_history
from retentiond.stores import AbsentStore
from retentiond.stores.db import errors as dberror


class Context:
    def __init__(self, config_option: str | None) -> None:
        self.config_option = config_option
        self._loaded: LoadedConfig | None = None

    @property
    def loaded(self) -> LoadedConfig:
        if self._loaded is None:
            self._loaded = load_config(config_path(self.config_option))
        return self._loaded


pass_context = click.make_pass_decorator(Context)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(2)  # a command-line mistake: like a config mistake, nothing was done
    except ConfigError as error:
        click.echo("retentiond: the config has errors; nothing was done:", err=True)
        for problem in error.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(error.exit_code)
    except RetentiondError as error:
        _fail(str(error), error.exit_code)
    except Exception as error:
        if not dberror.is_database_error(error):
            raise
        # A bug let a database error through: its traceback would carry the server's text
        # into the journal (safety rule 11); its codes do not.
        failure = dberror.describe(error, "unexpected database error")
        _fail(f"unexpected database error: {failure}; this is a bug in retentiond, report it", 1)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"retentiond: {message}", err=True)
    sys.exit(code)


class LazyGroup(click.Group):
    """Commands that pull in heavy libraries (report: Jinja2, SQLAlchemy inspection; status,
    find, erase) are imported when called, so the daemon's resident memory stays small."""

    LAZY: ClassVar[dict[str, str]] = {
        "audit": "retentiond.cli.audit:audit_group",
        "erase": "retentiond.cli.subjects:erase_command",
        "find": "retentiond.cli.subjects:find_command",
        "report": "retentiond.cli.report:report",
        "status": "retentiond.engine.status:status_command",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY:
            module, _, name = self.LAZY[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), name)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    "config_option",
    metavar="FILE",
    help="Config file (default: $RETENTIOND_CONFIG, else /etc/retentiond/retentiond.yaml).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug events.")
@click.option(
    "--show-db-messages",
    is_flag=True,
    help="Print the database's own error messages on stderr, as on a terminal. They may quote "
    "row values: the log, the journal and reports never get them, only codes.",
)
@click.version_option(__version__, prog_name="retentiond")
@click.pass_context
def cli(
    ctx: click.Context, config_option: str | None, verbose: bool, show_db_messages: bool
) -> None:
    """Enforce retention rules on a phone system's call data, with a verifiable deletion log."""
    # The demo narrates what happens itself; its log shows only warnings unless -v is given.
    logs.configure(verbose=verbose, quiet=ctx.invoked_subcommand == "demo")
    ctx.obj = Context(config_option)
    # A person at a terminal may see what the database said; the daemon never does (`run`).
    if show_db_messages or sys.stderr.isatty():
        dberror.show_server_text(sys.stderr)
        ctx.call_on_close(lambda: dberror.show_server_text(None))


# --- check -------------------------------------------------------------------------------------


@cli.command()
@pass_context
def check(ctx: Context) -> None:
    """Validate the config, connect to every store and show how each will be purged."""
    loaded = ctx.loaded
    config = loaded.config
    click.echo(
        f"config {loaded.path}: valid ({len(config.rules)} rules, sha256 {loaded.sha256[:12]})"
    )
    engine = Engine(loaded)
    failures = 0
    for name, connection in config.connections.items():
        if connection.password_from is not None and is_3cx_settings(connection.password_from):
            click.echo(f"connection {name}: warning: {THREECX_MASTER_ACCOUNT}")
    for rule in config.rules:
        click.echo(f"rule {rule.name}: keep {rule.keep}, action {rule.action}")
        for store_config in rule.stores:
            label = store_config.label
            try:
                with engine.open_stores(_single(rule, store_config)) as (store,):
                    if isinstance(store, AbsentStore):
                        click.echo(f"  {store.kind} {label}: not found (optional): {store.reason}")
                        continue
                    missing, excess = store.privileges()
                    if missing:
                        failures += 1
                        click.echo(f"  {store.kind} {label}: FAILED: " + "; ".join(missing))
                        continue
                    # What cannot be dated is never deleted: surveyed here, not left to a run
                    (dated,) = engine.plan(_single(rule, store_config), [store]).stores
                    if dated.undated_failure is not None:
                        failures += 1
                        click.echo(f"  {store.kind} {label}: FAILED: {dated.undated_failure}")
                        continue
                    click.echo(f"  {store.kind} {label}: ok")
                    if dated.undated is not None:
                        click.echo(f"    {dated.undated.note()}")
                    for line in excess:
                        click.echo(f"    warning: more privileges than needed: {line}")
                    for line in store.describe():
                        click.echo(f"    {line}")
                    skew = store.clock_skew()
                    if skew is not None:
                        click.echo(
                            f"    clock: database minus host = {skew.total_seconds():+.1f} s"
                        )
            except RetentiondError as error:
                failures += 1
                click.echo(f"  {store_config.type} {label}: FAILED: {error}")
    try:
        with audit.AuditLog(config.audit.path) as log:
            seq, _ = log.head
        click.echo(f"audit log {config.audit.path}: writable, {seq} entries")
    except RetentiondError as error:
        failures += 1
        click.echo(f"audit log {config.audit.path}: FAILED: {error}")
    if failures:
        _fail(f"{failures} problem(s) found; see above", 1)


def _single(rule: Rule, store_config: Any) -> Rule:
    return rule.model_copy(update={"stores": [store_config]})


# --- init --------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--preset",
    required=True,
    type=click.Choice(["freepbx", "asterisk", "3cx"]),
    help="The PBX to write a config for.",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="A preset setting, e.g. --set freepbx_conf=/etc/freepbx.conf (repeatable).",
)
@click.option(
    "--keep", "periods", multiple=True, metavar="RULE=PERIOD", help="e.g. --keep voicemail=30d"
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here instead of standard output; an existing file is never overwritten.",
)
def init(
    preset: str, assignments: tuple[str, ...], periods: tuple[str, ...], output: Path | None
) -> None:
    """Write the expanded, commented config of a preset for review."""
    from retentiond.config.init import render

    settings: dict[str, Any] = dict(_pairs(assignments, "--set"))
    for key, value in settings.items():
        if value.lower() in ("true", "false"):
            settings[key] = value.lower() == "true"
    text = render(preset, settings, dict(_pairs(periods, "--keep")))
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with output.open("x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        _fail(f"{output} exists; choose another file or remove it first", 2)
    except OSError as error:
        _fail(f"cannot write {output}: {error.strerror}", 1)
    click.echo(f"wrote {output}; review it, then: retentiond -c {output} check", err=True)


def _pairs(items: tuple[str, ...], option: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        pairs.append((key.strip(), value.strip()))
    return pairs


# --- plan --------------------------------------------------------------------------------------


@cli.command()
@click.option("--rule", "rule_name", metavar="NAME", help="Only this rule.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def plan(ctx: Context, rule_name: str | None, as_json: bool) -> None:
    """Dry run: what each rule would delete now. Changes nothing."""
    loaded = ctx.loaded
    engine = Engine(loaded)
    plans: list[RulePlan] = []
    history = read_history(loaded.config.audit.path)
    for rule in _rules(loaded, rule_name):
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
        _fail("; ".join(p for p in problems if p) + "; see above", 1)


UNMATCHED_ADVICE = (
    "Check its numbers (international form, in quotes), extensions, from/to and rules"
)


def matching_nothing(plans: list[RulePlan]) -> list[str]:
    """Holds that match nothing in every rule planned that they cover."""
    covered = {hold for p in plans for hold in p.holds.ids}
    matched = {hold for p in plans for hold in p.holds.ids if hold not in p.unmatched}
    return sorted(covered - matched)


def plan_json(rule_plan: RulePlan) -> dict[str, Any]:
    return {
        "rule": rule_plan.rule.name,
        "stage": rule_plan.stage,
        "keep": str(rule_plan.rule.keep),
        "cutoff": _iso(rule_plan.cutoff),
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
                "since": _iso(s.since),
                "oldest": _iso(s.survey.oldest),
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
    click.echo(f"rule {rule.name}: {what}, cutoff {_local(rule_plan.cutoff, zone)}")
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
        oldest = _local(survey.oldest, zone) if survey.oldest else "-"
        would = 0 if rule_plan.refusal else survey.expired
        size = f" ({_bytes(survey.expired_bytes)})" if survey.expired_bytes and would else ""
        since = f" (since {_local(s.since, zone)})" if s.since else ""
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


# --- run ---------------------------------------------------------------------------------------


@cli.command()
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
        sys.exit(_daemon(ctx.loaded))
    loaded = ctx.loaded
    _check_end_holds(loaded, end_holds)
    outcomes = enforce(loaded, rule_name, as_json=as_json, force=force, end_holds=end_holds)
    sys.exit(exit_code(outcomes))


def _check_end_holds(loaded: LoadedConfig, end_holds: tuple[str, ...]) -> None:
    """--end-hold ends only a hold the log shows in force that the config no longer has."""
    if not end_holds:
        return
    config = loaded.config
    history = read_history(config.audit.path)
    vanished = vanished_holds(history.holds, config.holds, datetime.now(UTC), config.zone())
    for hold_id in end_holds:
        if hold_id in vanished:
            continue
        if any(hold.id == hold_id for hold in config.holds):
            why = "is in the config: remove its file or entry first, or give it an until: date"
        else:
            why = "is not in force in the audit log"
        _fail(f"--end-hold {hold_id}: this hold {why}", 2)


def _daemon(loaded: LoadedConfig) -> int:
    """The daemon with its monitoring: metrics over HTTP when configured, pings per rule."""
    from retentiond.service.daemon import Daemon
    from retentiond.service.pings import Pings

    config = loaded.config
    observers: list[RunObserver] = []
    metrics = None
    if config.monitoring.metrics_listen:  # prometheus-client only when asked for: 13 MiB
        from retentiond.service.metrics import Metrics

        metrics = Metrics(config.rules)
        metrics.seed_from_audit(config.audit.path)
        metrics.serve(config.monitoring.metrics_listen)
        observers.append(metrics)
    pings = Pings(config.rules, config.monitoring.ping_timeout)
    observers.append(pings)
    try:
        return Daemon(loaded, observers=observers).serve()
    finally:
        pings.close(5)
        if metrics is not None:
            metrics.close()


def enforce(
    loaded: LoadedConfig,
    rule_name: str | None,
    *,
    as_json: bool,
    force: bool = False,
    end_holds: tuple[str, ...] = (),
) -> list[RunOutcome]:
    from retentiond.service.pings import Pings

    config = loaded.config
    rules = _rules(loaded, rule_name)
    show_progress = not as_json and sys.stderr.isatty()
    pings = Pings(rules, config.monitoring.ping_timeout)
    observers: list[RunObserver] = [pings]
    metrics = None
    if config.monitoring.metrics_textfile:
        from retentiond.service.metrics import Metrics

        metrics = Metrics(config.rules)
        observers.insert(0, metrics)
    with (
        _stop_on_signals() as stop,
        audit.AuditLog(
            config.audit.path,
            rotate_bytes=config.audit.rotate_bytes,
            rotate_yearly=config.audit.rotate_yearly,
        ) as log,
    ):
        engine = Engine(
            loaded,
            stop=stop,
            progress=_progress if show_progress else None,
            observers=observers,
            force=force,
            end_holds=end_holds,
        )
        outcomes = []
        for rule in rules:
            outcomes.append(engine.run(rule, log))
            if show_progress:
                click.echo("", err=True)
            if stop.is_set():
                break
        head = log.head
    pings.close(config.monitoring.ping_timeout)
    if metrics is not None and config.monitoring.metrics_textfile:
        # Seeded from the whole log, so a rule not run now keeps its last success in the file.
        metrics.seed_from_audit(config.audit.path)
        metrics.write_textfile(config.monitoring.metrics_textfile)
    if as_json:
        result = {"runs": [outcome_json(o) for o in outcomes], "audit_head": list(head)}
        click.echo(json.dumps(result, indent=2))
    else:
        for outcome in outcomes:
            print_outcome(outcome, loaded.config.zone())
        click.echo(f"audit log {loaded.config.audit.path}: head #{head[0]} {head[1][:16]}")
    return outcomes


def outcome_json(outcome: RunOutcome) -> dict[str, Any]:
    return {
        "rule": outcome.rule,
        "run_id": outcome.run_id,
        "status": outcome.status,
        "message": outcome.message,
        "cutoff": _iso(outcome.cutoff),
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
    cutoff = _local(outcome.cutoff, zone) if outcome.cutoff else "-"
    click.echo(f"rule {outcome.rule}: {outcome.status}, cutoff {cutoff}, {outcome.seconds:.1f} s")
    for s in outcome.stores:
        if s.absent:
            click.echo(f"  {s.label}: not found (optional)")
            continue
        size = f" ({_bytes(s.bytes)})" if s.bytes else ""
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


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGTERM and SIGINT finish the current batch, then stop: a batch is never cut in half."""
    stop = threading.Event()

    def request_stop(signum: int, _: FrameType | None) -> None:
        stop.set()

    previous: dict[signal.Signals, Callable[..., Any] | int | None] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, request_stop)
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# --- audit -------------------------------------------------------------------------------------


# audit, status, report, find, erase: registered lazily (LazyGroup.LAZY)


# --- demo --------------------------------------------------------------------------------------


@cli.command()
@click.argument("directory", default="demo-pbx", type=click.Path(file_okay=False, path_type=Path))
def demo(directory: Path) -> None:
    """Build a small demo PBX in DIRECTORY; plan, enforce, verify, show status and report."""
    import socket
    from datetime import timedelta

    from retentiond import demo as demo_pbx
    from retentiond.engine.status import compute, status_text
    from retentiond.evidence.report import data as report_data
    from retentiond.evidence.report import render as report_render
    from retentiond.evidence.report import residual

    config_file = demo_pbx.build(directory, hold=True)
    loaded = load_config(config_file)
    zone = loaded.config.zone()
    click.echo(f"\n== 1. the plan (retentiond -c {config_file} plan) ==")
    engine = Engine(loaded)
    for rule in loaded.config.rules:
        with engine.open_stores(rule) as stores:
            print_plan(engine.plan(rule, stores), zone)
    click.echo(f"\n== 2. enforcement (retentiond -c {config_file} run --once) ==")
    outcomes = enforce(loaded, None, as_json=False)
    click.echo(f"\n== 3. the deletion log (retentiond audit verify {loaded.config.audit.path}) ==")
    result = audit.verify(loaded.config.audit.path)
    click.echo(f"{'intact' if result.ok else 'BROKEN'}: {result.entries} entries")
    click.echo(f"\n== 4. compliance (retentiond -c {config_file} status) ==")
    click.echo(status_text(compute(loaded)), nl=False)
    today = datetime.now(zone).date()
    report_file = config_file.parent / "report.html"
    click.echo(
        f"\n== 5. the DPO report (retentiond -c {config_file} report --from "
        f"{today - timedelta(days=30)} --to {today} -o {report_file}) =="
    )
    period = report_data.Period(today - timedelta(days=30), today, zone)
    built = report_data.build_report(
        loaded,
        [],
        period,
        residual=residual.detect(loaded.config),
        residual_host=socket.gethostname(),
    )
    with safefiles.folder(report_file.parent) as folder:  # a planted link is replaced
        safefiles.replace(folder, report_file.name, report_render.html(built).encode(), 0o644)
    click.echo(f"wrote {report_file}: open it in a browser (self-contained, no external assets)")
    click.echo(demo_pbx.summary(directory, config_file, loaded))
    code = exit_code(outcomes) or (0 if result.ok else 1)
    sys.exit(code)


# --- helpers -----------------------------------------------------------------------------------


def _rules(loaded: LoadedConfig, rule_name: str | None) -> list[Rule]:
    rules = loaded.config.rules
    if rule_name is None:
        return list(rules)
    chosen = [r for r in rules if r.name == rule_name]
    if not chosen:
        names = ", ".join(r.name for r in rules)
        raise click.BadParameter(
            f"no rule named {rule_name!r} (rules: {names})", param_hint="--rule"
        )
    return chosen


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _local(moment: datetime | None, zone: tzinfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z") if moment else "-"


def _bytes(count: int | None) -> str:
    size = float(count or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
