"""SQLite: Asterisk's own database file (cdr_sqlite3_custom's master.db), read and written by
Asterisk at the same time.

A connection waits for Asterisk's write lock (lock_timeout) instead of failing at once, and a
missing file is refused rather than created empty. Columns may have no type and any value in
any form: a time column's form is decided by its values, and only values in that form are
compared as times (the guards below); the rest are counted undated, never guessed at. A DELETE
locks the whole database, so batches are short. There are no users or privileges: whoever can
write the file can do everything.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import URL, Connection, Table, text
from sqlalchemy import types as sqltypes
from sqlalchemy.exc import DBAPIError

from retentiond.errors import StoreAbsent
from retentiond.stores.db.dialects.base import Dialect, TableStorage
from retentiond.stores.db.timekinds import EPOCH_CEILING, EPOCH_FLOOR

if TYPE_CHECKING:
    from retentiond.config.model import ConnectionConfig
    from retentiond.stores.db.grants import Needed
    from retentiond.stores.db.timekinds import TimeKind

# An untyped SQLite column (Asterisk's cdr_sqlite3_custom) holding epoch seconds as text, as
# `start(int64)` and `start(float)` write them: ten digits and an optional fraction. Only these
# compare as text in numeric order.
_EPOCH_TEXT = "[1-9]" + "[0-9]" * 9
# SQLite date text is dated only as SQLite's date functions and Asterisk write it (see
# _sqlite_date_text): `YYYY-MM-DD HH:MM:SS`, with an optional fraction of a second, or
# `YYYY-MM-DD` in a DATE column.


class SQLite(Dialect):
    name = "sqlite"
    has_users = False
    for_update = ""  # the write lock is the database's: there are no row locks

    def check_before_connect(self, url: URL, connection: str) -> None:
        # SQLite would silently create an empty file where Asterisk's database is expected.
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            return
        if not Path(database).is_file():
            raise StoreAbsent(
                f"cannot open {connection}: SQLite database file {database} does not exist"
            )

    def connect_args(self, settings: ConnectionConfig, io_timeout: int) -> dict[str, Any]:
        # Asterisk writes the same file: wait for its write lock instead of failing at once.
        return {"timeout": settings.lock_timeout}

    def server_version(self, connection: Connection) -> str:
        return f"SQLite {connection.execute(text('SELECT sqlite_version()')).scalar()}"

    def where(self, url: URL) -> str:
        return url.database or ":memory:"

    def time_kind(self, column_type: sqltypes.TypeEngine[Any]) -> TimeKind | None:
        if isinstance(column_type, sqltypes.Integer):
            return "epoch"
        # SQLite stores dates as text whatever the declared type; only a DATE holds days only.
        is_date = isinstance(column_type, sqltypes.Date)
        return "date" if is_date and not isinstance(column_type, sqltypes.DateTime) else "text"

    def stored_time_kind(
        self, connection: Connection, table_sql: str, time_sql: str, declared: TimeKind
    ) -> TimeKind:
        """How an SQLite time column's values store the time, decided by the values.

        SQLite keeps any value in any column, and cdr_sqlite3_custom's have no type at all:
        its `start` is date text, its `start(int64)` or `start(float)` epoch text, and a
        numeric column turns either epoch into a number. The form most values have is the
        column's; values in any other form are counted undated (reported), never guessed at.
        With no datable value yet, the declared type decides.
        """
        as_date: TimeKind = declared if declared in ("date", "text") else "text"
        forms: dict[TimeKind, str] = {
            as_date: _sqlite_guard(as_date, time_sql),
            "epoch": f"{_sqlite_guard('epoch', time_sql)} AND {time_sql} >= {EPOCH_FLOOR}",
            "epoch_text": _sqlite_guard("epoch_text", time_sql),
        }
        if declared == "epoch":  # the declared form first: it wins a tie
            forms = {"epoch": forms.pop("epoch"), **forms}
        counts = connection.execute(
            text(
                f"SELECT {', '.join(f'COUNT(CASE WHEN {f} THEN 1 END)' for f in forms.values())} "
                f"FROM {table_sql}"
            )
        ).one()
        found = dict(zip(forms, (int(n or 0) for n in counts), strict=True))
        best = max(found, key=lambda form: found[form])
        return best if found[best] else declared

    def date_value(self, day: date) -> Any:
        return day.isoformat()

    def time_guard(self, kind: TimeKind, time_sql: str) -> str | None:
        # Untyped SQLite columns may hold numbers and text, which sort apart: a value in
        # another form than the bound's would compare by its type, not its time.
        return _sqlite_guard(kind, time_sql)

    def table_storage(self, connection: Connection, table: Table) -> TableStorage:
        return TableStorage(locks_table=True)

    def implicit_row_key(
        self, connection: Connection, table_sql: str
    ) -> tuple[str, str, bool] | None:
        try:
            connection.execute(text(f"SELECT rowid FROM {table_sql} LIMIT 0"))
        except DBAPIError:
            return None  # a WITHOUT ROWID table
        return "rowid", "rowid", True

    def explain(
        self, connection: Connection, statement: str, params: dict[str, Any]
    ) -> tuple[list[str], bool]:
        rows = connection.execute(text(f"EXPLAIN QUERY PLAN {statement}"), params).all()
        lines = [str(row[-1]) for row in rows]
        return lines, any(line.startswith("SCAN") for line in lines)

    def position(self, text: str, character: Literal["<", ">"]) -> str:
        return f"instr({text}, '{character}')"

    def up_to(self, text: str, character: Literal[">"]) -> str:
        return f"substr({text}, 1, instr({text}, '{character}') - 1)"

    def contains(self, haystack: str, param: str) -> str:
        return f"instr({haystack}, :{param}) > 0"

    def file_stem(self, value: str, text_type: bool) -> str:
        value = value if text_type else f"CAST({value} AS TEXT)"
        # rtrim by every character but `/` (or `.`) leaves the text up to the last one.
        base = f"substr({value}, length(rtrim({value}, replace({value}, '/', ''))) + 1)"
        dotted = f"rtrim({base}, replace({base}, '.', ''))"
        return (
            f"CASE WHEN {dotted} = '' THEN {base} "
            f"ELSE substr({dotted}, 1, length({dotted}) - 1) END"
        )

    def concat(self, *parts: str) -> str:
        return f"({' || '.join(parts)})"

    # SQLite has no users (has_users is False): whoever can write the file can delete, and
    # stores/db/privileges.py answers "not applicable" before asking these.

    def missing_privileges(
        self, connection: Connection, table: str, wanted: dict[str, Needed], schema: str | None
    ) -> set[str]:
        return set()

    def excess_privileges(self, connection: Connection, table: str, schema: str | None) -> set[str]:
        return set()

    def grant_statement(
        self,
        connection: Connection,
        table: str,
        privileges: str,
        schemas: list[str],
        schema: str | None,
    ) -> str | None:
        return None


def _sqlite_guard(kind: TimeKind, time_sql: str) -> str:
    """An SQLite value in the form `kind` stores times in (the floor is checked apart)."""
    if kind == "epoch":
        return f"typeof({time_sql}) IN ('integer', 'real') AND {time_sql} < {EPOCH_CEILING}"
    if kind == "epoch_text":
        return (
            f"typeof({time_sql}) = 'text' AND ({time_sql} GLOB '{_EPOCH_TEXT}' OR "
            f"{time_sql} GLOB '{_EPOCH_TEXT}.[0-9]*') AND NOT {time_sql} GLOB '*[^0-9.]*'"
        )
    return _sqlite_date_text(time_sql, day_alone=kind == "date")


def _sqlite_date_text(time_sql: str, day_alone: bool) -> str:
    """Date text in the shape SQLite writes (`YYYY-MM-DD HH:MM:SS`) that denotes a real time.

    Anything else, and that shape when it is no real time (`2025-13-45 99:99:99`), is undated:
    its text would still sort among the times and be taken for one.

    A real time reads back unchanged through SQLite's own calendar, which writes exactly that
    shape and normalizes the rest (`datetime(x, '+0 days')` turns February 30 into March 2nd,
    24:00:00 into the next day, and gives NULL for `2025-13-45 99:99:99` or trailing text);
    after the seconds only a fraction may follow. `IS`, not `=`: the guard is true or false,
    never NULL, so every value counts either dated or undated. The whole value is read back
    first: cheaper than any GLOB, and true for almost every row. A day alone is a time only in
    a DATE column (`day_alone`): in a date-and-time column it would expire at its day's start.
    """
    stamp = f"substr({time_sql}, 1, 19)"
    fraction = (
        f"length({time_sql}) > 20 AND substr({time_sql}, 20, 1) = '.' "
        f"AND NOT substr({time_sql}, 21) GLOB '*[^0-9]*' "
        f"AND datetime({stamp}, '+0 days') IS {stamp}"
    )
    whole = f"datetime({time_sql}, '+0 days') IS {time_sql}"
    if day_alone:
        whole = f"date({time_sql}, '+0 days') IS {time_sql} OR {whole}"
    return f"({whole} OR ({fraction}))"
