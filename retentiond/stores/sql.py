"""SQL tables (FreePBX cdr and cel, Asterisk's cdr_sqlite3_custom, queue logs), purged in batches.

Every batch is one short transaction that deletes at most `batch_size` rows and always carries the
explicit predicate `time < bound`: a row exactly at the cutoff, or anything newer, never matches.
The bound is computed here from the run's cutoff; the database's NOW() is never used.

How a batch finds its rows follows from the table, chosen at `open` and shown by `describe`:

- time_index: the time column leads an index. Batches take the oldest expired rows along it.
  Without a usable key (FreePBX `cdr` has no primary key) MariaDB/MySQL delete with
  `ORDER BY time LIMIT n`; with one (a primary key, PostgreSQL's ctid, SQLite's rowid) a read
  picks the keys and a short transaction deletes them, re-checking the predicate.
- key_walk: no index on the time column, but an integer primary key (FreePBX `cel`,
  cdr_sqlite3_custom's AcctId). Each batch covers the next n keys through the primary key.
- scan: neither. Correct but every batch reads the table; `describe` says which index fixes it.

SQLAlchemy Core only (the ORM refuses tables without a primary key), and text() statements built
from names that came out of reflection, quoted by the dialect. No row value is ever logged or put
into an exception: messages carry counts, names of tables and columns, and driver messages.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog
from sqlalchemy import (
    URL,
    Column,
    Connection,
    Engine,
    MetaData,
    Table,
    TextClause,
    bindparam,
    create_engine,
    inspect,
    make_url,
    text,
)
from sqlalchemy import types as sqltypes
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, NoSuchTableError

from retentiond import rules
from retentiond.config.model import ConnectionConfig, SqlStoreConfig
from retentiond.errors import StoreAbsent, StoreError
from retentiond.stores.base import Batch, BatchResult, Store, Survey

log = structlog.get_logger()

T = TypeVar("T")

Strategy = Literal["time_index", "key_walk", "scan"]
# How the time column stores an instant, which decides the bound and how values read back.
TimeKind = Literal["local", "utc", "aware", "date", "epoch", "text"]

# Retries back off 0.5 s, 1 s, 2 s, ... and never wait longer than this between attempts.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
# Keys per `IN (...)` list: below SQLite's old limit of 999 bound variables.
IN_LIST_CHUNK = 500
# Values below these are clock garbage (MariaDB zero dates, epoch 0): undated, never the oldest.
DATETIME_FLOOR = datetime(1000, 1, 1)
EPOCH_FLOOR = 1

_TRANSIENT_CODES = {
    "1205": "lock wait timeout",  # MariaDB/MySQL innodb_lock_wait_timeout and lock_wait_timeout
    "3572": "lock wait timeout",  # MySQL NOWAIT
    "55P03": "lock wait timeout",  # PostgreSQL lock_timeout
    "SQLITE_BUSY": "database locked",
    "SQLITE_LOCKED": "database locked",
    "1213": "deadlock",
    "40P01": "deadlock",
    "40001": "deadlock",  # PostgreSQL serialization failure: same remedy
    "1927": "connection lost",  # MariaDB: the session was killed
    "2003": "connection lost",
    "2006": "connection lost",
    "2013": "connection lost",
    "2055": "connection lost",
    "4031": "connection lost",  # MariaDB: disconnected for inactivity
    "57P01": "connection lost",  # PostgreSQL admin shutdown (server restart)
    "57P02": "connection lost",
    "57P03": "connection lost",
}

_GAVE_UP = {
    "lock wait timeout": (
        "lock wait timeout exceeded {attempts} times; the PBX holds locks on the table "
        "(a long transaction, a backup or a table lock)"
    ),
    "database locked": (
        "the database file stayed locked {attempts} times; Asterisk or another program holds "
        "a write lock on it"
    ),
    "deadlock": "deadlocked with another transaction {attempts} times",
    "connection lost": "lost the connection to the database {attempts} times",
}

_STATEMENT_TIMEOUT_CODES = {"57014", "1969", "3024"}


@dataclass(frozen=True)
class Layout:
    """What reflection found and the purge strategy that follows from it."""

    strategy: Strategy
    reason: str
    key: str | None  # SQL for the row key (quoted column, ctid, rowid); None: keyless deletes


class SqlStore(Store):
    """One table purged by its time column; see the module docstring for the strategies."""

    kind = "sql"
    unit = "rows"

    def __init__(self, store: SqlStoreConfig, connection: ConnectionConfig, zone: tzinfo) -> None:
        self.label = store.label
        self.pause = store.pause
        self._store = store
        self._connection = connection
        self._zone = zone
        self._engine: Engine | None = None
        self._url: URL | None = None
        self._family = ""  # "mysql" (also MariaDB), "postgresql" or "sqlite"
        self._server = ""
        self._table_sql = ""
        self._time_sql = ""
        self._time_name = ""
        self._time_kind: TimeKind = "local"
        self._layout: Layout | None = None
        # The walk's key range from the last survey, so batches() need not scan again.
        self._walk_range: tuple[datetime, tuple[Any, Any]] | None = None
        self._applied: tuple[Batch, BatchResult] | None = None

    @property
    def strategy(self) -> Strategy:
        return self._require_layout().strategy

    # -- opening ---------------------------------------------------------------------------------

    def open(self) -> None:
        url = self._engine_url()
        self._url = url
        self._family = _family(url, self._store.connection)
        if self._family == "sqlite":
            self._require_sqlite_file(url)
        try:
            engine = create_engine(
                url,
                connect_args=self._connect_args(),
                pool_pre_ping=True,
                pool_size=1,
                max_overflow=2,
                pool_recycle=3600,
            )
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise StoreError(f"connection {self._store.connection}: {exc}") from None
        self._engine = engine
        try:
            connection = engine.connect()
        except DBAPIError as exc:
            self.close()
            raise StoreError(
                f"cannot connect to {self._store.connection} ({self._where()}): "
                f"{_driver_message(exc)}"
            ) from None
        try:
            with connection:
                self._server = _server_version(connection, self._family)
                table = self._reflect(connection)
                column = self._time_column(table)
                self._time_kind = self._kind_of(column)
                self._table_sql = self._preparer().format_table(table)
                self._time_name = column.name
                self._time_sql = self._preparer().quote(column.name)
                self._layout = self._choose_layout(connection, table, column)
        except DBAPIError as exc:
            self.close()
            raise StoreError(
                f"{self.label}: cannot read the table definition: {_driver_message(exc)}"
            ) from None
        except StoreError:
            self.close()
            raise
        log.debug(
            "sql store opened",
            store=self.label,
            database=self._server,
            strategy=self._layout.strategy,
            time_column=self._time_name,
        )

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _engine_url(self) -> URL:
        name = self._store.connection
        try:
            url = make_url(self._connection.url)
        except ArgumentError:
            raise StoreError(
                f"connection {name}: url is not a database URL; write it like "
                "mariadb+pymysql://user@host/asteriskcdrdb"
            ) from None
        if url.password is None and url.get_backend_name() != "sqlite":
            password = self._password()
            if password is not None:
                url = url.set(password=password)
        return url

    def _password(self) -> str | None:
        """From password_file, else the systemd credential named like the connection."""
        name = self._store.connection
        path = self._connection.password_file
        if path is None:
            credentials = os.environ.get("CREDENTIALS_DIRECTORY")
            if not credentials or not (Path(credentials) / name).is_file():
                return None
            path = Path(credentials) / name
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise StoreError(
                f"connection {name}: cannot read password file {path}: {reason}"
            ) from None

    def _require_sqlite_file(self, url: URL) -> None:
        # SQLite would silently create an empty file where Asterisk's database is expected.
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            return
        if not Path(database).is_file():
            raise StoreAbsent(
                f"cannot open {self._store.connection}: SQLite database file {database} "
                "does not exist"
            )

    def _connect_args(self) -> dict[str, Any]:
        settings = self._connection
        if self._family == "mysql":
            lock = max(1, math.ceil(settings.lock_timeout))
            # /*M! ... */ runs on MariaDB only; MySQL has no max_statement_time.
            init = (
                f"SET SESSION innodb_lock_wait_timeout={lock}, SESSION lock_wait_timeout={lock}, "
                f"SESSION time_zone='+00:00' "
                f"/*M! , SESSION max_statement_time={settings.statement_timeout:.3f} */"
            )
            # The socket waits a little longer than the server, so the server's error wins.
            io_timeout = math.ceil(max(settings.statement_timeout, settings.lock_timeout) + 30)
            return {
                "init_command": init,
                "connect_timeout": max(1, math.ceil(settings.connect_timeout)),
                "read_timeout": io_timeout,
                "write_timeout": io_timeout,
            }
        if self._family == "postgresql":
            options = (
                f"-c lock_timeout={_milliseconds(settings.lock_timeout)} "
                f"-c statement_timeout={_milliseconds(settings.statement_timeout)} "
                "-c idle_in_transaction_session_timeout=60000"
            )
            return {
                "options": options,
                "application_name": "retentiond",
                "connect_timeout": max(2, math.ceil(settings.connect_timeout)),
            }
        # Asterisk writes the same file: wait for its write lock instead of failing at once.
        return {"timeout": settings.lock_timeout}

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

    def _missing_table_message(self, connection: Connection) -> str:
        tables = sorted(inspect(connection).get_table_names(schema=self._store.schema_name))
        database = self._url.database if self._url is not None else None
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

    def _time_column(self, table: Table) -> Column[Any]:
        wanted = self._store.time_column
        column = table.columns.get(wanted)
        if column is None:
            # MariaDB column names are case-insensitive; accept a unique case-insensitive match.
            matches = [c for c in table.columns if c.name.lower() == wanted.lower()]
            column = matches[0] if len(matches) == 1 else None
        if column is None:
            columns = ", ".join(c.name for c in table.columns)
            raise StoreError(
                f"{self.label}: column {wanted} does not exist in table {table.name}; its "
                f"columns: {columns}. Set time_column to the column holding the call time"
            )
        return column

    def _kind_of(self, column: Column[Any]) -> TimeKind:
        kind = _time_kind(column.type, self._family)
        if kind is None:
            raise StoreError(
                f"{self.label}: column {column.name} has type {column.type!r}; the time column "
                "must be a date/time, an integer of epoch seconds, or text such as "
                "'2024-01-31 12:00:00'"
            )
        return kind

    def _choose_layout(self, connection: Connection, table: Table, column: Column[Any]) -> Layout:
        index = self._time_index(connection, table, column)
        key, key_name, integer_key = self._row_key(connection, table)
        time_name = column.name
        if index is not None:
            if key is None and self._family != "mysql":
                raise self._no_key_error()
            if key is None:
                reason = (
                    f"no primary key; index {index} on {time_name}: DELETE ... WHERE {time_name} "
                    f"< cutoff ORDER BY {time_name} LIMIT {self._store.batch_size} per batch"
                )
            else:
                reason = (
                    f"index {index} on {time_name}, row key {key_name}: each batch reads the "
                    f"{self._store.batch_size} oldest expired keys along the index, then deletes "
                    f"them by key with {time_name} < cutoff checked again"
                )
            return Layout("time_index", reason, key)
        if key is not None and integer_key:
            reason = (
                f"no index on {time_name}; integer key {key_name}: each batch walks the next "
                f"{self._store.batch_size} keys and deletes those with {time_name} < cutoff; "
                f"the survey reads the table once per run ({self._index_hint()} would let "
                "batches go by time)"
            )
            return Layout("key_walk", reason, key)
        if key is None and self._family != "mysql":
            raise self._no_key_error()
        reason = (
            f"no index on {time_name} and no integer key: every batch scans the table for "
            f"rows with {time_name} < cutoff, {self._store.batch_size} at a time"
        )
        return Layout("scan", reason, key)

    def _no_key_error(self) -> StoreError:
        return StoreError(
            f"{self.label}: the table has no rowid and no single-column primary key, so batches "
            "cannot be bounded; add an INTEGER PRIMARY KEY column"
        )

    def _time_index(self, connection: Connection, table: Table, column: Column[Any]) -> str | None:
        """The name of an index led by the time column (the primary key counts)."""
        for index in inspect(connection).get_indexes(table.name, schema=table.schema):
            names = index.get("column_names") or []
            if names and names[0] == column.name:
                return str(index.get("name") or "unnamed")
        primary = list(table.primary_key.columns)
        if primary and primary[0].name == column.name:
            return "PRIMARY KEY"
        return None

    def _row_key(self, connection: Connection, table: Table) -> tuple[str | None, str, bool]:
        """SQL naming one row, its name for people, and whether it is an integer to walk."""
        primary = list(table.primary_key.columns)
        if len(primary) == 1:
            key = primary[0]
            integer = isinstance(key.type, sqltypes.Integer)
            return self._preparer().quote(key.name), key.name, integer
        if self._family == "postgresql":
            return "ctid", "ctid", False
        if self._family == "sqlite" and self._has_rowid(connection):
            return "rowid", "rowid", True
        return None, "", False

    def _has_rowid(self, connection: Connection) -> bool:
        try:
            connection.execute(text(f"SELECT rowid FROM {self._table_sql} LIMIT 0"))
        except DBAPIError:
            return False  # a WITHOUT ROWID table
        return True

    # -- describing ------------------------------------------------------------------------------

    def describe(self) -> list[str]:
        layout = self._require_layout()
        lines = [
            f"{self.label}: {self._server}",
            f"time column {self._time_name} ({_KIND_WORDS[self._time_kind]})",
            f"strategy {layout.strategy}: {layout.reason}",
        ]
        plan, full_scan = self._retrying("explaining the batch statement", self._explain)
        lines.append("query plan of each batch:")
        lines.extend(f"  {line}" for line in plan)
        if layout.strategy == "scan":
            lines.append(
                f"warning: no index on {self._time_name}: every batch reads the whole table; "
                f"{self._index_hint()} would fix it"
            )
        elif full_scan:
            lines.append(
                "warning: the query plan reads the whole table for every batch; check that "
                f"{self._time_name} is indexed ({self._index_hint()})"
            )
        return lines

    def _index_hint(self) -> str:
        table = self._store.table
        name = self._preparer().quote(f"{table}_{self._time_name}")
        return f"CREATE INDEX {name} ON {self._table_sql} ({self._time_sql})"

    def _explain(self, connection: Connection) -> tuple[list[str], bool]:
        """The plan as lines, and whether it reads the whole table."""
        statement, params = self._statement_to_explain(connection)
        if self._family == "mysql":
            return _explain_mysql(connection, statement, params)
        if self._family == "postgresql":
            return _explain_postgresql(connection, statement, params)
        return _explain_sqlite(connection, statement, params)

    def _statement_to_explain(self, connection: Connection) -> tuple[str, dict[str, Any]]:
        """The statement each batch runs against the table (not only its keys)."""
        layout = self._require_layout()
        params: dict[str, Any] = {
            "bound": self._bound(self._typical_cutoff(connection)),
            "n": self._store.batch_size,
        }
        if layout.strategy == "key_walk":
            params.update(last=0, hi=self._store.batch_size)
            return self._walk_delete_sql(returning=False), params
        if layout.key is None:
            return self._keyless_delete_sql(returning=False), params
        return self._plan_read_sql(), params

    def _typical_cutoff(self, connection: Connection) -> datetime:
        """A day past the oldest row: a daily run's share of the table, not all of it.

        Optimizers read a small table whole when every row matches, which says nothing about
        the plan once the table is large and a run takes its oldest day.
        """
        instant = _instant(self._read_oldest(connection), self._time_kind, self._zone)
        return instant + timedelta(days=1) if instant is not None else datetime.now(UTC)

    # -- surveying -------------------------------------------------------------------------------

    def survey(self, cutoff: datetime) -> Survey:
        layout = self._require_layout()
        bound = self._bound(cutoff)

        def count(connection: Connection) -> tuple[int, int, Any, tuple[Any, Any]]:
            total = connection.execute(text(f"SELECT COUNT(*) FROM {self._table_sql}")).scalar()
            if layout.strategy == "key_walk":
                expired, low, high = connection.execute(
                    text(
                        f"SELECT COUNT(*), MIN({layout.key}), MAX({layout.key}) "
                        f"FROM {self._table_sql} WHERE {self._expired_sql()}"
                    ),
                    {"bound": bound},
                ).one()
            else:
                expired = connection.execute(
                    text(f"SELECT COUNT(*) FROM {self._table_sql} WHERE {self._expired_sql()}"),
                    {"bound": bound},
                ).scalar()
                low = high = None
            oldest = self._read_oldest(connection)
            return int(total or 0), int(expired or 0), oldest, (low, high)

        total, expired, oldest, walk_range = self._retrying("surveying", count)
        if layout.strategy == "key_walk":
            self._walk_range = (cutoff, walk_range)
        return Survey(
            unit="rows",
            total=total,
            expired=expired,
            oldest=_instant(oldest, self._time_kind, self._zone),
        )

    def _read_oldest(self, connection: Connection) -> Any:
        """The oldest stored time, leaving out zero dates and values that are no dates."""
        return connection.execute(
            text(
                f"SELECT MIN({self._time_sql}) FROM {self._table_sql} "
                f"WHERE {self._time_sql} >= :floor{self._text_guard()}"
            ),
            {"floor": self._floor()},
        ).scalar()

    # -- planning --------------------------------------------------------------------------------

    def batches(self, cutoff: datetime) -> Iterator[Batch]:
        if self._require_layout().strategy == "key_walk":
            return self._walk_batches(cutoff)
        return self._oldest_first_batches(cutoff)

    def _oldest_first_batches(self, cutoff: datetime) -> Iterator[Batch]:
        """Each batch: the oldest expired rows still there (any expired rows, for `scan`)."""
        layout = self._require_layout()
        bound = self._bound(cutoff)
        size = self._store.batch_size
        number = 0
        while True:
            rows = self._retrying(
                "planning a batch",
                partial(_read_rows, self._plan_read_sql(), {"bound": bound, "n": size}),
            )
            if not rows:
                return
            number += 1
            keys = [row[0] for row in rows] if layout.key is not None else None
            batch = Batch(
                number=number,
                planned=len(rows),
                span=self._day_span(row[-1] for row in rows),
                payload=keys,
            )
            self._applied = None
            yield batch
            applied = self._applied
            if applied is None or applied[0] is not batch:
                # Not applied (a dry run): the next batch would be this one again.
                return
            if len(rows) < size or applied[1].deleted == 0:
                # Fewer than n were expired, so none are left; or none could be deleted and the
                # next read would plan the same rows. The verifying survey reports what remains.
                return

    def _walk_batches(self, cutoff: datetime) -> Iterator[Batch]:
        """Each batch: the next n keys; only its expired rows count and get deleted."""
        bound = self._bound(cutoff)
        low, high = self._walk_bounds(cutoff, bound)
        if low is None or high is None:
            return
        size = self._store.batch_size
        last = low - 1  # integer keys: the walk starts just below the first expired one
        number = 0
        while last < high:
            params = {"bound": bound, "last": last, "end": high, "n": size}
            rows = self._retrying(
                "planning a batch", partial(_read_rows, self._walk_read_sql(), params)
            )
            if not rows:
                return
            upper = rows[-1][0]
            expired_times = [row[2] for row in rows if row[1]]
            if expired_times:
                number += 1
                yield Batch(
                    number=number,
                    planned=len(expired_times),
                    span=self._day_span(expired_times),
                    payload=(last, upper),
                )
            last = upper

    def _walk_bounds(self, cutoff: datetime, bound: Any) -> tuple[Any, Any]:
        """The lowest and highest key of expired rows: from the survey, else one scan now."""
        cached, self._walk_range = self._walk_range, None
        if cached is not None and cached[0] == cutoff:
            return cached[1]
        key = self._require_layout().key
        row = self._retrying(
            "finding the expired key range",
            lambda connection: connection.execute(
                text(
                    f"SELECT MIN({key}), MAX({key}) FROM {self._table_sql} "
                    f"WHERE {self._expired_sql()}"
                ),
                {"bound": bound},
            ).one(),
        )
        return row[0], row[1]

    # -- deleting --------------------------------------------------------------------------------

    def apply(self, batch: Batch, cutoff: datetime) -> BatchResult:
        bound = self._bound(cutoff)
        result = self._retrying(
            "deleting a batch",
            lambda connection: self._delete(connection, batch, bound),
            write=True,
        )
        self._applied = (batch, result)
        return result

    def _delete(self, connection: Connection, batch: Batch, bound: Any) -> BatchResult:
        layout = self._require_layout()
        if layout.strategy == "key_walk":
            last, upper = batch.payload
            deleted, times = self._run_delete(
                connection,
                text(self._walk_delete_sql()),
                {"bound": bound, "last": last, "hi": upper},
            )
        elif layout.key is None:
            deleted, times = self._run_delete(
                connection, text(self._keyless_delete_sql()), {"bound": bound, "n": batch.planned}
            )
        else:
            deleted, times = self._delete_keys(connection, list(batch.payload), bound)
        if times is not None:
            span = self._day_span(times)
        else:
            # Without RETURNING the planned span stands when every planned row went.
            span = batch.span if deleted == batch.planned else None
        return BatchResult(deleted=deleted, span=span)

    def _delete_keys(
        self, connection: Connection, keys: list[Any], bound: Any
    ) -> tuple[int, list[Any] | None]:
        key = self._require_layout().key
        returning = self._returning()
        if self._family == "postgresql":
            # One array parameter: psycopg allows at most 65535 parameters per statement.
            match = "ctid = ANY(CAST(:keys AS tid[]))" if key == "ctid" else f"{key} = ANY(:keys)"
            statement = text(
                f"DELETE FROM {self._table_sql} WHERE {match} AND {self._expired_sql()}{returning}"
            )
            return self._run_delete(connection, statement, {"keys": keys, "bound": bound})
        statement = text(
            f"DELETE FROM {self._table_sql} WHERE {key} IN :keys AND {self._expired_sql()}"
            f"{returning}"
        ).bindparams(bindparam("keys", expanding=True))
        deleted = 0
        times: list[Any] | None = [] if returning else None
        for start in range(0, len(keys), IN_LIST_CHUNK):
            chunk = keys[start : start + IN_LIST_CHUNK]
            count, chunk_times = self._run_delete(
                connection, statement, {"keys": chunk, "bound": bound}
            )
            deleted += count
            if times is not None and chunk_times is not None:
                times.extend(chunk_times)
        return deleted, times

    def _run_delete(
        self, connection: Connection, statement: TextClause, params: dict[str, Any]
    ) -> tuple[int, list[Any] | None]:
        """Rows deleted, and their times when the database can return them."""
        result = connection.execute(statement, params)
        if result.returns_rows:
            times = list(result.scalars())
            return len(times), times
        return result.rowcount, None

    # -- statements ------------------------------------------------------------------------------

    def _expired_sql(self) -> str:
        return f"{self._time_sql} < :bound{self._text_guard()}"

    def _text_guard(self) -> str:
        """For dates stored as text: only values that look like a date are compared as one."""
        if self._family == "sqlite" and self._time_kind in ("text", "date"):
            # Untyped SQLite columns may hold numbers, which sort before any text: never match them.
            return f" AND {self._time_sql} GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*'"
        if self._time_kind == "text":
            return f" AND {self._time_sql} LIKE '____-__-__%'"
        return ""

    def _order_by_time(self) -> str:
        return f" ORDER BY {self._time_sql}" if self.strategy == "time_index" else ""

    def _returning(self, wanted: bool = True) -> str:
        supported = self._require_engine().dialect.delete_returning
        return f" RETURNING {self._time_sql}" if wanted and supported else ""

    def _plan_read_sql(self) -> str:
        key = self._require_layout().key
        columns = f"{key}, {self._time_sql}" if key is not None else self._time_sql
        return (
            f"SELECT {columns} FROM {self._table_sql} WHERE {self._expired_sql()}"
            f"{self._order_by_time()} LIMIT :n"
        )

    def _keyless_delete_sql(self, returning: bool = True) -> str:
        # MariaDB/MySQL only: the one form that bounds a batch on a table without any key.
        return (
            f"DELETE FROM {self._table_sql} WHERE {self._expired_sql()}"
            f"{self._order_by_time()} LIMIT :n{self._returning(returning)}"
        )

    def _walk_read_sql(self) -> str:
        key = self._require_layout().key
        expired = self._expired_sql()
        return (
            f"SELECT {key}, CASE WHEN {expired} THEN 1 ELSE 0 END, "
            f"CASE WHEN {expired} THEN {self._time_sql} END "
            f"FROM {self._table_sql} WHERE {key} > :last AND {key} <= :end "
            f"ORDER BY {key} LIMIT :n"
        )

    def _walk_delete_sql(self, returning: bool = True) -> str:
        key = self._require_layout().key
        return (
            f"DELETE FROM {self._table_sql} WHERE {key} > :last AND {key} <= :hi "
            f"AND {self._expired_sql()}{self._returning(returning)}"
        )

    # -- time values -----------------------------------------------------------------------------

    def _bound(self, cutoff: datetime) -> Any:
        return _bound(self._time_kind, self._family, cutoff, self._zone)

    def _floor(self) -> Any:
        kind = self._time_kind
        if kind == "epoch":
            return EPOCH_FLOOR
        if kind == "aware":
            return DATETIME_FLOOR.replace(tzinfo=UTC)
        if kind == "text" or (kind == "date" and self._family == "sqlite"):
            return DATETIME_FLOOR.date().isoformat()
        if kind == "date":
            return DATETIME_FLOOR.date()
        return DATETIME_FLOOR

    def _day_span(self, values: Iterable[Any]) -> tuple[date, date] | None:
        days = []
        for value in values:
            instant = _instant(value, self._time_kind, self._zone)
            if instant is not None:
                days.append(instant.astimezone(self._zone).date())
        return (min(days), max(days)) if days else None

    # -- clocks ----------------------------------------------------------------------------------

    def clock_skew(self) -> timedelta | None:
        if self._family == "sqlite":
            return None  # a file has no clock of its own
        query = "SELECT UTC_TIMESTAMP(6)" if self._family == "mysql" else "SELECT clock_timestamp()"

        def measure(connection: Connection) -> timedelta:
            before = datetime.now(UTC)
            value = connection.execute(text(query)).scalar()
            after = datetime.now(UTC)
            if not isinstance(value, datetime):
                raise StoreError(f"{self.label}: the database clock returned no time")
            database_now = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
            return database_now - (before + (after - before) / 2)

        return self._retrying("reading the database clock", measure)

    # -- errors and retries ----------------------------------------------------------------------

    def _retrying(self, action: str, work: Callable[[Connection], T], *, write: bool = False) -> T:
        """Run `work` in its own transaction; retry lock waits, deadlocks and lost connections.

        A write commits before returning. A failed attempt rolled back completely, so retrying it
        cannot delete twice what one batch planned.
        """
        engine = self._require_engine()
        attempt = 0
        while True:
            try:
                if write:
                    with engine.begin() as connection:
                        return work(connection)
                with engine.connect() as connection:
                    return work(connection)
            except DBAPIError as exc:
                reason = _transient_reason(exc)
                if reason is None:
                    # `from None`: the chained SQLAlchemy error would print the bound parameters.
                    raise StoreError(self._failure_message(action, exc)) from None
                if attempt >= self._connection.retries:
                    attempts = attempt + 1
                    raise StoreError(
                        f"{self.label}: {_GAVE_UP[reason].format(attempts=attempts)}; the run was "
                        "stopped, nothing beyond the committed batches was deleted"
                    ) from None
                delay = min(BACKOFF_FIRST * 2**attempt, BACKOFF_MAX)
                attempt += 1
                log.warning(
                    "sql store retrying",
                    store=self.label,
                    action=action,
                    attempt=attempt,
                    of=self._connection.retries,
                    error=reason,
                    code=_error_code(exc),
                    delay=delay,
                )
                time.sleep(delay)

    def _failure_message(self, action: str, exc: DBAPIError) -> str:
        message = f"{self.label}: {action} failed: {_driver_message(exc)}"
        if _error_code(exc) in _STATEMENT_TIMEOUT_CODES:
            message += (
                "; the statement ran longer than statement_timeout "
                f"({self._connection.statement_timeout:g} s): lower batch_size or raise it"
            )
        return message

    # -- helpers ---------------------------------------------------------------------------------

    def _require_engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError(f"{self.label}: the store is not open")  # a bug in the caller
        return self._engine

    def _require_layout(self) -> Layout:
        if self._layout is None:
            raise RuntimeError(f"{self.label}: the store is not open")
        return self._layout

    def _preparer(self) -> Any:
        return self._require_engine().dialect.identifier_preparer

    def _where(self) -> str:
        url = self._url
        if url is None:
            return "?"
        if self._family == "sqlite":
            return url.database or ":memory:"
        default_port = 3306 if self._family == "mysql" else 5432
        return f"{url.host or 'localhost'}:{url.port or default_port}"


_KIND_WORDS: dict[TimeKind, str] = {
    "local": "wall-clock time in the configured zone",
    "utc": "TIMESTAMP, read in UTC",
    "aware": "timestamp with time zone",
    "date": "date only: a row expires after its whole day has",
    "epoch": "epoch seconds",
    "text": "text 'YYYY-MM-DD HH:MM:SS' in the configured zone",
}


def _family(url: URL, connection: str) -> str:
    backend = url.get_backend_name()
    if backend in ("mysql", "mariadb"):
        return "mysql"
    if backend in ("postgresql", "sqlite"):
        return backend
    raise StoreError(
        f"connection {connection}: {backend} databases are not supported; use MariaDB/MySQL, "
        "PostgreSQL or SQLite"
    )


def _server_version(connection: Connection, family: str) -> str:
    if family == "mysql":
        version = str(connection.execute(text("SELECT VERSION()")).scalar())
        return f"MariaDB {version}" if "mariadb" in version.lower() else f"MySQL {version}"
    if family == "postgresql":
        return f"PostgreSQL {connection.execute(text('SHOW server_version')).scalar()}"
    return f"SQLite {connection.execute(text('SELECT sqlite_version()')).scalar()}"


def _read_rows(sql: str, params: dict[str, Any], connection: Connection) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in connection.execute(text(sql), params)]


def _explain_mysql(
    connection: Connection, statement: str, params: dict[str, Any]
) -> tuple[list[str], bool]:
    rows = connection.execute(text(f"EXPLAIN {statement}"), params).mappings().all()
    lines = [
        f"{row['table']}: access {row['type']}, key {row['key']}, rows {row['rows']}"
        + (f", {row['Extra']}" if row["Extra"] else "")
        for row in rows
    ]
    # ALL reads every row, index every entry of an index: both are a full scan per batch.
    return lines, any(row["type"] in ("ALL", "index") for row in rows)


def _explain_postgresql(
    connection: Connection, statement: str, params: dict[str, Any]
) -> tuple[list[str], bool]:
    # As the planner would for a big table: a small one is read whole, which says nothing.
    connection.execute(text("SET LOCAL enable_seqscan = off"))
    plan = connection.execute(text(f"EXPLAIN {statement}"), params)
    lines = [str(row[0]) for row in plan]
    full_scan = any("Seq Scan" in line for line in lines)
    lines.append("(planned with enable_seqscan off, as for a large table)")
    return lines, full_scan


def _explain_sqlite(
    connection: Connection, statement: str, params: dict[str, Any]
) -> tuple[list[str], bool]:
    rows = connection.execute(text(f"EXPLAIN QUERY PLAN {statement}"), params).all()
    lines = [str(row[-1]) for row in rows]
    return lines, any(line.startswith("SCAN") for line in lines)


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _time_kind(column_type: sqltypes.TypeEngine[Any], family: str) -> TimeKind | None:
    if isinstance(column_type, sqltypes.Integer):
        return "epoch"
    if family == "sqlite":
        # SQLite stores dates as text whatever the declared type; only a DATE holds days only.
        is_date = isinstance(column_type, sqltypes.Date)
        return "date" if is_date and not isinstance(column_type, sqltypes.DateTime) else "text"
    if isinstance(column_type, sqltypes.DateTime):
        if getattr(column_type, "timezone", False):
            return "aware"
        if family == "mysql" and isinstance(column_type, sqltypes.TIMESTAMP):
            return "utc"  # the session time_zone is +00:00
        return "local"
    if isinstance(column_type, sqltypes.Date):
        return "date"
    if isinstance(column_type, sqltypes.String):
        return "text"
    return None


def _bound(kind: TimeKind, family: str, cutoff: datetime, zone: tzinfo) -> Any:
    """The value every expired row's time is strictly below (`time < bound`)."""
    if cutoff.tzinfo is None:
        raise ValueError("cutoff must be timezone-aware")
    if kind == "aware":
        return cutoff.astimezone(UTC)
    if kind == "utc":
        return cutoff.astimezone(UTC).replace(tzinfo=None)
    if kind == "epoch":
        return math.floor(cutoff.timestamp())
    wall = rules.naive_bound(cutoff, zone)
    if kind == "date":
        # A row known by its day alone is as young as that day's end: only earlier days expire.
        return wall.date().isoformat() if family == "sqlite" else wall.date()
    if kind == "text":
        return wall.strftime("%Y-%m-%d %H:%M:%S")
    return wall


def _instant(value: Any, kind: TimeKind, zone: tzinfo) -> datetime | None:
    """A stored time as an aware instant; None for NULL, zero dates and anything unparseable."""
    try:
        if value is None or isinstance(value, bool):
            return None
        if isinstance(value, datetime):
            if value.tzinfo is not None:
                return value.astimezone(UTC)
            if kind == "utc":
                return value.replace(tzinfo=UTC)
            return rules.latest_instant(value, zone)
        if isinstance(value, date):
            return rules.end_of_day(value, zone)
        if isinstance(value, int | float | Decimal):
            return datetime.fromtimestamp(float(value), UTC) if value >= EPOCH_FLOOR else None
        if isinstance(value, bytes):
            value = value.decode("ascii")
        if isinstance(value, str):
            return _instant_from_text(value.strip(), kind, zone)
    except (ValueError, OverflowError, OSError, UnicodeDecodeError):
        return None
    return None


def _instant_from_text(value: str, kind: TimeKind, zone: tzinfo) -> datetime | None:
    if kind == "epoch":
        return _instant(float(value), kind, zone)
    if len(value) == 10:
        return _instant(date.fromisoformat(value), kind, zone)
    return _instant(datetime.fromisoformat(value), kind, zone)


def _error_code(exc: DBAPIError) -> str | None:
    orig = exc.orig
    args: Sequence[Any] = getattr(orig, "args", ())
    if args and isinstance(args[0], int):  # pymysql: (code, message); its sqlstate is vaguer
        return str(args[0])
    sqlstate = getattr(orig, "sqlstate", None)  # psycopg
    if isinstance(sqlstate, str):
        return sqlstate
    name = getattr(orig, "sqlite_errorname", None)  # sqlite3
    if isinstance(name, str):
        return name
    return None


def _transient_reason(exc: DBAPIError) -> str | None:
    code = _error_code(exc) or ""
    if code in _TRANSIENT_CODES:
        return _TRANSIENT_CODES[code]
    if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return "database locked"
    if code.startswith("08") or exc.connection_invalidated:  # SQLSTATE class 08: connection
        return "connection lost"
    return None


def _driver_message(exc: DBAPIError) -> str:
    """The driver's own message, first line only (PostgreSQL details can quote row values)."""
    orig = exc.orig
    args: Sequence[Any] = getattr(orig, "args", ())
    if len(args) >= 2 and isinstance(args[0], int) and isinstance(args[1], str):
        return f"error {args[0]}: {args[1]}"
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__
