"""Database faults during a purge: connections cut mid-run, answers that stop coming, a server
that refuses connections or is down when a run starts, a login it refuses, MariaDB killed and
restarted. Every test runs the real command (`retentiond run --once`, or the daemon) against a
real server through tests/faultproxy.py. A COMMIT whose reply is lost: tests/test_db_lost_commit.py.

What must hold each time: a transient fault is retried with backoff and the run completes; a
lasting one fails the run cleanly (run_failed in the log, a reason naming no data, exit 1, no
traceback) with nothing deleted beyond the batches the log records; the next run succeeds; the
log verifies; nothing unexpired is ever gone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from faultproxy import FaultProxy
from pbxdata import PbxDatabase, cdr_rows, cel_rows
from sqlalchemy import create_engine, make_url, text
from test_daemon import Service, wait_for

from retentiond.evidence import log as audit

# every test runs retentiond against a MariaDB or PostgreSQL server
pytestmark = pytest.mark.server_clock

BERLIN = ZoneInfo("Europe/Berlin")
EXPIRED = 800  # calls or events older than the 3-month cutoff
KEPT = 400  # younger ones
BATCH = 100


# --- the PBX behind the proxy ---------------------------------------------------------------


def moments() -> tuple[list[datetime], list[datetime]]:
    """Expired (4 to 8 months old) and kept (up to 6 weeks old) times, in the PBX's zone."""
    now = datetime.now(BERLIN).replace(tzinfo=None, microsecond=0)
    old = [now - timedelta(days=120, minutes=211 * i) for i in range(EXPIRED)]
    young = [now - timedelta(days=1, minutes=97 * i) for i in range(KEPT)]
    return old, young


@dataclass
class Pbx:
    """A cdr (keyless) or cel (keyed) table, a config pointing through the proxy, its log."""

    folder: Path
    database: PbxDatabase
    proxy: FaultProxy
    table: str
    kept: set[str]  # uniqueids of the rows that must survive

    @property
    def config(self) -> Path:
        return self.folder / "retentiond.yaml"

    @property
    def log(self) -> Path:
        return self.folder / "audit.jsonl"

    def write_config(
        self, retries: int = 5, pause: float = 0.3, extra: str = "", **url_parts: Any
    ) -> None:
        """retentiond's config, connecting through the proxy unless `url_parts` say otherwise."""
        url = make_url(self.database.url).set(host="127.0.0.1", port=self.proxy.port)
        url = url.set(**url_parts)
        time_column = "calldate" if self.table == "cdr" else "eventtime"
        self.config.write_text(f"""\
version: 1
timezone: Europe/Berlin
audit:
  path: {self.log}
connections:
  cdrdb:
    url: {url.render_as_string(hide_password=False)}
    lock_timeout: 1
    statement_timeout: 1
    connect_timeout: 1
    retries: {retries}
rules:
  - name: call-records
    keep: 3 months
    schedule: daily 03:15
{extra}    stores:
      - {{type: sql, connection: cdrdb, table: {self.table}, time_column: {time_column},
          batch_size: {BATCH}, pause: {pause}}}
safety:
  max_delete_fraction: 0.9
""")

    def uniqueids(self) -> set[str]:
        with self.database.engine.connect() as connection:
            query = text(f"SELECT uniqueid FROM {self.table}")
            return set(connection.execute(query).scalars())

    def entries(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def batches_done(self) -> int:
        return sum(1 for e in self.entries() if e["type"] == "batch_done")

    def recorded_deletions(self) -> int:
        return sum(e["deleted"] for e in self.entries() if e["type"] == "batch_done")

    def run_once(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "retentiond", "-c", str(self.config), "run", "--once"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
        )

    def assert_intact(self) -> None:
        """The log verifies and every unexpired row is still there."""
        assert audit.verify(self.log).ok
        assert self.kept <= self.uniqueids()

    def assert_purged(self) -> None:
        """Nothing expired is left, and the log accounts for every row deleted."""
        self.assert_intact()
        assert self.uniqueids() == self.kept
        assert self.recorded_deletions() == EXPIRED


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("RETENTIOND_CONFIG", "NOTIFY_SOCKET")}


def make_pbx(folder: Path, url: str, table: str, proxy: FaultProxy) -> Pbx:
    database = PbxDatabase.connect(url)
    database.create(table)
    old, young = moments()
    if table == "cdr":
        rows = cdr_rows(old + young, seed=8)
    else:
        # time order is not key order: the walk must still find every expired event
        rows = cel_rows(young[: KEPT // 2] + old + young[KEPT // 2 :], seed=8)
    database.insert(table, rows)
    times = [r["calldate" if table == "cdr" else "eventtime"] for r in rows]
    cutoff = min(young) - timedelta(days=1)
    kept = {r["uniqueid"] for r, t in zip(rows, times, strict=True) if t > cutoff}
    assert len(kept) == KEPT
    folder.mkdir(exist_ok=True)
    pbx = Pbx(folder, database, proxy, table, kept)
    pbx.write_config()
    return pbx


def proxy_to(url: str) -> FaultProxy:
    server = make_url(url)
    return FaultProxy(server.host or "127.0.0.1", server.port or 3306)


@pytest.fixture
def pbx_on(tmp_path: Path) -> Iterator[Callable[[str, str], Pbx]]:
    made: list[Pbx] = []

    def factory(url: str, table: str) -> Pbx:
        pbx = make_pbx(tmp_path / f"pbx{len(made)}", url, table, proxy_to(url))
        made.append(pbx)
        return pbx

    yield factory
    for pbx in made:
        pbx.proxy.close()
        pbx.database.close()


CASES = [
    pytest.param(("mariadb_url", "cdr"), marks=pytest.mark.mariadb, id="mariadb-cdr-keyless"),
    pytest.param(("mariadb_url", "cel"), marks=pytest.mark.mariadb, id="mariadb-cel-keyed"),
    pytest.param(("postgres_url", "cel"), marks=pytest.mark.postgres, id="postgres-cel-keyed"),
]


@pytest.fixture(params=CASES)
def pbx(request: pytest.FixtureRequest, pbx_on: Callable[[str, str], Pbx]) -> Pbx:
    url_fixture, table = request.param
    return pbx_on(request.getfixturevalue(url_fixture), table)


# Where the table's key plays no part (a connection that stops answering), one of each server.
@pytest.fixture(params=[CASES[0], CASES[2]])
def pbx_per_server(request: pytest.FixtureRequest, pbx_on: Callable[[str, str], Pbx]) -> Pbx:
    url_fixture, table = request.param
    return pbx_on(request.getfixturevalue(url_fixture), table)


def finish(run: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    _, stderr = run.communicate(timeout=timeout)
    return run.returncode, stderr


def log_events(stderr: str) -> list[dict[str, Any]]:
    """The process's own log: JSON lines, possibly with a syslog priority prefix."""
    found = []
    for line in stderr.splitlines():
        if "{" in line:
            found.append(json.loads(line[line.index("{") :]))
    return found


def retried(stderr: str, action: str | None = None) -> list[dict[str, Any]]:
    return [
        e
        for e in log_events(stderr)
        if e["event"] == "sql store retrying" and action in (None, e["action"])
    ]


def failures(pbx: Pbx) -> list[tuple[dict[str, Any], str]]:
    """Failed runs in the log, each with its reason: a run_failed entry, or a run_finished
    with status failed whose store says why (a store's failure lets the others go on)."""
    found = []
    for entry in pbx.entries():
        if entry["type"] == "run_failed":
            found.append((entry, entry["reason"]))
        elif entry["type"] == "run_finished" and entry["status"] == "failed":
            reasons = [s["failed"] for s in entry["stores"] if s.get("failed")]
            found.append((entry, entry.get("reason") or "; ".join(reasons)))
    return found


def finished_runs(pbx: Pbx) -> list[str]:
    return [e["status"] for e in pbx.entries() if e["type"] == "run_finished"]


def assert_clean_failure(pbx: Pbx, code: int, stderr: str) -> str:
    """Exit 1, no traceback, a failed run in the log whose reason names no data and whose
    count is what the database lost; the reason."""
    assert code == 1, stderr
    assert "Traceback" not in stderr
    found = failures(pbx)
    assert found, pbx.entries()[-3:]
    entry, reason = found[-1]
    assert reason, entry
    rows = pbx.uniqueids() | pbx.kept
    assert not [value for value in rows if value in reason]
    assert entry["deleted"] == pbx.recorded_deletions()
    assert EXPIRED + KEPT - len(pbx.uniqueids()) == pbx.recorded_deletions()
    return reason


def after_batches(pbx: Pbx, count: int, run: subprocess.Popen[str]) -> None:
    wait_for(
        f"{count} batches",
        lambda: pbx.batches_done() >= count or run.poll() is not None,
        timeout=30,
    )
    assert run.poll() is None, run.communicate()


# --- 1. connections cut in the middle of a run -------------------------------------------------


def test_a_connection_cut_mid_run_is_retried_and_the_run_completes(pbx: Pbx) -> None:
    run = pbx.run_once()
    for batches in (2, 5):
        after_batches(pbx, batches, run)
        # in the pause after a batch: the next batch's first sizeable answer (its planning
        # read, never the few bytes of a commit's OK) is cut off part-way through
        pbx.proxy.cut_after(60)
    code, stderr = finish(run)

    assert code == 0, stderr
    assert pbx.proxy.cuts == 2
    assert len(retried(stderr)) >= 2
    assert {e["error"] for e in retried(stderr)} == {"connection lost"}
    assert all(e["delay"] >= 0.5 for e in retried(stderr))
    assert finished_runs(pbx) == ["done"]
    (finished,) = [e for e in pbx.entries() if e["type"] == "run_finished"]
    assert finished["deleted"] == EXPIRED
    pbx.assert_purged()


def test_a_cut_while_the_server_refuses_for_a_moment_is_retried_until_it_is_back(
    pbx: Pbx,
) -> None:
    run = pbx.run_once()
    after_batches(pbx, 3, run)
    pbx.proxy.stop_listening()
    pbx.proxy.cut_all()
    time.sleep(1.2)  # the first retries find nobody listening
    pbx.proxy.normal()
    code, stderr = finish(run)

    assert code == 0, stderr
    assert len(retried(stderr)) >= 2
    pbx.assert_purged()


# --- 2. answers that stop coming -------------------------------------------------------------


def test_answers_delayed_past_the_timeouts_fail_the_run_cleanly_and_the_next_run_succeeds(
    pbx_per_server: Pbx,
) -> None:
    pbx = pbx_per_server
    pbx.write_config(retries=1, pause=0.5)
    run = pbx.run_once()
    after_batches(pbx, 2, run)
    # No answer to the next statement: MariaDB's read timeout and retentiond's own for
    # PostgreSQL give up after statement_timeout + 5 s; the reconnect then waits connect_timeout
    # for the server's greeting
    pbx.proxy.delay(3600)
    started = time.monotonic()
    code, stderr = finish(run)
    seconds = time.monotonic() - started

    assert seconds < 40
    assert len(retried(stderr)) == 1  # retries: 1
    reason = assert_clean_failure(pbx, code, stderr)
    assert "lost the connection to the database 2 times" in reason
    assert not [e for e in pbx.entries() if e["type"] == "run_finished" and e["status"] == "done"]
    deleted = EXPIRED + KEPT - len(pbx.uniqueids())
    assert deleted == pbx.recorded_deletions() >= 2 * BATCH  # nothing beyond the batches recorded
    pbx.assert_intact()

    pbx.proxy.normal()
    pbx.write_config(pause=0)
    code, stderr = finish(pbx.run_once())
    assert code == 0, stderr
    pbx.assert_purged()


def test_a_server_silent_for_a_while_is_given_up_on_and_the_run_completes_on_a_new_connection(
    pbx_per_server: Pbx,
) -> None:
    pbx = pbx_per_server
    run = pbx.run_once()
    after_batches(pbx, 2, run)
    pbx.proxy.delay(3600)  # the open connection stays open, and silent
    time.sleep(7)  # past statement_timeout (1 s) + 5 s
    pbx.proxy.normal()
    code, stderr = finish(run, timeout=40)

    assert code == 0, stderr
    assert "Traceback" not in stderr
    # The next batch's plan is read in the deleting transaction: the delete is what waits
    assert retried(stderr, "deleting a batch")
    assert {e["error"] for e in retried(stderr)} == {"connection lost"}
    if "postgresql" in pbx.database.url:
        silent = "sql store gave up waiting for the database"
        (gave_up,) = [e for e in log_events(stderr) if e["event"] == silent]
        assert gave_up["seconds"] == 6
    assert finished_runs(pbx) == ["done"]
    pbx.assert_purged()


# --- 3. a server that refuses connections ----------------------------------------------------


@pytest.mark.parametrize("how", ["closed at once", "nobody listening"])
def test_a_database_down_when_the_run_starts_is_waited_for(pbx_per_server: Pbx, how: str) -> None:
    pbx = pbx_per_server
    if how == "closed at once":
        pbx.proxy.refuse()  # as a server that is shutting down or restarting
    else:
        pbx.proxy.stop_listening()
    back = threading.Timer(2.0, pbx.proxy.normal)
    back.start()
    try:
        started = time.monotonic()
        code, stderr = finish(pbx.run_once())
    finally:
        back.cancel()

    assert code == 0, stderr
    assert time.monotonic() - started < 30
    waits = retried(stderr, "connecting")
    assert len(waits) >= 2  # 0.5 s, 1 s, ... until the server is back after 2 s
    assert [e["delay"] for e in waits[:2]] == [0.5, 1.0]
    assert {e["error"] for e in waits} == {"cannot connect"}
    assert finished_runs(pbx) == ["done"]
    pbx.assert_purged()


@pytest.mark.parametrize("how", ["closed at once", "nobody listening"])
def test_refused_connections_fail_run_once_cleanly_and_in_bounded_time(pbx: Pbx, how: str) -> None:
    pbx.write_config(retries=2)
    if how == "closed at once":
        pbx.proxy.refuse()
    else:
        pbx.proxy.stop_listening()
    started = time.monotonic()
    code, stderr = finish(pbx.run_once())

    assert time.monotonic() - started < 30
    assert len(retried(stderr, "connecting")) == 2  # retries: 2, after 0.5 s and 1 s
    reason = assert_clean_failure(pbx, code, stderr)
    assert reason.startswith("cannot connect to cdrdb (127.0.0.1:"), reason
    assert "tried 3 times: check that the database server is running" in reason
    assert len(pbx.uniqueids()) == EXPIRED + KEPT  # nothing deleted
    pbx.assert_intact()

    pbx.proxy.normal()
    code, stderr = finish(pbx.run_once())
    assert code == 0, stderr
    pbx.assert_purged()


@pytest.mark.parametrize(
    ("refusal", "hint"),
    [
        # trust authentication on the test PostgreSQL takes any password: a user it does not know
        ("login", "check the user in url and its password"),
        ("database", "check the database name in url"),
        ("host name", "the host name in url does not resolve"),
    ],
)
def test_a_login_the_server_refuses_fails_at_once(
    pbx_per_server: Pbx, refusal: str, hint: str
) -> None:
    pbx = pbx_per_server
    mariadb = pbx.table == "cdr"
    if refusal == "login":
        pbx.write_config(**({"password": "Wr0ng-Pa55"} if mariadb else {"username": "nobody"}))
    elif refusal == "database":
        pbx.write_config(database="no_such_database")
    else:
        pbx.write_config(host="no-such-host.invalid")
    started = time.monotonic()
    code, stderr = finish(pbx.run_once())

    assert time.monotonic() - started < 10
    assert not retried(stderr)
    reason = assert_clean_failure(pbx, code, stderr)
    assert reason.startswith("cannot connect to cdrdb ("), reason
    assert hint in reason
    assert "Wr0ng-Pa55" not in reason  # the password
    assert pbx.proxy.accepted <= 1
    assert len(pbx.uniqueids()) == EXPIRED + KEPT


@pytest.mark.mariadb
def test_the_daemon_stays_up_across_a_failed_run_and_a_later_run_succeeds(
    mariadb_url: str, pbx_on: Callable[[str, str], Pbx], tmp_path: Path
) -> None:
    pbx = pbx_on(mariadb_url, "cdr")
    pbx.write_config(retries=1, pause=0)
    # the start's store check gets through; the catch-up run that follows finds the server gone
    pbx.proxy.allow(1)
    service = Service(pbx.config, tmp_path / "daemon.log")
    try:
        service.wait_ready()
        failed = wait_for("the failed catch-up run", lambda: failures(pbx))
        assert "cannot connect" in failed[0][1]
        assert pbx.proxy.refused >= 1
        assert len(pbx.uniqueids()) == EXPIRED + KEPT
        time.sleep(0.5)
        assert service.process.poll() is None, service.log_file.read_text()
        assert any("call-records failed" in line for line in service.lines())
        failed_before = finished_runs(pbx)
        assert "done" not in failed_before

        pbx.proxy.normal()
        # a changed config queues every rule that has not succeeded since its last schedule
        pbx.write_config(retries=1, pause=0, extra="    description: Call detail records\n")
        service.signal(signal.SIGHUP)
        wait_for("a successful run", lambda: finished_runs(pbx) == [*failed_before, "done"])
        code, _ = service.stop()
        assert code == 0
        assert "Traceback" not in service.log_file.read_text()
    finally:
        service.close()
    pbx.assert_purged()


# --- 4. MariaDB killed and restarted in the middle of a run ------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateMariaDB:
    """A mariadbd of its own on a free port and a temporary datadir, to kill at will without
    disturbing the shared server other tests use."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="retentiond-faults-"))
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        binary = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        install = shutil.which("mariadb-install-db")
        if not Path(binary).exists() or install is None:
            self.remove()
            pytest.skip("mariadbd and mariadb-install-db are needed for a private MariaDB")
        self.binary = binary
        done = subprocess.run(
            [
                install,
                "--no-defaults",
                f"--datadir={self.folder / 'data'}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *self._user(),
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if done.returncode:
            self.remove()
            first = (done.stderr or done.stdout).decode(errors="replace").strip()[:300]
            pytest.skip(f"cannot create a private MariaDB datadir: {first}")

    @staticmethod
    def _user() -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"mariadb+pymysql://root@127.0.0.1:{self.port}"

    def start(self) -> None:
        with (self.folder / "mariadbd.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--no-defaults",
                    f"--datadir={self.folder / 'data'}",
                    f"--port={self.port}",
                    "--bind-address=127.0.0.1",
                    f"--socket={self.folder / 'mariadbd.sock'}",
                    f"--pid-file={self.folder / 'mariadbd.pid'}",
                    "--skip-name-resolve",
                    "--skip-log-bin",
                    "--innodb-buffer-pool-size=32M",
                    *self._user(),
                ],
                stdout=log,
                stderr=log,
            )
        engine = create_engine(self.url, connect_args={"connect_timeout": 1})

        def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                return True
            try:
                with engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
            except Exception:  # not up yet
                return False
            return True

        try:
            wait_for("the private mariadbd", answers, timeout=30)
        finally:
            engine.dispose()
        if self.process.poll() is not None:
            log_text = (self.folder / "mariadbd.log").read_text(errors="replace")[-500:]
            pytest.skip(f"a private mariadbd does not start here: {log_text}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def private_mariadb() -> Iterator[PrivateMariaDB]:
    server = PrivateMariaDB()
    try:
        server.start()
        yield server
    finally:
        server.kill()
        server.remove()


@pytest.mark.mariadb
@pytest.mark.slow
@pytest.mark.parametrize("table", ["cdr", "cel"])
def test_mariadb_killed_and_restarted_mid_run(
    private_mariadb: PrivateMariaDB, pbx_on: Callable[[str, str], Pbx], table: str
) -> None:
    admin = create_engine(private_mariadb.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("CREATE DATABASE asteriskcdrdb CHARACTER SET utf8mb4"))
    admin.dispose()
    pbx = pbx_on(f"{private_mariadb.url}/asteriskcdrdb", table)
    pbx.write_config(retries=5, pause=0.3)
    run = pbx.run_once()
    after_batches(pbx, 3, run)
    private_mariadb.kill()
    time.sleep(1)  # retries meanwhile find nobody listening
    private_mariadb.start()
    code, stderr = finish(run)

    assert "Traceback" not in stderr
    assert retried(stderr)
    if code != 0:
        assert_clean_failure(pbx, code, stderr)
        code, stderr = finish(pbx.run_once())
        assert code == 0, stderr
    pbx.database.close()  # its pooled connections died with the server
    pbx.assert_intact()
    assert pbx.uniqueids() == pbx.kept
    # a batch whose commit was cut off by the kill is checked after the restart: all counted
    assert pbx.recorded_deletions() == EXPIRED
