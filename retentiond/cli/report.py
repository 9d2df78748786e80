"""`retentiond report`: the DPO report for a period, or the rule catalogue alone (`--rules`).

Registered on the main command group with `cli.add_command(report)`; the config comes from the
group's `-c/--config` (its context object), like every other command's.
"""

from __future__ import annotations

import socket
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from retentiond.config.loader import LoadedConfig, config_path, load_config
from retentiond.config.model import document_language
from retentiond.errors import RetentiondError
from retentiond.evidence import log as audit
from retentiond.evidence.report import build, render, residual
from retentiond.evidence.report import fleet as fleet_report
from retentiond.evidence.report.values import Period
from retentiond.i18n import LANGUAGES, Language
from retentiond.service import reports

REPORT_FORMATS = ("html", "pdf", "csv", "json")
FLEET_FORMATS = ("html", "pdf", "json")
RULES_FORMATS = ("md", "html")


def _loaded(ctx: click.Context) -> LoadedConfig:
    """The config of the main group (`cli.context.Context`), else -c of the root command."""
    loaded = getattr(ctx.obj, "loaded", None)
    if isinstance(loaded, LoadedConfig):
        return loaded
    option = ctx.find_root().params.get("config_option")
    return load_config(config_path(option if isinstance(option, str) else None))


@click.command()
@click.option(
    "--from",
    "first_day",
    type=click.DateTime(["%Y-%m-%d"]),
    metavar="DATE",
    help="First day of the period (YYYY-MM-DD, in the config's time zone).",
)
@click.option(
    "--to",
    "last_day",
    type=click.DateTime(["%Y-%m-%d"]),
    metavar="DATE",
    help="Last day of the period, included.",
)
@click.option(
    "--format",
    "form",
    type=click.Choice((*REPORT_FORMATS, "md")),
    help="html (default), pdf, csv or json; with --rules: md (default) or html.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here instead of standard output.",
)
@click.option(
    "--log",
    "logs",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="FILE",
    help="A deletion log to report on (repeatable, e.g. logs collected from several PBXs); "
    "default: audit.path of the config.",
)
@click.option(
    "--fleet",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    metavar="DIR",
    help="A fleet's report: DIR holds one folder per PBX with its retentiond.yaml, its "
    "deletion log and its public key (*.pub); each log is checked against its key. No config "
    "needed. Exit 1 when a system's log does not verify or it cannot be reported on.",
)
@click.option(
    "--metrics-textfile",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="With --fleet: also write whether each system's log verified, for node_exporter's "
    "textfile collector (alert rules in deploy/prometheus).",
)
@click.option(
    "--rules",
    "rules_only",
    is_flag=True,
    help="Only the rule catalogue (deletion concept), for the record of processing.",
)
@click.option(
    "--language",
    type=click.Choice(LANGUAGES),
    help="en or de: the report's words, numbers and dates; default: organisation.language of "
    "the config (with --send: the report and its mail, default reports.language, else "
    "organisation.language).",
)
@click.option(
    "--send",
    is_flag=True,
    help="Deliver it now as `reports:` in the config says (folder, mail) and record "
    "report_sent in the log; default period: the last finished one.",
)
@click.pass_context
def report(
    ctx: click.Context,
    first_day: datetime | None,
    last_day: datetime | None,
    form: str | None,
    output: Path | None,
    logs: tuple[Path, ...],
    fleet: Path | None,
    metrics_textfile: Path | None,
    rules_only: bool,
    language: Language | None,
    send: bool,
) -> None:
    """The DPO report for a period: rules, compliance, deletions, failures, residual copies and
    the log's chain head. Counts, dates, rule names, store labels and hashes only.

    \b
    retentiond report --from 2026-07-01 --to 2026-09-30 --format pdf -o q3.pdf
    retentiond report --rules --format md      # the rule catalogue for the Art. 30 record
    retentiond report --send                   # deliver last month's (quarter's) report now
    retentiond report --fleet collected/ --from 2026-07-01 --to 2026-09-30 --format pdf -o q3.pdf
    """
    if fleet is not None:
        if send or rules_only or logs:
            raise click.UsageError(
                "--fleet reports on the systems in its folder: no --send, --rules or --log"
            )
        _fleet(fleet, first_day, last_day, form, output, language, metrics_textfile)
        return
    if metrics_textfile is not None:
        raise click.UsageError("--metrics-textfile goes with --fleet")
    if send:
        if rules_only or form or output or logs:
            raise click.UsageError(
                "--send delivers what `reports:` in the config says: "
                "no --rules, --format, -o or --log"
            )
        _send(_loaded(ctx), first_day, last_day, language)
        return
    if rules_only:
        if first_day or last_day or logs:
            raise click.UsageError("--rules prints the rule catalogue only: no --from, --to, --log")
        form = form or "md"
        if form not in RULES_FORMATS:
            raise click.BadParameter("with --rules: md or html", param_hint="--format")
        loaded = _loaded(ctx)
        catalogue = build.catalogue(loaded, language=language or document_language(loaded.config))
        text = render.rules_markdown(catalogue) if form == "md" else render.rules_html(catalogue)
        _write_text(text, output)
        return
    first_day, last_day = _period(first_day, last_day, " (or --rules)")
    form = form or "html"
    if form not in REPORT_FORMATS:
        raise click.BadParameter(
            "html, pdf, csv or json (md goes with --rules)", param_hint="--format"
        )
    loaded = _loaded(ctx)
    config = loaded.config
    period = Period(first_day.date(), last_day.date(), config.zone())
    chosen = language or document_language(config)
    findings = residual.detect(config, language=chosen)
    built = build.build_report(
        loaded,
        list(logs),
        period,
        residual=findings,
        residual_host=socket.gethostname(),
        language=chosen,
    )
    if form == "pdf":
        _write_pdf(render.pdf(built), output)
    elif form == "csv":
        _write_text(render.csv_text(built), output)
    elif form == "json":
        _write_text(render.json_text(built), output)
    else:
        _write_text(render.html(built), output)


def _fleet(
    folder: Path,
    first_day: datetime | None,
    last_day: datetime | None,
    form: str | None,
    output: Path | None,
    language: Language | None,
    metrics_textfile: Path | None,
) -> None:
    """The fleet report (and its metrics); exit 1 after writing them, naming each system that
    failed."""
    first_day, last_day = _period(first_day, last_day)
    form = form or "html"
    if form not in FLEET_FORMATS:
        raise click.BadParameter("with --fleet: html, pdf or json", param_hint="--format")
    now = datetime.now(UTC)
    built = fleet_report.build_fleet(
        folder, first_day.date(), last_day.date(), now, language or "en"
    )
    if form == "pdf":
        _write_pdf(render.fleet_pdf(built), output)
    elif form == "json":
        _write_text(render.fleet_json(built), output)
    else:
        _write_text(render.fleet_html(built), output)
    if metrics_textfile is not None:
        from retentiond.service.metrics import write_fleet_textfile

        verified = [(system.name, system.log_verified) for system in built.systems]
        write_fleet_textfile(metrics_textfile, verified, now.timestamp())
    failed = built.failed
    for system in failed:
        click.echo(f"{system.name}: {system.reason}", err=True)
    if failed:
        sys.exit(1)


def _period(
    first_day: datetime | None, last_day: datetime | None, alternative: str = ""
) -> tuple[datetime, datetime]:
    """--from and --to, both given and in order."""
    if first_day is None or last_day is None:
        raise click.UsageError(f"give the period: --from DATE --to DATE{alternative}")
    if last_day < first_day:
        raise click.BadParameter("the period ends before it begins", param_hint="--to")
    return first_day, last_day


def _write_text(text: str, output: Path | None) -> None:
    if output is None:
        click.echo(text, nl=False)
        return
    _write(output, text.encode())


def _write_pdf(document: bytes, output: Path | None) -> None:
    if output is None:
        if sys.stdout.isatty():
            raise click.UsageError("a PDF is binary: write it to a file with -o FILE")
        sys.stdout.flush()
        sys.stdout.buffer.write(document)
        sys.stdout.buffer.flush()
        return
    _write(output, document)


def _write(output: Path, content: bytes) -> None:
    try:
        output.write_bytes(content)
    except OSError as error:
        raise RetentiondError(f"cannot write {output}: {error.strerror or error}") from None
    click.echo(f"wrote {output}", err=True)


def _send(
    loaded: LoadedConfig,
    first_day: datetime | None,
    last_day: datetime | None,
    language: Language | None,
) -> None:
    """One report now, through the daemon's own delivery code, recorded as report_sent."""
    config = loaded.config
    if config.reports is None:
        raise click.UsageError("the config has no reports: section saying where reports go")
    now = datetime.now(UTC)
    if (first_day is None) != (last_day is None):
        raise click.UsageError("give both --from and --to, or neither (the last finished period)")
    if first_day is not None and last_day is not None:
        if last_day < first_day:
            raise click.BadParameter("the period ends before it begins", param_hint="--to")
        period = Period(first_day.date(), last_day.date(), config.zone())
    else:
        period = reports.last_finished(now, config, config.reports.period)
    # The log first: while the daemon holds it this refuses, before anything is sent
    with audit.open_log(config) as log:
        delivery = reports.deliver(loaded, period, now, language=language)
        reports.record_sent(log, delivery)
    where = []
    if delivery.recipients:
        where.append(f"mailed to {delivery.recipients} recipient(s)")
    if delivery.folder:
        where.append(f"written to {config.reports.folder}")
    note = " (HTML: no PDF can be made here)" if delivery.pdf_missing else ""
    click.echo(f"report {delivery.key} {' and '.join(where)}{note}; recorded as report_sent")
