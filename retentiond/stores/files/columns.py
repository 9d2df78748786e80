"""The database columns a files store reads or clears: `references` and `named_by`.

A `references` column (FreePBX `cdr.recordingfile`) names recordings by base name: its values
are set to '' when their file is deleted. A `named_by` column (3CX `recordings.recording_url`)
names files by their path below the root: those are another store's, never deleted here. Both
are read through the SQL stores' connection handling; their values are personal data and are
never logged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, Inspector, TextClause, bindparam, inspect, make_url, text
from sqlalchemy import types as sqltypes
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchTableError

from retentiond.config.model import ConnectionConfig, ReferencesConfig
from retentiond.dberrors import describe
from retentiond.errors import StoreAbsent, StoreError
from retentiond.stores.db.connection import Database
from retentiond.stores.db.indexes import leading_index
from retentiond.stores.db.retries import GAVE_UP
from retentiond.stores.db.rows import IN_LIST_CHUNK
from retentiond.stores.files.names import as_text

log = structlog.get_logger()

# The reference values one sweep query reads, walking the column's index.
SWEEP_CHUNK = 1000

T = TypeVar("T")

# -- references ----------------------------------------------------------------------------------


class _NamingColumnBase:
    """A text column of an SQL table naming recordings, connected like an SQL store.

    Connected through `stores.db.Database` (password file or systemd credential, session timeouts),
    with retries and backoff on lock waits and lost connections. Its values are personal data:
    they are compared and cleared, never logged, and driver messages lose what they quote before
    they reach an exception.
    """

    key = ""  # the config key, which names the column in messages and logs
    table_hint = ""  # what to set the table to, for the message of a missing table
    column_hint = ""  # what to set the column to, for the message of a missing column
    absent_when_missing = False  # a missing database or table: StoreAbsent, else StoreError

    def __init__(self, config: ReferencesConfig, connection: ConnectionConfig) -> None:
        self.config = config
        self.where = f"{config.table}.{config.column} of connection {config.connection}"
        self._database = Database(config.connection, connection, f"{self.key} in {self.where}")
        self._opened = False
        self._table_sql = ""
        self._column_sql = ""
        self._column_name = config.column
        self._index: str | None = None

    def open(self) -> None:
        self.close()
        try:
            connection = self._database.open()
        except StoreAbsent as absent:
            if self.absent_when_missing:
                raise
            # A missing reference database is an error of this store, not an absent store.
            raise StoreError(str(absent)) from None
        try:
            with connection:
                # The inspector, not a reflected Table: only the column and its indexes matter.
                inspector = inspect(connection)
                column = self._column(inspector)
                self._index = leading_index(inspector, self.config.table, column)
                preparer = self._database.preparer
                self._table_sql = preparer.quote(self.config.table)
                self._column_sql = preparer.quote(column)
                self._column_name = column
        except DBAPIError as exc:
            self.close()
            failure = describe(exc, f"{self.key} in {self.where}: reading the table definition")
            raise StoreError(
                f"{self.key} in {self.where}: cannot read the table definition: {failure}"
            ) from None
        except StoreError:
            self.close()
            raise
        self._opened = True
        log.debug(f"{self.key} opened", **{self.key: self.where}, database=self._database.server)

    def close(self) -> None:
        self._opened = False
        self._database.close()

    def _server(self) -> str:
        return self._database.server or _backend(self._database.settings.url)

    def _needed(self) -> set[str]:
        return {"SELECT"}

    def missing_privileges(self) -> tuple[list[str], list[str]]:
        """For `check`: what the user lacks on the column's table, with the GRANT that fixes it;
        and, as a warning, privileges that could not be read (as an SQL store reports them)."""
        from retentiond.stores.db.privileges import (
            PrivilegeError,
            grant_statement,
            missing_privileges,
        )

        table = self.config.table
        try:
            missing = missing_privileges(self._database, None, table, self._needed())
            grant = grant_statement(self._database, table, missing) if missing else None
        except PrivilegeError as error:
            return [], [f"{self.key}: privileges on {table} could not be read: {error}"]
        if not missing:
            return [], []
        names = ", ".join(sorted(missing))
        fix = f"; run: {grant}" if grant else ""
        return [f"{self.key}: missing privilege {names} on {table}{fix}"], []

    def _index_warning(self, reads: str) -> list[str]:
        if not self._opened or self._index is not None:
            return []
        table, column = self.config.table, self._column_name
        return [
            f"warning: no index on {table}.{column}: {reads} the whole table; "
            f"CREATE INDEX {table}_{column} ON {table} ({column}) fixes it"
        ]

    def _column(self, inspector: Inspector) -> str:
        """The column's name as the database spells it; StoreError naming what is missing."""
        table, wanted, key = self.config.table, self.config.column, self.key
        try:
            columns = inspector.get_columns(table)
        except NoSuchTableError:
            tables = sorted(inspector.get_table_names())
            there = f"; tables there: {', '.join(tables)}" if 0 < len(tables) <= 20 else ""
            missing = StoreAbsent if self.absent_when_missing else StoreError
            raise missing(
                f"{key}: table {table} does not exist in connection "
                f"{self.config.connection}{there}. {self.table_hint}"
            ) from None
        found = [c for c in columns if c["name"] == wanted]
        if not found:
            # MariaDB column names are case-insensitive; accept a unique case-insensitive match.
            found = [c for c in columns if c["name"].lower() == wanted.lower()]
        if len(found) != 1:
            names = ", ".join(c["name"] for c in columns)
            raise StoreError(
                f"{key}: column {wanted} does not exist in table {table} of connection "
                f"{self.config.connection}; its columns: {names}. {self.column_hint}"
            )
        column = found[0]
        if not isinstance(column["type"], sqltypes.String | sqltypes.NullType):
            raise StoreError(
                f"{key}: column {column['name']} of table {table} has type "
                f"{column['type']!r}; it must hold file names as text"
            )
        return column["name"]

    def _failed(self, action: str, exc: DBAPIError) -> str:
        failure = describe(exc, f"{self.key} in {self.where}: {action}")
        message = f"{action} failed ({failure.codes}): {failure.description}"
        return f"{message}; {failure.remedy}" if failure.remedy else message

    def _retrying(
        self,
        action: str,
        work: Callable[[Connection], T],
        *,
        write: bool = False,
        failure: Callable[[DBAPIError], str] | None = None,
    ) -> T:
        """`Database.retrying`, with messages that fit files already deleted."""
        return self._database.retrying(
            action,
            work,
            write=write,
            failure=failure or (lambda exc: self._failed(action, exc)),
            gave_up=lambda reason, attempts: GAVE_UP[reason].format(attempts=attempts),
            event=f"{self.key} retrying",
            context={self.key: self.where},
        )


class ReferenceColumn(_NamingColumnBase):
    """A column naming recordings by base name (FreePBX `cdr.recordingfile`) in an SQL database.

    Its rows are set to '' when their file is deleted; the rows themselves stay.
    """

    key = "references"
    table_hint = "Set references.table to the table naming the recordings"
    column_hint = "Set references.column to the column holding the recording file names"

    def _needed(self) -> set[str]:
        return {"SELECT", f"UPDATE({self._column_name})"}

    def describe(self) -> list[str]:
        return [
            f"references: {self.where} ({self._server()}): rows naming a deleted file by its base "
            "name are set to '' after each batch; the rows themselves stay",
            "references: every run ends with a sweep: references whose file is gone under every "
            "extension, whose name dates them before the cutoff and that no hold covers are "
            "cleared too (left by a failed update or a file removed by hand)",
            *self._index_warning("every batch's update and the sweep read"),
        ]

    def clear(self, names: Sequence[str]) -> int:
        """Set every reference to one of `names` to '', in one transaction. How many were set."""
        if not names:
            return 0
        column = self._column_sql
        # MariaDB compares case- and trailing-space-insensitively: `x.WAV` is not `x.wav`.
        exact = self._database.dialect.exact_in(column, "names")
        statement = text(
            f"UPDATE {self._table_sql} SET {column} = '' WHERE {column} IN :names{exact}"
        ).bindparams(bindparam("names", expanding=True))

        def update(connection: Connection) -> int:
            cleared = 0
            for start in range(0, len(names), IN_LIST_CHUNK):
                chunk = list(names[start : start + IN_LIST_CHUNK])
                cleared += connection.execute(statement, {"names": chunk}).rowcount
            return cleared

        return self._retrying("clearing references", update, write=True, failure=self._refused)

    def _refused(self, exc: DBAPIError) -> str:
        """Why the update failed, in fixed words and the error code: never the server's text."""
        failure = describe(exc, f"{self.key} in {self.where}: clearing references")
        if failure.code in _NO_PRIVILEGE_CODES:
            return (
                f"clearing references failed ({failure.codes}): the database user may not update "
                f"{self.config.table}.{self._column_name}; grant it UPDATE on that column "
                "(retentiond check prints the GRANT statement)"
            )
        return f"clearing references failed ({failure.codes}): {failure.description}"

    def values(self) -> Iterator[list[str]]:
        """The distinct non-empty references, in chunks along the column's order."""
        column = self._column_sql
        statement = text(
            f"SELECT DISTINCT {column} FROM {self._table_sql} WHERE {column} > :last "
            f"ORDER BY {column} LIMIT :n"
        )
        last: Any = ""
        while True:
            rows = self._retrying(
                "reading references", partial(_read_values, statement, last, SWEEP_CHUNK)
            )
            if not rows:
                return
            last = rows[-1]
            yield [value for value in rows if isinstance(value, str) and value]
            if len(rows) < SWEEP_CHUNK:
                return


class NamedByColumn(_NamingColumnBase):
    """A column naming files by their path relative to the store's root (3CX
    `recordings.recording_url`): the files it names belong to the store purging its rows.

    Only read. A missing table (or SQLite file) makes the files store absent: without the rows,
    no file can be told apart from one a row still names, so none is deleted.
    """

    key = "named_by"
    table_hint = "Set named_by.table to the table whose rows name the files"
    column_hint = "Set named_by.column to the column holding the paths relative to the root"
    absent_when_missing = True

    def describe(self) -> list[str]:
        return [
            f"named_by: {self.where} ({self._server()}): a file a row names by its path "
            "relative to the root is left to the store purging those rows, checked again "
            "before each batch deletes (counted as named_by_row)",
            *self._index_warning("each check of up to 500 files reads"),
        ]

    def named(self, paths: Sequence[str]) -> set[str]:
        """Those of `paths` a row names, read in chunks in one transaction.

        The database may match loosely (MariaDB ignores case and trailing spaces, and a latin1
        column would defeat a binary comparison); the values it returns are compared here
        exactly, as the rows' store follows them to the file byte for byte.
        """
        if not paths:
            return set()
        column = self._column_sql
        statement = text(
            f"SELECT DISTINCT {column} FROM {self._table_sql} WHERE {column} IN :paths"
        ).bindparams(bindparam("paths", expanding=True))

        def read(connection: Connection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(paths), IN_LIST_CHUNK):
                chunk = list(dict.fromkeys(paths[start : start + IN_LIST_CHUNK]))
                wanted = set(chunk)
                for value in connection.execute(statement, {"paths": chunk}).scalars():
                    if isinstance(value, bytes):
                        value = as_text(value)
                    if value in wanted:
                        found.add(value)
            return found

        return self._retrying("reading the rows that name files", read)


# The server refused a statement for want of a privilege (MariaDB/MySQL, PostgreSQL).
_NO_PRIVILEGE_CODES = {"1142", "1143", "42501"}


def _read_values(statement: TextClause, last: Any, size: int, connection: Connection) -> list[Any]:
    return list(connection.execute(statement, {"last": last, "n": size}).scalars())


def _backend(url: str) -> str:
    try:
        return make_url(url).get_backend_name()
    except ArgumentError:
        return "unknown database"
