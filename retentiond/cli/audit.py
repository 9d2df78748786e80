"""`retentiond audit ...`: the signing key, verification, and the head to copy off the host.

Registered on the main group (cli/main.py) as the `audit` group. Without a LOG argument the
commands use audit.path of the config (-c, $RETENTIOND_CONFIG or the default path). Exit codes:
0 intact, 1 broken or an error (DESIGN.md). What an interrupted run leaves for the next one to
finish (entries not yet signed, an incomplete last line) is intact evidence, so a warning;
`verify --strict` fails on it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from retentiond.config.loader import LoadedConfig, config_path, load_config
from retentiond.config.model import document_language
from retentiond.errors import ConfigError
from retentiond.evidence import log as audit
from retentiond.i18n import DEFAULT, LANGUAGES, Language

_HEAD = re.compile(r"^([1-9][0-9]*):([0-9a-f]{64})$")
_SHOWN_PROBLEMS = 20
_STRICT_KINDS = frozenset({"unsigned_tail", "torn_tail"})  # problems only under --strict
_LOG_ARGUMENT = click.argument(
    "log_file", required=False, type=click.Path(dir_okay=False, path_type=Path)
)


@click.group(name="audit")
def audit_group() -> None:
    """The deletion log (Löschprotokoll): signing key, verification, head."""


def _log_path(log_file: Path | None) -> Path:
    """LOG_FILE, else audit.path of the config the main command was given."""
    if log_file is not None:
        return log_file
    obj = click.get_current_context().find_root().obj
    loaded = getattr(obj, "loaded", None)  # cli.Context loads the config on first use
    if loaded is None:
        loaded = load_config(config_path(None))
    return audit.log_path(loaded.config)


# --- keygen --------------------------------------------------------------------------------------


@audit_group.command()
@click.option(
    "--out-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the two key files (created with mode 0700 if missing).",
)
@click.option(
    "--name", default="retentiond", show_default=True, help="File name of the keys, without .key"
)
def keygen(out_dir: Path, name: str) -> None:
    """Create an Ed25519 key pair for signed checkpoints (never overwrites a key)."""
    private, public, fingerprint = audit.generate_key_pair(out_dir, name)
    click.echo(f"private key: {private} (mode 0600)")
    click.echo("  Signs the checkpoints. Keep it on this host, readable by root only:")
    click.echo("    install -D -m 0600 -o root -g root \\")
    click.echo(f"      {private} /etc/retentiond/credentials/signing-key")
    click.echo("  and hand it to the service in retentiond.service (and retentiond-once.service):")
    click.echo("    LoadCredential=signing-key:/etc/retentiond/credentials/signing-key")
    click.echo("  then set in the config:")
    click.echo("    audit:")
    click.echo("      signing_key: /etc/retentiond/credentials/signing-key")
    click.echo(f"  and delete {private}.")
    click.echo(f"public key:  {public} (mode 0644)")
    click.echo("  Give it to the data-protection officer, who checks the log with")
    click.echo(f"    retentiond audit verify --public-key {public.name} audit.jsonl")
    click.echo(f"fingerprint: {fingerprint}")
    click.echo("  (SHA-256 of the public key: compare it with the DPO over another channel)")


# --- verify --------------------------------------------------------------------------------------


def _parse_heads(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[tuple[int, str]]:
    heads = []
    for value in values:
        match = _HEAD.match(value.strip().lower())
        if match is None:
            raise click.BadParameter(
                f"{value!r}: expected SEQ:HASH as printed by `retentiond audit head`, "
                "e.g. 1234:9f86d081884c7d65...(64 hex digits)"
            )
        heads.append((int(match.group(1)), match.group(2)))
    return heads


@audit_group.command()
@_LOG_ARGUMENT
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The public key (.pub from keygen) to check the signatures with; repeat for old keys.",
)
@click.option(
    "--head",
    "heads",
    multiple=True,
    metavar="SEQ:HASH",
    callback=_parse_heads,
    help="A head copied off the host earlier (`retentiond audit head`): must still be there.",
)
@click.option(
    "--strict",
    is_flag=True,
    help="Also fail on what an interrupted run left for the next one: entries after the last "
    "checkpoint not yet signed, an incomplete last line. Use on a copy taken between runs.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def verify(
    log_file: Path | None,
    public_keys: tuple[Path, ...],
    heads: list[tuple[int, str]],
    strict: bool,
    as_json: bool,
) -> None:
    """Check LOG_FILE: the hash chain through all rotated files, every checkpoint and (with
    --public-key) its signature, and that no run lost its checkpoint.

    Exit 0: intact. Warnings do not count: entries after the last checkpoint (a run in
    progress, or interrupted before it signed), an incomplete last line (a power loss); the
    next run signs the one and moves the other aside. With --strict they count. 1: broken.
    """
    path = _log_path(log_file)
    keys = [audit.VerifyKey.from_file(key) for key in public_keys]
    result = audit.check_log(path, keys, heads, strict=strict)
    if as_json:
        click.echo(json.dumps(check_json(path, result, keys, strict), indent=2))
    else:
        _print_check(path, result, keys)
    if not result.ok:
        sys.exit(1)


def check_json(
    path: Path, result: audit.LogCheck, keys: list[audit.VerifyKey], strict: bool = False
) -> dict[str, Any]:
    chain = result.chain
    torn = result.torn_tail
    return {
        "log": str(path),
        "ok": result.ok,
        "strict": strict,
        "files": list(chain.files),
        "begins_after": chain.begins_after,
        "entries": chain.entries,
        "head": {"seq": chain.head[0], "hash": chain.head[1]},
        "checkpoints": result.checkpoints,
        "signatures_checked": result.signatures_checked,
        "valid_signatures": result.valid_signatures if result.signatures_checked else None,
        "keys": [key.fingerprint for key in keys],
        "last_checkpoint": _checkpoint_json(result.last_checkpoint),
        "unsigned_tail": result.unsigned_tail,
        "torn_tail": None
        if torn is None
        else {
            "file": torn.file,
            "line": torn.line,
            "bytes": torn.bytes,
            "sha256": torn.sha256,
            "after_seq": torn.after_seq,
        },
        "problems": [
            {
                "kind": p.kind,
                "message": p.message,
                "seq": p.seq,
                "file": p.file,
                "line": p.line,
            }
            for p in result.problems
        ],
        "warnings": list(result.warnings),
    }


def _checkpoint_json(entry: audit.Entry | None) -> dict[str, Any] | None:
    if entry is None:
        return None
    return {"seq": entry.seq, "hash": entry.hash, "ts": entry.ts} | {
        name: entry.fields.get(name) for name in audit.CHECKPOINT_FIELDS
    }


def _print_check(path: Path, result: audit.LogCheck, keys: list[audit.VerifyKey]) -> None:
    chain = result.chain
    files = len(chain.files)
    size = f"{chain.entries} entries" + (f" in {files} files" if files > 1 else "")
    head = f"head #{chain.head[0]} {chain.head[1]}"
    if result.ok:
        click.echo(f"{path}: intact, {size}, {head}")
    else:
        problems = result.problems
        if all(problem.kind in _STRICT_KINDS for problem in problems):
            click.echo(f"{path}: UNFINISHED (--strict): {problems[0]}")
        else:
            click.echo(f"{path}: BROKEN: {problems[0]}")
        if len(problems) > 1:
            click.echo(f"  {len(problems)} problems in all:")
            for problem in problems[:_SHOWN_PROBLEMS]:
                click.echo(f"  - {problem}")
            if len(problems) > _SHOWN_PROBLEMS:
                click.echo(f"  - ... and {len(problems) - _SHOWN_PROBLEMS} more (--json: all)")
        if chain.ok:
            click.echo(f"  chain intact: {size}, {head}")
        else:
            click.echo(f"  {size} before the break are intact")
    if result.checkpoints:
        last = result.last_checkpoint
        signed = last.fields.get("signed_seq") if last is not None else None
        line = f"  {result.checkpoints} checkpoints, the last signs entry {signed}"
        if result.signatures_checked:
            fingerprints = ", ".join(key.fingerprint[:16] for key in keys)
            line += (
                f"; {result.valid_signatures} of {result.checkpoints} signatures valid "
                f"(key {fingerprints})"
            )
        click.echo(line)
    for warning in result.warnings:
        click.echo(f"  warning: {warning}")


# --- viewer ------------------------------------------------------------------------------------


def _loaded_config() -> LoadedConfig:
    """The config the main command was given (-c, $RETENTIOND_CONFIG, the default path)."""
    obj = click.get_current_context().find_root().obj
    loaded = getattr(obj, "loaded", None)
    if loaded is None:
        loaded = load_config(config_path(None))
    assert isinstance(loaded, LoadedConfig)
    return loaded


def _public_keys(public_keys: tuple[Path, ...]) -> list[audit.VerifyKey]:
    """The --public-key files, else the public half of the config's signing key."""
    if public_keys:
        return [audit.VerifyKey.from_file(key) for key in public_keys]
    configured = _loaded_config().config.audit.signing_key
    if configured is None:
        raise click.UsageError(
            "the config has no audit.signing_key: give the public key with --public-key "
            "(the .pub file of `retentiond audit keygen`)"
        )
    return [audit.Signer.from_config(configured).verify_key()]


@audit_group.command()
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The HTML file to write, e.g. verify.html.",
)
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The public key (.pub from keygen) to embed; repeat for old keys. Default: the public "
    "half of the config's audit.signing_key.",
)
@click.option(
    "--language",
    type=click.Choice(LANGUAGES),
    help="en or de: the page's words, numbers and dates; default: organisation.language of the "
    "config, English without one.",
)
def viewer(output: Path, public_keys: tuple[Path, ...], language: Language | None) -> None:
    """Write a verifier page for the DPO: one HTML file that checks the log's files in a
    browser (chain and signatures, with the public keys embedded) and sends nothing anywhere."""
    from retentiond.evidence.viewer import viewer_page

    keys = _public_keys(public_keys)
    if language is None:
        # the DPO's language by the config; with --public-key the page needs no config
        try:
            language = document_language(_loaded_config().config)
        except ConfigError:
            language = DEFAULT
    try:
        output.write_text(viewer_page(keys, language), encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write {output}: {exc.strerror}") from None
    click.echo(f"verifier page: {output}")
    for key in keys:
        click.echo(f"  public key {key.fingerprint}")
    click.echo("  Give it to the DPO with the log files; it opens in a current browser, offline.")


# --- head ----------------------------------------------------------------------------------------


@audit_group.command()
@_LOG_ARGUMENT
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result.")
def head(log_file: Path | None, as_json: bool) -> None:
    """Print `SEQ HASH` of the last entry (and the last checkpoint with its signature): copy it
    off the host, so a later `audit verify --head SEQ:HASH` proves nothing was cut or rewritten."""
    path = _log_path(log_file)
    last: audit.Entry | None = None
    checkpoint: audit.Entry | None = None
    for entry in audit.read_entries(path):  # checks the chain: a broken log has no head to copy
        last = entry
        if entry.type == audit.CHECKPOINT:
            checkpoint = entry
    seq, hash = (last.seq, last.hash) if last is not None else (0, audit.GENESIS)
    if as_json:
        result = {
            "log": str(path),
            "seq": seq,
            "hash": hash,
            "ts": last.ts if last is not None else None,
            "checkpoint": _checkpoint_json(checkpoint),
        }
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{seq} {hash}")
    if checkpoint is not None:
        fields = checkpoint.fields
        click.echo(
            f"checkpoint {checkpoint.seq} ({checkpoint.ts}) signs entry {fields['signed_seq']} "
            f"{fields['signed_hash']}"
        )
        click.echo(f"  key {fields['key_fingerprint']}")
        click.echo(f"  signature {fields['signature']}")
    else:
        click.echo("no checkpoint in the log (audit.signing_key not set, or no run since)")
    if seq:
        click.echo(f"check later: retentiond audit verify --head {seq}:{hash}")
