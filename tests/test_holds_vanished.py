"""A hold the log shows in force ends only by an explicit action (issue 16 item 8).

A copy of the config run from another folder has no `holds.d` beside it: its holds vanish.
The run is refused (exit 3, audited with the hold ids) and the held rows survive, until the
config is run where it belongs, or the operator ends the hold (`--end-hold ID`, `--force`).
On real SQLite, MariaDB and PostgreSQL, and through the command line on the demo PBX.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from databases import ALL_BACKENDS
from pbxdata import PbxDatabase, sqlite_cdr_rows
from test_cli import retentiond

from retentiond import demo
from retentiond.config.loader import LoadedConfig, load_config
from retentiond.engine.engine import Engine
from retentiond.engine.outcome import RunOutcome, exit_code
from retentiond.evidence import log as audit

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
PERSON = "+49301234567890"

CONFIG = """\
version: 1
timezone: UTC
audit:
  path: {audit}
connections:
  cdrdb:
    url: {url}
rules:
  - name: call-records
    keep: 30d
    stores:
      - type: sql
        connection: cdrdb
        table: cdr
        time_column: calldate
        subject_columns: [src, dst]
safety:
  max_delete_fraction: 1.0
"""

NUMBER_HOLD = f"""\
id: AUTH-7
reason: Authority request 2026-7
approved_by: DPO
review_by: 2027-06-30
numbers: ['{PERSON}']
"""

WINDOW_HOLD = """\
id: LIT-3
reason: Litigation 3 O 123/26
approved_by: DPO
review_by: 2027-06-30
from: 2026-06-01
to: 2026-06-10
"""


def calldates() -> list[datetime]:
    """A call every 12 hours from 20 May to 20 July 2026 (all expired), naive UTC."""
    first = datetime(2026, 5, 20)
    return [first + timedelta(hours=12 * i) for i in range(124)]


@pytest.fixture
def database(database: PbxDatabase) -> PbxDatabase:
    database.create("cdr")
    rows = database.cdr_rows(calldates())
    for index, row in enumerate(rows):
        if index % 5 == 0:
            row["src"] = PERSON
    database.insert("cdr", rows)
    return database


def held_rows(database: PbxDatabase) -> int:
    """The rows the two holds keep: the person's, and every call of 1 to 10 June."""
    window = "calldate >= '2026-06-01' AND calldate < '2026-06-11'"
    return database.count("cdr", f"src = :person OR dst = :person OR ({window})", person=PERSON)


def run(loaded: LoadedConfig, **engine_args: object) -> RunOutcome:
    engine = Engine(loaded, now=lambda: NOW, **engine_args)  # type: ignore[arg-type]
    with audit.AuditLog(loaded.config.audit.path) as log:
        return engine.run(loaded.config.rule("call-records"), log)


def entries(loaded: LoadedConfig, kind: str) -> list[audit.Entry]:
    return [e for e in audit.read_entries(loaded.config.audit.path) if e.type == kind]


@pytest.mark.server_clock  # runs retentiond against the server
@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_holds_lost_with_their_folder_refuse_the_run_until_ended_explicitly(
    tmp_path: Path, database: PbxDatabase
) -> None:
    home, elsewhere = tmp_path / "etc", tmp_path / "copy"
    home.mkdir()
    elsewhere.mkdir()
    (tmp_path / "log").mkdir()
    text = CONFIG.format(audit=tmp_path / "log" / "audit.jsonl", url=database.url)
    (home / "retentiond.yaml").write_text(text)
    (home / "holds.d").mkdir()
    (home / "holds.d" / "auth-7.yaml").write_text(NUMBER_HOLD)
    (home / "holds.d" / "lit-3.yaml").write_text(WINDOW_HOLD)
    first = run(load_config(home / "retentiond.yaml"))
    held = held_rows(database)
    assert first.status == "done" and held > 0
    assert database.count("cdr") == held  # everything else was expired and went

    # the same config, copied to another folder: no holds.d beside it
    (elsewhere / "retentiond.yaml").write_text(text)
    copy = load_config(elsewhere / "retentiond.yaml")
    assert copy.config.holds == []
    refused = run(copy)
    assert refused.status == "refused" and exit_code([refused]) == 3
    assert refused.message is not None and "AUTH-7, LIT-3" in refused.message
    assert "--end-hold" in refused.message
    assert database.count("cdr") == held == held_rows(database)
    (entry,) = entries(copy, "run_refused")
    assert entry.fields["holds_not_found"] == ["AUTH-7", "LIT-3"]
    assert entries(copy, "hold_ended") == []

    # one hold ended on purpose; the other still refuses the run
    partly = run(copy, end_holds=["LIT-3"])
    assert partly.status == "refused" and "AUTH-7" in (partly.message or "")
    assert "LIT-3" not in (partly.message or "")
    assert database.count("cdr") == held
    (ended,) = entries(copy, "hold_ended")
    assert ended.fields == {
        "hold": "LIT-3",
        "ended": "not found in the config; ended by --end-hold",
    }

    # back home both holds are found (LIT-3's file is still there: it is added again)
    again = run(load_config(home / "retentiond.yaml"))
    assert again.status == "done" and database.count("cdr") == held
    assert [e.fields["hold"] for e in entries(copy, "hold_added")] == ["AUTH-7", "LIT-3", "LIT-3"]

    forced = run(copy, force=True)
    assert forced.status == "done" and database.count("cdr") == 0
    assert [e.fields for e in entries(copy, "hold_ended")[1:]] == [
        {"hold": hold, "ended": "not found in the config; ended by --force"}
        for hold in ("AUTH-7", "LIT-3")
    ]
    (started,) = [e for e in entries(copy, "run_started") if e.fields.get("forced")]
    assert started.fields["forced"] == [
        "holds AUTH-7, LIT-3 in force in the audit log were not found in the config; ended"
    ]
    log_text = copy.config.audit.path.read_text()
    for value in (PERSON, PERSON[3:], PERSON[1:]):
        assert value not in log_text


def test_a_hold_removed_during_a_run_keeps_holding_to_its_end(
    tmp_path: Path, sqlite_url: str, pbx_database: Callable[[str], PbxDatabase]
) -> None:
    database = pbx_database(sqlite_url)
    database.create("cdr")
    database.insert("cdr", sqlite_cdr_rows(calldates()))
    (tmp_path / "retentiond.yaml").write_text(
        CONFIG.format(audit=tmp_path / "audit.jsonl", url=sqlite_url).replace(
            "time_column: calldate\n", "time_column: calldate\n        batch_size: 10\n"
        )
    )
    (tmp_path / "holds.d").mkdir()
    (tmp_path / "holds.d" / "lit-3.yaml").write_text(WINDOW_HOLD)
    loaded = load_config(tmp_path / "retentiond.yaml")
    holds = list(loaded.config.holds)
    window = "calldate >= '2026-06-01' AND calldate < '2026-06-11'"
    in_window = database.count("cdr", window)

    def progress(label: str, done: int, expected: int) -> None:
        holds.clear()  # a reload after the first batch found no holds folder

    outcome = run(loaded, holds=lambda: holds, progress=progress)
    assert outcome.status == "done"
    assert database.count("cdr", window) == in_window
    assert entries(loaded, "hold_ended") == []
    assert run(load_config(tmp_path / "retentiond.yaml")).status == "done"
    (tmp_path / "holds.d" / "lit-3.yaml").unlink()
    assert run(load_config(tmp_path / "retentiond.yaml")).status == "refused"
    assert database.count("cdr", window) == in_window


# --- the command line, on the demo PBX ----------------------------------------------------------


def calls(config_file: Path) -> int:
    with sqlite3.connect(config_file.parent / "pbx" / "master.db") as db:
        (count,) = db.execute("SELECT COUNT(*) FROM cdr").fetchone()
    db.close()
    return int(count)


def test_run_once_from_a_copied_config_exits_3_and_says_how_to_end_the_hold(
    tmp_path: Path,
) -> None:
    config_file = demo.build(tmp_path / "pbx", days=120)
    holds = config_file.parent / "holds.d"
    holds.mkdir(exist_ok=True)
    (holds / "all-calls.yaml").write_text(
        "id: LIT-9\nreason: Litigation 9 O 9/26\napproved_by: DPO\nreview_by: 2099-01-31\n"
        "rules: [call-records]\n"
    )
    first = retentiond("-c", config_file, "run", "--once", "--rule", "call-records")
    assert first.returncode == 0, first.stdout + first.stderr
    before = calls(config_file)
    copy = tmp_path / "elsewhere" / "retentiond.yaml"
    copy.parent.mkdir()
    shutil.copy(config_file, copy)

    refused = retentiond("-c", copy, "run", "--once", "--rule", "call-records")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "holds LIT-9 are in force in the audit log but not in this config" in refused.stdout
    assert "--end-hold ID" in refused.stdout
    assert calls(config_file) == before
    planned = retentiond("-c", copy, "plan", "--rule", "call-records")
    assert "REFUSED: holds LIT-9" in planned.stdout

    wrong = retentiond("-c", copy, "run", "--once", "--end-hold", "LIT-8")
    assert wrong.returncode == 2 and "LIT-8: this hold is not in force" in wrong.stderr
    still = retentiond("-c", config_file, "run", "--once", "--end-hold", "LIT-9")
    assert still.returncode == 2 and "is in the config" in still.stderr
    assert calls(config_file) == before

    ended = retentiond("-c", copy, "run", "--once", "--rule", "call-records", "--end-hold", "LIT-9")
    assert ended.returncode == 0, ended.stdout + ended.stderr
    assert calls(config_file) < before
    log = config_file.parent / "audit.jsonl"
    (entry,) = [e for e in audit.read_entries(log) if e.type == "hold_ended"]
    assert entry.fields["hold"] == "LIT-9"


def test_erase_waits_while_a_hold_is_missing_from_the_config(tmp_path: Path) -> None:
    config_file = demo.build(tmp_path / "pbx", days=120)
    holds = config_file.parent / "holds.d"
    holds.mkdir(exist_ok=True)
    (holds / "all-calls.yaml").write_text(
        "id: LIT-9\nreason: Litigation 9 O 9/26\napproved_by: DPO\nreview_by: 2099-01-31\n"
    )
    assert retentiond("-c", config_file, "run", "--once").returncode == 0
    with sqlite3.connect(config_file.parent / "pbx" / "master.db") as db:
        (number,) = db.execute("SELECT src FROM cdr WHERE src LIKE '+49%' LIMIT 1").fetchone()
    db.close()
    before = calls(config_file)
    (holds / "all-calls.yaml").unlink()
    erased = retentiond(
        "-c", config_file, "erase", "--number", number, "--ticket", "DSR-5", "--yes"
    )
    assert erased.returncode == 3, erased.stdout + erased.stderr
    assert "holds LIT-9 are in force in the audit log but not in this config" in erased.stderr
    assert calls(config_file) == before
