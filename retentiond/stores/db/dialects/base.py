"""What a database dialect is to retentiond: the SQL fragments and behaviours that differ between
MariaDB/MySQL, PostgreSQL and SQLite, as one `Dialect` object per family.

Code outside `stores/db/dialects/` never asks which database it talks to; it asks the connection's
dialect for the fragment or the answer it needs (`database.dialect.position(...)`). The defaults
here are the common case; each family's module overrides what differs there.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import URL, Connection, Table
from sqlalchemy import types as sqltypes

from retentiond.stores.db.timekinds import EPOCH_CEILING

if TYPE_CHECKING:
    from retentiond.config.model import ConnectionConfig
    from retentiond.stores.db.grants import Needed
    from retentiond.stores.db.timekinds import TimeKind


@dataclass(frozen=True)
class TableStorage:
    """How a table keeps its rows, as far as batches care."""

    engine: str | None = None  # MariaDB/MySQL's storage engine of the table
    locks_table: bool = False  # a DELETE locks the whole table (MyISAM, Aria, SQLite)
    # False: a statement's writes stay even when it fails, and COMMIT has nothing to do
    # (MyISAM, Aria apply a DELETE before answering it).
    transactional: bool = True


class Dialect(ABC):
    """One database family; see the module docstring. The abstract methods are what every
    family answers in its own SQL; the rest have the common case as default."""

    name = ""  # "mysql" (also MariaDB), "postgresql" or "sqlite"
    # The URL scheme retentiond is tested with, named when a URL's driver is not installed.
    tested_driver = "mariadb+pymysql"
    default_port: int | None = None
    has_users = True  # users, passwords and privileges (SQLite: whoever can write the file)
    # The driver has no read timeout of its own: `ReadDeadline` gives up on a silent server.
    needs_read_deadline = False
    # Reads the database's clock in UTC; None: no clock of its own (a file).
    clock_query: str | None = None
    # The log that keeps copies of deleted rows (residual copies): "binlog", "wal" or None.
    archived_log: Literal["binlog", "wal"] | None = None
    text_type = "TEXT"  # a number cast to text: CAST(x AS <text_type>)
    null_safe_equal = "IS"  # equal, NULL equal to NULL
    for_update = " FOR UPDATE"  # a read that locks the rows it reads
    # A DELETE can be bounded on a table without any key (DELETE ... LIMIT).
    deletes_without_key = False

    # -- connecting -----------------------------------------------------------------------------

    def check_before_connect(self, url: URL, connection: str) -> None:  # noqa: B027
        """Refuse what connecting would get wrong (SQLite would create a missing file); most
        families have nothing to refuse."""

    @abstractmethod
    def connect_args(self, settings: ConnectionConfig, io_timeout: int) -> dict[str, Any]:
        """The driver's arguments: session timeouts, and how long an answer may take."""
        ...

    @abstractmethod
    def server_version(self, connection: Connection) -> str:
        """E.g. "PostgreSQL 15.4", for describe()."""
        ...

    def where(self, url: URL) -> str:
        """Host and port, or the file: where the connection goes, without credentials."""
        return f"{url.host or 'localhost'}:{url.port or self.default_port}"

    # -- time columns ---------------------------------------------------------------------------

    def time_kind(self, column_type: sqltypes.TypeEngine[Any]) -> TimeKind | None:
        """The form the declared type says; on SQLite `stored_time_kind` asks the values."""
        if isinstance(column_type, sqltypes.Integer):
            return "epoch"
        if isinstance(column_type, sqltypes.DateTime):
            if getattr(column_type, "timezone", False):
                return "aware"
            return self.naive_time_kind(column_type)
        if isinstance(column_type, sqltypes.Date):
            return "date"
        if isinstance(column_type, sqltypes.String):
            return "text"
        if isinstance(column_type, sqltypes.Numeric | sqltypes.Float):  # as cdr_pgsql writes them
            return "epoch"
        return None

    def naive_time_kind(self, column_type: sqltypes.DateTime) -> TimeKind:
        """A date and time without a zone: wall-clock time in the configured zone."""
        return "local"

    def stored_time_kind(
        self, connection: Connection, table_sql: str, time_sql: str, declared: TimeKind
    ) -> TimeKind:
        """How the column's values store the time: as declared, except where the values decide."""
        return declared

    def date_value(self, day: date) -> Any:
        """A day as a bound parameter compared with a date column."""
        return day

    def time_guard(self, kind: TimeKind, time_sql: str) -> str | None:
        """Only values in the column's form are compared as times; the rest are undated."""
        if kind == "text":
            return f"{time_sql} LIKE '____-__-__%'"
        if kind == "epoch":
            return f"{time_sql} < {EPOCH_CEILING}"
        return None

    # -- tables ---------------------------------------------------------------------------------

    def table_storage(self, connection: Connection, table: Table) -> TableStorage:
        return TableStorage()

    def implicit_row_key(
        self, connection: Connection, table_sql: str
    ) -> tuple[str, str, bool] | None:
        """A row key the table has without a primary key: SQL naming one row, its name for
        people, and whether it is an integer to walk. None: there is none."""
        return None

    @abstractmethod
    def explain(
        self, connection: Connection, statement: str, params: dict[str, Any]
    ) -> tuple[list[str], bool]:
        """The plan of `statement` as lines, and whether it reads the whole table."""
        ...

    # -- SQL fragments --------------------------------------------------------------------------

    @abstractmethod
    def position(self, text: str, character: Literal["<", ">"]) -> str:
        """Where `character` first occurs in `text`, 0 when it does not."""
        ...

    @abstractmethod
    def up_to(self, text: str, character: Literal[">"]) -> str:
        """`text` up to the first `character` (all of it without one)."""
        ...

    @abstractmethod
    def contains(self, haystack: str, param: str) -> str:
        """`haystack` holds the parameter's text, compared byte for byte (case too)."""
        ...

    @abstractmethod
    def file_stem(self, value: str, text_type: bool) -> str:
        """A path's base name (after the last `/`) up to its last dot; `text_type`: the column
        holds text, else bytes."""
        ...

    def concat(self, *parts: str) -> str:
        return f"CONCAT({', '.join(parts)})"

    def integer_divide(self, dividend: str, divisor: str) -> str:
        """`dividend` divided by `divisor`, both integers, as an integer (rounded down for
        non-negative values)."""
        return f"{dividend} / {divisor}"

    def key_equals(self, key: str, param: str) -> str:
        """The row key `key` (as implicit_row_key or a primary key names it) is `:param`."""
        return f"{key} = :{param}"

    def key_moves(self, key: str) -> bool:
        """Whether the row key `key` changes when its row is updated."""
        return False

    def array_match(self, column: str, param: str) -> str | None:
        """`column` is one of the values of the array parameter `param`: one parameter for any
        number of values. None: the dialect has no arrays; use an expanding `IN`, chunked."""
        return None

    def exact_in(self, column: str, param: str) -> str:
        """An extra condition that makes `column IN :param` exact (case, trailing spaces)."""
        return ""

    # -- privileges -----------------------------------------------------------------------------

    @abstractmethod
    def missing_privileges(
        self,
        connection: Connection,
        table: str,
        wanted: dict[str, Needed],
        schema: str | None,
    ) -> set[str]: ...

    @abstractmethod
    def excess_privileges(
        self, connection: Connection, table: str, schema: str | None
    ) -> set[str]: ...

    @abstractmethod
    def grant_statement(
        self,
        connection: Connection,
        table: str,
        privileges: str,
        schemas: list[str],
        schema: str | None,
    ) -> str | None: ...
