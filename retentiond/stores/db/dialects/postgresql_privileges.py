"""PostgreSQL privileges: the server decides, including privileges inherited through roles.

`has_table_privilege(current_user, 'schema.table', 'DELETE')`, `has_column_privilege` for a
column, `has_schema_privilege(..., 'USAGE')` for the schema. Excess: superuser, owner of the
table (or member of the owning role: it may DROP and ALTER it), any privilege WITH GRANT OPTION.
`USAGE ON SCHEMA x` is missing when the user cannot use the table's schema at all.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from retentiond.stores.db.grants import Needed, PrivilegeError, read_scalar, run_read

# What retentiond warns about when the user holds it.
POSTGRES_EXCESS = ("SUPERUSER", "OWNER", "GRANT")

_PG_TABLE = """
SELECT c.oid, n.nspname
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(:name)
"""


def _postgres_table(connection: Connection, table: str, schema: str | None) -> tuple[int, str]:
    """The table's oid and schema. A schema the user may not use is reported as missing USAGE
    by the caller; here it is a PrivilegeError only when the table does not exist."""
    preparer = connection.dialect.identifier_preparer
    name = preparer.quote_identifier(table)
    if schema is not None:
        name = f"{preparer.quote_identifier(schema)}.{name}"
    row = run_read(
        "looking up the table", lambda: connection.execute(text(_PG_TABLE), {"name": name}).first()
    )
    if row is None:
        shown = f"{schema}.{table}" if schema else table
        raise PrivilegeError(
            f"table {shown} not found (or its schema is not usable by this user); "
            "check the table name and GRANT USAGE ON SCHEMA"
        )
    return int(row[0]), str(row[1])


def _schema_usable(connection: Connection, schema: str) -> bool:
    value = read_scalar(
        connection,
        "schema privileges",
        "SELECT has_schema_privilege(current_user, n.oid, 'USAGE') "
        "FROM pg_catalog.pg_namespace n WHERE n.nspname = :schema",
        {"schema": schema},
    )
    return bool(value)


def missing(
    connection: Connection, table: str, schema: str | None, wanted: dict[str, Needed]
) -> set[str]:
    if schema is not None and not _schema_usable(connection, schema):
        return {*wanted, f"USAGE ON SCHEMA {schema}"}
    oid, schema_name = _postgres_table(connection, table, schema)
    missing: set[str] = set()
    if not _schema_usable(connection, schema_name):
        missing.add(f"USAGE ON SCHEMA {schema_name}")
    for text_, need in wanted.items():
        if need.column is None:
            query = "SELECT has_table_privilege(current_user, CAST(:oid AS oid), :privilege)"
            parameters: dict[str, object] = {"oid": oid, "privilege": need.privilege}
        else:
            query = (
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_attribute "
                "WHERE attrelid = CAST(:oid AS oid) AND attname = :column "
                "AND attnum > 0 AND NOT attisdropped) "
                "THEN has_column_privilege(current_user, CAST(:oid AS oid), :column, :privilege) "
                "ELSE false END"
            )
            parameters = {"oid": oid, "column": need.column, "privilege": need.privilege}
        held = read_scalar(connection, str(need), query, parameters)
        if not held:
            missing.add(text_)
    return missing


# A superuser passes every check (pg_has_role, has_table_privilege), so for one only ownership
# itself counts; GRANT OPTION is not reported on top of superuser or owner, which imply it.
_PG_EXCESS = """
SELECT r.rolsuper,
       c.relowner = r.oid OR (NOT r.rolsuper AND pg_has_role(current_user, c.relowner, 'USAGE')),
       NOT r.rolsuper AND has_table_privilege(current_user, c.oid,
           'SELECT WITH GRANT OPTION, INSERT WITH GRANT OPTION, UPDATE WITH GRANT OPTION, '
           'DELETE WITH GRANT OPTION, TRUNCATE WITH GRANT OPTION')
FROM pg_catalog.pg_class c, pg_catalog.pg_roles r
WHERE c.oid = CAST(:oid AS oid) AND r.rolname = current_user
"""


def excess(connection: Connection, table: str, schema: str | None) -> set[str]:
    oid, _ = _postgres_table(connection, table, schema)
    row = run_read(
        "role attributes", lambda: connection.execute(text(_PG_EXCESS), {"oid": oid}).one()
    )
    superuser, owner, grant_option = (bool(v) for v in row)
    excess: set[str] = set()
    if superuser:
        excess.add("SUPERUSER")
    if owner:
        excess.add("OWNER")
    if grant_option and not owner:  # an owner holds every privilege with grant option
        excess.add("GRANT")
    return excess


def grant(
    connection: Connection, table: str, privileges: str, schemas: list[str], schema: str | None
) -> str | None:
    """GRANT USAGE on `schemas` and `privileges` on the table TO the current role."""
    preparer = connection.dialect.identifier_preparer
    role = read_scalar(connection, "current user", "SELECT current_user")
    grantee = preparer.quote_identifier(str(role))
    statements = [
        f"GRANT USAGE ON SCHEMA {preparer.quote_identifier(name.split()[-1])} TO {grantee}"
        for name in schemas
    ]
    if privileges:
        target = preparer.quote_identifier(table)
        if schema:
            target = f"{preparer.quote_identifier(schema)}.{target}"
        statements.append(f"GRANT {privileges} ON {target} TO {grantee}")
    return "; ".join(statements) or None
