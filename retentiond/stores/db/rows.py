"""Reading rows: a statement's rows as tuples, and the size of `IN (...)` lists.

Rows are read inside the work `Database.retrying` runs, so the connection comes last: callers
bind the statement and its parameters with `functools.partial`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, TextClause

# Keys per `IN (...)` list: below SQLite's old limit of 999 bound variables.
IN_LIST_CHUNK = 500


def read_rows(
    statement: TextClause, params: dict[str, Any], connection: Connection
) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in connection.execute(statement, params)]
