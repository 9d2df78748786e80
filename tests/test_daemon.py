"""`retentiond run`, the daemon, as systemd runs it: a real process, a real notify socket, real
signals and real files. Nothing here mocks the scheduler or the clock.

The demo PBX has never been enforced, so every rule is overdue at start and runs at once
(catch-up): that keeps these tests fast. One test waits for a real scheduled minute.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import secrets
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import pytest
from privacy import leaked

from retentiond import demo
from retentiond.evidence import log as audit

RULES = ["call-records", "voicemail", "call-recordings"]


def clean_env() -> dict[str, str]:
    hidden = ("RETENTIOND_CONFIG", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
    return {k: v for k, v in os.environ.items() if k not in hidden}


def retentiond(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "retentiond", *map(str, args)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Service:
    """One `retentiond run` process with its own sd_notify socket and a log file."""

    def __init__(
        self, config: Path, log_file: Path, watchdog_usec: int | None = None, read: bool = True
    ) -> None:
        self.config = config
        self.log_file = log_file
        address = f"retentiond-test-{secrets.token_hex(6)}"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if not read:  # a stalled systemd: its queue fills after a few datagrams
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        self.socket.bind("\0" + address)  # abstract: `@name` in NOTIFY_SOCKET
        self.datagrams: list[str] = []
        self._receiving = threading.Lock()
        # Read at once, as systemd does, unless the test wants a reader that never comes.
        self._reading = read
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        env = clean_env() | {"NOTIFY_SOCKET": f"@{address}"}
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        with log_file.open("ab") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "retentiond", "-c", str(config), "run"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
            )

    def _read(self) -> None:
        while self._reading:
            ready, _, _ = select.select([self.socket], [], [], 0.1)
            if ready:
                self.messages()

    def messages(self) -> list[str]:
        """Every datagram received so far, in order."""
        with self._receiving:
            while True:
                try:
                    data = self.socket.recv(65536, socket.MSG_DONTWAIT)
                except (BlockingIOError, OSError):
                    return list(self.datagrams)
                self.datagrams.append(data.decode())

    def lines(self) -> list[str]:
        return [line for message in self.messages() for line in message.split("\n")]

    def events(self) -> list[dict[str, Any]]:
        """The daemon's own log: JSON lines with a syslog priority prefix."""
        found = []
        for line in self.log_file.read_text().splitlines():
            if line.startswith("<") and ">" in line[:4]:
                found.append(json.loads(line[line.index(">") + 1 :]))
        return found

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events() if e["event"].startswith(name)), None)

    def wait_ready(self) -> None:
        wait_for("READY=1", lambda: "READY=1" in self.lines() or self.process.poll() is not None)
        assert self.process.poll() is None, self.log_file.read_text()

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 15) -> tuple[int, float]:
        """SIGTERM; the exit code and the seconds it took."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        return code, time.monotonic() - started

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reading = False
        self._reader.join()
        self.socket.close()


@pytest.fixture
def pbx(tmp_path: Path) -> Path:
    return demo.build(tmp_path / "pbx")


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    services: list[Service] = []

    def starter(config: Path, watchdog_usec: int | None = None, read: bool = True) -> Service:
        service = Service(config, tmp_path / f"daemon-{len(services)}.log", watchdog_usec, read)
        services.append(service)
        return service

    yield starter
    for service in services:
        service.close()


def entries(config: Path) -> list[dict[str, Any]]:
    log = config.parent / "audit.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]


def finished(config: Path, status: str = "done") -> list[str]:
    """Rules with a run_finished entry of `status`, in log order."""
    return [
        e["rule"] for e in entries(config) if e["type"] == "run_finished" and e["status"] == status
    ]


def deleted_by(config: Path, rule: str) -> int:
    """Rows or files the rule's finished runs deleted, from the log (the demo PBX's counts move
    with the date and the hour: calls near the cutoff expire while the tests run)."""
    return sum(
        e["deleted"] for e in entries(config) if e["type"] == "run_finished" and e["rule"] == rule
    )


def calls(config: Path) -> list[str]:
    """The demo PBX's call times (local wall clock, as Asterisk writes them)."""
    with sqlite3.connect(config.parent / "pbx" / "master.db") as db:
        found = [str(row[0]) for row in db.execute("SELECT calldate FROM cdr")]
    db.close()
    return found


def assert_expired_calls_gone(config: Path, before: list[str]) -> None:
    """Every call older than the last call-records run's cutoff is gone, every other one left."""
    cutoff = [
        e["cutoff"]
        for e in entries(config)
        if e["type"] == "run_started" and e.get("rule") == "call-records"
    ][-1]
    wall = datetime.fromisoformat(cutoff).astimezone(demo.ZONE).strftime("%Y-%m-%d %H:%M:%S")
    left = calls(config)
    assert not [when for when in left if when < wall]
    assert sorted(left) == sorted(when for when in before if when >= wall)


def verifies(config: Path) -> bool:
    return audit.verify(config.parent / "audit.jsonl").ok


def personal_data(config_file: Path) -> set[str]:
    with sqlite3.connect(config_file.parent / "pbx" / "master.db") as db:
        rows = db.execute("SELECT src, dst, clid, uniqueid, recordingfile FROM cdr").fetchall()
    db.close()
    values = {v for row in rows for v in row if v}
    values |= {p.name for p in (config_file.parent / "pbx" / "monitor").rglob("*.wav")}
    return values


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- start -------------------------------------------------------------------------------------


def test_start_notifies_systemd_and_catches_up_every_overdue_rule(
    pbx: Path, start: Callable[..., Service]
) -> None:
    personal = personal_data(pbx)
    service = start(pbx, watchdog_usec=200_000)
    service.wait_ready()
    wait_for("three catch-up runs", lambda: sorted(finished(pbx)) == sorted(RULES))
    wait_for("watchdog pings", lambda: service.lines().count("WATCHDOG=1") >= 5)

    lines = service.lines()
    assert lines[0] == "READY=1"
    # each rule's next run, in time order: which comes first depends on the time of day
    assert lines[1].startswith("STATUS=next: ") and " 03:15" in lines[1]
    assert all(f" {rule} 20" in lines[1] for rule in RULES), lines[1]
    status = wait_for(
        "a status with all results",
        lambda: [
            line
            for line in service.lines()
            if line.startswith("STATUS=") and "call-recordings done" in line
        ],
    )
    deleted = deleted_by(pbx, "call-records")
    assert deleted > 1000
    assert f"last: call-records done {deleted} deleted, voicemail done" in status[-1]
    started = service.event("daemon started")
    assert started is not None
    assert started["rules_scheduled"] == RULES
    assert started["next_runs"]["call-records"].endswith("03:15:00+01:00")
    assert started["catch_up"] == sorted(RULES)

    code, _ = service.stop()
    assert code == 0
    assert service.messages()[-1] == "STOPPING=1"
    assert verifies(pbx)
    found = leaked(
        personal, jsonl=[service.log_file.read_text(), (pbx.parent / "audit.jsonl").read_text()]
    )
    assert not found, found[:5]


def test_a_notify_socket_nobody_reads_stalls_neither_the_runs_nor_the_stop(
    pbx: Path, start: Callable[..., Service]
) -> None:
    service = start(pbx, watchdog_usec=200_000, read=False)
    wait_for("three catch-up runs", lambda: sorted(finished(pbx)) == sorted(RULES))
    assert _queue_full(service.socket)
    code, seconds = service.stop()
    assert code == 0
    assert seconds < 5
    assert service.event("daemon stopped") is not None
    assert verifies(pbx)


def _queue_full(receiver: socket.socket) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.connect(receiver.getsockname())
        try:
            sender.send(b"WATCHDOG=1", socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
    return False


def test_a_rule_without_schedule_is_left_to_run_once_with_a_warning(
    pbx: Path, start: Callable[..., Service]
) -> None:
    pbx.write_text(pbx.read_text().replace("    schedule: daily 03:20\n", ""))
    service = start(pbx)
    service.wait_ready()
    wait_for("two runs", lambda: len(finished(pbx)) == 2)
    warning = service.event("rule has no schedule")
    assert warning is not None and warning["rule"] == "voicemail"
    assert service.stop()[0] == 0
    assert "voicemail" not in finished(pbx)


def test_a_store_that_cannot_be_opened_stops_the_start(
    pbx: Path, start: Callable[..., Service]
) -> None:
    pbx.write_text(pbx.read_text().replace("table: cdr", "table: cdr_old"))
    service = start(pbx)
    assert service.process.wait(timeout=30) == 1
    assert "rule call-records" in service.log_file.read_text()
    assert "READY=1" not in service.lines()
    assert not finished(pbx)


def test_run_once_is_refused_while_the_daemon_holds_the_log(
    pbx: Path, start: Callable[..., Service]
) -> None:
    service = start(pbx)
    service.wait_ready()
    once = retentiond("-c", pbx, "run", "--once")
    assert once.returncode == 1
    assert "another retentiond process is writing" in once.stderr
    wait_for("catch-up runs", lambda: len(finished(pbx)) == 3)
    assert service.stop()[0] == 0
    assert verifies(pbx)


# --- reload ------------------------------------------------------------------------------------


def test_sighup_reloads_a_changed_config_and_rejects_an_invalid_one(
    pbx: Path, start: Callable[..., Service]
) -> None:
    service = start(pbx)
    service.wait_ready()
    wait_for("catch-up runs", lambda: len(finished(pbx)) == 3)
    original = sha256(pbx)

    pbx.write_text(pbx.read_text().replace("keep: 3 months", "keep: 2 months"))
    service.signal(signal.SIGHUP)
    reloaded = wait_for(
        "config_reloaded", lambda: [e for e in entries(pbx) if e["type"] == "config_reloaded"]
    )
    assert reloaded[-1]["old_config_sha256"] == original
    assert reloaded[-1]["new_config_sha256"] == sha256(pbx)
    assert reloaded[-1]["rules_changed"] == ["call-records"]
    assert reloaded[-1]["rules_added"] == [] and reloaded[-1]["rules_removed"] == []
    event = wait_for("reload logged", lambda: service.event("config reloaded"))
    assert event["source"] == "SIGHUP"
    lines = service.lines()
    reloading = lines.index("RELOADING=1")
    assert lines[reloading + 1].startswith("MONOTONIC_USEC=")
    assert "READY=1" in lines[reloading + 2 :]

    valid = pbx.read_text()
    pbx.write_text(valid.replace("keep: 60d", "keep: 60"))  # no unit: invalid
    line = valid.splitlines().index("    keep: 60d") + 1
    service.signal(signal.SIGHUP)
    rejected = wait_for("rejection", lambda: service.event("config rejected"))
    assert rejected["problems"] == [
        f"{pbx}:{line}: rules.1.keep: 60 has no unit: write e.g. '60d' or '60 months'"
    ]
    wait_for(
        "status says so",
        lambda: any("config rejected" in line for line in service.lines()),
    )
    assert service.process.poll() is None
    assert len([e for e in entries(pbx) if e["type"] == "config_reloaded"]) == 1

    # A later valid reload works, and a rule new to the daemon runs at once.
    pbx.write_text(valid.replace("name: call-recordings", "name: recordings"))
    service.signal(signal.SIGHUP)
    wait_for(
        "second reload",
        lambda: len([e for e in entries(pbx) if e["type"] == "config_reloaded"]) == 2,
    )
    second = [e for e in entries(pbx) if e["type"] == "config_reloaded"][-1]
    assert second["old_config_sha256"] == reloaded[-1]["new_config_sha256"]
    assert second["rules_added"] == ["recordings"]
    assert second["rules_removed"] == ["call-recordings"]
    assert second["rules_changed"] == []
    wait_for("the new rule's catch-up run", lambda: "recordings" in finished(pbx))
    assert service.stop()[0] == 0
    assert verifies(pbx)


def test_a_saved_config_file_is_reloaded_without_a_signal(
    pbx: Path, start: Callable[..., Service]
) -> None:
    service = start(pbx)
    service.wait_ready()

    def reloads() -> list[dict[str, Any]]:
        return [e for e in entries(pbx) if e["type"] == "config_reloaded"]

    # as editors and Ansible save: a temporary file moved over the config
    temporary = pbx.with_name(".retentiond.yaml.tmp")
    temporary.write_text(pbx.read_text().replace("keep: 30d", "keep: 21d"))
    temporary.replace(pbx)  # rename(2), as os.replace
    wait_for("reload after an atomic save", lambda: len(reloads()) == 1)
    assert reloads()[0]["rules_changed"] == ["call-recordings"]
    assert reloads()[0]["new_config_sha256"] == sha256(pbx)

    # rewritten in place
    with pbx.open("r+") as handle:
        text = handle.read().replace("keep: 60d", "keep: 45d")
        handle.seek(0)
        handle.write(text)
        handle.truncate()
    wait_for("reload after an in-place write", lambda: len(reloads()) == 2)
    assert reloads()[1]["rules_changed"] == ["voicemail"]

    def sources() -> list[str]:
        return [e["source"] for e in service.events() if e["event"] == "config reloaded"]

    assert wait_for("both logged", lambda: len(sources()) == 2 and sources())
    assert sources() == ["config file changed", "config file changed"]
    assert service.stop()[0] == 0
    assert verifies(pbx)


def test_an_unwritable_audit_log_rejects_the_reload_and_exits_1(
    pbx: Path, start: Callable[..., Service]
) -> None:
    log = pbx.parent / "audit.jsonl"
    service = start(pbx)
    service.wait_ready()
    wait_for("catch-up runs", lambda: len(finished(pbx)) == 3)
    # immutable: the daemon's open descriptor can no longer write (as on a failing disk)
    if subprocess.run(["chattr", "+i", str(log)], capture_output=True, check=False).returncode:
        pytest.skip("chattr +i needs root on a filesystem with attributes")
    try:
        pbx.write_text(pbx.read_text().replace("keep: 60d", "keep: 45d"))
        service.signal(signal.SIGHUP)
        assert service.process.wait(timeout=15) == 1
    finally:
        subprocess.run(["chattr", "-i", str(log)], check=True)
    rejected = service.event("config rejected")
    assert rejected is not None
    assert "cannot be recorded in the audit log" in rejected["problems"][0]
    assert service.event("the audit log cannot be written") is not None
    assert not [e for e in entries(pbx) if e["type"] == "config_reloaded"]
    assert verifies(pbx)


# --- stop --------------------------------------------------------------------------------------


def test_sigterm_mid_run_ends_it_interrupted_and_the_next_start_completes_it(
    pbx: Path, start: Callable[..., Service]
) -> None:
    before = calls(pbx)
    fast = pbx.read_text()
    pbx.write_text(fast.replace("batch_size: 500", "batch_size: 100\n        pause: 0.5"))
    service = start(pbx)
    wait_for(
        "the first batch",
        lambda: any(e["type"] == "batch_done" for e in entries(pbx)),
    )
    code, seconds = service.stop()
    assert code == 0
    assert seconds < 5  # one batch and a few seconds, not the rest of the run
    log = entries(pbx)
    assert log[-1]["type"] == "run_finished" and log[-1]["status"] == "interrupted"
    assert log[-2]["type"] == "batch_done"
    assert [e["rule"] for e in log if e["type"] == "run_started"] == ["call-records"]
    lines = service.lines()  # systemd hears of the stop at once, not only when the run ends
    interrupted = [i for i, line in enumerate(lines) if "call-records interrupted" in line]
    assert lines.index("STOPPING=1") < interrupted[0]
    assert verifies(pbx)

    pbx.write_text(fast)
    again = start(pbx)
    wait_for("all rules done", lambda: sorted(finished(pbx)) == sorted(RULES), timeout=30)
    assert again.stop()[0] == 0
    assert verifies(pbx)
    # the interrupted run and its completion removed all expired calls, and only those
    assert_expired_calls_gone(pbx, before)


# --- the schedule itself -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_rule_runs_at_its_scheduled_minute(pbx: Path, start: Callable[..., Service]) -> None:
    assert retentiond("-c", pbx, "run", "--once").returncode == 0  # nothing is overdue now
    zone = ZoneInfo("Europe/Berlin")
    at = (datetime.now(zone) + timedelta(seconds=65)).replace(second=0, microsecond=0)
    if at - datetime.now(zone) > timedelta(seconds=60):
        at -= timedelta(minutes=1)  # the next minute at least 5 s away
    pbx.write_text(pbx.read_text().replace("daily 03:15", f"{at.minute} {at.hour} * * *"))
    service = start(pbx)
    service.wait_ready()
    started = service.event("daemon started")
    assert started is not None
    assert started["catch_up"] == []
    assert started["next_runs"]["call-records"] == at.isoformat()
    runs_before = len(finished(pbx))

    wait_for("the scheduled run", lambda: len(finished(pbx)) > runs_before, timeout=90)
    run = next(e for e in reversed(entries(pbx)) if e["type"] == "run_started")
    assert run["rule"] == "call-records"
    ran_at = datetime.fromisoformat(run["ts"])
    assert at.astimezone(UTC) <= ran_at < at.astimezone(UTC) + timedelta(seconds=10)
    assert service.stop()[0] == 0
    assert verifies(pbx)


# --- monitoring ----------------------------------------------------------------------------------


class PingRecorder(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self._record()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._record()

    def _record(self) -> None:
        PingRecorder.received.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback http only
        return str(response.read().decode())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_metrics_are_served_and_pings_report_start_success_and_failure(
    pbx: Path, start: Callable[..., Service]
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PingRecorder)
    PingRecorder.received.clear()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    port = free_port()
    text = pbx.read_text().replace("max_delete_fraction: 0.95", "max_delete_fraction: 0.9")
    for rule in RULES:  # each rule pings its own path, healthchecks style
        text = text.replace(f"  - name: {rule}\n", f"  - name: {rule}\n    ping: {base}/{rule}\n")
    text += f"monitoring:\n  metrics_listen: 127.0.0.1:{port}\n  ping_timeout: 2\n"
    pbx.write_text(text)
    try:
        service = start(pbx)
        service.wait_ready()
        # the recordings rule would remove 92% of its store: refused, so its failure URL is called
        wait_for("three catch-up runs", lambda: len(PingRecorder.received) >= 6)
        scraped = wait_for(
            "metrics",
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                .read()
                .decode()
            ),
        )
        code, _ = service.stop()
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0
    assert sorted(PingRecorder.received) == sorted(
        [
            "/call-records/start",
            "/call-records",
            "/voicemail/start",
            "/voicemail",
            "/call-recordings/start",
            "/call-recordings/fail",
        ]
    )
    deleted = deleted_by(pbx, "call-records")
    assert deleted > 1000
    assert f'retentiond_deleted_total{{rule="call-records",unit="rows"}} {deleted}.0' in scraped
    assert 'retentiond_runs_total{rule="call-recordings",status="refused"} 1.0' in scraped
    assert 'retentiond_last_success_timestamp_seconds{rule="voicemail"}' in scraped
    assert 'retentiond_last_success_timestamp_seconds{rule="call-recordings"}' not in scraped


# --- holds --------------------------------------------------------------------------------------


def test_a_hold_file_saved_during_a_run_holds_before_the_next_batch(
    pbx: Path, start: Callable[..., Service]
) -> None:
    """The DPO drops a hold into holds.d while the daemon deletes: the batches after it keep
    the held calls, and the log records the hold between two batches."""
    holds = pbx.parent / "holds.d"
    holds.mkdir()
    slow = pbx.read_text().replace("batch_size: 500", "batch_size: 100\n        pause: 0.5")
    pbx.write_text(slow)
    database = pbx.parent / "pbx" / "master.db"
    with sqlite3.connect(database) as db:
        # expired calls of the last three weeks before the cutoff: walked last
        days = [r[0] for r in db.execute("SELECT DISTINCT substr(calldate, 1, 10) FROM cdr")]
    db.close()
    cutoff_day = (datetime.now(UTC) - timedelta(days=95)).date()
    window = (cutoff_day - timedelta(days=20), cutoff_day - timedelta(days=7))
    assert str(window[0]) in days
    in_window = (
        "SELECT count(*) FROM cdr WHERE calldate >= ? AND calldate < ?",
        (str(window[0]), str(window[1] + timedelta(days=1))),
    )
    with sqlite3.connect(database) as db:
        (before,) = db.execute(*in_window).fetchone()
    db.close()
    service = start(pbx)
    wait_for("the first batch", lambda: any(e["type"] == "batch_done" for e in entries(pbx)))
    draft = holds / ".lit.yaml.tmp"
    draft.write_text(
        "id: LIT-LATE\nreason: Litigation\napproved_by: DPO\nreview_by: 2099-01-01\n"
        f"rules: [call-records]\nfrom: {window[0]}\nto: {window[1]}\n"
    )
    draft.rename(holds / "lit.yaml")  # as editors and Ansible save
    wait_for("call-records done", lambda: "call-records" in finished(pbx), timeout=60)
    log = [e for e in entries(pbx) if e.get("run_id") or e["type"].startswith("hold")]
    kinds = [e["type"] for e in log]
    added = kinds.index("hold_added")
    assert "batch_done" in kinds[:added] and "batch_done" in kinds[added:]
    assert log[added]["hold"] == "LIT-LATE"
    with sqlite3.connect(database) as db:
        (kept,) = db.execute(*in_window).fetchone()
    db.close()
    assert kept == before > 0
    finished_entry = next(
        e for e in entries(pbx) if e["type"] == "run_finished" and e["rule"] == "call-records"
    )
    assert finished_entry["status"] == "done"
    assert service.event("holds reloaded") is not None
    assert service.stop()[0] == 0
    assert verifies(pbx)


# --- signing -------------------------------------------------------------------------------------


def signing_key(pbx: Path) -> Path:
    """A key pair from `retentiond audit keygen`, the private key set as audit.signing_key;
    returns the public key, as the DPO holds it."""
    keys = pbx.parent / "keys"
    made = retentiond("audit", "keygen", "--out-dir", keys)
    assert made.returncode == 0, made.stderr
    text = pbx.read_text().replace("audit:\n", f"audit:\n  signing_key: {keys}/retentiond.key\n")
    pbx.write_text(text)
    return keys / "retentiond.pub"


def verify_strict(pbx: Path, public: Path) -> subprocess.CompletedProcess[str]:
    """What the DPO runs on a copy filed between runs: every entry must be signed."""
    log = pbx.parent / "audit.jsonl"
    return retentiond("audit", "verify", log, "--public-key", public, "--strict")


def killed_before_its_checkpoint(pbx: Path) -> None:
    """The log a SIGKILL leaves between a run's last entry and its checkpoint: every entry is
    synced when it is written, so it is the signed log without its last line."""
    log = pbx.parent / "audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    assert json.loads(lines[-1])["type"] == "checkpoint"
    assert json.loads(lines[-2])["type"] == "run_finished"
    log.write_bytes(b"".join(lines[:-1]))


def failed_on_its_key(pbx: Path) -> None:
    """A real run whose key others could read: it fails before deleting, its end unsigned."""
    key = pbx.parent / "keys" / "retentiond.key"
    key.chmod(0o644)
    failed = retentiond("-c", pbx, "run", "--once", "--rule", "voicemail")
    key.chmod(0o600)
    assert failed.returncode != 0 and "mode 0644" in failed.stdout + failed.stderr
    assert entries(pbx)[-1]["type"] == "run_failed"


def torn_by_a_power_loss(pbx: Path) -> None:
    """The first bytes of the next entry, without its newline: a power loss while it was
    written. The daemon moves them aside (a `log_repaired` entry), which must be signed too."""
    log = pbx.parent / "audit.jsonl"
    seq = entries(pbx)[-1]["seq"] + 1
    with log.open("ab") as file:
        file.write(f'{{"seq":{seq},"ts":"20'.encode())


@pytest.mark.parametrize(
    ("unsigned_end", "written_at_start"),
    [
        (killed_before_its_checkpoint, ["checkpoint"]),
        (failed_on_its_key, ["checkpoint"]),
        (torn_by_a_power_loss, ["log_repaired", "checkpoint"]),
    ],
)
def test_the_daemon_signs_an_unsigned_end_of_the_log_at_start(
    pbx: Path,
    start: Callable[..., Service],
    unsigned_end: Callable[[Path], None],
    written_at_start: list[str],
) -> None:
    public = signing_key(pbx)
    assert retentiond("-c", pbx, "run", "--once").returncode == 0  # nothing is overdue now
    unsigned_end(pbx)
    before = entries(pbx)
    unfinished = verify_strict(pbx, public)
    assert unfinished.returncode == 1, unfinished.stdout
    assert "UNFINISHED (--strict)" in unfinished.stdout

    service = start(pbx)
    service.wait_ready()
    signed = verify_strict(pbx, public)  # before any scheduled run, while the daemon runs
    assert signed.returncode == 0, signed.stdout
    assert "intact" in signed.stdout and "warning" not in signed.stdout
    log = entries(pbx)
    assert log[: len(before)] == before
    # what the daemon wrote at start, and nothing else: no run signed it
    assert [e["type"] for e in log[len(before) :]] == written_at_start
    checkpoint = log[-1]
    assert (checkpoint["signed_seq"], checkpoint["signed_hash"]) == (
        log[-2]["seq"],
        log[-2]["hash"],
    )
    started = service.event("daemon started")
    assert started is not None and started["catch_up"] == []
    assert service.stop()[0] == 0
    assert verify_strict(pbx, public).returncode == 0


@pytest.mark.parametrize("problem", ["readable by others", "missing"])
def test_an_unusable_key_at_start_is_a_warning_and_the_daemon_starts(
    pbx: Path, start: Callable[..., Service], problem: str
) -> None:
    personal = personal_data(pbx)
    public = signing_key(pbx)
    assert retentiond("-c", pbx, "run", "--once").returncode == 0
    killed_before_its_checkpoint(pbx)
    log = pbx.parent / "audit.jsonl"
    before = log.read_bytes()
    key = pbx.parent / "keys" / "retentiond.key"
    if problem == "missing":
        key.unlink()
    else:
        key.chmod(0o644)

    service = start(pbx)
    service.wait_ready()
    warning = wait_for(
        "the warning", lambda: service.event("the log's unsigned end could not be signed")
    )
    assert warning["level"] == "warning"
    assert str(key) in warning["reason"]
    assert ("mode 0644" if problem != "missing" else "does not exist") in warning["reason"]
    assert log.read_bytes() == before  # nothing signed, nothing else written
    assert verify_strict(pbx, public).returncode == 1  # still unsigned, and said so
    assert service.process.poll() is None
    assert service.stop()[0] == 0
    found = leaked(personal, jsonl=[service.log_file.read_text(), log.read_text()])
    assert not found, found[:5]


def test_a_hold_file_removed_while_the_daemon_runs_does_not_end_the_hold(
    pbx: Path, start: Callable[..., Service]
) -> None:
    """A hold ends only explicitly: a reload that no longer finds its file records no end, and
    the next run of its rule is refused with the calls it held intact."""
    holds = pbx.parent / "holds.d"
    holds.mkdir()
    (holds / "lit.yaml").write_text(
        "id: LIT-D\nreason: Litigation\napproved_by: DPO\nreview_by: 2099-01-01\n"
        "rules: [call-records]\n"
    )
    service = start(pbx)
    wait_for("call-records done", lambda: "call-records" in finished(pbx), timeout=60)
    assert deleted_by(pbx, "call-records") == 0  # every call is held
    before = calls(pbx)
    (holds / "lit.yaml").unlink()
    wait_for("the reload", lambda: service.event("holds reloaded") is not None)
    code, _ = service.stop()
    assert code == 0
    assert [e for e in entries(pbx) if e["type"] == "hold_ended"] == []
    refused = retentiond("-c", pbx, "run", "--once", "--rule", "call-records")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "holds LIT-D are in force in the audit log but not in this config" in refused.stdout
    assert calls(pbx) == before
    (entry,) = [e for e in entries(pbx) if e["type"] == "run_refused"]
    assert entry["holds_not_found"] == ["LIT-D"]
