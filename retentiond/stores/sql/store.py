"""SQL tables (FreePBX cdr and cel, Asterisk's cdr_sqlite3_custom, queue logs), purged in batches.

Every batch is one short transaction that deletes at most `batch_size` rows and always carries the
explicit predicate `time < bound`: a row exactly at the cutoff, or anything newer, never matches.
The bound is computed here from the run's cutoff; the database's NOW() is never used.

How a batch finds its rows follows from the table, chosen at `open` and shown by `describe`:

- time_index: the time column leads an index. Batches take the oldest expired rows along it.
  A planning read returns one summary row (count, first and last time) of the n oldest; the
  batch is every row up to a time, deleted by `time <= that time` under the full predicate,
  with no ORDER BY, LIMIT or key list: the table needs no key (FreePBX `cdr` has none), the
  binary log (MIXED) holds one statement instead of every row, and no row is sent back. Ties
  at the batch's edge are counted by the plan; when they would take it past n the batch stops
  before them, and when n rows share one time it deletes n of those (LIMIT, or their keys).
- key_walk: no index on the time column, but an integer primary key (FreePBX `cel`,
  cdr_sqlite3_custom's AcctId). Each batch covers the next n key values through the primary
  key; its plan is one summary row too.
- scan: neither. Correct but every batch reads the table; `describe` says which index fixes it.

A batch's count and span are exact without reading its rows back: the plan counts the rows of
the delete's own predicate and reads their first and last time on the server, so when the
delete's rowcount equals the plan, those rows went; when it does not (the table changed in
between), the span is reported unknown rather than guessed. RETURNING is used only for the
files a file_column names.

A store's statements run one after another on one pooled connection, without a ping at checkout
or a rollback at checkin (see `Database.open`): a batch is its planning read, the DELETE and its
commit, in one transaction. A connection found dead fails its statement, and
`Database.retrying` retries it on a new one.

Without batch_size in the config, the rows per batch adapt: after each batch the size moves
toward the one whose transaction takes about `batch_time` (BATCH_TIME; TABLE_LOCK_BATCH_TIME where
a DELETE locks the whole table, MyISAM, Aria and SQLite, since the PBX's inserts wait for as long
as it runs). Steps are bounded (ADAPT_GROWTH, ADAPT_SHRINK) so one slow or fast batch does not
swing the size. With batch_size set, every batch is that size, which makes runs comparable.

Rows may name a file (3CX `recordings.recording_url`, relative to `file_root`). The delete itself
says which files its rows named (RETURNING, or a locking read in the same transaction on MySQL);
once the rows are committed, each file no remaining row names is unlinked from the root's
descriptor, one folder at a time, never through a symlink and never outside the root.

Holds are part of every statement's predicate: a held row is never read into a batch, and the
delete (or update) of a batch re-checks the predicate its batch was planned with, carried in the
payload. A hold's window is widened, never narrowed, where a wall-clock column is ambiguous.
With `subject_columns`, a hold by number covers only rows naming the person there (`IN` the
subject's stored forms, or a caller id with one of them between `<` and `>` as in `clid`, NULL
never matching); `find` and `subject_batches` search those columns.
With `subject_in_file_name`, a row also names the person whose stored form is a part of its file's
name (3CX `<ext>/[Name]_<ext>-<number>_<time>(<n>).wav`), as a files store's `subject_in_name`
matches: the name without folders and extension, split at `-`, `_` and blanks. The database
computes that name and looks for `-<form>-` in `-<name>-` with the separators made `-`, the
form a bound parameter compared byte for byte (instr, strpos, LOCATE on BINARY): no pattern
characters to escape, and no case folding.

Anonymization walks the expired rows forward by time (then key), one batch at a time, and
rewrites in Python only the rows whose values change. A row is identified by its key where it has
one, and always by the values read (null-safe), so a row the PBX changed since is left alone.

SQLAlchemy Core only (the ORM refuses tables without a primary key), and text() statements built
from names that came out of reflection, quoted by the dialect. No row value is ever logged or put
into an exception: messages carry counts, names of tables and columns, and the database's error
codes with fixed words (`dberror`), never its own text.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog
from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    Table,
    TextClause,
    bindparam,
    inspect,
    text,
)
from sqlalchemy import types as sqltypes
from sqlalchemy.exc import DBAPIError, NoSuchTableError

from retentiond.config.model import ConnectionConfig, SqlStoreConfig
from retentiond.config.roots import system_root_warning
from retentiond.errors import StoreAbsent, StoreError
from retentiond.policy.anonymize import Blank, Transform, TruncateDigits, anonymize_row
from retentiond.policy.rules import NO_HOLDS, Holds, HoldScope
from retentiond.policy.subjects import Subject
from retentiond.stores.base import Batch, BatchFailed, BatchResult, Found, Store, Survey
from retentiond.stores.db.connection import Database
from retentiond.stores.db.dialects import Dialect, TableStorage
from retentiond.stores.db.errors import (
    describe,
    error_code,
)
from retentiond.stores.db.indexes import leading_index
from retentiond.stores.db.retries import (
    GAVE_UP,
    UNCONFIRMED_DELETED_MAX,
    RolledBack,
    transient_reason,
    wait_to_retry,
)
from retentiond.stores.db.rows import IN_LIST_CHUNK, read_rows
from retentiond.stores.db.timecols import (
    KIND_WORDS,
    Side,
    TimeKind,
    hold_bound,
    stored_instant,
    time_bound,
    time_floor,
    time_kind,
)
from retentiond.stores.fs.folders import (
    CHANGED,
    MOUNT_POINT,
    NOT_REGULAR_FILE,
    OTHER_FILESYSTEM,
    UNREMOVABLE,
    VANISHED,
    RootFolder,
    RootWording,
    Skip,
    open_folder,
)
from retentiond.stores.sql.sizing import adapted_size, batch_sizing

log = structlog.get_logger()

T = TypeVar("T")

Strategy = Literal["time_index", "key_walk", "scan"]
# A value with one of these can never be a whole part of a file name (subjects.matches_name).
_NAME_SEPARATORS = re.compile(r"[-_\s]")
# Why a planned anonymization left a row alone: the PBX changed it after it was read.
CHANGED_SINCE_PLANNED = "changed"
# Rows whose time is NULL or no date at all, as counted in Survey.skipped: never expired.
UNDATED = "undated"

# Why a row's file was left in place, as counted in BatchResult.skipped (besides the folders
# module's not_regular_file, other_filesystem and unremovable). The row is gone anyway.
UNSAFE_PATH = "unsafe_path"  # absolute, `..`, empty component, or a symlink on the way
FILE_MISSING = "file_missing"
STILL_REFERENCED = "still_referenced"  # a row that stays names the same file

# `{root}` is "<store label>: file_root <path>".
_FILE_ROOT_WORDING = RootWording(
    missing="{root} does not exist; set it to the folder the file column's paths are relative to",
    unexaminable="{root} cannot be examined ({reason})",
    symlink="{root} is a symlink and retentiond never follows symlinks; "
    "set file_root to the folder it points to",
    not_a_folder="{root} is not a folder",
    unreadable="{root} cannot be opened ({reason}); give retentiond's user search and write "
    "permission there",
)


@dataclass(frozen=True)
class Layout:
    """What reflection found and the purge strategy that follows from it."""

    strategy: Strategy
    reason: str
    key: str | None  # SQL for the row key (quoted column, ctid, rowid); None: keyless deletes


@dataclass(frozen=True)
class Predicate:
    """A condition on rows with its bound parameters; `expanding` names bind lists (`IN :name`).

    Values are always parameters: the SQL text holds only reflected, quoted identifiers.
    """

    sql: str
    params: Mapping[str, Any] = field(default_factory=dict)
    expanding: frozenset[str] = frozenset()

    def __and__(self, other: Predicate) -> Predicate:
        return Predicate(
            f"{self.sql} AND {other.sql}",
            {**self.params, **other.params},
            self.expanding | other.expanding,
        )

    def negated(self) -> Predicate:
        return Predicate(f"NOT ({self.sql})", self.params, self.expanding)

    @staticmethod
    def any_of(parts: Sequence[Predicate]) -> Predicate | None:
        if not parts:
            return None
        params: dict[str, Any] = {}
        for part in parts:
            params.update(part.params)
        return Predicate(
            "(" + " OR ".join(f"({part.sql})" for part in parts) + ")",
            params,
            frozenset().union(*(part.expanding for part in parts)),
        )


EVERY_ROW = Predicate("1 = 1")


def _bind(sql: str, *parts: Predicate | None, **params: Any) -> tuple[TextClause, dict[str, Any]]:
    """`sql`, which embeds the `parts`, with their parameters and `params` bound."""
    merged: dict[str, Any] = {}
    expanding: set[str] = set()
    for part in parts:
        if part is not None:
            merged.update(part.params)
            expanding |= part.expanding
    merged.update(params)
    statement = text(sql).bindparams(
        *(bindparam(name, expanding=True) for name in sorted(expanding))
    )
    return statement, merged


@dataclass(frozen=True)
class _Deletion:
    """A delete batch's payload: the rows matching `where` among `keys`, or in the walk's key
    range `walk`, or with a time up to `upto`, or the first `planned` with the time `tied`, or
    (keyless) the first `planned` rows, in time order when `ordered`."""

    where: Predicate
    keys: list[Any] | None = None
    walk: tuple[Any, Any] | None = None
    ordered: bool = True
    upto: Any = None
    tied: Any = None
    # Plans the batch after this one, in this one's transaction once its rows are deleted: one
    # round trip and one transaction fewer per batch than planning it on its own.
    ahead: Callable[[Connection], Any] | None = None


@dataclass(frozen=True)
class _RangePlan:
    """A time_index batch as its planning summary found it: `count` rows from `first` to `last`,
    either all rows up to `upto` or `count` of the rows at `tied`; `more` when rows may follow."""

    count: int
    first: Any
    last: Any
    upto: Any = None
    tied: Any = None
    more: bool = True


@dataclass(frozen=True)
class _Rewrite:
    """An anonymize batch's payload: each row's key (None without one) and the values read
    (the time column first, then the transformed columns), and the predicate they matched."""

    where: Predicate
    rows: list[tuple[Any, tuple[Any, ...]]]


@dataclass(frozen=True)
class _ToNull(Transform):
    """`blank` on a nullable column that takes no text: NULL."""

    name: str = "blank"

    def apply(self, value: Any) -> Any:
        return None

    def describe(self) -> str:
        return "blanked (NULL)"


class FileRoot:
    """The folder a file column's relative paths start from, held open by its descriptor.

    Each path is followed one component at a time from the root's descriptor with O_NOFOLLOW, so
    no symlink, `..`, absolute path or mount point can send an unlink outside the root. Paths are
    recording names (numbers, names): they never appear in a log line, an exception or a result.
    """

    def __init__(self, path: Path, label: str) -> None:
        self.path = path
        self.label = label
        # Not probed: unlinking needs search and write permission, never listing.
        self._root = RootFolder(path, _FILE_ROOT_WORDING, shown=f"{label}: file_root {path}")

    def open(self) -> None:
        self._root.open()

    def close(self) -> None:
        self._root.close()

    def remove(self, relative: str | bytes) -> tuple[str | None, int]:
        """Unlink the regular file at `relative` below the root: (None, its size) or (reason, 0)."""
        if self._root.fd is None:
            raise RuntimeError(f"{self.label}: the file root is not open")  # a bug in the caller
        path = os.fsencode(relative)
        parts = path.split(b"/")
        if path.startswith(b"/") or b"\0" in path or any(p in (b"", b".", b"..") for p in parts):
            return UNSAFE_PATH, 0
        opened: list[int] = []
        folder = self._root.fd
        try:
            for part in parts[:-1]:
                try:
                    folder = open_folder(part, folder, self._root.device)
                except Skip as skip:
                    return self._why_not_a_folder(part, folder, skip.reason), 0
                opened.append(folder)
            return self._unlink(parts[-1], folder)
        finally:
            for fd in reversed(opened):
                os.close(fd)

    def _unlink(self, name: bytes, folder: int) -> tuple[str | None, int]:
        try:
            status = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return FILE_MISSING, 0
        except OSError:
            return UNREMOVABLE, 0
        if stat.S_ISLNK(status.st_mode):
            return UNSAFE_PATH, 0
        if not stat.S_ISREG(status.st_mode):
            return NOT_REGULAR_FILE, 0
        if status.st_dev != self._root.device:
            return OTHER_FILESYSTEM, 0
        try:
            os.unlink(name, dir_fd=folder)
        except FileNotFoundError:
            return FILE_MISSING, 0
        except OSError:
            return UNREMOVABLE, 0
        return None, status.st_size

    @staticmethod
    def _why_not_a_folder(name: bytes, parent: int, reason: str) -> str:
        """This store's reason for a folder on the way that `open_folder` refused."""
        if reason == VANISHED:
            return FILE_MISSING
        if reason in (OTHER_FILESYSTEM, MOUNT_POINT):
            return reason
        if reason == CHANGED:
            # Not a folder: a symlink (refused by O_NOFOLLOW) is unsafe, anything else missing.
            try:
                status = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except OSError:
                return FILE_MISSING
            return UNSAFE_PATH if stat.S_ISLNK(status.st_mode) else FILE_MISSING
        return UNREMOVABLE


@dataclass
class _Deleted:
    """What one batch's transaction deleted, before any file is touched."""

    count: int
    times: list[Any] | None  # the deleted rows' times; None when the database cannot return them
    files: list[Any] = field(default_factory=list)  # file column values to unlink after commit
    still_referenced: int = 0  # files of deleted rows that rows staying behind also name


class SqlStore(Store):
    """One table purged by its time column; see the module docstring for the strategies."""

    kind = "sql"
    unit = "rows"

    def __init__(self, store: SqlStoreConfig, connection: ConnectionConfig, zone: tzinfo) -> None:
        self.label = store.label
        self.pause = store.pause
        self._store = store
        self._zone = zone
        self._db = Database(store.connection, connection, store.label)
        self._table_sql = ""
        self._time_sql = ""
        self._time_name = ""
        self._time_kind: TimeKind = "local"
        self._layout: Layout | None = None
        # Rows per batch: batch_size; or, when it is not set, adapted after every batch so it
        # takes about `batch_time` seconds (None: a fixed size).
        self._batch_size = store.batch_size
        self.batch_time: float | None = None
        self._storage = TableStorage()  # how the table keeps its rows (MyISAM, ...)
        # file_column: its quoted name, its name, the index led by it, and the open root.
        self._file_sql = ""
        self._file_name = ""
        self._file_index: str | None = None
        self._files: FileRoot | None = None
        # The walk's key range of unheld expired rows from the last survey, so batches() need not
        # scan again when it is asked for the same cutoff and holds.
        self._walk_range: tuple[datetime, Holds, tuple[Any, Any]] | None = None
        self.anonymizes = bool(store.anonymize)
        # subject_columns: their names, and each as SQL text to compare with a subject's values.
        self._subject_names: list[str] = []
        self._subject_sql: list[str] = []
        # subject_in_file_name: `-<stem>-` of the file column's base name, separators made `-`;
        # and the same without `.()`, which a number's form never has (subjects.matches).
        self._file_parts: tuple[str, str] | None = None
        # anonymize: each column's transform, and the columns a rewrite reads and compares
        # (name, quoted), the time column first.
        self._transforms: dict[str, Transform] = {}
        self._rewritten: list[tuple[str, str]] = []
        self._applied: tuple[Batch, BatchResult] | None = None
        self._ahead: tuple[_Deletion, Any] | None = None  # a batch's payload: the next plan

    @property
    def strategy(self) -> Strategy:
        return self._require_layout().strategy

    @property
    def _dialect(self) -> Dialect:
        return self._db.dialect

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
                self._choose_batch_size(connection, table)
                self._layout = self._choose_layout(connection, table, column)
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
        column = _find_column(table, wanted)
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

    def _columns(self, table: Table, wanted: Iterable[str], setting: str) -> list[Column[Any]]:
        """The columns a setting names; a StoreError naming every one the table lacks."""
        found = {name: _find_column(table, name) for name in wanted}
        missing = [name for name, column in found.items() if column is None]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            raise StoreError(
                f"{self.label}: {setting} names column{plural} {', '.join(missing)}, not in table "
                f"{table.name}; its columns: {', '.join(c.name for c in table.columns)}. Correct "
                f"the name{plural} or remove {'them' if plural else 'it'} from {setting}"
            )
        return [column for column in found.values() if column is not None]

    def _prepare_subjects(self, table: Table) -> None:
        columns = self._columns(table, self._store.subject_columns, "subject_columns")
        self._subject_names = [column.name for column in columns]
        self._subject_sql = [self._as_text(column) for column in columns]

    def _as_text(self, column: Column[Any]) -> str:
        """A column compared with text: numbers stored as numbers (or untyped) cast to text."""
        quoted: str = self._preparer().quote(column.name)
        if isinstance(column.type, sqltypes.String):
            return quoted
        return f"CAST({quoted} AS {self._dialect.text_type})"

    def _prepare_anonymize(self, table: Table) -> None:
        transforms = self._store.anonymize or {}
        columns = self._columns(table, transforms, "anonymize")
        self._transforms = {
            column.name: self._fitting(column, transforms[wanted])
            for wanted, column in zip(transforms, columns, strict=True)
        }
        quote = self._preparer().quote
        self._rewritten = [(self._time_name, self._time_sql)] + [
            (name, quote(name)) for name in self._transforms if name != self._time_name
        ]

    def _fitting(self, column: Column[Any], transform: Transform) -> Transform:
        """The transform as this column can take it; refused when its values cannot be written."""
        if isinstance(column.type, sqltypes.String | sqltypes.LargeBinary | sqltypes.NullType):
            return transform
        if isinstance(transform, Blank):
            if column.nullable:
                return _ToNull()
            raise StoreError(
                f"{self.label}: anonymize: column {column.name} holds {column.type!r} values and "
                "cannot be NULL, so blank cannot empty it; use {constant: 0} (or another value "
                "of its type) instead"
            )
        if isinstance(transform, TruncateDigits):
            raise StoreError(
                f"{self.label}: anonymize: column {column.name} holds {column.type!r} values, "
                "not text, and truncate_digits would write x into it; use bucket, constant or "
                "blank instead"
            )
        return transform

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

    def _prepare_file_subjects(self, column: Column[Any]) -> None:
        """The file's name as parts between `-`: its base name (after the last `/`) up to its
        last dot, `_` and blanks made `-`, with a `-` at each end."""
        value = self._file_sql
        text_type = isinstance(column.type, sqltypes.String)
        stem = self._dialect.file_stem(value, text_type)
        parts = f"REPLACE(REPLACE({stem}, '_', '-'), ' ', '-')"
        parts = self._dialect.concat("'-'", parts, "'-'")
        digits = f"REPLACE(REPLACE(REPLACE({parts}, '.', ''), '(', ''), ')', '')"
        self._file_parts = (parts, digits)

    def _choose_batch_size(self, connection: Connection, table: Table) -> None:
        """The rows per batch (`sizing.batch_sizing`), knowing whether a DELETE locks the table."""
        self._storage = self._dialect.table_storage(connection, table)
        sizing = batch_sizing(self._store, self._storage.locks_table)
        self._batch_size = sizing.rows
        self.batch_time = sizing.batch_time

    def _adapt_batch_size(self, rows: int, seconds: float) -> None:
        """After a batch of `rows` that took `seconds`: the size that would take `batch_time`."""
        self._batch_size = adapted_size(self._batch_size, self.batch_time, rows, seconds)

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
                f"no index on {time_name}; integer key {key_name}: each batch walks the next "
                f"{self._batch_size} key values and deletes those with {time_name} < cutoff; "
                f"the survey reads the table once per run ({self._index_hint()} would let "
                "batches go by time)"
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

    # -- describing ------------------------------------------------------------------------------

    def describe(self) -> list[str]:
        layout = self._require_layout()
        lines = [
            f"{self.label}: {self._db.server}",
            f"time column {self._time_name} ({KIND_WORDS[self._time_kind]})",
            f"strategy {layout.strategy}: {layout.reason}",
            self._describe_batches(),
        ]
        plan, full_scan = self._db.retrying("explaining the batch statement", self._explain)
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
        lines.extend(self._describe_files())
        searched = list(self._subject_names)
        if self._file_parts is not None:
            searched.append(f"the parts of the file names in {self._file_name}")
        if searched:
            lines.append(f"subjects: {', '.join(searched)} (holds by number, find and erase)")
        lines.extend(
            f"anonymize: {name} {transform.describe()}"
            for name, transform in self._transforms.items()
        )
        return lines

    def _describe_batches(self) -> str:
        locks = " (a DELETE locks the whole table)" if self._storage.locks_table else ""
        if self.batch_time is None:
            return f"batches of {self._batch_size} rows (batch_size)"
        return (
            f"batches sized to take about {self.batch_time:g} s each{locks}, starting at "
            f"{self._batch_size} rows (set batch_size for a fixed size)"
        )

    def _describe_files(self) -> list[str]:
        if self._files is None:
            return []
        name = self._file_name
        lines = [
            f"files: column {name} names a file relative to {self._files.path}; once a batch "
            "is committed, the files of its rows are deleted unless a remaining row names them "
            "too; never through a symlink, an absolute path or `..`, never outside that folder",
        ]
        system = system_root_warning(self._store.file_root, self._store.allow_system_root)
        if system is not None:
            lines.append(system)
        if self._file_index is None:
            lines.append(
                f"warning: no index on {name}: each batch's check for remaining rows naming the "
                f"same files reads the whole table; {self._index_hint(name)} would fix it"
            )
        return lines

    def _index_hint(self, column: str | None = None) -> str:
        column = column or self._time_name
        table = self._store.table
        name = self._preparer().quote(f"{table}_{column}")
        return f"CREATE INDEX {name} ON {self._table_sql} ({self._preparer().quote(column)})"

    def _explain(self, connection: Connection) -> tuple[list[str], bool]:
        """The plan as lines, and whether it reads the whole table."""
        statement, params = self._statement_to_explain(connection)
        return self._dialect.explain(connection, statement, params)

    def _statement_to_explain(self, connection: Connection) -> tuple[str, dict[str, Any]]:
        """The statement each batch runs against the table (not only its keys)."""
        layout = self._require_layout()
        where = self._expired(self._typical_cutoff(connection))
        params: dict[str, Any] = {**where.params, "n": self._batch_size}
        if layout.strategy == "key_walk":
            params.update(last=0, hi=self._batch_size)
            return self._walk_delete_sql(where, returning=False), params
        if layout.strategy == "time_index":
            params["upto"] = where.params["bound"]
            upto = f"{where.sql} AND {self._time_sql} <= :upto"
            return f"DELETE FROM {self._table_sql} WHERE {upto}", params
        if layout.key is None:
            return self._keyless_delete_sql(where, ordered=True, returning=False), params
        return self._plan_read_sql(where, ordered=True), params

    def _typical_cutoff(self, connection: Connection) -> datetime:
        """A day past the oldest row: a daily run's share of the table, not all of it.

        Optimizers read a small table whole when every row matches, which says nothing about
        the plan once the table is large and a run takes its oldest day.
        """
        instant = stored_instant(self._read_oldest(connection), self._time_kind, self._zone)
        return instant + timedelta(days=1) if instant is not None else datetime.now(UTC)

    # -- surveying -------------------------------------------------------------------------------

    def survey(self, cutoff: datetime, holds: Holds = NO_HOLDS) -> Survey:
        walk = self.strategy == "key_walk"
        survey, walk_range = self._survey(self._expired(cutoff), holds, walk)
        if walk:
            self._walk_range = (cutoff, holds, walk_range)
        return survey

    def _survey(
        self, expired: Predicate, holds: Holds, walk: bool = False
    ) -> tuple[Survey, tuple[Any, Any]]:
        """Counts of `expired` rows, held ones per hold, in one pass; and for the key walk the
        key range of the unheld ones."""
        layout = self._require_layout()
        key = layout.key
        each = [self._hold_predicate(index, scope) for index, scope in enumerate(holds.scopes)]
        held = Predicate.any_of(each)
        # With an index on the time column, each count below reads only its range. Without
        # one, every query reads the whole table: then they are one pass, each count limited
        # to the expired rows by its CASE (at 2,000,000 FreePBX cel rows, a third of the time).
        one_pass = layout.strategy != "time_index"
        among = f"{expired.sql} AND " if one_pass else ""
        columns = [f"COUNT(CASE WHEN {expired.sql} THEN 1 END)" if one_pass else "COUNT(*)"]
        columns += [f"COUNT(CASE WHEN {among}{part.sql} THEN 1 END)" for part in each]
        if held is not None:
            columns.append(f"COUNT(CASE WHEN {among}{held.sql} THEN 1 END)")
        if walk:
            unheld = "1 = 1" if held is None else held.negated().sql
            columns += [
                f"{edge}(CASE WHEN {among}{unheld} THEN {key} END)" for edge in ("MIN", "MAX")
            ]

        guard = self._time_guard()
        undated = f"{self._time_sql} IS NULL OR {self._time_sql} < :floor" + (
            f" OR NOT ({guard})" if guard else ""
        )
        whole = ["COUNT(*)", f"COUNT(CASE WHEN {undated} THEN 1 END)"]
        if one_pass:
            # Undated are the rows not dated: the guard (date functions on SQLite) once less.
            dated = f"CASE WHEN {self._time_sql} >= :floor" + (f" AND {guard}" if guard else "")
            statement = _bind(
                f"SELECT {', '.join(columns)}, COUNT(*), "
                f"COUNT(*) - COUNT({dated} THEN 1 END), "
                f"MIN({dated} THEN {self._time_sql} END) FROM {self._table_sql}",
                expired,
                held,
            )
        else:
            statement = _bind(
                f"SELECT {', '.join(columns)} FROM {self._table_sql} WHERE {expired.sql}",
                expired,
                held,
            )
        totals = text(f"SELECT {', '.join(whole)} FROM {self._table_sql}")

        def count(connection: Connection) -> tuple[tuple[Any, ...], tuple[Any, ...], Any]:
            if one_pass:
                row = tuple(connection.execute(*statement).one())
                return row[-3:-1], row[: len(columns)], row[-1]
            all_rows = tuple(connection.execute(totals, {"floor": self._floor()}).one())
            counts = tuple(connection.execute(*statement).one())
            return all_rows, counts, self._read_oldest(connection)

        (total, without_time), counts, oldest = self._db.retrying("surveying", count)
        walk_range: tuple[Any, Any] = (counts[-2], counts[-1]) if walk else (None, None)
        in_range = int(counts[0] or 0)
        held_by: Counter[str] = Counter()
        for scope, number in zip(holds.scopes, counts[1 : 1 + len(each)], strict=True):
            held_by[scope.hold_id] += int(number or 0)
        held_rows = int(counts[1 + len(each)] or 0) if held is not None else 0
        survey = Survey(
            unit="rows",
            total=int(total or 0),
            expired=in_range - held_rows,
            oldest=stored_instant(oldest, self._time_kind, self._zone),
            # NULL (or, stored as text, no date at all): never expires, so never deleted
            skipped={UNDATED: int(without_time)} if without_time else {},
            held=held_rows,
            held_by=dict(held_by),
        )
        return survey, walk_range

    def _read_oldest(self, connection: Connection) -> Any:
        """The oldest stored time, leaving out zero dates and values that are no dates."""
        guard = self._time_guard()
        return connection.execute(
            text(
                f"SELECT MIN({self._time_sql}) FROM {self._table_sql} "
                f"WHERE {self._time_sql} >= :floor{f' AND {guard}' if guard else ''}"
            ),
            {"floor": self._floor()},
        ).scalar()

    # -- planning --------------------------------------------------------------------------------

    def batches(self, cutoff: datetime, holds: Holds = NO_HOLDS) -> Iterator[Batch]:
        where = self._unheld(self._expired(cutoff), holds)
        strategy = self._require_layout().strategy
        if strategy == "key_walk":
            return self._walk_batches(cutoff, holds, where)
        if strategy == "time_index":
            return self._range_batches(where)
        return self._repeated_batches(where, ordered=True)

    def _range_batches(self, where: Predicate) -> Iterator[Batch]:
        """Each batch: the oldest rows still matching `where` up to a time (see `_plan_range`),
        deleted by that time range. Deleted rows no longer match, so the next plan moves on.

        Forward only: the next batch starts after this one's last time (at it, when this one
        took only some of the rows at that time), so neither its plan nor its delete walks the
        index entries of deleted rows, which InnoDB keeps (delete-marked) until its purge thread
        catches up. (Reading the next plan on a second connection while the delete runs was
        measured slower: the two compete for the server's CPU and the index's pages.)
        """
        number = 0
        ahead = where
        plan = self._db.retrying("planning a batch", partial(self._plan_range, ahead))
        while plan is not None:
            number += 1
            following = where & self._after(plan) if plan.more else None
            payload = _Deletion(
                ahead,
                upto=plan.upto,
                tied=plan.tied,
                ahead=None if following is None else partial(self._plan_range, following),
            )
            batch = Batch(
                number=number,
                planned=plan.count,
                span=self._day_span((plan.first, plan.last)),
                payload=payload,
            )
            self._applied = None
            yield batch
            applied = self._applied
            if applied is None or applied[0] is not batch:
                return  # not applied (a dry run): the next batch would be this one again
            if following is None or applied[1].deleted == 0:
                return  # none left, or none could be deleted; the verifying survey tells
            ahead = following
            found, plan = self._planned_ahead(payload)
            if not found:
                plan = self._db.retrying("planning a batch", partial(self._plan_range, ahead))

    def _after(self, plan: _RangePlan) -> Predicate:
        """The rows after a batch's: past its last time, or from its tied time on."""
        if plan.upto is not None:
            return Predicate(f"{self._time_sql} > :after", {"after": plan.upto})
        return Predicate(f"{self._time_sql} >= :after", {"after": plan.tied})

    def _planned_ahead(self, payload: _Deletion) -> tuple[bool, Any]:
        """The next plan `payload`'s batch read in its transaction, if that one committed."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead[0] is not payload:
            return False, None
        return True, ahead[1]

    def _plan_range(self, where: Predicate, connection: Connection) -> _RangePlan | None:
        """The next batch, from one summary row of the oldest rows matching `where`.

        Along the time index: the time of the (n+1)th oldest row (`stop`), then the count, first
        and last time of the rows before it. Those are at most n, and the batch is all of them:
        every row matching `where` up to their last time. Without an (n+1)th row, the batch is
        every row left. When all of the first n+1 rows have the time `stop`, the batch is n of
        the rows at that time. So each batch is at most n rows, and its count and span are those
        of the rows its predicate covers. (Measured on MariaDB 10.11: a third of the time of
        reading the n oldest rows' times twice and counting the rows at the last.)

        Mostly the nth and (n+1)th oldest times differ: then one index read to the (n+1)th row
        says it all (the batch is the n rows up to the nth time; half the time again).
        """
        size = self._batch_size
        table, time_sql = self._table_sql, self._time_sql
        edge = _bind(
            f"SELECT COUNT(*), MIN(e.t), CASE WHEN MIN(e.t) < MAX(e.t) THEN 1 ELSE 0 END, "
            # the first row in index order: MIN() under two lower bounds (the floor and the
            # previous batch's end) reads the whole range on MariaDB
            f"(SELECT {time_sql} FROM {table} WHERE {where.sql} ORDER BY {time_sql} LIMIT 1) "
            f"FROM (SELECT {time_sql} AS t FROM {table} WHERE {where.sql} "
            f"ORDER BY {time_sql} LIMIT 2 OFFSET :edge) AS e",
            where,
            edge=size - 1,
        )
        rows, nth, apart, first = connection.execute(*edge).one()
        if rows == 2 and apart:
            return _RangePlan(size, first, nth, upto=nth)
        stop = (
            f"SELECT {time_sql} FROM {table} WHERE {where.sql} "
            f"ORDER BY {time_sql} LIMIT 1 OFFSET :n"
        )
        statement = _bind(
            f"SELECT COUNT(*), MIN({time_sql}), MAX({time_sql}), MAX(s.stop) "
            f"FROM {table}, (SELECT ({stop}) AS stop) AS s "
            f"WHERE {where.sql} AND (s.stop IS NULL OR {time_sql} < s.stop)",
            where,
            n=size,
        )
        count, first, last, following = connection.execute(*statement).one()
        if count:
            return _RangePlan(int(count), first, last, upto=last, more=following is not None)
        # No row before `stop` (and so none to aggregate it from): none matches at all, or the
        # first n+1 share one time.
        following = connection.execute(*_bind(stop, where, n=size)).scalar()
        if following is None:
            return None
        return _RangePlan(size, following, following, tied=following)

    def _repeated_batches(self, where: Predicate, ordered: bool) -> Iterator[Batch]:
        """Each batch: the first rows still matching `where` (the oldest, when `ordered` and
        the time column is indexed). Deleted rows no longer match, so the next read moves on."""
        layout = self._require_layout()
        number = 0
        while True:
            size = self._batch_size
            statement = _bind(self._plan_read_sql(where, ordered), where, n=size)
            rows = self._db.retrying("planning a batch", partial(read_rows, *statement))
            if not rows:
                return
            number += 1
            keys = [row[0] for row in rows] if layout.key is not None else None
            batch = Batch(
                number=number,
                planned=len(rows),
                span=self._day_span(row[-1] for row in rows),
                payload=_Deletion(where, keys=keys, ordered=ordered),
            )
            self._applied = None
            yield batch
            applied = self._applied
            if applied is None or applied[0] is not batch:
                # Not applied (a dry run): the next batch would be this one again.
                return
            if len(rows) < size or applied[1].deleted == 0:
                # Fewer than n matched, so none are left; or none could be deleted and the
                # next read would plan the same rows. The verifying survey reports what remains.
                return

    def _walk_batches(self, cutoff: datetime, holds: Holds, where: Predicate) -> Iterator[Batch]:
        """Each batch: the next n key values; only its rows matching `where` count and get
        deleted. The plan is one summary row: how many match, their first and last time."""
        low, high = self._walk_bounds(cutoff, holds, where)
        if low is None or high is None:
            return
        last = low - 1  # integer keys: the walk starts just below the first expired one
        number = 0
        planned: tuple[Any, Any, tuple[Any, Any, Any, Any]] | None = None  # read ahead
        while last < high:
            if planned is not None and planned[0] == last:
                _, upper, summary = planned
            else:
                upper = min(last + self._batch_size, high)
                summary = self._db.retrying(
                    "planning a batch", partial(self._plan_walk, where, last, upper, high)
                )
            planned = None
            count, first, latest, following = summary
            following_last = None if following is None else max(upper, following - 1)
            if count:
                number += 1
                payload = _Deletion(
                    where,
                    walk=(last, upper),
                    ahead=None
                    if following_last is None or following_last >= high
                    else partial(self._walk_ahead, where, following_last, high),
                )
                yield Batch(
                    number=number,
                    planned=int(count),
                    span=self._day_span((first, latest)),
                    payload=payload,
                )
                planned = self._planned_ahead(payload)[1]
            if following_last is None:
                return
            last = following_last

    def _walk_ahead(
        self, where: Predicate, last: Any, end: Any, connection: Connection
    ) -> tuple[Any, Any, tuple[Any, Any, Any, Any]]:
        upper = min(last + self._batch_size, end)
        return last, upper, self._plan_walk(where, last, upper, end, connection)

    def _plan_walk(
        self, where: Predicate, last: Any, upper: Any, end: Any, connection: Connection
    ) -> tuple[Any, Any, Any, Any]:
        """Rows matching `where` with keys in (last, upper]: count, first and last time; and the
        lowest key above `upper` up to `end` when none matched (sparse keys: the walk skips to
        it), else `upper` + 1."""
        key = self._require_layout().key
        statement = _bind(
            f"SELECT COUNT(*), MIN({self._time_sql}), MAX({self._time_sql}) "
            f"FROM {self._table_sql} WHERE {key} > :last AND {key} <= :hi AND {where.sql}",
            where,
            last=last,
            hi=upper,
        )
        count, first, latest = connection.execute(*statement).one()
        if count:
            return count, first, latest, upper + 1
        after = f"SELECT MIN({key}) FROM {self._table_sql} WHERE {key} > :hi AND {key} <= :end"
        following = connection.execute(text(after), {"hi": upper, "end": end}).scalar()
        return count, first, latest, following

    def _walk_bounds(self, cutoff: datetime, holds: Holds, where: Predicate) -> tuple[Any, Any]:
        """The lowest and highest key of rows to delete: from the survey, else one scan now."""
        cached, self._walk_range = self._walk_range, None
        if cached is not None and cached[:2] == (cutoff, holds):
            return cached[2]
        key = self._require_layout().key
        statement = _bind(
            f"SELECT MIN({key}), MAX({key}) FROM {self._table_sql} WHERE {where.sql}", where
        )
        row = self._db.retrying(
            "finding the expired key range",
            lambda connection: connection.execute(*statement).one(),
        )
        return row[0], row[1]

    # -- data subjects ---------------------------------------------------------------------------

    def subject_fields(self) -> list[str]:
        files = [self._file_name] if self._file_parts is not None else []
        return self._subject_names + files

    def find(self, subject: Subject, holds: Holds = NO_HOLDS) -> Iterator[Found]:
        naming = self._naming(subject)
        held = self._held_any(holds)
        flag = "0" if held is None else f"CASE WHEN {held.sql} THEN 1 ELSE 0 END"
        shown = list(self._subject_sql)
        if self._file_parts is not None:
            shown.append(self._file_sql)
        statement = _bind(
            f"SELECT {', '.join([self._time_sql, flag, *shown])} "
            f"FROM {self._table_sql} WHERE {naming.sql} ORDER BY {self._time_sql}",
            naming,
            held,
        )
        rows = self._db.retrying("searching for a person's rows", partial(read_rows, *statement))
        return iter([self._found(row) for row in rows])

    def _found(self, row: tuple[Any, ...]) -> Found:
        """What a row says about its subject: the time, the subject columns and the file's base
        name (the folders name nobody), nothing else."""
        fields = {self._time_name: _shown(row[0])} if row[0] is not None else {}
        for name, value in zip(self.subject_fields(), row[2:], strict=True):
            if value is None:
                continue
            shown = _shown(value)
            fields[name] = shown.rsplit("/", 1)[-1] if name == self._file_name else shown
        return Found(
            when=stored_instant(row[0], self._time_kind, self._zone),
            held=bool(row[1]),
            where=self.label,
            fields=fields,
        )

    def subject_batches(self, subject: Subject, holds: Holds = NO_HOLDS) -> Iterator[Batch]:
        return self._repeated_batches(self._unheld(self._naming(subject), holds), ordered=False)

    def _naming(self, subject: Subject) -> Predicate:
        """Rows where a subject column holds one of the subject's stored forms, or (with
        subject_in_file_name) the file's name has one as a part."""
        naming = self._subject_naming(subject, "who")
        if naming is None:
            raise StoreError(
                f"{self.label}: this table cannot be searched for a person's rows because no "
                "subject_columns are set; set subject_columns to the columns holding numbers "
                "and extensions (FreePBX cdr: src, dst, cnum, did), or subject_in_file_name: "
                "true when the file names in file_column carry the numbers of the call"
            )
        return naming

    def _subject_naming(self, subject: Subject, name: str) -> Predicate | None:
        """Rows naming `subject`, never NULL; None when this table cannot tell whose a row is.
        `name` prefixes the parameters."""
        parts: list[Predicate] = []
        if self._subject_sql:
            parts.append(self._column_naming(subject, name))
        if self._file_parts is not None:
            parts.append(self._file_naming(subject, name, *self._file_parts))
        return Predicate.any_of(parts)

    def _file_naming(self, subject: Subject, name: str, parts: str, digits: str) -> Predicate:
        """Rows whose file's name has one of the subject's forms as a whole part: `-<form>-`
        occurs in its `parts`. A number's forms are looked for in its `digits` (`.()` taken
        out), as subjects.matches compares them; extensions as written."""
        params: dict[str, Any] = {}
        tests: list[str] = []
        for kind, values, where in (
            ("number", subject.numbers, digits),
            ("extension", subject.extensions, parts),
        ):
            usable = sorted(v for v in values if v and not _NAME_SEPARATORS.search(v))
            for index, value in enumerate(usable):
                param = f"{name}_{kind}{index}"
                params[param] = f"-{value}-"
                tests.append(self._contains(where, param))
        if not tests:
            return Predicate("1 = 0")  # no form of theirs can be a part of a name
        return Predicate(f"({self._file_sql} IS NOT NULL AND ({' OR '.join(tests)}))", params)

    def _contains(self, haystack: str, param: str) -> str:
        """`haystack` holds the parameter's text, compared byte for byte (case too)."""
        return self._dialect.contains(haystack, param)

    def _column_naming(self, subject: Subject, name: str) -> Predicate:
        """A subject column holds one of the forms, as written or with blanks and `-./()` taken
        out (`030 123456`, `+49 (30) 123-456`), or is a caller id with one of them between `<`
        and `>` (`"Alice" <+4930123456>`, as Asterisk writes `clid`), as subjects.Subject's
        matches and matches_callerid compare them."""
        params: dict[str, Any] = {name: sorted(subject.values)}
        # For a value with several `<`: `<form>` found byte for byte (`<+4930123456>` is no
        # part of `<+49301234567>`), each a parameter with no pattern characters to escape.
        inside: list[tuple[str, bool]] = []
        for kind, values, stripped in (
            ("number", subject.numbers, True),
            ("extension", subject.extensions, False),
        ):
            for index, value in enumerate(sorted(values)):
                param = f"{name}_callerid_{kind}{index}"
                params[param] = f"<{value}>"
                inside.append((param, stripped))
        tests = []
        for c in self._subject_sql:
            options = [f"{c} IN :{name}", f"{_stripped(c)} IN :{name}"]
            if inside:
                options.append(self._callerid_naming(c, name, inside))
            # IS NOT NULL: a NULL would make the whole condition NULL, and NOT (NULL) keeps a
            # row that names nobody.
            tests.append(f"({c} IS NOT NULL AND ({' OR '.join(options)}))")
        return Predicate(f"({' OR '.join(tests)})", params, frozenset({name}))

    def _callerid_naming(self, c: str, name: str, inside: list[tuple[str, bool]]) -> str:
        """`c` is a caller id with one of the forms (`name`) between `<` and `>`.

        A value without `<` costs one test, and one with a single `<` (Asterisk's clid) one
        comparison of what its `<...>` holds; only a value with several is searched for each
        `<form>` parameter in `inside`. CASE is evaluated in this order on every server.
        """
        bracketed, closed = self._bracketed(c)
        # The forms have no separators, so this also finds a form as written.
        single = f"({closed} AND {_stripped(bracketed)} IN :{name})"
        several = " OR ".join(
            self._contains(_stripped(c) if stripped else c, param) for param, stripped in inside
        )
        return (
            f"(CASE WHEN {self._position(c, '<')} = 0 THEN 1 = 0 "
            f"WHEN LENGTH({c}) - LENGTH(REPLACE({c}, '<', '')) = 1 THEN {single} "
            f"ELSE ({several}) END)"
        )

    def _bracketed(self, c: str) -> tuple[str, str]:
        """For a value with one `<`: what it and the first `>` after it enclose, and whether
        there is such a `>` at all."""
        after = f"SUBSTR({c}, {self._position(c, '<')} + 1)"  # SUBSTR: all three have it
        bracketed = self._dialect.up_to(after, ">")
        return bracketed, f"{self._position(after, '>')} > 0"

    def _position(self, text: str, character: Literal["<", ">"]) -> str:
        """Where `character` first occurs in `text`, 0 when it does not."""
        return self._dialect.position(text, character)

    # -- holds -----------------------------------------------------------------------------------

    def _unheld(self, where: Predicate, holds: Holds) -> Predicate:
        held = self._held_any(holds)
        return where if held is None else where & held.negated()

    def _held_any(self, holds: Holds) -> Predicate | None:
        return Predicate.any_of(
            [self._hold_predicate(index, scope) for index, scope in enumerate(holds.scopes)]
        )

    def _hold_predicate(self, index: int, scope: HoldScope) -> Predicate:
        """Rows `scope` covers: in its window (a row of unknown time is in every window) and,
        where the table tells whose a row is, naming its subject. Never NULL, so NOT of it is
        safe."""
        time_sql = self._time_sql
        parts: list[str] = []
        params: dict[str, Any] = {}
        window: list[str] = []
        edges: tuple[tuple[Side, datetime | None, str], ...] = (
            ("from", scope.start, ">="),
            ("to", scope.end, "<"),
        )
        for side, edge, operator in edges:
            if edge is not None:
                name = f"hold{index}_{side}"
                params[name] = self._hold_bound(edge, side)
                window.append(f"{time_sql} {operator} :{name}")
        if window:
            guard = self._time_guard()
            unknown = f"{time_sql} IS NULL" + (f" OR NOT ({guard})" if guard else "")
            parts.append(f"({unknown} OR ({' AND '.join(window)}))")
        expanding: frozenset[str] = frozenset()
        naming = None
        if scope.subject is not None:
            naming = self._subject_naming(scope.subject, f"hold{index}_who")
        if naming is not None:
            params.update(naming.params)
            expanding = naming.expanding
            parts.append(naming.sql)
        return Predicate(" AND ".join(parts) or EVERY_ROW.sql, params, expanding)

    def _hold_bound(self, instant: datetime, side: Side) -> Any:
        return hold_bound(self._time_kind, self._dialect, instant, self._zone, side)

    # -- deleting --------------------------------------------------------------------------------

    def apply(self, batch: Batch, cutoff: datetime) -> BatchResult:
        """Carry out a batch with the predicate it was planned with (its payload)."""
        plan = batch.payload
        if isinstance(plan, _Rewrite):
            started = time.monotonic()
            result = self._rewrite(plan)
            self._adapt_batch_size(len(plan.rows), time.monotonic() - started)
        else:
            result = self._apply_deletion(batch, plan)  # adapts the size before reading ahead
        self._applied = (batch, result)
        return result

    def _apply_deletion(self, batch: Batch, plan: _Deletion) -> BatchResult:
        def attempt(connection: Connection, plan_ahead: bool = True) -> _Attempt:
            self._ahead = None  # an earlier attempt's, read in a transaction that rolled back
            started = time.monotonic()
            deleted = self._delete(connection, plan, batch.planned)
            if plan.tied is None:
                result = _Attempt(deleted)  # the others delete every row their predicate covers
            else:
                tied = plan.where & Predicate(f"{self._time_sql} = :tied", {"tied": plan.tied})
                sql = f"SELECT COUNT(*) FROM {self._table_sql} WHERE {tied.sql}"
                left = int(connection.execute(*_bind(sql, tied)).scalar() or 0)
                result = _Attempt(deleted, left)
            if plan_ahead:
                # Sized by this batch's time, the next batch is planned before this one commits
                self._adapt_batch_size(deleted.count, time.monotonic() - started)
                if plan.ahead is not None and deleted.count:
                    self._ahead = (plan, plan.ahead(connection))
            return result

        def settle(connection: Connection, lost: _Attempt) -> _Attempt:
            """The batch's commit got no reply: keep its result if it went through, else delete
            again; when the rows say neither, the lost commit's rows are unconfirmed."""
            self._ahead = None  # the lost attempt's reading ahead: read fresh instead
            if not self._storage.transactional:
                # MyISAM and Aria apply a DELETE before answering it: COMMIT had nothing to do
                return _settled(self.label, batch.number, "went through", lost)
            if plan.keys is None and plan.walk is None and plan.upto is None and plan.tied is None:
                # any n expired rows of a table without a key: nothing tells which went
                again = attempt(connection, plan_ahead=False)
                again.unconfirmed = lost.unconfirmed + lost.deleted.count
                return _settled(self.label, batch.number, "unknown", again)
            # The same delete again: it waits for the locks the lost transaction may still hold,
            # then finds the batch's rows as they are. Under a savepoint, to take back further
            # ties of a tied batch should the lost commit have gone through.
            savepoint = connection.begin_nested()
            again = attempt(connection, plan_ahead=False)
            # the batch's rows found now, less those the lost attempt left: the ones it deleted
            present = again.deleted.count + again.left - lost.left
            if present <= 0:
                savepoint.rollback()
                return _settled(self.label, batch.number, "went through", lost)
            savepoint.commit()
            again.unconfirmed = lost.unconfirmed
            if present >= lost.deleted.count:
                return _settled(self.label, batch.number, "did not go through", again)
            # Some are gone: taken by someone else after it rolled back, or by it after all
            again.unconfirmed += lost.deleted.count
            return _settled(self.label, batch.number, "unknown", again)

        try:
            outcome = self._db.retrying("deleting a batch", attempt, write=True, settle=settle)
        except RolledBack as error:
            if not self._storage.transactional:
                # MyISAM and Aria keep what a statement deleted before it failed: not known
                raise StoreError(str(error)) from None
            raise BatchFailed(
                str(error), BatchResult(deleted=0), error.code, error.sqlstate
            ) from None
        deleted = outcome.deleted
        if deleted.times is not None:
            span = self._day_span(deleted.times)
        elif deleted.count == batch.planned or (plan.tied is not None and deleted.count):
            # The plan counted, under the delete's own predicate, the rows it would delete and
            # their first and last time: when as many went, those were them (rows of `tied`
            # have that one time however many went).
            span = batch.span
        else:
            span = None  # the table changed between plan and delete: the span is not known
        result = BatchResult(deleted=deleted.count, span=span)
        if self._files is not None:
            result = self._remove_files(deleted, result)
        if outcome.unconfirmed:
            # As a reconciled run says it: at most this many more, unconfirmed
            counts = {**result.counts, UNCONFIRMED_DELETED_MAX: outcome.unconfirmed}
            result = replace(result, counts=counts)
        return result

    def _delete(self, connection: Connection, plan: _Deletion, planned: int) -> _Deleted:
        # RETURNING only for the files the rows name: counts come from rowcount, spans from the
        # plan, and returned rows cost the server and the driver.
        files = self._files is not None
        if plan.walk is not None:
            last, upper = plan.walk
            statement, params = _bind(self._walk_delete_sql(plan.where, files), plan.where)
            params.update(last=last, hi=upper)
            file_read = self._locking_file_read(self._walk_where(plan.where), plan.where)
            deleted = self._run_delete(connection, statement, params, file_read)
        elif plan.upto is not None:
            # A range, without ORDER BY or LIMIT: binlog_format MIXED logs it as one statement.
            upto = plan.where & Predicate(f"{self._time_sql} <= :upto", {"upto": plan.upto})
            statement, params = _bind(
                f"DELETE FROM {self._table_sql} WHERE {upto.sql}{self._returning(files)}", upto
            )
            file_read = self._locking_file_read(upto.sql, upto)
            deleted = self._run_delete(connection, statement, params, file_read)
        elif plan.tied is not None:
            deleted = self._delete_tied(connection, plan, planned)
        elif plan.keys is None:
            # Refused at open without RETURNING: a second ORDER BY ... LIMIT may pick other ties.
            deleted = self._run_delete(
                connection,
                *_bind(self._keyless_delete_sql(plan.where, plan.ordered), plan.where, n=planned),
            )
        else:
            deleted = self._delete_keys(connection, plan.keys, plan.where)
        if self._files is not None and deleted.files:
            self._keep_files_still_named(connection, deleted)
        return deleted

    def _delete_tied(self, connection: Connection, plan: _Deletion, planned: int) -> _Deleted:
        """`planned` of the rows matching the plan's predicate at its time `tied`."""
        key = self._require_layout().key
        tied = plan.where & Predicate(f"{self._time_sql} = :tied", {"tied": plan.tied})
        if key is None:  # MariaDB/MySQL only; file_column there needs RETURNING (open)
            returning = self._returning(self._files is not None)
            sql = f"DELETE FROM {self._table_sql} WHERE {tied.sql} LIMIT :n{returning}"
            return self._run_delete(connection, *_bind(sql, tied, n=planned))
        statement = _bind(
            f"SELECT {key} FROM {self._table_sql} WHERE {tied.sql} LIMIT :n", tied, n=planned
        )
        keys = list(connection.execute(*statement).scalars())
        return self._delete_keys(connection, keys, tied)

    def _delete_keys(self, connection: Connection, keys: list[Any], where: Predicate) -> _Deleted:
        key = self._require_layout().key
        returning = self._returning()
        # One array parameter where the dialect has them: psycopg allows at most 65535
        # parameters per statement.
        match = self._dialect.array_match(f"{key}", "keys")
        if match is not None:
            statement, params = _bind(
                f"DELETE FROM {self._table_sql} WHERE {match} AND {where.sql}{returning}",
                where,
                keys=keys,
            )
            return self._run_delete(connection, statement, params)
        total = _Deleted(0, [] if returning else None)
        for start in range(0, len(keys), IN_LIST_CHUNK):
            chunk = Predicate(
                f"{key} IN :keys",
                {"keys": keys[start : start + IN_LIST_CHUNK]},
                frozenset({"keys"}),
            )
            matching = chunk & where
            statement, params = _bind(
                f"DELETE FROM {self._table_sql} WHERE {matching.sql}{returning}", matching
            )
            file_read = self._locking_file_read(matching.sql, matching)
            part = self._run_delete(connection, statement, params, file_read)
            total.count += part.count
            if total.times is not None and part.times is not None:
                total.times.extend(part.times)
            total.files.extend(part.files)
        return total

    def _run_delete(
        self,
        connection: Connection,
        statement: TextClause,
        params: dict[str, Any],
        file_read: TextClause | None = None,
    ) -> _Deleted:
        """Delete; the rows' times when the database can return them, and the files they named.

        Without RETURNING, `file_read` selects the same rows FOR UPDATE first, in the same
        transaction, so the files read are exactly those of the rows the delete removes.
        """
        files: list[Any] = []
        if file_read is not None:
            files = list(connection.execute(file_read, params).scalars())
        result = connection.execute(statement, params)
        if result.returns_rows:
            rows = result.all()
            if self._files is not None:
                files = [row[1] for row in rows]
            return _Deleted(len(rows), [row[0] for row in rows], files)
        return _Deleted(result.rowcount, None, files)

    def _keep_files_still_named(self, connection: Connection, deleted: _Deleted) -> None:
        """Leave out the files a remaining row names; read in the deleting transaction.

        MariaDB compares text without regard to case or trailing spaces: a match that loose only
        keeps more files, so values are compared the same way here.
        """
        values = list(dict.fromkeys(v for v in deleted.files if _names_a_file(v)))
        still_named: set[Any] = set()
        array = self._dialect.array_match(self._file_sql, "values")
        if array is not None:
            statement = text(
                f"SELECT DISTINCT {self._file_sql} FROM {self._table_sql} WHERE {array}"
            )
        else:
            statement = text(
                f"SELECT DISTINCT {self._file_sql} FROM {self._table_sql} "
                f"WHERE {self._file_sql} IN :values"
            ).bindparams(bindparam("values", expanding=True))
        for start in range(0, len(values), IN_LIST_CHUNK):
            chunk = values[start : start + IN_LIST_CHUNK]
            found = connection.execute(statement, {"values": chunk}).scalars()
            still_named.update(_loose(value) for value in found)
        deleted.files = [value for value in values if _loose(value) not in still_named]
        deleted.still_referenced = len(values) - len(deleted.files)

    def _remove_files(self, deleted: _Deleted, result: BatchResult) -> BatchResult:
        """Unlink the committed rows' files; count what was left and why, never naming a file."""
        files = self._files
        if files is None:
            return result
        skipped: Counter[str] = Counter()
        if deleted.still_referenced:
            skipped[STILL_REFERENCED] = deleted.still_referenced
        removed = removed_bytes = 0
        for value in deleted.files:
            reason, size = files.remove(value)
            if reason is None:
                removed += 1
                removed_bytes += size
            else:
                skipped[reason] += 1
        if removed or skipped:
            log.info(
                "sql store deleted files",
                store=self.label,
                files=removed,
                bytes=removed_bytes,
                **dict(sorted(skipped.items())),
            )
        if skipped[UNREMOVABLE] or skipped[UNSAFE_PATH]:
            log.warning(
                "sql store left files in place",
                store=self.label,
                unremovable=skipped[UNREMOVABLE],
                unsafe_path=skipped[UNSAFE_PATH],
            )
        return BatchResult(
            deleted=result.deleted,
            span=result.span,
            bytes=removed_bytes,
            skipped=dict(sorted(skipped.items())),
        )

    # -- anonymizing -----------------------------------------------------------------------------

    def anonymize_survey(
        self, cutoff: datetime, holds: Holds = NO_HOLDS, since: datetime | None = None
    ) -> Survey:
        self._require_anonymize()
        return self._survey(self._expired(cutoff) & self._since(since), holds)[0]

    def anonymize_batches(
        self, cutoff: datetime, holds: Holds = NO_HOLDS, since: datetime | None = None
    ) -> Iterator[Batch]:
        self._require_anonymize()
        where = self._unheld(self._expired(cutoff) & self._since(since), holds)
        key = self._require_layout().key
        if key is not None and key != "ctid":
            return self._rewrite_batches_by_key(where, key)
        # PostgreSQL gives an updated row a new ctid: the walk goes by time alone there.
        return self._rewrite_batches_by_time(where, key)

    def _rewrite_batches_by_key(self, where: Predicate, key: str) -> Iterator[Batch]:
        """Forward along (time, key) from the last row read: each row is read once per run,
        whatever the rewrite does to it (a coarsened time only moves back)."""
        time_sql = self._time_sql
        read = f"SELECT {key}, {self._rewritten_sql()} FROM {self._table_sql} WHERE {where.sql}"
        after = (
            f" AND ({time_sql} > :after_time OR ({time_sql} = :after_time AND {key} > :after_key))"
        )
        order = f" ORDER BY {time_sql}, {key} LIMIT :n"
        cursor: dict[str, Any] = {}
        number = 0
        while True:
            size = self._batch_size
            statement = _bind(read + (after if cursor else "") + order, where, n=size, **cursor)
            rows = self._db.retrying("planning an anonymize batch", partial(read_rows, *statement))
            if not rows:
                return
            number += 1
            yield self._rewrite_batch(number, where, [(row[0], row[1:]) for row in rows])
            if len(rows) < size:
                return
            cursor = {"after_time": rows[-1][1], "after_key": rows[-1][0]}

    def _rewrite_batches_by_time(self, where: Predicate, key: str | None) -> Iterator[Batch]:
        """Forward by time: a batch takes whole groups of rows sharing a time, so the next one
        starts strictly after the last time read (no key, or one that changes on update)."""
        columns = self._rewritten_sql() if key is None else f"{key}, {self._rewritten_sql()}"
        read = f"SELECT {columns} FROM {self._table_sql} WHERE {where.sql}"
        after: Any = None
        number = 0
        while True:
            rows, full = self._db.retrying(
                "planning an anonymize batch",
                partial(self._read_time_groups, read, where, after, 0 if key is None else 1),
            )
            if not rows:
                return
            number += 1
            batch_rows = [(None, row) if key is None else (row[0], row[1:]) for row in rows]
            yield self._rewrite_batch(number, where, batch_rows)
            if not full:
                return
            after = batch_rows[-1][1][0]

    def _read_time_groups(
        self, read: str, where: Predicate, after: Any, position: int, connection: Connection
    ) -> tuple[list[tuple[Any, ...]], bool]:
        """Up to batch_size rows after the time `after` (the time at `position` of each row), the
        last time's rows completed; and whether the limit was reached (more may follow)."""
        size = self._batch_size
        time_sql = self._time_sql
        later = f" AND {time_sql} > :after_time" if after is not None else ""
        rows = read_rows(
            *_bind(f"{read}{later} ORDER BY {time_sql} LIMIT :n", where, n=size, after_time=after),
            connection,
        )
        if len(rows) < size:
            return rows, False
        last = rows[-1][position]
        group = read_rows(*_bind(f"{read} AND {time_sql} = :tie", where, tie=last), connection)
        return [row for row in rows if row[position] != last] + group, True

    def _rewrite_batch(
        self, number: int, where: Predicate, rows: list[tuple[Any, tuple[Any, ...]]]
    ) -> Batch:
        return Batch(
            number=number,
            planned=len(rows),
            span=self._day_span(values[0] for _, values in rows),
            payload=_Rewrite(where, rows),
        )

    def _rewrite(self, plan: _Rewrite) -> BatchResult:
        """Rewrite the rows whose values change, each only if it still holds the values read."""
        names = [name for name, _ in self._rewritten]
        pending = []
        for key, values in plan.rows:
            original = dict(zip(names, values, strict=True))
            changes = anonymize_row(self._transforms, original)
            if changes:
                pending.append((key, values, {**original, **changes}))
        unchanged = len(plan.rows) - len(pending)

        def settle(connection: Connection, lost: int) -> int:
            """The batch's commit got no reply: rewrite again what still holds the values read
            (a rewrite is idempotent), and count the rows that already hold the new values as
            rewritten by the lost commit."""
            again, already = self._update_rows(connection, plan.where, pending, settling=True)
            kept = min(already, lost)
            commit = (
                "went through" if not again else "did not go through" if not kept else "unknown"
            )
            log.warning(
                "sql store checked a lost commit",
                store=self.label,
                action="anonymizing",
                commit=commit,
                anonymized=again + kept,
            )
            return again + kept

        written = 0
        if pending:
            try:
                written = self._db.retrying(
                    "anonymizing a batch",
                    lambda connection: self._update_rows(connection, plan.where, pending)[0],
                    write=True,
                    settle=settle,
                )
            except RolledBack as error:
                if not self._storage.transactional:
                    raise StoreError(str(error)) from None  # rows rewritten before it failed stay
                raise BatchFailed(
                    str(error), BatchResult(deleted=0), error.code, error.sqlstate
                ) from None
        changed = len(pending) - written
        return BatchResult(
            deleted=0,
            anonymized=written,
            span=self._day_span(values[0] for _, values, _ in pending) if written else None,
            skipped={CHANGED_SINCE_PLANNED: changed} if changed > 0 else {},
            counts={"unchanged": unchanged} if unchanged else {},
        )

    def _update_rows(
        self,
        connection: Connection,
        where: Predicate,
        pending: list[tuple[Any, tuple[Any, ...], dict[str, Any]]],
        *,
        settling: bool = False,
    ) -> tuple[int, int]:
        """One UPDATE per row in this transaction; the number of rows rewritten, and when
        `settling` a lost commit, of the rows not rewritten that already hold the new values.

        Identical keyless rows are all rewritten by the first of their statements (each gets
        the same values), and the later ones find nothing: the sum still counts each row once.
        """
        key = self._require_layout().key
        targets = list(self._transforms)
        quote = self._preparer().quote
        same = self._dialect.null_safe_equal
        identity = [f"{sql} {same} :old_{i}" for i, (_, sql) in enumerate(self._rewritten)]
        if key is not None:
            identity.insert(0, "ctid = CAST(:key AS tid)" if key == "ctid" else f"{key} = :key")
        assignments = ", ".join(f"{quote(name)} = :new_{i}" for i, name in enumerate(targets))
        statement, common = _bind(
            f"UPDATE {self._table_sql} SET {assignments} "
            f"WHERE {' AND '.join(identity)} AND {where.sql}",
            where,
        )
        # A rewritten row has a new ctid: there, the new values alone find it
        found = identity[1:] if key == "ctid" else identity
        check, _ = _bind(
            f"SELECT COUNT(*) FROM {self._table_sql} "
            f"WHERE {' AND '.join(found).replace(':old_', ':now_')} AND {where.sql}",
            where,
        )
        names = [name for name, _ in self._rewritten]
        written = already = 0
        checked: set[tuple[Any, tuple[Any, ...]]] = set()
        for row_key, values, rewritten in pending:
            params = dict(common)
            params.update((f"old_{i}", value) for i, value in enumerate(values))
            params.update((f"new_{i}", rewritten[name]) for i, name in enumerate(targets))
            if key is not None:
                params["key"] = row_key
            count = connection.execute(statement, params).rowcount
            written += count
            row = (None if key in (None, "ctid") else row_key, values)
            if settling and not count and row not in checked:
                checked.add(row)  # rows found by their values: each set of values once
                params.update((f"now_{i}", rewritten[name]) for i, name in enumerate(names))
                already += int(connection.execute(check, params).scalar() or 0)
        return written, already

    def smallest_group(self, cutoff: datetime) -> int | None:
        """The smallest group of expired rows alike in every transformed column that is not
        blanked (a blanked column is alike in all rows)."""
        if not self.anonymizes:
            return None
        quote = self._preparer().quote
        grouping = [
            quote(name)
            for name, transform in self._transforms.items()
            if transform.groups and not isinstance(transform, Blank | _ToNull)
        ]
        expired = self._expired(cutoff)
        if grouping:
            sql = (
                f"SELECT MIN(cnt) FROM (SELECT COUNT(*) AS cnt FROM {self._table_sql} "
                f"WHERE {expired.sql} GROUP BY {', '.join(grouping)}) AS sizes"
            )
        else:
            sql = f"SELECT COUNT(*) FROM {self._table_sql} WHERE {expired.sql}"
        statement = _bind(sql, expired)
        smallest = self._db.retrying(
            "measuring the smallest group",
            lambda connection: connection.execute(*statement).scalar(),
        )
        return int(smallest) if smallest else None

    def _require_anonymize(self) -> None:
        if not self._transforms:
            raise StoreError(
                f"{self.label}: no columns to anonymize; set anonymize to each column's transform"
            )

    def _rewritten_sql(self) -> str:
        return ", ".join(sql for _, sql in self._rewritten)

    def _since(self, since: datetime | None) -> Predicate:
        """Rows not older than the previous complete run's cutoff: the complement of what that
        run's `time < bound` covered."""
        if since is None:
            return EVERY_ROW
        return Predicate(f"{self._time_sql} >= :since", {"since": self._bound(since)})

    # -- statements ------------------------------------------------------------------------------

    def _expired(self, cutoff: datetime) -> Predicate:
        """Older than the cutoff, and a real time: a zero date (`0000-00-00`, written by old
        MySQL modes for an invalid time) says nothing about the call's age, so it never
        expires; the survey counts it as undated."""
        guard = self._time_guard()
        sql = f"{self._time_sql} < :bound AND {self._time_sql} >= :floor" + (
            f" AND {guard}" if guard else ""
        )
        return Predicate(sql, {"bound": self._bound(cutoff), "floor": self._floor()})

    def _time_guard(self) -> str | None:
        """Only values in the column's form are compared as times; the rest are undated."""
        return self._dialect.time_guard(self._time_kind, self._time_sql)

    def _order_by_time(self, ordered: bool = True) -> str:
        return f" ORDER BY {self._time_sql}" if ordered and self.strategy == "time_index" else ""

    def _returning(self, wanted: bool = True) -> str:
        """RETURNING the time (and the file column), where the database has it."""
        if not (wanted and self._db.delete_returning):
            return ""
        files = f", {self._file_sql}" if self._files is not None else ""
        return f" RETURNING {self._time_sql}{files}"

    def _locking_file_read(self, where: str, *parts: Predicate) -> TextClause | None:
        """Without RETURNING: the file column of the rows a delete `where` will remove."""
        if self._files is None or self._db.delete_returning:
            return None
        lock = self._dialect.for_update
        sql = f"SELECT {self._file_sql} FROM {self._table_sql} WHERE {where}{lock}"
        return _bind(sql, *parts)[0]

    def _plan_read_sql(self, where: Predicate, ordered: bool) -> str:
        key = self._require_layout().key
        columns = f"{key}, {self._time_sql}" if key is not None else self._time_sql
        return (
            f"SELECT {columns} FROM {self._table_sql} WHERE {where.sql}"
            f"{self._order_by_time(ordered)} LIMIT :n"
        )

    def _keyless_delete_sql(self, where: Predicate, ordered: bool, returning: bool = True) -> str:
        # MariaDB/MySQL only: the one form that bounds a batch on a table without any key.
        return (
            f"DELETE FROM {self._table_sql} WHERE {where.sql}"
            f"{self._order_by_time(ordered)} LIMIT :n{self._returning(returning)}"
        )

    def _walk_where(self, where: Predicate) -> str:
        key = self._require_layout().key
        return f"{key} > :last AND {key} <= :hi AND {where.sql}"

    def _walk_delete_sql(self, where: Predicate, returning: bool = True) -> str:
        return (
            f"DELETE FROM {self._table_sql} WHERE {self._walk_where(where)}"
            f"{self._returning(returning)}"
        )

    # -- time values -----------------------------------------------------------------------------

    def _bound(self, cutoff: datetime) -> Any:
        return time_bound(self._time_kind, self._dialect, cutoff, self._zone)

    def _floor(self) -> Any:
        return time_floor(self._time_kind, self._dialect)

    def _day_span(self, values: Iterable[Any]) -> tuple[date, date] | None:
        """The first and last day of the stored times `values`, from their least and greatest
        alone: times of one column sort as the instants they denote."""
        present = [value for value in values if value is not None]
        try:
            edges = [min(present), max(present)] if present else []
        except TypeError:  # an untyped SQLite column mixing numbers and text
            edges = present
        days = self._days(edges)
        if len(days) < len(edges):
            days = self._days(present)  # an edge is no time (garbage text): look at them all
        return (min(days), max(days)) if days else None

    def _days(self, values: Iterable[Any]) -> list[date]:
        days = []
        for value in values:
            instant = stored_instant(value, self._time_kind, self._zone)
            if instant is not None:
                days.append(instant.astimezone(self._zone).date())
        return days

    # -- clocks ----------------------------------------------------------------------------------

    def clock_skew(self) -> timedelta | None:
        return self._db.clock_skew()

    def privileges(self) -> tuple[list[str], list[str]]:
        from retentiond.stores.db.privileges import review

        # Anonymizing rewrites only the transformed columns: UPDATE on those is enough.
        needed = {"SELECT", "DELETE"} | {f"UPDATE({name})" for name in self._transforms}
        return review(self._db.engine, self._store.table, needed, self._store.schema_name)

    # -- helpers ---------------------------------------------------------------------------------

    def _require_layout(self) -> Layout:
        if self._layout is None:
            raise RuntimeError(f"{self.label}: the store is not open")
        return self._layout

    def _preparer(self) -> Any:
        return self._db.preparer


def _find_column(table: Table, wanted: str) -> Column[Any] | None:
    column = table.columns.get(wanted)
    if column is None:
        # MariaDB column names are case-insensitive; accept a unique case-insensitive match.
        matches = [c for c in table.columns if c.name.lower() == wanted.lower()]
        column = matches[0] if len(matches) == 1 else None
    return column


def _shown(value: Any) -> str:
    """A stored value as `find` prints it."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _names_a_file(value: Any) -> bool:
    """Rows without a file hold NULL or an empty string."""
    if isinstance(value, bytes):
        return bool(value.strip())
    return isinstance(value, str) and bool(value.strip())


def _loose(value: Any) -> Any:
    """A file column value as a case-insensitive, PAD SPACE collation compares it."""
    if isinstance(value, str):
        return value.rstrip(" ").casefold()
    if isinstance(value, bytes):
        return value.rstrip(b" ").lower()
    return value


def _stripped(column: str) -> str:
    """The column's text without blanks and the separators `-./()` (REPLACE is portable)."""
    expression = column
    for separator in (" ", "-", ".", "/", "(", ")"):
        expression = f"REPLACE({expression}, '{separator}', '')"
    return expression


@dataclass
class _Attempt:
    """One attempt at a deletion batch: what its transaction deleted, and for a batch of tied
    rows how many of its predicate's rows it left (the rest of the tie). `unconfirmed` rows went
    with a commit whose reply was lost and that no check could attribute."""

    deleted: _Deleted
    left: int = 0
    unconfirmed: int = 0


def _settled(label: str, batch: int, commit: str, kept: _Attempt) -> _Attempt:
    """Log what became of a batch's commit whose reply was lost, and keep `kept`."""
    log.warning(
        "sql store checked a lost commit",
        store=label,
        batch=batch,
        commit=commit,
        deleted=kept.deleted.count,
        **({UNCONFIRMED_DELETED_MAX: kept.unconfirmed} if kept.unconfirmed else {}),
    )
    return kept
