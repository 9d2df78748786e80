"""Counts that stay true when a step fails: a reference update the database refuses, a batch
whose transaction it rolls back.

FreePBX call recordings under monitor/YYYY/MM/DD and the cdr rows naming them
(`cdr.recordingfile`), on real MariaDB and PostgreSQL, purged by a dedicated user holding the
grants docs/install.md gives it, less `UPDATE (recordingfile)`. 3CX's cl_* call history with a
foreign key from `recordings` to `cl_participants` on a real PostgreSQL. Each test looks at what
a user sees: `check`, the run's printed result, the deletion log, the rows and the files.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from pbxdata import PbxDatabase, cdr_rows
from sqlalchemy import Engine, make_url, text
from test_cli import retentiond
from threecx_schema import (
    RECORDINGS,
    RECORDINGS_FOREIGN_KEY,
    cl_history,
    create_cl_schema,
    link_recordings,
    recording_rows,
)

from retentiond.cli.run import print_outcome
from retentiond.config.loader import LoadedConfig, load_config
from retentiond.engine.engine import Engine as RunEngine
from retentiond.engine.erasure import erase
from retentiond.engine.outcome import RunOutcome
from retentiond.errors import StoreError
from retentiond.evidence import log as audit
from retentiond.policy.subjects import Subject

NOW = datetime(2026, 5, 20, 12, 0, tzinfo=UTC)  # keep 30d: the cutoff is 2026-04-20 12:00 UTC
AUDIO = b"RIFF$\x00\x00\x00WAVEfmt " + bytes(32)

# What the FreePBX preset's call-recordings rule does, with this test's root and connection.
CONFIG = """\
version: 1
timezone: UTC
audit: {{path: {audit}}}
connections:
  cdrdb:
    url: {url}
{password}    lock_timeout: 2
    retries: 1
rules:
  - name: call-recordings
    keep: 30d
    stores:
      - type: files
        root: {root}
        match: ["**/*.wav"]
        age_from: path_date
        subject_in_name: true
        batch_size: 10
        references: {{connection: cdrdb, table: cdr, column: recordingfile}}
holds:
  - id: HOLD-2026-03
    reason: Litigation 3 O 17/26
    approved_by: DPO
    review_by: 2027-01-31
    rules: [call-recordings]
    from: 2026-03-10
    to: 2026-03-10
safety:
  max_delete_fraction: 1.0
"""


@dataclass
class Recordings:
    """A FreePBX: the cdr rows, the monitor folder, and a user that may not clear references."""

    database: PbxDatabase  # as the database's administrator
    root: Path
    config: Path
    grant_update: Callable[[], None]
    names: dict[str, str] = field(default_factory=dict)  # call -> its recordingfile
    uniqueids: dict[str, str] = field(default_factory=dict)  # call -> its cdr row's uniqueid
    outside: dict[str, str] = field(default_factory=dict)  # call -> the outside party's number

    def references(self) -> dict[str, str]:
        """Each call's recordingfile as the cdr row says it now."""
        with self.database.engine.connect() as connection:
            rows = connection.execute(text("SELECT uniqueid, recordingfile FROM cdr"))
            by_uniqueid = {str(uniqueid): str(value) for uniqueid, value in rows}
        return {call: by_uniqueid[uniqueid] for call, uniqueid in self.uniqueids.items()}


# The calls: when, and whether their recording is on disk (a recording removed by hand is not).
CALLS = {
    "expired": (datetime(2026, 3, 2, 10, 0), True),
    "expired_too": (datetime(2026, 3, 3, 11, 30), True),
    "held_gone": (datetime(2026, 3, 10, 9, 0), False),  # the hold's day; its file removed by hand
    "expired_gone": (datetime(2026, 4, 2, 16, 0), False),  # removed by hand: already dangling
    "young_gone": (datetime(2026, 5, 18, 10, 0), False),  # after the cutoff: may be recording
    "young": (datetime(2026, 5, 19, 8, 15), True),
}


def build(database: PbxDatabase, tmp_path: Path, url: str, password: Path | None) -> Recordings:
    database.create("cdr")
    root = tmp_path / "monitor"
    root.mkdir()
    rows = cdr_rows([moment for moment, _ in CALLS.values()], seed=3)
    recordings = Recordings(database, root, tmp_path / "retentiond.yaml", lambda: None)
    for (call, (moment, on_disk)), row in zip(CALLS.items(), rows, strict=True):
        stamp = moment.strftime("%Y%m%d-%H%M%S")
        name = f"out-{row['dst']}-{row['src']}-{stamp}-{row['uniqueid']}.wav"
        row["recordingfile"] = name
        recordings.names[call] = name
        recordings.uniqueids[call] = row["uniqueid"]
        recordings.outside[call] = row["src"] if row["dcontext"] == "from-trunk" else row["dst"]
        if on_disk:
            path = root / f"{moment:%Y/%m/%d}" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(AUDIO)
    database.insert("cdr", rows)
    password_line = f"    password_file: {password}\n" if password else ""
    recordings.config.write_text(
        CONFIG.format(audit=tmp_path / "audit.jsonl", url=url, password=password_line, root=root)
    )
    return recordings


def files(root: Path) -> set[str]:
    return {path.name for path in root.rglob("*.wav")}


@pytest.fixture
def freepbx_mariadb(
    mariadb_url: str,
    mariadb_server: Engine,
    pbx_database: Callable[[str], PbxDatabase],
    tmp_path: Path,
) -> Iterator[Recordings]:
    """docs/install.md's grants for cdr, with `UPDATE (recordingfile)` revoked."""
    database = pbx_database(mariadb_url)
    name = make_url(mariadb_url).database
    user, password = f"rtd_refs_{secrets.token_hex(4)}", secrets.token_hex(12)
    account = f"'{user}'@'%'"
    secret = tmp_path / "cdrdb.password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    url = make_url(mariadb_url).set(username=user, host="127.0.0.1").render_as_string()
    recordings = build(database, tmp_path, url, secret)
    with mariadb_server.begin() as admin:
        admin.execute(text(f"CREATE USER {account} IDENTIFIED BY '{password}'"))
        admin.execute(text(f"GRANT SELECT, DELETE ON {name}.cdr TO {account}"))
        admin.execute(text(f"GRANT UPDATE (recordingfile) ON {name}.cdr TO {account}"))
        admin.execute(text(f"REVOKE UPDATE (recordingfile) ON {name}.cdr FROM {account}"))
    recordings.grant_update = lambda: database.execute(
        f"GRANT UPDATE (recordingfile) ON {name}.cdr TO {account}"
    )
    yield recordings
    with mariadb_server.begin() as admin:
        admin.execute(text(f"DROP USER IF EXISTS {account}"))


@pytest.fixture
def freepbx_postgres(
    postgres_url: str, pbx_database: Callable[[str], PbxDatabase], tmp_path: Path
) -> Iterator[Recordings]:
    """The same grants on PostgreSQL (FreePBX's cdr there, as some installations keep it)."""
    database = pbx_database(postgres_url)
    role = f"rtd_refs_{secrets.token_hex(4)}"
    url = make_url(postgres_url).set(username=role).render_as_string()
    recordings = build(database, tmp_path, url, None)
    database.execute(
        f"CREATE ROLE {role} LOGIN",
        f"GRANT SELECT, DELETE ON cdr TO {role}",
        f"GRANT UPDATE (recordingfile) ON cdr TO {role}",
        f"REVOKE UPDATE (recordingfile) ON cdr FROM {role}",
    )
    recordings.grant_update = lambda: database.execute(
        f"GRANT UPDATE (recordingfile) ON cdr TO {role}"
    )
    yield recordings
    database.execute(f"DROP OWNED BY {role}", f"DROP ROLE {role}")


BACKENDS = [
    pytest.param("freepbx_mariadb", marks=pytest.mark.mariadb, id="mariadb"),
    pytest.param("freepbx_postgres", marks=pytest.mark.postgres, id="postgresql"),
]


def run_once(config: LoadedConfig) -> RunOutcome:
    engine = RunEngine(config, now=lambda: NOW)
    with audit.AuditLog(config.config.audit.path, clock=lambda: NOW) as log:
        return engine.run(config.config.rules[0], log)


def printed(outcome: RunOutcome) -> str:
    """What `run --once` prints for the outcome."""

    @click.command()
    def show() -> None:
        print_outcome(outcome, UTC)

    return CliRunner().invoke(show).output


def entries(config: LoadedConfig) -> list[dict[str, Any]]:
    return [json.loads(line) for line in config.config.audit.path.read_text().splitlines()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_reports_the_missing_update_on_the_reference_column_with_its_grant(
    backend: str, request: pytest.FixtureRequest
) -> None:
    recordings: Recordings = request.getfixturevalue(backend)

    check = retentiond("-c", recordings.config, "check")

    assert check.returncode == 1, check.stdout + check.stderr
    assert "references: missing privilege UPDATE(recordingfile) on cdr" in check.stdout
    grant = check.stdout.split("; run: ", 1)[1].splitlines()[0]
    assert grant.startswith("GRANT UPDATE (") and "recordingfile" in grant
    recordings.database.execute(grant)  # the statement check printed, as the admin runs it
    check = retentiond("-c", recordings.config, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "missing privilege" not in check.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_files_unlinked_are_counted_when_the_reference_update_is_refused(
    backend: str, request: pytest.FixtureRequest
) -> None:
    recordings: Recordings = request.getfixturevalue(backend)
    names = recordings.names
    config = load_config(recordings.config)

    outcome = run_once(config)

    assert files(recordings.root) == {names["young"]}
    (store,) = outcome.stores
    assert outcome.status == "failed"
    assert (store.deleted, store.batches) == (2, 1)
    assert store.failed is not None and "could not be cleared" in store.failed
    # MariaDB: UPDATE command denied (1142); PostgreSQL: insufficient privilege (42501)
    code, sqlstate = ("42501", "42501") if backend == "freepbx_postgres" else ("1142", "42000")
    codes = f"error {code}" + (f", SQLSTATE {sqlstate}" if sqlstate != code else "")
    assert f"({codes})" in store.failed, store.failed
    assert "denied" not in store.failed.lower()  # the code, never the server's words
    shown = printed(outcome)
    assert "deleted 2 files" in shown and "None" not in shown
    log = entries(config)
    intents = [e for e in log if e["type"] == "batch_intent"]
    done = [e for e in log if e["type"] == "batch_done"]
    assert [(e["batch"], e["planned"]) for e in intents] == [(1, 2)]
    assert [(e["batch"], e["deleted"], e["failed"], e["code"], e["sqlstate"]) for e in done] == [
        (1, 2, True, code, sqlstate)
    ]
    assert log[-1]["type"] == "run_finished" and log[-1]["deleted"] == 2
    assert not any(name in json.dumps(log) for name in names.values())
    assert recordings.references() == names  # every row still names its file


@pytest.mark.parametrize("backend", BACKENDS)
def test_dangling_references_are_swept_by_a_run_with_nothing_expired(
    backend: str, request: pytest.FixtureRequest
) -> None:
    recordings: Recordings = request.getfixturevalue(backend)
    names = recordings.names
    config = load_config(recordings.config)
    assert run_once(config).status == "failed"  # the files went, their references stayed
    recordings.grant_update()

    again = run_once(config)

    assert again.status == "done"
    assert (again.stores[0].deleted, again.stores[0].counts) == (0, {"references_cleared": 3})
    assert recordings.references() == {
        "expired": "",
        "expired_too": "",
        "expired_gone": "",
        "held_gone": names["held_gone"],  # held: its row stays as it is
        "young_gone": names["young_gone"],  # after the cutoff: perhaps still being recorded
        "young": names["young"],
    }
    assert files(recordings.root) == {names["young"]}
    log = entries(config)
    assert not any(e["type"] == "run_reconciled" for e in log)  # nothing left unaccounted for
    sweep = [e for e in log if e["type"] == "batch_done"][-1]
    assert (sweep["deleted"], sweep["counts"]) == (0, {"references_cleared": 3})


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_erasure_counts_the_files_it_unlinked_when_the_reference_update_is_refused(
    backend: str, request: pytest.FixtureRequest
) -> None:
    recordings: Recordings = request.getfixturevalue(backend)
    config = load_config(recordings.config)
    subject = Subject.parse(numbers=[recordings.outside["expired"]])

    with (
        audit.AuditLog(config.config.audit.path, clock=lambda: NOW) as log,
        pytest.raises(StoreError, match="could not be cleared"),
    ):
        erase(RunEngine(config, now=lambda: NOW), log, subject, "DSR-2026-05", now=NOW)

    assert recordings.names["expired"] not in files(recordings.root)
    written = entries(config)
    done = [e for e in written if e["type"] == "batch_done"]
    assert [(e["stage"], e["deleted"], e["failed"]) for e in done] == [("erase", 1, True)]
    finished = written[-1]
    assert (finished["type"], finished["status"], finished["deleted"]) == (
        "erasure_finished",
        "failed",
        1,
    )


# -- a batch the database rolls back ---------------------------------------------------------

CX_CUTOFF_NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)  # keep 3 months: cutoff 2024-03-01

CX_CONFIG = """\
version: 1
timezone: Europe/Berlin
audit: {{path: {audit}}}
connections:
  threecx: {{url: {url}, retries: 1}}
rules:
  - name: call-records
    keep: 3 months
    stores:
      - type: 3cx_call_history
        connection: threecx
        batch_size: 500
safety:
  max_delete_fraction: 1.0
"""


@pytest.mark.server_clock  # runs retentiond against the server
@pytest.mark.postgres
def test_a_batch_rolled_back_by_a_foreign_key_is_recorded_as_nothing_deleted(
    postgres_url: str, pbx_database: Callable[[str], PbxDatabase], tmp_path: Path
) -> None:
    database = pbx_database(postgres_url)
    create_cl_schema(database)
    starts = [CX_CUTOFF_NOW - timedelta(days=200 - 2 * i, hours=3) for i in range(60)]
    history = cl_history(starts, seed=4)
    history.insert(database)
    database.execute(*RECORDINGS)
    recordings = link_recordings(recording_rows(starts, seed=5), history)
    database.insert("recordings", recordings)
    database.execute(RECORDINGS_FOREIGN_KEY)
    config_file = tmp_path / "retentiond.yaml"
    config_file.write_text(CX_CONFIG.format(audit=tmp_path / "audit.jsonl", url=postgres_url))
    config = load_config(config_file)
    calls_before = database.count("cl_calls")

    def run() -> RunOutcome:
        engine = RunEngine(config, now=lambda: CX_CUTOFF_NOW)
        with audit.AuditLog(config.config.audit.path, clock=lambda: CX_CUTOFF_NOW) as log:
            return engine.run(config.config.rules[0], log)

    outcome = run()

    assert outcome.status == "failed"
    assert database.count("cl_calls") == calls_before  # the transaction was rolled back
    assert outcome.stores[0].deleted == 0
    message = outcome.stores[0].failed or ""
    assert "(error 23503) and was rolled back" in message
    assert "violates" not in message  # the code, never the server's words
    log = entries(config)
    done = [e for e in log if e["type"] == "batch_done"]
    assert [(e["deleted"], e["failed"], e["code"]) for e in done] == [(0, True, "23503")]
    assert "None" not in printed(outcome)

    # once the recordings rows are gone (their rule ran first), the calls go; nothing was open
    database.execute("DELETE FROM recordings")
    again = run()

    assert again.status == "done"
    assert database.count("cl_calls", "start_time < :c", c=datetime(2024, 3, 1, tzinfo=UTC)) == 0
    log = entries(config)
    assert not any(e["type"] == "run_reconciled" for e in log)
