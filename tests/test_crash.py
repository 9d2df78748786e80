"""Crash consistency (safety rule 8): retentiond killed with SIGKILL at random moments of a purge.

A FreePBX cdr table on MariaDB and a FreePBX recordings tree, half of each expired, purged in
small batches by `retentiond run --once`, which is killed 30 times at seeded random moments.
After every kill the log verifies; at the end one uninterrupted run completes the work and the
data is compared with a snapshot taken before: nothing unexpired is gone, nothing expired is
left, and the log accounts for every deleted object (batch results, plus at most the planned
size of each batch that was cut off between its intent and its result, each reconciled once).

The moments are reproducible from RETENTIOND_CRASH_SEED (printed in every failure message);
where in a batch a kill lands still depends on the machine's speed.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from pbxdata import PbxDatabase, cdr_rows
from sqlalchemy import Engine, make_url, text

from retentiond.cli.audit import audit_group
from retentiond.evidence import log as audit

# every test runs retentiond against the MariaDB server
pytestmark = [pytest.mark.mariadb, pytest.mark.slow, pytest.mark.server_clock]

SEED = int(os.environ.get("RETENTIOND_CRASH_SEED", "20260"))
KILLS = 30
TOP_UP_KILLS = 15  # at most, when fewer than three of the KILLS landed in a batch
CALLS = 12_000  # half of them expired
RECORDINGS = 3_000  # half of them expired
BERLIN = ZoneInfo("Europe/Berlin")
AUDIO = b"RIFF$\x00\x00\x00WAVEfmt " + bytes(32)
RUN_ENDS = ("run_finished", "run_refused", "run_failed")


def config_text(folder: Path, url: str, monitor: Path) -> str:
    return f"""\
version: 1
timezone: Europe/Berlin
audit:
  path: {folder / "audit.jsonl"}
connections:
  cdrdb:
    url: {url}
    lock_timeout: 10
rules:
  - name: call-records
    keep: 3 months
    stores:
      - {{type: sql, connection: cdrdb, table: cdr, time_column: calldate,
          batch_size: 200, pause: 0.005}}
  - name: call-recordings
    keep: 30d
    stores:
      - {{type: files, root: {monitor}, match: ["**/*.wav"], age_from: path_date,
          batch_size: 25, pause: 0.005}}
safety:
  max_delete_fraction: 0.9
"""


@dataclass
class Pbx:
    """One copy of the data: its database, recordings, config and log."""

    folder: Path
    database: PbxDatabase
    monitor: Path

    @property
    def config(self) -> Path:
        return self.folder / "retentiond.yaml"

    @property
    def log(self) -> Path:
        return self.folder / "audit.jsonl"

    def write_config(self) -> None:
        self.folder.mkdir(exist_ok=True)
        self.config.write_text(config_text(self.folder, self.database.url, self.monitor))

    def calls(self) -> set[str]:
        with self.database.engine.connect() as connection:
            return set(connection.execute(text("SELECT uniqueid FROM cdr")).scalars())

    def recordings(self) -> set[str]:
        return {str(p.relative_to(self.monitor)) for p in self.monitor.rglob("*") if p.is_file()}


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RETENTIOND_CONFIG"}


def start(pbx: Pbx, output: Path) -> subprocess.Popen[bytes]:
    with output.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "retentiond", "-c", str(pbx.config), "run", "--once"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=environment(),
        )


def cut_off_batches(pbx: Pbx) -> int:
    """Batches the kills so far cut off between intent and result, counted as the end of the
    test counts them (a kill before a run's first entry leaves the last run's count as it was)."""
    if not pbx.log.exists():
        return 0
    runs = interrupted_runs(list(audit.read_entries(pbx.log)))
    return sum(len(batches) for batches in runs.values())


def verify(pbx: Pbx) -> tuple[int, str]:
    """`retentiond audit verify LOG`, in this process (a process start per kill adds half a
    minute); the final check runs it as a command."""
    result = CliRunner().invoke(audit_group, ["verify", str(pbx.log)])
    return result.exit_code, result.output


def build_data(pbx: Pbx, rng: random.Random) -> tuple[set[str], set[str]]:
    """Fill the table and the tree; return the uniqueids and paths that must survive. The
    expired and the young are weeks apart from the cutoffs, so no object is near one."""
    now = datetime.now(BERLIN).replace(tzinfo=None, microsecond=0)
    young = [now - timedelta(seconds=rng.randrange(3600, 60 * 86400)) for _ in range(CALLS // 2)]
    old = [now - timedelta(seconds=rng.randrange(100 * 86400, 400 * 86400)) for _ in young]
    calls = cdr_rows(young + old, seed=SEED)
    pbx.database.create("cdr")
    for first in range(0, len(calls), 2000):
        pbx.database.insert("cdr", calls[first : first + 2000])
    keep_calls = {row["uniqueid"] for row in calls[: len(young)]}

    keep_files: set[str] = set()
    for number in range(RECORDINGS):
        days = rng.randrange(0, 21) if number % 2 else rng.randrange(40, 200)
        moment = now - timedelta(days=days, seconds=rng.randrange(86400))
        name = f"{moment:%Y/%m/%d}/in-2{number % 60:02d}-0176{number:07d}-{moment:%Y%m%d-%H%M%S}"
        path = pbx.monitor / f"{name}-{int(moment.timestamp())}.{number}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(AUDIO)
        if number % 2:
            keep_files.add(str(path.relative_to(pbx.monitor)))
    return keep_calls, keep_files


def kill_at(pbx: Pbx, process: subprocess.Popen[bytes], anchor: str, delay: float) -> str:
    """SIGKILL `process` `delay` seconds after it started ("start") or after it wrote its
    first batch intent ("first intent"). Returns "killed", or "finished" (exit 0) when it
    ended first."""
    began = time.monotonic()
    offset = pbx.log.stat().st_size if pbx.log.exists() else 0
    deadline = began + delay if anchor == "start" else None
    while True:
        code = process.poll()
        if code is not None:
            assert code == 0, f"RETENTIOND_CRASH_SEED={SEED}: a run ended with exit {code}"
            return "finished"
        now = time.monotonic()
        if deadline is None and pbx.log.exists():
            with pbx.log.open("rb") as log:
                log.seek(offset)
                if b'"type":"batch_intent"' in log.read():
                    deadline = now + delay
        if deadline is not None and now >= deadline:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return "killed"
        time.sleep(0.001 if deadline is not None and deadline - now < 0.01 else 0.003)


@dataclass(frozen=True)
class Timing:
    startup: float  # from starting the process to its first batch intent
    per_batch: float
    total: float


def calibrate(pbx: Pbx, output: Path) -> Timing:
    """One uninterrupted run on a copy: how long starting takes, and a batch."""
    began = time.time()
    process = start(pbx, output)
    assert process.wait(timeout=300) == 0, output.read_text()
    total = time.time() - began
    log = list(audit.read_entries(pbx.log))
    batches = [e for e in log if e.type in ("batch_intent", "batch_done")]
    first = _epoch(batches[0].ts)
    last = _epoch(batches[-1].ts)
    intents = sum(1 for e in batches if e.type == "batch_intent")
    return Timing(first - began, (last - first) / max(intents, 1), total)


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


@pytest.fixture
def calibration_copy(
    mariadb_url: str, mariadb_server: Engine, pbx_database: Callable[[str], PbxDatabase]
) -> Iterator[Callable[[Pbx, Path], Pbx]]:
    """Copy a Pbx (its table into a second database, its tree into another folder)."""
    source = make_url(mariadb_url).database
    name = f"{source}_copy"

    def copy(pbx: Pbx, folder: Path) -> Pbx:
        with mariadb_server.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
            connection.execute(text(f"CREATE TABLE {name}.cdr LIKE {source}.cdr"))
            connection.execute(text(f"INSERT INTO {name}.cdr SELECT * FROM {source}.cdr"))
        url = make_url(mariadb_url).set(database=name).render_as_string(hide_password=False)
        monitor = folder / "monitor"
        shutil.copytree(pbx.monitor, monitor)
        copied = Pbx(folder, pbx_database(url), monitor)
        copied.write_config()
        return copied

    yield copy
    with mariadb_server.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))


def interrupted_runs(log: list[audit.Entry]) -> dict[str, set[tuple[str, str, int]]]:
    """Runs with no end or with an intent without a result -> their open batches. Read from
    the log directly, without the code under test."""
    open_batches: dict[str, set[tuple[str, str, int]]] = {}
    ended: set[str] = set()
    for entry in log:
        run_id = entry.fields.get("run_id")
        if entry.type == "run_started":
            open_batches[run_id] = set()
        key = (
            str(entry.fields.get("stage", "delete")),
            str(entry.fields.get("store")),
            int(entry.fields.get("batch", 0)),
        )
        if entry.type == "batch_intent":
            open_batches.setdefault(run_id, set()).add(key)
        elif entry.type == "batch_done":
            open_batches[run_id].discard(key)
        elif entry.type in RUN_ENDS:
            ended.add(run_id)
    return {
        run_id: batches
        for run_id, batches in open_batches.items()
        if run_id not in ended or batches
    }


def test_sigkill_at_30_random_moments_loses_nothing_and_the_log_accounts_for_all(
    mariadb_url: str,
    pbx_database: Callable[[str], PbxDatabase],
    calibration_copy: Callable[[Pbx, Path], Pbx],
    tmp_path: Path,
) -> None:
    seed = f"RETENTIOND_CRASH_SEED={SEED}"
    rng = random.Random(SEED)
    pbx = Pbx(tmp_path / "pbx", pbx_database(mariadb_url), tmp_path / "monitor")
    keep_calls, keep_files = build_data(pbx, rng)
    pbx.write_config()
    calls_before, files_before = pbx.calls(), pbx.recordings()
    assert len(calls_before) == CALLS and len(files_before) == RECORDINGS

    timing = calibrate(calibration_copy(pbx, tmp_path / "copy"), tmp_path / "calibration.txt")
    outputs = tmp_path / "outputs"
    outputs.mkdir()

    kills: list[tuple[str, float, str]] = []  # (from when, delay, what happened)
    for attempt in range(KILLS):
        # One kill in five while the process starts and surveys; the rest during the purge,
        # up to a few batches after the run's first batch intent. The delay of those counts
        # from that intent: starting Python varies by more than a batch takes.
        if rng.random() < 0.2:
            moment = ("start", rng.uniform(0.2, 1.0) * timing.startup)
        else:
            moment = ("first intent", rng.uniform(0.0, 6 * timing.per_batch))
        output = outputs / f"run-{attempt:02d}.txt"
        what = kill_at(pbx, start(pbx, output), *moment)
        kills.append((*moment, what))
        if what == "finished":
            process_output = output.read_text()
            assert "Traceback" not in process_output, f"{seed}: run {attempt}: {process_output}"
        if not pbx.log.exists():
            # Killed before the first entry: nothing may have changed (safety rule 3).
            assert (pbx.calls(), pbx.recordings()) == (calls_before, files_before), seed
            continue
        code, said = verify(pbx)
        assert code == 0, f"{seed}: audit verify failed after kill {attempt} {moment}: {said}"
    # On a busy machine the seeded moments may fall between batches more often than not: a few
    # more kills, early in a batch, while fewer than three have cut one off (seeded as well).
    for attempt in range(KILLS, KILLS + TOP_UP_KILLS):
        if cut_off_batches(pbx) >= 3:
            break
        moment = ("first intent", rng.uniform(0.0, 0.5 * timing.per_batch))
        what = kill_at(pbx, start(pbx, outputs / f"run-{attempt:02d}.txt"), *moment)
        kills.append((*moment, what))
        if pbx.log.exists():
            code, said = verify(pbx)
            assert code == 0, f"{seed}: audit verify failed after kill {attempt} {moment}: {said}"

    final = subprocess.run(
        [sys.executable, "-m", "retentiond", "-c", str(pbx.config), "run", "--once", "--json"],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=300,
        check=False,
    )
    assert final.returncode == 0, f"{seed}: the run after the kills: {final.stdout}{final.stderr}"
    assert {run["status"] for run in json.loads(final.stdout)["runs"]} == {"done"}, seed
    checked = subprocess.run(
        [sys.executable, "-m", "retentiond", "audit", "verify", str(pbx.log)],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=120,
        check=False,
    )
    assert checked.returncode == 0, f"{seed}: {checked.stdout}{checked.stderr}"

    calls_after, files_after = pbx.calls(), pbx.recordings()
    assert keep_calls <= calls_after, f"{seed}: unexpired calls are gone"
    assert calls_after <= keep_calls, f"{seed}: expired calls remain"
    assert keep_files <= files_after, f"{seed}: unexpired recordings are gone"
    assert files_after <= keep_files, f"{seed}: expired recordings remain"

    log = list(audit.read_entries(pbx.log))
    interrupted = interrupted_runs(log)
    reconciled: dict[str, list[dict[str, Any]]] = {}
    for entry in log:
        if entry.type == "run_reconciled":
            reconciled.setdefault(entry.fields["run_id"], []).append(entry.fields)
    killed = sum(1 for *_, what in kills if what == "killed")
    assert set(reconciled) == set(interrupted), f"{seed}: reconciled runs differ"
    assert all(len(r) == 1 for r in reconciled.values()), f"{seed}: a run reconciled twice"
    for run_id, batches in interrupted.items():
        (fields,) = reconciled[run_id]
        logged = {(b["stage"], b["store"], b["batch"]) for b in fields["open_batches"]}
        assert logged == batches, f"{seed}: run {run_id}: open batches {logged} != {batches}"
    # Every interrupted run was a kill (a finished run is never reconciled), but a kill before
    # the first run_started leaves nothing to reconcile.
    assert 0 < len(interrupted) <= killed, f"{seed}: {len(interrupted)} of {killed} kills"

    stores = {str(e.fields["store"]) for e in log if e.type == "batch_done"}
    actual = {"cdr": len(calls_before - calls_after), "files": len(files_before - files_after)}
    for label in stores:
        kind = "cdr" if label.endswith("/cdr") else "files"
        confirmed = sum(
            e.fields["deleted"]
            for e in log
            if e.type == "batch_done" and e.fields["store"] == label
        )
        unconfirmed = sum(
            b["planned"]
            for runs in reconciled.values()
            for b in runs[0]["open_batches"]
            if b["store"] == label
        )
        assert confirmed <= actual[kind] <= confirmed + unconfirmed, (
            f"{seed}: {label}: {actual[kind]} deleted, the log confirms {confirmed} and "
            f"leaves {unconfirmed} unconfirmed"
        )
    cut_off = [store for batches in interrupted.values() for _, store, _ in batches]
    finished = sum(1 for *_, what in kills if what == "finished")
    print(
        f"{seed}: {killed} kills ({finished} runs finished first), {len(interrupted)} runs "
        f"reconciled, batches cut off between intent and result: "
        f"{ {label: cut_off.count(label) for label in sorted(stores)} }; {timing}"
    )
    # How many of the kills land between a batch's intent and its result depends on the
    # machine's timing (2 to 6 seen with these seeds); tests/test_reconcile.py cuts batches off
    # deterministically. Here at least one must have, or the kills missed the point.
    assert cut_off, f"{seed}: no kill landed in a batch; {kills}"
