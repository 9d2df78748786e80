"""`retentiond demo`: build a small demo PBX, then plan, enforce, verify, show status and report.

Each step prints the command a user would type for it; the exit code is that of the run, or 1
when the deletion log does not verify.
"""

from __future__ import annotations

import socket
import sys
from datetime import datetime, timedelta
from pathlib import Path

import click

from retentiond import demo as demo_pbx
from retentiond import safefiles
from retentiond.cli.plan import print_plan
from retentiond.cli.run import enforce
from retentiond.cli.status import status_text
from retentiond.config.loader import load_config
from retentiond.engine.engine import Engine
from retentiond.engine.outcome import exit_code
from retentiond.engine.status import compute
from retentiond.evidence import log as audit
from retentiond.evidence.report import build as report_build
from retentiond.evidence.report import render as report_render
from retentiond.evidence.report import residual
from retentiond.evidence.report.values import Period


@click.command()
@click.argument("directory", default="demo-pbx", type=click.Path(file_okay=False, path_type=Path))
def demo(directory: Path) -> None:
    """Build a small demo PBX in DIRECTORY; plan, enforce, verify, show status and report."""
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
    click.echo(
        f"\n== 3. the deletion log (retentiond audit verify {audit.log_path(loaded.config)}) =="
    )
    result = audit.verify(audit.log_path(loaded.config))
    click.echo(f"{'intact' if result.ok else 'BROKEN'}: {result.entries} entries")
    click.echo(f"\n== 4. compliance (retentiond -c {config_file} status) ==")
    click.echo(status_text(compute(loaded)), nl=False)
    today = datetime.now(zone).date()
    report_file = config_file.parent / "report.html"
    click.echo(
        f"\n== 5. the DPO report (retentiond -c {config_file} report --from "
        f"{today - timedelta(days=30)} --to {today} -o {report_file}) =="
    )
    period = Period(today - timedelta(days=30), today, zone)
    built = report_build.build_report(
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
