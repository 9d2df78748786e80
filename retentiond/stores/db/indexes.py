"""Index lookup: which index of a table is led by a column.

A store reads along an index led by its time column (or a column it compares), and `check`
warns where there is none, with the CREATE INDEX that fixes it. The primary key counts.
"""

from __future__ import annotations

from sqlalchemy import Inspector


def leading_index(
    inspector: Inspector, table: str, column: str, schema: str | None = None
) -> str | None:
    """The name of an index led by `column` (the primary key counts: "PRIMARY KEY")."""
    for index in inspector.get_indexes(table, schema=schema):
        names = index.get("column_names") or []
        if names and names[0] == column:
            return str(index.get("name") or "unnamed")
    primary = inspector.get_pk_constraint(table, schema=schema).get("constrained_columns") or []
    if primary and primary[0] == column:
        return "PRIMARY KEY"
    return None
