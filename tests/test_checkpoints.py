"""Signed checkpoints and rotation of the deletion log, with real keys, real files, real runs.

What the DPO relies on: every run ends with a checkpoint signed by the service's key; verifying
with the public key finds every kind of tampering and names it; the log rotates into files
whose chain runs on unbroken, and a missing or misplaced file is named.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from retentiond import demo
from retentiond.cli.audit import audit_group
from retentiond.config.loader import LoadedConfig, load_config
from retentiond.engine.engine import Engine
from retentiond.engine.outcome import RunOutcome
from retentiond.errors import AuditError
from retentiond.evidence import log as audit
from retentiond.evidence.log import (
    CHECKPOINT,
    CONTINUED,
    GENESIS,
    AuditLog,
    Entry,
    LogCheck,
    Signer,
    VerifyKey,
    check_log,
    read_entries,
    verify,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
RULES = ("call-records", "voicemail", "call-recordings")


# --- helpers ------------------------------------------------------------------------------------


def invoke(*args: str | Path) -> Result:
    """The `audit` command group, as cli.py registers it."""
    return CliRunner().invoke(audit_group, [str(a) for a in args])


def keygen(folder: Path, name: str = "retentiond") -> tuple[Path, Path, str]:
    result = invoke("keygen", "--out-dir", folder, "--name", name)
    assert result.exit_code == 0, result.output
    fingerprint = result.output.split("fingerprint: ")[1].split()[0]
    return folder / f"{name}.key", folder / f"{name}.pub", fingerprint


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public, _ = keygen(tmp_path / "keys")
    return private, public


@pytest.fixture
def other_keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public, _ = keygen(tmp_path / "other-keys")
    return private, public


@pytest.fixture
def pbx(tmp_path: Path) -> Path:
    return demo.build(tmp_path / "pbx", now=NOW, days=200)


def signed(config_file: Path, key: Path, **replace: str) -> LoadedConfig:
    """The demo config with audit.signing_key set (and other text replaced)."""
    text = config_file.read_text()
    if "signing_key:" not in text:
        text = text.replace("audit:\n", f"audit:\n  signing_key: {key}\n", 1)
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    config_file.write_text(text)
    return load_config(config_file)


def run_rules(
    config: LoadedConfig, rules: tuple[str, ...] = RULES, **engine_args: Any
) -> list[RunOutcome]:
    engine = Engine(config, now=lambda: NOW, **engine_args)
    chosen = [r for r in config.config.rules if r.name in rules]
    with AuditLog(config.config.audit.path, clock=lambda: NOW) as log:
        return [engine.run(rule, log) for rule in chosen]


def log_of(config: LoadedConfig) -> Path:
    return config.config.audit.path


def entries(path: Path) -> list[Entry]:
    return list(read_entries(path))


def cdr_dates(config_file: Path) -> list[str]:
    with sqlite3.connect(config_file.parent / "pbx" / "master.db") as db:
        rows = [r[0] for r in db.execute("SELECT calldate FROM cdr ORDER BY calldate")]
    db.close()
    return rows


def recordings(config_file: Path) -> list[Path]:
    return sorted(p for p in (config_file.parent / "pbx" / "monitor").rglob("*") if p.is_file())


def objects(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def write_objects(path: Path, objs: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(_line(obj) for obj in objs))


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def rehash(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What an attacker with write access does after an edit: renumber and recompute the chain,
    so only a signature (or a head copied off the host) can tell."""
    out, prev = [], GENESIS
    for seq, original in enumerate(objs, start=1):
        obj = {key: value for key, value in original.items() if key != "hash"}
        obj["seq"], obj["prev"] = seq, prev
        obj["hash"] = hashlib.sha256(audit.canonical(obj)).hexdigest()
        out.append(obj)
        prev = obj["hash"]
    return out


def check(
    path: Path, *public: Path, heads: tuple[tuple[int, str], ...] = (), strict: bool = False
) -> LogCheck:
    return check_log(path, [VerifyKey.from_file(p) for p in public], heads, strict=strict)


def kinds(result: LogCheck) -> list[str]:
    return [p.kind for p in result.problems]


def run_ends(log: list[Entry]) -> list[Entry]:
    return [e for e in log if e.type in audit.RUN_ENDS]


@pytest.fixture
def signed_log(pbx: Path, keys: tuple[Path, Path]) -> Path:
    """A log of three signed runs (one per rule) of the demo PBX."""
    config = signed(pbx, keys[0])
    assert [o.status for o in run_rules(config)] == ["done"] * 3
    return log_of(config)


# --- keygen -------------------------------------------------------------------------------------


def test_keygen_writes_a_private_key_for_the_owner_only_and_a_public_key(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "keys"
    folder.parent.mkdir()
    previous = os.umask(0)  # a careless umask must not open the private key
    try:
        result = invoke("keygen", "--out-dir", folder)
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    private, public = folder / "retentiond.key", folder / "retentiond.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----\n")  # PKCS#8
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----\n")

    loaded = serialization.load_pem_public_key(public.read_bytes())
    assert isinstance(loaded, Ed25519PublicKey)
    raw = loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    fingerprint = hashlib.sha256(raw).hexdigest()
    assert f"fingerprint: {fingerprint}\n" in result.output
    assert Signer.from_file(private).fingerprint == fingerprint
    assert "LoadCredential=signing-key:/etc/retentiond/credentials/signing-key" in result.output
    assert "data-protection officer" in result.output


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    private, public, _ = keygen(tmp_path)
    before = private.read_bytes(), public.read_bytes()
    again = invoke("keygen", "--out-dir", tmp_path)
    assert again.exit_code != 0
    assert isinstance(again.exception, AuditError)
    assert "never overwrites" in str(again.exception)
    assert (private.read_bytes(), public.read_bytes()) == before

    private.unlink()  # only the public half left: still refused, nothing written
    assert invoke("keygen", "--out-dir", tmp_path).exit_code != 0
    assert not private.exists() and public.read_bytes() == before[1]
    assert keygen(tmp_path, "retentiond-2027")[0].exists()  # another name is fine


# --- every run ends with a checkpoint ------------------------------------------------------------


def test_every_run_ends_with_a_checkpoint_signed_by_the_key(
    signed_log: Path, keys: tuple[Path, Path]
) -> None:
    log = entries(signed_log)
    ends = run_ends(log)
    assert [e.fields["rule"] for e in ends] == list(RULES)
    public = serialization.load_pem_public_key(keys[1].read_bytes())
    assert isinstance(public, Ed25519PublicKey)
    fingerprint = Signer.from_file(keys[0]).fingerprint
    for end in ends:
        checkpoint = log[end.seq]  # the entry right after the run's last one
        assert checkpoint.type == CHECKPOINT
        assert list(checkpoint.fields) == [
            "signed_seq",
            "signed_hash",
            "key_fingerprint",
            "signature",
        ]
        assert checkpoint.fields["signed_seq"] == end.seq
        assert checkpoint.fields["signed_hash"] == end.hash == checkpoint.prev
        assert checkpoint.fields["key_fingerprint"] == fingerprint
        # Checked as docs/audit-log.md tells another verifier to, without retentiond's code.
        message = json.dumps(
            {"seq": end.seq, "hash": end.hash, "fingerprint": fingerprint},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
        public.verify(base64.b64decode(checkpoint.fields["signature"]), message)
    assert log[-1].type == CHECKPOINT

    result = check(signed_log, keys[1])
    assert result.ok and result.problems == ()
    assert (result.checkpoints, result.valid_signatures, result.unsigned_tail) == (3, 3, 0)
    assert result.warnings == ()


def test_refused_failed_and_interrupted_runs_end_with_a_checkpoint_too(
    pbx: Path, keys: tuple[Path, Path]
) -> None:
    config = signed(
        pbx,
        keys[0],
        **{"max_delete_fraction: 0.95": "max_delete_fraction: 0.2", "table: cdr": "table: nope"},
    )
    outcomes = run_rules(config)
    assert [o.status for o in outcomes] == ["failed", "refused", "refused"]
    stop = threading.Event()
    relaxed = signed(pbx, keys[0], **{"max_delete_fraction: 0.2": "max_delete_fraction: 0.95"})
    engine_args: dict[str, Any] = {"stop": stop, "progress": lambda *_: stop.set()}
    assert run_rules(relaxed, ("voicemail",), **engine_args)[0].status == "interrupted"

    log = entries(log_of(config))
    ends = run_ends(log)
    # a store that cannot be opened fails alone: the run ends with run_finished, status failed
    assert [e.type for e in ends] == ["run_finished", "run_refused", "run_refused", "run_finished"]
    assert ends[-1].fields["status"] == "interrupted"
    for end in ends:
        assert log[end.seq].type == CHECKPOINT and log[end.seq].fields["signed_seq"] == end.seq
    assert check(log_of(config), keys[1]).ok


def test_signing_enabled_later_signs_the_history_before_the_first_run(
    pbx: Path, keys: tuple[Path, Path]
) -> None:
    unsigned = load_config(pbx)
    run_rules(unsigned, ("call-records",))
    path = log_of(unsigned)
    with_key = check(path, keys[1])
    assert kinds(with_key) == ["no_checkpoints"]
    assert with_key.problems[0].message == (
        "no checkpoints: the log was never signed or the checkpoints were removed"
    )
    assert check(path).ok  # without a key there is nothing to expect
    assert "not signed" in check(path).warnings[0]

    run_rules(signed(pbx, keys[0]), ("voicemail",))
    log = entries(path)
    first_end = run_ends(log)[0]
    catch_up = log[first_end.seq]
    assert catch_up.type == CHECKPOINT and catch_up.fields["signed_seq"] == first_end.seq
    assert log[-1].type == CHECKPOINT
    assert check(path, keys[1]).ok


# --- the key: unusable keys fail the run before anything is deleted ----------------------------


def test_a_world_readable_key_fails_the_run_cleanly_and_audited(
    pbx: Path, keys: tuple[Path, Path]
) -> None:
    keys[0].chmod(0o644)
    config = signed(pbx, keys[0])
    before, files_before = cdr_dates(pbx), recordings(pbx)
    outcomes = run_rules(config)
    assert [o.status for o in outcomes] == ["failed"] * 3
    assert "mode 0644" in (outcomes[0].message or "")
    assert "chmod 600" in (outcomes[0].message or "")
    assert cdr_dates(pbx) == before and recordings(pbx) == files_before  # nothing deleted
    log = entries(log_of(config))
    assert [e.type for e in log] == ["run_failed"] * 3  # audited, and nothing signed
    assert all("mode 0644" in e.fields["reason"] and e.fields["deleted"] == 0 for e in log)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_a_key_others_may_read_or_change_is_refused(keys: tuple[Path, Path], mode: int) -> None:
    keys[0].chmod(mode)
    with pytest.raises(audit.SigningKeyError, match=f"mode {mode:04o}"):
        Signer.from_file(keys[0])


def test_unusable_key_files_are_refused_with_the_reason(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    with pytest.raises(audit.SigningKeyError, match=r"does not exist.*audit keygen"):
        Signer.from_file(tmp_path / "missing.key")
    public = tmp_path / "public.key"
    shutil.copy(keys[1], public)
    public.chmod(0o600)
    with pytest.raises(audit.SigningKeyError, match="not an unencrypted PEM private key"):
        Signer.from_file(public)
    with pytest.raises(AuditError, match="not a PEM public key"):
        VerifyKey.from_file(keys[0])


def test_the_service_credential_is_preferred_to_the_configured_path(
    tmp_path: Path, keys: tuple[Path, Path], other_keys: tuple[Path, Path], monkeypatch: Any
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    shutil.copy(other_keys[0], credentials / "signing-key")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    from_credential = Signer.from_config(keys[0])
    assert from_credential.fingerprint == Signer.from_file(other_keys[0]).fingerprint
    (credentials / "signing-key").unlink()  # e.g. `run --once` in a shell: the configured file
    assert Signer.from_config(keys[0]).fingerprint == Signer.from_file(keys[0]).fingerprint


def test_a_key_problem_is_reported_until_the_next_good_run_signs_it(
    pbx: Path, keys: tuple[Path, Path]
) -> None:
    config = signed(pbx, keys[0])
    run_rules(config, ("call-records",))
    keys[0].chmod(0o644)
    assert run_rules(config, ("voicemail",))[0].status == "failed"
    path = log_of(config)
    failed = entries(path)[-1]
    assert failed.type == "run_failed"
    result = check(path, keys[1])
    assert result.ok and result.unsigned_tail == 1
    assert result.warnings == (
        "1 entry after the last signed checkpoint is hash-chained but not yet signed: the run "
        "that wrote them ended without its checkpoint (it was interrupted, or could not use the "
        "signing key); the next run signs them",
    )
    strict = check(path, keys[1], strict=True)
    assert kinds(strict) == ["unsigned_tail"] and strict.problems[0].seq == failed.seq

    keys[0].chmod(0o600)
    assert run_rules(config, ("voicemail",))[0].status == "done"
    assert entries(path)[failed.seq].type == CHECKPOINT  # signed first thing in the next run
    assert check(path, keys[1], strict=True).ok


def test_several_runs_failed_on_the_key_are_signed_by_the_next_good_run(
    pbx: Path, keys: tuple[Path, Path]
) -> None:
    """A `run --once` of every rule with a broken key writes one run_failed per rule and no
    checkpoint can follow any of them: each is marked `unsigned`, so none is reported as a
    removed checkpoint, and the next good run signs them all."""
    config = signed(pbx, keys[0])
    run_rules(config, ("call-records",))
    keys[0].chmod(0o644)
    failed = run_rules(config)
    assert len(failed) > 1 and {outcome.status for outcome in failed} == {"failed"}
    path = log_of(config)
    ends = [entry for entry in entries(path) if entry.type == "run_failed"]
    assert len(ends) == len(failed) and all(entry.fields["unsigned"] is True for entry in ends)
    result = check(path, keys[1])
    assert result.ok and kinds(check(path, keys[1], strict=True)) == ["unsigned_tail"]

    keys[0].chmod(0o600)
    assert run_rules(config, ("voicemail",))[0].status == "done"
    assert check(path, keys[1], strict=True).ok


def test_a_checkpoint_that_cannot_be_written_fails_the_run(
    pbx: Path, keys: tuple[Path, Path], monkeypatch: Any
) -> None:
    config = signed(pbx, keys[0])

    def full_disk(self: AuditLog, signer: Signer) -> Entry:
        raise AuditError("cannot write the audit log: No space left on device")

    monkeypatch.setattr(AuditLog, "checkpoint", full_disk)
    outcome = run_rules(config, ("call-records",))[0]
    assert outcome.status == "failed" and outcome.deleted > 0  # recorded, but not signed
    assert (outcome.message or "").startswith("the run's signed checkpoint could not be written")
    assert entries(log_of(config))[-1].type == "run_finished"


# --- tampering: each kind found and named --------------------------------------------------------


def test_an_edited_entry_is_named(signed_log: Path, keys: tuple[Path, Path]) -> None:
    objs = objects(signed_log)
    done = next(o for o in objs if o["type"] == "batch_done")
    done["deleted"] += 1
    write_objects(signed_log, objs)
    result = check(signed_log, keys[1])
    assert kinds(result) == ["chain"]
    problem = result.problems[0]
    assert (problem.seq, problem.file, problem.line) == (done["seq"], "audit.jsonl", done["seq"])
    assert "hash mismatch: the entry was changed" in problem.message

    cli = invoke("verify", signed_log, "--public-key", keys[1])
    assert cli.exit_code == 1
    assert f"BROKEN: audit.jsonl:{done['seq']}: chain broken (entry {done['seq']})" in cli.output


def test_an_edited_entry_with_the_chain_recomputed_is_found_by_the_checkpoint(
    signed_log: Path, keys: tuple[Path, Path]
) -> None:
    objs = objects(signed_log)
    done = next(o for o in objs if o["type"] == "batch_done")
    done["deleted"] += 1
    objs = rehash(objs)
    write_objects(signed_log, objs)
    assert verify(signed_log).ok  # the chain alone cannot tell
    result = check(signed_log, keys[1])
    assert kinds(result) == ["checkpoint"] * 3  # every later checkpoint signed other hashes
    assert "entries before it were changed" in result.problems[0].message

    # Making the checkpoints agree with the new chain leaves signatures that do not.
    for index in range(len(objs)):
        if objs[index]["type"] == CHECKPOINT:
            objs[index]["signed_hash"] = objs[index - 1]["hash"]
            objs = rehash(objs)  # changes this entry and those after it, not those before
    write_objects(signed_log, objs)
    result = check(signed_log, keys[1])
    assert kinds(result) == ["signature"] * 3
    assert result.problems[0].message == (
        f"checkpoint {result.problems[0].seq}: bad signature: the checkpoint was changed or forged"
    )
    assert result.valid_signatures == 0
    assert check(signed_log).ok  # without the public key, a rewritten log cannot be told


def test_a_removed_entry_is_named(signed_log: Path, keys: tuple[Path, Path]) -> None:
    objs = objects(signed_log)
    del objs[2]
    write_objects(signed_log, objs)
    result = check(signed_log, keys[1])
    assert kinds(result) == ["chain"]
    assert result.problems[0].message == "chain broken (entry 4): sequence jumps from 2 to 4"

    write_objects(signed_log, rehash(objs))  # renumbered: the checkpoints' signed_seq disagree
    result = check(signed_log, keys[1])
    assert kinds(result) == ["checkpoint"] * 3
    assert "not the entry just before it" in result.problems[0].message


def test_a_removed_checkpoint_is_found_even_with_the_chain_recomputed(
    signed_log: Path, keys: tuple[Path, Path]
) -> None:
    original = objects(signed_log)
    checkpoints = [i for i, o in enumerate(original) if o["type"] == CHECKPOINT]
    run_end = original[checkpoints[1] - 1]  # the voicemail run's last entry
    objs = rehash(original[: checkpoints[1]] + original[checkpoints[1] + 1 :])
    write_objects(signed_log, objs)
    assert verify(signed_log).ok

    result = check(signed_log, keys[1])
    first = result.problems[0]
    assert first.kind == "missing_checkpoint"
    assert first.message.startswith(
        f"missing checkpoint after entry {run_end['seq']} (run_finished of rule voicemail)"
    )
    assert kinds(result) == ["missing_checkpoint", "checkpoint"]  # and the next one misplaced
    cli = invoke("verify", signed_log, "--public-key", keys[1])
    assert cli.exit_code == 1
    assert f"missing checkpoint after entry {run_end['seq']}" in cli.output.splitlines()[0]

    # The first checkpoint removed: the run before it looks like history from before signing
    # was set up, but the next checkpoint no longer signs the entry before it.
    write_objects(signed_log, rehash(original[: checkpoints[0]] + original[checkpoints[0] + 1 :]))
    assert kinds(check(signed_log, keys[1])) == ["checkpoint", "checkpoint"]


def test_a_removed_last_checkpoint_is_an_unsigned_tail_that_the_head_copied_earlier_finds(
    signed_log: Path, keys: tuple[Path, Path]
) -> None:
    real_head = verify(signed_log).head
    objs = objects(signed_log)
    assert objs[-1]["type"] == CHECKPOINT
    write_objects(signed_log, objs[:-1])  # no recomputing needed: it was the last line
    # Exactly what a kill between a run's last entry and its checkpoint leaves: a warning ...
    result = check(signed_log, keys[1])
    previous = max(i for i, o in enumerate(objs[:-1]) if o["type"] == CHECKPOINT)
    assert result.ok and result.unsigned_tail == len(objs) - 2 - previous  # the last run
    assert result.warnings[0].startswith(
        f"{result.unsigned_tail} entries after the last signed checkpoint are hash-chained but "
        "not yet signed: the run that wrote them ended without its checkpoint"
    )
    assert check(signed_log).warnings[0] == result.warnings[0]  # the same without a key
    # ... a failure when the DPO asks for a fully signed log ...
    assert kinds(check(signed_log, keys[1], strict=True)) == ["unsigned_tail"]
    # ... and a cut log with the head copied off the host.
    cut = check(signed_log, keys[1], heads=(real_head,))
    assert kinds(cut) == ["head"] and "the log was cut" in cut.problems[0].message


def test_all_checkpoints_removed_is_found_with_the_key(
    signed_log: Path, keys: tuple[Path, Path]
) -> None:
    write_objects(signed_log, rehash([o for o in objects(signed_log) if o["type"] != CHECKPOINT]))
    assert kinds(check(signed_log, keys[1])) == ["no_checkpoints"]
    cli = invoke("verify", signed_log, "--public-key", keys[1])
    assert cli.exit_code == 1
    assert "no checkpoints: the log was never signed or the checkpoints were removed" in cli.output


def test_a_replayed_checkpoint_is_out_of_order(signed_log: Path, keys: tuple[Path, Path]) -> None:
    objs = objects(signed_log)
    checkpoints = [o for o in objs if o["type"] == CHECKPOINT]
    for name in audit.CHECKPOINT_FIELDS:  # a genuine signature, copied to a later place
        checkpoints[2][name] = checkpoints[0][name]
    write_objects(signed_log, rehash(objs))
    result = check(signed_log, keys[1])
    assert kinds(result) == ["order"]
    assert result.problems[0].message.startswith(
        f"checkpoint {checkpoints[2]['seq']} is out of order: it signs entry "
        f"{checkpoints[0]['signed_seq']}"
    )
    assert result.valid_signatures == 3  # each signature is genuine; its place is not


def test_a_checkpoint_signing_beyond_itself_is_found(
    signed_log: Path, keys: tuple[Path, Path]
) -> None:
    objs = objects(signed_log)
    objs[-1]["signed_seq"] = objs[-1]["seq"] + 5
    write_objects(signed_log, rehash(objs))
    result = check(signed_log, keys[1])
    assert kinds(result) == ["checkpoint", "signature"]
    assert f"signs entry {objs[-1]['seq'] + 5}, not the entry just before it" in (
        result.problems[0].message
    )


def test_a_truncated_log_is_found_with_the_head_copied_earlier(
    signed_log: Path, keys: tuple[Path, Path]
) -> None:
    real_head = verify(signed_log).head
    objs = objects(signed_log)
    second = [i for i, o in enumerate(objs) if o["type"] == CHECKPOINT][1]
    write_objects(signed_log, objs[: second + 1])  # cut right after a checkpoint
    cut = check(signed_log, keys[1])
    assert cut.ok  # a clean prefix: nothing inside the file can tell ...
    result = check(signed_log, keys[1], heads=(real_head,))  # ... the head copied off the host can
    assert kinds(result) == ["head"]
    assert result.problems[0].message == (
        f"the log was cut: it ends at entry {second + 1}, but the expected head is entry "
        f"{real_head[0]}"
    )
    cli = invoke(
        "verify", signed_log, "--public-key", keys[1], "--head", f"{real_head[0]}:{real_head[1]}"
    )
    assert cli.exit_code == 1 and "the log was cut" in cli.output


def test_a_rewritten_head_is_found(signed_log: Path, keys: tuple[Path, Path]) -> None:
    seq, head = verify(signed_log).head
    assert check(signed_log, keys[1], heads=((seq, head),)).ok
    objs = objects(signed_log)
    objs[0]["note"] = "x"
    write_objects(signed_log, rehash(objs))
    result = check(signed_log, heads=((seq, head),))
    assert "head" in kinds(result)
    assert f"not the expected head {head}" in next(
        p.message for p in result.problems if p.kind == "head"
    )


def test_the_wrong_key_fails_every_checkpoint_by_name(
    signed_log: Path, keys: tuple[Path, Path], other_keys: tuple[Path, Path]
) -> None:
    result = check(signed_log, other_keys[1])
    assert kinds(result) == ["key"] * 3
    fingerprint = Signer.from_file(keys[0]).fingerprint
    checkpoint_seqs = [e.seq for e in entries(signed_log) if e.type == CHECKPOINT]
    assert [p.seq for p in result.problems] == checkpoint_seqs
    assert f"was signed by another key ({fingerprint})" in result.problems[0].message
    cli = invoke("verify", signed_log, "--public-key", other_keys[1])
    assert cli.exit_code == 1
    assert "3 problems in all" in cli.output and "0 of 3 signatures valid" in cli.output
    # Both keys (after a key change): each checkpoint is checked with its own.
    assert check(signed_log, other_keys[1], keys[1]).ok


def test_a_forged_signature_with_the_right_fingerprint_is_bad(
    signed_log: Path, keys: tuple[Path, Path], other_keys: tuple[Path, Path]
) -> None:
    forger = Signer.from_file(other_keys[0])
    objs = objects(signed_log)
    last = objs[-1]
    forged = forger._key.sign(
        audit.signed_message(last["signed_seq"], last["signed_hash"], last["key_fingerprint"])
    )
    last["signature"] = base64.b64encode(forged).decode()
    write_objects(signed_log, rehash(objs))
    result = check(signed_log, keys[1])
    assert kinds(result) == ["signature"] and result.problems[0].seq == last["seq"]


# --- runs in progress and the CLI ---------------------------------------------------------------


def test_an_unsigned_tail_is_a_warning_while_a_run_is_in_progress(
    signed_log: Path, keys: tuple[Path, Path]
) -> None:
    with AuditLog(signed_log) as log:
        log.append("run_started", run_id="r", rule="call-records")
        log.append("batch_intent", run_id="r", store="cdrdb/cdr", batch=1, planned=3)
    result = check(signed_log, keys[1])
    assert result.ok and result.unsigned_tail == 2
    assert result.warnings == (
        "2 entries after the last signed checkpoint are hash-chained but not yet signed: a run "
        "is in progress (its checkpoint will sign them) or was interrupted (the next run signs "
        "them)",
    )
    cli = invoke("verify", signed_log, "--public-key", keys[1])
    assert cli.exit_code == 0
    assert "warning: 2 entries after the last signed checkpoint" in cli.output
    strict = invoke("verify", signed_log, "--public-key", keys[1], "--strict")
    assert strict.exit_code == 1
    assert strict.output.startswith(
        f"{signed_log}: UNFINISHED (--strict): audit.jsonl:{verify(signed_log).head[0] - 1}: 2 "
        "entries after the last signed checkpoint"
    )


def test_a_kill_before_the_checkpoint_is_a_warning_until_the_next_run_signs_it(
    signed_log: Path, keys: tuple[Path, Path], pbx: Path
) -> None:
    objs = objects(signed_log)
    run_end = objs[-2]
    # SIGKILL after the run's last entry was synced, before its checkpoint was written.
    write_objects(signed_log, objs[:-1])
    cli = invoke("verify", signed_log, "--public-key", keys[1])
    assert cli.exit_code == 0, cli.output
    assert cli.output.startswith(f"{signed_log}: intact")
    assert "2 checkpoints, the last signs entry" in cli.output
    assert "2 of 2 signatures valid" in cli.output
    assert "are hash-chained but not yet signed: the run that wrote them ended without its " in (
        cli.output
    )
    as_json = json.loads(invoke("verify", signed_log, "--public-key", keys[1], "--json").output)
    assert as_json["ok"] is True and as_json["problems"] == []
    assert as_json["unsigned_tail"] == run_end["seq"] - as_json["last_checkpoint"]["seq"]
    strict = invoke("verify", signed_log, "--public-key", keys[1], "--strict", "--json")
    assert strict.exit_code == 1
    assert [p["kind"] for p in json.loads(strict.output)["problems"]] == ["unsigned_tail"]

    # Tampering is still found while the tail is unsigned: an edit before the last checkpoint
    # with the chain recomputed, and an edit in the unsigned tail without recomputing it.
    edited = [dict(o) for o in objs[:-1]]
    next(o for o in edited if o["type"] == "batch_done")["deleted"] += 1
    write_objects(signed_log, rehash(edited))
    assert kinds(check(signed_log, keys[1])) == ["checkpoint", "checkpoint"]
    edited = [dict(o) for o in objs[:-1]]
    edited[-1]["deleted"] += 1
    write_objects(signed_log, edited)
    assert kinds(check(signed_log, keys[1])) == ["chain"]

    # The next run signs the interrupted run's end before its own first entry.
    write_objects(signed_log, objs[:-1])
    config = load_config(pbx)
    assert run_rules(config, ("voicemail",))[0].status == "done"
    log = entries(signed_log)
    assert log[run_end["seq"]].type == CHECKPOINT
    assert log[run_end["seq"]].fields["signed_seq"] == run_end["seq"]
    assert check(signed_log, keys[1], strict=True).ok


def test_verify_and_head_commands(signed_log: Path, keys: tuple[Path, Path]) -> None:
    seq, head = verify(signed_log).head
    ok = invoke("verify", signed_log, "--public-key", keys[1])
    assert ok.exit_code == 0, ok.output
    assert ok.output.splitlines()[0] == f"{signed_log}: intact, {seq} entries, head #{seq} {head}"
    assert "3 checkpoints, the last signs entry" in ok.output
    assert "3 of 3 signatures valid" in ok.output

    as_json = json.loads(invoke("verify", signed_log, "--public-key", keys[1], "--json").output)
    assert as_json["ok"] is True and as_json["head"] == {"seq": seq, "hash": head}
    assert (as_json["checkpoints"], as_json["valid_signatures"]) == (3, 3)
    assert as_json["last_checkpoint"]["seq"] == seq and as_json["problems"] == []

    printed = invoke("head", signed_log)
    assert printed.exit_code == 0
    lines = printed.output.splitlines()
    assert lines[0] == f"{seq} {head}"
    last = entries(signed_log)[-1]
    assert lines[1].startswith(f"checkpoint {seq} (")
    assert lines[1].endswith(f"signs entry {seq - 1} {last.fields['signed_hash']}")
    assert lines[3] == f"  signature {last.fields['signature']}"
    assert lines[-1] == f"check later: retentiond audit verify --head {seq}:{head}"
    head_json = json.loads(invoke("head", signed_log, "--json").output)
    assert (head_json["seq"], head_json["hash"]) == (seq, head)
    assert head_json["checkpoint"]["signature"] == last.fields["signature"]

    bad = invoke("verify", signed_log, "--head", "17-abc")
    assert bad.exit_code == 2 and "SEQ:HASH" in bad.output


def test_verify_uses_the_configured_log_without_an_argument(
    signed_log: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("RETENTIOND_CONFIG", str(signed_log.parent / "retentiond.yaml"))
    result = invoke("verify")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{signed_log}: intact")


# --- rotation -----------------------------------------------------------------------------------


def write_run(
    log: AuditLog, signer: Signer | None, batches: int = 3, *, rotate: bool = True
) -> None:
    """A run as the engine writes it (about 2200 bytes), with the engine's rotation point
    before it."""
    if rotate:
        log.rotate_if_due()
    run_id = f"run{log.head[0]}"
    log.append("run_started", run_id=run_id, rule="call-records", cutoff="2026-01-01")
    for number in range(1, batches + 1):
        log.append("batch_intent", run_id=run_id, store="cdrdb/cdr", batch=number, planned=500)
        log.append("batch_done", run_id=run_id, store="cdrdb/cdr", batch=number, deleted=500)
    log.append("run_finished", run_id=run_id, rule="call-records", status="done", deleted=1500)
    if signer is not None:
        log.checkpoint(signer)


def rotated_log(path: Path, signer: Signer | None, runs: int, rotate_bytes: int = 6000) -> None:
    with AuditLog(path, rotate_bytes=rotate_bytes) as log:
        for _ in range(runs):
            write_run(log, signer)


def names(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name))


@pytest.fixture
def signer(keys: tuple[Path, Path]) -> Signer:
    return Signer.from_file(keys[0])


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    folder = tmp_path / "log"
    folder.mkdir()
    return folder / "audit.jsonl"


def test_size_rotation_starts_a_file_that_continues_the_chain(
    log_path: Path, signer: Signer, keys: tuple[Path, Path]
) -> None:
    rotated_log(log_path, signer, runs=7)  # three runs exceed 6000 bytes
    assert names(log_path) == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    first = entries(log_path.with_name("audit.jsonl.1"))  # a rotated file reads on its own
    assert first[0].seq == 1 and first[-1].type == CHECKPOINT  # a run never spans two files
    assert log_path.with_name("audit.jsonl.1").stat().st_size > 6000
    assert len([e for e in first if e.type == "run_started"]) == 3

    second = objects(log_path.with_name("audit.jsonl.2"))
    continued = second[0]
    assert list(continued) == [
        "seq",
        "ts",
        "type",
        "previous_file",
        "previous_seq",
        "previous_hash",
        "reason",
        "prev",
        "hash",
    ]
    assert continued["type"] == CONTINUED and continued["reason"] == "size"
    assert continued["previous_file"] == "audit.jsonl.1"
    assert continued["previous_seq"] == first[-1].seq and continued["seq"] == first[-1].seq + 1
    assert continued["previous_hash"] == first[-1].hash == continued["prev"]
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o640
    assert not log_path.with_name("audit.jsonl.rotating").exists()

    all_entries = entries(log_path)
    assert [e.seq for e in all_entries] == list(range(1, len(all_entries) + 1))
    assert [e.type for e in all_entries].count(CONTINUED) == 2
    result = verify(log_path)
    assert result.ok and result.entries == len(all_entries)
    assert result.files == ("audit.jsonl.1", "audit.jsonl.2", "audit.jsonl")
    assert result.head == (all_entries[-1].seq, all_entries[-1].hash)
    assert check(log_path, keys[1]).ok
    with AuditLog(log_path, rotate_bytes=6000) as log:  # reopened: the chain goes on
        assert log.head == result.head
        assert log.rotate_if_due() is None  # the current file is still small


def test_a_run_never_rotates_in_its_middle(pbx: Path, keys: tuple[Path, Path]) -> None:
    config = signed(pbx, keys[0])
    engine = Engine(config, now=lambda: NOW)
    path = log_of(config)
    with AuditLog(path, rotate_bytes=1, clock=lambda: NOW) as log:  # due after every run
        outcomes = [engine.run(rule, log) for rule in config.config.rules]
    assert [o.status for o in outcomes] == ["done"] * 3
    assert names(path) == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    for name, rule in zip(["audit.jsonl.1", "audit.jsonl.2", "audit.jsonl"], RULES, strict=True):
        file_entries = objects(path.with_name(name))
        run = [o for o in file_entries if "run_id" in o]
        assert {o["run_id"] for o in run} == {run[0]["run_id"]}  # one whole run per file
        assert run[0]["type"] == "run_started" and run[0]["rule"] == rule
        assert file_entries[-1]["type"] == CHECKPOINT
    assert check(path, keys[1]).ok


def test_yearly_rotation_with_a_faked_clock(log_path: Path, signer: Signer) -> None:
    last_year = datetime(2025, 12, 31, 23, 30, tzinfo=UTC)
    this_year = datetime(2026, 1, 1, 3, 15, tzinfo=UTC)
    with AuditLog(log_path, rotate_yearly=True, clock=lambda: last_year) as log:
        write_run(log, signer)
        write_run(log, signer)  # same year: no rotation
    assert names(log_path) == ["audit.jsonl"]
    assert entries(log_path)[-1].ts == "2025-12-31T23:30:00.000000Z"
    with AuditLog(log_path, clock=lambda: this_year) as log:
        assert log.rotate_if_due() is None  # rotation not asked for: none
    assert names(log_path) == ["audit.jsonl"]
    before = entries(log_path)

    with AuditLog(log_path, rotate_yearly=True, clock=lambda: this_year) as log:
        write_run(log, signer)
        write_run(log, signer)  # this year's file now: no second rotation
    assert names(log_path) == ["audit.jsonl", "audit.jsonl.1"]
    assert entries(log_path.with_name("audit.jsonl.1")) == before  # last year, all of it
    new_file = objects(log_path)
    assert new_file[0]["type"] == CONTINUED and new_file[0]["reason"] == "year"
    assert new_file[0]["ts"] == "2026-01-01T03:15:00.000000Z"
    assert (new_file[0]["previous_seq"], new_file[0]["prev"]) == (before[-1].seq, before[-1].hash)
    everything = entries(log_path)
    assert everything[: len(before)] == before
    assert [e.seq for e in everything] == list(range(1, len(everything) + 1))
    assert verify(log_path).ok


def make_files(log_path: Path, signer: Signer, count: int) -> None:
    """`count` rotated files plus the current one, with a run in each."""
    with AuditLog(log_path, rotate_bytes=2000) as log:  # one run per file
        while len(names(log_path)) < count + 1:
            write_run(log, signer)
        write_run(log, signer, batches=0, rotate=False)  # and a second in the current one
    assert len(names(log_path)) == count + 1


def test_a_missing_middle_file_is_named(log_path: Path, signer: Signer) -> None:
    make_files(log_path, signer, 3)
    before_gap = entries(log_path.with_name("audit.jsonl.1"))
    log_path.with_name("audit.jsonl.2").unlink()
    result = verify(log_path)
    assert not result.ok
    assert (result.broken_file, result.broken_at) == ("audit.jsonl.3", 1)
    assert result.reason is not None
    assert result.reason.startswith("audit.jsonl.2 is missing: audit.jsonl.3 goes on from it")
    seen: list[int] = []
    with pytest.raises(AuditError, match=r"line 1 of audit.jsonl.3 \(audit.jsonl.2 is missing"):
        seen.extend(e.seq for e in read_entries(log_path))
    assert seen == [e.seq for e in before_gap]  # everything before the gap was read
    cli = invoke("verify", log_path)
    assert cli.exit_code == 1 and "audit.jsonl.2 is missing" in cli.output.splitlines()[0]


def test_the_newest_rotated_file_missing_is_named(log_path: Path, signer: Signer) -> None:
    make_files(log_path, signer, 2)
    log_path.with_name("audit.jsonl.2").unlink()
    result = verify(log_path)
    assert (result.ok, result.broken_file) == (False, "audit.jsonl")
    assert result.reason is not None and result.reason.startswith("audit.jsonl.2 is missing")


def test_reordered_files_are_named(log_path: Path, signer: Signer) -> None:
    make_files(log_path, signer, 2)
    one, two = log_path.with_name("audit.jsonl.1"), log_path.with_name("audit.jsonl.2")
    swap = log_path.with_name("swap")
    one.rename(swap)
    two.rename(one)
    swap.rename(two)
    result = verify(log_path)
    assert not result.ok and (result.broken_file, result.broken_at) == ("audit.jsonl.1", 1)
    assert result.reason == (
        "audit.jsonl.1 goes on from audit.jsonl.1, which is here too, but not before it: "
        "log files were renamed or reordered"
    )


def test_entries_cut_from_the_end_of_a_rotated_file_are_found(
    log_path: Path, signer: Signer
) -> None:
    make_files(log_path, signer, 2)
    one = log_path.with_name("audit.jsonl.1")
    write_objects(one, objects(one)[:-1])
    result = verify(log_path)
    assert not result.ok and result.broken_file == "audit.jsonl.2"
    assert result.reason is not None and "removed from or added to the end of audit.jsonl.1" in (
        result.reason
    )


def test_an_emptied_current_file_is_found(log_path: Path, signer: Signer) -> None:
    make_files(log_path, signer, 1)
    log_path.write_bytes(b"")
    result = verify(log_path)
    assert not result.ok and result.broken_file == "audit.jsonl"
    assert result.reason is not None and "is empty" in result.reason


def test_files_removed_after_their_retention_are_a_warning_and_names_are_not_reused(
    log_path: Path, signer: Signer, keys: tuple[Path, Path]
) -> None:
    make_files(log_path, signer, 2)
    for number in (1, 2):
        log_path.with_name(f"audit.jsonl.{number}").unlink()
    result = verify(log_path)
    assert result.ok and result.begins_after == "audit.jsonl.2"
    full = check(log_path, keys[1])
    assert full.ok
    assert full.warnings[0].startswith(
        f"the log begins at entry {objects(log_path)[0]['seq']}, going on from audit.jsonl.2, "
        "which is not here"
    )
    with AuditLog(log_path, rotate_bytes=1) as log:
        write_run(log, signer)
    assert names(log_path) == ["audit.jsonl", "audit.jsonl.3"]  # never a second audit.jsonl.1
    assert verify(log_path).ok


def test_an_interrupted_rotation_is_repaired_on_the_next_open(
    log_path: Path, signer: Signer
) -> None:
    make_files(log_path, signer, 1)
    before = verify(log_path)
    # The crash state: the current file already linked under its rotated name, the next file
    # half made under the staging name.
    os.link(log_path, log_path.with_name("audit.jsonl.2"))
    log_path.with_name("audit.jsonl.rotating").write_bytes(b'{"seq":')
    during = verify(log_path)
    assert during.ok and during == before  # readers skip the extra link
    with AuditLog(log_path, rotate_bytes=10**9) as log:
        assert names(log_path) == ["audit.jsonl", "audit.jsonl.1"]
        write_run(log, signer)
    assert verify(log_path).ok


def test_a_rotation_that_cannot_happen_leaves_the_log_going_on(
    log_path: Path, signer: Signer
) -> None:
    with AuditLog(log_path) as log:
        write_run(log, signer)
    if (
        not shutil.which("chattr")
        or subprocess.run(
            ["chattr", "+a", str(log_path)], capture_output=True, check=False
        ).returncode
    ):
        pytest.skip("cannot set the append-only attribute here")
    try:
        with AuditLog(log_path, rotate_bytes=1) as log:
            with pytest.raises(AuditError, match=r"cannot rotate .* nothing is lost.*chattr \+a"):
                log.rotate_if_due()
            write_run(log, signer, rotate=False)  # the engine warns and goes on in this file
    finally:
        subprocess.run(["chattr", "-a", str(log_path)], check=False)
    assert names(log_path) == ["audit.jsonl"]
    assert verify(log_path).ok


def test_a_writer_that_opened_the_file_before_a_rotation_writes_to_the_new_one(
    log_path: Path, signer: Signer, monkeypatch: Any
) -> None:
    with AuditLog(log_path, rotate_bytes=1) as log:
        write_run(log, signer)
        # Another process opened audit.jsonl just now and waits for the lock ...
        stale = os.open(log_path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        write_run(log, signer)  # ... while this one rotates it away to audit.jsonl.1
    assert os.fstat(stale).st_ino == log_path.with_name("audit.jsonl.1").stat().st_ino
    real_open = AuditLog._open_file
    handed: list[int] = []

    def open_stale_first(self: AuditLog) -> int:
        if not handed:
            handed.append(stale)
            return stale
        return real_open(self)

    monkeypatch.setattr(AuditLog, "_open_file", open_stale_first)
    with AuditLog(log_path) as late:
        assert late.head == verify(log_path).head  # the new file's head, not the old one's
        late.append("config_reloaded", old_config_sha256="a", new_config_sha256="b")
    assert handed == [stale]
    with pytest.raises(OSError):
        os.fstat(stale)  # the stale descriptor was closed, and the current file opened
    assert objects(log_path)[-1]["type"] == "config_reloaded"
    assert objects(log_path.with_name("audit.jsonl.1"))[-1]["type"] == CHECKPOINT
    assert verify(log_path).ok


# --- writer API ---------------------------------------------------------------------------------


def test_checkpoints_sign_the_head_even_when_another_thread_appends(
    log_path: Path, signer: Signer
) -> None:
    with AuditLog(log_path) as log:
        log.append("run_started", run_id="a")
        stale = signer.sign(*log.head)
        log.append("config_reloaded", old_config_sha256="1", new_config_sha256="2")
        with pytest.raises(audit.StaleHead):
            log.append(CHECKPOINT, **stale)  # would sign an entry that is no longer the head
        with pytest.raises(TypeError, match="exactly the fields"):
            log.append(CHECKPOINT, signed_seq=2)
        with pytest.raises(TypeError, match="only rotation writes them"):
            log.append(CONTINUED, previous_file="x")

        entries_written: list[Entry] = []

        def appender() -> None:
            for _ in range(50):
                entries_written.append(log.append("config_reloaded", n=1))

        thread = threading.Thread(target=appender)
        thread.start()
        for _ in range(50):
            log.checkpoint(signer)
        thread.join()
    result = check_log(log_path, [signer.verify_key()])
    assert result.ok and result.checkpoints == 50 and result.valid_signatures == 50


# --- the real command line ----------------------------------------------------------------------


def _registered() -> bool:
    probe = subprocess.run(
        [sys.executable, "-m", "retentiond", "audit", "keygen", "--help"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


@pytest.mark.skipif(
    not _registered(),
    reason="`retentiond audit keygen` is not registered in cli.py yet "
    "(cli.add_command(audit_commands.audit_group) replaces the old audit group)",
)
def test_the_installed_command_line(tmp_path: Path) -> None:
    def retentiond(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "retentiond", *map(str, args)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "RETENTIOND_CONFIG": str(tmp_path / "none.yaml")},
        )

    made = retentiond("audit", "keygen", "--out-dir", tmp_path / "keys")
    assert made.returncode == 0, made.stderr
    private, public = tmp_path / "keys" / "retentiond.key", tmp_path / "keys" / "retentiond.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    config_file = demo.build(tmp_path / "pbx")
    text = config_file.read_text().replace("audit:\n", f"audit:\n  signing_key: {private}\n", 1)
    config_file.write_text(text)
    ran = retentiond("-c", config_file, "run", "--once")
    assert ran.returncode == 0, ran.stderr
    path = load_config(config_file).config.audit.path

    checked = retentiond("audit", "verify", path, "--public-key", public)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "intact" in checked.stdout and "3 of 3 signatures valid" in checked.stdout
    head = retentiond("audit", "head", path)
    assert head.returncode == 0
    seq, hash = head.stdout.split()[:2]
    assert (int(seq), hash) == verify(path).head

    objs = objects(path)
    write_objects(path, objs[:-1])  # the last checkpoint gone, as after a kill before it
    unsigned = retentiond("audit", "verify", path, "--public-key", public)
    assert unsigned.returncode == 0, unsigned.stdout
    assert "hash-chained but not yet signed" in unsigned.stdout
    strict = retentiond("audit", "verify", path, "--public-key", public, "--strict")
    assert strict.returncode == 1 and "UNFINISHED (--strict)" in strict.stdout
    broken = retentiond("audit", "verify", path, "--public-key", public, "--head", f"{seq}:{hash}")
    assert broken.returncode == 1
    assert "BROKEN: the log was cut" in broken.stdout
    as_json = json.loads(retentiond("audit", "verify", path, "--json", "--strict").stdout)
    assert as_json["ok"] is False and as_json["problems"][0]["kind"] == "unsigned_tail"
