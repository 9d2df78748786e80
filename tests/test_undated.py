"""Never GREEN while data is left undated.

Objects no date can be read from (a time column holding garbage or NULL, recordings without a
date where age_from looks, a msgNNNN.txt without origtime) never expire, so they are never
deleted. Beyond the tolerated share of a store (`max_undated_fraction`, default 1%) the store
fails `check`, `plan`, the run's verification and `status`, with the count and what to set;
within it the count is shown. Counts only reach the deletion log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pbxdata import PbxDatabase
from privacy import leaked
from spool import add_message
from test_cli import retentiond

from retentiond.cli.status import status_text
from retentiond.config.loader import LoadedConfig, load_config
from retentiond.config.model import Safety, SqlStoreConfig
from retentiond.engine.engine import Engine
from retentiond.engine.outcome import RunOutcome, exit_code
from retentiond.engine.status import EXIT_DEADLINE, compute
from retentiond.errors import ConfigError
from retentiond.evidence import log as audit
from retentiond.evidence.report import build
from retentiond.evidence.report.values import Period
from retentiond.service.metrics import Metrics
from retentiond.service.runner import outcome_from_fields
from retentiond.stores import Survey

NUMBER = "+4930123456"
GARBAGE = "yesterday"
# A fixed clock for the in-process runs (the command-line runs build their data from `now`).
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


# -- the share --------------------------------------------------------------------------------


def _survey(undated: int, total: int, expired: int = 0) -> Survey:
    skipped = {"undated": undated}
    return Survey(unit="rows", total=total, expired=expired, oldest=None, skipped=skipped)


SQL = SqlStoreConfig(type="sql", connection="cdrdb", table="cdr", time_column="calldate")


def test_the_tolerated_share_is_one_percent_unless_the_store_or_safety_says_otherwise() -> None:
    from retentiond.engine.undated import (
        undated_failure,  # here: the other tests run on any version
    )

    assert undated_failure(_survey(1, 100), SQL, Safety()) is None
    failure = undated_failure(_survey(2, 100), SQL, Safety())
    assert failure is not None
    assert failure.startswith("2 of 100 rows (2%) have no readable time in calldate")
    assert "more than the tolerated 1%" in failure
    assert "time_column" in failure and "max_undated_fraction" in failure
    strict = Safety(max_undated_fraction=0)
    assert undated_failure(_survey(1, 1_000_000), SQL, strict) is not None
    lenient = SQL.model_copy(update={"max_undated_fraction": 0.5})
    assert undated_failure(_survey(50, 100), lenient, strict) is None
    assert undated_failure(_survey(51, 100), lenient, strict) is not None


def test_the_share_is_of_what_a_delete_leaves_so_plan_and_run_agree() -> None:
    from retentiond.engine.undated import undated_failure

    # 5 undated among 1000 is 0.5%, but the run deletes 990 and leaves 5 of 10
    failure = undated_failure(_survey(5, 1000, expired=990), SQL, Safety())
    assert failure is not None
    assert failure.startswith("5 of 1000 rows (50% of the 10 left after deletion)")
    assert undated_failure(_survey(5, 10), SQL, Safety()) is not None  # the run's verification
    # Anonymizing keeps every row: the share is of all of them
    assert undated_failure(_survey(5, 1000, expired=990), SQL, Safety(), deletes=False) is None


def test_a_share_outside_zero_to_one_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "retentiond.yaml"
    config.write_text(
        f"""\
version: 1
audit: {{path: {tmp_path / "audit.jsonl"}}}
rules:
  - name: recordings
    keep: 30d
    stores:
      - {{type: files, root: {tmp_path}, max_undated_fraction: 1.5}}
safety: {{max_undated_fraction: -0.1}}
"""
    )
    with pytest.raises(ConfigError) as error:
        load_config(config)
    problems = sorted(str(problem).split(": ", 1)[1] for problem in error.value.problems)
    assert problems == [
        "rules.0.stores.0.max_undated_fraction: Input should be less than or equal to 1",
        "safety.max_undated_fraction: Input should be greater than or equal to 0",
    ]


# -- SQL on SQLite, MariaDB and PostgreSQL, through the command line --------------------------


def _undated_rows(database: PbxDatabase) -> None:
    """Three calls whose calldate no reader can date (values the PBX or a broken import left)."""
    if database.dialect == "sqlite":
        values: list[object] = [GARBAGE, "", None]
        database.insert("cdr", [{"calldate": v, "src": NUMBER} for v in values])
        return
    if database.dialect == "mariadb":
        database.execute("ALTER TABLE cdr MODIFY calldate datetime NULL")
    else:
        database.execute("ALTER TABLE cdr ALTER COLUMN calldate DROP NOT NULL")
    database.execute(
        *["INSERT INTO cdr (calldate, src, uniqueid) VALUES (NULL, :src, 'u')"] * 3, src=NUMBER
    )


def _call_records(database: PbxDatabase, now: datetime) -> None:
    """Two calls 200 days old, one a day old (keep is 90 days), and three undated."""
    database.create("cdr")
    wall = [now - timedelta(days=200), now - timedelta(days=199), now - timedelta(days=1)]
    naive = [moment.replace(tzinfo=None) for moment in wall]
    rows = database.cdr_rows(naive)
    database.insert("cdr", rows)
    _undated_rows(database)


def _sql_config(tmp_path: Path, url: str, store_extra: str = "") -> Path:
    config = tmp_path / "retentiond.yaml"
    config.write_text(
        f"""\
version: 1
timezone: UTC
audit: {{path: {tmp_path / "audit.jsonl"}}}
connections:
  cdrdb: {{url: "{url}"}}
rules:
  - name: call-records
    keep: 90d
    stores:
      - {{type: sql, connection: cdrdb, table: cdr, time_column: calldate{store_extra}}}
safety: {{max_delete_fraction: 1.0}}
"""
    )
    return config


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("mariadb", marks=pytest.mark.mariadb),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.mark.server_clock  # runs retentiond against the server
def test_undated_call_records_fail_check_plan_the_run_and_status(
    tmp_path: Path, database_url: str, pbx_database: Callable[[str], PbxDatabase]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    database = pbx_database(database_url)
    _call_records(database, now)
    config = _sql_config(tmp_path, database_url)

    check = retentiond("-c", config, "check")
    assert check.returncode == 1, check.stdout + check.stderr
    assert (
        "cdrdb/cdr: FAILED: 3 of 6 rows (75% of the 4 left after deletion) have no readable time "
        "in calldate and are never deleted; more than the tolerated 1%. Set time_column"
        in check.stdout
    )
    assert "max_undated_fraction" in check.stdout

    plan = retentiond("-c", config, "plan")
    assert plan.returncode == 1, plan.stdout + plan.stderr
    assert "FAILED: 3 of 6 rows (75% of the 4 left after deletion) have no" in plan.stdout
    assert "1 store(s) hold objects that cannot be dated" in plan.stderr
    planned = retentiond("-c", config, "plan", "--json")
    assert planned.returncode == 1
    (store,) = json.loads(planned.stdout)[0]["stores"]
    assert store["undated"] == 3 and "3 of 6 rows" in store["undated_failure"]

    run = retentiond("-c", config, "run", "--once")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "rule call-records: failed" in run.stdout
    assert "NOT verified: 3 of 4 rows (75%) cannot be dated" in run.stdout
    assert "verified: none expired remain" not in run.stdout
    # What could be dated was enforced: the old calls are gone, the young one and the undated
    # ones stay.
    assert database.count("cdr") == 4
    entries = list(audit.read_entries(tmp_path / "audit.jsonl"))
    (finished,) = [e for e in entries if e.type == "run_finished"]
    assert finished.fields["status"] == "failed" and finished.fields["deleted"] == 2
    (outcome,) = finished.fields["stores"]
    assert (outcome["undated"], outcome["undated_tolerated"], outcome["undated_failed"]) == (
        3,
        0.01,
        True,
    )
    log_text = (tmp_path / "audit.jsonl").read_text()
    personal = [NUMBER, NUMBER[1:], GARBAGE]
    assert leaked(personal, jsonl=[log_text], texts=[run.stdout, run.stderr]) == []

    status = retentiond("-c", config, "status")
    assert status.returncode == EXIT_DEADLINE, status.stdout + status.stderr
    assert "rule call-records: RED" in status.stdout
    assert "RED: cdrdb/cdr: 3 of 4 rows (75%) have no readable time in calldate" in status.stdout
    assert "overall: RED (exit 4)" in status.stdout


def test_undated_rows_within_the_tolerated_share_are_shown_and_pass(
    tmp_path: Path, sqlite_url: str, pbx_database: Callable[[str], PbxDatabase]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    database = pbx_database(sqlite_url)
    _call_records(database, now)
    config = _sql_config(tmp_path, sqlite_url, ", max_undated_fraction: 0.75")
    note = "undated: 3 of {} rows ({}) cannot be dated and are never deleted (tolerated up to 75%)"
    planned = "75% of the 4 left after deletion"

    check = retentiond("-c", config, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert note.format(6, planned) in check.stdout
    plan = retentiond("-c", config, "plan")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert note.format(6, planned) in plan.stdout
    run = retentiond("-c", config, "run", "--once")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "verified: none expired remain" in run.stdout
    assert note.format(4, "75%") in run.stdout
    status = retentiond("-c", config, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert note.format(4, "75%") in status.stdout
    assert "overall: GREEN (exit 0)" in status.stdout


# -- files and voicemail, in process at a fixed clock ------------------------------------------


def _run(loaded: LoadedConfig) -> list[RunOutcome]:
    engine = Engine(loaded, now=lambda: NOW)
    with audit.AuditLog(loaded.config.audit.path, clock=lambda: NOW) as log:
        return [engine.run(rule, log) for rule in loaded.config.rules]


def _finished_stores(loaded: LoadedConfig) -> list[dict[str, object]]:
    entries = audit.read_entries(loaded.config.audit.path)
    return [s for e in entries if e.type == "run_finished" for s in e.fields["stores"]]


def _config(tmp_path: Path, keep: str, store: str) -> LoadedConfig:
    config = tmp_path / "retentiond.yaml"
    config.write_text(
        f"""\
version: 1
timezone: UTC
audit: {{path: {tmp_path / "audit.jsonl"}}}
rules:
  - name: data
    keep: {keep}
    stores:
      - {store}
safety: {{max_delete_fraction: 1.0}}
"""
    )
    return load_config(config)


@pytest.mark.parametrize(
    ("age_from", "dated", "where"),
    [
        ("path_date", "2026/05/01/out-201-0301234-20260501-100000-1777.1.wav", "folder path"),
        ("filename_date", "out-201-0301234-20260501-100000-1777.1.wav", "file name"),
    ],
)
def test_recordings_without_a_date_fail_the_run_and_status(
    tmp_path: Path, age_from: str, dated: str, where: str
) -> None:
    root = tmp_path / "monitor"
    old = root / dated
    undated = [root / "incoming" / "call-a.wav", root / "call-b.wav"]
    for path in [old, *undated]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"RIFF")
    loaded = _config(tmp_path, "30d", f"{{type: files, root: {root}, age_from: {age_from}}}")

    engine = Engine(loaded, now=lambda: NOW)
    rule = loaded.config.rules[0]
    with engine.open_stores(rule) as stores:
        (store_plan,) = engine.plan(rule, stores).stores
    assert store_plan.undated_failure is not None
    assert store_plan.undated_failure.startswith(
        f"2 of 3 files (100% of the 2 left after deletion) have no date in their {where}"
    )
    assert "Set age_from" in store_plan.undated_failure

    (outcome,) = _run(loaded)
    assert outcome.status == "failed" and exit_code([outcome]) == 1
    assert outcome.deleted == 1 and not old.exists()
    assert all(path.exists() for path in undated)
    assert outcome.message is not None and "2 of 2 files (100%)" in outcome.message
    (finished,) = _finished_stores(loaded)
    assert (finished["undated"], finished["undated_failed"]) == (2, True)

    status = compute(loaded, now=NOW)
    assert status.verdict == "red" and status.exit_code == EXIT_DEADLINE
    assert "2 of 2 files (100%) have no date" in status_text(status)


def test_the_report_metrics_and_the_daemon_see_the_failure(tmp_path: Path) -> None:
    root = tmp_path / "monitor"
    for name in ("2026/05/01/old.wav", "incoming/call-a.wav", "call-b.wav"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"RIFF")
    loaded = _config(tmp_path, "30d", f"{{type: files, root: {root}, age_from: path_date}}")
    (outcome,) = _run(loaded)

    # The DPO report: no verified run, and the incident names the counts.
    period = Period(NOW.date() - timedelta(days=6), NOW.date(), UTC)
    report = build.build_report(loaded, [], period, generated_at=NOW + timedelta(hours=1))
    (row,) = report.compliance
    assert (row.last_status, row.level) == ("failed", "red")
    (incident,) = report.incidents
    assert incident.kind == "failed"
    assert incident.reason == (
        f"{root}: 2 objects cannot be dated and are never deleted (tolerated: 1%)"
    )
    # Prometheus: the failed run and what stays undated.
    metrics = Metrics(loaded.config.rules)
    metrics.run_finished(loaded.config.rules[0], outcome)
    sample = metrics.registry.get_sample_value
    assert sample("retentiond_undated", {"rule": "data"}) == 2
    assert sample("retentiond_errors_total", {"rule": "data", "kind": "failed"}) == 1
    # The daemon's run process reports the outcome as JSON: the counts survive the trip.
    fields = asdict(outcome) | {"cutoff": outcome.cutoff.isoformat() if outcome.cutoff else None}
    (store,) = outcome_from_fields(json.loads(json.dumps(fields))).stores
    assert store.undated is not None and store.undated.counts() == "2 of 2 files (100%)"
    assert store.undated_failure == outcome.stores[0].undated_failure


def test_voicemail_without_origtime_fails_the_run_and_status(tmp_path: Path) -> None:
    spool = tmp_path / "voicemail"
    add_message(spool, "1001", "INBOX", 0, origtime=NOW - timedelta(days=200))
    add_message(spool, "1001", "INBOX", 1, origtime=NOW - timedelta(days=1))
    broken = add_message(spool, "1001", "Old", 0, origtime=NOW, txt="[message]\nduration=3\n")
    loaded = _config(tmp_path, "60d", f"{{type: asterisk_voicemail, root: {spool}}}")

    (outcome,) = _run(loaded)

    assert outcome.status == "failed" and exit_code([outcome]) == 1
    assert outcome.deleted == 1 and broken.exists()
    assert outcome.message is not None
    assert "1 of 2 messages (50%) have a msgNNNN.txt without a usable origtime" in outcome.message
    (finished,) = _finished_stores(loaded)
    assert (finished["undated"], finished["undated_failed"]) == (1, True)
    status = compute(loaded, now=NOW)
    assert status.verdict == "red" and status.exit_code == EXIT_DEADLINE


def test_an_anonymize_rule_with_undated_rows_fails_its_run(
    tmp_path: Path, sqlite_url: str, pbx_database: Callable[[str], PbxDatabase]
) -> None:
    database = pbx_database(sqlite_url)
    _call_records(database, NOW)
    config = tmp_path / "retentiond.yaml"
    config.write_text(
        f"""\
version: 1
timezone: UTC
audit: {{path: {tmp_path / "audit.jsonl"}}}
connections:
  cdrdb: {{url: "{sqlite_url}"}}
rules:
  - name: call-records
    keep: 90d
    action: anonymize
    stores:
      - type: sql
        connection: cdrdb
        table: cdr
        time_column: calldate
        anonymize: {{src: blank, dst: blank, clid: blank}}
safety: {{max_delete_fraction: 1.0}}
"""
    )
    loaded = load_config(config)

    (outcome,) = _run(loaded)

    assert outcome.status == "failed" and outcome.anonymized == 2
    assert outcome.message is not None
    assert outcome.message.startswith("cdrdb/cdr: 3 of 6 rows (50%) have no readable time")
    assert database.count("cdr", "src = :number", number=NUMBER) == 3  # undated: untouched
    (finished,) = _finished_stores(loaded)
    assert (finished["undated"], finished["undated_failed"]) == (3, True)
