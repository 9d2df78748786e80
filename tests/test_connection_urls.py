"""A connection's url that cannot work is a config error with file:line, found when the config is
loaded; a connection that fails only at run time fails its rule and no other.

Each case runs the command line as an administrator would, on a config with two rules: the first
on the connection under test, the second on an Asterisk cdr_sqlite3_custom database whose calls
are all long expired.
"""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path

import pytest
from test_cli import retentiond

CONFIG = """\
version: 1
timezone: UTC
audit: {{path: {audit}}}
connections:
  pbx:
    url: '{url}'
    retries: 0
  asterisk:
    url: 'sqlite:///{database}'
rules:
  - name: queue-log
    keep: 30d
    stores:
      - {{type: sql, connection: pbx, table: queuelog, time_column: time}}
  - name: call-records
    keep: 30d
    stores:
      - {{type: sql, connection: asterisk, table: cdr, time_column: calldate}}
safety:
  max_delete_fraction: 1.0
"""
SECRET = "s3cret-Pa55"
COMMANDS = [["check"], ["plan"], ["run", "--once"]]


def write_config(tmp_path: Path, url: str) -> Path:
    """The config, and an Asterisk master.db with three calls from 2020 (expired on any day the
    test runs: keep is 30 days)."""
    database = tmp_path / "master.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE cdr (AcctId INTEGER PRIMARY KEY, calldate TEXT, src TEXT)")
        db.executemany(
            "INSERT INTO cdr (calldate, src) VALUES (?, ?)",
            [(f"2020-03-0{day} 10:00:00", "201") for day in (1, 2, 3)],
        )
    db.close()
    config = tmp_path / "retentiond.yaml"
    config.write_text(CONFIG.format(audit=tmp_path / "audit.jsonl", url=url, database=database))
    return config


def calls_left(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "master.db") as db:
        (count,) = db.execute("SELECT COUNT(*) FROM cdr").fetchone()
    db.close()
    return int(count)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite://", "SQLite needs the database file, e.g. sqlite:////var/log/asterisk/master.db"),
        ("sqlite:///:memory:", "SQLite needs the database file"),
        (f"mariadb+pymysql://retentiond:{SECRET}@[::1/asteriskcdrdb", "square brackets"),
        (f"mariadb+pymysql://retentiond:{SECRET}@[::1]:99999/db", "a number from 1 to 65535"),
        ("mariadb+pymysql://retentiond@db.example:3306x/db", "a number from 1 to 65535"),
        ("postgres://retentiond@localhost/asterisk", "write postgresql+psycopg://"),
        ("mariadb+pymsql://retentiond@localhost/db", "write mariadb+pymysql://"),
        ("sqlite://localhost/var/log/asterisk/master.db", "names a file, not a host"),
        ("asteriskcdrdb", "not a database URL"),
    ],
)
def test_an_unusable_url_is_a_config_error_with_file_and_line(
    tmp_path: Path, url: str, says: str
) -> None:
    config = write_config(tmp_path, url)
    line = config.read_text().splitlines().index(f"    url: '{url}'") + 1

    for command in COMMANDS:
        result = retentiond("-c", config, *command)

        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert f"{config}:{line}: connections.pbx.url: " in result.stderr
        assert says in result.stderr
        assert "Traceback" not in result.stderr
        assert SECRET not in result.stdout + result.stderr  # never the URL itself
    assert not (tmp_path / "audit.jsonl").exists()  # nothing was done
    assert calls_left(tmp_path) == 3


def test_a_connection_unusable_at_run_time_fails_its_rule_and_not_the_later_ones(
    tmp_path: Path,
) -> None:
    """A driver SQLAlchemy knows but this host does not have: found only when connecting."""
    if importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("mysqlclient is installed here: the driver would load")
    config = write_config(tmp_path, f"mariadb+mysqldb://retentiond:{SECRET}@localhost/db")

    run = retentiond("-c", config, "run", "--once")

    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert "rule queue-log: failed" in run.stdout
    assert "the driver mysqldb in url is not installed; install it, or use mariadb+pymysql" in (
        run.stdout
    )
    assert "rule call-records: done" in run.stdout
    assert calls_left(tmp_path) == 0  # the later rule was enforced
    assert SECRET not in run.stdout + run.stderr + (tmp_path / "audit.jsonl").read_text()
