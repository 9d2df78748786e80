"""Prometheus metrics from run outcomes: scraped over real HTTP, written as a textfile, seeded
from a real audit log."""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from dateutil.relativedelta import relativedelta
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from retentiond import __version__
from retentiond.config.loader import parse_config
from retentiond.config.model import Rule
from retentiond.engine.outcome import RunOutcome, StoreOutcome
from retentiond.evidence.log import AuditLog
from retentiond.policy.durations import Duration
from retentiond.service.metrics import Metrics, MetricsError

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def make_rules(*names: str) -> list[Rule]:
    text = "version: 1\nrules:\n"
    for name in names:
        text += (
            f"  - name: {name}\n    keep: 30d\n    stores:\n"
            f"      - type: files\n        root: /srv/pbx/{name}\n"
        )
    return parse_config(text).rules


def outcome(
    rule: str, status: str, *stores: StoreOutcome, seconds: float = 1.0, run_id: str = "r1"
) -> RunOutcome:
    return RunOutcome(rule, run_id, None, status, stores=list(stores), seconds=seconds)


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def scrape(metrics: Metrics) -> str:
    assert metrics.address is not None
    host, port = metrics.address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return str(response.read().decode())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    served = Metrics()
    served.serve("127.0.0.1:0")
    yield served
    served.close()


def test_outcomes_are_counted_and_served_over_http(metrics: Metrics) -> None:
    calls, voicemail, spool = make_rules("call-records", "voicemail", "recordings")
    before = time.time()
    metrics.run_started(calls)
    assert value(samples(scrape(metrics)), "retentiond_running", rule="call-records") == 1
    metrics.run_finished(
        calls,
        outcome(
            "call-records",
            "done",
            StoreOutcome("cdrdb/cdr", "rows", deleted=120, remaining=0),
            StoreOutcome("cdrdb/cel", "rows", deleted=900, remaining=0),
            StoreOutcome("/var/spool/asterisk/monitor", "files", 30, bytes=4096, remaining=0),
            seconds=2.5,
        ),
    )
    metrics.run_started(calls)
    metrics.run_finished(
        calls,
        outcome("call-records", "done", StoreOutcome("cdrdb/cdr", "rows", 5, remaining=0)),
    )
    after = time.time()
    for status in ("incomplete", "failed", "refused"):
        metrics.run_started(voicemail)
        stores = {
            "incomplete": [StoreOutcome("vm", "messages", 3, 512, remaining=7)],
            "failed": [StoreOutcome("vm", "messages", 3, 512)],  # stopped before verifying
            "refused": [],
        }[status]
        metrics.run_finished(voicemail, outcome("voicemail", status, *stores, seconds=0.25))
    metrics.run_started(spool)
    metrics.run_finished(spool, outcome("recordings", "interrupted", seconds=9))

    text = scrape(metrics)
    found = samples(text)

    assert value(found, "retentiond_deleted_total", rule="call-records", unit="rows") == 1025
    assert value(found, "retentiond_deleted_total", rule="call-records", unit="files") == 30
    assert value(found, "retentiond_deleted_bytes_total", rule="call-records") == 4096
    assert value(found, "retentiond_deleted_total", rule="voicemail", unit="messages") == 6
    assert value(found, "retentiond_deleted_bytes_total", rule="voicemail") == 1024
    assert value(found, "retentiond_runs_total", rule="call-records", status="done") == 2
    assert value(found, "retentiond_runs_total", rule="voicemail", status="incomplete") == 1
    assert value(found, "retentiond_runs_total", rule="voicemail", status="failed") == 1
    assert value(found, "retentiond_runs_total", rule="voicemail", status="refused") == 1
    assert value(found, "retentiond_runs_total", rule="recordings", status="interrupted") == 1
    assert value(found, "retentiond_errors_total", rule="voicemail", kind="incomplete") == 1
    assert value(found, "retentiond_errors_total", rule="voicemail", kind="failed") == 1
    assert value(found, "retentiond_errors_total", rule="voicemail", kind="refused") == 1
    # an interrupted run (shutdown) is not an error; a done run is neither
    assert value(found, "retentiond_errors_total", rule="recordings", kind="interrupted") is None
    assert not any(
        n == "retentiond_errors_total" and ("rule", "call-records") in k for n, k in found
    )

    success = value(found, "retentiond_last_success_timestamp_seconds", rule="call-records")
    assert success is not None and before <= success <= after
    assert value(found, "retentiond_last_success_timestamp_seconds", rule="voicemail") is None
    assert value(found, "retentiond_last_success_timestamp_seconds", rule="recordings") is None
    last_run = value(found, "retentiond_last_run_timestamp_seconds", rule="recordings")
    assert last_run is not None and last_run >= success
    assert value(found, "retentiond_run_duration_seconds", rule="call-records") == 1.0
    assert value(found, "retentiond_run_duration_seconds", rule="recordings") == 9
    assert value(found, "retentiond_expired_remaining", rule="call-records") == 0
    # the last verified voicemail run left 7; the failed and refused runs after it verified nothing
    assert value(found, "retentiond_expired_remaining", rule="voicemail") == 7
    assert value(found, "retentiond_expired_remaining", rule="recordings") is None
    for rule in ("call-records", "voicemail", "recordings"):
        assert value(found, "retentiond_running", rule=rule) == 0
    assert value(found, "retentiond_build_info", version=__version__) == 1
    # store labels (tables, folders) never reach the metrics: rule names and units only
    assert {key for _, labels in found for key, _ in labels} == {
        "rule",
        "unit",
        "status",
        "kind",
        "version",
    }
    assert "cdrdb" not in text and "/var/spool" not in text and '"vm"' not in text


def test_rules_given_up_front_are_exposed_before_their_first_run() -> None:
    metrics = Metrics(make_rules("call-records"))
    metrics.serve("127.0.0.1:0")
    try:
        found = samples(scrape(metrics))
    finally:
        metrics.close()
    assert value(found, "retentiond_runs_total", rule="call-records", status="done") == 0
    assert value(found, "retentiond_errors_total", rule="call-records", kind="failed") == 0
    assert value(found, "retentiond_running", rule="call-records") == 0
    # no fake timestamp: "never succeeded" stays absent, for absent() alerts
    assert value(found, "retentiond_last_success_timestamp_seconds", rule="call-records") is None


def test_serve_binds_the_given_loopback_port_only() -> None:
    port = free_port()
    metrics = Metrics()
    with capture_logs() as logs:
        metrics.serve(f"127.0.0.1:{port}")
    try:
        assert metrics.address == ("127.0.0.1", port)
        assert "retentiond_build_info" in scrape(metrics)
        assert not [e for e in logs if e["log_level"] == "warning"]
    finally:
        metrics.close()
    assert metrics.address is None
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # closed: nothing listens any more


def test_localhost_is_loopback_and_other_hosts_are_served_with_a_warning() -> None:
    metrics = Metrics()
    with capture_logs() as logs:
        metrics.serve("localhost:0")
        metrics.close()
    assert not [e for e in logs if e["log_level"] == "warning"]
    with capture_logs() as logs:
        metrics.serve("0.0.0.0:0")  # the admin wrote it: served, but said out loud
        try:
            assert metrics.address is not None and metrics.address[0] == "0.0.0.0"  # noqa: S104
        finally:
            metrics.close()
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["listen"] == "0.0.0.0:0"


def test_an_unusable_address_is_a_clear_error() -> None:
    metrics = Metrics()
    with pytest.raises(MetricsError, match="not host:port"):
        metrics.serve("9464")
    with pytest.raises(MetricsError, match="not host:port"):
        metrics.serve("127.0.0.1:99999")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsError, match=r"monitoring\.metrics_listen"):
            metrics.serve(f"127.0.0.1:{port}")
    assert metrics.address is None


def test_textfile_is_replaced_atomically_and_parses(tmp_path: Path) -> None:
    (calls,) = make_rules("call-records")
    metrics = Metrics()
    path = tmp_path / "retentiond.prom"
    metrics.run_started(calls)
    metrics.run_finished(
        calls, outcome("call-records", "done", StoreOutcome("db/cdr", "rows", 10, remaining=0))
    )
    metrics.write_textfile(path)
    first = samples(path.read_text())
    assert value(first, "retentiond_deleted_total", rule="call-records", unit="rows") == 10
    assert value(first, "retentiond_runs_total", rule="call-records", status="done") == 1
    assert value(first, "retentiond_last_success_timestamp_seconds", rule="call-records")

    with path.open() as old:  # a reader of the old file never sees a half-written new one
        inode = os.fstat(old.fileno()).st_ino
        metrics.run_finished(
            calls, outcome("call-records", "done", StoreOutcome("db/cdr", "rows", 5, remaining=0))
        )
        metrics.write_textfile(path)
        assert samples(old.read()) == first
    assert path.stat().st_ino != inode  # renamed into place, not rewritten in place
    second = samples(path.read_text())
    assert value(second, "retentiond_deleted_total", rule="call-records", unit="rows") == 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["retentiond.prom"]  # no temp left


def test_an_unwritable_textfile_is_a_warning_not_an_error(tmp_path: Path) -> None:
    metrics = Metrics()
    missing = tmp_path / "no-such-folder" / "retentiond.prom"
    with capture_logs() as logs:
        metrics.write_textfile(missing)
        metrics.write_textfile(tmp_path)  # a folder where the file should be
    warnings = [e for e in logs if e["event"] == "metrics textfile not written"]
    assert len(warnings) == 2
    assert warnings[0]["path"] == str(missing) and "No such file" in warnings[0]["reason"]
    assert not missing.parent.exists()
    assert list(tmp_path.iterdir()) == []  # the temp file is cleaned up


def test_observer_methods_never_raise() -> None:
    (calls,) = make_rules("call-records")
    metrics = Metrics()
    broken = outcome("call-records", "done")
    broken.stores = None  # type: ignore[assignment]
    with capture_logs() as logs:
        metrics.run_finished(calls, broken)
        metrics.run_started(None)  # type: ignore[arg-type]
    assert [e["event"] for e in logs] == ["metrics update failed", "metrics update failed"]


def _ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_seeded_from_the_audit_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.append("run_started", run_id="a1", rule="call-records", stores=[])
        done_a1 = log.append("run_finished", run_id="a1", rule="call-records", status="done")
        log.append("run_started", run_id="v1", rule="voicemail", stores=[])
        done_v1 = log.append("run_finished", run_id="v1", rule="voicemail", status="done")
        log.append("run_started", run_id="v2", rule="voicemail", stores=[])
        log.append("batch_intent", run_id="v2", store="vm", batch=1, planned=3)
        failed_v2 = log.append("run_failed", run_id="v2", rule="voicemail", reason="x")
        refused = log.append("run_refused", run_id="r1", rule="recordings", reason="fraction")
        log.append("run_started", run_id="a2", rule="call-records", stores=[])
        # an entry without its rule is matched to its run_started by run_id
        done_a2 = log.append("run_finished", run_id="a2", status="done", deleted=4)
        log.append("run_started", run_id="a3", rule="call-records", stores=[])
        log.append("run_finished", run_id="a3", rule="call-records", status="incomplete")

    metrics = Metrics()
    assert metrics.seed_from_audit(path) == 3
    metrics.serve("127.0.0.1:0")
    try:
        found = samples(scrape(metrics))
        (calls,) = make_rules("call-records")
        metrics.run_finished(calls, outcome("call-records", "done"))
        later = samples(scrape(metrics))
        assert metrics.seed_from_audit(path) == 3  # seeding again keeps the newer values
        again = samples(scrape(metrics))
    finally:
        metrics.close()

    success = "retentiond_last_success_timestamp_seconds"
    last = "retentiond_last_run_timestamp_seconds"
    assert value(found, success, rule="call-records") == pytest.approx(_ts(done_a2.ts))
    assert value(found, success, rule="voicemail") == pytest.approx(_ts(done_v1.ts))
    assert value(found, success, rule="recordings") is None
    assert value(found, last, rule="voicemail") == pytest.approx(_ts(failed_v2.ts))
    assert value(found, last, rule="recordings") == pytest.approx(_ts(refused.ts))
    assert _ts(done_a1.ts) <= value(found, success, rule="call-records")  # type: ignore[operator]
    # seeding sets times only: no counters are invented from history
    assert value(found, "retentiond_runs_total", rule="call-records", status="done") is None
    newer = value(later, success, rule="call-records")
    assert newer is not None and newer > _ts(done_a2.ts)
    assert value(again, success, rule="call-records") == newer


def test_seeding_from_a_missing_or_broken_log(tmp_path: Path) -> None:
    metrics = Metrics()
    assert metrics.seed_from_audit(tmp_path / "none.jsonl") == 0
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        log.append("run_started", run_id="a1", rule="call-records", stores=[])
        log.append("run_finished", run_id="a1", rule="call-records", status="done")
        log.append("run_started", run_id="v1", rule="voicemail", stores=[])
        log.append("run_finished", run_id="v1", rule="voicemail", status="done")
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"v1"', '"v9"')  # tampered: the chain breaks at line 3
    path.write_text("".join(lines))
    with capture_logs() as logs:
        assert metrics.seed_from_audit(path) == 1  # what came before the break is used
    assert [e["event"] for e in logs] == ["metrics seeded from part of the audit log"]
    assert "line 3" in logs[0]["reason"]


def scheduled_rules(grace: str = "", **schedules: str) -> tuple[list[Rule], Duration]:
    """Rules named by the keywords with those schedules ('' for none), and the config's grace."""
    text = "version: 1\n"
    if grace:
        text += f"safety:\n  deadline_grace: {grace}\n"
    text += "rules:\n"
    for name, schedule in schedules.items():
        text += f"  - name: {name}\n    keep: 30d\n"
        if schedule:
            text += f"    schedule: {schedule}\n"
        text += f"    stores:\n      - type: files\n        root: /srv/pbx/{name}\n"
    config = parse_config(text)
    return config.rules, config.safety.deadline_grace


def test_due_times_and_the_last_status_follow_the_log_and_the_runs(tmp_path: Path) -> None:
    """What the alert rules compare time() with: the schedule's interval, when the next run and
    the next success are due (calendar grace), and the last run's status, seeded from the log."""
    rules, grace = scheduled_rules(
        "1 month", calls="daily 03:15", vm="15 3 * * mon-fri", spool="", new="weekly sun 04:00"
    )
    path = tmp_path / "audit.jsonl"
    with AuditLog(path) as log:
        opened = log.append("hold_added", hold_id="h1")  # the log's first entry
        log.append("run_started", run_id="c1", rule="calls", stores=[])
        done = log.append("run_finished", run_id="c1", rule="calls", status="done")
        log.append("run_started", run_id="c2", rule="calls", stores=[])
        failed = log.append("run_failed", run_id="c2", rule="calls", reason="x")
        refused = log.append("run_refused", run_id="v1", rule="vm", reason="fraction")
        log.append("run_started", run_id="s1", rule="spool", stores=[])
        partly = log.append("run_finished", run_id="s1", rule="spool", status="incomplete")

    metrics = Metrics(rules, grace)
    metrics.seed_from_audit(path)
    found = samples(generate_latest(metrics.registry).decode())

    day = 86400.0
    interval = "retentiond_schedule_interval_seconds"
    assert value(found, interval, rule="calls") == day
    assert value(found, interval, rule="vm") == 3 * day  # Friday to Monday
    assert value(found, interval, rule="spool") == day  # no schedule: a day, assumed
    assert value(found, interval, rule="new") == 7 * day

    status = "retentiond_last_run_status"
    assert value(found, status, rule="calls", status="failed") == 1  # the newest end counts
    assert value(found, status, rule="calls", status="done") == 0
    assert value(found, status, rule="vm", status="refused") == 1
    assert value(found, status, rule="spool", status="incomplete") == 1
    assert value(found, status, rule="new", status="done") is None  # no run: no status

    run_due = "retentiond_run_due_timestamp_seconds"
    success_due = "retentiond_success_due_timestamp_seconds"
    assert value(found, run_due, rule="calls") == pytest.approx(_ts(failed.ts) + day)
    assert value(found, run_due, rule="vm") == pytest.approx(_ts(refused.ts) + 3 * day)
    # success: the last done run plus a day plus one calendar month
    moment = datetime.fromisoformat(done.ts) + timedelta(days=1)
    assert value(found, success_due, rule="calls") == pytest.approx(
        (moment + relativedelta(months=1)).timestamp()
    )
    # never succeeded: counted from the log's first entry, not from the metrics' creation
    start = datetime.fromisoformat(opened.ts)
    expected = (start + timedelta(days=3) + relativedelta(months=1)).timestamp()
    assert value(found, success_due, rule="vm") == pytest.approx(expected)
    assert value(found, run_due, rule="new") == pytest.approx(_ts(opened.ts) + 7 * day)
    assert value(found, run_due, rule="spool") == pytest.approx(_ts(partly.ts) + day)

    # a run of this process moves them on
    (calls, *_) = rules
    before = time.time()
    metrics.run_finished(calls, outcome("calls", "done"))
    after = samples(generate_latest(metrics.registry).decode())
    assert value(after, status, rule="calls", status="done") == 1
    assert value(after, status, rule="calls", status="failed") == 0
    assert before + day <= value(after, run_due, rule="calls") <= time.time() + day  # type: ignore[operator]
    assert value(after, success_due, rule="calls") >= before + day + 28 * day  # type: ignore[operator]


def test_due_times_without_a_log_count_from_the_start() -> None:
    rules, grace = scheduled_rules(calls="daily 03:15")
    before = time.time()
    metrics = Metrics(rules, grace)
    found = samples(generate_latest(metrics.registry).decode())
    due = value(found, "retentiond_success_due_timestamp_seconds", rule="calls")
    assert due is not None and before + 2 * 86400 <= due <= time.time() + 2 * 86400
    assert value(found, "retentiond_last_run_timestamp_seconds", rule="calls") is None
