"""Reading privileges: what a needed privilege is (`Needed`), the error a failed read raises, and
the helpers every dialect's reading shares (a connection from whatever carries an engine; reads
that word a failure with codes and fixed words, never the server's text).

The public questions (what is missing, what is too much, the GRANT that fixes it) are
`stores.db.privileges`'; how each database answers them is its dialect's
(`dialects/mysql_privileges.py`, `dialects/postgresql_privileges.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from retentiond.dberrors import describe
from retentiond.errors import RetentiondError

T = TypeVar("T")

_NEEDED = re.compile(r"^\s*([A-Za-z][A-Za-z ]*?)\s*(?:\(\s*([^()]+?)\s*\))?\s*$")


class PrivilegeError(RetentiondError):
    """The privileges could not be read (the query failed, the table is not there)."""


class HasEngine(Protocol):
    """retentiond.stores.db.connection.Database, or anything else that carries an open engine."""

    @property
    def engine(self) -> Engine: ...


Connectable = Engine | Connection | HasEngine


@dataclass(frozen=True)
class Needed:
    """One needed privilege: a name, and a column when only that column needs it."""

    privilege: str
    column: str | None = None

    @classmethod
    def parse(cls, value: str) -> Needed:
        match = _NEEDED.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a privilege such as 'DELETE' or 'UPDATE(column)'")
        name = " ".join(match.group(1).upper().split())
        return cls(name, match.group(2))

    def __str__(self) -> str:
        return f"{self.privilege}({self.column})" if self.column else self.privilege


@contextmanager
def connected(database: Connectable) -> Iterator[Connection]:
    if isinstance(database, Connection):
        yield database
        return
    engine = database if isinstance(database, Engine) else database.engine
    try:
        connection = engine.connect()
    except DBAPIError as exc:
        failure = describe(exc, "connecting to read privileges")
        raise PrivilegeError(f"cannot connect to read privileges: {failure}") from None
    with connection:
        yield connection


def run_read(action: str, work: Callable[[], T]) -> T:
    try:
        return work()
    except DBAPIError as exc:
        failure = describe(exc, f"reading privileges ({action})")
        raise PrivilegeError(f"cannot read privileges ({action}): {failure}") from None


def read_scalar(
    connection: Connection, action: str, query: str, parameters: dict[str, object] | None = None
) -> object:
    return run_read(action, lambda: connection.execute(text(query), parameters or {}).scalar())


def read_lines(connection: Connection, statement: str) -> list[str]:
    """The first column of every row, as text (SHOW GRANTS)."""
    return run_read(statement, lambda: [str(row[0]) for row in connection.execute(text(statement))])
