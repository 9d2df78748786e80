"""`retentiond find` (Art. 15 access) and `retentiond erase` (Art. 17 erasure).

Both take the person's numbers (international form) and extensions. `find` prints what each
store holds of them, to the terminal only: nothing of it reaches a log. `erase` shows the counts,
asks for confirmation on a terminal (or takes `--yes`), deletes, and records the ticket id and
the counts in the audit log.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, tzinfo

import click

from retentiond.config.loader import LoadedConfig, config_path, load_config
from retentiond.engine.engine import Engine
from retentiond.engine.erasure import (
    ALL_HELD,
    NO_MATCH,
    NOT_SEARCHED,
    StoreMatches,
    check_ticket,
    erase,
    record_search,
    record_unerased,
    search,
)
from retentiond.errors import AuditError, RetentiondError
from retentiond.evidence import log as audit
from retentiond.evidence.history import read_history
from retentiond.policy.subjects import Subject, SubjectError


class SubjectUsageError(RetentiondError):
    exit_code = 2


class ErasureRefused(RetentiondError):
    exit_code = 3


WHY = {
    NOT_SEARCHED: "no store could be searched",
    NO_MATCH: "no match in any store searched",
    ALL_HELD: "every match is held",
}


def _subject(numbers: tuple[str, ...], extensions: tuple[str, ...]) -> Subject:
    if not numbers and not extensions:
        raise click.UsageError("give at least one --number or --extension")
    try:
        return Subject.parse(numbers, extensions)
    except SubjectError as error:
        raise SubjectUsageError(f"--number/--extension: {error}") from None


def _loaded(ctx: click.Context) -> LoadedConfig:
    holder = ctx.find_object(object)
    option = getattr(holder, "config_option", None)
    return load_config(config_path(option if isinstance(option, str) else None))


number_option = click.option(
    "--number",
    "numbers",
    multiple=True,
    metavar="NUMBER",
    help="A phone number in international form (+4930123456); repeat for more.",
)
extension_option = click.option(
    "--extension",
    "extensions",
    multiple=True,
    metavar="EXT",
    help="An internal extension (1001); repeat for more.",
)
rule_option = click.option(
    "--rule", "rule_names", multiple=True, metavar="NAME", help="Only these rules."
)


@click.command("find", short_help="List one person's records in every store (Art. 15 access).")
@number_option
@extension_option
@rule_option
@click.option("--ticket", metavar="ID", help="Record the search (counts only) in the audit log.")
@click.pass_context
def find_command(
    ctx: click.Context,
    numbers: tuple[str, ...],
    extensions: tuple[str, ...],
    rule_names: tuple[str, ...],
    ticket: str | None,
) -> None:
    """List one person's records in every store (Art. 15), to this terminal only."""
    subject = _subject(numbers, extensions)
    if ticket:
        check_ticket(ticket, subject)
    loaded = _loaded(ctx)
    engine = Engine(loaded)
    matches = search(engine, subject, _names(loaded, rule_names), keep=True)
    zone = loaded.config.zone()
    for match in matches:
        _print_store(match, zone)
        for found in match.objects:
            when = found.when.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S") if found.when else "-"
            mark = " [held]" if found.held else ""
            details = ", ".join(f"{k}={v}" for k, v in found.fields.items())
            click.echo(f"    {when}  {found.where}{mark}  {details}")
    if ticket:
        signer = _signer(loaded)
        with audit.open_log(loaded.config) as log, _signed(log, signer):
            why = record_search(log, ticket, matches)
        because = f"; {WHY[why]}" if why in WHY else ""
        click.echo(f"recorded in the audit log as a search for {ticket} (counts only{because})")


@click.command("erase", short_help="Erase one person's records in every store (Art. 17).")
@number_option
@extension_option
@rule_option
@click.option("--ticket", required=True, metavar="ID", help="The request's reference (T-123).")
@click.option("--dry-run", is_flag=True, help="Show the counts; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def erase_command(
    ctx: click.Context,
    numbers: tuple[str, ...],
    extensions: tuple[str, ...],
    rule_names: tuple[str, ...],
    ticket: str,
    dry_run: bool,
    yes: bool,
) -> None:
    """Erase one person's records in every store now (Art. 17); holds still win."""
    subject = _subject(numbers, extensions)
    check_ticket(ticket, subject)
    loaded = _loaded(ctx)
    engine = Engine(loaded)
    names = _names(loaded, rule_names)
    _refuse_vanished_holds(engine, names)
    zone = loaded.config.zone()
    matches = search(engine, subject, names)
    for match in matches:
        _print_store(match, zone)
    erasable = sum(m.erasable for m in matches if not m.unsearchable)
    held = sum(m.held for m in matches)
    click.echo(f"to erase: {erasable}; held (kept): {held}")
    if dry_run:
        click.echo("dry run: nothing changed")
        return
    if not erasable:
        _record_unerased(loaded, engine, ticket, matches)
        return
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError("not on a terminal: confirm with --yes")
        click.confirm(f"erase {erasable} objects for {ticket}?", abort=True)
    signer = _signer(loaded)
    with audit.open_log(loaded.config) as log:
        with _signed(log, signer):
            done = erase(engine, log, subject, ticket, names, now=datetime.now(UTC))
        head = log.head
    deleted = sum(m.deleted for m in done)
    click.echo(f"erased {deleted} objects for {ticket}; held {held}")
    click.echo(f"audit log {audit.log_path(loaded.config)}: head #{head[0]} {head[1][:16]}")


def _refuse_vanished_holds(engine: Engine, names: list[str] | None) -> None:
    """Holds win over erasure; a hold the log shows in force that this config lacks cannot
    win, so the erasure waits until it is found again or ended (safety rule 10)."""
    history = read_history(audit.log_path(engine.config))
    rules = [r for r in engine.config.rules if names is None or r.name in names]
    vanished = sorted({hold for rule in rules for hold in engine.vanished(rule, history)})
    if vanished:
        raise ErasureRefused(
            f"holds {', '.join(vanished)} are in force in the audit log but not in this config; "
            "run with the config they belong to, or end them with `run --once --end-hold ID`"
        )


def _record_unerased(
    loaded: LoadedConfig, engine: Engine, ticket: str, matches: list[StoreMatches]
) -> None:
    """Nothing to erase is an answer too: recorded, so the request can be shown answered."""
    signer = _signer(loaded)
    with audit.open_log(loaded.config) as log:
        with _signed(log, signer):
            why = record_unerased(engine, log, ticket, matches)
        head = log.head
    click.echo(f"nothing to erase ({WHY.get(why, why)}); recorded in the audit log for {ticket}")
    click.echo(f"audit log {audit.log_path(loaded.config)}: head #{head[0]} {head[1][:16]}")


def _signer(loaded: LoadedConfig) -> audit.Signer | None:
    """The signing key, read before anything is written: with audit.signing_key set, a request
    is recorded only when it can be signed, as a run is."""
    path = loaded.config.audit.signing_key
    if path is None:
        return None
    try:
        return audit.Signer.from_config(path)
    except audit.SigningKeyError as error:
        raise click.ClickException(f"{error}; nothing was recorded or erased") from None


@contextmanager
def _signed(log: audit.AuditLog, signer: audit.Signer | None) -> Iterator[None]:
    """Sign what the log ends with first (an interrupted run's entries), and the request's
    entries after, so a signed log has no stretch a checkpoint does not cover."""
    if signer is not None:
        log.sign_tail(signer)
    try:
        yield
    finally:
        # Also after a request that stopped half way: what it wrote is signed. If the log
        # cannot take the checkpoint, the error that stopped the request is the one shown, and
        # the next run signs the end.
        if signer is not None:
            with suppress(AuditError):
                log.checkpoint(signer)


def _print_store(match: StoreMatches, zone: tzinfo) -> None:
    if match.unsearchable:
        click.echo(f"{match.rule}: {match.kind} {match.label}: NOT SEARCHED: {match.unsearchable}")
        return
    held = f", {match.held} held" if match.held else ""
    click.echo(f"{match.rule}: {match.kind} {match.label}: {match.found} {match.unit}{held}")


def _names(loaded: LoadedConfig, rule_names: tuple[str, ...]) -> list[str] | None:
    known = {rule.name for rule in loaded.config.rules}
    unknown = sorted(set(rule_names) - known)
    if unknown:
        raise click.BadParameter(
            f"no rule named {', '.join(unknown)} (rules: {', '.join(sorted(known))})",
            param_hint="--rule",
        )
    return list(rule_names) or None
