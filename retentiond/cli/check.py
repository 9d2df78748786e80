"""`retentiond check`: validate the config, connect to every store, show how each will be purged.

Per store: its privileges (missing ones fail, excess ones warn), whether what it holds can be
dated, what it is and the clock difference to the host; then whether the deletion log is
writable. Exit 1 when any problem was found.

`--config-only` stops after the config: read, its preset expanded, validated with its holds
folder, as the daemon would at start, touching no store and not the deletion log. That is what a
deployment tool checks a config with before putting it in place (Ansible's `validate:`).
"""

from __future__ import annotations

from typing import Any

import click

from retentiond.cli.context import Context, pass_context
from retentiond.cli.output import fail
from retentiond.config.model import Rule
from retentiond.config.pbxfiles import THREECX_MASTER_ACCOUNT, is_3cx_settings
from retentiond.engine.engine import Engine
from retentiond.errors import RetentiondError
from retentiond.evidence import log as audit
from retentiond.stores import AbsentStore


@click.command()
@click.option(
    "--config-only",
    is_flag=True,
    help="Only validate the config (and its holds folder); connect to nothing, "
    "open no log (exit 0 valid, 2 invalid).",
)
@pass_context
def check(ctx: Context, config_only: bool) -> None:
    """Validate the config, connect to every store and show how each will be purged."""
    loaded = ctx.loaded
    config = loaded.config
    click.echo(
        f"config {loaded.path}: valid ({len(config.rules)} rules, sha256 {loaded.sha256[:12]})"
    )
    if config_only:
        return
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
        with audit.open_log(config) as log:
            seq, _ = log.head
        click.echo(f"audit log {audit.log_path(config)}: writable, {seq} entries")
    except RetentiondError as error:
        failures += 1
        click.echo(f"audit log {audit.log_path(config)}: FAILED: {error}")
    if failures:
        fail(f"{failures} problem(s) found; see above", 1)


def _single(rule: Rule, store_config: Any) -> Rule:
    return rule.model_copy(update={"stores": [store_config]})
