"""Fixtures for tests against real databases: a fresh, uniquely named database per test.

MariaDB (127.0.0.1:3306, user root, no password) and PostgreSQL (127.0.0.1:5432, user postgres,
trust) are expected to run; override the server URLs with RETENTIOND_TEST_MARIADB and
RETENTIOND_TEST_POSTGRES. When a server is not reachable its tests are skipped with the reason,
except under CI (the CI variable set), where a missing server is a failure.

`database` is a fresh database of the family a test is parametrized with (databases.py), and
`open_sql_store`, `open_3cx_store`, `open_files_store`, `open_voicemail_store`, `open_csv_store`
open a store of each kind from its settings; every store a test opens is closed after it.

A moved clock (the suite under faketime, docs/reliability.md) moves this process and every
retentiond it starts, never the database servers. The engine's clock-skew guard
(safety.max_clock_skew) then refuses every run against a server, as it must: tests marked
`server_clock` run the engine against one and are skipped when the clocks disagree, measured as
the guard measures them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from zoneinfo import ZoneInfo

import debpackage
import pytest
import reportdata
import structlog
from databases import database_url
from pbxdata import PbxDatabase
from sqlalchemy import URL, Engine, create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError

from retentiond.config.model import (
    ConnectionConfig,
    CsvStoreConfig,
    FilesStoreConfig,
    SqlStoreConfig,
    ThreeCxCallsStoreConfig,
    VoicemailStoreConfig,
)
from retentiond.stores.base import Store
from retentiond.stores.csv.store import CsvStore
from retentiond.stores.files.store import FilesStore
from retentiond.stores.sql.store import SqlStore
from retentiond.stores.threecx.store import ThreeCxCallsStore
from retentiond.stores.voicemail.store import VoicemailStore


@pytest.fixture(autouse=True)
def _structlog_as_shipped() -> Iterator[None]:
    """A command run in-process (click's CliRunner) configures structlog for itself: an INFO
    filter and a stream that closes with the command. Later tests' capture_logs() would miss
    debug events, so every test ends with structlog's defaults again."""
    yield
    structlog.reset_defaults()


MARIADB_SERVER = os.environ.get("RETENTIOND_TEST_MARIADB", "mariadb+pymysql://root@127.0.0.1:3306")
POSTGRES_SERVER = os.environ.get(
    "RETENTIOND_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _unreachable(server: URL, reason: Exception) -> NoReturn:
    first_line = str(getattr(reason, "orig", None) or reason).strip().splitlines()[0]
    where = f"{server.host}:{server.port}"
    name = "MariaDB" if server.get_backend_name() in ("mariadb", "mysql") else "PostgreSQL"
    message = f"{name} on {where} is not reachable: {first_line}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _admin_engine(server_url: str, connect_args: dict[str, object]) -> Engine:
    """An autocommit engine on the server, checked once per session."""
    server = make_url(server_url)
    engine = create_engine(server, isolation_level="AUTOCOMMIT", connect_args=connect_args)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        engine.dispose()
        _unreachable(server, exc)
    return engine


# safety.max_clock_skew's default: beyond it every engine run against the server is refused.
_ALLOWED_SKEW = timedelta(seconds=300)


def _skip_unless_clocks_agree(request: pytest.FixtureRequest, server: Engine) -> None:
    """Skip a `server_clock` test when this host's clock and the server's disagree."""
    if request.node.get_closest_marker("server_clock") is None:
        return
    mysql = server.dialect.name in ("mariadb", "mysql")
    query = "SELECT UTC_TIMESTAMP(6)" if mysql else "SELECT clock_timestamp()"
    with server.connect() as connection:
        before = datetime.now(UTC)
        value = connection.execute(text(query)).scalar()
        after = datetime.now(UTC)
    assert isinstance(value, datetime)
    server_now = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    skew = server_now - (before + (after - before) / 2)
    if abs(skew) > _ALLOWED_SKEW:
        name = "MariaDB" if mysql else "PostgreSQL"
        pytest.skip(
            f"the {name} server's clock differs from this host's by {skew.total_seconds():+.0f} s "
            "(a moved clock, e.g. faketime): the clock-skew guard refuses every run against it "
            "by design, so this test cannot run on this clock"
        )


def _database_url(server: URL, name: str) -> str:
    return server.set(database=name).render_as_string(hide_password=False)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start `make deb` (tests/debpackage.py) as soon as the tests are collected when a module
    that installs or inspects the package is among them: it builds while the tests before run."""
    if session.config.option.collectonly:
        return
    modules = {item.path.name for item in session.items}
    wanted = "test_debian_package.py" in modules or (
        bool({"test_nspawn_systemd.py", "test_ansible_fleet.py"} & modules)
        and not os.environ.get("RETENTIOND_DEB")
        and os.geteuid() == 0
    )
    if wanted and not debpackage.missing_tools():
        debpackage.start_build()


@pytest.fixture(scope="session")
def thirty_rules_month(tmp_path_factory: pytest.TempPathFactory) -> reportdata.Month:
    """30 rules over three systems for a month, and its report in English and German
    (tests/reportdata.py): written once for the report, language and browser window tests."""
    return reportdata.month(tmp_path_factory.mktemp("thirty-rules"))


@pytest.fixture(scope="session")
def enforced_demo(tmp_path_factory: pytest.TempPathFactory) -> reportdata.Demo:
    """The demo PBX enforced once at a fixed time, and its report in English and German."""
    return reportdata.enforced_demo(tmp_path_factory.mktemp("demo-pbx"))


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[Engine]:
    engine = _admin_engine(MARIADB_SERVER, {"connect_timeout": 3})
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Engine]:
    engine = _admin_engine(POSTGRES_SERVER, {"connect_timeout": 3})
    yield engine
    engine.dispose()


@pytest.fixture
def mariadb_url(request: pytest.FixtureRequest, mariadb_server: Engine) -> Iterator[str]:
    """URL of a new, empty MariaDB database, dropped after the test."""
    _skip_unless_clocks_agree(request, mariadb_server)
    name = f"rtd_test_{secrets.token_hex(6)}"
    with mariadb_server.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
    try:
        yield _database_url(mariadb_server.url, name)
    finally:
        with mariadb_server.connect() as connection:
            # A session a test left open would hold a metadata lock and make DROP wait forever.
            sessions = connection.execute(
                text("SELECT id FROM information_schema.processlist WHERE db = :name"),
                {"name": name},
            ).scalars()
            for session in list(sessions):
                with contextlib.suppress(SQLAlchemyError):  # it may have ended meanwhile
                    connection.execute(text(f"KILL {int(session)}"))
            connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest, postgres_server: Engine) -> Iterator[str]:
    """URL of a new, empty PostgreSQL database, dropped after the test."""
    _skip_unless_clocks_agree(request, postgres_server)
    name = f"rtd_test_{secrets.token_hex(6)}"
    with postgres_server.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield _database_url(postgres_server.url, name)
    finally:
        with postgres_server.connect() as connection:
            # FORCE: a test that failed half-way may leave a session open.
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a new, empty SQLite file, like Asterisk's /var/log/asterisk/master.db."""
    path = tmp_path / "master.db"
    path.touch()
    return f"sqlite:///{path}"


@pytest.fixture
def pbx_database() -> Iterator[Callable[[str], PbxDatabase]]:
    """Open a PbxDatabase on a URL; every one opened is closed after the test."""
    opened: list[PbxDatabase] = []

    def connect(url: str) -> PbxDatabase:
        database = PbxDatabase.connect(url)
        opened.append(database)
        return database

    yield connect
    for database in opened:
        database.close()


@pytest.fixture
def database(
    request: pytest.FixtureRequest, pbx_database: Callable[[str], PbxDatabase]
) -> PbxDatabase:
    """An empty database of the family the test is parametrized with, indirectly (databases.py:
    `parametrize("database", ALL_BACKENDS, indirect=True)`); dropped after the test."""
    return pbx_database(database_url(request, request.param))


# -- stores, opened from their settings and closed after the test ---------------------------------

BERLIN = ZoneInfo("Europe/Berlin")  # the PBXs' zone in the database tests
UTC_ZONE = ZoneInfo("UTC")  # the file trees' zone

AnyStore = TypeVar("AnyStore", bound=Store)


@pytest.fixture
def opened_stores() -> Iterator[list[Store]]:
    """The stores a test opened, closed after it in the order they were opened."""
    stores: list[Store] = []
    yield stores
    for store in stores:
        store.close()


def _open(stores: list[Store], store: AnyStore) -> AnyStore:
    stores.append(store)  # closed after the test even when opening fails half-way
    store.open()
    return store


@pytest.fixture
def open_sql_store(opened_stores: list[Store]) -> Callable[..., SqlStore]:
    """Open a SqlStore on a URL: `table` of connection `cdrdb` aged by `time_column`, any other
    store settings, and `connection_settings` beside the URL; Berlin time unless `zone`."""

    def factory(
        url: str,
        table: str = "cdr",
        time_column: str = "calldate",
        *,
        zone: tzinfo = BERLIN,
        connection_settings: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> SqlStore:
        config = SqlStoreConfig.model_validate(
            {"type": "sql", "connection": "cdrdb", "table": table, "time_column": time_column}
            | settings
        )
        database = ConnectionConfig.model_validate({"url": url} | dict(connection_settings or {}))
        return _open(opened_stores, SqlStore(config, database, zone))

    return factory


@pytest.fixture
def open_3cx_store(opened_stores: list[Store]) -> Callable[..., ThreeCxCallsStore]:
    """Open a ThreeCxCallsStore on a URL (connection `threecx`) with any store settings, and
    `connection_settings` beside the URL; Berlin time unless `zone`."""

    def factory(
        url: str,
        *,
        zone: tzinfo = BERLIN,
        connection_settings: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> ThreeCxCallsStore:
        config = ThreeCxCallsStoreConfig.model_validate(
            {"type": "3cx_call_history", "connection": "threecx"} | settings
        )
        database = ConnectionConfig.model_validate({"url": url} | dict(connection_settings or {}))
        return _open(opened_stores, ThreeCxCallsStore(config, database, zone))

    return factory


@pytest.fixture
def open_files_store(opened_stores: list[Store]) -> Callable[..., FilesStore]:
    """Open a FilesStore on a root with any store settings; UTC unless `zone`.
    `references_connection` and `named_by_connection` connect to its `references` and `named_by`
    tables."""

    def factory(
        root: Path,
        *,
        zone: tzinfo = UTC_ZONE,
        references_connection: ConnectionConfig | None = None,
        named_by_connection: ConnectionConfig | None = None,
        **settings: Any,
    ) -> FilesStore:
        config = FilesStoreConfig.model_validate({"type": "files", "root": root} | settings)
        store = FilesStore(
            config, zone, references_connection, named_by_connection=named_by_connection
        )
        return _open(opened_stores, store)

    return factory


@pytest.fixture
def open_voicemail_store(opened_stores: list[Store]) -> Callable[..., VoicemailStore]:
    """Open a VoicemailStore on a spool root with any store settings; UTC unless `zone`."""

    def factory(root: Path, *, zone: tzinfo = UTC_ZONE, **settings: Any) -> VoicemailStore:
        config = VoicemailStoreConfig.model_validate(
            {"type": "asterisk_voicemail", "root": root} | settings
        )
        return _open(opened_stores, VoicemailStore(config, zone))

    return factory


@pytest.fixture
def open_csv_store(opened_stores: list[Store]) -> Callable[..., CsvStore]:
    """Open a CsvStore on a cdr-csv folder with any store settings; UTC unless `zone`."""

    def factory(root: Path, *, zone: tzinfo = UTC_ZONE, **settings: Any) -> CsvStore:
        config = CsvStoreConfig.model_validate({"type": "csv", "root": root} | settings)
        return _open(opened_stores, CsvStore(config, zone))

    return factory


@pytest.fixture
def immutable_file() -> Iterator[Callable[[Path], None]]:
    """`chattr +i` on a file or folder: not even root can change or unlink it (EPERM), unlike
    permission bits."""
    marked: list[Path] = []

    def mark(path: Path) -> None:
        chattr = shutil.which("chattr")
        result = (
            subprocess.run([chattr, "+i", str(path)], capture_output=True, text=True, check=False)
            if chattr
            else None
        )
        if result is None or result.returncode != 0:
            why = result.stderr.strip() if result else "chattr is not installed"
            pytest.skip(f"cannot make a file immutable here: {why}")
        marked.append(path)

    yield mark
    for path in marked:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)
