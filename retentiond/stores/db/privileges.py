"""The database privileges the connected user holds on a table: what is missing, what is too much.

retentiond needs little on a PBX's tables: SELECT and DELETE on each table a rule purges, UPDATE
on the one column a files store clears (FreePBX `cdr.recordingfile`). `retentiond check` asks
here, for the user the connection logs in as:

- missing_privileges(): which of the needed privileges the user lacks, so `check` can say so
  before the first run fails half-way;
- excess_privileges(): privileges that let a mistake (or an attacker holding the password) do
  more than delete expired rows. They are reported as warnings, never refused: FreePBX's own
  database user holds ALL PRIVILEGES, and a config that uses it must keep working.

How each database answers is its dialect's (stores/db/dialects: mysql_privileges.py,
postgresql_privileges.py). MariaDB/MySQL: `SHOW GRANTS` of the current user, parsed. It lists
the grants of the role the session has enabled (the default role) too; a role's grants the
listing leaves out are read with `SHOW GRANTS FOR role`. Global (`*.*`), database (`db.*`, a
LIKE pattern where `_` and `%` are wildcards unless escaped) and table (`db.table`) grants
apply; column grants (`UPDATE (recordingfile)`) count for the columns they name. Excess: DROP,
ALTER, GRANT OPTION, FILE, SUPER.

PostgreSQL: the server decides, including privileges inherited through roles:
`has_table_privilege(current_user, 'schema.table', 'DELETE')`, `has_column_privilege` for a
column, `has_schema_privilege(..., 'USAGE')` for the schema. Excess: superuser, owner of the
table (or member of the owning role: it may DROP and ALTER it), any privilege WITH GRANT OPTION.

SQLite has no users: whoever can write the file can do everything. Both functions return None.

A needed privilege is a name (`SELECT`, `DELETE`, `UPDATE`, `INSERT`, `TRUNCATE`) or a name with
a column, `UPDATE(recordingfile)`, satisfied by the privilege on the whole table or on that
column. Missing privileges come back in the same spelling; `USAGE ON SCHEMA x` is added when a
PostgreSQL user cannot use the table's schema at all.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from retentiond.stores.db.dialects import Dialect, dialect_named
from retentiond.stores.db.dialects.mysql_privileges import MYSQL_EXCESS
from retentiond.stores.db.dialects.postgresql_privileges import POSTGRES_EXCESS
from retentiond.stores.db.grants import Connectable, Needed, PrivilegeError, connected

EXCESS_REASONS = {
    "DROP": "DROP: the user can drop the table",
    "ALTER": "ALTER: the user can change the table's structure",
    "GRANT": "GRANT OPTION: the user can hand its privileges to others",
    "FILE": "FILE: the user can read and write files on the database server",
    "SUPER": "SUPER: the user can administer the database server",
    "SUPERUSER": "superuser: the role bypasses every permission check",
    "OWNER": "owner: the role owns the table (or is in the owning role): it can drop or alter it",
}


def missing_privileges(
    database: Connectable,
    dialect: str | None,
    table: str,
    needed: set[str],
    schema: str | None = None,
) -> set[str] | None:
    """The privileges in `needed` the connected user does not hold on `table`.

    `dialect`: "mysql" or "mariadb", "postgresql", "sqlite"; None takes the engine's. `schema` is
    the database on MariaDB/MySQL (default: the connection's) and the schema on PostgreSQL
    (default: where the search path finds the table). None for SQLite: not applicable.
    """
    wanted = {text_: Needed.parse(text_) for text_ in needed}
    with connected(database) as connection:
        found = _dialect(dialect, connection)
        if not found.has_users:
            return None
        return found.missing_privileges(connection, table, wanted, schema)


def excess_privileges(
    database: Connectable,
    dialect: str | None,
    table: str,
    schema: str | None = None,
) -> set[str] | None:
    """More than retentiond needs on `table`, by name (keys of EXCESS_REASONS).

    MariaDB/MySQL: a subset of DROP, ALTER, GRANT, FILE, SUPER. PostgreSQL: of SUPERUSER,
    OWNER, GRANT. None for SQLite: not applicable. For warnings, not refusals.
    """
    with connected(database) as connection:
        found = _dialect(dialect, connection)
        if not found.has_users:
            return None
        return found.excess_privileges(connection, table, schema)


def review(
    database: Connectable, table: str, needed: set[str], schema: str | None = None
) -> tuple[list[str], list[str]]:
    """For `check`: what is missing (the run would fail) and what is more than needed (warnings)."""
    try:
        missing = missing_privileges(database, None, table, needed, schema)
        excess = excess_privileges(database, None, table, schema)
    except PrivilegeError as error:
        return [], [f"privileges on {table} could not be read: {error}"]
    problems = [f"missing privilege {name} on {table}" for name in sorted(missing or ())]
    return problems, describe_excess(excess or set())


def grant_statement(
    database: Connectable, table: str, missing: set[str], schema: str | None = None
) -> str | None:
    """The statement granting `missing` (as missing_privileges() spells them) on `table` to the
    connected user, for `check` to print; None for SQLite or when the user cannot be read."""
    wanted = sorted(name for name in missing if not name.startswith("USAGE ON SCHEMA"))
    schemas = sorted(name for name in missing if name.startswith("USAGE ON SCHEMA"))
    with connected(database) as connection:
        found = _dialect(None, connection)
        if not found.has_users:
            return None
        preparer = connection.dialect.identifier_preparer
        privileges = ", ".join(_grantable(Needed.parse(name), preparer) for name in wanted)
        return found.grant_statement(connection, table, privileges, schemas, schema)


def _grantable(need: Needed, preparer: Any) -> str:
    """`UPDATE(recordingfile)` as a GRANT names it: `UPDATE (recordingfile)`, quoted."""
    if need.column is None:
        return need.privilege
    return f"{need.privilege} ({preparer.quote_identifier(need.column)})"


def describe_excess(names: set[str]) -> list[str]:
    """Warnings for excess_privileges(), one per privilege, in a stable order."""
    order = [*MYSQL_EXCESS, *POSTGRES_EXCESS]
    return [EXCESS_REASONS[n] for n in sorted(names, key=lambda n: (order.index(n), n))]


def _dialect(dialect: str | None, connection: Connection) -> Dialect:
    name = dialect or connection.dialect.name
    found = dialect_named(name)
    if found is None:
        raise ValueError(f"no privilege check for the {name.lower()} dialect")
    return found


__all__ = [
    "EXCESS_REASONS",
    "MYSQL_EXCESS",
    "POSTGRES_EXCESS",
    "Connectable",
    "Needed",
    "PrivilegeError",
    "describe_excess",
    "excess_privileges",
    "grant_statement",
    "missing_privileges",
    "review",
]
