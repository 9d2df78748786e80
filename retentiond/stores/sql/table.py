"""An SQL store's table as it was opened, and the SQL fragments every statement on it shares.

Every batch carries the explicit predicate `time < bound`: a row exactly at the cutoff, or
anything newer, never matches. The bound is computed here from the run's cutoff; the database's
NOW() is never used. A zero date or a value that is no time in the column's form never expires;
the survey counts it as undated. Names in the SQL text came out of reflection, quoted by the
dialect; values are always parameters.

`SqlTable` holds the state the store's parts share (the table and column names as SQL, the time
column's form, the layout, the batch size); the parts are mixins on it, each in its module
(subjects, holds, survey, plan, delete, anonymize, describe), combined in `store.SqlStore`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from typing import Any, Literal

from sqlalchemy import Column, Table, TextClause

from retentiond.config.model import ConnectionConfig, SqlStoreConfig
from retentiond.errors import StoreError
from retentiond.policy.anonymize import Transform
from retentiond.policy.rules import Holds
from retentiond.stores.base import Batch, BatchResult, Store
from retentiond.stores.db.connection import Database
from retentiond.stores.db.dialects import Dialect, TableStorage
from retentiond.stores.db.timecols import stored_instant, time_bound, time_floor
from retentiond.stores.db.timekinds import TimeKind
from retentiond.stores.sql.file_root import FileRoot
from retentiond.stores.sql.payloads import Deletion, Segments
from retentiond.stores.sql.predicates import Predicate, bind
from retentiond.stores.sql.sizing import adapted_size

Strategy = Literal["time_index", "key_walk", "scan"]


@dataclass(frozen=True)
class Layout:
    """What reflection found and the purge strategy that follows from it."""

    strategy: Strategy
    reason: str
    key: str | None  # SQL for the row key (quoted column, ctid, rowid); None: keyless deletes


class SqlTable(Store):
    """The opened table's state and its shared statements; see the module docstring."""

    def __init__(self, store: SqlStoreConfig, connection: ConnectionConfig, zone: tzinfo) -> None:
        self.label = store.label
        self.pause = store.pause
        self.batch_size = store.batch_size
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
        # The walk's segments of unheld expired rows from the last survey, so batches() need not
        # scan again when it is asked for the same cutoff and holds.
        self._walk_range: tuple[datetime, Holds, Segments] | None = None
        # A walk took the segments since the last survey: the next survey verifies (counts only)
        self._walked = False
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
        self._ahead: tuple[Deletion, Any] | None = None  # a batch's payload: the next plan

    @property
    def strategy(self) -> Strategy:
        return self._require_layout().strategy

    @property
    def _dialect(self) -> Dialect:
        return self._db.dialect

    def _adapt_batch_size(self, rows: int, seconds: float) -> None:
        """After a batch of `rows` that took `seconds`: the size that would take `batch_time`."""
        self._batch_size = adapted_size(self._batch_size, self.batch_time, rows, seconds)

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
        return bind(sql, *parts)[0]

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

    def _columns(self, table: Table, wanted: Iterable[str], setting: str) -> list[Column[Any]]:
        """The columns a setting names; a StoreError naming every one the table lacks."""
        found = {name: find_column(table, name) for name in wanted}
        missing = [name for name, column in found.items() if column is None]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            raise StoreError(
                f"{self.label}: {setting} names column{plural} {', '.join(missing)}, not in table "
                f"{table.name}; its columns: {', '.join(c.name for c in table.columns)}. Correct "
                f"the name{plural} or remove {'them' if plural else 'it'} from {setting}"
            )
        return [column for column in found.values() if column is not None]

    # -- helpers ---------------------------------------------------------------------------------

    def _index_hint(self, column: str | None = None) -> str:
        column = column or self._time_name
        table = self._store.table
        name = self._preparer().quote(f"{table}_{column}")
        return f"CREATE INDEX {name} ON {self._table_sql} ({self._preparer().quote(column)})"

    def _require_layout(self) -> Layout:
        if self._layout is None:
            raise RuntimeError(f"{self.label}: the store is not open")
        return self._layout

    def _preparer(self) -> Any:
        return self._db.preparer


def find_column(table: Table, wanted: str) -> Column[Any] | None:
    column = table.columns.get(wanted)
    if column is None:
        # MariaDB column names are case-insensitive; accept a unique case-insensitive match.
        matches = [c for c in table.columns if c.name.lower() == wanted.lower()]
        column = matches[0] if len(matches) == 1 else None
    return column
