"""A FreePBX call-records rule (cdr without a key, cel without a time index) enforced from the
command line on real MariaDB and PostgreSQL servers, as an administrator runs it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pbxdata import PbxDatabase, cdr_rows, cel_rows
from privacy import leaked
from sqlalchemy import text
from test_cli import retentiond

BERLIN = ZoneInfo("Europe/Berlin")


def config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "retentiond.yaml"
    path.write_text(f"""\
version: 1
timezone: Europe/Berlin
audit:
  path: {tmp_path / "audit.jsonl"}
connections:
  cdrdb:
    url: {url}
    lock_timeout: 2
rules:
  - name: call-records
    keep: 3 months
    stores:
      - {{type: sql, connection: cdrdb, table: cdr, time_column: calldate, batch_size: 100}}
      - {{type: sql, connection: cdrdb, table: cel, time_column: eventtime, batch_size: 250}}
safety:
  max_delete_fraction: 0.9
""")
    return path


@pytest.mark.server_clock  # runs retentiond against the server
@pytest.mark.parametrize("server", ["mariadb_url", "postgres_url"])
def test_freepbx_call_records_are_purged_from_the_command_line(
    server: str,
    request: pytest.FixtureRequest,
    pbx_database: Callable[[str], PbxDatabase],
    tmp_path: Path,
) -> None:
    url: str = request.getfixturevalue(server)
    database = pbx_database(url)
    database.create("cdr", "cel")
    now = datetime.now(BERLIN).replace(tzinfo=None, microsecond=0)
    # a year of calls, one every 12 hours, as naive Berlin wall-clock times like FreePBX writes
    times = [now - timedelta(hours=12 * i) for i in range(730)]
    calls, events = cdr_rows(times, seed=1), cel_rows(times * 3, seed=2)
    database.insert("cdr", calls)
    database.insert("cel", events)
    path = config(tmp_path, url)

    plan = retentiond("-c", path, "plan", "--json")
    assert plan.returncode == 0, plan.stderr
    (rule,) = json.loads(plan.stdout)
    expected = {s["store"]: s["would_delete"] for s in rule["stores"]}

    run = retentiond("-c", path, "run", "--once", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    (outcome,) = json.loads(run.stdout)["runs"]
    assert outcome["status"] == "done"
    deleted = {s["store"]: s["deleted"] for s in outcome["stores"]}
    assert deleted == expected and deleted["cdrdb/cdr"] > 300

    cutoff = datetime.fromisoformat(outcome["cutoff"]).astimezone(BERLIN).replace(tzinfo=None)
    assert database.count("cdr", "calldate < :c", c=cutoff) == 0
    assert database.count("cel", "eventtime < :c", c=cutoff) == 0
    assert database.count("cdr") == sum(1 for t in times if t >= cutoff)
    assert database.count("cel") == 3 * sum(1 for t in times if t >= cutoff)

    verify = retentiond("audit", "verify", tmp_path / "audit.jsonl")
    assert verify.returncode == 0, verify.stdout

    personal = {
        str(value)
        for row in calls + events
        for key, value in row.items()
        if key
        in ("src", "dst", "clid", "cnum", "cnam", "uniqueid", "cid_num", "cid_name", "appdata")
        and value
    }
    assert len(personal) > 1000  # the check below has something to find
    found = leaked(
        personal,
        jsonl=[(tmp_path / "audit.jsonl").read_text(), run.stderr],
        documents=[plan.stdout, run.stdout],
    )
    assert not found, found[:5]
    assert datetime.now(UTC) > datetime.fromisoformat(outcome["cutoff"])


FAKETIME = shutil.which("faketime")


@pytest.mark.skipif(FAKETIME is None, reason="moving retentiond's clock needs faketime (Debian)")
@pytest.mark.parametrize("server", ["mariadb_url", "postgres_url"])
def test_a_host_clock_an_hour_off_the_servers_refuses_the_run_and_deletes_nothing(
    server: str,
    request: pytest.FixtureRequest,
    pbx_database: Callable[[str], PbxDatabase],
    tmp_path: Path,
) -> None:
    url: str = request.getfixturevalue(server)
    database = pbx_database(url)
    database.create("cdr", "cel")
    now = datetime.now(BERLIN).replace(tzinfo=None, microsecond=0)
    times = [now - timedelta(hours=12 * i) for i in range(400)]
    database.insert("cdr", cdr_rows(times, seed=1))
    database.insert("cel", cel_rows(times, seed=2))
    path = config(tmp_path, url)
    # faketime moves this retentiond's clock only (relative to the real one, so even when the
    # whole suite runs under faketime); the server keeps its own
    assert FAKETIME is not None
    an_hour_ahead = [FAKETIME, "--exclude-monotonic", "-f", "+1h"]
    run = subprocess.run(
        [
            *an_hour_ahead,
            sys.executable,
            "-m",
            "retentiond",
            "-c",
            str(path),
            "run",
            "--once",
            "--json",
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "RETENTIOND_CONFIG"},
        timeout=120,
        check=False,
    )
    assert run.returncode == 3, run.stdout + run.stderr  # refused
    (outcome,) = json.loads(run.stdout)["runs"]
    assert outcome["status"] == "refused" and outcome["deleted"] == 0
    assert "the database clock differs from the host clock by" in outcome["message"]
    assert "safety.max_clock_skew" in outcome["message"]
    assert database.count("cdr") == database.count("cel") == len(times)  # nothing deleted


@pytest.mark.mariadb
def test_check_names_missing_and_excess_privileges(
    mariadb_url: str,
    mariadb_server: Any,
    pbx_database: Callable[[str], PbxDatabase],
    tmp_path: Path,
) -> None:
    pbx_database(mariadb_url).create("cdr", "cel")
    database = mariadb_url.rsplit("/", 1)[1]
    user = f"rtd_{secrets.token_hex(4)}"
    with mariadb_server.connect() as connection:
        connection.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'"))
        connection.execute(text(f"GRANT SELECT, DELETE ON {database}.cdr TO '{user}'@'%'"))
        connection.execute(text(f"GRANT SELECT ON {database}.cel TO '{user}'@'%'"))
    try:
        limited = retentiond(
            "-c", config(tmp_path, mariadb_url.replace("root@", f"{user}:pw@")), "check"
        )
        assert limited.returncode == 1
        assert "sql cdrdb/cdr: ok" in limited.stdout
        assert "sql cdrdb/cel: FAILED: missing privilege DELETE on cel" in limited.stdout
        assert "more privileges than needed" not in limited.stdout
        root = retentiond("-c", config(tmp_path, mariadb_url), "check")
        assert root.returncode == 0, root.stdout
        assert "warning: more privileges than needed: DROP" in root.stdout
    finally:
        with mariadb_server.connect() as connection:
            connection.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))
