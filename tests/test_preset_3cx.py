"""A 3CX PBX purged through the `3cx` preset, from the command line, as its administrator does it.

A year of a small German office on a real PostgreSQL database (3CX's own tables, from
tests/threecx_schema.py) and in a miniature of `/var/lib/3cxpbx/Instance1/Data`; a
`3CXPhoneSystem.ini` like 3CX's own; then `retentiond init --preset 3cx`, the admin's review
edits, `check`, `plan`, `run --once` and `audit verify`. The test compares what is in the tables
and folders before and after, and looks for the fixture's personal data in everything
retentiond printed or logged.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pbxdata import PbxDatabase, phone_number
from privacy import leaked
from sqlalchemy import make_url, text
from test_cli import retentiond
from threecx_schema import (
    CALLERS,
    EXTENSIONS,
    RECORDINGS,
    RECORDINGS_FOREIGN_KEY,
    S_VOICEMAIL,
    ClHistory,
    cdrbilling_rows,
    cdroutput_rows,
    cl_history,
    create_cdroutput_schema,
    create_cl_schema,
    link_recordings,
    recording_name,
    recording_rows,
)

from retentiond.config.model import parse_keep
from retentiond.policy.rules import cutoff as rule_cutoff

pytestmark = pytest.mark.postgres

BERLIN = ZoneInfo("Europe/Berlin")  # the office's zone: 3CX names its files in local time
# In the order the preset's rules run: recordings before the calls their rows name.
KEEP = {"call-recordings": "30d", "call-records": "3m", "voicemail": "30d", "chats": "6m"}
# Nothing in the fixture lies this close to a cutoff: plan and run, seconds apart, agree.
MARGIN = timedelta(hours=3)

# Not in tests/threecx_schema.py: 3CX's chat_message, reduced to a few columns [U].
CHAT_MESSAGE = [
    """
    CREATE TABLE chat_message (
      id_message serial PRIMARY KEY,
      fkid_chat_conversation integer,
      message text,
      time_sent timestamp with time zone,
      party character varying(255)
    )
    """
]
# docs/install.md 3.1: the tables the role may read and delete, where the database has them
CALL_DATA_TABLES = ["cl_calls", "cl_participants", "cl_party_info", "cl_segments", "cl_quality"]
CALL_DATA_TABLES += ["cdroutput", "cdrbilling", "recordings", "s_voicemail", "chat_message"]
GREETINGS = ["Greeting.wav", "GreetingOutOfOffice.wav", "RecordedName.wav", "prompt_menu.wav"]


@dataclass
class Office:
    """What the fixture put where: the database, the 3CX folders and every personal value."""

    database: PbxDatabase
    root: Path  # tmp_path: 3CXPhoneSystem.ini, the config and the audit log live here too
    data_dir: Path  # /var/lib/3cxpbx/Instance1/Data
    now: datetime
    personal: set[str] = field(default_factory=set)

    @property
    def recordings(self) -> Path:
        return self.data_dir / "Recordings"

    @property
    def voicemail(self) -> Path:
        return self.data_dir / "Ivr" / "Voicemail" / "Data"

    def times(self, every: timedelta, span: timedelta, offset: timedelta) -> list[datetime]:
        """Moments from `span` ago up to now, oldest first, none near a rule's cutoff."""
        cutoffs = [rule_cutoff(self.now, parse_keep(keep), BERLIN) for keep in KEEP.values()]
        moments = []
        moment = self.now - offset
        while moment > self.now - span:
            if all(abs(moment - cutoff) > MARGIN for cutoff in cutoffs):
                moments.append(moment)
            moment -= every
        return moments[::-1]


def write_file(path: Path, moment: datetime, size: int = 256) -> None:
    """A small wav file, last modified at `moment` as if 3CX had just written it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF" + bytes(size - 4))
    os.utime(path, (moment.timestamp(), moment.timestamp()))


def threecx_ini(office: Office, url: str) -> Path:
    """3CX's Bin/3CXPhoneSystem.ini: the database settings the preset reads. Its sections and keys
    are those public code reads ([CfgServerProfile] DBHost, DBPort, MasterDBUser,
    MasterDBPassword; [QMDatabase] DBName; [DbAdminREADONLY] User, Password: AhmetKalenderr/
    3CXCallReporterLast, 3CXCallReporterLast/Helpers/ConnectionString.cs, commit 5c917d55),
    written `Key = Value` as the scripts that read it with sed expect."""
    path = office.root / "Bin" / "3CXPhoneSystem.ini"
    path.parent.mkdir()
    database = make_url(url).database
    path.write_text(f"""\
[CfgServerProfile]
DBHost = 127.0.0.1
DBPort = 5432
MasterDBUser = postgres
MasterDBPassword = kein-Passwort-nötig

[QMDatabase]
DBHost = 127.0.0.1
DBPort = 5432
DBName = {database}

[DbAdminREADONLY]
User = logsreader_single
Password = nur-lesen
""")  # trust authentication: the password is read at each connect, and not needed
    return path


def init_config(office: Office, settings: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`retentiond init --preset 3cx`, then the edits an admin makes after reviewing the file."""
    path = office.root / "retentiond.yaml"
    keeps = [arg for rule, period in KEEP.items() for arg in ("--keep", f"{rule}={period}")]
    init = retentiond(
        "init",
        "--preset",
        "3cx",
        "--set",
        f"ini={settings}",
        "--set",
        f"data_dir={office.data_dir}",
        *keeps,
        "-o",
        path,
    )
    assert init.returncode == 0, init.stderr
    text = path.read_text()
    assert "password_from: " + str(settings) in text
    assert "# 3CX's master account: better a role of its own, docs/install.md 3.1" in text
    assert "kein-Passwort" not in text
    edits = {
        "# timezone: Europe/Berlin": "timezone: Europe/Berlin",
        "path: /var/lib/retentiond/audit.jsonl": f"path: {office.root / 'audit.jsonl'}",
        "max_delete_fraction: 0.5": "max_delete_fraction: 0.95",
    }
    for old, new in edits.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path.write_text(text)
    return path, init


Counts = dict[tuple[str, str], int]  # (rule, store label) -> objects


def plan_and_run(
    config: Path,
) -> tuple[Counts, Counts, dict[str, Any], list[subprocess.CompletedProcess[str]]]:
    """`plan --json`, then `run --once --json`: planned and deleted per (rule, store), the run."""
    plan = retentiond("-c", config, "plan", "--json")
    assert plan.returncode == 0, plan.stderr
    planned = {
        (rule["rule"], store["store"]): store["would_delete"]
        for rule in json.loads(plan.stdout)
        for store in rule["stores"]
    }
    run = retentiond("-c", config, "run", "--once", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)
    assert [(r["rule"], r["status"]) for r in result["runs"]] == [(r, "done") for r in KEEP]
    deleted = {
        (r["rule"], store["store"]): store["deleted"]
        for r in result["runs"]
        for store in r["stores"]
    }
    assert deleted.keys() == planned.keys()
    return planned, deleted, result, [plan, run]


def cutoffs(result: dict[str, Any]) -> dict[str, datetime]:
    return {r["rule"]: datetime.fromisoformat(r["cutoff"]) for r in result["runs"]}


def column(database: PbxDatabase, query: str) -> set[Any]:
    with database.engine.connect() as connection:
        return set(connection.exec_driver_sql(query).scalars())


def audit_agrees(audit_log: Path) -> None:
    """Each run's `run_started` counts, per store, what its `run_finished` says was deleted."""
    entries = [json.loads(line) for line in audit_log.read_text().splitlines()]
    started = {e["run_id"]: e for e in entries if e["type"] == "run_started"}
    finished = [e for e in entries if e["type"] == "run_finished"]
    assert len(finished) == len(started) == len(KEEP)
    for end in finished:
        expired = {s["store"]: s["expired"] for s in started[end["run_id"]]["stores"]}
        assert expired == {s["store"]: s["deleted"] for s in end["stores"]}, end["rule"]


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def nothing_leaked(
    personal: Iterable[str],
    texts: list[str],
    commands: list[subprocess.CompletedProcess[str]],
    audit_log: Path,
) -> None:
    """No number, name or file name of the fixture in any output, log or the deletion log."""
    found = leaked(
        personal,
        texts=[*texts, *(c.stdout for c in commands)],
        jsonl=[audit_log.read_text(), *(c.stderr for c in commands)],
    )
    assert not found, found[:5]


# -- fixture: a year of a 3CX office (cl_* generation) ---------------------------------------


def add_calls(office: Office) -> dict[str, Any]:
    """A call every ~12 hours for a year, in the cl_* tables (3CX v18, v20 before Update 6)."""
    create_cl_schema(office.database)
    starts = office.times(timedelta(hours=12), timedelta(days=365), timedelta(minutes=17))
    history = cl_history(starts, seed=7)  # ids in time order, as 3CX hands them out
    history.insert(office.database)
    rows = history.rows
    office.personal |= {
        value
        for row in rows["cl_party_info"]
        for value in (row["caller_number"], row["display_name"], row["firstlastname"])
        if value and row["dn_type"] != 2  # the ring group "Vertrieb" (800) is no person
    }
    office.personal |= {
        value
        for row in rows["cl_quality"]
        for value in (row["a_number"], row["a_name"], row["b_name"])
    }
    for row in rows["cl_participants"]:
        if row["recording_url"]:
            office.personal |= {row["recording_url"], Path(row["recording_url"]).name}
    return {"history": history, "starts": starts}


def add_recordings(office: Office, calls: ClHistory | None = None) -> dict[str, Any]:
    """3CX v20 `recordings` rows every ~2.5 days, each with its file under Recordings/<ext>/,
    and files no row names (a restore brought them back, say): older and younger ones. With
    `calls`, each row names a participant of its call through a foreign key (3CX may have it)."""
    office.database.execute(*RECORDINGS)
    moments = office.times(timedelta(hours=60), timedelta(days=365), timedelta(hours=5))
    rows = recording_rows([m.astimezone(BERLIN) for m in moments], seed=8)
    if calls is not None:
        link_recordings(rows, calls)
    office.database.insert("recordings", rows)
    if calls is not None:
        office.database.execute(RECORDINGS_FOREIGN_KEY)
    for row, moment in zip(rows, moments, strict=True):
        write_file(office.recordings / row["recording_url"], moment)
    rng = random.Random(9)
    orphans: dict[str, datetime] = {}
    for days in (1, 9, 20, 28, 33, 47, 95, 180, 270, 350):
        moment = office.now - timedelta(days=days, hours=4, minutes=rng.randrange(60))
        extension = rng.choice(sorted(EXTENSIONS))
        name = recording_name(
            extension,
            EXTENSIONS[extension],
            phone_number(rng),
            moment.astimezone(BERLIN),
            rng.randrange(10_000, 20_000),
        )
        if days in (33, 350):
            name = name.removesuffix(".wav") + ".mp3"
        orphans[f"{extension}/{name}"] = moment
        write_file(office.recordings / extension / name, moment)
    office.personal |= {row["recording_url"] for row in rows} | set(orphans)
    office.personal |= {Path(name).name for name in (*(r["recording_url"] for r in rows), *orphans)}
    office.personal |= {row["transcription"] for row in rows}
    return {"rows": rows, "moments": moments, "orphans": orphans}


def add_voicemail(office: Office) -> dict[str, Any]:
    """`s_voicemail` rows every ~5 days with their vmail_*.wav files, vmail_*.wav files without a
    row, and the greetings and prompts 3CX keeps in the same folders."""
    office.database.execute(*S_VOICEMAIL)
    rng = random.Random(10)
    moments = office.times(timedelta(days=5), timedelta(days=365), timedelta(hours=7))
    rows: list[dict[str, Any]] = []
    for moment in moments:
        extension = rng.choice(sorted(EXTENSIONS))
        caller = phone_number(rng)
        wav = f"{extension}/vmail_{caller}_{extension}_{moment.astimezone(BERLIN):%Y%m%d%H%M%S}.wav"
        write_file(office.voicemail / wav, moment)
        rows.append(
            {
                "wav_file": wav,
                "callee": extension,
                "caller": caller,
                "caller_name": rng.choice(CALLERS),
                "duration": rng.randrange(5, 90),
                "created_time": moment,
                "heard": rng.random() < 0.7,
                "transcription": f"Hallo, hier ist {rng.choice(CALLERS)}, bitte rufen Sie zurück.",
            }
        )
    office.database.insert("s_voicemail", rows)
    orphans: dict[str, datetime] = {}
    for days in (3, 21, 40, 120, 300):
        moment = office.now - timedelta(days=days, hours=6)
        extension = rng.choice(sorted(EXTENSIONS))
        caller = phone_number(rng)
        wav = f"{extension}/vmail_{caller}_{extension}_{moment.astimezone(BERLIN):%Y%m%d%H%M%S}.wav"
        orphans[wav] = moment
        write_file(office.voicemail / wav, moment)
    greetings = {f"{ext}/{name}" for ext in EXTENSIONS for name in GREETINGS}
    for name in greetings:
        write_file(office.voicemail / name, office.now - timedelta(days=400))
    office.personal |= {row[key] for row in rows for key in ("caller", "caller_name", "wav_file")}
    office.personal |= {row["transcription"] for row in rows}
    office.personal |= {Path(name).name for name in (*(r["wav_file"] for r in rows), *orphans)}
    office.personal |= set(orphans)
    return {"rows": rows, "orphans": orphans, "greetings": greetings}


def add_chats(office: Office) -> dict[str, Any]:
    """A chat message every ~12 hours: website live chat and colleagues."""
    office.database.execute(*CHAT_MESSAGE)
    rng = random.Random(11)
    moments = office.times(timedelta(hours=12), timedelta(days=365), timedelta(hours=2))
    rows: list[dict[str, Any]] = []
    for index, moment in enumerate(moments):
        customer = rng.choice(CALLERS)
        number = phone_number(rng)
        rows.append(
            {
                "fkid_chat_conversation": index // 6 + 1,
                "message": f"Hallo, hier {customer}. Bitte rufen Sie mich unter {number} an.",
                "time_sent": moment,
                "party": customer,
            }
        )
        office.personal |= {number, rows[-1]["message"]}
    office.database.insert("chat_message", rows)
    return {"moments": moments}


@pytest.fixture
def office(
    postgres_url: str,
    pbx_database: Callable[[str], PbxDatabase],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Office:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)  # 3CX's own account, unless set
    data_dir = tmp_path / "Instance1" / "Data"
    (data_dir / "Recordings").mkdir(parents=True)
    (data_dir / "Ivr" / "Voicemail" / "Data").mkdir(parents=True)
    now = datetime.now(UTC).replace(microsecond=0)
    return Office(pbx_database(postgres_url), tmp_path, data_dir, now)


# -- the tests ---------------------------------------------------------------------------------


@pytest.mark.server_clock  # runs retentiond against the server
def test_3cx_preset_purges_calls_recordings_voicemail_and_chats_end_to_end(
    office: Office, postgres_url: str
) -> None:
    calls = add_calls(office)
    recordings = add_recordings(office, calls["history"])
    voicemail = add_voicemail(office)
    chats = add_chats(office)
    greetings_before = {
        name: (office.voicemail / name).read_bytes() for name in voicemail["greetings"]
    }
    config, init = init_config(office, threecx_ini(office, postgres_url))

    check = retentiond("-c", config, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "connection 3cx: warning: connects as 3CX's master account" in check.stdout
    assert "create retentiond's own role" in check.stdout
    assert "generation: cl_* tables (3CX v18, and v20 before Update 6)" in check.stdout
    assert "3cx_call_history 3cx/3cx-call-history: ok" in check.stdout
    for store in (
        "sql 3cx/recordings: ok",
        f"files {office.recordings}: ok",
        "sql 3cx/s_voicemail: ok",
        f"files {office.voicemail}: ok",
        "sql 3cx/chat_message: ok",
    ):
        assert store in check.stdout
    assert "not found" not in check.stdout
    assert "audit log" in check.stdout and "writable, 0 entries" in check.stdout

    planned, deleted, result, commands = plan_and_run(config)
    cutoff = cutoffs(result)
    recording_files = ("call-recordings", str(office.recordings))
    voicemail_files = ("voicemail", str(office.voicemail))
    # Every store deletes what the plan said, the files stores behind a rows store too: they
    # count only the files no row names, which the rows store leaves to them.
    assert planned == deleted

    # call-records: the expired calls with every row that depends on them, the young untouched
    history, starts = calls["history"], calls["starts"]
    expired_calls = history.call_ids(starts_before=cutoff["call-records"])
    young_calls = history.call_ids() - expired_calls
    assert planned[("call-records", "3cx/3cx-call-history")] == len(expired_calls) > 150
    assert young_calls and len(starts) > 700
    database = office.database
    assert column(database, "SELECT id FROM cl_calls") == young_calls
    for table in ("cl_participants", "cl_segments", "cl_quality"):
        kept = [row for row in history.rows[table] if row["call_id"] in young_calls]
        assert kept, table
        assert column(database, f"SELECT call_id FROM {table}") == {r["call_id"] for r in kept}
        assert database.count(table) == len(kept), table
    assert column(database, "SELECT id FROM cl_party_info") == history.party_ids_of(young_calls)

    # call-recordings: expired rows and their files, then files without a row, by their name
    rows, orphans = recordings["rows"], recordings["orphans"]
    recordings_cutoff = cutoff["call-recordings"]
    young_rows = {
        row["recording_url"]
        for row, moment in zip(rows, recordings["moments"], strict=True)
        if moment >= recordings_cutoff
    }
    young_orphans = {name for name, moment in orphans.items() if moment >= recordings_cutoff}
    assert 0 < len(young_orphans) < len(orphans)
    assert planned[("call-recordings", "3cx/recordings")] == len(rows) - len(young_rows)
    assert planned[recording_files] == len(orphans) - len(young_orphans)
    assert column(database, "SELECT recording_url FROM recordings") == young_rows
    assert files_under(office.recordings) == young_rows | young_orphans

    # voicemail: expired messages with their wav files; greetings and prompts stay
    vm_cutoff = cutoff["voicemail"]
    young_messages = {r["wav_file"] for r in voicemail["rows"] if r["created_time"] >= vm_cutoff}
    young_vm_orphans = {n for n, moment in voicemail["orphans"].items() if moment >= vm_cutoff}
    assert young_messages and young_vm_orphans
    assert planned[("voicemail", "3cx/s_voicemail")] == len(voicemail["rows"]) - len(young_messages)
    assert planned[voicemail_files] == len(voicemail["orphans"]) - len(young_vm_orphans)
    assert column(database, "SELECT wav_file FROM s_voicemail") == young_messages
    assert files_under(office.voicemail) == (
        young_messages | young_vm_orphans | voicemail["greetings"]
    )
    for name, content in greetings_before.items():
        assert (office.voicemail / name).read_bytes() == content, name

    # chats: messages older than six months
    young_chats = [m for m in chats["moments"] if m >= cutoff["chats"]]
    assert planned[("chats", "3cx/chat_message")] == len(chats["moments"]) - len(young_chats)
    assert database.count("chat_message") == len(young_chats)
    assert database.count("chat_message", "time_sent < :c", c=cutoff["chats"]) == 0

    log = office.root / "audit.jsonl"
    audit_agrees(log)
    verify = retentiond("-c", config, "audit", "verify")
    assert verify.returncode == 0, verify.stdout
    assert "intact" in verify.stdout
    assert len(office.personal) > 1000
    nothing_leaked(office.personal, [init.stderr], [check, *commands, verify], log)


@pytest.mark.server_clock  # runs retentiond against the server
def test_3cx_preset_purges_the_cdroutput_generation_end_to_end(
    office: Office, postgres_url: str
) -> None:
    """3CX v20 Update 6 and later: cdroutput and cdrbilling; no voicemail or chats yet."""
    database = office.database
    create_cdroutput_schema(database)
    starts = office.times(timedelta(hours=12), timedelta(days=150), timedelta(minutes=41))
    cdrs = cdroutput_rows(starts, seed=12)
    database.insert("cdroutput", cdrs)
    database.insert("cdrbilling", cdrbilling_rows(cdrs))
    recordings = add_recordings(office)
    office.personal |= {
        str(cdr[key])
        for cdr in cdrs
        for key in (
            "source_participant_name",
            "source_participant_phone_number",
            "destination_participant_name",
        )
    }
    config, init = init_config(office, threecx_ini(office, postgres_url))

    check = retentiond("-c", config, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "generation: cdroutput (3CX v20 Update 6 and later)" in check.stdout
    assert "sql 3cx/recordings: ok" in check.stdout
    for store in ("sql 3cx/s_voicemail", "sql 3cx/chat_message"):
        assert f"{store}: not found (optional)" in check.stdout

    planned, deleted, result, commands = plan_and_run(config)
    cutoff = cutoffs(result)
    recording_files = ("call-recordings", str(office.recordings))
    assert planned == deleted
    assert planned[recording_files] == sum(
        1 for moment in recordings["orphans"].values() if moment < cutoff["call-recordings"]
    )

    young = {cdr["cdr_id"] for cdr in cdrs if cdr["cdr_started_at"] >= cutoff["call-records"]}
    assert planned[("call-records", "3cx/3cx-call-history")] == len(cdrs) - len(young) > 20
    assert column(database, "SELECT cdr_id FROM cdroutput") == young
    billed_young = {c["cdr_id"] for c in cdrs if c["cdr_id"] in young and c["cdr_answered_at"]}
    assert column(database, "SELECT cdr_id FROM cdrbilling") == billed_young
    recordings_cutoff = cutoff["call-recordings"]
    young_rows = {
        row["recording_url"]
        for row, moment in zip(recordings["rows"], recordings["moments"], strict=True)
        if moment >= recordings_cutoff
    }
    young_orphans = {n for n, m in recordings["orphans"].items() if m >= recordings_cutoff}
    assert column(database, "SELECT recording_url FROM recordings") == young_rows
    assert files_under(office.recordings) == young_rows | young_orphans
    assert planned[("voicemail", "3cx/s_voicemail")] == 0
    assert planned[("chats", "3cx/chat_message")] == 0

    audit_agrees(office.root / "audit.jsonl")
    verify = retentiond("-c", config, "audit", "verify")
    assert verify.returncode == 0, verify.stdout
    nothing_leaked(
        office.personal, [init.stderr], [check, *commands, verify], office.root / "audit.jsonl"
    )


@pytest.mark.server_clock  # runs retentiond against the server
def test_plan_counts_a_file_named_by_an_expired_row_once(office: Office, postgres_url: str) -> None:
    database = office.database
    create_cdroutput_schema(database, billing=False)
    database.insert("cdroutput", cdroutput_rows([office.now - timedelta(days=1)], seed=13))
    database.execute(*RECORDINGS)
    moments = [office.now - timedelta(days=days) for days in (60, 50, 2)]
    rows = recording_rows([m.astimezone(BERLIN) for m in moments], seed=14)
    database.insert("recordings", rows)
    for row, moment in zip(rows, moments, strict=True):
        write_file(office.recordings / row["recording_url"], moment)
    config, _ = init_config(office, threecx_ini(office, postgres_url))

    planned, deleted, _, (plan, _) = plan_and_run(config)

    assert deleted[("call-recordings", "3cx/recordings")] == 2
    assert not files_under(office.recordings) - {rows[2]["recording_url"]}
    # The Recordings files store leaves the three files rows name to the recordings store.
    assert planned == deleted
    files_store = next(
        store
        for rule in json.loads(plan.stdout)
        for store in rule["stores"]
        if store["store"] == str(office.recordings)
    )
    assert (files_store["total"], files_store["expired"]) == (0, 0)
    assert files_store["skipped"] == {"named_by_row": 3}


@pytest.mark.server_clock  # runs retentiond against the server
def test_3cx_preset_connects_as_the_role_of_its_own(
    office: Office, postgres_url: str, postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The role docs/install.md 3.1 creates, with exactly its grants, and its credential `3cx`:
    the preset connects as it, `check` finds nothing missing and no master account, and the run
    deletes as it."""
    calls = add_calls(office)
    role = f"rtd_{secrets.token_hex(4)}"
    database = make_url(postgres_url).database
    grants = [
        f"CREATE ROLE {role} LOGIN PASSWORD 'role-pw'",
        f"GRANT CONNECT ON DATABASE {database} TO {role}",
        f"GRANT USAGE ON SCHEMA public TO {role}",
        *(  # the docs' list of call-data tables, those this database has
            f"GRANT SELECT, DELETE ON public.{table} TO {role}"
            for table in CALL_DATA_TABLES
            if office.database.scalar("SELECT to_regclass(:t)", t=f"public.{table}")
        ),
        f"GRANT UPDATE (id) ON public.cl_calls TO {role}",
    ]
    office.database.execute(*grants)
    credentials = office.root / "credentials"
    credentials.mkdir()
    (credentials / "3cx").write_text("role-pw\n")
    (credentials / "3cx").chmod(0o600)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    try:
        path = office.root / "retentiond.yaml"
        path.write_text(f"""\
version: 1
preset: 3cx
preset_settings: {{ini: {threecx_ini(office, postgres_url)}, data_dir: {office.data_dir}, \
db_user: {role}}}
keep: {{call-records: 3m, call-recordings: off, voicemail: off}}
timezone: Europe/Berlin
audit: {{path: {office.root / "audit.jsonl"}}}
safety: {{max_delete_fraction: 0.95}}
""")
        check = retentiond("-c", path, "check")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "3cx_call_history 3cx/3cx-call-history: ok" in check.stdout
        assert "master account" not in check.stdout
        run = retentiond("-c", path, "run", "--once", "--json")
        assert run.returncode == 0, run.stdout + run.stderr
        cutoff = cutoffs(json.loads(run.stdout))["call-records"]
        rows = calls["history"].rows["cl_calls"]
        young = {call["id"] for call in rows if call["start_time"] >= cutoff}
        assert column(office.database, "SELECT id FROM cl_calls") == young
        assert 0 < len(young) < len(rows)
    finally:
        office.database.execute(f"DROP OWNED BY {role}")  # its grants, in this database
        with postgres_server.connect() as connection:
            connection.execute(text(f"DROP ROLE IF EXISTS {role}"))
