"""The freepbx and asterisk presets from `init` to a verified deletion log, on real data:
MariaDB (FreePBX) or SQLite (Asterisk), a voicemail spool, recordings, cdr-csv files."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pbxdata import PbxDatabase, cdr_rows, cel_rows, sqlite_cdr_rows
from privacy import leaked
from spool import CALLERIDS, GREETINGS, add_message, hold_lockfile, put, set_mtime
from sqlalchemy import text
from test_cli import retentiond

BERLIN = ZoneInfo("Europe/Berlin")
CSV_LINE = (
    '"","{src}","{dst}","from-internal","""Erika Mustermann"" <{src}>","PJSIP/1001-0000001",'
    '"PJSIP/trunk-0000002","Dial","PJSIP/{dst}@trunk,60","{start}","{start}","{start}",'
    '42,40,"ANSWERED","DOCUMENTATION","{uid}",""\n'
)


def now_local() -> datetime:
    return datetime.now(BERLIN).replace(tzinfo=None, microsecond=0)


def calls_over_a_year() -> list[datetime]:
    now = now_local()
    return [now - timedelta(hours=12 * i + 1) for i in range(730)]


def build_spool(spool: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """Old and young messages in several folders, greetings; returns (old, young, protected)."""
    aware = datetime.now(BERLIN).replace(microsecond=0)
    old, young = [], []
    for number, (mailbox, folder) in enumerate(
        [("1001", "INBOX"), ("1001", "Old"), ("1001", "Deleted"), ("1002", "INBOX")]
    ):
        message = add_message(
            spool, mailbox, folder, number, origtime=aware - timedelta(days=200), transcript=True
        )
        old += message.paths
        message = add_message(
            spool, mailbox, folder, number + 10, origtime=aware - timedelta(days=5)
        )
        young += message.paths
    protected = [
        put(spool / "default" / "1001" / name, b"RIFF", aware - timedelta(days=900))
        for name in GREETINGS
    ]
    return old, young, protected


def build_recordings(monitor: Path, rows: list[dict[str, object]]) -> dict[str, Path]:
    """The FreePBX recordings of the answered calls, an .mp3 conversion beside every third."""
    files = {}
    for index, row in enumerate(rows):
        name = str(row["recordingfile"])
        if not name:
            continue
        calldate = row["calldate"]
        assert isinstance(calldate, datetime)
        when = calldate.replace(tzinfo=BERLIN)
        path = put(monitor / f"{calldate:%Y/%m/%d}" / name, b"RIFF....WAVE", when)
        files[name] = path
        if index % 3 == 0:
            mp3 = path.with_suffix(".mp3")
            files[mp3.name] = put(mp3, b"ID3", when)
    return files


def build_csv(folder: Path, times: list[datetime]) -> list[str]:
    lines = [
        CSV_LINE.format(
            src=f"+49301234{i:04d}", dst="1001", start=t.strftime("%Y-%m-%d %H:%M:%S"), uid=i
        )
        for i, t in enumerate(sorted(times))
    ]
    folder.mkdir(parents=True)
    (folder / "Master.csv").write_text("".join(lines))
    return lines


def edit(config: Path, tmp_path: Path) -> None:
    """What the administrator changes after reading the written config."""
    text = config.read_text()
    text = text.replace("/var/lib/retentiond/audit.jsonl", str(tmp_path / "audit.jsonl"))
    text = text.replace("max_delete_fraction: 0.5", "max_delete_fraction: 0.95")
    text = text.replace("# timezone: Europe/Berlin", "timezone: Europe/Berlin")
    config.write_text(text)


def runs(result_stdout: str) -> dict[str, dict[str, object]]:
    return {run["rule"]: run for run in json.loads(result_stdout)["runs"]}


@pytest.mark.server_clock  # runs retentiond against the server
@pytest.mark.mariadb
def test_freepbx_preset_from_init_to_a_verified_log(
    mariadb_url: str, pbx_database: Callable[[str], PbxDatabase], tmp_path: Path
) -> None:
    database = pbx_database(mariadb_url)
    db_name = mariadb_url.rsplit("/", 1)[1]
    spool_dir, log_dir = tmp_path / "spool", tmp_path / "log"
    database.create("cdr", "cel")
    # FreePBX's shadow copy, filled by a trigger on every cdr insert (research §1.2)
    with database.engine.connect() as connection:
        columns = [c[0] for c in connection.execute(text("SHOW COLUMNS FROM cdr"))]
    database.execute(
        "CREATE TABLE transient_cdr ENGINE=MyISAM SELECT * FROM cdr LIMIT 0",
        "ALTER TABLE transient_cdr ADD INDEX calldate (calldate)",
        f"CREATE TRIGGER cdrTrigger AFTER INSERT ON cdr FOR EACH ROW INSERT INTO transient_cdr "
        f"({', '.join(columns)}) VALUES ({', '.join('NEW.' + c for c in columns)})",
        "CREATE TABLE freepbx_settings (keyword varchar(50) PRIMARY KEY, value varchar(255))",
    )
    settings = {
        "CDRDBNAME": db_name,
        "ASTSPOOLDIR": str(spool_dir),
        "ASTLOGDIR": str(log_dir),
        "MIXMON_DIR": "",
        "CDRUSEGMT": "0",
        "AMPMGRUSER": "admin",
    }
    database.insert("freepbx_settings", [{"keyword": k, "value": v} for k, v in settings.items()])
    times = calls_over_a_year()
    calls = cdr_rows(times, seed=3)
    database.insert("cdr", calls)
    database.insert("cel", cel_rows(times, seed=4))
    recordings = build_recordings(spool_dir / "monitor", calls)
    old_messages, young_messages, greetings = build_spool(spool_dir / "voicemail")
    csv_lines = build_csv(log_dir / "cdr-csv", times)
    freepbx_conf = tmp_path / "freepbx.conf"
    freepbx_conf.write_text(
        "<?php\n$amp_conf['AMPDBUSER'] = 'root';\n$amp_conf['AMPDBPASS'] = '';\n"
        f"$amp_conf['AMPDBHOST'] = '127.0.0.1';\n$amp_conf['AMPDBPORT'] = '3306';\n"
        f"$amp_conf['AMPDBNAME'] = '{db_name}';\n"
    )

    config = tmp_path / "retentiond.yaml"
    init = retentiond(
        "init", "--preset", "freepbx", "--set", f"freepbx_conf={freepbx_conf}", "-o", config
    )
    assert init.returncode == 0, init.stderr
    edit(config, tmp_path)

    check = retentiond("-c", config, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"sql cdrdb/queuelog: not found (optional): {'cdrdb/queuelog'}" in check.stdout
    for found in (
        "sql cdrdb/cdr: ok",
        "sql cdrdb/cel: ok",
        "sql cdrdb/transient_cdr: ok",
        f"csv {log_dir / 'cdr-csv'}: ok",
        f"asterisk_voicemail {spool_dir / 'voicemail'}: ok",
        f"files {spool_dir / 'monitor'}: ok",
    ):
        assert found in check.stdout

    plan = retentiond("-c", config, "plan", "--json")
    assert plan.returncode == 0, plan.stderr

    # Asterisk holds the lock of one voicemail folder during the first run
    lock = hold_lockfile(spool_dir / "voicemail" / "default" / "1002" / "INBOX")
    first = retentiond("-c", config, "run", "--once", "--json")
    lock.unlink()
    assert first.returncode == 1  # incomplete: the locked folder is left for the next run
    voicemail = runs(first.stdout)["voicemail"]
    assert voicemail["status"] == "incomplete"
    assert voicemail["stores"][0]["skipped"]["locked"] == 1  # type: ignore[index]
    assert runs(first.stdout)["call-records"]["status"] == "done"
    second = retentiond("-c", config, "run", "--once", "--json")
    assert second.returncode == 0, second.stdout + second.stderr
    assert {r["status"] for r in runs(second.stdout).values()} == {"done"}

    cutoffs = {
        rule: datetime.fromisoformat(str(run["cutoff"])).astimezone(BERLIN).replace(tzinfo=None)
        for rule, run in runs(second.stdout).items()
    }
    calls_cutoff, recordings_cutoff = cutoffs["call-records"], cutoffs["call-recordings"]
    kept_calls = [c for c in calls if c["calldate"] >= calls_cutoff]  # type: ignore[operator]
    for table in ("cdr", "transient_cdr"):
        assert database.count(table, "calldate < :c", c=calls_cutoff) == 0
        assert database.count(table) == len(kept_calls)
    assert database.count("cel", "eventtime < :c", c=calls_cutoff) == 0
    assert database.count("cel") == len(kept_calls)
    # recordings: expired ones gone with their .mp3; references of kept calls to them cleared
    for name, path in recordings.items():
        day = datetime.strptime(
            path.parent.relative_to(spool_dir / "monitor").as_posix(), "%Y/%m/%d"
        )
        assert path.exists() == (day + timedelta(days=1) > recordings_cutoff), name
    with database.engine.connect() as connection:
        rows = connection.execute(text("SELECT uniqueid, recordingfile FROM cdr")).all()
    references = {uniqueid: name for uniqueid, name in rows}
    for call in kept_calls:
        name = str(call["recordingfile"])
        if name:
            assert references[call["uniqueid"]] == (name if recordings[name].exists() else "")
    assert not any(p.exists() for p in old_messages)
    assert all(p.exists() for p in young_messages + greetings)
    remaining_csv = (log_dir / "cdr-csv" / "Master.csv").read_text()
    assert remaining_csv == "".join(
        line for line in csv_lines if line.split('","')[9] >= f"{calls_cutoff:%Y-%m-%d %H:%M:%S}"
    )

    assert retentiond("audit", "verify", tmp_path / "audit.jsonl").returncode == 0
    personal = {
        str(c[k]) for c in calls for k in ("src", "dst", "clid", "uniqueid", "recordingfile")
    }
    personal |= {CALLERIDS[0], "+4930123456", *recordings}
    found = leaked(
        personal,
        texts=[check.stdout],
        jsonl=[(tmp_path / "audit.jsonl").read_text(), first.stderr, second.stderr],
        documents=[plan.stdout, first.stdout, second.stdout],
    )
    assert not found, found[:5]


def test_asterisk_preset_from_init_to_a_verified_log(tmp_path: Path) -> None:
    log_dir, spool_dir = tmp_path / "log", tmp_path / "spool"
    log_dir.mkdir()
    times = calls_over_a_year()
    database_file = log_dir / "master.db"
    import sqlite3

    with sqlite3.connect(database_file) as db:
        db.execute(
            "CREATE TABLE cdr (AcctId INTEGER PRIMARY KEY, calldate, clid, src, dst, dcontext, "
            "channel, dstchannel, lastapp, lastdata, duration, billsec, disposition, amaflags, "
            "accountcode, uniqueid, userfield, test)"
        )
        rows = sqlite_cdr_rows(times, seed=5)
        columns = list(rows[0])
        db.executemany(
            f"INSERT INTO cdr ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            [tuple(r[c] for c in columns) for r in rows],
        )
    db.close()
    build_csv(log_dir / "cdr-csv", times)
    old_messages, young_messages, greetings = build_spool(spool_dir / "voicemail")
    monitor = spool_dir / "monitor"
    aware = datetime.now(BERLIN)
    old_recording = put(monitor / "q-1001-+4930123456.wav", b"RIFF", aware - timedelta(days=90))
    old_sibling = put(monitor / "q-1001-+4930123456.mp3", b"ID3", aware - timedelta(days=90))
    young_recording = put(monitor / "q-1002-+4930999999.wav", b"RIFF", aware - timedelta(days=2))
    set_mtime(young_recording, aware - timedelta(days=2))

    config = tmp_path / "retentiond.yaml"
    init = retentiond(
        "init",
        "--preset",
        "asterisk",
        "--set",
        f"astlogdir={log_dir}",
        "--set",
        f"astspooldir={spool_dir}",
        "-o",
        config,
    )
    assert init.returncode == 0, init.stderr
    edit(config, tmp_path)
    check = retentiond("-c", config, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    run = retentiond("-c", config, "run", "--once", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    cutoff = datetime.fromisoformat(str(runs(run.stdout)["call-records"]["cutoff"]))
    bound = cutoff.astimezone(BERLIN).strftime("%Y-%m-%d %H:%M:%S")
    with sqlite3.connect(database_file) as db:
        dates = [r[0] for r in db.execute("SELECT calldate FROM cdr")]
    db.close()
    assert dates and min(dates) >= bound
    assert len(dates) == sum(1 for t in times if t.strftime("%Y-%m-%d %H:%M:%S") >= bound)
    assert not any(p.exists() for p in [*old_messages, old_recording, old_sibling])
    assert all(p.exists() for p in [*young_messages, *greetings, young_recording])
    assert retentiond("audit", "verify", tmp_path / "audit.jsonl").returncode == 0
