"""The database families retentiond supports, and which one a connection is.

The only place that knows MariaDB/MySQL, PostgreSQL and SQLite apart: everything else asks the
`Dialect` of its connection (see `base.py`) for the fragment or behaviour it needs.
"""

from __future__ import annotations

from sqlalchemy import URL

from retentiond.errors import StoreError
from retentiond.stores.db.dialects.base import Dialect, TableStorage
from retentiond.stores.db.dialects.mysql import MySQL
from retentiond.stores.db.dialects.postgresql import PostgreSQL
from retentiond.stores.db.dialects.sqlite import SQLite

MYSQL = MySQL()
POSTGRESQL = PostgreSQL()
SQLITE = SQLite()

# Backend names (SQLAlchemy's, and the URL schemes people write) and the family each belongs to.
_BY_NAME: dict[str, Dialect] = {
    "mysql": MYSQL,
    "mariadb": MYSQL,
    "postgresql": POSTGRESQL,
    "postgres": POSTGRESQL,
    "sqlite": SQLITE,
}


def dialect_named(name: str) -> Dialect | None:
    """The family of a backend name ("mariadb", "postgresql", ...); None when unsupported."""
    return _BY_NAME.get(name.lower())


def dialect_of_url(url: str) -> Dialect | None:
    """The family a URL's scheme names (`mariadb+pymysql://...`), read without parsing the rest;
    None when unsupported."""
    return dialect_named(url.split(":", 1)[0].split("+", 1)[0])


def dialect_of(url: URL, connection: str) -> Dialect:
    """The family of connection `connection`'s URL; a StoreError naming what is supported."""
    backend = url.get_backend_name()
    if backend in ("mysql", "mariadb", "postgresql", "sqlite"):
        return _BY_NAME[backend]
    raise StoreError(
        f"connection {connection}: {backend} databases are not supported; use MariaDB/MySQL, "
        "PostgreSQL or SQLite"
    )


def as_dialect(dialect: Dialect | str) -> Dialect:
    """A dialect, or the dialect of a family's name ("mysql", "postgresql", "sqlite")."""
    if isinstance(dialect, Dialect):
        return dialect
    found = dialect_named(dialect)
    if found is None:
        raise ValueError(f"no dialect {dialect!r}")
    return found


__all__ = [
    "MYSQL",
    "POSTGRESQL",
    "SQLITE",
    "Dialect",
    "MySQL",
    "PostgreSQL",
    "SQLite",
    "TableStorage",
    "as_dialect",
    "dialect_named",
    "dialect_of",
    "dialect_of_url",
]
