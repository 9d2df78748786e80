"""The daemon between runs: its RSS once settled and the CPU it uses while nothing is due.

Builds a small PBX (a voicemail spool, a recordings tree and, unless --no-postgres, a 3CX cl_*
database; about half expired), starts `retentiond run` (the daemon) on rules scheduled weekly on
yesterday's weekday (six days away), waits for READY=1 and for the catch-up runs a first start
makes, lets it settle, then measures over `--idle-seconds`: RSS, CPU seconds, context switches
(wake-ups) of all its threads. Ends it with SIGTERM, which must exit 0.

    .venv/bin/python benchmarks/idle.py                    # 60 s idle
    .venv/bin/python benchmarks/idle.py --idle-seconds 3   # CI

Targets (issues 7 and 20): RSS <= 50 MB (issue 20: it stays at the ~45 MiB it had), no CPU between
runs. Exit 1 on an error (the daemon failing,
a catch-up run not done, a non-zero exit), not on a missed target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _files_common as common
import files as files_bench

NAME = "idle"
ZONE = ZoneInfo("Europe/Berlin")
KEEP_DAYS = 90
TARGET_RSS_MB = 50.0
RUN_ENDS = ("run_finished", "run_failed", "run_refused")


class NotifyListener(threading.Thread):
    """A $NOTIFY_SOCKET, as systemd's: records each sd_notify message with its arrival time."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.perf_counter(), data.decode(errors="replace")))

    def first(self, needle: str) -> float | None:
        return next((at for at, message in self.messages if needle in message), None)

    def stop(self) -> None:
        self.halt.set()
        self.join(2)
        self.sock.close()


def finished_rules(audit: Path) -> dict[str, str]:
    """Rule → how its last run ended, from the deletion log."""
    ended: dict[str, str] = {}
    if not audit.exists():
        return ended
    for line in audit.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line being written
        if entry.get("type") in RUN_ENDS and "rule" in entry:
            ended[entry["rule"]] = str(entry.get("status") or entry["type"])
    return ended


def build_postgres(dsn: str, calls: int) -> str:
    import pg_3cx

    name = "retentiond_bench_idle"
    now = datetime.now(ZONE)
    starts = pg_3cx.call_starts(calls, timedelta(days=KEEP_DAYS), now, seed=3)
    pg_3cx.build_template(dsn, name, starts, seed=3)
    return name


def config_for(base: Path, postgres_url: str | None) -> dict[str, Any]:
    yesterday = (datetime.now(ZONE) - timedelta(days=1)).strftime("%a").lower()
    schedule = f"weekly {yesterday} 03:15"  # six days away
    rules: list[dict[str, Any]] = [
        {
            "name": "voicemail",
            "keep": f"{KEEP_DAYS}d",
            "schedule": schedule,
            "stores": [{"type": "asterisk_voicemail", "root": str(base / "voicemail")}],
        },
        {
            "name": "call-recordings",
            "keep": f"{KEEP_DAYS}d",
            "schedule": schedule,
            "stores": [
                {
                    "type": "files",
                    "root": str(base / "monitor"),
                    "match": ["**/*.wav"],
                    "age_from": "path_date",
                }
            ],
        },
    ]
    config: dict[str, Any] = {
        "version": 1,
        "timezone": str(ZONE),
        "audit": {"path": str(base / "audit" / "audit.jsonl")},
        "rules": rules,
        "safety": {"max_delete_fraction": 1.0},
    }
    if postgres_url:
        config["connections"] = {"threecx": {"url": postgres_url}}
        rules.insert(
            0,
            {
                "name": "call-records",
                "keep": f"{KEEP_DAYS}d",
                "schedule": schedule,
                "stores": [{"type": "3cx_call_history", "connection": "threecx"}],
            },
        )
    return config


def measure_idle(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    postgres_url = None
    database = None
    if not args.no_postgres:
        database = build_postgres(args.dsn, args.calls)
        postgres_url = f"{args.dsn.replace('postgresql://', 'postgresql+psycopg://')}/{database}"
    keep = timedelta(days=KEEP_DAYS)
    now = datetime.now(ZONE)
    tree = files_bench.Tree()
    files_bench.build_spool(base / "voicemail", args.messages, keep, now, tree)
    files_bench.build_recordings(base / "monitor", args.recordings, keep, now, tree)
    (base / "audit").mkdir()
    config = config_for(base, postgres_url)
    config_path = base / "retentiond.yaml"
    config_path.write_text(common.yaml_config(config))
    rules = [rule["name"] for rule in config["rules"]]

    listener = NotifyListener(base / "notify.sock")
    listener.start()
    env = {**os.environ, "NOTIFY_SOCKET": str(listener.path)}
    log_path = base / "daemon.log"
    result: dict[str, Any] = {"rules": rules, "tree": tree.__dict__}
    problems: list[str] = []
    started = time.perf_counter()
    with log_path.open("wb") as log:
        daemon = subprocess.Popen(
            [str(common.RETENTIOND), "-c", str(config_path), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = started + args.timeout
        ended: dict[str, str] = {}
        while time.perf_counter() < deadline and daemon.poll() is None:
            ended = finished_rules(base / "audit" / "audit.jsonl")
            if listener.first("READY=1") is not None and set(rules) <= set(ended):
                break
            time.sleep(0.1)
        caught_up = time.perf_counter()
        ready = listener.first("READY=1")
        result["ready_after_s"] = round(ready - started, 2) if ready else None
        result["catch_up_done_after_s"] = round(caught_up - started, 2)
        result["catch_up"] = ended
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited with {daemon.returncode} before idling")
        if ready is None:
            problems.append("no READY=1")
        if set(ended) != set(rules) or any(status != "done" for status in ended.values()):
            problems.append(f"catch-up runs not all done: {ended}")
        after_catch_up = common.proc_status(daemon.pid)
        time.sleep(args.settle_seconds)
        before = common.proc_status(daemon.pid)
        cpu_before = common.cpu_seconds(daemon.pid)
        rss_samples = [before["VmRSS"]]
        notes_before = len(listener.messages)
        window_start = time.perf_counter()
        while time.perf_counter() - window_start < args.idle_seconds:
            time.sleep(min(1.0, args.idle_seconds))
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited with {daemon.returncode} while idle")
            rss_samples.append(common.proc_status(daemon.pid)["VmRSS"])
        window = time.perf_counter() - window_start
        cpu_after = common.cpu_seconds(daemon.pid)
        after = common.proc_status(daemon.pid)
        result.update(
            rss_after_catch_up_mib=round(after_catch_up["VmRSS"] / 1024, 1),
            rss_settled_mib=round(before["VmRSS"] / 1024, 1),
            rss_idle_max_mib=round(max(rss_samples) / 1024, 1),
            rss_end_mib=round(after["VmRSS"] / 1024, 1),
            peak_rss_mib=round(after["VmHWM"] / 1024, 1),
            threads=after["Threads"],
            idle_seconds=round(window, 1),
            idle_cpu_s=round(cpu_after - cpu_before, 3),
            idle_cpu_share=round((cpu_after - cpu_before) / window, 5),
            idle_context_switches=after["ctxt_switches"] - before["ctxt_switches"],
            idle_wakeups_per_s=round(
                (after["ctxt_switches"] - before["ctxt_switches"]) / window, 2
            ),
            idle_notify_messages=len(listener.messages) - notes_before,
            total_cpu_s=round(cpu_after, 2),
        )
    finally:
        stop_started = time.perf_counter()
        returncode = common.terminate(daemon)
        result["stop_s"] = round(time.perf_counter() - stop_started, 2)
        result["exit_code"] = returncode
        listener.stop()
        if database and not args.keep:
            import pg_3cx

            pg_3cx.admin(args.dsn, f'DROP DATABASE IF EXISTS "{database}"')
    if returncode != 0:
        problems.append(f"exit code {returncode} after SIGTERM")
    result["log_tail"] = log_path.read_text(errors="replace")[-3000:]
    result["problems"] = problems
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--settle-seconds", type=float, default=5.0)
    parser.add_argument("--messages", type=int, default=300, help="voicemail messages")
    parser.add_argument("--recordings", type=int, default=300)
    parser.add_argument("--calls", type=int, default=1000, help="3CX calls")
    parser.add_argument("--no-postgres", action="store_true", help="files stores only")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--timeout", type=float, default=120.0, help="for start and catch-up")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir and database")
    parser.add_argument("--out", type=Path, default=common.RESULTS / f"{NAME}.json")
    args = parser.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="retentiond-bench-idle-"))
    postgres = None
    if not args.no_postgres:
        import pg_3cx

        postgres = pg_3cx.postgres_version(args.dsn)
    info = common.machine(base, postgres=postgres)
    errors: list[str] = []
    try:
        result = measure_idle(args, base)
        errors.extend(result["problems"])
    except RuntimeError as error:
        result = {"problems": [str(error)]}
        errors.append(str(error))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    targets: dict[str, bool] = {}
    if "rss_settled_mib" in result:
        rss_mb = result["rss_idle_max_mib"] * common.MIB / 1e6
        targets = {"rss<=50MB": rss_mb <= TARGET_RSS_MB, "idle_cpu~0": result["idle_cpu_s"] < 0.05}
        print()
        print(
            f"idle daemon: rules {', '.join(result['rules'])}, weekly; "
            f"{result['idle_seconds']} s idle after {args.settle_seconds:g} s settling"
        )
        print(common.machine_line(info))
        rows = [
            ["READY=1 after (s)", result["ready_after_s"], "-"],
            ["catch-up runs done after (s)", result["catch_up_done_after_s"], "-"],
            ["peak RSS, catch-up (MiB)", result["peak_rss_mib"], "-"],
            ["RSS after catch-up (MiB)", result["rss_after_catch_up_mib"], "-"],
            ["RSS settled (MiB)", result["rss_settled_mib"], "<= 47.7 (50 MB)"],
            ["RSS max while idle (MiB)", result["rss_idle_max_mib"], "<= 47.7 (50 MB)"],
            ["threads", result["threads"], "-"],
            ["CPU while idle (s)", result["idle_cpu_s"], "~0"],
            ["wake-ups while idle (/s)", result["idle_wakeups_per_s"], "-"],
            ["SIGTERM to exit (s)", result["stop_s"], "-"],
            ["exit code", result["exit_code"], "0"],
        ]
        print(common.table(["measure", "value", "target"], rows))
        print("targets: " + ", ".join(f"{k}: {common.fmt(v)}" for k, v in targets.items()))
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    out = common.write_json(
        args.out,
        {
            "benchmark": NAME,
            "machine": info,
            "parameters": {
                "idle_seconds": args.idle_seconds,
                "settle_seconds": args.settle_seconds,
                "messages": args.messages,
                "recordings": args.recordings,
                "calls": 0 if args.no_postgres else args.calls,
            },
            "result": result,
            "targets": targets,
            "errors": errors,
        },
    )
    print(f"written {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
