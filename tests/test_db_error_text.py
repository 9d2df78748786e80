"""Nothing a database server, driver or trigger says reaches the log or a report (safety rule 11).

FreePBX's cdr on real MariaDB and PostgreSQL, made to refuse the run the ways a PBX's database
can: a trigger whose message quotes the row (MariaDB `SIGNAL … MESSAGE_TEXT`, PostgreSQL
`RAISE EXCEPTION` with OLD.clid and OLD.src), a unique key that an anonymized number makes
collide on a row whose caller name holds an apostrophe (`"Siobhan O'Brien" <+49…>`: MariaDB's
"Duplicate entry '…'" quotes it, and the apostrophe defeats any stripping of quoted parts), and a
CHECK constraint. Each run goes through the command line; its output, the daemon's log (JSON lines
on stderr), the deletion log and every report form are searched for the seeded values, and must
carry the error code and SQLSTATE instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from databases import SERVER_BACKENDS, database_url
from pbxdata import PbxDatabase, cdr_rows
from privacy import leaked
from test_cli import retentiond
from test_daemon import clean_env, wait_for

# Long expired whatever the day the test runs: keep is 30 days.
CALLS = [datetime(2020, 3, 2, 10, 0) + timedelta(hours=h) for h in range(4)]
NAME = "Siobhan O'Brien"
NUMBER = "+4930987654321"
CALLER_ID = f'"{NAME}" <{NUMBER}>'

CONFIG = """\
version: 1
timezone: UTC
audit: {{path: {audit}}}
connections:
  cdrdb: {{url: '{url}', retries: 0}}
rules:
  - name: call-records
    keep: 30d
    action: {action}
    schedule: daily 03:15
    stores:
      - type: sql
        connection: cdrdb
        table: cdr
        time_column: calldate
        subject_columns: [src, dst, clid]
{anonymize}safety:
  max_delete_fraction: 1.0
"""

# What each server calls a trigger's refusal: MariaDB's errno and SQLSTATE, PostgreSQL's SQLSTATE.
TRIGGER_CODES = {"mariadb": ("1644", "45000"), "postgresql": ("P0001", "P0001")}
DUPLICATE_CODES = {"mariadb": ("1062", "23000"), "postgresql": ("23505", "23505")}
CHECK_CODES = {"mariadb": ("4025", "23000"), "postgresql": ("23514", "23514")}


@dataclass
class Pbx:
    database: PbxDatabase
    config: Path
    audit: Path
    personal: set[str]

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.read_text().splitlines()]


Build = Callable[..., Pbx]


@pytest.fixture(params=SERVER_BACKENDS)
def build(
    request: pytest.FixtureRequest, pbx_database: Callable[[str], PbxDatabase], tmp_path: Path
) -> Build:
    """A FreePBX cdr with four expired calls, the first from Siobhan O'Brien, and its config."""
    url = database_url(request, request.param)

    def make(action: str = "delete", anonymize: dict[str, str] | None = None) -> Pbx:
        database = pbx_database(url)
        database.create("cdr")
        rows = cdr_rows(CALLS, seed=16)
        rows[0] |= {"clid": CALLER_ID, "src": NUMBER, "cnum": NUMBER, "cnam": NAME}
        # Two calls of hers to numbers that differ only in their last three digits: once
        # those are masked, the two rows are equal in (clid, dst).
        rows[1] |= {"clid": CALLER_ID, "src": NUMBER, "cnum": NUMBER, "cnam": NAME}
        rows[0]["dst"], rows[1]["dst"] = "+4940123456111", "+4940123456222"
        database.insert("cdr", rows)
        audit = tmp_path / "audit.jsonl"
        config = tmp_path / "retentiond.yaml"
        transforms = (
            "        anonymize: {"
            + ", ".join(f"{column}: {how}" for column, how in (anonymize or {}).items())
            + "}\n"
            if anonymize
            else ""
        )
        config.write_text(CONFIG.format(audit=audit, url=url, action=action, anonymize=transforms))
        personal = {NAME, "O'Brien", "Siobhan", NUMBER, NUMBER[3:], CALLER_ID}
        for row in rows:
            personal |= {row[c] for c in ("clid", "src", "dst", "cnam", "uniqueid") if row[c]}
        personal |= {row["recordingfile"] for row in rows if row["recordingfile"]}
        return Pbx(database, config, audit, personal)

    return make


def dialect(pbx: Pbx) -> str:
    return pbx.database.dialect


def add_trigger(pbx: Pbx, event: str) -> None:
    """A trigger that refuses every `event` (DELETE or UPDATE) on cdr, quoting the row."""
    if dialect(pbx) == "mariadb":
        pbx.database.execute(
            f"""
            CREATE TRIGGER cdr_keep BEFORE {event} ON cdr FOR EACH ROW
            BEGIN
              DECLARE message VARCHAR(128);
              SET message = CONCAT('call of ', OLD.clid, ' from ', OLD.src, ' must stay');
              SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = message;
            END
            """
        )
        return
    pbx.database.execute(
        """
        CREATE FUNCTION cdr_keep() RETURNS trigger LANGUAGE plpgsql AS $body$
        BEGIN
          RAISE EXCEPTION 'call of % from % must stay', OLD.clid, OLD.src;
        END
        $body$
        """,
        f"CREATE TRIGGER cdr_keep BEFORE {event} ON cdr FOR EACH ROW EXECUTE FUNCTION cdr_keep()",
    )


def reports(pbx: Pbx, tmp_path: Path) -> dict[str, str]:
    """Every form of the DPO report over the days around the run, PDF as its text if possible."""
    today = datetime.now(UTC).date()  # the run's entries are stamped with the real clock
    period = ["--from", str(today - timedelta(days=1)), "--to", str(today + timedelta(days=1))]
    pdf = tmp_path / "report.pdf"
    commands = {form: ["--format", form] for form in ("html", "json", "csv")}
    commands["pdf"] = ["--format", "pdf", "-o", str(pdf)]
    # The four commands at once: they only read the deletion log, and most of each one's time is
    # its start, on one core while the other waits (the module: 115 s -> 79 s under load).
    with ThreadPoolExecutor(len(commands)) as pool:
        done = {
            form: pool.submit(retentiond, "-c", pbx.config, "report", *period, *args)
            for form, args in commands.items()
        }
    forms = {}
    for form in ("html", "json", "csv"):
        made = done[form].result()
        assert made.returncode == 0, made.stderr
        forms[form] = made.stdout
    made = done["pdf"].result()
    if made.returncode == 0 and shutil.which("pdftotext"):
        forms["pdf"] = subprocess.run(
            ["pdftotext", pdf, "-"], capture_output=True, text=True, check=True, timeout=60
        ).stdout
    elif os.environ.get("CI") and made.returncode == 0:
        pytest.fail("pdftotext (poppler-utils) is needed to check the PDF's text")
    return forms


def log_lines(stderr: str) -> list[str]:
    """The daemon's log: the JSON lines on stderr (with their syslog priority)."""
    return [line for line in stderr.splitlines() if line.startswith("<")]


def assert_nothing_leaked(
    pbx: Pbx, tmp_path: Path, *commands: subprocess.CompletedProcess[str]
) -> str:
    """No seeded value in any output, log or report form; everything joined, for more checks."""
    forms = reports(pbx, tmp_path)
    audit = pbx.audit.read_text()
    found = leaked(
        pbx.personal,
        texts=[c.stdout for c in commands] + [c.stderr for c in commands] + list(forms.values()),
        jsonl=[audit, *("\n".join(log_lines(c.stderr)) for c in commands)],
        documents=[forms["json"]],
    )
    assert not found, found
    return "\n".join([audit, *forms.values(), *(c.stdout + c.stderr for c in commands)])


def failed_batches(pbx: Pbx) -> list[tuple[Any, ...]]:
    return [
        (e.get("stage"), e["deleted"], e.get("code"), e.get("sqlstate"))
        for e in pbx.entries()
        if e["type"] == "batch_done" and e.get("failed")
    ]


def codes_text(code: str, sqlstate: str) -> str:
    return f"error {code}" + (f", SQLSTATE {sqlstate}" if sqlstate != code else "")


# --- a trigger quoting the row ------------------------------------------------------------------


@pytest.mark.server_clock  # runs retentiond against the server
@pytest.mark.parametrize(("action", "event"), [("delete", "DELETE"), ("anonymize", "UPDATE")])
def test_a_triggers_message_quoting_the_row_is_never_logged_nor_reported(
    build: Build, tmp_path: Path, action: str, event: str
) -> None:
    pbx = build(action, {"src": "truncate_digits", "clid": "blank"})
    add_trigger(pbx, event)
    code, sqlstate = TRIGGER_CODES[dialect(pbx)]

    run = retentiond("-c", pbx.config, "run", "--once")

    assert run.returncode == 1, run.stdout + run.stderr
    assert pbx.database.count("cdr") == len(CALLS)  # the trigger refused every change
    assert pbx.database.count("cdr", "src = :n", n=NUMBER) == 2
    everything = assert_nothing_leaked(pbx, tmp_path, run)
    assert "must stay" not in everything  # not a word of the trigger's own text
    assert f"({codes_text(code, sqlstate)})" in run.stdout
    assert "a trigger" in run.stdout and "run the command on a terminal to see it" in run.stdout
    stage = "anonymize" if action == "anonymize" else None
    assert failed_batches(pbx) == [(stage, 0, code, sqlstate)]


@pytest.mark.server_clock  # runs retentiond against the server
def test_an_erasure_refused_by_a_trigger_logs_its_code_only(build: Build, tmp_path: Path) -> None:
    pbx = build()
    add_trigger(pbx, "DELETE")
    code, sqlstate = TRIGGER_CODES[dialect(pbx)]

    erase = retentiond("-c", pbx.config, "erase", "--number", NUMBER, "--ticket", "DSR-16", "--yes")

    assert erase.returncode == 1, erase.stdout + erase.stderr
    assert pbx.database.count("cdr", "src = :n", n=NUMBER) == 2
    everything = assert_nothing_leaked(pbx, tmp_path, erase)
    assert "must stay" not in everything
    assert f"({codes_text(code, sqlstate)})" in erase.stderr
    (finished,) = [e for e in pbx.entries() if e["type"] == "erasure_finished"]
    assert finished["status"] == "failed" and codes_text(code, sqlstate) in finished["reason"]
    assert [(e["code"], e["sqlstate"]) for e in pbx.entries() if e.get("failed")] == [
        (code, sqlstate)
    ]


@pytest.mark.server_clock  # runs retentiond against the server
def test_the_servers_text_is_shown_on_the_terminal_when_asked_and_only_there(
    build: Build, tmp_path: Path
) -> None:
    pbx = build()
    add_trigger(pbx, "DELETE")

    run = retentiond("--show-db-messages", "-c", pbx.config, "run", "--once")

    assert run.returncode == 1
    shown = [line for line in run.stderr.splitlines() if "the database said" in line]
    assert len(shown) == 1 and "must stay" in shown[0], run.stderr
    assert shown[0].startswith("retentiond: cdrdb/cdr: deleting a batch: the database said")
    assert not leaked(pbx.personal, texts=[run.stdout], jsonl=["\n".join(log_lines(run.stderr))])
    assert "must stay" not in pbx.audit.read_text()


@pytest.mark.server_clock  # runs retentiond against the server
def test_the_daemon_never_logs_the_servers_text_even_when_asked_to_show_it(
    build: Build, tmp_path: Path
) -> None:
    """The journal is no terminal: the daemon and its run processes keep codes only."""
    pbx = build()
    add_trigger(pbx, "DELETE")
    code, sqlstate = TRIGGER_CODES[dialect(pbx)]
    journal = tmp_path / "daemon.log"
    with journal.open("wb") as stderr:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "retentiond", "--show-db-messages", "-c", pbx.config, "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=clean_env(),
        )
    try:
        # A rule that never succeeded runs at once when the daemon starts.
        wait_for("the run", lambda: pbx.audit.exists() and failed_batches(pbx), timeout=60)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)

    assert failed_batches(pbx) == [(None, 0, code, sqlstate)]
    logged = journal.read_text()
    assert not leaked(pbx.personal, jsonl=[logged, pbx.audit.read_text()])
    assert "the database said" not in logged and "must stay" not in logged
    assert pbx.database.count("cdr") == len(CALLS)


# --- constraints ----------------------------------------------------------------------------------


@pytest.mark.server_clock  # runs retentiond against the server
def test_a_duplicate_key_on_a_name_with_an_apostrophe_is_logged_as_its_code(
    build: Build, tmp_path: Path
) -> None:
    """MariaDB's "Duplicate entry '"Siobhan O'Brien" <+49…>-+49…xxx' for key 'uq'": the
    apostrophe ends a quoted part early, and stripping quoted parts left the rest in the log."""
    pbx = build("anonymize", {"dst": "truncate_digits"})
    pbx.database.execute("ALTER TABLE cdr ADD CONSTRAINT uq_caller_dst UNIQUE (clid, dst)")
    code, sqlstate = DUPLICATE_CODES[dialect(pbx)]

    run = retentiond("-c", pbx.config, "run", "--once")

    assert run.returncode == 1, run.stdout + run.stderr
    assert pbx.database.count("cdr", "dst LIKE :masked", masked="%xxx") == 0  # rolled back
    everything = assert_nothing_leaked(pbx, tmp_path, run)
    assert "uq_caller_dst" not in everything  # not even the server's names
    assert f"({codes_text(code, sqlstate)}): duplicate key" in run.stdout
    assert failed_batches(pbx) == [("anonymize", 0, code, sqlstate)]


@pytest.mark.server_clock  # runs retentiond against the server
def test_a_check_constraint_is_logged_as_its_code_not_the_servers_sentence(
    build: Build, tmp_path: Path
) -> None:
    pbx = build("anonymize", {"src": "blank"})
    pbx.database.execute("ALTER TABLE cdr ADD CONSTRAINT src_given CHECK (src <> '')")
    code, sqlstate = CHECK_CODES[dialect(pbx)]

    run = retentiond("-c", pbx.config, "run", "--once")

    assert run.returncode == 1, run.stdout + run.stderr
    assert pbx.database.count("cdr", "src = ''") == 0
    everything = assert_nothing_leaked(pbx, tmp_path, run)
    # PostgreSQL's "Failing row contains (…)" detail holds the whole row
    assert "src_given" not in everything and "violates" not in everything
    assert f"({codes_text(code, sqlstate)}): a CHECK constraint refused the change" in run.stdout
    assert failed_batches(pbx) == [("anonymize", 0, code, sqlstate)]


# --- the descriptions themselves -----------------------------------------------------------------


def test_an_sqlite_trigger_refusal_is_described_by_its_error_name(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError

    from retentiond.dberrors import describe

    engine = create_engine(f"sqlite:///{tmp_path / 'master.db'}")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE cdr (calldate TEXT, clid TEXT)"))
        connection.execute(
            text("INSERT INTO cdr VALUES ('2020-03-02 10:00:00', :clid)"), {"clid": CALLER_ID}
        )
        connection.execute(
            text(
                "CREATE TRIGGER cdr_keep BEFORE DELETE ON cdr BEGIN "
                "SELECT RAISE(ABORT, 'calls of Siobhan O''Brien must stay'); END"
            )
        )
    with pytest.raises(DBAPIError) as raised, engine.begin() as connection:
        connection.execute(text("DELETE FROM cdr"))
    engine.dispose()

    failure = describe(raised.value, "test")

    assert str(failure) == "a trigger refused the change (RAISE) (error SQLITE_CONSTRAINT_TRIGGER)"
    assert failure.remedy is not None and "run the command on a terminal" in failure.remedy


def test_a_code_without_a_description_is_named_with_generic_words() -> None:
    import pymysql

    from retentiond.dberrors import classify

    error = pymysql.err.OperationalError(4999, f"no such thing for {CALLER_ID}", sqlstate="HY000")

    failure = classify(error)

    assert str(failure) == "database error (code not known) (error 4999, SQLSTATE HY000)"
    assert (failure.code, failure.sqlstate) == ("4999", "HY000")


@pytest.mark.mariadb
def test_freepbx_settings_that_cannot_be_read_are_named_by_code(mariadb_url: str) -> None:
    """FreePBX's database without its freepbx_settings table (the preset reads it at load)."""
    from sqlalchemy import make_url

    from retentiond.config.pbxfiles import PbxSettingsError
    from retentiond.config.presets.freepbx import read_freepbx_settings

    url = make_url(mariadb_url)
    amp = {
        "AMPDBUSER": url.username or "root",
        "AMPDBHOST": url.host or "127.0.0.1",
        "AMPDBPORT": str(url.port or 3306),
        "AMPDBNAME": url.database or "",
    }

    with pytest.raises(PbxSettingsError) as raised:
        read_freepbx_settings(amp)

    message = str(raised.value)
    assert "(unknown table (error 1146, SQLSTATE 42S02))" in message
    assert "doesn't exist" not in message and (url.database or "?") not in message
    assert "preset_settings: {read_database: false}" in message
