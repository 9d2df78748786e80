"""retentiond vs a plain DELETE on 3CX's cl_* call history (PostgreSQL), with a PBX writing.

One template database is filled once with `--calls` calls over two retention periods (about
half expired; no call within 1.5 days of the cutoff, so every method removes the same calls),
from the generator the tests use (tests/threecx_schema.py). Each method gets its own copy
(CREATE DATABASE ... TEMPLATE) and purges it while a writer inserts new calls with all their rows
at `--rate` per second, as 3CX does during business hours. Reported per method: wall time, the
writer's latency (p50, p99, max) and errors during the purge, what is left, autovacuum's activity
during the purge and in `--vacuum-wait` seconds after it, and the tables' bloat then (pgstattuple).
It runs its own PostgreSQL server (initdb in a temporary folder, `--port`, autovacuum on as
everywhere but on the test server), unless `--server HOST:PORT` names one.

The methods: `retentiond`; `procedure`: a PL/pgSQL procedure deleting the expired calls in
retentiond's dependency order in batches of retentiond's first batch size (500, or --batch-size)
with a COMMIT per batch, and `procedure-N` the same in batches of N calls; `plain-delete`, one
DELETE per table in one transaction. The floor is the fastest procedure run: retentiond's
batches adapt to about 0.5 s each unless --batch-size fixes them.

`--target cdr`: Asterisk cdr_pgsql's cdr table instead (one row per call), purged by the generic
sql store, by a procedure deleting the oldest rows by ctid with a COMMIT per batch, and by one
plain DELETE, while the writer inserts cdr rows.

    .venv/bin/python benchmarks/pg_3cx.py                 # 1,000,000 calls
    .venv/bin/python benchmarks/pg_3cx.py --calls 500     # seconds, for CI

Targets (issues 7, 20): retentiond's writer p99 <= 50 ms, no writer error, and at least 0.9x the
floor's speed (wall time <= floor / 0.9). Exit 1 on an error of
the benchmark or a purge (wrong rows left, a failed run), not on a missed target.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _files_common as common

common.import_test_fixtures()
from pbxdata import POSTGRES_CDR, cdr_rows  # noqa: E402
from threecx_schema import CL_QUALITY, CL_TABLES, cl_history  # noqa: E402

NAME = "pg_3cx"
ZONE = ZoneInfo("Europe/Berlin")
TABLES = ("cl_party_info", "cl_calls", "cl_participants", "cl_segments", "cl_quality")
CDR_TABLES = ("cdr",)
PAGE = 8192  # PostgreSQL's block size
GAP = timedelta(days=1.5)  # no call this close to the cutoff: methods agree on what expired
CHUNK = 20_000  # calls generated and copied at a time
TARGET_P99_MS = 50.0
TARGET_FLOOR_RATIO = 0.9
DEFAULT_BATCH = 500  # retentiond's batch_size for 3cx_call_history

# The floor: retentiond's batches without a client. Same order as retentiond (segments, quality,
# participants, the party rows no remaining participant points to, the calls), COMMIT per batch.
PROCEDURE = """
CREATE OR REPLACE PROCEDURE bench_purge_calls(cutoff timestamptz, batch integer)
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    infos bigint[];
BEGIN
    LOOP
        SELECT array_agg(id) INTO ids FROM (
            SELECT id FROM cl_calls WHERE start_time < cutoff
            ORDER BY start_time LIMIT batch FOR UPDATE
        ) AS due;
        EXIT WHEN ids IS NULL;
        DELETE FROM cl_segments WHERE call_id = ANY(ids);
        DELETE FROM cl_quality WHERE call_id = ANY(ids);
        WITH gone AS (DELETE FROM cl_participants WHERE call_id = ANY(ids) RETURNING info_id)
        SELECT array_agg(DISTINCT info_id) INTO infos FROM gone WHERE info_id IS NOT NULL;
        DELETE FROM cl_party_info AS party WHERE party.id = ANY(infos)
            AND NOT EXISTS (SELECT 1 FROM cl_participants AS p WHERE p.info_id = party.id);
        DELETE FROM cl_calls WHERE id = ANY(ids);
        COMMIT;
    END LOOP;
END
$$
"""

PLAIN_DELETE = [
    # What an administrator would write: dependents first, in one transaction.
    "CREATE TEMP TABLE gone_calls ON COMMIT DROP AS "
    "SELECT id FROM cl_calls WHERE start_time < %(cutoff)s",
    "CREATE TEMP TABLE gone_parties ON COMMIT DROP AS SELECT DISTINCT p.info_id "
    "FROM cl_participants AS p JOIN gone_calls AS g ON p.call_id = g.id",
    "DELETE FROM cl_segments AS s USING gone_calls AS g WHERE s.call_id = g.id",
    "DELETE FROM cl_quality AS q USING gone_calls AS g WHERE q.call_id = g.id",
    "DELETE FROM cl_participants AS p USING gone_calls AS g WHERE p.call_id = g.id",
    "DELETE FROM cl_party_info AS party USING gone_parties AS g WHERE party.id = g.info_id "
    "AND NOT EXISTS (SELECT 1 FROM cl_participants AS p WHERE p.info_id = party.id)",
    "DELETE FROM cl_calls AS c USING gone_calls AS g WHERE c.id = g.id",
]

# Asterisk's cdr_pgsql table has no key: the floor deletes the oldest rows by ctid, as many as
# a batch holds, with a COMMIT per batch.
CDR_PROCEDURE = """
CREATE OR REPLACE PROCEDURE bench_purge_calls(cutoff timestamp, batch integer)
LANGUAGE plpgsql AS $$
DECLARE
    gone integer;
BEGIN
    LOOP
        DELETE FROM cdr WHERE ctid IN (
            SELECT ctid FROM cdr WHERE calldate < cutoff ORDER BY calldate LIMIT batch
        );
        GET DIAGNOSTICS gone = ROW_COUNT;
        EXIT WHEN gone = 0;
        COMMIT;
    END LOOP;
END
$$
"""

CDR_PLAIN_DELETE = ["DELETE FROM cdr WHERE calldate < %(cutoff)s"]


def tables_of(target: str) -> tuple[str, ...]:
    return CDR_TABLES if target == "cdr" else TABLES


def local_cutoff(target: str, cutoff: datetime) -> datetime:
    """cdr.calldate is a timestamp without time zone in the PBX's zone, as Asterisk writes it."""
    return cutoff.astimezone(ZONE).replace(tzinfo=None) if target == "cdr" else cutoff


# -- a private PostgreSQL server -------------------------------------------------------------

PG_BIN = Path("/usr/lib/postgresql")
SETTINGS = (
    "autovacuum",
    "autovacuum_naptime",
    "autovacuum_vacuum_scale_factor",
    "autovacuum_vacuum_insert_scale_factor",
    "log_autovacuum_min_duration",
    "shared_buffers",
    "synchronous_commit",
    "fsync",
    "wal_level",
    "max_wal_size",
)


@dataclass
class PrivateServer:
    """A throwaway PostgreSQL cluster (initdb, pg_ctl) in a temporary folder.

    Private so that autovacuum runs as it does on a PBX's server (the test server has it off),
    and so the benchmark neither disturbs the test databases nor is disturbed by them.
    """

    port: int
    folder: Path
    bindir: Path

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.data.exists():
            _as_postgres(
                [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                check=False,
            )
        shutil.rmtree(self.folder, ignore_errors=True)


def _as_postgres(command: list[str], *, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """PostgreSQL refuses to run as root: as root, run its tools as the postgres user."""
    if os.geteuid() == 0:
        command = ["runuser", "-u", "postgres", "--", *command]
    return subprocess.run(command, check=check, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def postgres_bindir() -> Path:
    """The newest installed server's bin folder (Debian: /usr/lib/postgresql/VERSION/bin)."""
    found = sorted(
        (path for path in PG_BIN.glob("*/bin") if (path / "initdb").exists()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    if not found:
        sys.exit("no PostgreSQL server found under /usr/lib/postgresql: apt-get install postgresql")
    return found[-1]


def start_private_server(port: int, shared_buffers: str) -> PrivateServer:
    """initdb a cluster with trust authentication on 127.0.0.1 and start it on `port`.

    Everything else is the server's defaults (those of Debian's clusters too): autovacuum on,
    a one-minute naptime, synchronous_commit on, wal_level replica. shared_buffers is set
    explicitly (the built-in 128 MB would make the figures depend on the page cache); autovacuum
    runs are logged to the server's log in the folder.
    """
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            sys.exit(f"port {port} is in use; pass --port with a free one or --server HOST:PORT")
    bindir = postgres_bindir()
    folder = Path(tempfile.mkdtemp(prefix="retentiond-bench-pg-"))
    server = PrivateServer(port, folder, bindir)
    try:
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
        _as_postgres(
            [
                str(bindir / "initdb"),
                "-D",
                str(server.data),
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",  # a throwaway cluster: the benchmark's own writes are fsynced
            ]
        )
        options = " ".join(
            f"-c {name}={value}"
            for name, value in (
                ("listen_addresses", "127.0.0.1"),
                ("port", port),
                ("unix_socket_directories", folder),
                ("shared_buffers", shared_buffers),
                ("log_autovacuum_min_duration", 0),
            )
        )
        _as_postgres(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(server.data),
                "-l",
                str(folder / "postgresql.log"),
                "-o",
                options,
                "-w",
                "-t",
                "120",
                "start",
            ]
        )
    except BaseException as error:
        if isinstance(error, subprocess.CalledProcessError) and error.stdout:
            print(error.stdout.decode(errors="replace")[-2000:], file=sys.stderr)
        log = folder / "postgresql.log"
        if log.exists():
            print(log.read_text(errors="replace")[-2000:], file=sys.stderr)
        server.stop()
        raise
    return server


# -- the data --------------------------------------------------------------------------------


def call_starts(calls: int, keep: timedelta, now: datetime, seed: int) -> list[datetime]:
    """Start times over two retention periods, ascending (3CX's ids grow with time)."""
    rng = random.Random(seed)
    span = 2 * keep
    starts = []
    while len(starts) < calls:
        age = timedelta(seconds=rng.uniform(3600, span.total_seconds()))
        if abs(age - keep) > GAP:
            starts.append((now - age).replace(microsecond=0))
    starts.sort()
    return starts


@dataclass
class Loader:
    """Copies chunks of generated calls into the cl_* tables with globally unique ids."""

    connection: psycopg.Connection[Any]
    shared: dict[tuple[Any, Any], int] = field(default_factory=dict)  # (dn_type, dn) → party id
    next_id: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 1))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))

    def load(self, starts: Sequence[datetime], seed: int) -> None:
        rows = cl_history(starts, seed=seed).rows
        party_map: dict[int, int] = {}
        parties = []
        for party in rows["cl_party_info"]:
            key = (party["dn_type"], party["dn"])
            if party["dn_type"] in (0, 2):  # an extension or a ring group: one row for all calls
                if key in self.shared:
                    party_map[party["id"]] = self.shared[key]
                    continue
                self.shared[key] = self._take("cl_party_info")
                party_map[party["id"]] = self.shared[key]
            else:
                party_map[party["id"]] = self._take("cl_party_info")
            parties.append({**party, "id": party_map[party["id"]]})
        call_base = self.next_id["cl_calls"] - 1
        part_base = self.next_id["cl_participants"] - 1
        seg_base = self.next_id["cl_segments"] - 1
        self.next_id["cl_calls"] += len(rows["cl_calls"])
        self.next_id["cl_participants"] += len(rows["cl_participants"])
        self.next_id["cl_segments"] += len(rows["cl_segments"])
        calls = [{**call, "id": call["id"] + call_base} for call in rows["cl_calls"]]
        participants = [
            {
                **p,
                "id": p["id"] + part_base,
                "call_id": p["call_id"] + call_base,
                "info_id": party_map[p["info_id"]],
            }
            for p in rows["cl_participants"]
        ]
        segments = [
            {
                **s,
                "id": s["id"] + seg_base,
                "call_id": s["call_id"] + call_base,
                "src_part_id": s["src_part_id"] + part_base,
                "dst_part_id": s["dst_part_id"] + part_base,
                "action_party_id": s["action_party_id"] + part_base,
            }
            for s in rows["cl_segments"]
        ]
        quality = [{**q, "call_id": q["call_id"] + call_base} for q in rows["cl_quality"]]
        for table, table_rows in (
            ("cl_party_info", parties),
            ("cl_calls", calls),
            ("cl_participants", participants),
            ("cl_segments", segments),
            ("cl_quality", quality),
        ):
            self._copy(table, table_rows)

    def _take(self, table: str) -> int:
        value = self.next_id[table]
        self.next_id[table] += 1
        return value

    def _copy(self, table: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        columns = list(rows[0])
        statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        with self.connection.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row([row[column] for column in columns])
        self.counts[table] += len(rows)


def build_template(dsn: str, name: str, starts: list[datetime], seed: int) -> dict[str, Any]:
    admin(dsn, f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"')
    started = time.perf_counter()
    with psycopg.connect(database_dsn(dsn, name)) as connection:
        for statement in (*CL_TABLES, *CL_QUALITY):
            connection.execute(statement)
        loader = Loader(connection)
        for index in range(0, len(starts), CHUNK):
            loader.load(starts[index : index + CHUNK], seed=seed + index)
            connection.commit()
        for table in ("cl_party_info", "cl_calls", "cl_participants", "cl_segments"):
            connection.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT COALESCE(MAX(id), 1) FROM {table}))"
            )
        connection.commit()
        connection.autocommit = True
        connection.execute("VACUUM ANALYZE")
        connection.execute("CHECKPOINT")
        size = connection.execute("SELECT pg_database_size(current_database())").fetchone()
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "rows": loader.counts,
        "bytes": size[0] if size else None,
    }


def build_cdr_template(dsn: str, name: str, starts: list[datetime], seed: int) -> dict[str, Any]:
    """A cdr table of Asterisk's cdr_pgsql with one row per call, calldate in local time."""
    admin(dsn, f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"')
    started = time.perf_counter()
    with psycopg.connect(database_dsn(dsn, name)) as connection:
        for statement in POSTGRES_CDR:
            connection.execute(statement)
        loader = Loader(connection)
        loader.counts = {"cdr": 0}
        for index in range(0, len(starts), CHUNK):
            chunk = [
                start.astimezone(ZONE).replace(tzinfo=None)
                for start in starts[index : index + CHUNK]
            ]
            loader._copy("cdr", cdr_rows(chunk, seed=seed + index))
            connection.commit()
        connection.autocommit = True
        connection.execute("VACUUM ANALYZE")
        connection.execute("CHECKPOINT")
        size = connection.execute("SELECT pg_database_size(current_database())").fetchone()
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "rows": loader.counts,
        "bytes": size[0] if size else None,
    }


def cdr_counts(dsn: str, cutoff: datetime) -> dict[str, int]:
    with psycopg.connect(dsn) as connection:
        row = connection.execute(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE calldate < %s) FROM cdr", (cutoff,)
        ).fetchone()
    assert row is not None
    return {"cdr": row[0], "calls": row[0], "expired_calls": row[1]}


def database_dsn(dsn: str, name: str) -> str:
    return f"{dsn.rstrip('/')}/{name}"


def admin(dsn: str, *statements: str) -> None:
    with psycopg.connect(database_dsn(dsn, "postgres"), autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement)


def counts(dsn: str, cutoff: datetime) -> dict[str, int]:
    """Rows per table, expired calls, and rows no call (or participant) accounts for."""
    with psycopg.connect(dsn) as connection:
        result = {
            table: connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # type: ignore[index]
            for table in TABLES
        }
        queries = {
            "expired_calls": "SELECT COUNT(*) FROM cl_calls WHERE start_time < %(cutoff)s",
            "orphan_participants": "SELECT COUNT(*) FROM cl_participants p "
            "WHERE NOT EXISTS (SELECT 1 FROM cl_calls c WHERE c.id = p.call_id)",
            "orphan_segments": "SELECT COUNT(*) FROM cl_segments s "
            "WHERE NOT EXISTS (SELECT 1 FROM cl_calls c WHERE c.id = s.call_id)",
            "orphan_quality": "SELECT COUNT(*) FROM cl_quality q "
            "WHERE NOT EXISTS (SELECT 1 FROM cl_calls c WHERE c.id = q.call_id)",
            "unused_parties": "SELECT COUNT(*) FROM cl_party_info i "
            "WHERE NOT EXISTS (SELECT 1 FROM cl_participants p WHERE p.info_id = i.id)",
        }
        for key, query in queries.items():
            result[key] = connection.execute(query, {"cutoff": cutoff}).fetchone()[0]  # type: ignore[index]
    result["calls"] = result["cl_calls"]
    return result


# -- the writer: a PBX recording calls -------------------------------------------------------


@dataclass
class CallShape:
    """One call's rows to insert, with references by position instead of ids."""

    outside: dict[str, Any]
    call: dict[str, Any]
    participants: list[tuple[str | None, dict[str, Any]]]  # shared party key or None (outside)
    segments: list[tuple[int, int, int | None, dict[str, Any]]]  # src, dst, action positions
    quality: dict[str, Any] | None


def call_shapes(count: int, seed: int) -> list[CallShape]:
    now = datetime.now(UTC)
    rows = cl_history([now] * count, seed=seed).rows
    parties = {party["id"]: party for party in rows["cl_party_info"]}
    shapes: dict[int, CallShape] = {}
    for call in rows["cl_calls"]:
        shapes[call["id"]] = CallShape({}, _without(call, "id"), [], [], None)
    positions: dict[int, int] = {}
    for p in rows["cl_participants"]:
        shape = shapes[p["call_id"]]
        party = parties[p["info_id"]]
        shared = f"{party['dn_type']}:{party['dn']}" if party["dn_type"] in (0, 2) else None
        if shared is None:
            shape.outside = _without(party, "id")
        positions[p["id"]] = len(shape.participants)
        shape.participants.append((shared, _without(p, "id", "call_id", "info_id")))
    for s in rows["cl_segments"]:
        shapes[s["call_id"]].segments.append(
            (
                positions[s["src_part_id"]],
                positions[s["dst_part_id"]],
                positions.get(s["action_party_id"]),
                _without(s, "id", "call_id", "src_part_id", "dst_part_id", "action_party_id"),
            )
        )
    for q in rows["cl_quality"]:
        shapes[q["call_id"]].quality = _without(q, "call_id")
    return list(shapes.values())


def _without(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key not in keys}


def _insert(table: str, row: dict[str, Any], returning: bool = True) -> str:
    columns = ", ".join(row)
    values = ", ".join(f"%({column})s" for column in row)
    tail = " RETURNING id" if returning else ""
    return f"INSERT INTO {table} ({columns}) VALUES ({values}){tail}"


@dataclass
class Sample:
    at: float  # seconds since the writer started
    latency_ms: float
    late_ms: float  # how far behind its schedule the call started
    error: str | None = None


class Writer(threading.Thread):
    """Inserts one call (party, call, participants, segments, quality) per 1/rate seconds,
    each in its own transaction, and times each commit."""

    def __init__(self, dsn: str, rate: float, shapes: list[CallShape]) -> None:
        super().__init__(daemon=True)
        self.dsn, self.interval, self.shapes = dsn, 1 / rate, shapes
        self.samples: list[Sample] = []
        self.halt = threading.Event()
        self.ready = threading.Event()
        self.started_at = 0.0
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as error:  # reported by the main thread
            self.failure = error
            self.ready.set()

    def _prepare(self, connection: psycopg.Connection[Any]) -> Any:
        return {
            f"{dn_type}:{dn}": party_id
            for dn_type, dn, party_id in connection.execute(
                "SELECT dn_type, dn, MIN(id) FROM cl_party_info "
                "WHERE dn_type IN (0, 2) GROUP BY dn_type, dn"
            )
        }

    def _write(self, connection: psycopg.Connection[Any], number: int, state: Any) -> None:
        self._insert_call(connection, self.shapes[number % len(self.shapes)], state)

    def _run(self) -> None:
        with psycopg.connect(self.dsn) as connection:
            state = self._prepare(connection)
            connection.commit()
            self.started_at = time.perf_counter()
            self.ready.set()
            due = self.started_at
            number = 0
            while not self.halt.is_set():
                now = time.perf_counter()
                if now < due:
                    time.sleep(due - now)
                begun = time.perf_counter()
                late = max(0.0, begun - due)
                error = None
                try:
                    self._write(connection, number, state)
                except psycopg.Error as failure:
                    connection.rollback()
                    error = type(failure).__name__
                ended = time.perf_counter()
                self.samples.append(
                    Sample(begun - self.started_at, (ended - begun) * 1000, late * 1000, error)
                )
                number += 1
                due += self.interval
                if ended - due > 1.0:
                    due = ended  # far behind: do not burst to catch up

    def _insert_call(
        self, connection: psycopg.Connection[Any], shape: CallShape, shared: dict[str, int]
    ) -> None:
        start = datetime.now(UTC)
        shift = start - shape.call["start_time"]
        with connection.transaction(), connection.cursor() as cursor:
            cursor.execute(_insert("cl_party_info", shape.outside), shape.outside)
            outside = cursor.fetchone()[0]  # type: ignore[index]
            call = {**shape.call, "start_time": start, "end_time": shape.call["end_time"] + shift}
            cursor.execute(_insert("cl_calls", call), call)
            call_id = cursor.fetchone()[0]  # type: ignore[index]
            ids = []
            for key, participant in shape.participants:
                row = {
                    **_shifted(participant, shift),
                    "call_id": call_id,
                    "info_id": outside if key is None else shared[key],
                }
                cursor.execute(_insert("cl_participants", row), row)
                ids.append(cursor.fetchone()[0])  # type: ignore[index]
            for src, dst, action, segment in shape.segments:
                row = {
                    **_shifted(segment, shift),
                    "call_id": call_id,
                    "src_part_id": ids[src],
                    "dst_part_id": ids[dst],
                    "action_party_id": None if action is None else ids[action],
                }
                cursor.execute(_insert("cl_segments", row, returning=False), row)
            if shape.quality is not None:
                row = {**_shifted(shape.quality, shift), "call_id": call_id}
                cursor.execute(_insert("cl_quality", row, returning=False), row)

    def stop(self) -> None:
        self.halt.set()
        self.join(30)


class CdrWriter(Writer):
    """Asterisk's cdr_pgsql: one cdr row per call, each INSERT its own transaction."""

    def __init__(self, dsn: str, rate: float, rows: list[dict[str, Any]]) -> None:
        super().__init__(dsn, rate, [])
        self.rows = rows

    def _prepare(self, connection: psycopg.Connection[Any]) -> Any:
        return None

    def _write(self, connection: psycopg.Connection[Any], number: int, state: Any) -> None:
        row = {
            **self.rows[number % len(self.rows)],
            "calldate": datetime.now(ZONE).replace(tzinfo=None, microsecond=0),
        }
        with connection.transaction():
            connection.execute(_insert("cdr", row, returning=False), row)


def _shifted(row: dict[str, Any], shift: timedelta) -> dict[str, Any]:
    return {
        key: value + shift if isinstance(value, datetime) else value for key, value in row.items()
    }


def writer_figures(samples: Sequence[Sample], start: float, end: float) -> dict[str, Any]:
    """The writer's calls begun within [start, end) (seconds since it started)."""
    window = [sample for sample in samples if start <= sample.at < end]
    ok = [sample.latency_ms for sample in window if sample.error is None]
    errors: dict[str, int] = {}
    for sample in window:
        if sample.error:
            errors[sample.error] = errors.get(sample.error, 0) + 1
    seconds = max(end - start, 1e-9)
    return {
        "calls": len(window),
        "rate_per_s": round(len(window) / seconds, 1),
        "p50_ms": _round(common.percentile(ok, 0.50)),
        "p99_ms": _round(common.percentile(ok, 0.99)),
        "max_ms": _round(max(ok) if ok else None),
        "late_p99_ms": _round(common.percentile([s.late_ms for s in window], 0.99)),
        "errors": sum(errors.values()),
        "errors_by_kind": errors,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


# -- the methods -----------------------------------------------------------------------------


def purge_plain(dsn: str, cutoff: datetime, target: str) -> dict[str, Any]:
    started = time.perf_counter()
    deleted: dict[str, int] = {}
    with psycopg.connect(dsn) as connection, connection.cursor() as cursor:
        for statement in CDR_PLAIN_DELETE if target == "cdr" else PLAIN_DELETE:
            cursor.execute(statement, {"cutoff": cutoff})
            if statement.startswith("DELETE"):
                deleted[statement.split()[2]] = cursor.rowcount
        connection.commit()
    return {"wall_s": time.perf_counter() - started, "returncode": 0, "deleted": deleted}


def purge_retentiond(
    dsn: str, workdir: Path, *, target: str, keep_days: int, batch_size: int | None
) -> dict[str, Any]:
    audit = workdir / "audit.jsonl"
    store: dict[str, Any] = {"type": "3cx_call_history", "connection": "threecx"}
    if target == "cdr":  # as the README's Asterisk example has it
        store = {"type": "sql", "connection": "threecx", "table": "cdr", "time_column": "calldate"}
    if batch_size:
        store["batch_size"] = batch_size
    config = {
        "version": 1,
        "timezone": str(ZONE),
        "audit": {"path": str(audit)},
        "connections": {"threecx": {"url": dsn.replace("postgresql://", "postgresql+psycopg://")}},
        "rules": [{"name": "call-records", "keep": f"{keep_days}d", "stores": [store]}],
        "safety": {"max_delete_fraction": 1.0},
    }
    path = workdir / "retentiond.yaml"
    path.write_text(common.yaml_config(config))
    measured = common.measure(
        [str(common.RETENTIOND), "-c", str(path), "run", "--once", "--json"], workdir=workdir
    )
    result = measured.brief()
    result["audit"] = common.audit_figures(audit) if audit.exists() else None
    try:
        runs = json.loads(measured.stdout)["runs"]
        result["runs"] = runs
        result["deleted"] = {"calls": sum(run["deleted"] for run in runs)}
        result["batches"] = sum(store["batches"] for run in runs for store in run["stores"])
        del result["stdout"]
    except (ValueError, KeyError):
        pass
    return result


def run_method(
    method: str, args: argparse.Namespace, template: str, cutoff: datetime, workdir: Path
) -> dict[str, Any]:
    name = f"{template}_{method}"
    admin(
        args.dsn,
        f'DROP DATABASE IF EXISTS "{name}"',
        f'CREATE DATABASE "{name}" TEMPLATE "{template}"',
    )
    dsn = database_dsn(args.dsn, name)
    tables = tables_of(args.target)
    cutoff = local_cutoff(args.target, cutoff)
    count = cdr_counts if args.target == "cdr" else counts
    before = count(dsn, cutoff)
    stats_before = table_stats(dsn, tables)
    writer: Writer
    if args.target == "cdr":
        now = datetime.now(ZONE).replace(tzinfo=None)
        writer = CdrWriter(dsn, args.rate, cdr_rows([now] * 500, seed=args.seed + 1))
    else:
        writer = Writer(dsn, args.rate, call_shapes(500, seed=args.seed + 1))
    writer.start()
    writer.ready.wait(30)
    if writer.failure:
        raise writer.failure
    time.sleep(args.baseline_seconds)
    load_before = os.getloadavg()[0]
    purge_start = time.perf_counter() - writer.started_at
    try:
        if method == "retentiond":
            result = purge_retentiond(
                dsn,
                workdir,
                target=args.target,
                keep_days=args.keep_days,
                batch_size=args.batch_size,
            )
        elif method.startswith("procedure"):
            _, _, size = method.partition("-")
            batch = int(size) if size else (args.batch_size or DEFAULT_BATCH)
            result = purge_procedure(dsn, cutoff, batch, args.target)
        else:
            result = purge_plain(dsn, cutoff, args.target)
    finally:
        purge_end = time.perf_counter() - writer.started_at
        load_after = os.getloadavg()[0]
        writer.stop()
    if writer.failure:
        raise writer.failure
    ended_at = datetime.now(UTC)
    stats_end = table_stats(dsn, tables)
    runs = watch_autovacuum(dsn, tables, stats_before, ended_at, args.vacuum_wait)
    stats_waited = table_stats(dsn, tables)
    result["autovacuum"] = vacuum_figures(stats_before, stats_end, stats_waited)
    result["autovacuum"].update(runs, wait_s=args.vacuum_wait)
    result["bloat"] = bloat(dsn, tables, stats_before)  # before the counts' scans prune pages
    after = count(dsn, cutoff)
    written = writer_figures(writer.samples, 0, 1e9)
    result.update(
        method=method,
        purge_s=round(purge_end - purge_start, 2),
        # the machine is shared: the 1-minute load average as the purge started and ended
        load_1m=[round(load_before, 2), round(load_after, 2)],
        writer_baseline=writer_figures(writer.samples, 0, purge_start),
        writer=writer_figures(writer.samples, purge_start, purge_end),
        before=before,
        after=after,
    )
    calls_written = written["calls"] - written["errors"]
    problems = []
    if result.get("returncode") != 0:
        problems.append(f"exit code {result.get('returncode')}")
    if after["expired_calls"]:
        problems.append(f"{after['expired_calls']} expired calls left")
    if after["calls"] != before["calls"] - before["expired_calls"] + calls_written:
        problems.append("calls left differ from the young calls plus the writer's")
    for key in ("orphan_participants", "orphan_segments", "orphan_quality", "unused_parties"):
        if after.get(key, 0) > before.get(key, 0):
            problems.append(f"{key}: {after[key]}")
    result["problems"] = problems
    if not args.keep_databases:
        admin(args.dsn, f'DROP DATABASE IF EXISTS "{name}"')
    return result


def purge_procedure(dsn: str, cutoff: datetime, batch: int, target: str) -> dict[str, Any]:
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as connection:  # CALL may COMMIT only outside
        connection.execute(CDR_PROCEDURE if target == "cdr" else PROCEDURE)
        connection.execute("CALL bench_purge_calls(%s, %s)", (cutoff, batch))
        connection.execute("DROP PROCEDURE bench_purge_calls")
    return {"wall_s": time.perf_counter() - started, "returncode": 0, "batch_size": batch}


# -- autovacuum and bloat --------------------------------------------------------------------

STATS = (
    "SELECT relname, n_live_tup, n_dead_tup, autovacuum_count, autoanalyze_count, "
    "vacuum_count, last_autovacuum, pg_total_relation_size(relid), pg_indexes_size(relid) "
    "FROM pg_stat_user_tables WHERE relname = ANY(%s)"
)


def table_stats(dsn: str, tables: Sequence[str]) -> dict[str, dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("SELECT pg_stat_clear_snapshot()")
        rows = connection.execute(STATS, (list(tables),)).fetchall()
    return {
        row[0]: {
            "live": row[1],
            "dead": row[2],
            "autovacuums": row[3],
            "autoanalyzes": row[4],
            "vacuums": row[5],
            "last_autovacuum": row[6].isoformat() if row[6] else None,
            "bytes": row[7],
            "index_bytes": row[8],
        }
        for row in rows
    }


def vacuum_figures(
    before: dict[str, dict[str, Any]], at_end: dict[str, dict[str, Any]], waited: dict[str, Any]
) -> dict[str, Any]:
    """Dead rows and autovacuum/autoanalyze runs (deltas from `before`) when the purge ended and
    after the wait."""
    figures = {}
    for moment, stats in (("at_end", at_end), ("after_wait", waited)):
        figures[moment] = {
            "dead_rows": sum(stats[t]["dead"] for t in stats),
            "autovacuums": sum(stats[t]["autovacuums"] - before[t]["autovacuums"] for t in stats),
            "autoanalyzes": sum(
                stats[t]["autoanalyzes"] - before[t]["autoanalyzes"] for t in stats
            ),
            "autovacuumed": sorted(
                t for t in stats if stats[t]["autovacuums"] > before[t]["autovacuums"]
            ),
            "bytes": sum(stats[t]["bytes"] for t in stats),
        }
    figures["dead_rows_before"] = sum(before[t]["dead"] for t in before)
    figures["bytes_before"] = sum(before[t]["bytes"] for t in before)
    return figures


def watch_autovacuum(
    dsn: str,
    tables: Sequence[str],
    before: dict[str, dict[str, Any]],
    ended_at: datetime,
    wait: float,
) -> dict[str, Any]:
    """Wait `wait` seconds after the purge, noting when autovacuum finished on each table
    (seconds after the purge's end; negative: during it) and which it was still vacuuming."""
    finished: dict[str, float] = {}
    running: list[str] = []
    deadline = time.monotonic() + wait
    while True:
        stats = table_stats(dsn, tables)
        for table, row in stats.items():
            if row["autovacuums"] > before[table]["autovacuums"] and row["last_autovacuum"]:
                last = datetime.fromisoformat(row["last_autovacuum"])
                finished[table] = round((last - ended_at).total_seconds(), 1)
        with psycopg.connect(dsn, autocommit=True) as connection:
            running = sorted(
                str(row[0])
                for row in connection.execute(
                    "SELECT relid::regclass FROM pg_stat_progress_vacuum "
                    "WHERE datname = current_database()"
                )
            )
        if time.monotonic() >= deadline:
            break
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    return {
        "finished_s": dict(sorted(finished.items())),  # the latest run per table
        "running_at_wait_end": running,
    }


def bloat(dsn: str, tables: Sequence[str], before: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The five tables after the purge and the wait: heap bytes against live tuple bytes
    (pgstattuple: dead rows plus free space are the heap's bloat), and the B-tree indexes' size
    and leaf density (pgstatindex; a fresh index is about 90% dense)."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        try:
            connection.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        except psycopg.Error:
            return {"pgstattuple": False}
        heap = dead = free = live = 0
        per_table = {}
        for table in tables:
            row = connection.execute(
                "SELECT table_len, tuple_len, dead_tuple_len, free_space FROM pgstattuple(%s)",
                (table,),
            ).fetchone()
            assert row is not None
            heap, live, dead, free = heap + row[0], live + row[1], dead + row[2], free + row[3]
            per_table[table] = {
                "heap_bytes": row[0],
                "live_bytes": row[1],
                "bloat_pct": round(100 * (row[2] + row[3]) / row[0], 1) if row[0] else 0.0,
            }
        index_bytes = index_used = 0.0
        weighted_density = 0.0
        for size, leaf_pages, internal_pages, density in connection.execute(
            "SELECT pg_relation_size(i.indexrelid), s.leaf_pages, s.internal_pages, "
            "s.avg_leaf_density FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid "
            "JOIN pg_class x ON x.oid = i.indexrelid JOIN pg_am a ON a.oid = x.relam "
            "CROSS JOIN LATERAL pgstatindex(i.indexrelid::regclass::text) AS s "
            "WHERE t.relname = ANY(%s) AND a.amname = 'btree'",
            (list(tables),),
        ).fetchall():
            index_bytes += size
            if density == density:  # NaN for an empty index
                weighted_density += size * density
                # Used: the leaves' filled share, the inner pages, the meta page; the rest is
                # empty or deleted pages kept for reuse (VACUUM never shrinks a B-tree's file)
                index_used += (leaf_pages * density / 100 + internal_pages + 1) * PAGE
        total = connection.execute(
            "SELECT SUM(pg_total_relation_size(c.oid)) FROM pg_class c WHERE c.relname = ANY(%s)",
            (list(tables),),
        ).fetchone()
    total_bytes = int(total[0]) if total and total[0] is not None else 0
    return {
        "pgstattuple": True,
        "total_bytes_before": sum(before[t]["bytes"] for t in before),
        "total_bytes": total_bytes,
        "heap_bytes": heap,
        "live_bytes": live,
        "dead_bytes": dead,
        "free_bytes": free,
        "bloat_pct": round(100 * (dead + free) / heap, 1) if heap else 0.0,
        "total_vs_live": round(total_bytes / live, 2) if live else None,
        "index_bytes": int(index_bytes),
        "index_leaf_density_pct": round(weighted_density / index_bytes, 1) if index_bytes else None,
        "index_free_pct": round(100 * (1 - index_used / index_bytes), 1) if index_bytes else None,
        "tables": per_table,
    }


def template_exists(dsn: str, name: str) -> bool:
    with psycopg.connect(database_dsn(dsn, "postgres")) as connection:
        row = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def server_settings(dsn: str) -> dict[str, str]:
    """The settings that decide autovacuum's figures and each commit's cost."""
    with psycopg.connect(database_dsn(dsn, "postgres")) as connection:
        return {name: str(connection.execute(f"SHOW {name}").fetchone()[0]) for name in SETTINGS}  # type: ignore[index]


def postgres_version(dsn: str) -> str:
    with psycopg.connect(database_dsn(dsn, "postgres")) as connection:
        row = connection.execute("SHOW server_version").fetchone()
    return f"PostgreSQL {row[0] if row else '?'}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=100.0, help="writer calls per second")
    parser.add_argument("--keep-days", type=int, default=180)
    parser.add_argument("--batch-size", type=int, help="retentiond's batch_size (default: its own)")
    parser.add_argument("--baseline-seconds", type=float, default=2.0)
    parser.add_argument(
        "--target",
        choices=("3cx", "cdr"),
        default="3cx",
        help="3CX's cl_* call history, or Asterisk cdr_pgsql's cdr table (one row per call)",
    )
    parser.add_argument(
        "--methods",
        help="default: retentiond,procedure,procedure-1000,procedure-5000,procedure-20000,"
        "plain-delete (cdr: without procedure)",
    )
    parser.add_argument(
        "--vacuum-wait",
        type=float,
        default=60.0,
        help="seconds to wait after each purge for autovacuum before reading the bloat",
    )
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="use this running server (user postgres, trust) instead of a private one",
    )
    parser.add_argument("--port", type=int, default=5433, help="the private server's port")
    parser.add_argument("--shared-buffers", default="1GB", help="the private server's")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep-databases", action="store_true")
    parser.add_argument(
        "--reuse-template",
        action="store_true",
        help="use the template database an earlier run kept, if there is one, and keep it",
    )
    parser.add_argument("--out", type=Path, default=common.RESULTS / f"{NAME}.json")
    args = parser.parse_args(argv)
    if args.methods is None:
        args.methods = "retentiond,procedure,procedure-1000,procedure-5000,procedure-20000"
        args.methods += ",plain-delete"
        if args.target == "cdr":
            args.methods = args.methods.replace(",procedure,", ",")
    methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    unknown = {
        method
        for method in methods
        if method not in ("retentiond", "plain-delete", "procedure")
        and not re.fullmatch(r"procedure-[1-9][0-9]*", method)
    }
    if unknown:
        parser.error(f"unknown methods: {', '.join(sorted(unknown))}")

    # A SIGTERM (a CI timeout) still stops the private server and removes its folder.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server = None
    if args.server:
        host, _, port = args.server.rpartition(":")
        args.dsn = f"postgresql://postgres@{host or '127.0.0.1'}:{port}"
    else:
        server = start_private_server(args.port, args.shared_buffers)
        args.dsn = server.dsn
    try:
        return run(args, methods, private=server is not None)
    finally:
        if server is not None:
            server.stop()


def run(args: argparse.Namespace, methods: list[str], *, private: bool) -> int:
    keep = timedelta(days=args.keep_days)
    now = datetime.now(ZONE)
    cutoff = now - keep
    template = f"retentiond_bench_{args.target}_{args.calls}"
    print(f"building {args.calls:,} calls in database {template} ...", flush=True)
    if args.reuse_template and template_exists(args.dsn, template):
        # Built by an earlier run moments ago (--keep-databases): the cutoff moved by as much,
        # and no call lies within GAP of it, so the expired calls are the same.
        build = {"seconds": 0.0, "rows": {}, "bytes": None, "reused": True}
    else:
        build = (build_cdr_template if args.target == "cdr" else build_template)(
            args.dsn, template, call_starts(args.calls, keep, now, args.seed), args.seed
        )
    print(f"  {build['seconds']} s, {sum(build['rows'].values()):,} rows", flush=True)
    # As installed (the package compiles its bytecode): a start without .pyc files, as under
    # PYTHONDONTWRITEBYTECODE, would time compiling retentiond's modules on every run.
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(common.REPO / "retentiond")], check=True
    )
    info = common.machine(Path(tempfile.gettempdir()), postgres=postgres_version(args.dsn))
    info["postgresql_settings"] = server_settings(args.dsn)
    info["postgresql_server"] = "private (initdb)" if private else args.dsn
    results: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    try:
        for method in methods:
            print(f"purging with {method} ...", flush=True)
            with tempfile.TemporaryDirectory(prefix="retentiond-bench-") as workdir:
                results[method] = run_method(method, args, template, cutoff, Path(workdir))
            errors.extend(f"{method}: {problem}" for problem in results[method]["problems"])
    finally:
        if not (args.keep_databases or args.reuse_template):
            admin(args.dsn, f'DROP DATABASE IF EXISTS "{template}"')

    # The floor: the fastest procedure run (retentiond's batches adapt unless --batch-size)
    procedures = {m: r["purge_s"] for m, r in results.items() if m.startswith("procedure")}
    floor_method = min(procedures, key=procedures.__getitem__) if procedures else None
    floor = procedures[floor_method] if floor_method else None
    same_size = results.get("procedure", {}).get("purge_s")
    plain = results.get("plain-delete", {}).get("purge_s")
    for result in results.values():
        # A purge of a tiny table can round to 0.000 s: no ratio then, not a division by zero
        took = result["purge_s"]
        result["vs_floor"] = round(floor / took, 2) if floor and took else None
        result["vs_procedure"] = round(same_size / took, 2) if same_size and took else None
        result["vs_plain_delete"] = round(plain / took, 2) if plain and took else None
    rows = []
    for method, result in results.items():
        writer = result["writer"]
        vacuum = result["autovacuum"]
        rows.append(
            [
                method,
                result["purge_s"],
                result["vs_floor"],
                result["vs_procedure"],
                result["vs_plain_delete"],
                result["before"]["expired_calls"],
                result["after"]["calls"],
                writer["calls"],
                writer["p50_ms"],
                writer["p99_ms"],
                writer["max_ms"],
                writer["errors"],
                vacuum["at_end"]["dead_rows"],
                vacuum["at_end"]["autovacuums"],
                vacuum["after_wait"]["autovacuums"],
                vacuum["after_wait"]["dead_rows"],
                result["bloat"].get("bloat_pct"),
                result["bloat"].get("index_free_pct"),
                result["bloat"].get("total_vs_live"),
            ]
        )
    print()
    what = "Asterisk cdr_pgsql cdr" if args.target == "cdr" else "3CX cl_*"
    print(f"{what} purge, {args.calls:,} calls, keep {args.keep_days}d, writer {args.rate:g}/s")
    print(
        f"x floor: the fastest procedure ({floor_method}) / method's time; x proc: `procedure` "
        f"(batches of {args.batch_size or DEFAULT_BATCH}) / method's time; x plain: plain-delete"
    )
    print(common.machine_line(info))
    print("server: " + ", ".join(f"{k} {v}" for k, v in info["postgresql_settings"].items()))
    print(
        common.table(
            [
                "method",
                "purge s",
                "x floor",
                "x proc",
                "x plain",
                "expired calls",
                "calls left",
                "writer calls",
                "p50 ms",
                "p99 ms",
                "max ms",
                "errors",
                "dead at end",
                "autovac during",
                "autovac +wait",
                "dead +wait",
                "heap bloat %",
                "index free %",
                "size/live",
            ],
            rows,
        )
    )
    targets = {}
    if "retentiond" in results:
        writer = results["retentiond"]["writer"]
        targets = {
            "writer_p99_ms<=50": writer["p99_ms"] is not None and writer["p99_ms"] <= TARGET_P99_MS,
            "writer_errors==0": writer["errors"] == 0,
        }
        ratio = results["retentiond"]["vs_floor"]
        if floor:
            targets["vs_floor>=0.9"] = ratio is not None and ratio >= TARGET_FLOOR_RATIO
        print(
            "targets (retentiond): "
            + ", ".join(f"{k}: {common.fmt(v)}" for k, v in targets.items())
        )
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    out = common.write_json(
        args.out,
        {
            "benchmark": NAME,
            "machine": info,
            "parameters": {
                "target": args.target,
                "calls": args.calls,
                "rate": args.rate,
                "keep_days": args.keep_days,
                "batch_size": args.batch_size,
                "vacuum_wait_s": args.vacuum_wait,
                "shared_buffers": None if args.server else args.shared_buffers,
                "cutoff": cutoff.isoformat(),
                "seed": args.seed,
            },
            "build": build,
            "results": results,
            "floor": {"method": floor_method, "purge_s": floor},
            "targets": targets,
            "errors": errors,
        },
    )
    print(f"written {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
