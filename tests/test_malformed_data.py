"""Hostile and broken data in the stores: malformed msgNNNN.txt, CSV lines with broken quoting,
NUL bytes and invalid UTF-8, NULL and zero call dates. Each store reads them without a crash,
never deletes them, and counts them; a whole run over them completes (failing for what it cannot
date) and its audit log carries counts only.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pbxdata import PbxDatabase, cdr_rows, sqlite_cdr_rows
from privacy import leaked
from spool import CALLERIDS, add_message, message_txt, set_mtime
from sqlalchemy import text
from test_cli import retentiond

from retentiond.config.model import (
    ConnectionConfig,
    SqlStoreConfig,
)
from retentiond.stores.csv.lines import UNPARSEABLE
from retentiond.stores.csv.store import CsvStore
from retentiond.stores.sql.store import SqlStore
from retentiond.stores.sql.survey import UNDATED
from retentiond.stores.voicemail.store import MALFORMED_TXT, VoicemailStore

BERLIN = ZoneInfo("Europe/Berlin")
CUTOFF = datetime(2026, 2, 14, 12, 0, tzinfo=UTC)
OLD = CUTOFF - timedelta(days=200)
YOUNG = CUTOFF + timedelta(days=3)
TXT_LIMIT = 64 * 1024  # what the voicemail store reads of a msgNNNN.txt

CALLER = "Erika Mustermann"
NUMBER = "+4930123456"


# -- voicemail: msgNNNN.txt that say nothing usable --------------------------------------------


def _straddling_origtime() -> bytes:
    """A .txt whose origtime line is cut by the 64 KiB read: `origtime=17` of a 2026 value."""
    head = b"[message]\n;"
    tail = b"\norigtime="
    young = str(int(YOUNG.timestamp())).encode()
    padding = TXT_LIMIT - len(head) - len(tail) - 2
    return head + b"x" * padding + tail + young + b"\n"


def _asterisk_txt(origtime: datetime) -> bytes:
    return message_txt(
        origtime=origtime, mailbox="1001", callerid=CALLERIDS[0], sequence=1
    ).encode()


MALFORMED_TXTS: dict[str, bytes] = {
    # Asterisk writes each key once: with two, which is true cannot be told.
    "origtime twice, old then young": (
        _asterisk_txt(OLD) + b"origtime=%d\n" % int(YOUNG.timestamp())
    ),
    "origtime twice, the same": _asterisk_txt(OLD) + b"origtime=%d\n" % int(OLD.timestamp()),
    "callerid twice": _asterisk_txt(OLD) + b"callerid=" + CALLERIDS[1].encode() + b"\n",
    "other section only": b"[general]\norigtime=1700000000\ncallerid=x\n",
    "binary garbage": bytes(range(256)) * 8,
    "origtime missing": b'[message]\ncallerid="A" <1>\nduration=3\n',
    "origtime negative": b"[message]\norigtime=-1700000000\n",
    "origtime zero": b"[message]\norigtime=0\n",
    "origtime huge": b"[message]\norigtime=999999999999\n",
    "origtime 40 digits": b"[message]\norigtime=" + b"9" * 40 + b"\n",
    "origtime non-numeric": b"[message]\norigtime=yesterday\n",
    "origtime float": b"[message]\norigtime=1700000000.5\n",
    "origtime empty": b"[message]\norigtime=\n",
    "invalid utf-8": b"[message]\n\xff\xfe\xfd\norigtime=\xc3\x28\ncallerid=\xff\n",
    "nul bytes": b"[message]\norigtime=17000\x0000000\n",
    "empty file": b"",
    "huge file, origtime after 64 KiB": b"[message]\n" + b";" * (2 * TXT_LIMIT) + b"\norigtime=1\n",
}


@pytest.fixture
def voicemail_store(
    open_voicemail_store: Callable[..., VoicemailStore],
) -> Callable[[Path], VoicemailStore]:
    def make(root: Path) -> VoicemailStore:
        return open_voicemail_store(root, lock_wait=0.2)

    return make


def test_malformed_msg_txt_is_counted_and_never_deleted(
    tmp_path: Path, voicemail_store: Callable[[Path], VoicemailStore]
) -> None:
    root = tmp_path / "voicemail"
    good = add_message(root, "1001", "INBOX", 0, origtime=OLD)
    malformed = [
        add_message(root, "1001", "INBOX", number, origtime=OLD, txt="", mtime=OLD)
        for number in range(1, len(MALFORMED_TXTS) + 1)
    ]
    for message, content in zip(malformed, MALFORMED_TXTS.values(), strict=True):
        txt = message.folder / f"{message.stem}.txt"
        txt.write_bytes(content)
        set_mtime(txt, OLD)  # every file is old: only a readable origtime may expire it
    store = voicemail_store(root)

    survey = store.survey(CUTOFF)
    assert (survey.total, survey.expired) == (1 + len(MALFORMED_TXTS), 1)
    assert survey.skipped == {MALFORMED_TXT: len(MALFORMED_TXTS)}
    assert survey.oldest == OLD

    skipped: Counter[str] = Counter()
    deleted = 0
    for batch in store.batches(CUTOFF):
        result = store.apply(batch, CUTOFF)
        deleted += result.deleted
        skipped.update(result.skipped)
    assert deleted == 1 and good.gone()
    assert skipped[MALFORMED_TXT] == len(MALFORMED_TXTS)
    assert [m.key for m in malformed if not m.exists()] == []


def test_an_origtime_cut_by_the_read_limit_is_not_taken_for_a_date(
    tmp_path: Path, voicemail_store: Callable[[Path], VoicemailStore]
) -> None:
    """A young message whose .txt is padded so its origtime line ends past 64 KiB: the cut
    value (`origtime=17`, 1970) must not make it look expired."""
    root = tmp_path / "voicemail"
    message = add_message(root, "1001", "INBOX", 0, origtime=YOUNG, mtime=OLD)
    txt = message.folder / f"{message.stem}.txt"
    txt.write_bytes(_straddling_origtime())
    set_mtime(txt, OLD)
    store = voicemail_store(root)

    survey = store.survey(CUTOFF)
    assert survey.expired == 0
    assert survey.skipped == {MALFORMED_TXT: 1}
    assert list(store.batches(CUTOFF)) == []
    assert message.exists()


def test_a_message_with_a_second_origtime_is_kept_and_reported(tmp_path: Path) -> None:
    """Asterisk's own msgNNNN.txt with a second origtime added: old, then young. Read as the
    first, it was deleted; named twice, it is malformed: kept, and plan and run say so."""
    long_ago, far_ahead = datetime(2020, 1, 15, tzinfo=UTC), datetime(2099, 1, 15, tzinfo=UTC)
    spool = tmp_path / "voicemail"
    plain = add_message(spool, "1001", "INBOX", 0, origtime=long_ago)
    twice = add_message(
        spool,
        "1001",
        "INBOX",
        1,
        origtime=long_ago,
        txt=_asterisk_txt(long_ago).decode() + f"origtime={int(far_ahead.timestamp())}\n",
    )
    config = tmp_path / "retentiond.yaml"
    config.write_text(
        f"""\
version: 1
timezone: UTC
audit: {{path: {tmp_path / "audit.jsonl"}}}
rules:
  - name: voicemail
    keep: 60d
    stores:
      - {{type: asterisk_voicemail, root: {spool}}}
safety: {{max_delete_fraction: 1.0}}
"""
    )

    plan = retentiond("-c", config, "plan")
    run = retentiond("-c", config, "run", "--once")

    assert "expired 1," in plan.stdout, plan.stdout + plan.stderr
    assert f"{MALFORMED_TXT} 1" in plan.stdout
    assert f"{MALFORMED_TXT} 1" in run.stdout, run.stdout + run.stderr
    assert plain.gone()
    assert twice.exists()


# -- CSV: lines that are no records ------------------------------------------------------------


def csv_line(start: str, *, caller: bytes = CALLER.encode(), extra: bytes = b"") -> bytes:
    fields = [
        b'""',
        b'"' + NUMBER.encode() + b'"',
        b'"1001"',
        b'"from-internal"',
        b'"""' + caller + b'"" <' + NUMBER.encode() + b'>"',
        b'"PJSIP/1001-00000a1f"',
        b'"PJSIP/trunk-00000a20"',
        b'"Dial"',
        b'"PJSIP/1001,60"',
        b'"' + start.encode("utf-8", "surrogateescape") + b'"',
        b'"' + start.encode("utf-8", "surrogateescape") + b'"',
        b'"' + start.encode("utf-8", "surrogateescape") + b'"',
        b"42",
        b"40",
        b'"ANSWERED"',
        b'"DOCUMENTATION"',
        b'"1771000000.1"',
        b'""' + extra,
    ]
    return b",".join(fields) + b"\n"


EXPIRED_TIME = "2025-06-01 10:00:00"
YOUNG_TIME = "2026-03-01 10:00:00"

BROKEN_LINES: dict[str, bytes] = {
    "unterminated quote": b'"","' + NUMBER.encode() + b'","1001","' + EXPIRED_TIME.encode() + b"\n",
    "text after a closing quote": csv_line(EXPIRED_TIME).replace(b'"Dial"', b'"Dial"x', 1),
    "too few fields": b'"","' + NUMBER.encode() + b'","1001"\n',
    "empty line": b"\n",
    "only commas": b",,,,,,,,,,,,,,,,,\n",
    "NUL in the time field": csv_line("2025-06-01\x0010:00:00"),
    "invalid UTF-8 in the time field": csv_line("2025-06-01 10:00:\udcff\udcfe"),
    "zero date": csv_line("0000-00-00 00:00:00"),
    "empty date": csv_line(""),
    "garbage date": csv_line("garbage"),
    "day 31 of February": csv_line("2025-02-31 10:00:00"),
    "year 0001 in Berlin": csv_line("0001-01-01 00:00:00"),
    "bare carriage return": csv_line(EXPIRED_TIME).replace(b'"Dial"', b"Di\ral", 1),
}


@pytest.fixture
def csv_store(open_csv_store: Callable[..., CsvStore]) -> Callable[[Path], CsvStore]:
    def make(root: Path) -> CsvStore:
        return open_csv_store(root, zone=BERLIN)

    return make


def test_broken_csv_lines_are_kept_byte_for_byte_and_counted(
    tmp_path: Path, csv_store: Callable[[Path], CsvStore]
) -> None:
    root = tmp_path / "cdr-csv"
    root.mkdir()
    expired = [
        csv_line(EXPIRED_TIME),
        csv_line(EXPIRED_TIME, caller=b"Erika\x00Mustermann"),  # a NUL in a name: still a record
        csv_line(EXPIRED_TIME, caller=b"Erika \xff\xfe Mustermann"),  # not UTF-8: still a record
        csv_line(EXPIRED_TIME).replace(b"42,", b'4"2,', 1),  # a stray quote: csv reads it as text
    ]
    young = [
        csv_line(YOUNG_TIME),
        csv_line(YOUNG_TIME, caller=b"\xc3\x28 Mustermann\x00"),
        csv_line(YOUNG_TIME, extra=b',"one field too many"'),
    ]
    broken = list(BROKEN_LINES.values())
    lines = [expired[0], *broken[:7], young[0], expired[1], *broken[7:], young[1], expired[2]]
    lines += [young[2], expired[3]]
    (root / "Master.csv").write_bytes(b"".join(lines))
    store = csv_store(root)

    survey = store.survey(CUTOFF)
    assert survey.total == len(lines)
    assert survey.expired == len(expired)
    assert survey.skipped == {UNPARSEABLE: len(broken)}

    results = [store.apply(batch, CUTOFF) for batch in store.batches(CUTOFF)]
    assert sum(result.deleted for result in results) == len(expired)
    kept = [line for line in lines if line not in expired]
    assert (root / "Master.csv").read_bytes() == b"".join(kept)
    after = store.survey(CUTOFF)
    assert (after.expired, after.skipped) == (0, {UNPARSEABLE: len(broken)})


# -- SQL: call dates that are no dates ---------------------------------------------------------


def sql_store(url: str, zone: ZoneInfo = BERLIN) -> SqlStore:
    config = SqlStoreConfig.model_validate(
        {"type": "sql", "connection": "cdrdb", "table": "cdr", "time_column": "calldate"}
    )
    store = SqlStore(config, ConnectionConfig.model_validate({"url": url}), zone)
    store.open()
    return store


def purge(store: SqlStore) -> int:
    return sum(store.apply(batch, CUTOFF).deleted for batch in store.batches(CUTOFF))


@pytest.mark.mariadb
def test_null_and_zero_calldates_in_a_freepbx_cdr_table_do_not_break_a_run(
    mariadb_url: str, pbx_database: Callable[[str], PbxDatabase]
) -> None:
    """FreePBX installs run with a lax sql_mode: zero dates and (in a nullable calldate) NULL.
    Neither is taken for the oldest call; both are counted as undated and never deleted (a zero
    date says nothing about the call's age)."""
    database = pbx_database(mariadb_url)
    database.create("cdr")
    database.execute("ALTER TABLE cdr MODIFY calldate datetime NULL")
    old = [datetime(2025, 6, 1, 10, 0) + timedelta(hours=i) for i in range(3)]
    young = [datetime(2026, 3, 1, 10, 0)]
    database.insert("cdr", cdr_rows(old + young))
    with database.engine.begin() as connection:
        connection.execute(text("SET SESSION sql_mode = ''"))
        for value in ("NULL", "NULL", "'0000-00-00 00:00:00'", "'0000-00-00'"):
            connection.execute(
                text(f"INSERT INTO cdr (calldate, src, uniqueid) VALUES ({value}, :src, 'x')"),
                {"src": NUMBER},
            )
    store = sql_store(mariadb_url)
    try:
        survey = store.survey(CUTOFF)
        assert survey.total == 8
        assert survey.skipped == {UNDATED: 4}
        assert survey.oldest is not None and survey.oldest.year == 2025  # not year 0
        purge(store)
        assert database.count("cdr", "calldate IS NULL") == 2
        assert database.count("cdr", "calldate < '1000-01-01'") == 2  # the zero dates
        assert database.count("cdr", "calldate >= '2026-01-01'") == 1
        assert database.count("cdr", "calldate >= '1000-01-01' AND calldate < '2026-01-01'") == 0
        after = store.survey(CUTOFF)
        assert (after.expired, after.skipped) == (0, {UNDATED: 4})
    finally:
        store.close()


def test_sqlite_calldates_that_are_no_dates_are_counted_and_kept(
    sqlite_url: str, pbx_database: Callable[[str], PbxDatabase]
) -> None:
    database = pbx_database(sqlite_url)
    database.create("cdr")
    database.insert("cdr", sqlite_cdr_rows([datetime(2025, 6, 1, 10, 0), datetime(2026, 3, 1)]))
    garbage: list[object] = [None, "", "garbage", " 2025-06-01", "25-06-01", 1700000000, 3.5]
    database.insert("cdr", [{"calldate": value, "src": NUMBER} for value in garbage])
    database.insert("cdr", [{"calldate": b"\xff\xfe2025", "src": NUMBER}])
    store = sql_store(sqlite_url)
    try:
        survey = store.survey(CUTOFF)
        assert (survey.total, survey.expired) == (10, 1)
        assert survey.skipped == {UNDATED: 8}
        assert purge(store) == 1
        assert database.count("cdr") == 9
        assert store.survey(CUTOFF).skipped == {UNDATED: 8}
    finally:
        store.close()


# -- a whole run over all of it ----------------------------------------------------------------


def test_a_run_over_malformed_data_completes_and_logs_counts_only(
    tmp_path: Path, pbx_database: Callable[[str], PbxDatabase]
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    old_wall = (now - timedelta(days=200)).astimezone(BERLIN).replace(tzinfo=None)
    spool = tmp_path / "voicemail"
    add_message(spool, "1001", "INBOX", 0, origtime=now - timedelta(days=200))
    bad = add_message(spool, "1001", "INBOX", 1, origtime=now, txt="", mtime=now - timedelta(400))
    (bad.folder / "msg0001.txt").write_bytes(b"[message]\ncallerid=" + CALLERIDS[0].encode())
    set_mtime(bad.folder / "msg0001.txt", now - timedelta(days=400))
    cdr_csv = tmp_path / "cdr-csv"
    cdr_csv.mkdir()
    master = cdr_csv / "Master.csv"
    broken = b"".join(BROKEN_LINES.values())
    master.write_bytes(csv_line(old_wall.strftime("%Y-%m-%d %H:%M:%S")) + broken)
    database_file = tmp_path / "master.db"
    database_file.touch()
    database = pbx_database(f"sqlite:///{database_file}")
    database.create("cdr")
    database.insert("cdr", sqlite_cdr_rows([old_wall]))
    database.insert("cdr", [{"calldate": v, "src": NUMBER} for v in (None, "", "garbage")])
    config = tmp_path / "retentiond.yaml"
    config.write_text(
        f"""\
version: 1
timezone: Europe/Berlin
audit: {{path: {tmp_path / "audit.jsonl"}}}
connections:
  masterdb: {{url: "sqlite:///{database_file}"}}
rules:
  - name: call-records
    keep: 90d
    stores:
      - {{type: sql, connection: masterdb, table: cdr, time_column: calldate}}
      - {{type: csv, root: {cdr_csv}}}
  - name: voicemail
    keep: 60d
    stores:
      - {{type: asterisk_voicemail, root: {spool}}}
safety: {{max_delete_fraction: 1.0}}
"""
    )

    run = retentiond("-c", config, "run", "--once", "--json")

    # Most of each store cannot be dated: the runs complete what can be dated and fail for
    # the rest (safety.max_undated_fraction), with counts only.
    assert run.returncode == 1, run.stderr
    assert [r["status"] for r in json.loads(run.stdout)["runs"]] == ["failed", "failed"]
    assert "Traceback" not in run.stderr
    assert master.read_bytes() == broken
    assert database.count("cdr") == 3
    assert bad.exists()
    audit_log = (tmp_path / "audit.jsonl").read_text()
    finished = [json.loads(line) for line in audit_log.splitlines()]
    assert any(entry.get("type") == "run_finished" for entry in finished)
    personal = [CALLER, "Mustermann", NUMBER, "4930123456", "msg0001", "garbage", "1001"]
    assert leaked(personal, jsonl=[audit_log], documents=[run.stdout], texts=[run.stderr]) == []
    voicemail = [
        e for e in finished if e.get("type") == "run_finished" and e.get("rule") == "voicemail"
    ]
    assert any(
        store.get("skipped", {}).get(MALFORMED_TXT) == 1
        for entry in voicemail
        for store in entry["stores"]
    )
    undated = [
        (store["undated"], store["undated_failed"])
        for entry in finished
        if entry.get("type") == "run_finished"
        for store in entry["stores"]
    ]
    assert sorted(undated) == [(1, True), (3, True), (len(BROKEN_LINES), True)]
    # The survey's counts are in each run's first entry too.
    started = {e["rule"]: e["stores"] for e in finished if e.get("type") == "run_started"}
    skipped = {s["kind"]: s.get("skipped") for s in started["call-records"]}
    assert skipped == {"sql": {UNDATED: 3}, "csv": {UNPARSEABLE: len(BROKEN_LINES)}}
    assert [s.get("skipped") for s in started["voicemail"]] == [{MALFORMED_TXT: 1}]


def test_sqlite_text_dates_that_are_no_real_times_survive_a_run_as_undated(
    tmp_path: Path, pbx_database: Callable[[str], PbxDatabase]
) -> None:
    """Text in the shape of a date that is no real time (month 13, February 30, 24:00), and a
    real date with text after it, are kept and counted undated: before, the first were taken
    for expired times and deleted, and the last made `plan` show no oldest and a batch's day
    range go missing from the log."""
    now = datetime.now(UTC).replace(microsecond=0)
    old_wall = (now - timedelta(days=200)).astimezone(BERLIN).replace(tzinfo=None, hour=10)
    old_day = old_wall.strftime("%Y-%m-%d")
    malformed = [
        "2025-13-45 99:99:99",
        "2025-02-30 10:00:00",
        f"{old_day} 24:00:00",
        f"{old_day} 09:59:59xyz",
        f"{old_day}T09:00:00",
        f"{old_day} 09:00",
        old_day,  # a day alone in a date-and-time column: its time of day is unknown
        f"{old_day} 09:00:00.5 ",
    ]
    database_file = tmp_path / "master.db"
    database_file.touch()
    database = pbx_database(f"sqlite:///{database_file}")
    database.create("cdr")
    database.insert("cdr", sqlite_cdr_rows([old_wall, old_wall + timedelta(days=1)]))
    database.insert("cdr", sqlite_cdr_rows([(now + timedelta(days=1)).replace(tzinfo=None)]))
    database.insert("cdr", [{"calldate": value, "src": NUMBER} for value in malformed])
    database.insert("cdr", [{"calldate": f"{old_day} 10:30:00.250", "src": NUMBER}])
    config = tmp_path / "retentiond.yaml"
    config.write_text(
        f"""\
version: 1
timezone: Europe/Berlin
audit: {{path: {tmp_path / "audit.jsonl"}}}
connections:
  masterdb: {{url: "sqlite:///{database_file}"}}
rules:
  - name: call-records
    keep: 90d
    stores:
      - {{type: sql, connection: masterdb, table: cdr, time_column: calldate}}
safety: {{max_delete_fraction: 1.0}}
"""
    )

    plan = retentiond("-c", config, "plan", "--json")
    text_plan = retentiond("-c", config, "plan")
    run = retentiond("-c", config, "run", "--once", "--json")

    assert "Traceback" not in plan.stderr + text_plan.stderr + run.stderr
    [store] = json.loads(plan.stdout)[0]["stores"]
    assert (store["expired"], store["skipped"]) == (3, {UNDATED: len(malformed)})
    assert store["oldest"] is not None and store["oldest"].startswith(old_day)
    assert "oldest -" not in text_plan.stdout
    with database.engine.connect() as connection:
        kept = {row[0] for row in connection.execute(text("SELECT calldate FROM cdr"))}
    assert set(malformed) <= kept
    assert len(kept) == len(malformed) + 1  # and the young call
    entries = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    batches = [e for e in entries if e.get("type") in ("batch_intent", "batch_done")]
    assert batches
    for entry in batches:
        assert entry.get("first_day") == old_day, entry
        assert entry.get("last_day") in (old_day, (old_wall + timedelta(days=1)).date().isoformat())
    started = [e for e in entries if e.get("type") == "run_started"]
    assert started[0]["stores"][0]["skipped"] == {UNDATED: len(malformed)}
