"""A torn last line: what a power loss during a write leaves at the end of the deletion log.

`audit verify` reports it apart from damage (the entries before it are intact), and the next
open of the log for writing moves its bytes to a side file, cuts the log after its last complete
line and records the repair in a `log_repaired` entry; the chain goes on from there. Anything
else wrong at the end stays damage that a person must look at. All on real files; the runs are
real runs of the demo PBX.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from structlog.testing import capture_logs

from retentiond import demo
from retentiond.cli.audit import audit_group
from retentiond.config.loader import LoadedConfig, load_config
from retentiond.engine.engine import Engine
from retentiond.engine.outcome import RunOutcome
from retentiond.errors import AuditError
from retentiond.evidence import log as audit
from retentiond.evidence.log import (
    LOG_REPAIRED,
    AuditLog,
    Entry,
    Signer,
    VerifyKey,
    check_log,
    verify,
)
from retentiond.stores.base import Batch, BatchResult
from retentiond.stores.sql.store import SqlStore

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SIDE_NAME = "audit.jsonl.torn-20261126T120000Z"


# --- helpers ------------------------------------------------------------------------------------


def clock() -> datetime:
    return NOW


def write_run(path: Path, batches: int = 3, **options: Any) -> list[Entry]:
    """A run's entries as the engine writes them."""
    with AuditLog(path, clock=clock, **options) as log:
        written = [log.append("run_started", run_id="r1", rule="call-records")]
        for number in range(1, batches + 1):
            fields = {"run_id": "r1", "store": "cdrdb/cdr", "batch": number}
            written.append(log.append("batch_intent", planned=100, **fields))
            written.append(log.append_unsynced("batch_done", deleted=100, **fields))
        return written


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def tear(path: Path, keep: int) -> bytes:
    """Cut the last line after `keep` bytes, as a power loss does; return what is left of it."""
    content = lines(path)
    torn = content[-1][:keep]
    path.write_bytes(b"".join(content[:-1]) + torn)
    return torn


def side_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.torn-*"))


def entries(path: Path) -> list[Entry]:
    return list(audit.read_entries(path))


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(audit_group, [str(a) for a in args])


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    folder = tmp_path / "log"
    folder.mkdir()
    return folder / "audit.jsonl"


# --- verify: a torn last line is reported, not counted as damage ---------------------------------


def test_verify_reports_a_torn_last_line_with_its_size_and_passes(log_path: Path) -> None:
    written = write_run(log_path)
    torn = tear(log_path, 57)

    result = check_log(log_path)
    assert result.ok and result.problems == ()
    assert result.chain.entries == len(written) - 1
    assert result.chain.head == (written[-2].seq, written[-2].hash)
    assert result.torn_tail == audit.TornTail(
        "audit.jsonl", len(written), 57, hashlib.sha256(torn).hexdigest(), written[-2].seq
    )
    message = (
        f"the last line is incomplete (57 bytes at audit.jsonl:{len(written)}, likely a power "
        "loss while it was written); the next run moves it aside and records that in the log"
    )
    assert message in result.warnings

    plain = invoke("verify", log_path)
    assert plain.exit_code == 0, plain.output
    assert plain.output.startswith(f"{log_path}: intact, {len(written) - 1} entries")
    assert f"warning: {message}" in plain.output

    strict = invoke("verify", log_path, "--strict")
    assert strict.exit_code == 1
    assert strict.output.startswith(
        f"{log_path}: UNFINISHED (--strict): audit.jsonl:{len(written)}: the last line is "
        "incomplete (57 bytes"
    )

    as_json = json.loads(invoke("verify", log_path, "--json").output)
    assert as_json["ok"] is True and as_json["strict"] is False
    assert as_json["torn_tail"] == {
        "file": "audit.jsonl",
        "line": len(written),
        "bytes": 57,
        "sha256": hashlib.sha256(torn).hexdigest(),
        "after_seq": written[-2].seq,
    }
    strict_json = json.loads(invoke("verify", log_path, "--json", "--strict").output)
    assert strict_json["ok"] is False
    assert [p["kind"] for p in strict_json["problems"]] == ["torn_tail"]


def test_readers_see_the_complete_entries_before_a_torn_line(log_path: Path) -> None:
    written = write_run(log_path)
    tear(log_path, 10)
    assert entries(log_path) == written[:-1]  # no error: the report and status still read it
    head = invoke("head", log_path)
    assert head.exit_code == 0
    assert head.output.splitlines()[0] == f"{written[-2].seq} {written[-2].hash}"


def test_zeros_a_filesystem_left_instead_of_the_line_count_as_torn(log_path: Path) -> None:
    written = write_run(log_path)
    content = lines(log_path)
    log_path.write_bytes(b"".join(content[:-1]) + b"\0" * len(content[-1]))
    assert verify(log_path).torn_tail is not None
    with AuditLog(log_path) as log:
        assert log.repairs[0].fields["removed_bytes"] == len(content[-1])
    assert verify(log_path).ok and entries(log_path)[-1].seq == written[-1].seq


# --- open: the torn line is moved aside and the repair recorded ---------------------------------


def test_opening_moves_a_torn_line_aside_and_records_it(log_path: Path) -> None:
    written = write_run(log_path)
    complete = b"".join(lines(log_path)[:-1])
    torn = tear(log_path, 80)

    with capture_logs() as journal, AuditLog(log_path, clock=clock) as log:
        (repaired,) = log.repairs
        assert log.head == (repaired.seq, repaired.hash)
        log.append("run_started", run_id="r2", rule="call-records")
    (warning,) = [e for e in journal if e["log_level"] == "warning"]
    assert "incomplete line" in warning["event"]
    assert (warning["removed_bytes"], warning["moved_to"]) == (80, SIDE_NAME)

    # The log: every complete line unchanged, then the repair, then the chain goes on.
    assert log_path.read_bytes().startswith(complete)
    assert json.loads(lines(log_path)[len(written) - 1])["hash"] == repaired.hash
    assert repaired.type == LOG_REPAIRED
    assert (repaired.seq, repaired.prev) == (written[-1].seq, written[-2].hash)
    assert repaired.fields == {
        "reason": "incomplete last line",
        "removed_bytes": 80,
        "removed_sha256": hashlib.sha256(torn).hexdigest(),
        "moved_to": SIDE_NAME,
    }
    assert torn not in log_path.read_bytes()  # counts and a hash, never the bytes themselves

    # The side file: the torn bytes, nothing lost, readable by the owner only.
    (side,) = side_files(log_path)
    assert side.name == SIDE_NAME
    assert side.read_bytes() == torn
    assert stat.S_IMODE(side.stat().st_mode) == 0o600

    result = check_log(log_path)
    assert result.ok and result.torn_tail is None
    assert result.warnings == ("no checkpoints: the log is not signed (audit.signing_key)",)
    assert [e.type for e in entries(log_path)][-2:] == [LOG_REPAIRED, "run_started"]
    shown = invoke("verify", log_path, "--strict")
    assert shown.exit_code == 0, shown.output

    with AuditLog(log_path) as log:  # repaired once: the next open has nothing to do
        assert log.repairs == []
    assert len(side_files(log_path)) == 1


def test_a_torn_only_line_is_moved_aside_and_the_chain_starts_afresh(log_path: Path) -> None:
    write_run(log_path, batches=0)
    torn = tear(log_path, 30)
    assert log_path.read_bytes() == torn
    result = verify(log_path)
    assert result.ok and result.entries == 0 and result.torn_tail is not None

    with AuditLog(log_path, clock=clock) as log:
        (repaired,) = log.repairs
    assert (repaired.seq, repaired.prev) == (1, audit.GENESIS)
    assert side_files(log_path)[0].read_bytes() == torn
    assert verify(log_path).ok and verify(log_path).entries == 1


def test_two_repairs_in_one_second_get_two_side_files(log_path: Path) -> None:
    write_run(log_path)
    first = tear(log_path, 40)
    with AuditLog(log_path, clock=clock) as log:
        log.append("run_started", run_id="r2", rule="call-records")
    second = tear(log_path, 20)
    with AuditLog(log_path, clock=clock) as log:
        assert log.repairs[0].fields["moved_to"] == SIDE_NAME + "-2"
    assert [p.read_bytes() for p in side_files(log_path)] == [first, second]
    repairs = [e for e in entries(log_path) if e.type == LOG_REPAIRED]
    assert [e.fields["removed_bytes"] for e in repairs] == [40, 20]
    assert verify(log_path).ok


def test_a_torn_line_in_a_rotated_log_is_repaired_in_the_current_file(log_path: Path) -> None:
    with AuditLog(log_path, rotate_bytes=1, clock=clock) as log:
        log.append("run_started", run_id="r1", rule="call-records")
        log.rotate_if_due()
        log.append("run_started", run_id="r2", rule="call-records")
        log.append("batch_intent", run_id="r2", store="cdrdb/cdr", batch=1, planned=100)
    tear(log_path, 33)
    before = verify(log_path)
    assert before.ok and before.files == ("audit.jsonl.1", "audit.jsonl")
    assert before.torn_tail is not None and before.torn_tail.line == 3

    with AuditLog(log_path, rotate_bytes=1, clock=clock) as log:
        assert log.repairs[0].seq == 4
        assert log.rotate_if_due() is not None  # and rotation goes on as before
    after = verify(log_path)
    assert after.ok and after.torn_tail is None
    assert after.files == ("audit.jsonl.1", "audit.jsonl.2", "audit.jsonl")
    assert [p.name for p in side_files(log_path)] == [SIDE_NAME]


def test_a_current_file_holding_only_a_torn_line_after_rotation_is_damage(
    log_path: Path,
) -> None:
    with AuditLog(log_path, rotate_bytes=1) as log:
        log.append("run_started", run_id="r1", rule="call-records")
        log.rotate_if_due()
    log_path.write_bytes(b'{"seq":3,"ts":"2026')  # the continued entry is always synced first
    result = verify(log_path)
    assert not result.ok and result.broken_file == "audit.jsonl"
    assert result.reason is not None and "holds only an incomplete line" in result.reason
    with pytest.raises(AuditError, match="holds only an incomplete line"):
        AuditLog(log_path).open()
    assert side_files(log_path) == []


# --- anything else at the end stays damage ------------------------------------------------------


def test_a_complete_entry_without_its_newline_is_damage(log_path: Path) -> None:
    write_run(log_path)
    data = log_path.read_bytes()[:-1]
    log_path.write_bytes(data)
    result = verify(log_path)
    assert not result.ok and result.torn_tail is None
    assert result.reason is not None and result.reason.startswith(
        "the last line has no newline, yet is complete JSON"
    )
    with pytest.raises(AuditError, match=r"ends with damage, not with a write cut short"):
        AuditLog(log_path).open()
    assert log_path.read_bytes() == data and side_files(log_path) == []
    assert invoke("verify", log_path).exit_code == 1


def test_a_changed_last_line_without_its_newline_is_damage(log_path: Path) -> None:
    write_run(log_path)
    content = lines(log_path)
    content[-1] = content[-1].replace(b'"deleted":100', b'"deleted":999')[:-1]
    log_path.write_bytes(b"".join(content))
    result = verify(log_path)
    assert not result.ok and result.torn_tail is None
    with pytest.raises(AuditError, match="complete JSON"):
        AuditLog(log_path).open()
    assert side_files(log_path) == []


def test_a_changed_complete_last_line_is_damage(log_path: Path) -> None:
    write_run(log_path)
    content = lines(log_path)
    content[-1] = content[-1].replace(b'"deleted":100', b'"deleted":999')
    log_path.write_bytes(b"".join(content))
    result = verify(log_path)
    assert not result.ok and "hash mismatch" in (result.reason or "")
    with pytest.raises(AuditError, match="is damaged"):
        AuditLog(log_path).open()
    assert side_files(log_path) == []


def test_an_incomplete_line_before_the_last_is_damage(log_path: Path) -> None:
    write_run(log_path)
    content = lines(log_path)
    content[2] = content[2][:30] + b"\n"
    log_path.write_bytes(b"".join(content))
    result = verify(log_path)
    assert (result.ok, result.broken_at, result.torn_tail) == (False, 3, None)
    assert invoke("verify", log_path).exit_code == 1

    # Two lines torn: the line before the torn one damaged too. Not a single cut-short write.
    other = log_path.with_name("other.jsonl")
    write_run(other)
    content = lines(other)
    damaged = b"".join(content[:-2]) + content[-2][:-5] + b"\n" + content[-1][:20]
    other.write_bytes(damaged)
    assert not verify(other).ok
    with pytest.raises(AuditError, match="ends with damage, not with a write cut short"):
        AuditLog(other).open()
    assert other.read_bytes() == damaged and side_files(other) == []


def test_a_last_line_longer_than_any_entry_is_damage(log_path: Path) -> None:
    write_run(log_path)
    with log_path.open("ab") as file:
        file.write(b'{"seq":' + b"1" * (audit.MAX_LINE + 10))
    assert not verify(log_path).ok
    with pytest.raises(AuditError, match="longer than"):
        AuditLog(log_path).open()
    assert side_files(log_path) == []


def test_a_torn_line_in_a_rotated_file_is_damage(log_path: Path) -> None:
    with AuditLog(log_path, rotate_bytes=1) as log:
        log.append("run_started", run_id="r1", rule="call-records")
        log.append("run_finished", run_id="r1", rule="call-records", status="done")
        log.rotate_if_due()
    rotated = log_path.with_name("audit.jsonl.1")
    tear(rotated, 25)
    result = verify(log_path)
    assert not result.ok and result.broken_file == "audit.jsonl.1"
    assert result.reason is not None and "incomplete last line in a rotated file" in result.reason


# --- a repair cut off by another crash is finished by the next open -----------------------------


def test_a_crash_before_the_log_was_cut_leaves_no_second_copy(log_path: Path) -> None:
    write_run(log_path)
    torn = tear(log_path, 60)
    stale = log_path.with_name("audit.jsonl.torn-20261126T115900Z.unrecorded")
    stale.write_bytes(torn[:25])  # the copy was being written when the power went
    with AuditLog(log_path, clock=clock) as log:
        assert len(log.repairs) == 1
    assert [p.name for p in side_files(log_path)] == [SIDE_NAME]
    assert side_files(log_path)[0].read_bytes() == torn
    assert verify(log_path).ok


def test_a_crash_after_the_log_was_cut_is_recorded_at_the_next_open(log_path: Path) -> None:
    written = write_run(log_path)
    torn = tear(log_path, 60)
    cut = log_path.read_bytes()[: -len(torn)]
    staged = log_path.with_name(SIDE_NAME + ".unrecorded")
    staged.write_bytes(torn)
    log_path.write_bytes(cut)  # the side file written, the log cut, the entry not yet appended
    assert verify(log_path).ok  # a valid shorter log; the side file holds the bytes

    with AuditLog(log_path, clock=clock) as log:
        (repaired,) = log.repairs
    assert repaired.seq == written[-1].seq
    assert repaired.fields["removed_sha256"] == hashlib.sha256(torn).hexdigest()
    assert repaired.fields["moved_to"] == SIDE_NAME
    assert [p.name for p in side_files(log_path)] == [SIDE_NAME]
    assert verify(log_path).ok


def test_a_crash_after_the_repair_was_recorded_only_renames_the_side_file(
    log_path: Path,
) -> None:
    write_run(log_path)
    tear(log_path, 60)
    with AuditLog(log_path, clock=clock) as log:
        (repaired,) = log.repairs
    side = log_path.with_name(SIDE_NAME)
    side.rename(log_path.with_name(SIDE_NAME + ".unrecorded"))  # the crash before the rename
    with AuditLog(log_path, clock=clock) as log:
        assert log.repairs == []  # recorded already: not a second time
        assert log.head == (repaired.seq, repaired.hash)
    assert [p.name for p in side_files(log_path)] == [SIDE_NAME]
    assert [e.type for e in entries(log_path)].count(LOG_REPAIRED) == 1


def test_a_torn_repair_entry_is_itself_moved_aside_and_nothing_is_lost(log_path: Path) -> None:
    write_run(log_path)
    first = tear(log_path, 60)
    with AuditLog(log_path, clock=clock):
        pass
    staged = log_path.with_name(SIDE_NAME + ".unrecorded")
    log_path.with_name(SIDE_NAME).rename(staged)
    second = tear(log_path, 45)  # the power went again while the repair entry was written
    with AuditLog(log_path, clock=lambda: datetime(2026, 11, 26, 12, 5, tzinfo=UTC)) as log:
        recorded = {e.fields["moved_to"]: e.fields["removed_bytes"] for e in log.repairs}
    assert recorded == {SIDE_NAME: 60, "audit.jsonl.torn-20261126T120500Z": 45}
    assert [p.read_bytes() for p in side_files(log_path)] == [first, second]
    assert verify(log_path).ok


@pytest.fixture
def append_only(log_path: Path) -> Iterator[None]:
    yield
    if shutil.which("chattr"):
        subprocess.run(["chattr", "-a", str(log_path)], capture_output=True, check=False)


def test_an_append_only_log_with_a_torn_line_says_how_to_repair_it(
    log_path: Path, append_only: None
) -> None:
    write_run(log_path)
    tear(log_path, 60)
    before = log_path.read_bytes()
    chattr = shutil.which("chattr")
    if not chattr or subprocess.run([chattr, "+a", str(log_path)], check=False).returncode:
        pytest.skip("cannot set the append-only attribute here")
    with pytest.raises(AuditError, match=r"cannot be moved aside.*chattr -a"):
        AuditLog(log_path).open()
    assert log_path.read_bytes() == before and side_files(log_path) == []
    subprocess.run([chattr, "-a", str(log_path)], check=True)
    with AuditLog(log_path) as log:
        assert len(log.repairs) == 1
    assert verify(log_path).ok


# --- real runs: a torn batch result is reconciled, and the repair is signed ----------------------


class Killed(BaseException):
    """Stands for the power loss: nothing in the engine handles it, nothing after it runs."""


def cdr_rows(config_file: Path) -> int:
    with sqlite3.connect(config_file.parent / "pbx" / "master.db") as db:
        (count,) = db.execute("SELECT COUNT(*) FROM cdr").fetchone()
    db.close()
    return int(count)


def run_rule(config: LoadedConfig) -> RunOutcome:
    with AuditLog(config.config.audit.path, clock=clock) as log:
        return Engine(config, now=lambda: NOW).run(config.config.rule("call-records"), log)


@pytest.fixture
def pbx(tmp_path: Path) -> Path:
    config = demo.build(tmp_path / "pbx", now=NOW, days=200)
    config.write_text(config.read_text().replace("batch_size: 500", "batch_size: 100"))
    return config


def lose_power_after_batch_3(config: LoadedConfig, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """Run call-records until the power goes right after batch 3 was applied and its result
    written (unsynced): the result line is torn, batch 4 never started. Returns the torn bytes."""
    real = SqlStore.apply

    def apply(store: SqlStore, batch: Batch, cutoff: datetime) -> BatchResult:
        if batch.number == 4:
            raise Killed
        return real(store, batch, cutoff)

    with monkeypatch.context() as patch:
        patch.setattr(SqlStore, "apply", apply)
        with pytest.raises(Killed):
            run_rule(config)
    path = config.config.audit.path
    content = lines(path)
    assert json.loads(content[-1])["type"] == "batch_intent"  # batch 4's, synced
    done = json.loads(content[-2])
    assert (done["type"], done["batch"], done["deleted"]) == ("batch_done", 3, 100)
    # The power went before batch 4's intent was synced, so neither it nor all of batch 3's
    # result reached the disk.
    torn = content[-2][: len(content[-2]) // 2]
    path.write_bytes(b"".join(content[:-2]) + torn)
    return torn


def test_a_torn_batch_result_is_moved_aside_and_its_batch_reconciled(
    pbx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(pbx)
    path = config.config.audit.path
    before = cdr_rows(pbx)
    torn = lose_power_after_batch_3(config, monkeypatch)
    interrupted = str(entries(path)[0].fields["run_id"])
    checked = check_log(path)
    assert checked.ok and checked.torn_tail is not None
    assert checked.torn_tail.bytes == len(torn)

    outcome = run_rule(config)

    assert outcome.status == "done"
    log = entries(path)
    types = [e.type for e in log]
    (repaired,) = [e for e in log if e.type == LOG_REPAIRED]
    assert repaired.fields["removed_bytes"] == len(torn)
    assert repaired.fields["removed_sha256"] == hashlib.sha256(torn).hexdigest()
    assert Path(path).with_name(repaired.fields["moved_to"]).read_bytes() == torn
    (reconciled,) = [e for e in log if e.type == "run_reconciled"]
    assert types.index(LOG_REPAIRED) < types.index("run_reconciled") < types.index("run_started", 1)
    fields = reconciled.fields
    assert fields["run_id"] == interrupted and fields["end"] == "none"
    assert fields["batches_done"] == 2 and fields["deleted"] == 200  # the synced results
    assert fields["open_batches"] == [
        {"store": "cdrdb/cdr", "batch": 3, "planned": 100, "stage": "delete"}
    ]
    assert fields["unconfirmed_deleted_max"] == 100
    # Every row is accounted for: batch 3 did delete its 100 rows, unconfirmed.
    confirmed = sum(e.fields["deleted"] for e in log if e.type == "batch_done")
    assert before - cdr_rows(pbx) == confirmed + 100
    assert check_log(path, strict=True).ok


def test_with_signing_the_next_run_signs_the_repair_first(pbx: Path, tmp_path: Path) -> None:
    private, public, _ = audit.generate_key_pair(tmp_path / "keys")
    text = pbx.read_text().replace("audit:\n", f"audit:\n  signing_key: {private}\n", 1)
    pbx.write_text(text)
    config = load_config(pbx)
    path = config.config.audit.path
    assert run_rule(config).status == "done"  # a signed run first: nothing left to delete
    key = VerifyKey.from_file(public)
    content = lines(path)
    last_checkpoint = len(content)

    # A power loss while a later entry (here: a reload between runs) was written.
    with AuditLog(path) as log:
        log.append("config_reloaded", old_config_sha256="a" * 64, new_config_sha256="b" * 64)
    torn = tear(path, 50)
    before = check_log(path, [key])
    assert before.ok and before.unsigned_tail == 0 and before.torn_tail is not None

    assert run_rule(config).status == "done"
    log = entries(path)
    repaired = log[last_checkpoint]
    assert repaired.type == LOG_REPAIRED
    assert repaired.fields["removed_sha256"] == hashlib.sha256(torn).hexdigest()
    catch_up = log[last_checkpoint + 1]  # signed first thing in the run
    assert catch_up.type == audit.CHECKPOINT and catch_up.fields["signed_seq"] == repaired.seq
    result = check_log(path, [key], strict=True)
    assert result.ok and result.valid_signatures == 3 and result.warnings == ()


def test_sign_tail_signs_only_an_unsigned_end(log_path: Path, tmp_path: Path) -> None:
    private, public, _ = audit.generate_key_pair(tmp_path / "keys")
    signer = Signer.from_file(private)
    key = VerifyKey.from_file(public)
    write_run(log_path)
    with AuditLog(log_path) as log:
        assert log.sign_tail(signer) is not None
        log.append("run_finished", run_id="r1", rule="call-records", status="done")
    tear(log_path, 30)  # the power went while the run's last entry was written
    with AuditLog(log_path) as log:  # e.g. the daemon at start, with a usable key
        checkpoint = log.sign_tail(signer)
        assert checkpoint is not None and checkpoint.fields["signed_seq"] == log.repairs[0].seq
        assert log.sign_tail(signer) is None  # already signed
    result = check_log(log_path, [key], strict=True)
    assert result.ok and result.valid_signatures == 2
