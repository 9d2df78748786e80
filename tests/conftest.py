"""Fixtures for tests against real databases: a fresh, uniquely named database per test.

MariaDB (127.0.0.1:3306, user root, no password) and PostgreSQL (127.0.0.1:5432, user postgres,
trust) are expected to run; override the server URLs with RETENTIOND_TEST_MARIADB and
RETENTIOND_TEST_POSTGRES. When a server is not reachable its tests are skipped with the reason,
except under CI (the CI variable set), where a missing server is a failure.

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
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

import pytest
import structlog
from pbxdata import PbxDatabase
from sqlalchemy import URL, Engine, create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError


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
