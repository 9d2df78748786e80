"""SqlStore against real MariaDB, PostgreSQL and SQLite databases holding PBX tables.

Every test counts rows with SQL before and after: what a user would see in the table.
The cutoff is 2024-03-01 12:00 UTC, which is 13:00 on the wall clock in Berlin.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from databases import ALL_BACKENDS, SERVER_BACKENDS
from pbxdata import PbxDatabase, cdr_rows, cel_rows, sqlite_cdr_rows
from sqlalchemy import text
from structlog.testing import capture_logs

from retentiond.errors import StoreAbsent, StoreError
from retentiond.policy.rules import latest_instant
from retentiond.stores.base import BatchResult
from retentiond.stores.db.connection import Database
from retentiond.stores.sql.store import SqlStore

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
CUTOFF = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
CUTOFF_IN_BERLIN = datetime(2024, 3, 1, 13, 0)  # naive wall-clock time, as FreePBX writes it

StoreFactory = Callable[..., SqlStore]


@pytest.fixture
def open_store(open_sql_store: StoreFactory) -> StoreFactory:
    """Open a SqlStore on a URL; every one opened is closed after the test."""

    def factory(
        url: str,
        table: str = "cdr",
        time_column: str = "calldate",
        *,
        batch_size: int = 1000,
        zone: tzinfo = BERLIN,
        lock_timeout: float = 5.0,
        retries: int = 5,
        password_file: Path | None = None,
        password_from: Path | None = None,
        file_column: str | None = None,
        file_root: Path | None = None,
    ) -> SqlStore:
        settings: dict[str, Any] = {"batch_size": batch_size}
        if file_column is not None:
            settings.update(file_column=file_column, file_root=str(file_root))
        connection: dict[str, Any] = {"lock_timeout": lock_timeout, "retries": retries}
        if password_file is not None:
            connection["password_file"] = str(password_file)
        if password_from is not None:
            connection["password_from"] = str(password_from)
        return open_sql_store(
            url, table, time_column, zone=zone, connection_settings=connection, **settings
        )

    return factory


def wall(database: PbxDatabase, moment: datetime) -> Any:
    """A naive time as the database stores it: cdr_sqlite3_custom keeps strings."""
    return moment.strftime("%Y-%m-%d %H:%M:%S") if database.dialect == "sqlite" else moment


def insert_calls(database: PbxDatabase, calldates: list[datetime]) -> None:
    """FreePBX cdr rows (cdr_sqlite3_custom rows on SQLite) with these naive call dates."""
    database.insert("cdr", database.cdr_rows(calldates))


def purge(store: SqlStore, cutoff: datetime = CUTOFF) -> list[BatchResult]:
    """What the engine does: plan a batch, apply it, plan the next."""
    return [store.apply(batch, cutoff) for batch in store.batches(cutoff)]


def hours_before_cutoff(count: int, step: float = 7.0) -> list[datetime]:
    return [CUTOFF_IN_BERLIN - timedelta(hours=1 + step * i) for i in range(count)]


def hours_after_cutoff(count: int) -> list[datetime]:
    return [CUTOFF_IN_BERLIN + timedelta(hours=1 + 5 * i) for i in range(count)]


# -- what is deleted and what stays ---------------------------------------------------------------


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_expired_calls_are_deleted_and_calls_at_or_after_the_cutoff_stay(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    database.create("cdr")
    expired = hours_before_cutoff(120)
    at_cutoff = [CUTOFF_IN_BERLIN] * 3
    younger = hours_after_cutoff(20)
    calldates = expired + at_cutoff + younger
    random.Random(7).shuffle(calldates)
    insert_calls(database, calldates)
    store = open_store(database.url, batch_size=50)

    survey = store.survey(CUTOFF)
    assert (survey.unit, survey.total, survey.expired) == ("rows", 143, 120)
    assert survey.oldest == latest_instant(min(expired), BERLIN)

    results = purge(store)

    assert sum(result.deleted for result in results) == 120
    assert database.count("cdr", "calldate < :t", t=wall(database, CUTOFF_IN_BERLIN)) == 0
    assert database.count("cdr", "calldate = :t", t=wall(database, CUTOFF_IN_BERLIN)) == 3
    assert database.count("cdr") == 23
    spans = [result.span for result in results if result.span is not None]
    assert spans, "the deleted rows' days are known"
    assert min(span[0] for span in spans) == min(expired).date()
    assert max(span[1] for span in spans) == max(expired).date()
    assert store.survey(CUTOFF).expired == 0


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_no_batch_deletes_more_than_batch_size(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    database.create("cdr")
    insert_calls(database, hours_before_cutoff(250, step=0.5) + hours_after_cutoff(5))
    store = open_store(database.url, batch_size=40)

    batches = []
    results = []
    for batch in store.batches(CUTOFF):
        batches.append(batch)
        results.append(store.apply(batch, CUTOFF))

    assert [result.deleted for result in results] == [40] * 6 + [10]
    assert [batch.planned for batch in batches] == [40] * 6 + [10]
    assert [batch.number for batch in batches] == list(range(1, 8))
    assert database.count("cdr") == 5


@pytest.mark.parametrize("zone", [BERLIN, NEW_YORK], ids=["Berlin", "New_York"])
@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_naive_call_dates_are_read_in_the_configured_zone(
    database: PbxDatabase, open_store: StoreFactory, zone: ZoneInfo
) -> None:
    # Read as UTC instead, Berlin's half-hour-before row would look newer than the cutoff
    # (kept), and New York's half-hour-after row older (deleted).
    local_cutoff = CUTOFF.astimezone(zone).replace(tzinfo=None)
    before = local_cutoff - timedelta(minutes=30)
    after = local_cutoff + timedelta(minutes=30)
    database.create("cdr")
    insert_calls(database, [before, after])
    store = open_store(database.url, zone=zone)

    assert store.survey(CUTOFF).expired == 1
    purge(store)

    assert database.count("cdr", "calldate = :t", t=wall(database, before)) == 0
    assert database.count("cdr", "calldate = :t", t=wall(database, after)) == 1


@pytest.mark.mariadb
def test_mariadb_timestamp_column_is_compared_in_utc(
    mariadb_url: str, pbx_database: Callable[[str], PbxDatabase], open_store: StoreFactory
) -> None:
    database = pbx_database(mariadb_url)
    database.execute(
        "CREATE TABLE calls (started TIMESTAMP NOT NULL, src VARCHAR(80), KEY (started))"
    )
    plus_five = timezone(timedelta(hours=5))
    instants = [CUTOFF - timedelta(minutes=30), CUTOFF, CUTOFF + timedelta(minutes=30)]
    with database.engine.begin() as connection:
        # Written through a +05:00 session: TIMESTAMP stores the instant, not the wall time.
        connection.execute(text("SET time_zone = '+05:00'"))
        for moment in instants:
            connection.execute(
                text("INSERT INTO calls VALUES (:t, '+4930123456')"),
                {"t": moment.astimezone(plus_five).replace(tzinfo=None)},
            )
    store = open_store(mariadb_url, "calls", "started", zone=NEW_YORK)

    survey = store.survey(CUTOFF)
    assert (survey.total, survey.expired) == (3, 1)
    assert survey.oldest == CUTOFF - timedelta(minutes=30)
    purge(store)

    assert database.count("calls") == 2
    assert store.survey(CUTOFF).oldest == CUTOFF


@pytest.mark.postgres
def test_postgres_timestamptz_is_compared_as_an_instant(
    postgres_url: str, pbx_database: Callable[[str], PbxDatabase], open_store: StoreFactory
) -> None:
    database = pbx_database(postgres_url)
    database.execute(
        "CREATE TABLE calls (id bigserial PRIMARY KEY, started timestamptz NOT NULL, src text)",
        "CREATE INDEX calls_started ON calls (started)",
    )
    plus_five = timezone(timedelta(hours=5))
    instants = [CUTOFF - timedelta(minutes=30), CUTOFF, CUTOFF + timedelta(minutes=30)]
    database.insert(
        "calls",
        [{"started": moment.astimezone(plus_five), "src": "+4930123"} for moment in instants],
    )
    store = open_store(postgres_url, "calls", "started", zone=NEW_YORK)

    assert store.strategy == "time_index"
    survey = store.survey(CUTOFF)
    assert (survey.total, survey.expired) == (3, 1)
    assert survey.oldest == CUTOFF - timedelta(minutes=30)
    purge(store)

    assert database.count("calls") == 2
    assert database.count("calls", "started < :t", t=CUTOFF) == 0


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_epoch_seconds_column_keeps_the_row_at_the_cutoff_second(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    database.execute("CREATE TABLE calls (id INTEGER PRIMARY KEY, started BIGINT NOT NULL)")
    second = int(CUTOFF.timestamp())
    database.insert(
        "calls", [{"id": i, "started": second + offset} for i, offset in enumerate([-1, 0, 1])]
    )
    store = open_store(database.url, "calls", "started")

    assert store.survey(CUTOFF).oldest == CUTOFF - timedelta(seconds=1)
    assert sum(result.deleted for result in purge(store)) == 1
    assert database.count("calls", "started < :s", s=second) == 0
    assert database.count("calls") == 2


# -- how batches find their rows ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("database", "cdr_says", "cel_says"),
    [
        pytest.param(
            "mariadb",
            [
                "MariaDB 10",
                "strategy time_index: no primary key; index calldate on calldate",
                "the 1000 oldest expired rows reach",
                "calldate > the last batch.s end AND calldate <= its end",
                "access range, key calldate",
            ],
            [
                "strategy key_walk: no index on eventtime; integer key id",
                "access range, key PRIMARY",
            ],
            marks=pytest.mark.mariadb,
            id="mariadb",
        ),
        pytest.param(
            "postgresql",
            [
                "PostgreSQL 1",
                "index cdr_calldate on calldate, row key ctid",
                "Index Scan (using|on) cdr_calldate",
            ],
            ["integer key id", "cel_pkey"],
            marks=pytest.mark.postgres,
            id="postgresql",
        ),
    ],
    indirect=["database"],
)
def test_freepbx_tables_go_by_the_cdr_index_and_the_cel_key(
    database: PbxDatabase, open_store: StoreFactory, cdr_says: list[str], cel_says: list[str]
) -> None:
    """`cdr_says` and `cel_says`: what each table's description shows (regular expressions)."""
    database.create("cdr", "cel")
    database.insert("cdr", cdr_rows(hours_before_cutoff(50)))
    database.insert("cel", cel_rows(hours_before_cutoff(50)))

    cdr = open_store(database.url, "cdr", "calldate")
    cel = open_store(database.url, "cel", "eventtime")

    assert cdr.strategy == "time_index"
    assert cel.strategy == "key_walk"
    for store, says in ((cdr, cdr_says), (cel, cel_says)):
        description = "\n".join(store.describe())
        for pattern in says:
            assert re.search(pattern, description), pattern
        assert "warning:" not in description


def test_asterisk_sqlite_cdr_walks_acctid_until_calldate_is_indexed(
    sqlite_url: str, pbx_database: Callable[[str], PbxDatabase], open_store: StoreFactory
) -> None:
    database = pbx_database(sqlite_url)
    database.create("cdr")

    walking = open_store(sqlite_url)
    description = "\n".join(walking.describe())
    database.execute("CREATE INDEX cdr_calldate ON cdr (calldate)")
    indexed = open_store(sqlite_url)

    assert walking.strategy == "key_walk"
    assert "SQLite 3" in description
    assert "integer key AcctId" in description
    assert "CREATE INDEX cdr_calldate ON cdr (calldate)" in description
    assert "warning:" not in description
    assert indexed.strategy == "time_index"
    assert "INDEX cdr_calldate (calldate>? AND calldate<?)" in "\n".join(indexed.describe())


@pytest.mark.parametrize("database", SERVER_BACKENDS, indirect=True)
def test_table_without_index_or_key_is_scanned_with_a_warning(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    time_type = "DATETIME" if database.dialect == "mariadb" else "TIMESTAMP"
    database.execute(f"CREATE TABLE calls (started {time_type} NOT NULL, src VARCHAR(80) NOT NULL)")
    database.insert(
        "calls", [{"started": moment, "src": "+4989123"} for moment in hours_before_cutoff(25)]
    )
    database.insert("calls", [{"started": CUTOFF_IN_BERLIN, "src": "+4989124"}])
    store = open_store(database.url, "calls", "started", batch_size=10)

    assert store.strategy == "scan"
    description = store.describe()
    warnings = [line for line in description if line.startswith("warning:")]
    assert len(warnings) == 1
    # the query plan `check` prints: no NULL shown as None (MariaDB's key), no JIT block
    # (PostgreSQL plans one for the disabled seq scan's cost)
    assert "None" not in "\n".join(description)
    assert "JIT" not in "\n".join(description)
    assert "CREATE INDEX calls_started ON calls (started)" in warnings[0]
    results = purge(store)
    assert [result.deleted for result in results] == [10, 10, 5]
    assert database.count("calls", "started < :t", t=CUTOFF_IN_BERLIN) == 0
    assert database.count("calls") == 1


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_key_walk_deletes_only_expired_rows_when_ids_are_out_of_time_order(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    expired = hours_before_cutoff(150, step=1.5)
    younger = hours_after_cutoff(150)
    times = expired + younger
    random.Random(3).shuffle(times)  # ids follow the insert order, not the event time
    if database.dialect == "sqlite":
        database.create("cdr")
        database.insert("cdr", sqlite_cdr_rows(times))
        table, time_column, key = "cdr", "calldate", "AcctId"
    else:
        database.create("cel")
        database.insert("cel", cel_rows(times))
        table, time_column, key = "cel", "eventtime", "id"
    with database.engine.connect() as connection:
        younger_keys = {
            row[0]
            for row in connection.execute(
                text(f"SELECT {key} FROM {table} WHERE {time_column} >= :t"),
                {"t": wall(database, CUTOFF_IN_BERLIN)},
            )
        }
    store = open_store(database.url, table, time_column, batch_size=7)

    assert store.strategy == "key_walk"
    assert store.survey(CUTOFF).expired == 150
    results = purge(store)

    assert all(0 < result.deleted <= 7 for result in results)
    assert sum(result.deleted for result in results) == 150
    with database.engine.connect() as connection:
        remaining = {row[0] for row in connection.execute(text(f"SELECT {key} FROM {table}"))}
    assert remaining == younger_keys


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_planning_batches_without_applying_them_deletes_nothing(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    database.create("cdr")
    insert_calls(database, hours_before_cutoff(30) + hours_after_cutoff(3))
    store = open_store(database.url, batch_size=8)

    planned = list(store.batches(CUTOFF))

    assert planned, "there is something to delete"
    assert all(batch.planned <= 8 for batch in planned)
    if store.strategy == "key_walk":
        assert sum(batch.planned for batch in planned) == 30
    assert database.count("cdr") == 33


# -- dates that are no dates ----------------------------------------------------------------------


@pytest.mark.mariadb
def test_zero_dates_are_kept_counted_and_not_taken_for_the_oldest_call(
    mariadb_url: str, pbx_database: Callable[[str], PbxDatabase], open_store: StoreFactory
) -> None:
    database = pbx_database(mariadb_url)
    database.create("cdr")
    insert_calls(database, hours_before_cutoff(3))
    with database.engine.begin() as connection:
        connection.execute(text("SET sql_mode = ''"))  # as on old FreePBX servers
        connection.execute(text("INSERT INTO cdr (calldate, src) VALUES ('0000-00-00', '')"))
    store = open_store(mariadb_url)

    survey = store.survey(CUTOFF)

    # a zero date says nothing about the call's age: kept, and counted as undated
    assert (survey.total, survey.expired, survey.skipped) == (4, 3, {"undated": 1})
    assert survey.oldest == latest_instant(min(hours_before_cutoff(3)), BERLIN)
    assert sum(result.deleted for result in purge(store)) == 3
    with database.engine.connect() as connection:
        left = connection.execute(text("SELECT COUNT(*) FROM cdr")).scalar()
    assert left == 1


def test_sqlite_values_that_are_no_dates_are_left_alone(
    sqlite_url: str, pbx_database: Callable[[str], PbxDatabase], open_store: StoreFactory
) -> None:
    database = pbx_database(sqlite_url)
    database.create("cdr")
    insert_calls(database, hours_before_cutoff(5))
    database.insert(
        "cdr",
        [{"calldate": value, "src": "+4930999"} for value in [None, "", "gestern", 1700000000]],
    )
    store = open_store(sqlite_url, batch_size=2)

    survey = store.survey(CUTOFF)
    assert (survey.total, survey.expired) == (9, 5)
    assert survey.oldest == latest_instant(min(hours_before_cutoff(5)), BERLIN)
    assert sum(result.deleted for result in purge(store)) == 5
    assert database.count("cdr") == 4


# -- configuration mistakes -----------------------------------------------------------------------


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_missing_table_is_named_with_the_tables_that_exist(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    database.create("cdr")

    with pytest.raises(StoreError) as raised:
        open_store(database.url, "cdr_archive", "calldate")

    message = str(raised.value)
    assert "table cdr_archive does not exist" in message
    assert "tables there: cdr" in message


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_missing_time_column_is_named_with_the_columns_that_exist(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    database.create("cdr")

    with pytest.raises(StoreError) as raised:
        open_store(database.url, "cdr", "start")

    message = str(raised.value)
    assert "column start does not exist in table cdr" in message
    assert "calldate, clid, src, dst" in message


def test_missing_sqlite_file_is_not_created(tmp_path: Path, open_store: StoreFactory) -> None:
    path = tmp_path / "master.db"

    with pytest.raises(StoreError, match=r"SQLite database file .*master\.db does not exist"):
        open_store(f"sqlite:///{path}")

    assert not path.exists()


def test_unreachable_server_is_named_without_the_password(open_store: StoreFactory) -> None:
    with pytest.raises(StoreError) as raised:
        open_store("postgresql+psycopg://retentiond:s3cret-pw@127.0.0.1:1/asteriskcdrdb", retries=0)

    message = str(raised.value)
    assert message.startswith("cannot connect to cdrdb (127.0.0.1:1): ")
    assert "s3cret-pw" not in message


@pytest.fixture
def mariadb_user(mariadb_server: Any, mariadb_url: str) -> Iterator[tuple[str, str]]:
    """A MariaDB user with a password and rights on the test database only."""
    user, password = f"rtd_{secrets.token_hex(4)}", "correct horse battery"
    database = mariadb_url.rsplit("/", 1)[1]
    with mariadb_server.connect() as connection:
        connection.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))
        connection.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
        connection.execute(text(f"GRANT ALL ON {database}.* TO '{user}'@'%'"))
    yield user, password
    with mariadb_server.connect() as connection:
        connection.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))


@pytest.mark.mariadb
def test_password_comes_from_password_file_or_systemd_credential(
    mariadb_url: str,
    mariadb_user: tuple[str, str],
    pbx_database: Callable[[str], PbxDatabase],
    open_store: StoreFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pbx_database(mariadb_url).create("cdr")
    user, password = mariadb_user
    url = mariadb_url.replace("root@", f"{user}@")
    password_file = tmp_path / "cdrdb.password"
    password_file.write_text(password + "\n")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "cdrdb").write_text(password + "\n")
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not the password\n")
    for secret in (password_file, credentials / "cdrdb", wrong):
        secret.chmod(0o600)  # a world-readable password file is refused (next test)

    assert open_store(url, password_file=password_file).strategy == "time_index"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert open_store(url).strategy == "time_index"
    with pytest.raises(StoreError) as raised:
        open_store(url, password_file=wrong)
    message = str(raised.value)
    assert message.startswith(
        "cannot connect to cdrdb (127.0.0.1:3306): access denied: wrong user or password "
        "(error 1045, SQLSTATE 28000); check the user in url and its password"
    )
    assert "Access denied" not in message  # codes and fixed words, never the server's text
    assert "not the password" not in message
    password_file.chmod(0o644)
    with pytest.raises(StoreError) as readable:
        open_store(url, password_file=password_file)
    assert f"chmod o-rwx {password_file}" in str(readable.value)
    assert password not in str(readable.value)


@pytest.mark.mariadb
def test_password_comes_from_the_pbx_own_settings_file(
    mariadb_url: str,
    mariadb_user: tuple[str, str],
    pbx_database: Callable[[str], PbxDatabase],
    open_store: StoreFactory,
    tmp_path: Path,
) -> None:
    pbx_database(mariadb_url).create("cdr")
    user, password = mariadb_user
    url = mariadb_url.replace("root@", f"{user}@")
    freepbx_conf = tmp_path / "freepbx.conf"
    freepbx_conf.write_text(
        f"<?php\n$amp_conf['AMPDBUSER'] = '{user}';\n$amp_conf['AMPDBPASS'] = '{password}';\n"
    )
    config_json = tmp_path / "config.json"
    config_json.write_text(json.dumps({"DbUser": user, "DbPassword": password}))

    assert open_store(url, password_from=freepbx_conf).strategy == "time_index"
    assert open_store(url, password_from=config_json).strategy == "time_index"
    with pytest.raises(StoreError, match="does not exist"):
        open_store(url, password_from=tmp_path / "missing.conf")


# -- locks held by the PBX ------------------------------------------------------------------------


@pytest.mark.parametrize("database", SERVER_BACKENDS, indirect=True)
def test_locked_row_is_retried_then_the_run_stops_keeping_earlier_batches_deleted(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    database.create("cdr")
    rows = cdr_rows(sorted(hours_before_cutoff(50)))  # oldest first
    database.insert("cdr", rows)
    # Younger calls, as in a real table: with every row expired MariaDB reads a small table whole.
    database.insert("cdr", cdr_rows(hours_after_cutoff(500), seed=1))
    locked_uniqueid = rows[34]["uniqueid"]  # the 35th oldest: in the fourth batch of ten
    store = open_store(database.url, batch_size=10, lock_timeout=1.0, retries=2)

    with database.engine.connect() as pbx, capture_logs() as logs:
        pbx.execute(
            text("SELECT uniqueid FROM cdr WHERE uniqueid = :u FOR UPDATE"), {"u": locked_uniqueid}
        )
        with pytest.raises(StoreError) as raised:
            purge(store)
        pbx.rollback()

    assert str(raised.value) == (
        "cdrdb/cdr: lock wait timeout exceeded 3 times; the PBX holds locks on the table "
        "(a long transaction, a backup or a table lock); the run was stopped, nothing beyond "
        "the committed batches was deleted"
    )
    assert database.count("cdr") == 520  # three batches of ten committed
    assert database.count("cdr", "uniqueid = :u", u=locked_uniqueid) == 1
    retries = [entry for entry in logs if entry["event"] == "sql store retrying"]
    assert [entry["attempt"] for entry in retries] == [1, 2]
    assert all(entry["error"] == "lock wait timeout" for entry in retries)
    assert all(entry["store"] == "cdrdb/cdr" for entry in retries)
    logged = repr(logs)
    personal = [row["cnum"] for row in rows if row["cnum"].startswith("+")] + [
        row["uniqueid"] for row in rows
    ]
    assert not any(value in logged for value in personal)


@pytest.mark.postgres
def test_lock_released_during_the_backoff_lets_the_batch_through(
    postgres_url: str, pbx_database: Callable[[str], PbxDatabase], open_store: StoreFactory
) -> None:
    database = pbx_database(postgres_url)
    database.create("cdr")
    rows = cdr_rows(sorted(hours_before_cutoff(10)))
    database.insert("cdr", rows)
    store = open_store(postgres_url, batch_size=10, lock_timeout=1.0, retries=2)

    with database.engine.connect() as pbx, capture_logs() as logs:
        pbx.execute(
            text("SELECT 1 FROM cdr WHERE uniqueid = :u FOR UPDATE"), {"u": rows[0]["uniqueid"]}
        )
        # The first attempt waits 1 s and fails; the lock goes before the second one ends.
        release = threading.Timer(1.6, pbx.rollback)
        release.start()
        try:
            results = purge(store)
        finally:
            release.join()

    assert [result.deleted for result in results] == [10]
    assert database.count("cdr") == 0
    assert [entry["attempt"] for entry in logs if entry["event"] == "sql store retrying"] == [1]


def _lock_exclusively(sqlite_url: str) -> sqlite3.Connection:
    """Another program's write lock on the whole file (as during a VACUUM or a long commit):
    no reader gets in, not even to read the table's definition."""
    locker = sqlite3.connect(
        sqlite_url.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False
    )
    locker.execute("BEGIN EXCLUSIVE")
    return locker


def test_a_sqlite_file_locked_at_open_is_waited_for_with_the_lock_backoff(
    sqlite_url: str, pbx_database: Callable[[str], PbxDatabase], open_store: StoreFactory
) -> None:
    database = pbx_database(sqlite_url)
    database.create("cdr")
    insert_calls(database, hours_before_cutoff(10))
    locker = _lock_exclusively(sqlite_url)
    # lock_timeout 0.2 s, then backoffs of 0.5 s and 1 s: released during the second wait.
    release = threading.Timer(1.2, locker.rollback)
    release.start()
    try:
        with capture_logs() as logs:
            store = open_store(sqlite_url, lock_timeout=0.2, retries=5)
    finally:
        release.join()
        locker.close()

    assert [result.deleted for result in purge(store)] == [10]
    retries = [entry for entry in logs if entry["event"] == "sql store retrying"]
    assert [entry["attempt"] for entry in retries] == [1, 2]
    assert all(entry["error"] == "database locked" for entry in retries)
    assert all(entry["action"] == "reading the table definition" for entry in retries)
    assert all(entry["store"] == "cdrdb/cdr" for entry in retries)


def test_a_sqlite_file_locked_for_good_fails_the_open_after_the_retries(
    sqlite_url: str, pbx_database: Callable[[str], PbxDatabase], open_store: StoreFactory
) -> None:
    pbx_database(sqlite_url).create("cdr")
    locker = _lock_exclusively(sqlite_url)
    try:
        with pytest.raises(StoreError) as raised:
            open_store(sqlite_url, lock_timeout=0.2, retries=1)
    finally:
        locker.close()

    assert str(raised.value) == (
        "cdrdb/cdr: cannot read the table definition: the database file stayed locked 2 times; "
        "Asterisk or another program holds a write lock on it"
    )


@pytest.mark.mariadb
def test_connection_killed_during_a_batch_is_retried_on_a_new_one(
    mariadb_url: str, pbx_database: Callable[[str], PbxDatabase], open_store: StoreFactory
) -> None:
    database = pbx_database(mariadb_url)
    database.create("cdr")
    rows = cdr_rows(sorted(hours_before_cutoff(10)))
    database.insert("cdr", rows)
    database.insert("cdr", cdr_rows(hours_after_cutoff(200), seed=1))
    store = open_store(mariadb_url, batch_size=10, lock_timeout=5.0, retries=2)

    def kill_the_waiting_delete_then_unlock() -> None:
        with database.engine.connect() as admin:
            for _ in range(100):
                waiting = (
                    admin.execute(
                        text(
                            "SELECT id FROM information_schema.processlist "
                            "WHERE db = DATABASE() AND info LIKE 'DELETE%'"
                        )
                    )
                    .scalars()
                    .all()
                )
                killed = [admin.execute(text(f"KILL {session}")) for session in waiting]
                if killed:
                    break
                time.sleep(0.05)
        pbx.rollback()

    with database.engine.connect() as pbx, capture_logs() as logs:
        pbx.execute(
            text("SELECT 1 FROM cdr WHERE uniqueid = :u FOR UPDATE"), {"u": rows[0]["uniqueid"]}
        )
        killer = threading.Thread(target=kill_the_waiting_delete_then_unlock)
        killer.start()
        try:
            results = purge(store)
        finally:
            killer.join()

    assert [result.deleted for result in results] == [10]
    assert database.count("cdr") == 200
    retries = [entry for entry in logs if entry["event"] == "sql store retrying"]
    assert [(entry["attempt"], entry["error"]) for entry in retries] == [(1, "connection lost")]


# -- clocks ---------------------------------------------------------------------------------------


@pytest.mark.server_clock  # measures this host's clock against the server's
@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_clock_skew_of_a_local_server_is_small(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    database.create("cdr")
    store = open_store(database.url)

    skew = store.clock_skew()

    if database.dialect == "sqlite":
        assert skew is None  # a file has no clock
    else:
        assert skew is not None
        assert abs(skew) < timedelta(seconds=2)


# -- rows that name a file ------------------------------------------------------------------------

RECORDING_TABLES = {
    # MariaDB, like FreePBX's cdr: no primary key, an index on the time column.
    "mariadb": [
        "CREATE TABLE recordings (start_time DATETIME NOT NULL, caller VARCHAR(80) NOT NULL, "
        "recording_url VARCHAR(511), KEY recordings_start_time (start_time))"
    ],
    "postgresql": [
        "CREATE TABLE recordings (id_recording serial PRIMARY KEY, start_time timestamp NOT NULL, "
        "caller varchar(80) NOT NULL, recording_url varchar(511))",
        "CREATE INDEX recordings_start_time ON recordings (start_time)",
    ],
    # SQLite: an integer key and no index on the time: the key walk.
    "sqlite": [
        "CREATE TABLE recordings (id INTEGER PRIMARY KEY, start_time TEXT NOT NULL, caller TEXT, "
        "recording_url TEXT)"
    ],
}


def recordings(
    database: PbxDatabase, root: Path, expired: int, young: int
) -> tuple[list[str], list[str]]:
    """Recording rows with their files under root: (expired file names, young file names)."""
    database.execute(*RECORDING_TABLES[database.dialect])
    rows = []
    names: tuple[list[str], list[str]] = ([], [])
    times = hours_before_cutoff(expired, step=3) + hours_after_cutoff(young)
    for index, moment in enumerate(times):
        caller = f"+49301234{index:03d}"
        extension = f"2{index % 3:02d}"
        name = (
            f"{extension}/[Erika Mustermann]_{extension}-{caller}_"
            f"{moment:%Y%m%d%H%M%S}({index}).wav"
        )
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"RIFF" + bytes(96))
        names[index >= expired].append(name)
        rows.append({"start_time": wall(database, moment), "caller": caller, "recording_url": name})
    database.insert("recordings", rows)
    return names


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_files_of_expired_rows_are_deleted_after_their_rows(
    database: PbxDatabase, open_store: StoreFactory, tmp_path: Path
) -> None:
    root = tmp_path / "Recordings"
    expired, young = recordings(database, root, expired=23, young=4)
    store = open_store(
        database.url,
        "recordings",
        "start_time",
        batch_size=5,
        file_column="recording_url",
        file_root=root,
    )

    description = store.describe()
    with capture_logs() as logs:
        results = purge(store)

    assert any(line.startswith("files: column recording_url names a file") for line in description)
    assert any(line.startswith("warning: no index on recording_url") for line in description)
    expected_strategy = {"mariadb": "time_index", "postgresql": "time_index", "sqlite": "key_walk"}
    assert store.strategy == expected_strategy[database.dialect]
    assert sum(result.deleted for result in results) == 23
    assert sum(result.bytes or 0 for result in results) == 23 * 100
    assert all(not result.skipped for result in results)
    assert database.count("recordings") == 4
    assert not [name for name in expired if (root / name).exists()]
    assert all((root / name).is_file() for name in young)
    logged = repr(logs) + repr(results)
    assert "+49301234" not in logged
    assert "Mustermann" not in logged
    assert (
        sum(entry["files"] for entry in logs if entry["event"] == "sql store deleted files") == 23
    )


@pytest.mark.mariadb
def test_keyless_table_needs_returning_to_delete_files(
    mariadb_url: str,
    pbx_database: Callable[[str], PbxDatabase],
    open_store: StoreFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database = pbx_database(mariadb_url)
    recordings(database, tmp_path, expired=2, young=0)
    # MySQL: no DELETE ... RETURNING.
    monkeypatch.setattr(Database, "delete_returning", property(lambda self: False))

    with pytest.raises(StoreError) as raised:
        open_store(
            mariadb_url, "recordings", "start_time", file_column="recording_url", file_root=tmp_path
        )

    assert "file_column needs DELETE ... RETURNING" in str(raised.value)
    assert "Add a primary key to recordings" in str(raised.value)


@pytest.mark.mariadb
def test_without_returning_the_files_are_read_under_lock_before_the_delete(
    mariadb_url: str,
    pbx_database: Callable[[str], PbxDatabase],
    open_store: StoreFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    database = pbx_database(mariadb_url)
    expired, young = recordings(database, tmp_path, expired=9, young=2)
    database.execute("ALTER TABLE recordings ADD id INT AUTO_INCREMENT PRIMARY KEY")
    monkeypatch.setattr(Database, "delete_returning", property(lambda self: False))
    store = open_store(
        mariadb_url,
        "recordings",
        "start_time",
        batch_size=4,
        file_column="recording_url",
        file_root=tmp_path,
    )

    results = purge(store)

    assert [(result.deleted, result.bytes) for result in results] == [(4, 400), (4, 400), (1, 100)]
    assert not [name for name in expired if (tmp_path / name).exists()]
    assert all((tmp_path / name).is_file() for name in young)


@pytest.mark.mariadb
def test_a_table_a_least_privilege_user_cannot_see_counts_as_absent(
    mariadb_server: Any,
    mariadb_url: str,
    pbx_database: Callable[[str], PbxDatabase],
    open_store: StoreFactory,
) -> None:
    """MariaDB says "command denied" both for a missing table and one without grants."""
    pbx_database(mariadb_url).create("cdr")
    user, password = f"rtd_{secrets.token_hex(4)}", "least privilege"
    database = mariadb_url.rsplit("/", 1)[1]
    with mariadb_server.connect() as connection:
        connection.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
        connection.execute(text(f"GRANT SELECT, DELETE ON {database}.cdr TO '{user}'@'%'"))
    try:
        url = mariadb_url.replace("root@", f"{user}:{password.replace(' ', '%20')}@")
        assert open_store(url).strategy == "time_index"
        with pytest.raises(StoreAbsent, match="does not exist, or this user has no privilege"):
            open_store(url, "queuelog", "time")
    finally:
        with mariadb_server.connect() as connection:
            connection.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))


@pytest.mark.parametrize("database", SERVER_BACKENDS, indirect=True)
def test_database_errors_are_described_by_code_never_by_their_text(database: PbxDatabase) -> None:
    """MariaDB and PostgreSQL put the offending value into their error text; an apostrophe in it
    ("O'Brien") defeats any stripping of quoted parts. Only codes and fixed words are kept."""
    from sqlalchemy.exc import DBAPIError

    from retentiond.dberrors import describe

    clid = '"O\'Brien" <+4930123456>'
    database.execute(
        "CREATE TABLE numbers (n VARCHAR(40) PRIMARY KEY)", "CREATE TABLE counts (c INTEGER)"
    )
    database.insert("numbers", [{"n": clid}])
    failures = []
    for statement, values in (
        ("INSERT INTO numbers (n) VALUES (:n)", {"n": clid}),  # duplicate key
        ("INSERT INTO counts (c) VALUES ('+4930123456x')", {}),  # not an integer
    ):
        with pytest.raises(DBAPIError) as raised:
            database.execute(statement, **values)
        failures.append(describe(raised.value, "test"))
    mariadb = database.dialect == "mariadb"
    duplicate = failures[0]
    assert (duplicate.code, duplicate.sqlstate) == (
        ("1062", "23000") if mariadb else ("23505", "23505")
    )
    assert str(duplicate).startswith("duplicate key: the change would give two rows")
    for failure in failures:
        assert "4930123456" not in str(failure) and "Brien" not in str(failure), failure
