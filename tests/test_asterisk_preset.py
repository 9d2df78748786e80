"""The asterisk preset on Asterisk as installed: the tables its cdr_sqlite3_custom.conf makes.

The conf files are Asterisk's own samples (tests/vendor/asterisk: 20.18.2's `[master]`,
23.3.0's `[cdr_master]` and `[cdr_advanced]`), enabled as an administrator does; the databases
are built as Asterisk builds them (tests/asterisk_cdr.py). Neither sample has src or dst: the
caller's number is only in clid.

`check` and `plan` run as commands with the real clock: the calls lie at whole days before now,
none within a week of the cutoff, so the counts hold on any day. Runs use a fixed `now`.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asterisk_cdr import (
    SAMPLE_20,
    SAMPLE_23,
    build_database,
    calldates,
    enabled,
    field_value,
    write_conf,
)
from test_cli import retentiond

from retentiond.config.loader import load_config
from retentiond.config.pbxfiles import PbxSettingsError, read_cdr_sqlite3_custom
from retentiond.engine.engine import Engine
from retentiond.engine.outcome import RunOutcome
from retentiond.evidence import log as audit

NOW = datetime.now(UTC).replace(microsecond=0)
# keep 3 months: the cutoff is 89 to 92 days back; five calls are older, five younger
DAYS_BACK = [1, 10, 30, 60, 80, 100, 120, 200, 300, 364]
EXPIRED = [d for d in DAYS_BACK if d > 92]
STARTS = [NOW - timedelta(days=d) for d in DAYS_BACK]
ADVANCED_FIELDS = (
    '{start},"some literal",clid,dcontext,channel,dstchannel,lastapp,lastdata,duration,billsec,'
    "disposition,amaflags,accountcode,uniqueid,userfield,ds_store(uservar)"
)


def preset_config(tmp_path: Path) -> Path:
    """The three-line preset config, with the folders of this test and a log of its own."""
    (tmp_path / "spool" / "voicemail").mkdir(parents=True, exist_ok=True)
    config = tmp_path / "retentiond.yaml"
    config.write_text(
        "version: 1\n"
        "preset: asterisk\n"
        "keep: {call-records: 3 months, voicemail: 60d, call-recordings: 30d}\n"
        f"preset_settings: {{astetcdir: {tmp_path / 'etc'}, astlogdir: {tmp_path / 'log'}, "
        f"astspooldir: {tmp_path / 'spool'}}}\n"
        "timezone: UTC\n"
        f"audit: {{path: {tmp_path / 'audit.jsonl'}}}\n"
        "safety: {max_delete_fraction: 0.95}\n"
    )
    return config


def planned(config: Path) -> dict[str, dict[str, object]]:
    """`plan --json`'s call-records stores by label; the command exits 0."""
    plan = retentiond("-c", config, "plan", "--json")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    rule = next(r for r in json.loads(plan.stdout) if r["rule"] == "call-records")
    return {store["store"]: store for store in rule["stores"]}


def checked(config: Path) -> str:
    check = retentiond("-c", config, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    return check.stdout


def run_at_now(config: Path) -> RunOutcome:
    loaded = load_config(config)
    with audit.AuditLog(loaded.config.audit.path) as log:
        return Engine(loaded, now=lambda: NOW).run(loaded.config.rule("call-records"), log)


def young(start: str = "start") -> list[str]:
    """The stored times of the calls a run keeps, in the form `start` writes."""
    return [field_value(start, s, 0) for s in STARTS if (NOW - s).days not in EXPIRED]


@pytest.mark.parametrize(
    ("sample", "category", "database"),
    [(SAMPLE_23, "cdr_master", "cdr_master.db"), (SAMPLE_20, "master", "master.db")],
    ids=["23.3-cdr_master", "20.18-master"],
)
def test_the_sample_mapping_is_checked_planned_and_purged_without_src_or_dst(
    tmp_path: Path, sample: Path, category: str, database: str
) -> None:
    conf = write_conf(tmp_path / "etc", enabled(sample, category))
    (path,) = build_database(conf, tmp_path / "log", STARTS).values()
    assert path == tmp_path / "log" / database
    config = preset_config(tmp_path)
    label = f"{'masterdb' if category == 'master' else category}/cdr"

    report = checked(config)
    assert f"sql {label}: ok" in report
    assert "subjects: clid" in report
    store = planned(config)[label]
    assert (store["total"], store["expired"], store["skipped"]) == (10, len(EXPIRED), {})

    outcome = run_at_now(config)
    assert outcome.status == "done"
    (sql,) = [s for s in outcome.stores if s.label == label]
    assert (sql.deleted, sql.remaining, sql.skipped) == (len(EXPIRED), 0, {})
    assert calldates(path) == young()


def test_epoch_seconds_of_start_int64_are_purged_and_verified(tmp_path: Path) -> None:
    """23.x documents `start(int64)`; before, every row was undated and the run said done."""
    fields = ADVANCED_FIELDS.format(start="start(int64)")
    conf = write_conf(tmp_path / "etc", enabled(SAMPLE_23, "cdr_advanced", fields=fields))
    (path,) = build_database(conf, tmp_path / "log", STARTS).values()
    config = preset_config(tmp_path)

    assert "time column calldate (epoch seconds stored as text)" in checked(config)
    store = planned(config)["cdr_advanced/cdr"]
    assert (store["expired"], store["skipped"]) == (len(EXPIRED), {})

    outcome = run_at_now(config)
    assert outcome.status == "done"
    (sql,) = [s for s in outcome.stores if s.label == "cdr_advanced/cdr"]
    assert (sql.deleted, sql.remaining, sql.skipped) == (len(EXPIRED), 0, {})
    assert calldates(path) == young("start(int64)")


def test_the_init_config_names_the_file_table_and_columns_the_conf_gives(
    tmp_path: Path,
) -> None:
    fields = ADVANCED_FIELDS.format(start="start(float)")
    write_conf(tmp_path / "etc", enabled(SAMPLE_23, "cdr_advanced", fields=fields, table="calls"))
    written = tmp_path / "written.yaml"
    init = retentiond(
        "init",
        "--preset",
        "asterisk",
        "--set",
        f"astetcdir={tmp_path / 'etc'}",
        "--set",
        f"astlogdir={tmp_path / 'log'}",
        "-o",
        written,
    )
    assert init.returncode == 0, init.stderr
    text = written.read_text()
    assert f"url: sqlite:///{tmp_path / 'log' / 'cdr_advanced.db'}" in text
    assert "master.db" not in text  # neither master.db nor cdr_master.db: the conf says where
    assert "table: calls" in text
    assert "time_column: calldate" in text
    assert re.search(r"subject_columns:\s*- clid\n", text)


def test_without_a_mapping_both_files_the_samples_name_are_looked_for(tmp_path: Path) -> None:
    """The sample as shipped maps nothing; a cdr_master.db left by it is still purged."""
    write_conf(tmp_path / "etc", SAMPLE_23.read_text())
    legacy = write_conf(tmp_path / "old", enabled(SAMPLE_23, "cdr_master"))
    (path,) = build_database(legacy, tmp_path / "log", STARTS).values()
    config = preset_config(tmp_path)

    report = checked(config)
    assert "sql cdr_master/cdr: ok" in report
    assert "sql masterdb/cdr: not found (optional)" in report
    stores = planned(config)
    assert stores["cdr_master/cdr"]["expired"] == len(EXPIRED)
    assert stores["masterdb/cdr"]["absent"]
    assert run_at_now(config).status == "done"
    assert calldates(path) == young()


def test_a_misspelt_subject_column_of_a_written_config_stays_an_error(tmp_path: Path) -> None:
    conf = write_conf(tmp_path / "etc", enabled(SAMPLE_23, "cdr_master"))
    (path,) = build_database(conf, tmp_path / "log", STARTS).values()
    (tmp_path / "spool").mkdir()
    config = tmp_path / "hand.yaml"
    config.write_text(
        "version: 1\n"
        f"audit: {{path: {tmp_path / 'audit.jsonl'}}}\n"
        f"connections: {{cdr: {{url: 'sqlite:///{path}'}}}}\n"
        "rules:\n"
        "  - {name: call-records, keep: 3 months, schedule: daily 03:00, stores: [{type: sql,\n"
        "     connection: cdr, table: cdr, time_column: calldate, subject_columns: [cllid]}]}\n"
    )
    check = retentiond("-c", config, "check")
    assert check.returncode == 1
    assert "subject_columns names column cllid, not in table cdr" in check.stdout + check.stderr


def test_the_reader_follows_asterisk_config_syntax(tmp_path: Path) -> None:
    conf = tmp_path / "cdr_sqlite3_custom.conf"
    conf.write_text(
        ";-- a block comment\n[ignored]\ncolumns = a\nvalues = 'x'\n--;\n"
        "[common](!)\ntable => calls ; trailing comment\n"
        "[/srv/cdr/calls.db](common)\n"
        "columns = 'when', who, \"what\"\n"
        "values = '${CDR(start,u)}','${CSV_QUOTE(${CDR(src)})}','${CDR(dst)};x\\;y'\n"
        "[empty]\ntable = cdr\n"
    )
    (mapping,) = read_cdr_sqlite3_custom(conf)
    assert mapping.category == "/srv/cdr/calls.db"
    assert mapping.table == "calls"
    assert mapping.columns == ("when", "who", "what")
    assert mapping.fields == ("start", "src", "dst")


def test_a_mapping_asterisk_refuses_is_reported(tmp_path: Path) -> None:
    conf = tmp_path / "cdr_sqlite3_custom.conf"
    conf.write_text("[cdr_master]\ncolumns = calldate, clid\nfields = start\n")
    with pytest.raises(PbxSettingsError, match="2 columns but 1 values"):
        read_cdr_sqlite3_custom(conf)


def test_anonymizing_blanks_the_caller_id_of_expired_epoch_rows_and_keeps_them(
    tmp_path: Path,
) -> None:
    fields = ADVANCED_FIELDS.format(start="start(int64)")
    conf = write_conf(tmp_path / "etc", enabled(SAMPLE_23, "cdr_advanced", fields=fields))
    (path,) = build_database(conf, tmp_path / "log", STARTS).values()
    config = preset_config(tmp_path)
    config.write_text(config.read_text() + "anonymize: {call-records: never}\n")

    outcome = run_at_now(config)
    assert outcome.status == "done"
    (sql,) = [s for s in outcome.stores if s.label == "cdr_advanced/cdr"]
    assert sql.anonymized == len(EXPIRED)
    assert calldates(path) == [field_value("start(int64)", s, 0) for s in STARTS]
    blanked = calldates(path, "clid")
    assert blanked.count("") == len(EXPIRED)
    assert [c for c in blanked if c] == [field_value("clid", s, 0) for s in STARTS][: -len(EXPIRED)]


def test_mappings_in_an_included_file_are_read(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    write_conf(etc, '#include "cdr.d/*.conf"\n#tryinclude "local.conf"\n')
    (etc / "cdr.d").mkdir()
    (etc / "cdr.d" / "master.conf").write_text(enabled(SAMPLE_23, "cdr_master"))
    (mapping,) = read_cdr_sqlite3_custom(etc / "cdr_sqlite3_custom.conf")
    assert mapping.category == "cdr_master"

    write_conf(etc, "#include missing.conf\n")
    with pytest.raises(PbxSettingsError, match=r"includes missing\.conf, which does not exist"):
        read_cdr_sqlite3_custom(etc / "cdr_sqlite3_custom.conf")


def test_a_master_db_left_by_an_earlier_release_is_purged_beside_the_new_file(
    tmp_path: Path,
) -> None:
    """Upgraded to 23.3 with its sample: new calls go to cdr_master.db, old ones stay in
    master.db, which the conf no longer names."""
    old = write_conf(tmp_path / "old", enabled(SAMPLE_20, "master"))
    (old_file,) = build_database(old, tmp_path / "log", STARTS).values()
    conf = write_conf(tmp_path / "etc", enabled(SAMPLE_23, "cdr_master"))
    (new_file,) = build_database(conf, tmp_path / "log", STARTS).values()
    config = preset_config(tmp_path)

    report = checked(config)
    assert "sql cdr_master/cdr: ok" in report and "sql masterdb/cdr: ok" in report
    assert run_at_now(config).status == "done"
    assert calldates(old_file) == calldates(new_file) == young()
