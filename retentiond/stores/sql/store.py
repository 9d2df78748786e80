"""SQL tables (FreePBX cdr and cel, Asterisk's cdr_sqlite3_custom, queue logs), purged in batches.

Every batch is one short transaction that deletes at most `batch_size` rows and always carries the
explicit predicate `time < bound`: a row exactly at the cutoff, or anything newer, never matches.
The bound is computed here from the run's cutoff; the database's NOW() is never used.

A store's statements run one after another on one pooled connection, without a ping at checkout
or a rollback at checkin (see `Database.open`): a batch is its planning read, the DELETE and its
commit, in one transaction. A connection found dead fails its statement, and
`Database.retrying` retries it on a new one.

SQLAlchemy Core only (the ORM refuses tables without a primary key), and text() statements built
from names that came out of reflection, quoted by the dialect. No row value is ever logged or put
into an exception: messages carry counts, names of tables and columns, and the database's error
codes with fixed words (`dberror`), never its own text.

The store's parts, one module each: `table` (state and shared statements), `subjects` (whose a
row is), `holds` (holds and `find`), `survey`, `plan` (the strategies below), `delete`,
`anonymize`, `describe`; `sizing` (rows per batch), `predicates`, `payloads`, `file_root`.
Here: opening the table, choosing the layout, and applying a batch.

How a batch finds its rows follows from the table, chosen at `open` and shown by `describe`:
time_index, key_walk or scan (see `plan`).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Column, Connection, MetaData, Table, inspect
from sqlalchemy import types as sqltypes
from sqlalchemy.exc import DBAPIError, NoSuchTableError

from retentiond.dberrors import describe, error_code
from retentiond.errors import StoreAbsent, StoreError
from retentiond.stores.base import Batch, BatchResult
from retentiond.stores.db.indexes import leading_index
from retentiond.stores.db.retries import GAVE_UP, transient_reason, wait_to_retry
from retentiond.stores.db.timecols import time_kind
from retentiond.stores.db.timekinds import TimeKind
from retentiond.stores.sql.describe import Describing
from retentiond.stores.sql.file_root import FileRoot
from retentiond.stores.sql.payloads import Rewrite
from retentiond.stores.sql.sizing import batch_sizing, first_batch_rows
from retentiond.stores.sql.table import Layout, find_column

log = structlog.get_logger()


class SqlStore(Describing):
    """One table purged by its time column; see `plan` for the strategies."""

    kind = "sql"
    unit = "rows"

    # -- opening ---------------------------------------------------------------------------------

    def open(self) -> None:
        """Connect and read the table's definition. A database file Asterisk keeps locked for
        longer than lock_timeout (or a lock wait, deadlock or lost connection on a server) is
        tried again with the backoff of every other lock wait, `Database.retrying`'s."""
        retries = self._db.settings.retries
        attempt = 0
        while True:
            try:
                self._open()
                return
            except DBAPIError as exc:
                reason = transient_reason(exc)
                if reason is None:
                    raise  # a bug: _open words every other driver error as a StoreError
                if attempt >= retries:
                    raise StoreError(
                        f"{self.label}: cannot read the table definition: "
                        + GAVE_UP[reason].format(attempts=attempt + 1)
                    ) from None
                attempt = wait_to_retry(
                    "sql store retrying",
                    {"store": self.label},
                    action="reading the table definition",
                    attempt=attempt,
                    of=retries,
                    reason=reason,
                    exc=exc,
                )

    def _open(self) -> None:
        self.close()
        connection = self._db.open()
        try:
            with connection:
                table = self._reflect(connection)
                column = self._column(table, self._store.time_column, "time_column")
                self._time_kind = self._kind_of(column)
                self._table_sql = self._preparer().format_table(table)
                self._time_name = column.name
                self._time_sql = self._preparer().quote(column.name)
                self._time_kind = self._dialect.stored_time_kind(
                    connection, self._table_sql, self._time_sql, self._time_kind
                )
                self._storage = self._dialect.table_storage(connection, table)
                self._batch_size = first_batch_rows(self._store, self._storage.locks_table)
                self._layout = self._choose_layout(connection, table, column)
                self._choose_batch_size()
                self._prepare_subjects(table)
                self._prepare_anonymize(table)
                if self._store.file_column is not None:
                    self._prepare_files(connection, table)
        except DBAPIError as exc:
            self.close()
            if transient_reason(exc) is not None:
                raise  # open() waits and tries again
            failure = describe(exc, f"{self.label}: reading the table definition")
            raise StoreError(f"{self.label}: cannot read the table definition: {failure}") from None
        except StoreError:
            self.close()
            raise
        log.debug(
            "sql store opened",
            store=self.label,
            database=self._db.server,
            strategy=self._layout.strategy,
            time_column=self._time_name,
        )

    def close(self) -> None:
        if self._files is not None:
            self._files.close()
            self._files = None
        self._db.close()

    def _reflect(self, connection: Connection) -> Table:
        try:
            return Table(
                self._store.table,
                MetaData(),
                autoload_with=connection,
                schema=self._store.schema_name,
            )
        except NoSuchTableError:
            raise StoreAbsent(self._missing_table_message(connection)) from None
        except DBAPIError as exc:
            if error_code(exc) != "1142":
                raise
            # MariaDB answers "command denied" alike for a table that does not exist and one the
            # user may not see, so a least-privilege user cannot tell them apart either.
            raise StoreAbsent(
                f"{self.label}: table {self._store.table} does not exist, or this user has no "
                "privilege on it (MariaDB does not say which)"
            ) from None

    def _missing_table_message(self, connection: Connection) -> str:
        tables = sorted(inspect(connection).get_table_names(schema=self._store.schema_name))
        database = self._db.database_name
        where = f"database {database}" if database else "the database"
        if self._store.schema_name:
            where += f" (schema {self._store.schema_name})"
        message = (
            f"{self.label}: table {self._store.table} does not exist in {where} "
            f"of connection {self._store.connection}"
        )
        if not tables:
            return f"{message}; it has no tables at all"
        if len(tables) <= 20:
            return f"{message}; tables there: {', '.join(tables)}"
        return f"{message}; it has {len(tables)} tables, none of that name"

    def _column(self, table: Table, wanted: str, setting: str) -> Column[Any]:
        column = find_column(table, wanted)
        if column is None:
            columns = ", ".join(c.name for c in table.columns)
            holding = "the call time" if setting == "time_column" else "the file's path"
            raise StoreError(
                f"{self.label}: column {wanted} does not exist in table {table.name}; its "
                f"columns: {columns}. Set {setting} to the column holding {holding}"
            )
        return column

    def _kind_of(self, column: Column[Any]) -> TimeKind:
        kind = time_kind(column.type, self._dialect)
        if kind is None:
            raise StoreError(
                f"{self.label}: column {column.name} has type {column.type!r}; the time column "
                "must be a date/time, a number of epoch seconds, or text such as "
                "'2024-01-31 12:00:00'"
            )
        return kind

    def _prepare_files(self, connection: Connection, table: Table) -> None:
        """Check the file column and open file_root: a batch's files go after its rows."""
        store = self._store
        if store.file_column is None or store.file_root is None:
            return
        column = self._column(table, store.file_column, "file_column")
        if not isinstance(column.type, sqltypes.String | sqltypes.LargeBinary):
            raise StoreError(
                f"{self.label}: file_column {column.name} has type {column.type!r}; it must be "
                "text holding a path relative to file_root"
            )
        if self._require_layout().key is None and not self._db.delete_returning:
            raise StoreError(
                f"{self.label}: file_column needs DELETE ... RETURNING to learn which files the "
                "deleted rows named, because the table has no key to read them by first; "
                f"{self._db.server} has no RETURNING. Add a primary key to {table.name}, or "
                "leave file_column out and delete the files with a files store"
            )
        self._file_name = column.name
        self._file_sql = self._preparer().quote(column.name)
        self._file_index = leading_index(inspect(connection), table.name, column.name, table.schema)
        if store.subject_in_file_name:
            self._prepare_file_subjects(column)
        files = FileRoot(store.file_root, self.label)
        files.open()
        self._files = files

    def _choose_batch_size(self) -> None:
        """The rows per batch (`sizing.batch_sizing`), knowing whether a DELETE locks the table
        and whether batches walk its key."""
        walks_key = self._require_layout().strategy == "key_walk"
        sizing = batch_sizing(self._store, self._storage.locks_table, walks_key)
        self._batch_size = sizing.rows
        self.batch_time = sizing.batch_time

    def _choose_layout(self, connection: Connection, table: Table, column: Column[Any]) -> Layout:
        index = leading_index(inspect(connection), table.name, column.name, table.schema)
        key, key_name, integer_key = self._row_key(connection, table)
        time_name = column.name
        if index is not None:
            if key is None and not self._dialect.deletes_without_key:
                raise self._no_key_error()
            size = self._batch_size
            found = f"index {index} on {time_name}, row key {key_name}"
            if key is None:
                found = f"no primary key; index {index} on {time_name}"
            reason = (
                f"{found}: each batch reads along the index how far the {size} oldest expired "
                f"rows reach (one summary row), then deletes that range: DELETE ... WHERE "
                f"{time_name} < cutoff AND {time_name} > the last batch's end AND "
                f"{time_name} <= its end"
            )
            return Layout("time_index", reason, key)
        if key is not None and integer_key:
            reason = (
                f"no index on {time_name}; integer key {key_name}: the survey reads the table "
                f"once per run and, with rows to delete, once more to split them into key "
                f"ranges of {self._batch_size} rows; each batch deletes the next range's rows "
                f"with {time_name} < cutoff ({self._index_hint()} would let batches go by time)"
            )
            return Layout("key_walk", reason, key)
        if key is None and not self._dialect.deletes_without_key:
            raise self._no_key_error()
        reason = (
            f"no index on {time_name} and no integer key: every batch scans the table for "
            f"rows with {time_name} < cutoff, {self._batch_size} at a time"
        )
        return Layout("scan", reason, key)

    def _no_key_error(self) -> StoreError:
        return StoreError(
            f"{self.label}: the table has no rowid and no single-column primary key, so batches "
            "cannot be bounded; add an INTEGER PRIMARY KEY column"
        )

    def _row_key(self, connection: Connection, table: Table) -> tuple[str | None, str, bool]:
        """SQL naming one row, its name for people, and whether it is an integer to walk."""
        primary = list(table.primary_key.columns)
        if len(primary) == 1:
            key = primary[0]
            integer = isinstance(key.type, sqltypes.Integer)
            return self._preparer().quote(key.name), key.name, integer
        implicit = self._dialect.implicit_row_key(connection, self._table_sql)
        if implicit is not None:
            return implicit
        return None, "", False

    # -- applying --------------------------------------------------------------------------------

    def apply(self, batch: Batch, cutoff: datetime) -> BatchResult:
        """Carry out a batch with the predicate it was planned with (its payload)."""
        plan = batch.payload
        if isinstance(plan, Rewrite):
            started = time.monotonic()
            result = self._rewrite(plan)
            self._adapt_batch_size(len(plan.rows), time.monotonic() - started)
        else:
            result = self._apply_deletion(batch, plan)  # adapts the size before reading ahead
        self._applied = (batch, result)
        return result

    # -- clocks ----------------------------------------------------------------------------------

    def clock_skew(self) -> timedelta | None:
        return self._db.clock_skew()

    def privileges(self) -> tuple[list[str], list[str]]:
        from retentiond.stores.db.privileges import review

        # Anonymizing rewrites only the transformed columns: UPDATE on those is enough.
        needed = {"SELECT", "DELETE"} | {f"UPDATE({name})" for name in self._transforms}
        return review(self._db.engine, self._store.table, needed, self._store.schema_name)
