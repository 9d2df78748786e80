"""`retentiond erase` and `find` on a plain Asterisk whose only record of the caller's number is
a caller id: `clid` in cdr_sqlite3_custom's table, Master.csv's clid field and `callerid=` in a
voicemail's msgNNNN.txt, each as Asterisk writes it. And a request that finds nothing to erase
(no match, or every match held) is recorded with its ticket, its counts and why, so the DPO can
show it was answered.

The cdr table is the one asterisk/asterisk `cdr/cdr_sqlite3_custom.c` (branch 20) creates from
the columns of `configs/samples/cdr_sqlite3_custom.conf.sample`: clid, no src or dst.
"""

from __future__ import annotations

import csv
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from privacy import leaked
from spool import add_message
from test_cli import retentiond
from test_csv_holds import cdr_line
from test_report_holds import Forms, forms, html_rows

from retentiond.config.loader import load_config
from retentiond.evidence import log as audit
from retentiond.evidence.report import build
from retentiond.evidence.report.values import Period

BERLIN = ZoneInfo("Europe/Berlin")
ALICE = "+493077700010"
LONGER = "+4930777000100"  # starts with her number: someone else's
NOBODY = "+494012345678"  # in no store
SQLITE_CUSTOM_CDR = (
    "CREATE TABLE cdr (AcctId INTEGER PRIMARY KEY, calldate, clid, dcontext, channel, "
    "dstchannel, lastapp, lastdata, duration, billsec, disposition, amaflags, accountcode, "
    "uniqueid, userfield, test)"
)
# (clid, hers) of the calls in master.db and Master.csv
CALLS = [
    ('"Alice Example" <+493077700010>', True),
    ('"Alice Example" <03077700010>', True),
    ("+493077700010", True),
    ('"Carol Example" <+4930777000100>', False),
    ('"Reception" <1001>', False),
]

CONFIG = """\
version: 1
timezone: Europe/Berlin
audit:
  path: {root}/audit.jsonl
connections:
  masterdb:
    url: sqlite:///{root}/master.db
rules:
  - name: call-records
    keep: 3 months
    stores:
      - {{type: sql, connection: masterdb, table: cdr, time_column: calldate,
          subject_columns: [clid]}}
      - {{type: csv, root: {root}/cdr-csv}}
  - name: voicemail
    keep: 60d
    stores:
      - {{type: asterisk_voicemail, root: {root}/voicemail}}
"""


@pytest.fixture
def asterisk(tmp_path: Path) -> Path:
    """master.db, Master.csv and a voicemail spool with the CALLS, one a day from 200 days ago
    (expired under both rules: the CLI runs on the real clock); the config file's path."""
    first = datetime.now(BERLIN).replace(tzinfo=None, microsecond=0) - timedelta(days=200)
    started = [first + timedelta(days=i) for i in range(len(CALLS))]
    with sqlite3.connect(tmp_path / "master.db") as db:
        db.execute(SQLITE_CUSTOM_CDR)
        db.executemany(
            "INSERT INTO cdr (calldate, clid, dcontext, channel, lastapp, disposition, uniqueid) "
            "VALUES (?, ?, 'from-trunk', 'PJSIP/trunk-0000001f', 'Dial', 'ANSWERED', ?)",
            [
                (when.strftime("%Y-%m-%d %H:%M:%S"), clid, f"{int(when.timestamp())}.{i}")
                for i, (when, (clid, _)) in enumerate(zip(started, CALLS, strict=True))
            ],
        )
    db.close()
    (tmp_path / "cdr-csv").mkdir()
    (tmp_path / "cdr-csv" / "Master.csv").write_bytes(
        b"".join(
            cdr_line(when, "2001", "1001", clid, uniqueid=f"{int(when.timestamp())}.{i}")
            for i, (when, (clid, _)) in enumerate(zip(started, CALLS, strict=True))
        )
    )
    for number, (when, (clid, _)) in enumerate(zip(started, CALLS, strict=True)):
        add_message(
            tmp_path / "voicemail",
            "1001",
            "INBOX",
            number,
            origtime=when.replace(tzinfo=BERLIN),
            callerid=clid,
        )
    config = tmp_path / "retentiond.yaml"
    config.write_text(CONFIG.format(root=tmp_path))
    return config


def rows_left(config: Path) -> list[str]:
    with sqlite3.connect(config.parent / "master.db") as db:
        left = [row[0] for row in db.execute("SELECT clid FROM cdr ORDER BY AcctId")]
    db.close()
    return left


def lines_left(config: Path) -> list[str]:
    with (config.parent / "cdr-csv" / "Master.csv").open(newline="") as master:
        return [fields[4] for fields in csv.reader(master)]  # clid, as cdr_csv writes it 5th


def messages_left(config: Path) -> list[str]:
    spool = config.parent / "voicemail" / "default" / "1001" / "INBOX"
    texts = [path.read_text() for path in sorted(spool.glob("msg*.txt"))]
    return [clid for clid, _ in CALLS if any(f"callerid={clid}\n" in t for t in texts)]


def entries(config: Path) -> list[audit.Entry]:
    return list(audit.read_entries(config.parent / "audit.jsonl"))


def hold_alice(config: Path) -> None:
    holds = config.parent / "holds.d"
    holds.mkdir()
    (holds / "claim.yaml").write_text(
        "id: CLAIM-7\nreason: Pending claim\napproved_by: DPO\nreview_by: 2099-01-01\n"
        f"numbers: ['{ALICE}']\n"
    )


OTHERS = [clid for clid, hers in CALLS if not hers]
EVERYONE = [clid for clid, _ in CALLS]


def test_erase_takes_her_calls_from_every_caller_id_and_no_longer_number(asterisk: Path) -> None:
    found = retentiond("-c", asterisk, "find", "--number", ALICE)
    assert found.returncode == 0, found.stderr
    assert "call-records: sql masterdb/cdr: 3 rows" in found.stdout
    assert found.stdout.count("<+4930777000100>") == 0, "the longer number is not hers"

    done = retentiond("-c", asterisk, "erase", "--number", ALICE, "--ticket", "DSR-7", "--yes")

    assert done.returncode == 0, done.stderr
    assert rows_left(asterisk) == OTHERS
    assert lines_left(asterisk) == OTHERS
    assert messages_left(asterisk) == OTHERS
    finished = entries(asterisk)[-1]
    assert finished.type == "erasure_finished" and finished.fields["outcome"] == "erased"
    assert finished.fields["deleted"] == 9  # 3 rows, 3 lines, 3 messages
    assert not leaked(
        {ALICE, ALICE[3:], "Alice"}, jsonl=[(asterisk.parent / "audit.jsonl").read_text()]
    )


def test_a_hold_by_her_number_keeps_the_calls_only_her_caller_id_names(asterisk: Path) -> None:
    hold_alice(asterisk)

    run = retentiond("-c", asterisk, "run", "--once")

    assert run.returncode == 0, run.stdout + run.stderr
    hers = [clid for clid, hers in CALLS if hers]
    assert rows_left(asterisk) == hers
    assert lines_left(asterisk) == hers
    assert messages_left(asterisk) == hers


def test_an_erase_that_finds_nothing_is_recorded_with_its_ticket_counts_and_why(
    asterisk: Path,
) -> None:
    done = retentiond("-c", asterisk, "erase", "--number", NOBODY, "--ticket", "DSR-8")

    assert done.returncode == 0, done.stderr
    assert "to erase: 0; held (kept): 0" in done.stdout
    assert "nothing to erase (no match in any store searched)" in done.stdout
    assert "recorded in the audit log for DSR-8" in done.stdout
    assert rows_left(asterisk) == lines_left(asterisk) == messages_left(asterisk) == EVERYONE
    started, finished = entries(asterisk)
    assert (started.type, finished.type) == ("erasure_started", "erasure_finished")
    assert started.fields["run_id"] == finished.fields["run_id"]
    assert finished.fields["ticket"] == "DSR-8" and finished.fields["status"] == "done"
    assert finished.fields["outcome"] == "no match"
    assert (finished.fields["deleted"], finished.fields["held"]) == (0, 0)
    stores = finished.fields["stores"]
    assert [s["store"].rsplit("/", 1)[-1] for s in stores] == ["cdr", "cdr-csv", "voicemail"]
    assert all((s["found"], s["held"], s["deleted"]) == (0, 0, 0) for s in stores)
    assert audit.verify(asterisk.parent / "audit.jsonl").ok
    assert not leaked({NOBODY, NOBODY[3:]}, jsonl=[(asterisk.parent / "audit.jsonl").read_text()])

    report = report_of(asterisk, finished.ts)
    (erasure,) = report.json["erasures"]
    assert (erasure["ticket"], erasure["status"], erasure["outcome"]) == (
        "DSR-8",
        "done",
        "no match",
    )
    assert (erasure["found"], erasure["deleted"], erasure["held"]) == (0, 0, 0)
    (row,) = html_rows(report.html, "erasure")
    assert row[0] == "DSR-8" and row[3] == "done (no match)"


def test_an_erase_whose_every_match_is_held_is_recorded_as_all_held(asterisk: Path) -> None:
    hold_alice(asterisk)

    done = retentiond("-c", asterisk, "erase", "--number", ALICE, "--ticket", "DSR-9", "--yes")

    assert done.returncode == 0, done.stderr
    assert "to erase: 0; held (kept): 9" in done.stdout
    assert "nothing to erase (every match is held)" in done.stdout
    assert rows_left(asterisk) == lines_left(asterisk) == messages_left(asterisk) == EVERYONE
    finished = entries(asterisk)[-1]
    assert finished.type == "erasure_finished" and finished.fields["ticket"] == "DSR-9"
    assert finished.fields["outcome"] == "all held"
    assert (finished.fields["deleted"], finished.fields["held"]) == (0, 9)
    assert [s["held"] for s in finished.fields["stores"]] == [3, 3, 3]


def test_a_search_with_a_ticket_that_finds_nothing_records_why(asterisk: Path) -> None:
    found = retentiond("-c", asterisk, "find", "--number", NOBODY, "--ticket", "AR-3")

    assert found.returncode == 0, found.stderr
    assert "(counts only; no match in any store searched)" in found.stdout
    (search,) = entries(asterisk)
    assert search.type == "subject_search" and search.fields["ticket"] == "AR-3"
    assert search.fields["outcome"] == "no match"
    assert all(s["found"] == 0 for s in search.fields["stores"])
    (listed,) = report_of(asterisk, search.ts).json["subject_searches"]
    assert (listed["ticket"], listed["found"], listed["outcome"]) == ("AR-3", 0, "no match")


def report_of(config: Path, at: str) -> Forms:
    """The DPO report of the month the entry at `at` was written in."""
    day = datetime.fromisoformat(at).astimezone(BERLIN).date()
    first = day.replace(day=1)
    last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
    report = build.build_report(
        load_config(config),
        [config.parent / "audit.jsonl"],
        Period(first, last, BERLIN),
        generated_at=datetime.combine(last, datetime.min.time(), UTC) + timedelta(days=1),
    )
    return forms(report)


def test_an_erase_where_no_store_could_be_searched_says_so(tmp_path: Path) -> None:
    """Only an optional table that is not there: nothing was searched, and the log says that,
    not "no match"."""
    (tmp_path / "master.db").touch()
    config = tmp_path / "retentiond.yaml"
    config.write_text(
        CONFIG.format(root=tmp_path).split("rules:")[0]
        + "rules:\n  - name: call-records\n    keep: 3 months\n    stores:\n"
        + "      - {type: sql, connection: masterdb, table: cdr, time_column: calldate,\n"
        + "          subject_columns: [clid], optional: true}\n"
    )

    done = retentiond("-c", config, "erase", "--number", ALICE, "--ticket", "DSR-10")

    assert done.returncode == 0, done.stderr
    assert "NOT SEARCHED" in done.stdout
    assert "nothing to erase (no store could be searched)" in done.stdout
    finished = entries(config)[-1]
    assert finished.fields["outcome"] == "not searched"
    assert [s.get("unsearchable") for s in finished.fields["stores"]] == [True]
