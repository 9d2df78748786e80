"""A hold that matches nothing is flagged, never silent (issue 16 item 2).

A hold whose number no store holds, or whose window has no object, protects nothing. `plan`,
`status`, the run's first entry and the report say so by the hold's id. Young objects count as
matches: a hold on a recent caller is not flagged. On real SQLite, MariaDB and PostgreSQL, and
through the command line on the demo PBX.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from databases import ALL_BACKENDS
from pbxdata import PbxDatabase
from test_cli import retentiond as run_command

from retentiond import demo
from retentiond.config.loader import load_config
from retentiond.engine.engine import Engine
from retentiond.evidence import log as audit

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
OLD_CALLER = "+49301234567890"  # calls only long expired
YOUNG_CALLER = "+49891234567"  # calls only in the last week: young, not expired
NOBODY = "+4940987654321"  # in no store at all

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


# A year after today and after NOW: the command-line tests run on the process's clock (and
# the demo PBX is built from it), the engine tests on NOW.
REVIEW_BY = max(date.today(), NOW.date()) + timedelta(days=365)


def hold(hold_id: str, scope: str) -> str:
    return (
        f"id: {hold_id}\nreason: Request {hold_id}\napproved_by: DPO\n"
        f"review_by: {REVIEW_BY.isoformat()}\n{scope}\n"
    )


@pytest.fixture
def database(database: PbxDatabase) -> PbxDatabase:
    database.create("cdr")
    old = [datetime(2026, 5, 20) + timedelta(hours=12 * i) for i in range(60)]
    young = [datetime(2026, 11, 20) + timedelta(hours=12 * i) for i in range(10)]
    rows = database.cdr_rows(old + young)
    for index, row in enumerate(rows):
        if index < len(old) and index % 7 == 0:
            row["src"] = OLD_CALLER
        elif index >= len(old) and index % 3 == 0:
            row["dst"] = YOUNG_CALLER
    database.insert("cdr", rows)
    return database


@pytest.mark.server_clock  # runs retentiond against the server
@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_only_holds_with_no_object_of_any_age_are_unmatched(
    tmp_path: Path, database: PbxDatabase
) -> None:
    (tmp_path / "retentiond.yaml").write_text(
        CONFIG.format(audit=tmp_path / "audit.jsonl", url=database.url)
    )
    folder = tmp_path / "holds.d"
    folder.mkdir()
    (folder / "old.yaml").write_text(hold("OLD-1", f"numbers: ['{OLD_CALLER}']"))
    (folder / "young.yaml").write_text(hold("YOUNG-1", f"numbers: ['{YOUNG_CALLER}']"))
    (folder / "nobody.yaml").write_text(hold("NOBODY-1", f"numbers: ['{NOBODY}']"))
    (folder / "window.yaml").write_text(hold("EMPTY-WINDOW", "from: 2025-01-01\nto: 2025-01-31"))
    loaded = load_config(tmp_path / "retentiond.yaml")
    engine = Engine(loaded, now=lambda: NOW)
    rule = loaded.config.rule("call-records")
    with engine.open_stores(rule) as stores:
        plan = engine.plan(rule, stores)
    assert plan.unmatched == ("EMPTY-WINDOW", "NOBODY-1")
    assert plan.stores[0].survey.held_by["OLD-1"] == 9 and plan.stores[0].survey.held == 9

    with audit.AuditLog(loaded.config.audit.path) as log:
        outcome = engine.run(rule, log)
    assert outcome.status == "done"
    (started,) = [
        e for e in audit.read_entries(loaded.config.audit.path) if e.type == "run_started"
    ]
    assert started.fields["holds_matching_nothing"] == ["EMPTY-WINDOW", "NOBODY-1"]
    text = loaded.config.audit.path.read_text()
    for number in (OLD_CALLER, YOUNG_CALLER, NOBODY):
        assert number[3:] not in text


# --- the command line, on the demo PBX ----------------------------------------------------------


def retentiond(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_command(*args, timeout=180)


def test_plan_status_and_report_flag_a_hold_that_matches_nothing(tmp_path: Path) -> None:
    config_file = demo.build(tmp_path / "pbx", days=120)
    # a caller with a recording (FreePBX names: in-<ext>-<number>-<date>-<time>-<uniqueid>), so
    # the hold matches in both of its rules, whatever day the demo was built on
    recording = min((config_file.parent / "pbx" / "monitor").rglob("in-*-+49*.wav"))
    caller = recording.name.split("-")[2]
    with sqlite3.connect(config_file.parent / "pbx" / "master.db") as db:
        assert db.execute("SELECT COUNT(*) FROM cdr WHERE src = ?", (caller,)).fetchone()[0]
    db.close()
    folder = config_file.parent / "holds.d"
    folder.mkdir(exist_ok=True)
    # a typo'd number held in every rule, and a real caller's calls and recordings
    (folder / "typo.yaml").write_text(hold("TYPO-1", f"numbers: ['{NOBODY}']"))
    (folder / "real.yaml").write_text(
        hold("REAL-1", f"numbers: ['{caller}']\nrules: [call-records, call-recordings]")
    )

    planned = retentiond("-c", config_file, "plan")
    assert planned.returncode == 0, planned.stderr
    assert "hold TYPO-1: MATCHES NOTHING: no object of any age in the stores of its rules" in (
        planned.stdout
    )
    assert "REAL-1: MATCHES NOTHING" not in planned.stdout
    as_json = json.loads(retentiond("-c", config_file, "plan", "--json").stdout)
    assert all(p["holds_matching_nothing"] in (["TYPO-1"], []) for p in as_json)
    assert any(p["holds_matching_nothing"] == ["TYPO-1"] for p in as_json)

    assert retentiond("-c", config_file, "run", "--once").returncode == 0
    status = retentiond("-c", config_file, "status")
    assert "hold TYPO-1: 0 held, MATCHES NOTHING" in status.stdout
    assert "hold TYPO-1 matches nothing: no object of any age in the stores of its rules" in (
        status.stdout
    )
    assert "REAL-1: " in status.stdout and "REAL-1 matches nothing" not in status.stdout
    assert status.returncode == 0  # AMBER: no deadline is missed, but it is shown
    status_json = json.loads(retentiond("-c", config_file, "status", "--json").stdout)
    flags = {h["id"]: h["matches_nothing"] for r in status_json["rules"] for h in r["holds"]}
    assert flags == {"TYPO-1": True, "REAL-1": False}

    # the demo is built from today's clock; the report's period covers its run
    today = datetime.now(UTC).date()
    period = ("--from", str(today - timedelta(days=7)), "--to", str(today + timedelta(days=1)))
    report = retentiond("-c", config_file, "report", *period, "--format", "json")
    assert report.returncode == 0, report.stderr
    in_force = {h["id"]: h for h in json.loads(report.stdout)["holds"]["in_force"]}
    assert in_force["TYPO-1"]["matches_nothing"] is True
    assert in_force["REAL-1"]["matches_nothing"] is False
    html = retentiond("-c", config_file, "report", *period).stdout
    assert "TYPO-1<br><strong>matches nothing</strong>" in html
    assert "Hold TYPO-1 matches nothing" in html
    for output in (planned.stdout, status.stdout, report.stdout, html):
        assert NOBODY[3:] not in output and caller[3:] not in output
