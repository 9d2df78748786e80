"""Command line: the `retentiond` group and its entry point. Exit codes as in DESIGN.md.

One module per command group, each thin (parse, call the engine or the deletion log, print):
`check`, `init`, `plan`, `run`, `demo`, `status`, `audit`, `report`, and `subjects` (find,
erase). They are imported when called (`LazyGroup`); what they print alike is in `output`.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys
import threading
from typing import ClassVar, NoReturn

import click

from retentiond import __version__, logs
from retentiond import dberrors as dberror
from retentiond.cli.context import Context
from retentiond.cli.output import fail
from retentiond.errors import ConfigError, RetentiondError


def main() -> NoReturn:
    """The `retentiond` command, ending without the interpreter's teardown (`leave`)."""
    try:
        _main()
    except SystemExit as leaving:
        leave(leaving.code)
    leave(0)


def leave(code: str | int | None) -> NoReturn:
    """Exit with `code` as `sys.exit` would, less the interpreter's teardown.

    Freeing every module (SQLAlchemy, pydantic) at exit took 0.3 s of CPU after each
    `run --once` (2026-12-07, issue 20), a tenth of a 500,000-row purge. By now every deletion
    log entry was fsynced when written, and the stores are closed. The atexit handlers still
    run and the output is flushed; while a thread other than this one is alive, the normal exit
    waits for it instead.
    """
    if threading.active_count() > 1:
        sys.exit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)  # as sys.exit prints a message
        status = 1
    else:
        status = code or 0
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        status = status or 120  # as Python exits when it cannot flush stdout
    os._exit(status)


def _main() -> None:
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
        fail(str(error), error.exit_code)
    except Exception as error:
        if not dberror.is_database_error(error):
            raise
        # A bug let a database error through: its traceback would carry the server's text
        # into the journal (safety rule 11); its codes do not.
        failure = dberror.describe(error, "unexpected database error")
        fail(f"unexpected database error: {failure}; this is a bug in retentiond, report it", 1)


class LazyGroup(click.Group):
    """Every command is imported when called: those that pull in heavy libraries (report:
    Jinja2, SQLAlchemy inspection; status, find, erase) are never loaded by the daemon, so its
    resident memory stays small."""

    LAZY: ClassVar[dict[str, str]] = {
        "audit": "retentiond.cli.audit:audit_group",
        "check": "retentiond.cli.check:check",
        "demo": "retentiond.cli.demo:demo",
        "erase": "retentiond.cli.subjects:erase_command",
        "find": "retentiond.cli.subjects:find_command",
        "init": "retentiond.cli.init:init",
        "plan": "retentiond.cli.plan:plan",
        "report": "retentiond.cli.report:report",
        "run": "retentiond.cli.run:run",
        "status": "retentiond.cli.status:status_command",
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
