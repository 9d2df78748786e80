"""The daemon's runs happen in run processes of their own (retentiond/runner.py): the daemon
never loads what a store needs, yet each run writes its log through the daemon, sees holds and
stops as before, and a run process that dies fails its run only. Real processes, real signals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from privacy import leaked
from test_daemon import (
    RULES,
    Service,
    assert_expired_calls_gone,
    calls,
    deleted_by,
    entries,
    finished,
    personal_data,
    retentiond,
    sha256,
    signing_key,
    verifies,
    wait_for,
)

from retentiond import demo

# Shared objects that SQLAlchemy (Cython), the sqlite3 module, psycopg and cryptography load.
STORE_LIBRARIES = ("/sqlalchemy/", "_sqlite3", "psycopg", "/cryptography/")


@pytest.fixture
def pbx(tmp_path: Path) -> Path:
    return demo.build(tmp_path / "pbx")


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    services: list[Service] = []

    def starter(config: Path) -> Service:
        service = Service(config, tmp_path / f"daemon-{len(services)}.log")
        services.append(service)
        return service

    yield starter
    for service in services:
        service.close()


def mapped_files(pid: int) -> set[str]:
    """The files a process has mapped: every shared object it has imported."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split(maxsplit=5)[5] for line in maps if len(line.split(maxsplit=5)) == 6}


def run_processes(pid: int) -> list[int]:
    """The daemon's children: its run process, if a run is in progress."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return children


def slow_batches(pbx: Path) -> None:
    """Call records in batches of 100 with half a second between them: a run of ten seconds."""
    pbx.write_text(
        pbx.read_text().replace("batch_size: 500", "batch_size: 100\n        pause: 0.5")
    )


def run_entries(pbx: Path, rule: str) -> list[dict[str, object]]:
    """The entries of the runs of `rule`, in log order."""
    ids = {e["run_id"] for e in entries(pbx) if e.get("rule") == rule and "run_id" in e}
    return [e for e in entries(pbx) if e.get("run_id") in ids and "reconciled_by" not in e]


def test_the_daemon_never_loads_what_its_runs_need(
    pbx: Path, start: Callable[..., Service]
) -> None:
    """A signed SQL run in the daemon would leave SQLAlchemy, sqlite3 and cryptography in it for
    good; from a run process they leave with it, and the log is the same."""
    public = signing_key(pbx)
    service = start(pbx)
    service.wait_ready()
    wait_for("three catch-up runs", lambda: sorted(finished(pbx)) == sorted(RULES))
    wait_for("the run processes ended", lambda: not run_processes(service.process.pid))

    mapped = mapped_files(service.process.pid)
    assert any("_pydantic_core" in path for path in mapped)  # the maps show imports at all
    loaded = sorted(p for p in mapped if any(name in p for name in STORE_LIBRARIES))
    assert loaded == []

    log = run_entries(pbx, "call-records")
    kinds = [e["type"] for e in log]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    batches = -(-deleted_by(pbx, "call-records") // 500)  # the rows, by 500
    assert batches > 2
    assert kinds.count("batch_intent") == kinds.count("batch_done") == batches
    assert [e["seq"] for e in log] == sorted(e["seq"] for e in log)
    every = entries(pbx)
    ends = [i for i, e in enumerate(every) if e["type"] == "run_finished"]
    assert all(every[i + 1]["type"] == "checkpoint" for i in ends)  # each run signed
    log_file = pbx.parent / "audit.jsonl"
    strict = retentiond("audit", "verify", log_file, "--public-key", public, "--strict")
    assert strict.returncode == 0, strict.stdout
    assert service.stop()[0] == 0
    assert verifies(pbx)


def test_a_run_after_a_rejected_reload_uses_the_config_in_force(
    pbx: Path, start: Callable[..., Service]
) -> None:
    """The run process gets the daemon's config, not the file: a file the daemon rejected
    while a run was in progress never reaches the runs after it."""
    slow_batches(pbx)
    accepted = sha256(pbx)
    service = start(pbx)
    wait_for("the first batch", lambda: any(e["type"] == "batch_done" for e in entries(pbx)))
    valid = pbx.read_text()
    pbx.write_text(valid.replace("keep: 60d", "keep: 60"))  # no unit: rejected
    service.signal(signal.SIGHUP)
    wait_for("the rejection", lambda: service.event("config rejected"))
    wait_for("every rule's run", lambda: sorted(finished(pbx)) == sorted(RULES), timeout=60)

    started = [e for e in entries(pbx) if e["type"] == "run_started"]
    assert [e["rule"] for e in started] == RULES
    assert [e["config_sha256"] for e in started] == [accepted] * 3
    assert sha256(pbx) != accepted
    assert service.stop()[0] == 0
    assert verifies(pbx)


def test_sigterm_to_every_process_of_the_service_ends_the_run_after_its_batch(
    pbx: Path, start: Callable[..., Service]
) -> None:
    """`systemctl stop` signals the daemon and its run process at once: the run finishes its
    batch and records its end, the daemon waits for it and exits 0."""
    slow_batches(pbx)
    service = start(pbx)
    wait_for("the first batch", lambda: any(e["type"] == "batch_done" for e in entries(pbx)))
    children = wait_for("the run process", lambda: run_processes(service.process.pid))
    for pid in [service.process.pid, *children]:
        os.kill(pid, signal.SIGTERM)
    assert service.process.wait(timeout=15) == 0

    log = entries(pbx)
    assert log[-1]["type"] == "run_finished" and log[-1]["status"] == "interrupted"
    assert log[-2]["type"] == "batch_done"
    assert service.event("the run process ended without a result") is None
    assert verifies(pbx)


def test_a_killed_run_process_fails_its_run_only_and_the_next_run_reconciles(
    pbx: Path, start: Callable[..., Service]
) -> None:
    personal = personal_data(pbx)
    before = calls(pbx)
    slow_batches(pbx)
    service = start(pbx)
    wait_for("the first batch", lambda: any(e["type"] == "batch_done" for e in entries(pbx)))
    (child,) = wait_for("the run process", lambda: run_processes(service.process.pid))
    killed_run = next(e["run_id"] for e in entries(pbx) if e["type"] == "run_started")
    os.kill(child, signal.SIGKILL)

    lost = wait_for("the report", lambda: service.event("the run process ended without a"))
    assert lost["level"] == "error"
    assert lost["rule"] == "call-records" and lost["exit_status"] == "killed by SIGKILL"
    # the daemon goes on: the other rules' catch-up runs follow
    wait_for("the other rules", lambda: sorted(finished(pbx)) == ["call-recordings", "voicemail"])
    wait_for("STATUS", lambda: any("call-records failed" in line for line in service.lines()))
    assert service.process.poll() is None
    assert service.stop()[0] == 0
    assert verifies(pbx)

    again = start(pbx)  # call-records has not succeeded yet: it runs at once
    wait_for("the next run", lambda: "call-records" in finished(pbx), timeout=60)
    reconciled = [e for e in entries(pbx) if e["type"] == "run_reconciled"]
    assert [e["run_id"] for e in reconciled] == [killed_run]
    assert reconciled[0]["end"] == "none" and reconciled[0]["rule"] == "call-records"
    assert again.stop()[0] == 0
    assert verifies(pbx)
    # the killed run and the next removed every expired call, and only those
    assert_expired_calls_gone(pbx, before)
    logs = [service.log_file.read_text(), again.log_file.read_text()]
    found = leaked(personal, jsonl=[*logs, (pbx.parent / "audit.jsonl").read_text()])
    assert not found, found[:5]


def test_a_store_the_start_check_cannot_open_stops_the_daemon_with_its_reason(
    pbx: Path,
) -> None:
    pbx.write_text(pbx.read_text().replace("table: cdr", "table: cdr_old"))
    checked = retentiond("-c", pbx, "check")
    assert checked.returncode == 1
    started = subprocess.run(
        [sys.executable, "-m", "retentiond", "-c", str(pbx), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
    )
    assert started.returncode == 1
    last = started.stderr.strip().splitlines()[-1]
    assert last.startswith("retentiond: rule call-records: ")
    assert "cdr_old" in last
    assert last.endswith(
        ". The daemon does not start with a store it cannot open; `retentiond check` shows "
        "every store"
    )
    assert not entries(pbx) or not finished(pbx)
