"""Scale on MariaDB: retentiond purging a FreePBX `cel` of 50,000,000 rows against one of 2,000,000.

FreePBX writes 10-20 CEL rows per call, so 50 million rows are a few years of a busy PBX. Both
tables are built the same way (the rows of tests/pbxdata.py over two years, half older than the
cutoff, loaded straight into InnoDB in chunks) and purged by retentiond as installed (adaptive
batches) while a writer inserts CEL rows at the PBX's pace. Reported per size: the build's time
and the table's size on disk, then the purge's seconds, time per expired row, peak RSS of the run
process, and the writer's p50/p99/max latency. Checked: time per expired row at the large size
within 1.2x of the small one, peak RSS at most 100 MB (80 MB for the run process), writer p99 at
most 50 ms.

    .venv/bin/python benchmarks/sql_scale.py                           # 50,000,000 and 2,000,000
    .venv/bin/python benchmarks/sql_scale.py --rows 2000 --small-rows 1000  # a smoke test

Space: the table is built chunk by chunk (a TSV of --chunk rows at a time, removed after it is
loaded), so the only large thing on disk is the InnoDB table itself (about 12 GB at 50 million
rows) in a private mariadbd's data folder under --workdir (default the temporary folder).
The small table is purged and dropped before the large one is built.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

from _common import (
    ROOT,
    BenchmarkError,
    Server,
    Writer,
    format_table,
    machine,
    settle,
    source_version,
    start_server,
    write_json,
)
from sql_mariadb import (
    Dataset,
    Target,
    _times,
    _write_rows,
    _year_before,
    check,
    ddl,
    purge_retentiond,
    writer_rows,
    writer_statement,
)

TARGETS = {
    "scaling": 1.2,  # time per expired row at the large size within 1.2x of the small size
    "peak_rss_mb": 80.0,  # the run process at every size
    "writer_p99_ms": 50.0,
}
CEL = Target("cel", "InnoDB")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="retentiond-bench-run-", dir=args.workdir))
    try:
        result = benchmark(args, workdir)
    except BenchmarkError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
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
    parser.add_argument("--rows", type=int, default=50_000_000, help="rows of the large cel")
    parser.add_argument("--small-rows", type=int, default=2_000_000, help="rows of the small cel")
    parser.add_argument("--chunk", type=int, default=500_000, help="rows per loaded TSV chunk")
    parser.add_argument("--rate", type=float, default=100.0, help="writer inserts per second")
    parser.add_argument("--port", type=int, default=3408, help="port of the private mariadbd")
    parser.add_argument("--buffer-pool", default="4G", help="innodb_buffer_pool_size")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the server's data folder goes"
    )
    parser.add_argument(
        "--snapshots",
        type=Path,
        default=None,
        help="keep each built table's data folder here and reuse it on the next run (for a day)",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "sql_scale.json"
    )
    args = parser.parse_args(argv)
    if args.small_rows < 100 or args.rows < args.small_rows:
        parser.error("--small-rows must be at least 100 and --rows at least --small-rows")
    return args


def benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    header = {
        "benchmark": "sql_scale",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "retentiond": source_version(),
        "rows": args.rows,
        "small_rows": args.small_rows,
        "writer_rate": args.rate,
        "buffer_pool": args.buffer_pool,
        "targets": TARGETS,
    }
    m = header["machine"]
    print(
        f"sql_scale: cel InnoDB, {args.small_rows:,} and {args.rows:,} rows, writer "
        f"{args.rate:g} inserts/s\nmachine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM"
    )
    errors: list[str] = []
    results = []
    for rows in (args.small_rows, args.rows):
        results.append(size(rows, args, workdir, errors))
    small, large = results
    checks = judge(small, large)
    print()
    print(render(results))
    print()
    for line in checks["lines"]:
        print(line)
    return header | {
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "results": results,
        "verdicts": checks["checks"],
        "errors": errors,
        "workdir": str(workdir),
    }


def size(rows: int, args: argparse.Namespace, workdir: Path, errors: list[str]) -> dict[str, Any]:
    """A private server holding a cel of `rows` (built, or copied from its snapshot), purged by
    retentiond under the writer, checked, and removed."""
    database = f"bench_cel_{rows}"
    server, data, built = prepared(rows, database, args, workdir)
    try:
        server.query("SET GLOBAL innodb_stats_persistent = ON")
        result: dict[str, Any] = {
            "rows": rows,
            "expired": data.expired,
            "mariadb": server.variables("version").get("version"),
        } | built
        print(f"cel {rows:,}: settling", end="", flush=True)
        waited = settle(server, limit=1800.0)
        print(f" {waited:.0f} s, purging", end="", flush=True)
        result["settle_seconds"] = round(waited, 1)
        result.update(purge(server, data, database, args, workdir / f"cel-{rows}"))
    finally:
        server.stop()
    if "error" in result:
        errors.append(f"cel {rows}: {result['error']}")
    elif result["expired_left"] != 0 or result["fresh_left"] != result["fresh_expected"]:
        errors.append(
            f"cel {rows}: {result['expired_left']} expired rows left, {result['fresh_left']} "
            f"newer rows left of {result['fresh_expected']}"
        )
    seconds = result.get("seconds")
    if seconds and result.get("deleted"):
        result["us_per_row"] = seconds / result["deleted"] * 1e6
        result["rows_per_second"] = result["deleted"] / seconds
    print(f": {result.get('deleted', 0):,} rows in {seconds or 0:.1f} s")
    return result


def prepared(
    rows: int, database: str, args: argparse.Namespace, workdir: Path
) -> tuple[Server, Dataset, dict[str, Any]]:
    """A running server with the table: from the snapshot when there is a fresh one, else built
    (and, with --snapshots, its data folder moved there and the server started on a copy)."""
    snapshot = args.snapshots / f"cel-{rows}-seed{args.seed}" if args.snapshots else None
    marker = snapshot / "built.json" if snapshot else None
    if snapshot and marker and marker.exists():
        built = json.loads(marker.read_text(encoding="utf-8"))
        age = datetime.now(UTC) - datetime.fromisoformat(built["built_at"])
        if age > timedelta(days=1):
            # Nothing was built within two days of the cutoff: a day later it still splits alike
            raise BenchmarkError(f"{snapshot} is older than a day: remove it to build it again")
        started = time.perf_counter()
        server = start_server(args.port, args.buffer_pool, args.workdir, snapshot / "data")
        built["restore_seconds"] = round(time.perf_counter() - started, 1)
        print(f"cel {rows:,}: restored from {snapshot} in {built['restore_seconds']:.0f} s")
        cutoff = datetime.fromisoformat(built.pop("cutoff"))
        return server, Dataset(database, rows, rows // 2, cutoff), built
    server = start_server(args.port, args.buffer_pool, args.workdir)
    try:
        data, built = build(server, database, rows, args.seed, args.chunk, workdir)
    except BaseException:
        server.stop()
        raise
    if snapshot is None or marker is None or server.datadir is None:
        return server, data, built
    settle(server, limit=1800.0)
    server.stop(remove=False)
    shutil.rmtree(snapshot, ignore_errors=True)
    snapshot.mkdir(parents=True)
    (server.datadir / "data").rename(snapshot / "data")
    shutil.rmtree(server.datadir, ignore_errors=True)
    built["built_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    marker.write_text(json.dumps(built | {"cutoff": data.cutoff.isoformat()}), encoding="utf-8")
    server = start_server(args.port, args.buffer_pool, args.workdir, snapshot / "data")
    return server, data, built


def purge(
    server: Server, data: Dataset, database: str, args: argparse.Namespace, folder: Path
) -> dict[str, Any]:
    """retentiond as installed (adaptive batches) while the writer inserts; then what is left."""
    writer = Writer(
        server, database, writer_statement("cel"), lambda: writer_rows("cel"), args.rate
    )
    try:
        with writer:
            outcome = purge_retentiond(server, data, CEL, database, args, folder, adaptive=True)
    except BenchmarkError as exc:
        outcome = {"error": str(exc)}
    report = writer.report()
    return (
        outcome
        | {
            "writer_inserts": report.inserts,
            "writer_p50_ms": report.p50_ms,
            "writer_p99_ms": report.p99_ms,
            "writer_max_ms": report.max_ms,
            "writer_errors": report.errors,
            "writer_backlog": report.backlog,
            "load_average": os.getloadavg()[0],
        }
        | check(server, data, CEL, database, report.inserts)
    )


def build(
    server: Server, database: str, rows: int, seed: int, chunk: int, workdir: Path
) -> tuple[Dataset, dict[str, Any]]:
    """The cel table in InnoDB, loaded chunk by chunk: Python writes the next chunk's TSV while
    the server loads the last one, and each TSV is removed once loaded.

    Half the rows are older than the cutoff (now minus one calendar year), none within two days
    of it, oldest first (the id follows the time, as on a PBX)."""
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    cutoff = _year_before(now)
    expired = rows // 2
    spans = [
        (_year_before(cutoff), cutoff - timedelta(days=2), expired),
        (cutoff + timedelta(days=2), now - timedelta(hours=1), rows - expired),
    ]
    started = time.perf_counter()
    connection = server.connect()
    with connection.cursor() as cursor:
        for statement in (
            "SET SESSION sql_log_bin = 0",
            "SET SESSION unique_checks = 0",
            f"DROP DATABASE IF EXISTS {database}",
            f"CREATE DATABASE {database}",
            f"USE {database}",
            ddl("cel", "InnoDB"),
        ):
            cursor.execute(statement)
    loads: queue.Queue[tuple[Path, list[str]] | None] = queue.Queue(maxsize=1)
    failure: list[BaseException] = []

    def load() -> None:
        while (item := loads.get()) is not None:
            path, columns = item
            try:
                if not failure:
                    with connection.cursor() as cursor:
                        cursor.execute(
                            f"LOAD DATA LOCAL INFILE %s INTO TABLE cel CHARACTER SET utf8mb4 "
                            f"({', '.join(columns)})",
                            (str(path),),
                        )
                    connection.commit()
            except BaseException as exc:  # reported by the generating thread
                failure.append(exc)
            finally:
                path.unlink(missing_ok=True)

    loader = threading.Thread(target=load, name="loader", daemon=True)
    loader.start()
    times = _times(spans)
    done = 0
    try:
        while done < rows and not failure:
            path = workdir / f"cel-{done}.tsv"
            with path.open("w", encoding="utf-8") as tsv:
                columns = _write_rows(tsv, "cel", islice(times, chunk), seed + done)
            loads.put((path, columns))
            done += chunk
            if done % (chunk * 10) == 0:
                print(f"  built {done:,} rows ({time.perf_counter() - started:.0f} s)", flush=True)
    finally:
        loads.put(None)
        loader.join()
    if failure:
        raise BenchmarkError(f"loading {database}.cel failed: {failure[0]}")
    try:
        loaded = server.query("SELECT COUNT(*) FROM cel", database=database)[0][0]
        if loaded != rows:
            raise BenchmarkError(f"{database}.cel: loaded {loaded} rows of {rows}")
        server.query("ANALYZE TABLE cel", database=database)
        data_bytes, index_bytes = server.query(
            "SELECT data_length, index_length FROM information_schema.tables "
            "WHERE table_schema = %s AND table_name = 'cel'",
            (database,),
        )[0]
    finally:
        connection.close()
    seconds = time.perf_counter() - started
    built = {
        "build_seconds": round(seconds, 1),
        "table_gib": round((data_bytes + index_bytes) / 2**30, 2),
        "free_gib_after_build": round(shutil.disk_usage(server.datadir or workdir).free / 2**30, 1),
    }
    print(
        f"built {rows:,} cel rows in {seconds:.0f} s: {built['table_gib']:.1f} GiB, "
        f"{built['free_gib_after_build']:.0f} GiB free"
    )
    return Dataset(database, rows, expired, cutoff), built


def judge(small: dict[str, Any], large: dict[str, Any]) -> dict[str, Any]:
    checks: dict[str, dict[str, Any]] = {}
    lines: list[str] = []

    def record(name: str, value: float | None, limit: float, text: str) -> None:
        met = value is not None and value <= limit
        checks[name] = {"value": value, "limit": limit, "met": met}
        shown = "n/a" if value is None else f"{value:.2f}"
        lines.append(f"{'met   ' if met else 'MISSED'} {text}: {shown} (limit {limit:g})")

    ratio = (
        large["us_per_row"] / small["us_per_row"]
        if large.get("us_per_row") and small.get("us_per_row")
        else None
    )
    record("scaling", ratio, TARGETS["scaling"], "time per expired row, large / small")
    for result in (small, large):
        rows = result["rows"]
        record(
            f"peak_rss_mb_{rows}",
            result.get("peak_rss_mb"),
            TARGETS["peak_rss_mb"],
            f"peak RSS MB of the run at {rows:,} rows",
        )
        record(
            f"writer_p99_ms_{rows}",
            result.get("writer_p99_ms"),
            TARGETS["writer_p99_ms"],
            f"writer p99 ms at {rows:,} rows",
        )
    return {"checks": checks, "lines": lines}


def render(results: Sequence[dict[str, Any]]) -> str:
    headers = [
        "rows",
        "build s",
        "GiB",
        "deleted",
        "seconds",
        "µs/row",
        "rows/s",
        "batches",
        "RSS MB",
        "w p50",
        "w p99",
        "w max",
        "w err",
        "load",
    ]
    table = [
        [
            r["rows"],
            r.get("build_seconds"),
            r.get("table_gib"),
            r.get("deleted"),
            r.get("seconds"),
            r.get("us_per_row"),
            r.get("rows_per_second"),
            r.get("batches"),
            r.get("peak_rss_mb"),
            r.get("writer_p50_ms"),
            r.get("writer_p99_ms"),
            r.get("writer_max_ms"),
            sum(r.get("writer_errors", {}).values()),
            r.get("load_average"),
        ]
        for r in results
    ]
    return format_table(headers, table)


if __name__ == "__main__":
    sys.exit(main())
