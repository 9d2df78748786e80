"""Pings to a real HTTP server on 127.0.0.1, sent in the background; and an end-to-end run of the
demo PBX with metrics and pings as observers."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from retentiond import __version__, demo
from retentiond.config.loader import load_config, parse_config
from retentiond.config.model import Rule
from retentiond.engine.engine import Engine
from retentiond.engine.outcome import RunOutcome, StoreOutcome
from retentiond.evidence import log as audit
from retentiond.service.metrics import Metrics
from retentiond.service.pings import Pings

TOKEN = "0f3c9e2a-secret-token"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    agent: str
    body: str
    authorization: str | None = None


class Monitor:
    """A tiny uptime monitor: records every request. Paths under /slow/ answer after `delay`
    seconds; paths under /hold/ wait until `gate` is set; /status/500 answers with 500."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.arrived: list[str] = []
        self.changed = threading.Condition()
        self.gate = threading.Event()
        self.released = threading.Event()  # set at teardown: every handler ends at once
        self.delay = 2.0
        monitor = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                with monitor.changed:
                    monitor.arrived.append(self.path)
                    monitor.changed.notify_all()
                if self.path.startswith("/slow/"):
                    monitor.released.wait(monitor.delay)
                if self.path.startswith("/hold/"):
                    monitor.gate.wait(30)
                code = 500 if self.path.startswith("/status/500") else 200
                with monitor.changed:
                    monitor.requests.append(
                        Request(
                            self.command,
                            self.path,
                            self.headers["User-Agent"],
                            body,
                            self.headers["Authorization"],
                        )
                    )
                    monitor.changed.notify_all()
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that gave up (timeout) is expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, timeout), (self.arrived, self.requests)

    def close(self) -> None:
        self.released.set()
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def monitor() -> Iterator[Monitor]:
    running = Monitor()
    yield running
    running.close()


@pytest.fixture
def opened() -> Iterator[list[Pings]]:
    """Pings made by a test; each is closed after it, so no sender outlives its test."""
    made: list[Pings] = []
    yield made
    for pings in made:
        pings.close(0.1)


def make_rule(name: str, ping: str | None) -> Rule:
    text = (
        f"version: 1\nrules:\n  - name: {name}\n    keep: 30d\n    stores:\n"
        f"      - type: files\n        root: /srv/pbx/{name}\n"
    )
    if ping:
        text += f"    ping: {ping}\n"
    return parse_config(text).rules[0]


def outcome(rule: str, status: str, *stores: StoreOutcome) -> RunOutcome:
    return RunOutcome(rule, "r1", None, status, stores=list(stores), seconds=1.5)


def new_pings(opened: list[Pings], rules: list[Rule], timeout: float, **kw: int) -> Pings:
    pings = Pings(rules, timeout, **kw)
    opened.append(pings)
    return pings


def test_a_done_run_pings_start_then_success(monitor: Monitor, opened: list[Pings]) -> None:
    rule = make_rule("call-records", monitor.url(f"/ping/{TOKEN}"))
    pings = new_pings(opened, [rule], 5)
    pings.run_started(rule)
    stores = [
        StoreOutcome("cdrdb/cdr", "rows", 120, remaining=0),
        StoreOutcome("/var/spool/asterisk/monitor", "files", 30, 4096, remaining=0),
    ]
    pings.run_finished(rule, outcome("call-records", "done", *stores))
    monitor.wait(lambda: len(monitor.requests) == 2)
    start, success = monitor.requests
    assert (start.method, start.path, start.body) == ("GET", f"/ping/{TOKEN}/start", "")
    assert (success.method, success.path) == ("POST", f"/ping/{TOKEN}")
    assert success.body == f"retentiond {__version__}: rule call-records done, 150 deleted, " + (
        "0 expired left, 1.5 s\n"
    )
    assert start.agent == success.agent == f"retentiond/{__version__}"
    assert "cdrdb" not in success.body and "/var/spool" not in success.body
    assert pings.close(2) is True
    assert (pings.sent, pings.failed) == (2, 0)


@pytest.mark.parametrize("status", ["failed", "refused", "interrupted", "incomplete"])
def test_any_other_status_pings_failure(monitor: Monitor, opened: list[Pings], status: str) -> None:
    rule = make_rule("voicemail", monitor.url(f"/ping/{TOKEN}"))
    pings = new_pings(opened, [rule], 5)
    pings.run_started(rule)
    pings.run_finished(rule, outcome("voicemail", status))
    monitor.wait(lambda: len(monitor.requests) == 2)
    assert [(r.method, r.path) for r in monitor.requests] == [
        ("GET", f"/ping/{TOKEN}/start"),
        ("POST", f"/ping/{TOKEN}/fail"),
    ]
    assert monitor.requests[1].body.startswith(f"retentiond {__version__}: rule voicemail {status}")


def test_separate_urls_and_missing_ones(monitor: Monitor, opened: list[Pings]) -> None:
    text = (
        "version: 1\nrules:\n  - name: recordings\n    keep: 30d\n    stores:\n"
        "      - type: files\n        root: /srv/pbx/rec\n"
        f"    ping:\n      success: {monitor.url('/ok')}\n      failure: {monitor.url('/bad')}\n"
        "  - name: quiet\n    keep: 30d\n    stores:\n"
        "      - type: files\n        root: /srv/pbx/quiet\n"
    )
    recordings, quiet = parse_config(text).rules
    pings = new_pings(opened, [recordings, quiet], 5)
    for rule, status in [(recordings, "done"), (quiet, "done"), (recordings, "failed")]:
        pings.run_started(rule)  # no start URL: nothing sent
        pings.run_finished(rule, outcome(rule.name, status))
    assert pings.close(5) is True
    assert [(r.method, r.path) for r in monitor.requests] == [("POST", "/ok"), ("POST", "/bad")]


def test_no_pings_configured_means_no_thread() -> None:
    rule = make_rule("call-records", None)
    pings = Pings([rule], 5)
    pings.run_started(rule)
    pings.run_finished(rule, outcome("call-records", "done"))
    started = time.monotonic()
    assert pings.close(5) is True
    assert time.monotonic() - started < 0.05
    assert pings._thread is None


def test_a_slow_monitor_does_not_delay_the_run_and_is_logged(
    monitor: Monitor, opened: list[Pings]
) -> None:
    rule = make_rule("call-records", monitor.url(f"/slow/{TOKEN}"))
    pings = new_pings(opened, [rule], 0.3)
    with capture_logs() as logs:
        started = time.perf_counter()
        pings.run_started(rule)
        pings.run_finished(rule, outcome("call-records", "done"))
        took = time.perf_counter() - started
        assert took < 0.05  # queued, not sent: the monitor takes 2 s to answer
        deadline = time.monotonic() + 5
        while len([e for e in logs if e["event"] == "ping failed"]) < 2:
            assert time.monotonic() < deadline, logs
            time.sleep(0.02)
    failures = [e for e in logs if e["event"] == "ping failed"]
    assert [(e["ping"], e["reason"]) for e in failures] == [
        ("start", "timed out"),
        ("success", "timed out"),
    ]
    assert all(e["host"] == f"127.0.0.1:{monitor.port}" for e in failures)
    assert all(e["log_level"] == "warning" and e["rule"] == "call-records" for e in failures)
    assert TOKEN not in repr(logs)
    assert pings.failed == 2


def test_an_unreachable_monitor_is_a_warning_naming_the_host_only(opened: list[Pings]) -> None:
    closed = Monitor()  # take a free port, then stop listening on it
    port = closed.port
    closed.close()
    rule = make_rule("voicemail", f"https://127.0.0.1:{port}/ping/{TOKEN}")
    pings = new_pings(opened, [rule], 2)
    with capture_logs() as logs:
        pings.run_started(rule)
        assert pings.close(5) is True
    (failure,) = [e for e in logs if e["event"] == "ping failed"]
    assert failure["log_level"] == "warning"
    assert failure["host"] == f"127.0.0.1:{port}"
    assert "refused" in failure["reason"].lower()
    assert TOKEN not in repr(logs)


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_logged(
    monitor: Monitor, opened: list[Pings]
) -> None:
    url = monitor.url(f"/ping/{TOKEN}").replace("http://", "http://monitor:s%40cret@")
    rule = make_rule("voicemail", url)
    pings = new_pings(opened, [rule], 5)
    with capture_logs() as logs:
        pings.run_started(rule)
        assert pings.close(5) is True
    (request,) = monitor.requests
    assert request.path == f"/ping/{TOKEN}/start"
    assert request.authorization == "Basic bW9uaXRvcjpzQGNyZXQ="  # monitor:s@cret
    assert "cret" not in repr(logs) and TOKEN not in repr(logs)


def test_an_error_answer_is_a_warning_with_its_status(
    monitor: Monitor, opened: list[Pings]
) -> None:
    rule = make_rule("voicemail", monitor.url(f"/status/500/{TOKEN}"))
    pings = new_pings(opened, [rule], 5)
    with capture_logs() as logs:
        pings.run_started(rule)
        assert pings.close(5) is True
    (failure,) = [e for e in logs if e["event"] == "ping failed"]
    assert failure["reason"] == "HTTP 500" and TOKEN not in repr(logs)


def test_a_full_queue_drops_with_a_warning(monitor: Monitor, opened: list[Pings]) -> None:
    rule = make_rule("call-records", monitor.url(f"/hold/{TOKEN}"))
    pings = new_pings(opened, [rule], 10, queue_size=1)
    with capture_logs() as logs:
        pings.run_started(rule)  # taken by the sender, which waits for the monitor
        monitor.wait(lambda: len(monitor.arrived) == 1)
        pings.run_finished(rule, outcome("call-records", "done"))  # waits in the queue
        pings.run_started(rule)  # no room: dropped
        pings.run_finished(rule, outcome("call-records", "failed"))  # dropped too
        monitor.gate.set()
        assert pings.close(5) is True
    assert [r.path for r in monitor.requests] == [f"/hold/{TOKEN}/start", f"/hold/{TOKEN}"]
    dropped = [e for e in logs if e["event"] == "ping dropped: too many pings waiting"]
    assert [(e["ping"], e["log_level"]) for e in dropped] == [
        ("start", "warning"),
        ("failure", "warning"),
    ]
    assert dropped[0]["host"] == f"127.0.0.1:{monitor.port}" and TOKEN not in repr(logs)
    assert (pings.sent, pings.failed) == (2, 2)


def test_close_returns_within_its_bound(monitor: Monitor, opened: list[Pings]) -> None:
    rule = make_rule("call-records", monitor.url(f"/hold/{TOKEN}"))
    pings = new_pings(opened, [rule], 10)
    with capture_logs() as logs:
        pings.run_started(rule)
        monitor.wait(lambda: len(monitor.arrived) == 1)
        pings.run_finished(rule, outcome("call-records", "done"))
        started = time.monotonic()
        assert pings.close(0.3) is False
        took = time.monotonic() - started
        pings.run_started(rule)  # after close: dropped, not queued
    assert 0.25 <= took < 1.0
    events = [e["event"] for e in logs]
    assert events == ["pings not sent before shutdown", "ping dropped: shutting down"]
    assert logs[0]["waiting"] == 1
    monitor.gate.set()  # the request in flight ends; the sender then stops without sending more
    thread = pings._thread
    assert thread is not None
    thread.join(5)
    assert not thread.is_alive()
    assert [r.path for r in monitor.requests] == [f"/hold/{TOKEN}/start"]


def test_observer_methods_never_raise(opened: list[Pings]) -> None:
    pings = new_pings(opened, [], 1)
    with capture_logs() as logs:
        pings.run_finished(make_rule("x", "http://127.0.0.1:9/p"), None)  # type: ignore[arg-type]
        pings.run_started(None)  # type: ignore[arg-type]
    assert [e["event"] for e in logs] == ["ping not queued", "ping not queued"]
    assert pings._thread is None  # nothing was queued


# -- end to end: the demo PBX enforced by the engine, observed by metrics and pings -------------


def scrape(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    assert metrics.address is not None
    host, port = metrics.address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def demo_config(tmp_path: Path, monitor: Monitor, *, fraction: str = "0.95") -> Path:
    config_file = demo.build(tmp_path / "pbx", now=NOW, days=200)
    text = config_file.read_text()
    for name in ("call-records", "voicemail", "call-recordings"):
        text = text.replace(
            f"  - name: {name}\n", f"  - name: {name}\n    ping: {monitor.url('/' + name)}\n"
        )
    text = text.replace("max_delete_fraction: 0.95", f"max_delete_fraction: {fraction}")
    config_file.write_text(text)
    return config_file


def run_demo(config_file: Path, observers: list[object]) -> list[RunOutcome]:
    loaded = load_config(config_file)
    engine = Engine(loaded, now=lambda: NOW, observers=observers)  # type: ignore[arg-type]
    with audit.AuditLog(loaded.config.audit.path, clock=lambda: NOW) as log:
        return [engine.run(rule, log) for rule in loaded.config.rules]


def test_end_to_end_metrics_and_pings_follow_a_real_run(
    tmp_path: Path, monitor: Monitor, opened: list[Pings]
) -> None:
    config_file = demo_config(tmp_path, monitor)
    loaded = load_config(config_file)
    metrics = Metrics(loaded.config.rules)
    pings = new_pings(opened, loaded.config.rules, 5)
    metrics.serve("127.0.0.1:0")
    try:
        before = time.time()
        outcomes = run_demo(config_file, [metrics, pings])
        found = scrape(metrics)
    finally:
        metrics.close()
    assert pings.close(5) is True

    assert [o.status for o in outcomes] == ["done", "done", "done"]
    for result in outcomes:
        by_unit: dict[str, int] = {}
        for store in result.stores:
            by_unit[store.unit] = by_unit.get(store.unit, 0) + store.deleted
        for unit, count in by_unit.items():
            key = ("retentiond_deleted_total", frozenset({("rule", result.rule), ("unit", unit)}))
            assert found[key] == count
        rule = frozenset({("rule", result.rule)})
        assert found[("retentiond_runs_total", rule | {("status", "done")})] == 1
        assert found[("retentiond_errors_total", rule | {("kind", "failed")})] == 0
        assert found[("retentiond_expired_remaining", rule)] == 0
        assert found[("retentiond_running", rule)] == 0
        assert found[("retentiond_run_duration_seconds", rule)] == result.seconds
        assert found[("retentiond_last_success_timestamp_seconds", rule)] >= before
    assert sum(o.deleted for o in outcomes) > 1000  # the run did real work
    recordings = frozenset({("rule", "call-recordings")})
    assert found[("retentiond_deleted_bytes_total", recordings)] > 0

    monitor.wait(lambda: len(monitor.requests) == 6)
    assert [(r.method, r.path) for r in monitor.requests] == [
        (method, f"/{name}{suffix}")
        for name in ("call-records", "voicemail", "call-recordings")
        for method, suffix in (("GET", "/start"), ("POST", ""))
    ]
    bodies = [r.body for r in monitor.requests if r.method == "POST"]
    assert bodies == [
        f"retentiond {__version__}: rule {o.rule} done, {o.deleted} deleted, 0 expired left, "
        f"{o.seconds:.1f} s\n"
        for o in outcomes
    ]

    # a fresh process (the next daemon start) learns the last successes from the audit log
    seeded = Metrics()
    assert seeded.seed_from_audit(loaded.config.audit.path) == 3
    seeded.write_textfile(tmp_path / "retentiond.prom")
    families = text_string_to_metric_families((tmp_path / "retentiond.prom").read_text())
    success = {
        s.labels["rule"]: s.value
        for f in families
        if f.name == "retentiond_last_success_timestamp_seconds"
        for s in f.samples
    }
    assert set(success) == {"call-records", "voicemail", "call-recordings"}
    assert all(t == NOW.timestamp() for t in success.values())  # when the log says they ended


def test_end_to_end_refused_runs_ping_failure_and_count_as_errors(
    tmp_path: Path, monitor: Monitor, opened: list[Pings]
) -> None:
    config_file = demo_config(tmp_path, monitor, fraction="0.2")  # the first run removes more
    loaded = load_config(config_file)
    metrics = Metrics()
    pings = new_pings(opened, loaded.config.rules, 5)
    metrics.serve("127.0.0.1:0")
    try:
        outcomes = run_demo(config_file, [metrics, pings])
        found = scrape(metrics)
    finally:
        metrics.close()
    assert pings.close(5) is True
    assert [o.status for o in outcomes] == ["refused"] * 3
    for name in ("call-records", "voicemail", "call-recordings"):
        rule = frozenset({("rule", name)})
        assert found[("retentiond_errors_total", rule | {("kind", "refused")})] == 1
        assert ("retentiond_last_success_timestamp_seconds", rule) not in found
        assert found[("retentiond_last_run_timestamp_seconds", rule)] > 0
    assert [r.path for r in monitor.requests if r.method == "POST"] == [
        "/call-records/fail",
        "/voicemail/fail",
        "/call-recordings/fail",
    ]
