"""A connection's `url`, checked when the config is loaded, so a mistake is a config error with
file:line (exit 2) rather than a traceback or a failure half-way through a run.

The form is SQLAlchemy's (`dialect+driver://user:password@host:port/database?options`), read
here without importing SQLAlchemy: the daemon validates every config it loads and must stay
small. Messages never repeat the URL: it may hold a password.
"""

from __future__ import annotations

import re

# The drivers SQLAlchemy ships for each database, synchronous ones only (the async ones cannot
# run retentiond's statements); the first of each is the one retentiond is tested with.
DRIVERS = {
    "mariadb": ("pymysql", "mysqldb", "mariadbconnector", "mysqlconnector", "cymysql", "pyodbc"),
    "mysql": ("pymysql", "mysqldb", "mariadbconnector", "mysqlconnector", "cymysql", "pyodbc"),
    "postgresql": ("psycopg", "psycopg2", "psycopg2cffi", "pg8000"),
    "sqlite": ("pysqlite", "pysqlcipher"),
}
EXAMPLES = (
    "mariadb+pymysql://user@host/asteriskcdrdb, postgresql+psycopg://user@host/database or "
    "sqlite:////var/log/asterisk/master.db"
)

_SCHEME = re.compile(r"(?P<backend>[A-Za-z0-9_]+)(?:\+(?P<driver>[A-Za-z0-9_]+))?://(?P<rest>.*)")
_SPLIT = re.compile(r"(?P<netloc>[^/?]*)(?:/(?P<database>[^?]*))?(?:\?(?P<query>.*))?", re.S)
_BRACKETED = re.compile(r"\[(?P<host>[^\]/?]*)\](?::(?P<port>.*))?")


def check_database_url(url: str) -> str:
    """`url` unchanged when SQLAlchemy can use it for one of the databases retentiond supports;
    else ValueError saying what to write."""
    scheme = _SCHEME.fullmatch(url.strip())
    if scheme is None:
        raise ValueError(f"not a database URL; write it like {EXAMPLES}")
    backend, driver = scheme["backend"].lower(), scheme["driver"]
    if backend == "postgres":
        raise ValueError("write postgresql+psycopg:// (SQLAlchemy does not know postgres://)")
    if backend not in DRIVERS:
        raise ValueError(
            f"{backend} databases are not supported; use MariaDB/MySQL, PostgreSQL or "
            f"SQLite, e.g. {EXAMPLES}"
        )
    if driver is not None and driver.lower() not in DRIVERS[backend]:
        raise ValueError(
            f"{driver} is not a driver for {backend}; write {backend}+{DRIVERS[backend][0]}"
            f"://… (drivers: {', '.join(DRIVERS[backend])})"
        )
    parts = _SPLIT.fullmatch(scheme["rest"])
    assert parts is not None  # every string matches: each part may be empty
    user, _, host = parts["netloc"].rpartition("@")
    if "@" in user:
        raise ValueError("write an @ in the user or password as %40")
    if backend == "sqlite":
        _check_sqlite(host, parts["database"] or "")
    else:
        _check_host(host)
    return url


def _check_sqlite(host: str, database: str) -> None:
    if host:
        raise ValueError(
            "an SQLite URL names a file, not a host: write sqlite:////path/to/file.db "
            "(four slashes before an absolute path)"
        )
    if database in ("", ":memory:"):
        raise ValueError(
            "SQLite needs the database file, e.g. sqlite:////var/log/asterisk/master.db "
            "(four slashes before an absolute path); without one, SQLite opens a new, empty "
            "database in memory"
        )


def _check_host(host: str) -> None:
    if "[" in host or "]" in host:
        bracketed = _BRACKETED.fullmatch(host)
        if bracketed is None or not bracketed["host"]:
            raise ValueError(
                "an IPv6 address goes in square brackets, both of them, before the port: "
                "mariadb+pymysql://user@[::1]:3306/database"
            )
        port = bracketed["port"]
    else:
        port = host.partition(":")[2] if ":" in host else None
    if port is not None and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError("the port after the host must be a number from 1 to 65535")
