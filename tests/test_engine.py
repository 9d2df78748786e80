"""Plan, apply, verify on a real SQLite CDR database and a real recordings tree (the demo PBX)."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from privacy import leaked

from retentiond import demo
from retentiond.config.loader import LoadedConfig, load_config
from retentiond.engine.engine import Engine
from retentiond.engine.outcome import RunOutcome, exit_code
from retentiond.evidence import log as audit
from retentiond.policy.rules import cutoff

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@pytest.fixture
def pbx(tmp_path: Path) -> Path:
    """The demo PBX, built for a fixed `now`: a year of calls and recordings."""
    return demo.build(tmp_path / "pbx", now=NOW, days=200)


def loaded(config_file: Path, **replace: str) -> LoadedConfig:
    text = config_file.read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    config_file.write_text(text)
    return load_config(config_file)


def cdr_dates(config_file: Path) -> list[str]:
    database = config_file.parent / "pbx" / "master.db"
    with sqlite3.connect(database) as db:
        rows = [r[0] for r in db.execute("SELECT calldate FROM cdr ORDER BY calldate")]
    db.close()
    return rows


def recordings(config_file: Path) -> list[Path]:
    return sorted(p for p in (config_file.parent / "pbx" / "monitor").rglob("*") if p.is_file())


def run_all(config: LoadedConfig, **engine_args: object) -> list[RunOutcome]:
    engine = Engine(config, now=lambda: NOW, **engine_args)  # type: ignore[arg-type]
    with audit.AuditLog(config.config.audit.path, clock=lambda: NOW) as log:
        return [engine.run(rule, log) for rule in config.config.rules]


def entries(config: LoadedConfig) -> list[audit.Entry]:
    return list(audit.read_entries(config.config.audit.path))


def test_run_deletes_exactly_what_is_expired_and_verifies(pbx: Path) -> None:
    config = load_config(pbx)
    zone = config.config.zone()
    before = cdr_dates(pbx)
    files_before = recordings(pbx)
    outcomes = run_all(config)

    assert [o.status for o in outcomes] == ["done", "done", "done"]
    assert exit_code(outcomes) == 0
    bound = cutoff(NOW, config.config.rules[0].keep, zone).astimezone(zone).strftime("%F %T")
    after = cdr_dates(pbx)
    assert after == [d for d in before if d >= bound]  # younger rows intact, expired gone
    assert outcomes[0].deleted == len(before) - len(after) > 0
    files_after = recordings(pbx)
    assert 0 < len(files_after) < len(files_before)
    assert outcomes[2].deleted == len(files_before) - len(files_after)
    assert all(s.remaining == 0 for o in outcomes for s in o.stores)
    assert audit.verify(config.config.audit.path).ok


def test_every_batch_has_a_durable_intent_before_its_result(pbx: Path) -> None:
    config = load_config(pbx)
    run_all(config)
    log = entries(config)
    kinds = [e.type for e in log]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    intents = {}
    for position, entry in enumerate(log):
        if entry.type == "batch_intent":
            intents[(entry.fields["run_id"], entry.fields["store"], entry.fields["batch"])] = (
                position
            )
        if entry.type == "batch_done":
            key = (entry.fields["run_id"], entry.fields["store"], entry.fields["batch"])
            assert intents[key] == position - 1
    batches = [e for e in log if e.type == "batch_done" and e.fields["store"] == "cdrdb/cdr"]
    assert len(batches) > 1
    assert all(0 < b.fields["deleted"] <= 500 for b in batches)  # the configured batch_size
    finished = [e for e in log if e.type == "run_finished"]
    assert sum(f.fields["deleted"] for f in finished) == sum(
        e.fields["deleted"] for e in log if e.type == "batch_done"
    )


def test_the_log_names_no_number_name_or_file(pbx: Path) -> None:
    config = load_config(pbx)
    database = pbx.parent / "pbx" / "master.db"
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT src, dst, clid, uniqueid, recordingfile FROM cdr").fetchall()
    db.close()
    personal = {v for row in rows for v in row if v}
    personal |= {p.name for p in recordings(pbx)}
    run_all(config)
    text = config.config.audit.path.read_text()
    assert len(personal) > 1000  # the check has something to find
    assert not leaked(personal, jsonl=[text])
    assert "+49" not in text


def test_refusal_deletes_nothing_and_is_audited(pbx: Path) -> None:
    config = loaded(pbx, **{"max_delete_fraction: 0.95": "max_delete_fraction: 0.2"})
    before, files_before = cdr_dates(pbx), recordings(pbx)
    outcomes = run_all(config)
    assert [o.status for o in outcomes] == ["refused"] * 3
    assert exit_code(outcomes) == 3
    assert "safety.max_delete_fraction" in (outcomes[0].message or "")
    assert cdr_dates(pbx) == before and recordings(pbx) == files_before
    assert [e.type for e in entries(config)] == ["run_refused"] * 3


def test_plan_changes_nothing_anywhere(pbx: Path) -> None:
    config = load_config(pbx)
    before, files_before = cdr_dates(pbx), recordings(pbx)
    engine = Engine(config, now=lambda: NOW)
    for rule in config.config.rules:
        with engine.open_stores(rule) as stores:
            plan = engine.plan(rule, stores)
            assert plan.expired > 0 and plan.refusal is None
    assert cdr_dates(pbx) == before and recordings(pbx) == files_before
    assert not config.config.audit.path.exists()


@pytest.fixture
def full_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs, filled to the last block. Needs CAP_SYS_ADMIN."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        with (mount / "filler").open("wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 4096)
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def test_unwritable_log_means_nothing_is_deleted(pbx: Path, full_filesystem: Path) -> None:
    config = load_config(pbx)
    before, files_before = cdr_dates(pbx), recordings(pbx)
    engine = Engine(config, now=lambda: NOW)
    with audit.AuditLog(full_filesystem / "audit.jsonl") as log:  # every write: ENOSPC
        outcomes = [engine.run(rule, log) for rule in config.config.rules]
    assert all(o.status == "failed" for o in outcomes)
    assert "audit" in (outcomes[0].message or "")
    assert cdr_dates(pbx) == before and recordings(pbx) == files_before


def test_stop_request_finishes_the_batch_and_the_next_run_completes(pbx: Path) -> None:
    config = load_config(pbx)
    stop = threading.Event()

    def stop_after_first_batch(label: str, done: int, expected: int) -> None:
        stop.set()

    engine = Engine(config, now=lambda: NOW, stop=stop, progress=stop_after_first_batch)
    with audit.AuditLog(config.config.audit.path, clock=lambda: NOW) as log:
        first = engine.run(config.config.rules[0], log)
    assert first.status == "interrupted"
    assert first.stores[0].batches == 1 and first.deleted == 500
    outcomes = run_all(config)
    assert outcomes[0].status == "done"
    log = entries(config)
    statuses = [e.fields["status"] for e in log if e.type == "run_finished"]
    assert statuses[:2] == ["interrupted", "done"]
    assert audit.verify(config.config.audit.path).ok


def test_missing_table_fails_the_run_cleanly_and_is_audited(pbx: Path) -> None:
    config = loaded(pbx, **{"table: cdr": "table: cdr_archive"})
    outcomes = run_all(config)
    assert outcomes[0].status == "failed"
    assert "cdr_archive" in (outcomes[0].message or "")
    assert [o.status for o in outcomes[1:]] == ["done", "done"]  # other rules go on
    (finished, *_) = [e for e in entries(config) if e.type == "run_finished"]
    assert finished.fields["status"] == "failed"
    assert "cdr_archive" in finished.fields["stores"][0]["failed"]


def test_a_failing_store_does_not_stop_the_rules_other_stores(pbx: Path) -> None:
    """A recordings folder gone: that store fails, the rule's call records are still deleted,
    the run ends failed (exit 1) and the log and the report name the failing store."""
    from retentiond.evidence.report import build
    from retentiond.evidence.report.values import Period

    text = pbx.read_text()
    monitor = pbx.parent / "pbx" / "monitor"
    anchor = next(line for line in text.splitlines(keepends=True) if "subject_columns" in line)
    text = text.replace(anchor, f"{anchor}      - type: files\n        root: {monitor}-gone\n", 1)
    pbx.write_text(text)
    config = load_config(pbx)
    before = cdr_dates(pbx)
    outcome = run_all(config)[0]
    assert outcome.status == "failed" and exit_code([outcome]) == 1
    assert "monitor-gone failed" in (outcome.message or "")
    assert outcome.stores[0].deleted > 0 and len(cdr_dates(pbx)) < len(before)
    assert outcome.stores[0].remaining == 0
    finished = next(e for e in entries(config) if e.type == "run_finished")
    assert finished.fields["status"] == "failed"
    assert "failed" in finished.fields["stores"][1] and "failed" not in finished.fields["stores"][0]
    assert audit.verify(config.config.audit.path).ok
    zone = config.config.zone()
    today = NOW.astimezone(zone).date()  # the day the log's entries carry
    period = Period(today - timedelta(days=1), today + timedelta(days=1), zone)
    report = build.build_report(config, [config.config.audit.path], period, generated_at=NOW)
    (incident,) = [i for i in report.incidents if i.rule == "call-records"]
    assert "store failed" in incident.reason and "monitor-gone" in incident.reason


def test_one_fsync_per_batch_and_every_result_reaches_the_log(
    pbx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's result is written without its own fsync: the next intent's fsync (or the run's
    end) makes it durable. Counted on the real log file."""
    import os

    config = loaded(pbx, **{"batch_size: 500": "batch_size: 50"})
    real_fsync = os.fsync
    synced: list[int] = []

    def counting(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting)
    engine = Engine(config, now=lambda: NOW)
    with audit.AuditLog(config.config.audit.path, clock=lambda: NOW) as log:
        outcome = engine.run(config.config.rule("call-records"), log)
    monkeypatch.undo()
    batches = outcome.stores[0].batches
    assert outcome.status == "done" and batches > 10
    # an intent per batch, the run's start and end; nothing else needs its own sync
    assert len(synced) <= batches + 4
    done = [e for e in entries(config) if e.type == "batch_done"]
    assert len(done) == batches and audit.verify(config.config.audit.path).ok
