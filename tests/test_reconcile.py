"""Reconciling interrupted runs (safety rule 8): a run killed between a batch's intent and its
result is accounted for by the next run, in one `run_reconciled` entry, exactly once.

The interrupted runs here are real: the engine runs on the demo PBX until a store's `apply`
is cut off the way a SIGKILL cuts it off (nothing after it runs, the log keeps what was
synced). tests/test_crash.py does the same with real kills of the process.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from retentiond import demo
from retentiond.config.loader import LoadedConfig, load_config
from retentiond.engine.engine import Engine
from retentiond.engine.outcome import RunOutcome
from retentiond.engine.status import run_histories
from retentiond.evidence import log as audit
from retentiond.evidence.history import read_history
from retentiond.evidence.report.build import build_report
from retentiond.evidence.report.values import Period
from retentiond.stores.base import Batch, BatchResult
from retentiond.stores.sql.store import SqlStore

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
CDR = "cdrdb/cdr"


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the engine handles it, so nothing after it is written."""


@pytest.fixture
def pbx(tmp_path: Path) -> Path:
    config = demo.build(tmp_path / "pbx", now=NOW, days=200)
    text = config.read_text()
    config.write_text(text.replace("batch_size: 500", "batch_size: 100"))
    return config


def engine(config: LoadedConfig) -> Engine:
    return Engine(config, now=lambda: NOW)


def run_rule(config: LoadedConfig, name: str = "call-records") -> RunOutcome:
    with audit.AuditLog(config.config.audit.path, clock=lambda: NOW) as log:
        return engine(config).run(config.config.rule(name), log)


def entries(config: LoadedConfig, kind: str | None = None) -> list[audit.Entry]:
    found = audit.read_entries(config.config.audit.path)
    return [e for e in found if kind is None or e.type == kind]


def cdr_rows(pbx: Path) -> int:
    with sqlite3.connect(pbx.parent / "pbx" / "master.db") as db:
        (count,) = db.execute("SELECT COUNT(*) FROM cdr").fetchone()
    db.close()
    return int(count)


@pytest.fixture
def killed_in_batch(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Make the cdr store's `apply` of batch `at` die: after the batch (`after=True`: its rows
    are committed, its result is not logged) or before it (nothing deleted)."""
    plan: dict[str, Any] = {"at": 3, "after": True}
    real = SqlStore.apply

    def apply(store: SqlStore, batch: Batch, cutoff: datetime) -> BatchResult:
        if batch.number != plan["at"]:
            return real(store, batch, cutoff)
        if plan["after"]:
            real(store, batch, cutoff)
        raise Killed

    monkeypatch.setattr(SqlStore, "apply", apply)
    yield plan
    monkeypatch.setattr(SqlStore, "apply", real)


def interrupt(config: LoadedConfig) -> str:
    """Run call-records until the kill; return the interrupted run's id."""
    with pytest.raises(Killed):
        run_rule(config)
    (started,) = [e for e in entries(config, "run_started")][-1:]
    return str(started.fields["run_id"])


def test_a_batch_cut_off_after_its_intent_is_reconciled_by_the_next_run(
    pbx: Path, killed_in_batch: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(pbx)
    before = cdr_rows(pbx)
    interrupted = interrupt(config)
    assert audit.verify(config.config.audit.path).ok
    assert not entries(config, "run_reconciled")  # nothing reconciles until a run starts
    killed_in_batch["at"] = None

    outcome = run_rule(config)

    assert outcome.status == "done"
    (reconciled,) = entries(config, "run_reconciled")
    fields = reconciled.fields
    assert fields["run_id"] == interrupted
    assert fields["reconciled_by"] == outcome.run_id
    assert fields["reconciled"] is True
    assert fields["rule"] == "call-records"
    assert fields["end"] == "none"
    assert fields["batches_done"] == 2
    assert fields["deleted"] == 200  # two confirmed batches of 100
    assert fields["open_batches"] == [{"store": CDR, "batch": 3, "planned": 100, "stage": "delete"}]
    assert fields["unconfirmed_deleted_max"] == 100
    # Written before the reconciling run begins, whose survey counts what was left.
    kinds = [(e.type, e.fields.get("run_id")) for e in entries(config)]
    assert kinds.index(("run_reconciled", interrupted)) < kinds.index(
        ("run_started", outcome.run_id)
    )
    # The log accounts for every row: the confirmed batches, the cut-off one (which did
    # delete its 100 rows), and the reconciling run.
    deleted = before - cdr_rows(pbx)
    confirmed = sum(e.fields["deleted"] for e in entries(config, "batch_done"))
    assert confirmed < deleted <= confirmed + fields["unconfirmed_deleted_max"]
    assert deleted == confirmed + 100
    assert audit.verify(config.config.audit.path).ok


def test_a_batch_cut_off_before_it_deleted_anything_is_still_at_most_its_plan(
    pbx: Path, killed_in_batch: dict[str, Any]
) -> None:
    config = load_config(pbx)
    before = cdr_rows(pbx)
    killed_in_batch["after"] = False
    interrupt(config)
    killed_in_batch["at"] = None

    run_rule(config)

    (reconciled,) = entries(config, "run_reconciled")
    assert reconciled.fields["unconfirmed_deleted_max"] == 100  # unconfirmed: 0 to 100
    confirmed = sum(e.fields["deleted"] for e in entries(config, "batch_done"))
    assert before - cdr_rows(pbx) == confirmed  # this time the batch deleted nothing


def test_an_interrupted_run_is_reconciled_exactly_once(
    pbx: Path, killed_in_batch: dict[str, Any]
) -> None:
    config = load_config(pbx)
    interrupted = interrupt(config)
    killed_in_batch["at"] = None

    run_rule(config)
    run_rule(config)
    run_rule(config, "call-recordings")

    reconciled = entries(config, "run_reconciled")
    assert [e.fields["run_id"] for e in reconciled] == [interrupted]
    assert read_history(config.config.audit.path).interrupted == []


def test_a_clean_log_needs_no_reconciliation(pbx: Path) -> None:
    config = load_config(pbx)
    for rule in config.config.rules:
        assert run_rule(config, rule.name).status == "done"
    assert run_rule(config).status == "done"
    assert entries(config, "run_reconciled") == []
    assert read_history(config.config.audit.path).interrupted == []


def test_a_run_killed_before_its_first_batch_is_reconciled_with_nothing_open(
    pbx: Path,
) -> None:
    config = load_config(pbx)
    with audit.AuditLog(config.config.audit.path, clock=lambda: NOW) as log:
        log.append("run_started", run_id="a" * 16, rule="voicemail", stores=[])

    run_rule(config)  # a run of another rule reconciles it: runs never overlap

    (reconciled,) = entries(config, "run_reconciled")
    assert reconciled.fields["run_id"] == "a" * 16
    assert reconciled.fields["rule"] == "voicemail"
    assert reconciled.fields["open_batches"] == []
    assert (reconciled.fields["batches_done"], reconciled.fields["deleted"]) == (0, 0)
    assert reconciled.fields["unconfirmed_deleted_max"] == 0


def test_a_failed_run_with_a_batch_without_result_is_reconciled(pbx: Path) -> None:
    config = load_config(pbx)
    with audit.AuditLog(config.config.audit.path, clock=lambda: NOW) as log:
        log.append("run_started", run_id="b" * 16, rule="call-records", stores=[])
        log.append("batch_intent", run_id="b" * 16, store=CDR, batch=1, planned=40)
        log.append("batch_done", run_id="b" * 16, store=CDR, batch=1, deleted=40)
        log.append("batch_intent", run_id="b" * 16, store=CDR, batch=2, planned=40)
        log.append("run_failed", run_id="b" * 16, rule="call-records", reason="x", deleted=40)
        # a run that ended with every batch accounted for needs nothing
        log.append("run_started", run_id="c" * 16, rule="call-records", stores=[])
        log.append("batch_intent", run_id="c" * 16, store=CDR, batch=1, planned=7)
        log.append("batch_done", run_id="c" * 16, store=CDR, batch=1, deleted=7)
        log.append("run_failed", run_id="c" * 16, rule="call-records", reason="x", deleted=7)

    run_rule(config)

    (reconciled,) = entries(config, "run_reconciled")
    assert reconciled.fields["run_id"] == "b" * 16
    assert reconciled.fields["end"] == "run_failed"
    assert (reconciled.fields["batches_done"], reconciled.fields["deleted"]) == (1, 40)
    assert reconciled.fields["open_batches"] == [
        {"store": CDR, "batch": 2, "planned": 40, "stage": "delete"}
    ]
    assert reconciled.fields["unconfirmed_deleted_max"] == 40


def test_open_batches_of_both_stages_and_of_an_erasure_are_told_apart(pbx: Path) -> None:
    config = load_config(pbx)
    run = "d" * 16
    with audit.AuditLog(config.config.audit.path, clock=lambda: NOW) as log:
        log.append("run_started", run_id=run, rule="call-records", action="anonymize")
        # the same store and batch number in both stages: the delete one got its result
        log.append("batch_intent", run_id=run, store=CDR, batch=1, planned=5)
        log.append("batch_done", run_id=run, store=CDR, batch=1, deleted=5)
        log.append("batch_intent", run_id=run, store=CDR, batch=1, stage="anonymize", planned=9)
        log.append("erasure_started", run_id="e" * 16, ticket="DSR-2026-17", stores=[])
        log.append("batch_intent", run_id="e" * 16, stage="erase", store=CDR, batch=1, planned=3)

    run_rule(config)

    found = {e.fields["run_id"]: e.fields for e in entries(config, "run_reconciled")}
    assert found[run]["open_batches"] == [
        {"store": CDR, "batch": 1, "planned": 9, "stage": "anonymize"}
    ]
    assert found[run]["unconfirmed_deleted_max"] == 0
    assert found[run]["unconfirmed_anonymized_max"] == 9
    erasure = found["e" * 16]
    assert (erasure["erasure"], erasure["ticket"]) == (True, "DSR-2026-17")
    assert "rule" not in erasure
    assert erasure["unconfirmed_deleted_max"] == 3


def test_status_and_report_read_a_log_with_reconciled_runs(
    pbx: Path, killed_in_batch: dict[str, Any]
) -> None:
    config = load_config(pbx)
    interrupt(config)
    killed_in_batch["at"] = None
    outcome = run_rule(config)

    runs, problem = run_histories(config.config.audit.path)
    assert problem is None
    last = runs["call-records"].last_run
    assert last is not None and (last.run_id, last.status) == (outcome.run_id, "done")
    today = NOW.astimezone(config.config.zone()).date()  # the day the log's entries carry
    period = Period(today - timedelta(days=1), today + timedelta(days=1), config.config.zone())
    report = build_report(config, [config.config.audit.path], period, generated_at=NOW)
    assert all(log.intact for log in report.logs)
    confirmed = sum(e.fields["deleted"] for e in entries(config, "batch_done"))
    assert sum(t.deleted for t in report.totals) == confirmed
