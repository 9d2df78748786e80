"""Files retentiond makes beside its log, attacked the way the user who owns that folder could:
a link planted under a name retentiond is about to write, the log itself a link, a folder that
others may write to. Nothing outside the folder may change; what is unsafe is refused with the
command that fixes it. (Issue 16, item 4.)"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from test_cli import retentiond

from retentiond import demo
from retentiond.cli.main import cli
from retentiond.config.loader import load_config
from retentiond.engine.engine import Engine
from retentiond.evidence import log as audit
from retentiond.evidence.fingerprints import fingerprints_path, key_path
from retentiond.service.metrics import Metrics

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SECRET = b"root:$6$not-a-real-hash:19000:0:99999:7:::\n"  # what the victim holds


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the log's folder that a planted link points at (/etc/shadow, say)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "shadow"
    target.write_bytes(SECRET)
    target.chmod(0o640)
    return target


@pytest.fixture
def pbx(tmp_path: Path) -> Path:
    """The demo PBX with a hold, built at NOW: its folder is the log's folder."""
    return demo.build(tmp_path / "pbx", now=NOW, days=200, hold=True)


def run_at_now(config_file: Path, rule: str = "call-records") -> str:
    """One run of `rule` as `run --once` does it, with the clock at NOW."""
    loaded = load_config(config_file)
    with audit.AuditLog(loaded.config.audit.path, clock=lambda: NOW) as log:
        outcome = Engine(loaded, now=lambda: NOW).run(loaded.config.rule(rule), log)
    return outcome.status


def invoke(*args: str | Path) -> Result:
    """The command line in this process, so that names made from its pid are known here."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def command(*args: str | Path) -> tuple[int, str]:
    """The command line as an administrator runs it: exit code, and stdout and stderr."""
    done = retentiond(*args)
    return done.returncode, done.stdout + done.stderr


def calls(config_file: Path) -> int:
    with sqlite3.connect(config_file.parent / "pbx" / "master.db") as db:
        (count,) = db.execute("SELECT count(*) FROM cdr").fetchone()
    db.close()
    return int(count)


def test_a_link_at_the_fingerprints_temporary_name_leaves_its_target_alone(
    pbx: Path, victim: Path
) -> None:
    audit_path = pbx.parent / "audit.jsonl"
    # The name the fingerprints were staged under before: .holds.json.<pid>
    (pbx.parent / f".holds.json.{os.getpid()}").symlink_to(victim)
    assert run_at_now(pbx) == "done"
    assert victim.read_bytes() == SECRET
    assert oct(victim.stat().st_mode & 0o777) == "0o640"
    saved = fingerprints_path(audit_path)
    assert saved.is_file() and not saved.is_symlink()
    assert json.loads(saved.read_text())["holds"].keys() == {"DEMO-HOLD-1"}


def test_a_link_at_the_fingerprints_key_name_is_not_followed(pbx: Path, victim: Path) -> None:
    key = key_path(pbx.parent / "audit.jsonl")
    key.symlink_to(victim)
    assert run_at_now(pbx) == "done"  # the hold is recorded in the log; only the print is lost
    assert victim.read_bytes() == SECRET
    assert key.is_symlink() and not fingerprints_path(pbx.parent / "audit.jsonl").exists()


def test_run_once_with_links_at_every_temporary_name_changes_nothing_outside(
    tmp_path: Path, victim: Path
) -> None:
    config_file = demo.build(tmp_path / "pbx", hold=True)  # today's PBX: `run --once` is today
    textfile = tmp_path / "textfile" / "retentiond.prom"
    textfile.parent.mkdir()
    with config_file.open("a") as config:
        config.write(f"monitoring: {{metrics_textfile: {textfile}}}\n")
    folder = config_file.parent
    (folder / f".holds.json.{os.getpid()}").symlink_to(victim)
    # prometheus_client's write_to_textfile staged under <path>.<pid>.<thread id>
    staged = textfile.with_name(f"{textfile.name}.{os.getpid()}.{threading.get_ident()}")
    staged.symlink_to(victim)
    result = invoke("-c", config_file, "run", "--once")
    assert result.exit_code == 0, result.output
    assert victim.read_bytes() == SECRET
    assert fingerprints_path(folder / "audit.jsonl").is_file()
    assert textfile.is_file() and not textfile.is_symlink()
    assert "retentiond_deleted" in textfile.read_text()
    assert oct(textfile.stat().st_mode & 0o777) == "0o644"  # node_exporter reads it


def test_the_metrics_textfile_is_not_written_through_a_planted_link(
    tmp_path: Path, victim: Path
) -> None:
    textfile = tmp_path / "textfile" / "retentiond.prom"
    textfile.parent.mkdir()
    staged = textfile.with_name(f"{textfile.name}.{os.getpid()}.{threading.get_ident()}")
    staged.symlink_to(victim)
    textfile.symlink_to(victim)  # at the final name too: replaced, never written through
    Metrics(["call-records"]).write_textfile(textfile)
    assert victim.read_bytes() == SECRET
    assert not textfile.is_symlink() and "retentiond_runs" in textfile.read_text()


def test_a_deletion_log_that_is_a_link_is_refused(pbx: Path, victim: Path) -> None:
    victim.write_bytes(b"")  # empty, as a fresh log would be: nothing to make the run stop
    (pbx.parent / "audit.jsonl").symlink_to(victim)
    before = calls(pbx)
    code, output = command("-c", pbx, "run", "--once")
    assert code == 1
    assert f"the audit log {pbx.parent / 'audit.jsonl'} is a symbolic link" in output
    assert "set audit.path to the real file" in output
    assert victim.read_bytes() == b""
    assert calls(pbx) == before  # nothing deleted without a log


def test_a_log_folder_reached_through_a_link_is_refused(tmp_path: Path, pbx: Path) -> None:
    real = tmp_path / "real-logs"
    real.mkdir(mode=0o750)
    link = tmp_path / "logs"
    link.symlink_to(real)
    text = pbx.read_text().replace(str(pbx.parent / "audit.jsonl"), str(link / "audit.jsonl"))
    pbx.write_text(text)
    code, output = command("-c", pbx, "run", "--once")
    assert code == 1
    assert f"{link} is a symbolic link; retentiond does not follow it" in output
    assert f"use the real folder ({real}) instead" in output
    assert list(real.iterdir()) == []


def test_a_log_folder_others_may_write_is_refused_and_check_names_the_fix(pbx: Path) -> None:
    folder = pbx.parent
    folder.chmod(0o777)  # the world-writable folder is the attack
    before = calls(pbx)
    code, output = command("-c", pbx, "run", "--once")
    assert code == 1
    assert f"the folder {folder} may be written by its group or by others (mode 0777)" in output
    assert f"Fix: chmod go-w {folder}" in output
    assert not (folder / "audit.jsonl").exists() and calls(pbx) == before
    code, output = command("-c", pbx, "check")
    assert code == 1
    assert f"audit log {folder / 'audit.jsonl'}: FAILED" in output
    assert f"chmod go-w {folder}" in output
    folder.chmod(0o750)
    assert command("-c", pbx, "check")[0] == 0


def test_a_log_others_may_write_is_refused(pbx: Path) -> None:
    log = pbx.parent / "audit.jsonl"
    assert run_at_now(pbx) == "done"
    log.chmod(0o666)
    code, output = command("-c", pbx, "run", "--once")
    assert code == 1
    assert f"the file {log} may be written by its group or by others (mode 0666)" in output
    assert f"Fix: chmod go-w {log}" in output


@pytest.mark.skipif(os.geteuid() != 0, reason="what root may do is the point")
def test_root_refuses_a_log_folder_another_user_owns(pbx: Path) -> None:
    folder = pbx.parent
    os.chown(folder, 65534, 65534)
    before = calls(pbx)
    code, output = command("-c", pbx, "run", "--once")
    assert code == 1
    assert "but retentiond runs as root" in output
    assert f"chown root {folder}" in output
    assert calls(pbx) == before and not (folder / "audit.jsonl").exists()


def test_links_at_the_repair_and_rotation_names_are_never_followed(
    tmp_path: Path, victim: Path
) -> None:
    """A guard: these two were already made with O_EXCL before item 4, and must stay so."""
    folder = tmp_path / "log"
    folder.mkdir(mode=0o750)
    path = folder / "audit.jsonl"
    with audit.AuditLog(path, clock=lambda: NOW) as log:
        log.append("config_loaded", config_sha256="a")
    with path.open("ab") as file:
        file.write(b'{"seq":2,"ts":"2026-')  # a power loss in the middle of a line
    (folder / "audit.jsonl.torn-20261126T120000Z.unrecorded").symlink_to(victim)
    (folder / "audit.jsonl.rotating").symlink_to(victim)
    with audit.AuditLog(path, rotate_bytes=1, clock=lambda: NOW) as log:
        assert [e.type for e in log.repairs] == ["log_repaired"]
        assert log.rotate_if_due() is not None
        log.append("config_loaded", config_sha256="b")
    assert victim.read_bytes() == SECRET
    assert audit.verify(path).ok
    moved = folder / "audit.jsonl.torn-20261126T120000Z-2"
    assert moved.read_bytes() == b'{"seq":2,"ts":"2026-' and not moved.is_symlink()


def test_the_demo_makes_a_folder_its_log_may_live_in_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o002)  # Ubuntu's default for users: new folders are group-writable
    try:
        config_file = demo.build(tmp_path / "pbx", now=NOW, days=200)
    finally:
        os.umask(previous)
    assert oct(config_file.parent.stat().st_mode & 0o777) == "0o755"
    assert run_at_now(config_file) == "done"
