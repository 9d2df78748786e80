"""What every benchmark needs: the machine, a throwaway MariaDB server, subprocesses with their
peak memory, a PBX-like writer measuring its insert latency, and the table and JSON of results.

Benchmark-only code: it may use what the test helpers use (tests/pbxdata.py), never the
package's internals, so it measures retentiond the way an administrator runs it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"


class BenchmarkError(Exception):
    """Something the benchmark could not do (a method failed, a copy differs): exit non-zero."""


# -- the machine -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM and OS: the header of every result."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "ram_gb": round(ram / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def source_version() -> dict[str, Any]:
    """The commit the measured retentiond was built from, and whether the tree had changes."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "retentiond"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "uncommitted_changes": None}
    return {"commit": commit, "uncommitted_changes": bool(changes)}


# -- a MariaDB server ------------------------------------------------------------------------------


@dataclass
class Server:
    """A MariaDB server to benchmark against: host, port, and the folder it lives in (if ours)."""

    host: str
    port: int
    datadir: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    def connect(self, database: str | None = None, **options: Any) -> pymysql.Connection[Any]:
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user="root",
            password="",
            database=database,
            charset="utf8mb4",
            autocommit=True,
            local_infile=True,
            **options,
        )

    def query(
        self, sql: str, args: Any = None, database: str | None = None
    ) -> list[tuple[Any, ...]]:
        connection = self.connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, args)
                return list(cursor.fetchall())
        finally:
            connection.close()

    def variables(self, *names: str) -> dict[str, str]:
        rows = self.query(
            "SELECT LOWER(VARIABLE_NAME), VARIABLE_VALUE FROM information_schema.GLOBAL_VARIABLES "
            f"WHERE LOWER(VARIABLE_NAME) IN ({', '.join(['%s'] * len(names))})",
            list(names),
        )
        return {name: value for name, value in rows}

    def status(self, name: str) -> int:
        """A global status counter, such as Key_writes."""
        rows = self.query("SHOW GLOBAL STATUS LIKE %s", (name,))
        return int(rows[0][1]) if rows else 0

    def binlog_bytes(self) -> int | None:
        """Bytes in all binary logs so far; None when the binary log is off."""
        if self.variables("log_bin").get("log_bin") != "ON":
            return None
        return sum(int(row[1]) for row in self.query("SHOW BINARY LOGS"))

    def cpu_seconds(self) -> float | None:
        """CPU time the private server has used so far (None for a server not started here)."""
        if self.process is None:
            return None
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, remove: bool = True) -> None:
        """Shut the server down cleanly; `remove`: and delete its folder (if it is ours)."""
        if self.process is None:
            return
        try:
            self.query("SHUTDOWN")
            self.process.wait(timeout=120)
        except (pymysql.MySQLError, subprocess.TimeoutExpired):
            self.process.terminate()
            self.process.wait(timeout=60)
        self.process = None
        if remove and self.datadir is not None:
            shutil.rmtree(self.datadir, ignore_errors=True)


def start_server(
    port: int, buffer_pool: str, workdir: Path | None = None, data_from: Path | None = None
) -> Server:
    """A private mariadbd with the binary log on, in a temporary data folder, on `port`.

    Private so that the benchmark neither disturbs the test databases nor is disturbed by them,
    and so the binary log can be on (MIXED, FULL row image: Debian's defaults once enabled).
    `data_from`: a copy of that data folder (one a server was cleanly shut down on) instead of
    a new one, so that a large table is built once and purged many times.
    """
    mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
    if not Path(mariadbd).exists() or install is None:
        raise BenchmarkError(
            "mariadbd and mariadb-install-db are needed: apt-get install mariadb-server"
        )
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            # Else the readiness check below, and the SHUTDOWN at the end, would reach that server
            raise BenchmarkError(f"port {port} is in use; pass --port with a free one")
    folder = Path(tempfile.mkdtemp(prefix="retentiond-bench-", dir=workdir))
    data = folder / "data"
    user = ["--user=root"] if os.geteuid() == 0 else []
    if data_from is not None:
        # cp, not copytree: --reflink makes a 12 GB copy cheap where the file system can
        subprocess.run(["cp", "-a", "--reflink=auto", str(data_from), str(data)], check=True)
    else:
        subprocess.run(
            [
                install,
                "--no-defaults",
                f"--datadir={data}",
                *user,
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    log = (folder / "mariadbd.log").open("wb")  # lives as long as the server
    process = subprocess.Popen(
        [
            mariadbd,
            "--no-defaults",
            *user,
            f"--datadir={data}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            f"--socket={folder / 'mariadbd.sock'}",
            f"--pid-file={folder / 'mariadbd.pid'}",
            "--log-bin=binlog",  # in the data folder, named relative to it: a copy starts too
            "--server-id=1",
            "--binlog-format=MIXED",
            f"--innodb-buffer-pool-size={buffer_pool}",
            "--innodb-log-file-size=1G",
            "--innodb-io-capacity=2000",
            "--key-buffer-size=512M",
            "--max-allowed-packet=64M",
            "--local-infile=1",
            "--skip-name-resolve",
        ],
        stdout=log,
        stderr=log,
    )
    server = Server("127.0.0.1", port, folder, process)
    deadline = time.monotonic() + 60
    while True:
        # A server that exited (its port taken meanwhile) must not pass for another one answering
        if process.poll() is not None or time.monotonic() > deadline:
            server.process = None
            raise BenchmarkError(
                f"mariadbd on port {port} did not start; see {folder / 'mariadbd.log'}"
            )
        try:
            server.query("SELECT 1")
            return server
        except pymysql.MySQLError:
            time.sleep(0.3)


def settle(server: Server, limit: float = 120.0) -> float:
    """Let InnoDB flush dirty pages and purge old row versions, so each method starts alike."""
    started = time.monotonic()
    server.query("SET GLOBAL innodb_max_dirty_pages_pct = 0")
    try:
        while time.monotonic() - started < limit:
            status = dict(
                server.query(
                    "SHOW GLOBAL STATUS WHERE Variable_name IN "
                    "('Innodb_buffer_pool_pages_dirty', 'Innodb_history_list_length')"
                )
            )
            if int(status.get("Innodb_buffer_pool_pages_dirty", 0)) < 500 and (
                int(status.get("Innodb_history_list_length", 0)) < 1000
            ):
                break
            time.sleep(0.5)
    finally:
        server.query("SET GLOBAL innodb_max_dirty_pages_pct = 90")
    return time.monotonic() - started


# -- subprocesses ----------------------------------------------------------------------------------


@dataclass
class Finished:
    returncode: int
    seconds: float
    peak_rss_mb: float
    cpu_seconds: float  # user + system time of the process
    stdout: str
    stderr: str


def run_measured(command: Sequence[str], workdir: Path, name: str) -> Finished:
    """Run `command` to its end: wall time, its peak RSS, CPU time, stdout and stderr.

    The peak is the process's own VmHWM, read while it runs and once more after it exited but
    before it is reaped. Not wait4's ru_maxrss: Linux carries the RSS the forked child had
    before exec (a copy of this benchmark's memory) into it.
    """
    out_path, err_path = workdir / f"{name}.out", workdir / f"{name}.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(list(command), stdout=out, stderr=err)
        peak_kb = 0
        while True:
            peak_kb = max(peak_kb, _vm_hwm_kb(process.pid))
            exited = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            if exited is not None:
                break
            time.sleep(0.02)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
    return Finished(
        returncode=process.returncode,
        seconds=seconds,
        peak_rss_mb=peak_kb / 1024,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )


def _vm_hwm_kb(pid: int) -> int:
    """The process's peak resident set so far, in kB (0 once it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


# -- the PBX writing meanwhile ---------------------------------------------------------------------


@dataclass
class WriterReport:
    inserts: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    errors: dict[str, int] = field(default_factory=dict)
    backlog: int = 0  # inserts due but not yet sent when the purge ended

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


class Writer:
    """Inserts one row at a time at a steady rate, as Asterisk's CDR backend does, and times each.

    Latency is per statement (send to commit). A blocked insert delays the ones after it, which
    then go back to back until the schedule is caught up, as a real CDR queue would.
    The session does not write the binary log, so the log measures only the purge.
    At rate 0 it inserts nothing: the purge runs alone.
    """

    def __init__(
        self,
        server: Server,
        database: str,
        statement: str,
        rows: Callable[[], Iterator[Sequence[Any]]],
        rate: float,
    ) -> None:
        self._server = server
        self._database = database
        self._statement = statement
        self._rows = rows
        self._interval = 1.0 / rate if rate > 0 else None
        self._stop = threading.Event()
        self._latencies: list[float] = []
        self._errors: dict[str, int] = {}
        self._thread = threading.Thread(target=self._loop, name="pbx-writer", daemon=True)
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._backlog = 0

    def __enter__(self) -> Writer:
        if self._interval is None:
            return self
        self._thread.start()
        self._ready.wait(30)
        if self._failure is not None:
            raise BenchmarkError(f"the writer could not start: {self._failure}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(120)

    def report(self) -> WriterReport:
        latencies = sorted(self._latencies)
        if not latencies:
            return WriterReport(0, None, None, None, dict(self._errors), self._backlog)
        return WriterReport(
            inserts=len(latencies),
            p50_ms=statistics.median(latencies) * 1000,
            p99_ms=_percentile(latencies, 0.99) * 1000,
            max_ms=latencies[-1] * 1000,
            errors=dict(self._errors),
            backlog=self._backlog,
        )

    def _open(self) -> pymysql.Connection[Any]:
        connection = self._server.connect(self._database)
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION sql_log_bin = 0")
        return connection

    def _loop(self) -> None:
        try:
            connection = self._open()
        except BaseException as exc:  # reported by __enter__
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        interval = self._interval
        assert interval is not None  # no thread at rate 0
        rows = self._rows()
        due = time.perf_counter()
        try:
            while not self._stop.is_set():
                pause = due - time.perf_counter()
                if pause > 0 and self._stop.wait(pause):
                    break
                due += interval
                row = next(rows)
                started = time.perf_counter()
                try:
                    with connection.cursor() as cursor:
                        cursor.execute(self._statement, row)
                    self._latencies.append(time.perf_counter() - started)
                except pymysql.MySQLError as exc:
                    code = str(exc.args[0]) if exc.args else type(exc).__name__
                    self._errors[code] = self._errors.get(code, 0) + 1
                    if isinstance(exc, pymysql.OperationalError) and code in {"2006", "2013"}:
                        connection = self._open()
            # A PBX's CDR queue this long when the purge ended: rows that waited behind it
            self._backlog = max(0, int((time.perf_counter() - due) / interval))
        finally:
            connection.close()


def _percentile(ordered: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of an ordered list."""
    rank = max(1, min(len(ordered), int(-(-share * len(ordered) // 1))))
    return ordered[rank - 1]


# -- output ----------------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table, numbers right-aligned."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [
        max(len(h), *(len(row[i]) for row in cells)) if cells else len(h)
        for i, h in enumerate(headers)
    ]
    numeric = [all(_is_number(row[i]) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in cells)])


def _is_number(value: Any) -> bool:
    return value is None or isinstance(value, int | float)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    temporary.replace(path)
