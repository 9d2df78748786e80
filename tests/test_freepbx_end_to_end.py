"""A FreePBX call-records rule (cdr without a key, cel without a time index) enforced from the
command line on real MariaDB and PostgreSQL servers, as an administrator runs it."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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


@pytest.mark.skipif(
    FAKETIME is None and not os.environ.get("CI"),
    reason="moving retentiond's clock needs faketime (Debian; .ci/run installs it)",
)
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
    assert FAKETIME is not None, (
        "faketime is not installed: apt-get install faketime (.ci/run does)"
    )
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


# -- FreePBX as its installer leaves it ----------------------------------------------------------

# /etc/freepbx.conf as FreePBX's installer writes it (FreePBX/framework
# installlib/installcommand.class.php, "Write freepbx.conf"; the stored copy read is commit
# 008c45731b0339ffeb271cd170ac5cd2d27bba41, the framework repository being too large to fetch whole
# to confirm its release/17.0 branch): AMPDBHOST 'localhost' and AMPDBPORT '3306' are the
# installer's defaults, user and password those of its root install ('freepbxuser', an md5);
# here the user, its password and AMPDBNAME are per test.
FREEPBX_CONF = """<?php
$amp_conf['AMPDBUSER'] = '{user}';
$amp_conf['AMPDBPASS'] = '{password}';
$amp_conf['AMPDBHOST'] = 'localhost';
$amp_conf['AMPDBPORT'] = '3306';
$amp_conf['AMPDBNAME'] = '{database}';
$amp_conf['AMPDBENGINE'] = 'mysql';
$amp_conf['datasource'] = ''; //for sqlite3

require_once('/var/www/html/admin/bootstrap.php');
?>
"""
# freepbx_settings as FreePBX's dumps show it (framework's table, 14 columns)
FREEPBX_SETTINGS_TABLE = """
CREATE TABLE `freepbx_settings` (
  `keyword` varchar(50) NOT NULL DEFAULT '',
  `value` varchar(255) DEFAULT NULL,
  `name` varchar(80) DEFAULT NULL,
  `level` tinyint(1) DEFAULT 0,
  `description` longtext DEFAULT NULL,
  `type` varchar(25) DEFAULT NULL,
  `options` longtext DEFAULT NULL,
  `defaultval` varchar(255) DEFAULT NULL,
  `readonly` tinyint(1) DEFAULT 0,
  `hidden` tinyint(1) DEFAULT 0,
  `category` varchar(50) DEFAULT NULL,
  `module` varchar(50) DEFAULT NULL,
  `emptyok` tinyint(1) DEFAULT 1,
  `sortorder` int(11) DEFAULT 0,
  PRIMARY KEY (`keyword`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
"""
# The rows the installer and the cdr/cel modules define, value and defaultval '' ("use the
# default"), verbatim but for the descriptions: FreePBX/framework installlib/installer.class.php
# freepbx_settings_init() category 'Remote CDR Database' (stored commit
# 03008c8ba86a360837bf97aa61b84f1ca5807f8d), FreePBX/cel release/17.0 install.php (9a9e242,
# cel 17.0.2.7) for CELDBNAME and CELDBTABLENAME.
REMOTE_CDR = ("Remote CDR Database", "", 3, 1, 1)  # category, module, level, readonly, emptyok
INSTALLED_SETTINGS = [
    ("CDRDBHOST", "Remote CDR DB Host", "text", *REMOTE_CDR),
    ("CDRDBNAME", "Remote CDR DB Name", "text", *REMOTE_CDR),
    ("CDRDBPASS", "Remote CDR DB Password", "text", *REMOTE_CDR),
    ("CDRDBPORT", "Remote CDR DB Port", "int", *REMOTE_CDR),
    ("CDRDBTABLENAME", "Remote CDR DB Table", "text", *REMOTE_CDR),
    ("CDRDBTYPE", "Remote CDR DB Type", "select", *REMOTE_CDR),
    ("CDRDBUSER", "Remote CDR DB User", "text", *REMOTE_CDR),
    ("CELDBNAME", "Remote CEL DB Name", "text", "CEL Report Module", "cel", 3, 1, 1),
    ("CELDBTABLENAME", "Remote CEL DB Table", "text", "CEL Report Module", "cel", 3, 1, 1),
]
CDR_DATABASE = "asteriskcdrdb"  # what FreePBX uses for CDRDBNAME ''


@dataclass
class InstalledFreePBX:
    conf: Path
    cdrdb: PbxDatabase
    spool: Path
    log_dir: Path


@pytest.fixture
def installed_freepbx(
    mariadb_server: Any,
    mariadb_url: str,
    pbx_database: Callable[[str], PbxDatabase],
    tmp_path: Path,
) -> Iterator[InstalledFreePBX]:
    """FreePBX's databases as installed: `asteriskcdrdb` (its real name, since CDRDBNAME is ''),
    the settings database with the installer's rows, and a user known only as 'user'@'localhost'
    with the installer's grants, which this server (skip-name-resolve) lets in over the socket
    only."""
    user, password = f"fpbx_{secrets.token_hex(4)}", secrets.token_hex(16)
    settings_db = mariadb_url.rsplit("/", 1)[1]
    with mariadb_server.connect() as admin, contextlib.ExitStack() as cleanup:
        # One test at a time owns the server-wide name asteriskcdrdb.
        assert admin.execute(text(f"SELECT GET_LOCK('{CDR_DATABASE}', 600)")).scalar() == 1
        cleanup.callback(admin.execute, text(f"DO RELEASE_LOCK('{CDR_DATABASE}')"))
        admin.execute(text(f"DROP DATABASE IF EXISTS {CDR_DATABASE}"))
        admin.execute(text(f"CREATE DATABASE {CDR_DATABASE} CHARACTER SET utf8mb4"))
        cleanup.callback(admin.execute, text(f"DROP DATABASE IF EXISTS {CDR_DATABASE}"))
        admin.execute(text(f"CREATE USER '{user}'@'localhost' IDENTIFIED BY '{password}'"))
        cleanup.callback(admin.execute, text(f"DROP USER IF EXISTS '{user}'@'localhost'"))
        for database in (settings_db, CDR_DATABASE):  # the installer's GRANT ALL PRIVILEGES
            admin.execute(text(f"GRANT ALL PRIVILEGES ON {database}.* TO '{user}'@'localhost'"))
        cdr_url = mariadb_url.rsplit("/", 1)[0] + f"/{CDR_DATABASE}"
        cdrdb = PbxDatabase.connect(cdr_url)
        cleanup.callback(cdrdb.close)
        cdrdb.create("cdr", "cel")

        spool, log_dir = tmp_path / "spool", tmp_path / "log"
        for folder in (spool / "voicemail", spool / "monitor", log_dir):
            folder.mkdir(parents=True)
        settings = pbx_database(mariadb_url)
        settings.execute(FREEPBX_SETTINGS_TABLE)
        columns = ("keyword", "name", "type", "category", "module", "level", "readonly", "emptyok")
        rows = [
            dict(zip(columns, row, strict=True)) | {"value": "", "defaultval": ""}
            for row in INSTALLED_SETTINGS
        ]
        settings.insert("freepbx_settings", rows)
        # Paths of this test instead of the installer's /var/spool/asterisk and /var/log/asterisk
        paths = {"ASTSPOOLDIR": spool, "ASTLOGDIR": log_dir}
        settings.insert(
            "freepbx_settings", [{"keyword": k, "value": str(v)} for k, v in paths.items()]
        )

        conf = tmp_path / "freepbx.conf"
        conf.write_text(FREEPBX_CONF.format(user=user, password=password, database=settings_db))
        yield InstalledFreePBX(conf, cdrdb, spool, log_dir)


def three_line_config(freepbx: InstalledFreePBX, tmp_path: Path) -> Path:
    path = tmp_path / "retentiond.yaml"
    path.write_text(f"""\
version: 1
preset: freepbx
preset_settings: {{freepbx_conf: {freepbx.conf}}}
keep: {{call-records: 3 months, voicemail: 60d, call-recordings: 30d}}
timezone: Europe/Berlin
audit: {{path: {tmp_path / "audit.jsonl"}}}
safety: {{max_delete_fraction: 0.95}}
""")
    return path


def init_config(freepbx: InstalledFreePBX, tmp_path: Path) -> Path:
    path = tmp_path / "retentiond.yaml"
    init = retentiond(
        "init", "--preset", "freepbx", "--set", f"freepbx_conf={freepbx.conf}", "-o", path
    )
    assert init.returncode == 0, init.stderr
    written = path.read_text()
    assert f"/{CDR_DATABASE}?charset=utf8mb4&unix_socket=" in written
    assert "table: cdr\n" in written and "table: cel\n" in written
    edits = {
        "# timezone: Europe/Berlin": "timezone: Europe/Berlin",
        "/var/lib/retentiond/audit.jsonl": str(tmp_path / "audit.jsonl"),
        "max_delete_fraction: 0.5": "max_delete_fraction: 0.95",
    }
    for old, new in edits.items():
        assert written.count(old) == 1, old
        written = written.replace(old, new)
    path.write_text(written)
    return path


@pytest.mark.server_clock  # runs retentiond against the server
@pytest.mark.mariadb
@pytest.mark.parametrize("written_by", [init_config, three_line_config], ids=["init", "preset"])
def test_freepbx_as_installed_is_purged_by_its_preset(
    written_by: Callable[[InstalledFreePBX, Path], Path],
    installed_freepbx: InstalledFreePBX,
    tmp_path: Path,
) -> None:
    """Empty CDRDB* settings mean FreePBX's defaults, and AMPDBHOST localhost means the socket."""
    now = datetime.now(BERLIN).replace(tzinfo=None, microsecond=0)
    times = [now - timedelta(hours=12 * i + 1) for i in range(730)]
    cdrdb = installed_freepbx.cdrdb
    cdrdb.insert("cdr", cdr_rows(times, seed=21))
    cdrdb.insert("cel", cel_rows(times, seed=22))
    config = written_by(installed_freepbx, tmp_path)

    check = retentiond("-c", config, "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "sql cdrdb/cdr: ok" in check.stdout and "sql cdrdb/cel: ok" in check.stdout

    run = retentiond("-c", config, "run", "--once", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    outcome = next(r for r in json.loads(run.stdout)["runs"] if r["rule"] == "call-records")
    assert outcome["status"] == "done"
    cutoff = datetime.fromisoformat(outcome["cutoff"]).astimezone(BERLIN).replace(tzinfo=None)
    young = sum(1 for t in times if t >= cutoff)
    assert 100 < young < len(times) - 100  # both sides of the cutoff have rows
    assert cdrdb.count("cdr", "calldate < :c", c=cutoff) == 0
    assert cdrdb.count("cel", "eventtime < :c", c=cutoff) == 0
    assert cdrdb.count("cdr") == young and cdrdb.count("cel") == young
