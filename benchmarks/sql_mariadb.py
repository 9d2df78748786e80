"""SQL purge on MariaDB: retentiond against pt-archiver, a stored-procedure loop and one DELETE.

Each method purges an identical copy of the same FreePBX data (`cdr` as InnoDB and as MyISAM,
`cel` as InnoDB; the DDL and rows of tests/pbxdata.py), about half of it older than the cutoff,
while a writer inserts CDR rows at the PBX's pace and times every insert. Reported per method:
rows deleted, seconds, rows/s and its ratio to pt-archiver and to the stored-procedure floor,
the writer's p50/p99/max latency and errors, the binary log bytes the purge wrote, and the
peak RSS of the purging process. A second, ten times smaller run of retentiond shows how its
time per row and its memory scale.

    .venv/bin/python benchmarks/sql_mariadb.py --rows 2000000       # the default size
    .venv/bin/python benchmarks/sql_mariadb.py --rows 2000          # a smoke test, seconds

The stored-procedure loop runs at each of --floor-batch-sizes (1,000, 5,000 and 20,000 rows)
and retentiond is judged against the fastest of them; retentiond runs as installed (adaptive
batches) and at each of --retentiond-batch-sizes. --slow-log records every statement of every
method in MariaDB's slow log (long_query_time 0) and sums them per kind: deletes, plans,
commits, surveys.

By default a private mariadbd (binary log on) is started in a temporary folder on --port and
removed at the end; --server HOST:PORT uses a running server instead (root, no password).
Exit status: 0 when every method ran and left exactly the rows it should; 1 otherwise. Missed
targets are reported, not failed.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from itertools import cycle
from pathlib import Path
from typing import Any

from _common import (
    ROOT,
    VENV_BIN,
    BenchmarkError,
    Finished,
    Server,
    Writer,
    format_table,
    machine,
    run_measured,
    settle,
    source_version,
    start_server,
    write_json,
)

sys.path.insert(0, str(ROOT / "tests"))
import pbxdata  # the test suite's FreePBX schema and fake calls

METHODS = ("retentiond", "retentiond-auto", "pt-archiver", "sp-loop", "plain-delete")
TARGETS = {
    "vs_pt_archiver": 1.2,  # retentiond rows/s >= 1.2 x pt-archiver's
    "vs_floor": 1.0,  # >= 1.0 x the stored-procedure loop at its best batch size
    "writer_p99_ms": 50.0,
    "peak_rss_mb": 80.0,
    "scaling": 1.3,  # time per expired row at 1/10 and full size within 1.3x
}
GENERATION_CHUNK = 20_000


@dataclass(frozen=True)
class Target:
    """One table to purge in one engine."""

    table: str  # cdr or cel
    engine: str  # InnoDB or MyISAM

    @property
    def time_column(self) -> str:
        return "calldate" if self.table == "cdr" else "eventtime"

    @property
    def label(self) -> str:
        return f"{self.table} {self.engine}"


@dataclass(frozen=True)
class Dataset:
    """The generated rows in a source database: how many, how many expired, the cutoff."""

    database: str
    rows: int
    expired: int
    cutoff: datetime  # naive UTC; nothing was generated within two days of it


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM (a CI timeout) still stops the private server and removes its data.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="retentiond-bench-run-"))
    server = open_server(args)
    try:
        result = benchmark(args, server, workdir)
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            server.stop()
    write_json(args.out, result)
    print(f"\nresults: {args.out}")
    if result["errors"]:
        print("errors:", *result["errors"], sep="\n  ", file=sys.stderr)
        return 1
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=2_000_000, help="rows per table (default 2,000,000)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=1000, help="rows per batch of pt-archiver"
    )
    parser.add_argument(
        "--floor-batch-sizes",
        default="1000,5000,20000",
        help="batch sizes of the stored-procedure loop (retentiond is judged against the best)",
    )
    parser.add_argument(
        "--retentiond-batch-sizes",
        default="1000,5000,20000",
        help="fixed batch sizes retentiond runs at, besides adaptive (retentiond-auto)",
    )
    parser.add_argument(
        "--retentiond-batch-times",
        default="",
        help="batch_time values retentiond-auto also runs at, besides its default (e.g. 0.2,0.5: "
        "an A/B of the adaptive aim in one run)",
    )
    parser.add_argument(
        "--slow-log",
        action="store_true",
        help="log every statement (long_query_time 0) and sum the time per kind of statement",
    )
    parser.add_argument(
        "--rate", type=float, default=100.0, help="writer inserts per second (0: no writer)"
    )
    parser.add_argument(
        "--scaling-rows",
        type=int,
        default=None,
        help="rows of the small retentiond run (default rows/10 from 100,000 rows on; 0: none)",
    )
    parser.add_argument(
        "--targets", default="cdr:InnoDB,cdr:MyISAM,cel:InnoDB", help="table:engine,..."
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="subset of " + ",".join(METHODS)
    )
    parser.add_argument(
        "--server",
        help="HOST:PORT of a running MariaDB (root, no password) instead of a private one",
    )
    parser.add_argument(
        "--port", type=int, default=3407, help="port of the private mariadbd (default 3407)"
    )
    parser.add_argument(
        "--buffer-pool", default="4G", help="innodb_buffer_pool_size of the private mariadbd"
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave the private server and its data running"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "sql_mariadb.json",
        help="JSON results",
    )
    args = parser.parse_args(argv)
    if args.rows < 100:
        parser.error("--rows must be at least 100")
    if args.scaling_rows is None:
        args.scaling_rows = args.rows // 10 if args.rows >= 100_000 else 0
    args.targets = [Target(*part.split(":")) for part in args.targets.split(",") if part]
    for target in args.targets:
        if target.table not in {"cdr", "cel"} or target.engine not in {"InnoDB", "MyISAM"}:
            parser.error(f"unknown target {target.table}:{target.engine}")
    args.methods = [name for name in args.methods.split(",") if name]
    args.floor_batch_sizes = [int(n) for n in args.floor_batch_sizes.split(",") if n]
    args.retentiond_batch_sizes = [int(n) for n in args.retentiond_batch_sizes.split(",") if n]
    args.retentiond_batch_times = [float(n) for n in args.retentiond_batch_times.split(",") if n]
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods: {', '.join(sorted(unknown))}")
    return args


def open_server(args: argparse.Namespace) -> Server:
    if args.server:
        host, _, port = args.server.rpartition(":")
        return Server(host or "127.0.0.1", int(port))
    return start_server(args.port, args.buffer_pool)


# -- the benchmark ---------------------------------------------------------------------------------


def benchmark(args: argparse.Namespace, server: Server, workdir: Path) -> dict[str, Any]:
    settings = server.variables(
        "version",
        "log_bin",
        "binlog_format",
        "binlog_row_image",
        "sync_binlog",
        "innodb_buffer_pool_size",
        "innodb_flush_log_at_trx_commit",
        "key_buffer_size",
        "innodb_lock_wait_timeout",
        "lock_wait_timeout",
    )
    header = {
        "benchmark": "sql_mariadb",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine() | {"mariadb": settings.get("version")},
        "server": settings,
        "retentiond": source_version(),
        "private_server": server.datadir is not None,
        "rows": args.rows,
        "batch_size": args.batch_size,
        "floor_batch_sizes": args.floor_batch_sizes,
        "retentiond_batch_sizes": args.retentiond_batch_sizes,
        "retentiond_batch_times": args.retentiond_batch_times,
        "slow_log": args.slow_log,
        "writer_rate": args.rate,
        "targets": TARGETS,
    }
    print_header(header)
    if settings.get("log_bin") != "ON":
        print(
            "binary log is OFF on this server: binlog bytes are not measured. Run without --server "
            "(a private mariadbd with --log-bin), or start the server with --log-bin --server-id=1."
        )
    tools_missing = [m for m in ("pt-archiver",) if m in args.methods and not _pt_archiver()]
    if tools_missing:
        raise BenchmarkError("pt-archiver not found: apt-get install -y percona-toolkit")
    # As installed (the package compiles its bytecode): a start without .pyc files, as under
    # PYTHONDONTWRITEBYTECODE, would time compiling retentiond's modules on every run (0.2 s).
    subprocess.run(
        [str(VENV_BIN / "python"), "-m", "compileall", "-q", str(ROOT / "retentiond")], check=True
    )

    errors: list[str] = []
    results: list[dict[str, Any]] = []
    tables = sorted({t.table for t in args.targets})
    full = generate(server, "bench_src", args.rows, tables, args.seed)
    for target in args.targets:
        warm_up(server, full, target)
        for method, size, aim in runs(args):
            results.append(
                measure(server, full, target, method, sized(args, size, aim), workdir, errors)
            )
    scaling: list[dict[str, Any]] = []
    if args.scaling_rows and "retentiond" in args.methods:
        small = generate(server, "bench_src_small", args.scaling_rows, tables, args.seed)
        for target in args.targets:
            scaling.append(measure(server, small, target, "retentiond", args, workdir, errors))
        server.query("DROP DATABASE IF EXISTS bench_src_small")
    server.query("DROP DATABASE IF EXISTS bench_src")

    add_ratios(results + scaling)
    verdicts = judge(results, scaling, writer=args.rate > 0, archiver_size=args.batch_size)
    print()
    print(render(results + scaling))
    print()
    if args.slow_log:
        print(render_slow_log(results))
        print()
    for line in verdicts["lines"]:
        print(line)
    return header | {
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "results": results,
        "scaling": scaling,
        "verdicts": verdicts["checks"],
        "errors": errors,
        "workdir": str(workdir),
    }


def runs(args: argparse.Namespace) -> list[tuple[str, int, float | None]]:
    """Each method with its batch size: the loop and retentiond at each of theirs; adaptive
    retentiond with its default aim, then at each of --retentiond-batch-times."""
    sizes = {"sp-loop": args.floor_batch_sizes, "retentiond": args.retentiond_batch_sizes}
    chosen: list[tuple[str, int, float | None]] = []
    for method in args.methods:
        chosen += [(method, size, None) for size in sizes.get(method, [args.batch_size])]
        if method == "retentiond-auto":
            chosen += [(method, args.batch_size, aim) for aim in args.retentiond_batch_times]
    return chosen


def sized(args: argparse.Namespace, size: int, aim: float | None = None) -> argparse.Namespace:
    return argparse.Namespace(**(vars(args) | {"batch_size": size, "batch_time": aim}))


def print_header(header: dict[str, Any]) -> None:
    m, s = header["machine"], header["server"]
    print(
        f"sql_mariadb: {header['rows']:,} rows per table, sp-loop batches "
        f"{header['floor_batch_sizes']}, retentiond {header['retentiond_batch_sizes']} and "
        f"adaptive, pt-archiver {header['batch_size']}, "
        f"writer {header['writer_rate']:g} inserts/s\n"
        f"machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, {m['os']}\n"
        f"MariaDB {m['mariadb']}: log_bin {s.get('log_bin')} ({s.get('binlog_format')}, "
        f"row image {s.get('binlog_row_image')}, sync_binlog {s.get('sync_binlog')}), "
        f"buffer pool {int(s.get('innodb_buffer_pool_size', 0)) // 2**20} MB, "
        f"flush_log_at_trx_commit {s.get('innodb_flush_log_at_trx_commit')}, "
        f"key buffer {int(s.get('key_buffer_size', 0)) // 2**20} MB"
    )


# -- data ------------------------------------------------------------------------------------------


def generate(server: Server, database: str, rows: int, tables: Sequence[str], seed: int) -> Dataset:
    """Fake FreePBX rows over two years in a MyISAM source database, loaded with LOAD DATA.

    Half are older than the cutoff (now minus one calendar year); none lie within two days of
    it, so every method, whenever it computes its cutoff, deletes exactly the same rows. The
    source is MyISAM so that copying from it does not take the InnoDB buffer pool.
    """
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    cutoff = _year_before(now)
    expired = rows // 2
    spans = [
        (_year_before(cutoff), cutoff - timedelta(days=2), expired),
        (cutoff + timedelta(days=2), now - timedelta(hours=1), rows - expired),
    ]
    started = time.perf_counter()
    connection = server.connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION sql_log_bin = 0")
            cursor.execute(f"DROP DATABASE IF EXISTS {database}")
            cursor.execute(f"CREATE DATABASE {database}")
            cursor.execute(f"USE {database}")
            for table in tables:
                cursor.execute(ddl(table, "MyISAM"))
                with tempfile.NamedTemporaryFile("w", suffix=".tsv", encoding="utf-8") as tsv:
                    columns = _write_rows(tsv, table, _times(spans), seed)
                    tsv.flush()
                    cursor.execute(
                        f"LOAD DATA LOCAL INFILE %s INTO TABLE {table} CHARACTER SET utf8mb4 "
                        f"({', '.join(columns)})",
                        (tsv.name,),
                    )
                cursor.execute(f"SELECT COUNT(*) FROM {table}")
                loaded = cursor.fetchone()[0]
                if loaded != rows:
                    raise BenchmarkError(f"{database}.{table}: loaded {loaded} rows of {rows}")
    finally:
        connection.close()
    print(
        f"generated {rows:,} rows per table in {database} ({time.perf_counter() - started:.0f} s)"
    )
    return Dataset(database, rows, expired, cutoff)


def ddl(table: str, engine: str) -> str:
    statement = pbxdata.DDL["mariadb"][table][0]
    return statement.replace("ENGINE=InnoDB", f"ENGINE={engine}")


def _year_before(moment: datetime) -> datetime:
    try:
        return moment.replace(year=moment.year - 1)
    except ValueError:  # 29 February
        return moment.replace(year=moment.year - 1, day=28)


def _times(spans: Sequence[tuple[datetime, datetime, int]]) -> Iterator[datetime]:
    """Evenly spaced times in each span, oldest first: the order a PBX writes them."""
    for first, last, count in spans:
        step = (last - first) / max(count, 1)
        for number in range(count):
            yield (first + step * number).replace(microsecond=0)


def _write_rows(tsv: Any, table: str, times: Iterator[datetime], seed: int) -> list[str]:
    make = pbxdata.cdr_rows if table == "cdr" else pbxdata.cel_rows
    columns: list[str] = []
    chunk_number = 0
    while True:
        chunk = [moment for _, moment in zip(range(GENERATION_CHUNK), times, strict=False)]
        if not chunk:
            return columns
        rows = make(chunk, seed=seed * 100_003 + chunk_number)
        chunk_number += 1
        if not columns:
            columns = list(rows[0])
        tsv.writelines("\t".join(_tsv(row[name]) for name in columns) + "\n" for row in rows)


def _tsv(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = str(value)
    if "\\" in text or "\t" in text or "\n" in text:
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
    return text


def copy(server: Server, data: Dataset, target: Target, database: str) -> None:
    """A fresh copy of the source table in `database`, in the target's engine, not binlogged."""
    connection = server.connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION sql_log_bin = 0")
            cursor.execute(f"DROP DATABASE IF EXISTS {database}")
            cursor.execute(f"CREATE DATABASE {database}")
            cursor.execute(f"USE {database}")
            cursor.execute(ddl(target.table, target.engine))
            cursor.execute(
                f"INSERT INTO {target.table} SELECT * FROM {data.database}.{target.table}"
            )
            cursor.execute(f"ANALYZE TABLE {target.table}")
            cursor.fetchall()
    finally:
        connection.close()


def drop(server: Server, database: str) -> None:
    connection = server.connect()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET SESSION sql_log_bin = 0")
            cursor.execute(f"DROP DATABASE IF EXISTS {database}")
    finally:
        connection.close()


def writer_rows(table: str) -> Iterator[list[Any]]:
    """Rows as Asterisk inserts them now: the call's time is the moment of the insert."""
    make = pbxdata.cdr_rows if table == "cdr" else pbxdata.cel_rows
    column = "calldate" if table == "cdr" else "eventtime"
    templates = make([datetime(2000, 1, 1)] * 100, seed=424242)
    for row in cycle(templates):
        values = dict(row)
        values[column] = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        yield list(values.values())


def writer_statement(table: str) -> str:
    make = pbxdata.cdr_rows if table == "cdr" else pbxdata.cel_rows
    columns = list(make([datetime(2000, 1, 1)], seed=1)[0])
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"


# -- one measurement -------------------------------------------------------------------------------


def measure(
    server: Server,
    data: Dataset,
    target: Target,
    method: str,
    args: argparse.Namespace,
    workdir: Path,
    errors: list[str],
) -> dict[str, Any]:
    database = "bench_" + re.sub(r"\W", "_", method)
    fixed = method in ("retentiond", "sp-loop", "pt-archiver")
    aim = getattr(args, "batch_time", None) if method == "retentiond-auto" else None
    size = f"-{args.batch_size}" if fixed else (f"-t{aim:g}" if aim else "")
    tag = f"{target.table}-{target.engine}-{method}{size}-{data.rows}"
    print(f"{tag}: copying", end="", flush=True)
    copy(server, data, target, database)
    waited = settle(server)
    print(f", settled in {waited:.0f} s, purging", end="", flush=True)
    result: dict[str, Any] = {
        "table": target.table,
        "engine": target.engine,
        "method": method,
        "batch_size": args.batch_size if fixed else None,
        "batch_time": aim,
        "rows": data.rows,
        "expired": data.expired,
    }
    binlog_before = server.binlog_bytes()
    server_cpu_before = server.cpu_seconds()
    key_writes_before = server.status("Key_writes")
    writer = Writer(
        server,
        database,
        writer_statement(target.table),
        lambda: writer_rows(target.table),
        args.rate,
    )
    slow_log = workdir / f"{tag}.slow.log" if getattr(args, "slow_log", False) else None
    if slow_log is not None:
        start_slow_log(server, slow_log)
    try:
        with writer:
            outcome = PURGES[method](server, data, target, database, args, workdir / tag)
    except BenchmarkError as exc:
        outcome = {"error": str(exc)}
    if slow_log is not None:
        stop_slow_log(server)
        result["slow_log"] = slow_log_kinds(slow_log)
    binlog_after = server.binlog_bytes()
    server_cpu_after = server.cpu_seconds()
    key_writes = server.status("Key_writes") - key_writes_before
    report = writer.report()
    result.update(outcome)
    result.update(
        writer_inserts=report.inserts,
        writer_p50_ms=report.p50_ms,
        writer_p99_ms=report.p99_ms,
        writer_max_ms=report.max_ms,
        writer_errors=report.errors,
        writer_backlog=report.backlog,
        lock_errors=report.error_count,
        binlog_bytes=None
        if binlog_before is None or binlog_after is None
        else binlog_after - binlog_before,
        server_cpu_seconds=None
        if server_cpu_before is None or server_cpu_after is None
        else server_cpu_after - server_cpu_before,
        load_average=os.getloadavg()[0],
        # MyISAM index blocks written out of the key cache: at the end of every statement that
        # changed the table, unless another thread already waits to write it
        key_writes=key_writes,
    )
    result.update(check(server, data, target, database, report.inserts))
    if "error" in result:
        errors.append(f"{tag}: {result['error']}")
    elif result["expired_left"] != 0 or result["fresh_left"] != result["fresh_expected"]:
        errors.append(
            f"{tag}: {result['expired_left']} expired rows left, {result['fresh_left']} newer rows "
            f"left of {result['fresh_expected']}"
        )
    drop(server, database)
    seconds = result.get("seconds")
    print(
        f": {result.get('deleted', 0):,} rows in {seconds or 0:.1f} s"
        if seconds
        else f": {result.get('error')}"
    )
    return result


def start_slow_log(server: Server, path: Path) -> None:
    """Every statement from now on into `path`. The loop's statements inside its procedure are
    left out: MariaDB logs each with the time since the CALL began, not its own."""
    for statement in (
        f"SET GLOBAL slow_query_log_file = '{path}'",
        "SET GLOBAL long_query_time = 0",
        "SET GLOBAL slow_query_log = 1",
    ):
        server.query(statement)


def stop_slow_log(server: Server) -> None:
    server.query("SET GLOBAL slow_query_log = 0")
    server.query("SET GLOBAL long_query_time = 10")


SLOW_ENTRY = re.compile(r"^# Query_time: ([\d.]+)\s+Lock_time: ([\d.]+).*?Rows_examined: (\d+)")


def slow_log_kinds(path: Path) -> dict[str, dict[str, float]]:
    """The slow log's statements summed per kind: count, seconds, lock seconds, rows examined."""
    kinds: dict[str, dict[str, float]] = {}
    entry: tuple[float, float, int] | None = None
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return kinds
    for line in lines:
        found = SLOW_ENTRY.match(line)
        if found:
            entry = (float(found[1]), float(found[2]), int(found[3]))
            continue
        if entry is None or line.startswith("#") or not line.strip():
            continue
        upper = line.lstrip().upper()
        if upper.startswith(("SET TIMESTAMP", "USE ")):
            continue
        kind = statement_kind(upper)
        seconds, lock, examined = entry
        entry = None
        if kind is None:
            continue
        total = kinds.setdefault(
            kind, {"count": 0, "seconds": 0.0, "lock_seconds": 0.0, "rows_examined": 0}
        )
        total["count"] += 1
        total["seconds"] += seconds
        total["lock_seconds"] += lock
        total["rows_examined"] += examined
    return kinds


def statement_kind(sql: str) -> str | None:
    """What a logged statement is for; None for the writer's inserts and the benchmark's own."""
    if sql.startswith("INSERT"):
        return "writer insert"
    if sql.startswith("DELETE"):
        return "delete"
    if sql.startswith("COMMIT"):
        return "commit"
    if sql.startswith("CALL"):
        return "call (the whole loop)"
    if sql.startswith("SELECT"):
        if "ROW_NUMBER()" in sql:  # the key walk's segment read before issue 20's one pass
            return "plan (survey's segments)"
        if "walk_group" in sql:
            return "survey (with the walk's segments)"
        if "COUNT(CASE" in sql or "FROM INFORMATION_SCHEMA" in sql:
            return "survey"
        if "OFFSET" in sql or "LIMIT" in sql or " MIN(" in sql:
            return "plan"
        return "other select"
    if sql.startswith(("SET GLOBAL", "SHOW", "FLUSH")):
        return None
    return "other"


def warm_up(server: Server, data: Dataset, target: Target) -> None:
    """One unmeasured copy and purge before a target's methods: whichever method comes first
    would otherwise pay for the server's start-up work (cold buffer pool, background flushing of
    the freshly generated data) and come out slower than the same method run later."""
    print(f"{target.table}-{target.engine}: warming up", end="", flush=True)
    database = "bench_warm_up"
    copy(server, data, target, database)
    settle(server)
    purge_plain(server, data, target, database, argparse.Namespace(), Path())
    drop(server, database)
    waited = settle(server)
    print(f", settled in {waited:.0f} s")


def check(
    server: Server, data: Dataset, target: Target, database: str, inserted: int
) -> dict[str, Any]:
    """What is left: no expired row, and every newer row (generated or inserted meanwhile)."""
    column = target.time_column
    rows = server.query(
        f"SELECT COUNT(CASE WHEN {column} < %s THEN 1 END), "
        f"COUNT(CASE WHEN {column} >= %s THEN 1 END) FROM {target.table}",
        (data.cutoff, data.cutoff),
        database,
    )
    expired_left, fresh_left = (int(value) for value in rows[0])
    return {
        "deleted": data.expired - expired_left,
        "expired_left": expired_left,
        "fresh_left": fresh_left,
        "fresh_expected": data.rows - data.expired + inserted,
    }


def purge_retentiond(
    server: Server,
    data: Dataset,
    target: Target,
    database: str,
    args: argparse.Namespace,
    folder: Path,
    adaptive: bool = False,
) -> dict[str, Any]:
    """retentiond with the methods' batch size; `adaptive`: without batch_size, as installed
    (batches sized to take about 0.2 s each, 0.02 s on MyISAM; or --retentiond-batch-times)."""
    folder.mkdir(parents=True)
    config = folder / "retentiond.yaml"
    batch_size = "" if adaptive else f"\n        batch_size: {args.batch_size}"
    if adaptive and getattr(args, "batch_time", None):
        batch_size = f"\n        batch_time: {args.batch_time}"
    config.write_text(
        f"""version: 1
timezone: UTC
audit:
  path: {folder / "audit.jsonl"}
connections:
  pbx:
    url: mariadb+pymysql://root@{server.host}:{server.port}/{database}?charset=utf8mb4
rules:
  - name: call-records
    keep: 1y
    stores:
      - type: sql
        connection: pbx
        table: {target.table}
        time_column: {target.time_column}{batch_size}
safety:
  max_delete_fraction: 1.0
""",
        encoding="utf-8",
    )
    finished = run_measured(
        [_retentiond(), "-c", str(config), "run", "--once", "--json"], folder, "retentiond"
    )
    outcome = _measured(finished, "retentiond")
    if "error" in outcome:
        return outcome
    try:
        import json

        run = json.loads(finished.stdout)["runs"][0]
        store = run["stores"][0]
        outcome.update(
            reported_deleted=run["deleted"],
            run_seconds=run["seconds"],
            batches=store["batches"],
            status=run["status"],
        )
    except (ValueError, KeyError, IndexError) as exc:
        outcome["error"] = f"cannot read retentiond's --json output: {exc}"
    audit = folder / "audit.jsonl"
    outcome["audit_bytes"] = audit.stat().st_size if audit.exists() else 0
    return outcome


def purge_pt_archiver(
    server: Server,
    data: Dataset,
    target: Target,
    database: str,
    args: argparse.Namespace,
    folder: Path,
) -> dict[str, Any]:
    folder.mkdir(parents=True)
    dsn = f"h={server.host},P={server.port},u=root,D={database},t={target.table},A=utf8mb4"
    if target.table == "cdr":
        dsn += ",i=calldate"  # it would pick accountcode on a table without a primary key
    command = [
        _pt_archiver() or "pt-archiver",
        "--source",
        dsn,
        "--purge",
        "--bulk-delete",
        "--limit",
        str(args.batch_size),
        "--commit-each",
        "--where",
        f"{target.time_column} < '{data.cutoff:%Y-%m-%d %H:%M:%S}'",
        "--no-version-check",
        "--statistics",
        "--why-quit",
        "--sentinel",
        str(folder / "sentinel"),
    ]
    finished = run_measured(command, folder, "pt-archiver")
    outcome = _measured(finished, "pt-archiver")
    found = re.search(r"^DELETE\s+(\d+)", finished.stdout, re.MULTILINE)
    if found:
        outcome["reported_deleted"] = int(found.group(1))
    return outcome


def purge_sp_loop(
    server: Server,
    data: Dataset,
    target: Target,
    database: str,
    args: argparse.Namespace,
    folder: Path,
) -> dict[str, Any]:
    """The floor for batched purging: the batches run inside the server, no round trips."""
    order = "calldate" if target.table == "cdr" else "id"
    connection = server.connect(database)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                f"""CREATE PROCEDURE purge_loop(IN cutoff DATETIME)
                BEGIN
                  DECLARE deleted INT DEFAULT 0;
                  DECLARE total BIGINT DEFAULT 0;
                  REPEAT
                    DELETE FROM {target.table} WHERE {target.time_column} < cutoff
                      ORDER BY {order} LIMIT {int(args.batch_size)};
                    SET deleted = ROW_COUNT();
                    SET total = total + deleted;
                    COMMIT;
                  UNTIL deleted < {int(args.batch_size)} END REPEAT;
                  SELECT total;
                END"""
            )
            started = time.perf_counter()
            cursor.execute("CALL purge_loop(%s)", (data.cutoff,))
            total = cursor.fetchone()[0]
            while cursor.nextset():
                pass
            seconds = time.perf_counter() - started
    finally:
        connection.close()
    return {"seconds": seconds, "reported_deleted": int(total)}


def purge_plain(
    server: Server,
    data: Dataset,
    target: Target,
    database: str,
    args: argparse.Namespace,
    folder: Path,
) -> dict[str, Any]:
    """The contrast: one statement, one transaction (InnoDB) or one table lock (MyISAM)."""
    connection = server.connect(database)
    try:
        with connection.cursor() as cursor:
            started = time.perf_counter()
            deleted = cursor.execute(
                f"DELETE FROM {target.table} WHERE {target.time_column} < %s", (data.cutoff,)
            )
            seconds = time.perf_counter() - started
    finally:
        connection.close()
    return {"seconds": seconds, "reported_deleted": int(deleted)}


PURGES = {
    "retentiond": purge_retentiond,
    "retentiond-auto": partial(purge_retentiond, adaptive=True),
    "pt-archiver": purge_pt_archiver,
    "sp-loop": purge_sp_loop,
    "plain-delete": purge_plain,
}


def _retentiond() -> str:
    installed = VENV_BIN / "retentiond"
    return str(installed) if installed.exists() else "retentiond"


def _pt_archiver() -> str | None:
    import shutil

    return shutil.which("pt-archiver")


def _measured(finished: Finished, name: str) -> dict[str, Any]:
    """A purging subprocess's time and memory, and an error if it did not exit 0."""
    outcome: dict[str, Any] = {
        "seconds": finished.seconds,
        "peak_rss_mb": finished.peak_rss_mb,
        "cpu_seconds": finished.cpu_seconds,
    }
    if finished.returncode != 0:
        output = _tail(finished.stderr or finished.stdout)
        outcome["error"] = f"{name} exit {finished.returncode}: {output}"
    return outcome


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


# -- judging and showing ---------------------------------------------------------------------------


def add_ratios(results: list[dict[str, Any]]) -> None:
    for result in results:
        seconds, deleted = result.get("seconds"), result.get("deleted") or 0
        result["rows_per_s"] = deleted / seconds if seconds and deleted else None
        result["us_per_row"] = seconds / deleted * 1e6 if seconds and deleted else None
    for result in results:
        group = [
            r
            for r in results
            if (r["table"], r["engine"], r["rows"])
            == (result["table"], result["engine"], result["rows"])
        ]
        floors = [r for r in group if r["method"] == "sp-loop" and r.get("rows_per_s")]
        best = max(floors, key=lambda r: r["rows_per_s"], default=None)
        same_size = [r for r in floors if r.get("batch_size") == result.get("batch_size")]
        archiver = [r for r in group if r["method"] == "pt-archiver" and r.get("rows_per_s")]
        own = result["rows_per_s"]
        # the loop at its best batch size; and at this method's own size, where it ran
        result["vs_floor"] = own / best["rows_per_s"] if own and best else None
        result["floor_batch_size"] = best["batch_size"] if best else None
        result["vs_floor_same_size"] = (
            own / same_size[0]["rows_per_s"] if own and same_size else None
        )
        result["vs_pt_archiver"] = own / archiver[0]["rows_per_s"] if own and archiver else None


def judge(
    results: list[dict[str, Any]],
    scaling: list[dict[str, Any]],
    writer: bool = True,
    archiver_size: int = 1000,
) -> dict[str, Any]:
    """The targets each retentiond result meets; the writer's latency only if one ran."""
    checks: list[dict[str, Any]] = []

    def record(name: str, value: float | None, limit: float, at_least: bool) -> None:
        met = value is not None and (value >= limit if at_least else value <= limit)
        op = ">=" if at_least else "<="
        checks.append({"check": name, "value": value, "op": op, "limit": limit, "met": met})

    small = {(r["table"], r["engine"]): r for r in scaling}
    for result in results:
        if result["method"] not in ("retentiond", "retentiond-auto"):
            continue
        adaptive = result["method"] == "retentiond-auto"
        where = f"{result['table']} {result['engine']}" + (
            (f" adaptive {result['batch_time']:g} s" if result.get("batch_time") else " adaptive")
            if adaptive
            else f" batch {result['batch_size']}"
        )
        # pt-archiver runs at --batch-size: compared there only
        if not adaptive and result["batch_size"] == archiver_size:
            record(
                f"{where}: rows/s vs pt-archiver",
                result.get("vs_pt_archiver"),
                TARGETS["vs_pt_archiver"],
                True,
            )
        record(
            f"{where}: rows/s vs sp-loop at its best batch ({result.get('floor_batch_size')})",
            result.get("vs_floor"),
            TARGETS["vs_floor"],
            True,
        )
        if writer:
            record(
                f"{where}: writer p99 ms",
                result.get("writer_p99_ms"),
                TARGETS["writer_p99_ms"],
                False,
            )
        record(f"{where}: writer errors", result.get("lock_errors"), 0, False)
        record(f"{where}: peak RSS MB", result.get("peak_rss_mb"), TARGETS["peak_rss_mb"], False)
        if adaptive:
            continue
        tenth = small.get((result["table"], result["engine"]))
        if tenth is not None and tenth.get("batch_size") == result["batch_size"]:
            record(
                f"{where}: peak RSS MB at {tenth['rows']:,} rows",
                tenth.get("peak_rss_mb"),
                TARGETS["peak_rss_mb"],
                False,
            )
            big, little = result.get("us_per_row"), tenth.get("us_per_row")
            ratio = max(big, little) / min(big, little) if big and little else None
            record(
                f"{where}: time per row, {tenth['rows']:,} vs {result['rows']:,} rows",
                ratio,
                1.3,
                False,
            )
    lines = [
        f"{'met   ' if c['met'] else 'MISSED'}  {c['check']}: "
        f"{'-' if c['value'] is None else format(c['value'], '.2f')} "
        f"({c['op']} {c['limit']:g})"
        for c in checks
    ]
    return {"checks": checks, "lines": lines}


HEADERS = [
    "table",
    "engine",
    "method",
    "rows",
    "deleted",
    "seconds",
    "rows/s",
    "vs pt-arch",
    "vs best floor",
    "vs floor same n",
    "w p50 ms",
    "w p99 ms",
    "w max ms",
    "w errors",
    "w backlog",
    "binlog MB",
    "key writes k",
    "RSS MB",
    "cpu s",
    "db cpu s",
]


def method_label(result: dict[str, Any]) -> str:
    """The method with its batch size, or its adaptive aim where not the default."""
    if result.get("batch_size"):
        return f"{result['method']} {result['batch_size']}"
    if result.get("batch_time"):
        return f"{result['method']} {result['batch_time']:g}s"
    return str(result["method"])


def render(results: list[dict[str, Any]]) -> str:
    rows = [
        [
            r["table"],
            r["engine"],
            method_label(r) + (" ERROR" if "error" in r else ""),
            r["rows"],
            r.get("deleted"),
            r.get("seconds"),
            round(r["rows_per_s"]) if r.get("rows_per_s") else None,
            r.get("vs_pt_archiver"),
            r.get("vs_floor"),
            r.get("vs_floor_same_size"),
            r.get("writer_p50_ms"),
            r.get("writer_p99_ms"),
            r.get("writer_max_ms"),
            r.get("lock_errors"),
            r.get("writer_backlog"),
            None if r.get("binlog_bytes") is None else r["binlog_bytes"] / 2**20,
            None if r.get("key_writes") is None else r["key_writes"] / 1000,
            r.get("peak_rss_mb"),
            r.get("cpu_seconds"),
            r.get("server_cpu_seconds"),
        ]
        for r in results
    ]
    return format_table(HEADERS, rows)


def render_slow_log(results: list[dict[str, Any]]) -> str:
    """Seconds per kind of statement, from the slow log (long_query_time 0)."""
    rows = []
    for r in results:
        for kind, total in sorted((r.get("slow_log") or {}).items()):
            rows.append(
                [
                    f"{r['table']} {r['engine']}",
                    method_label(r),
                    kind,
                    int(total["count"]),
                    total["seconds"],
                    total["seconds"] / total["count"] * 1000 if total["count"] else None,
                    total["lock_seconds"],
                    int(total["rows_examined"]),
                ]
            )
    headers = [
        "target",
        "method",
        "statements",
        "count",
        "seconds",
        "ms each",
        "lock s",
        "examined",
    ]
    return format_table(headers, rows)


if __name__ == "__main__":
    sys.exit(main())
