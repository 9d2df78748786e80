"""The database privileges the connected user holds on a table: what is missing, what is too much.

retentiond needs little on a PBX's tables: SELECT and DELETE on each table a rule purges, UPDATE
on the one column a files store clears (FreePBX `cdr.recordingfile`). `retentiond check` asks
here, for the user the connection logs in as:

- missing_privileges(): which of the needed privileges the user lacks, so `check` can say so
  before the first run fails half-way;
- excess_privileges(): privileges that let a mistake (or an attacker holding the password) do
  more than delete expired rows. They are reported as warnings, never refused: FreePBX's own
  database user holds ALL PRIVILEGES, and a config that uses it must keep working.

MariaDB/MySQL: `SHOW GRANTS` of the current user, parsed. It lists the grants of the role the
session has enabled (the default role) too; a role's grants the listing leaves out are read
with `SHOW GRANTS FOR role`. Global (`*.*`), database (`db.*`, a LIKE pattern where `_` and `%`
are wildcards unless escaped) and table (`db.table`) grants apply; column grants
(`UPDATE (recordingfile)`) count for the columns they name. Excess: DROP, ALTER, GRANT OPTION,
FILE, SUPER.

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

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from retentiond.dberrors import describe
from retentiond.errors import RetentiondError

T = TypeVar("T")

# What retentiond warns about when the user holds it.
MYSQL_EXCESS = ("DROP", "ALTER", "GRANT", "FILE", "SUPER")
POSTGRES_EXCESS = ("SUPERUSER", "OWNER", "GRANT")

EXCESS_REASONS = {
    "DROP": "DROP: the user can drop the table",
    "ALTER": "ALTER: the user can change the table's structure",
    "GRANT": "GRANT OPTION: the user can hand its privileges to others",
    "FILE": "FILE: the user can read and write files on the database server",
    "SUPER": "SUPER: the user can administer the database server",
    "SUPERUSER": "superuser: the role bypasses every permission check",
    "OWNER": "owner: the role owns the table (or is in the owning role): it can drop or alter it",
}

# ALL [PRIVILEGES] on a table or a database: everything a table grant can name. On *.* it also
# holds the global privileges, FILE and SUPER among them.
_TABLE_LEVEL_ALL = frozenset(
    {
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "CREATE",
        "DROP",
        "REFERENCES",
        "INDEX",
        "ALTER",
        "CREATE VIEW",
        "SHOW VIEW",
        "TRIGGER",
        "DELETE HISTORY",
    }
)
_GLOBAL_ONLY = frozenset({"FILE", "SUPER"})

_NEEDED = re.compile(r"^\s*([A-Za-z][A-Za-z ]*?)\s*(?:\(\s*([^()]+?)\s*\))?\s*$")


class PrivilegeError(RetentiondError):
    """The privileges could not be read (the query failed, the table is not there)."""


class HasEngine(Protocol):
    """retentiond.stores.sql.store.Database, or anything else that carries an open engine."""

    @property
    def engine(self) -> Engine: ...


Connectable = Engine | Connection | HasEngine


@dataclass(frozen=True)
class Needed:
    """One needed privilege: a name, and a column when only that column needs it."""

    privilege: str
    column: str | None = None

    @classmethod
    def parse(cls, value: str) -> Needed:
        match = _NEEDED.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a privilege such as 'DELETE' or 'UPDATE(column)'")
        name = " ".join(match.group(1).upper().split())
        return cls(name, match.group(2))

    def __str__(self) -> str:
        return f"{self.privilege}({self.column})" if self.column else self.privilege


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
    with _connection(database) as connection:
        family = _family(dialect, connection)
        if family == "sqlite":
            return None
        if family == "mysql":
            grants = _mysql_grants(connection)
            database_name = schema or _current_database(connection)
            fold = _mysql_folds_names(connection)
            held = grants.on(database_name, table, fold)
            return {text_ for text_, need in wanted.items() if not held.satisfies(need)}
        return _postgres_missing(connection, table, schema, wanted)


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
    with _connection(database) as connection:
        family = _family(dialect, connection)
        if family == "sqlite":
            return None
        if family == "mysql":
            grants = _mysql_grants(connection)
            database_name = schema or _current_database(connection)
            held = grants.on(database_name, table, _mysql_folds_names(connection))
            return {name for name in MYSQL_EXCESS if name in held.table}
        return _postgres_excess(connection, table, schema)


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
    with _connection(database) as connection:
        family = _family(None, connection)
        if family == "sqlite":
            return None
        preparer = connection.dialect.identifier_preparer
        privileges = ", ".join(_grantable(Needed.parse(name), preparer) for name in wanted)
        if family == "mysql":
            user = _scalar(connection, "current user", "SELECT CURRENT_USER()")
            if not isinstance(user, str):
                return None
            name, _, host = user.rpartition("@")
            grantee = "'{}'@'{}'".format(name.replace("'", "''"), host.replace("'", "''"))
            database_name = schema or _current_database(connection)
            target = preparer.quote_identifier(table)
            if database_name:
                target = f"{preparer.quote_identifier(database_name)}.{target}"
            return f"GRANT {privileges} ON {target} TO {grantee}" if privileges else None
        role = _scalar(connection, "current user", "SELECT current_user")
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


def _grantable(need: Needed, preparer: Any) -> str:
    """`UPDATE(recordingfile)` as a GRANT names it: `UPDATE (recordingfile)`, quoted."""
    if need.column is None:
        return need.privilege
    return f"{need.privilege} ({preparer.quote_identifier(need.column)})"


def describe_excess(names: set[str]) -> list[str]:
    """Warnings for excess_privileges(), one per privilege, in a stable order."""
    order = [*MYSQL_EXCESS, *POSTGRES_EXCESS]
    return [EXCESS_REASONS[n] for n in sorted(names, key=lambda n: (order.index(n), n))]


# -- connections ------------------------------------------------------------------------------


@contextmanager
def _connection(database: Connectable) -> Iterator[Connection]:
    if isinstance(database, Connection):
        yield database
        return
    engine = database if isinstance(database, Engine) else database.engine
    try:
        connection = engine.connect()
    except DBAPIError as exc:
        failure = describe(exc, "connecting to read privileges")
        raise PrivilegeError(f"cannot connect to read privileges: {failure}") from None
    with connection:
        yield connection


def _family(dialect: str | None, connection: Connection) -> str:
    name = (dialect or connection.dialect.name).lower()
    if name in ("mysql", "mariadb"):
        return "mysql"
    if name in ("postgresql", "postgres"):
        return "postgresql"
    if name == "sqlite":
        return "sqlite"
    raise ValueError(f"no privilege check for the {name} dialect")


def _run(action: str, work: Callable[[], T]) -> T:
    try:
        return work()
    except DBAPIError as exc:
        failure = describe(exc, f"reading privileges ({action})")
        raise PrivilegeError(f"cannot read privileges ({action}): {failure}") from None


def _scalar(
    connection: Connection, action: str, query: str, parameters: dict[str, object] | None = None
) -> object:
    return _run(action, lambda: connection.execute(text(query), parameters or {}).scalar())


def _lines(connection: Connection, statement: str) -> list[str]:
    """The first column of every row, as text (SHOW GRANTS)."""
    return _run(statement, lambda: [str(row[0]) for row in connection.execute(text(statement))])


# -- MariaDB / MySQL: SHOW GRANTS ---------------------------------------------------------------


@dataclass
class _Held:
    """Privileges that apply to one table: on the whole table, and per column."""

    table: set[str] = field(default_factory=set)
    columns: dict[str, set[str]] = field(default_factory=dict)

    def satisfies(self, need: Needed) -> bool:
        if need.privilege in self.table:
            return True
        if need.column is None:
            return False
        return need.privilege in self.columns.get(need.column.lower(), set())


@dataclass(frozen=True)
class _Grant:
    """One `GRANT ... ON ... TO ...` line of SHOW GRANTS."""

    level: str  # "global", "database" or "table"
    database: str | None  # a LIKE pattern at database level, a name at table level
    table: str | None
    privileges: frozenset[str]
    columns: tuple[tuple[str, frozenset[str]], ...]  # (privilege, columns)
    grant_option: bool


@dataclass
class _Grants:
    grants: list[_Grant] = field(default_factory=list)

    def on(self, database: str | None, table: str, fold: bool) -> _Held:
        held = _Held()

        def same(a: str, b: str) -> bool:
            return a.lower() == b.lower() if fold else a == b

        for grant in self.grants:
            if grant.level == "database" and (
                database is None
                or grant.database is None
                or not _like(grant.database, database, fold)
            ):
                continue
            if grant.level == "table" and (
                database is None
                or grant.database is None
                or grant.table is None
                or not same(grant.database, database)
                or not same(grant.table, table)
            ):
                continue
            privileges = set(grant.privileges)
            if "ALL" in privileges:
                privileges.discard("ALL")
                privileges |= _TABLE_LEVEL_ALL
                if grant.level == "global":
                    privileges |= _GLOBAL_ONLY
            if grant.level != "global":
                privileges -= _GLOBAL_ONLY
            if grant.grant_option or "GRANT OPTION" in privileges:
                privileges.add("GRANT")
            held.table |= privileges
            for privilege, columns in grant.columns:
                for column in columns:
                    held.columns.setdefault(column.lower(), set()).add(privilege)
        return held


def _mysql_grants(connection: Connection) -> _Grants:
    lines = _lines(connection, "SHOW GRANTS")
    grants = _Grants()
    grantees: set[str] = set()
    role_edges: list[tuple[str, str]] = []  # (role, grantee)
    for line in lines:
        parsed = _parse_grant(line)
        if parsed is None:
            continue
        grantee, grant, roles = parsed
        grantees.add(grantee)
        if grant is not None:
            grants.grants.append(grant)
        role_edges += [(role, grantee) for role in roles]
    # MariaDB lists the enabled role's grants in SHOW GRANTS; MySQL 8 and older MariaDB do not.
    # Read those of every enabled role (and the roles granted to it) that the listing left out.
    pending = _current_roles(connection)
    seen: set[str] = set()
    while pending:
        role = pending.pop()
        if role in seen:
            continue
        seen.add(role)
        pending += [r for r, grantee in role_edges if grantee == role]
        if role in grantees:
            continue
        for line in _lines(connection, f"SHOW GRANTS FOR {_quote_mysql(role)}"):
            parsed = _parse_grant(line)
            if parsed is None:
                continue
            grantee, grant, roles = parsed
            grantees.add(grantee)
            if grant is not None:
                grants.grants.append(grant)
            role_edges += [(r, grantee) for r in roles]
            pending += roles
    return grants


def _current_roles(connection: Connection) -> list[str]:
    """The roles the session has enabled: MariaDB names one (`CURRENT_ROLE()`), MySQL lists
    them as "`r`@`%`,..." or says NONE."""
    try:
        value = connection.execute(text("SELECT CURRENT_ROLE()")).scalar()
    except DBAPIError:  # a server without roles (MySQL 5.7, MariaDB < 10.0.5)
        connection.rollback()
        return []
    if value is None or str(value).upper() == "NONE":
        return []
    tokens = _tokens(str(value))
    roles: list[str] = []
    for part in _split_commas(tokens):
        if part:
            roles.append(_user_name(part))
    return roles


def _current_database(connection: Connection) -> str | None:
    value = _scalar(connection, "current database", "SELECT DATABASE()")
    return None if value is None else str(value)


def _mysql_folds_names(connection: Connection) -> bool:
    """Whether table and database names compare without case (lower_case_table_names)."""
    value = _scalar(connection, "lower_case_table_names", "SELECT @@lower_case_table_names")
    return str(value) not in ("0", "None")


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<backtick>`(?:[^`]|``)*`)
      | (?P<double>"(?:[^"]|"")*")
      | (?P<single>'(?:[^'\\]|\\.|'')*')
      | (?P<word>[A-Za-z0-9_$]+)
      | (?P<punct>[().,*@=])
    )""",
    re.VERBOSE | re.DOTALL,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # "ident" (quoted), "string", "word" or "punct"
    value: str


def _tokens(line: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(line):
        if line[position:].strip() == "":
            break
        match = _TOKEN.match(line, position)
        if match is None:  # something this parser does not know: skip a character
            position += 1
            continue
        position = match.end()
        if match.group("backtick"):
            tokens.append(_Token("ident", match.group("backtick")[1:-1].replace("``", "`")))
        elif match.group("double"):
            tokens.append(_Token("ident", match.group("double")[1:-1].replace('""', '"')))
        elif match.group("single"):
            tokens.append(_Token("string", _unquote_single(match.group("single"))))
        elif match.group("word"):
            tokens.append(_Token("word", match.group("word")))
        else:
            tokens.append(_Token("punct", match.group("punct")))
    return tokens


def _unquote_single(quoted: str) -> str:
    body = quoted[1:-1].replace("''", "'")
    return re.sub(r"\\(.)", r"\1", body)


def _is_word(token: _Token, *words: str) -> bool:
    return token.kind == "word" and token.value.upper() in words


def _split_commas(tokens: list[_Token]) -> list[list[_Token]]:
    """Split at commas outside parentheses."""
    parts: list[list[_Token]] = [[]]
    depth = 0
    for token in tokens:
        if token.kind == "punct" and token.value == "(":
            depth += 1
        elif token.kind == "punct" and token.value == ")":
            depth -= 1
        if depth == 0 and token.kind == "punct" and token.value == ",":
            parts.append([])
        else:
            parts[-1].append(token)
    return parts


def _user_name(tokens: list[_Token]) -> str:
    """`user`@`host` (or a bare role) as one comparable string."""
    names = [t.value for t in tokens if t.kind != "punct"]
    return "@".join(names)


def _parse_grant(line: str) -> tuple[str, _Grant | None, list[str]] | None:
    """(grantee, privilege grant or None, roles granted) of one SHOW GRANTS line; None for a
    line that grants nothing on tables (SET DEFAULT ROLE, PROXY, routines)."""
    tokens = _tokens(line)
    if not tokens or not _is_word(tokens[0], "GRANT"):
        return None
    to = next((i for i, t in enumerate(tokens) if _is_word(t, "TO")), None)
    if to is None:
        return None
    grantee_end = next(
        (i for i in range(to + 1, len(tokens)) if _is_word(tokens[i], "IDENTIFIED", "WITH")),
        len(tokens),
    )
    grantee = _user_name(tokens[to + 1 : grantee_end])
    on = next((i for i in range(1, to) if _is_word(tokens[i], "ON")), None)
    if on is None:  # GRANT role[, role] TO grantee
        roles = [_user_name(part) for part in _split_commas(tokens[1:to]) if part]
        return grantee, None, roles
    grant_option = any(
        _is_word(tokens[i], "GRANT") and i + 1 < len(tokens) and _is_word(tokens[i + 1], "OPTION")
        for i in range(to, len(tokens))
    )
    privileges: set[str] = set()
    columns: list[tuple[str, frozenset[str]]] = []
    for part in _split_commas(tokens[1:on]):
        if not part:
            continue
        paren = next((i for i, t in enumerate(part) if t.kind == "punct" and t.value == "("), None)
        words = part if paren is None else part[:paren]
        name = " ".join(t.value.upper() for t in words)
        if name == "ALL PRIVILEGES":
            name = "ALL"
        if name == "PROXY":
            return None
        if paren is None:
            privileges.add(name)
        else:
            names = frozenset(t.value for t in part[paren:] if t.kind in ("ident", "word"))
            columns.append((name, names))
    target = tokens[on + 1 : to]
    if target and _is_word(target[0], "FUNCTION", "PROCEDURE", "PACKAGE"):
        return None
    if target and _is_word(target[0], "TABLE"):
        target = target[1:]
    level, database, table = _grant_target(target)
    if level is None:
        return None
    grant = _Grant(level, database, table, frozenset(privileges), tuple(columns), grant_option)
    return grantee, grant, []


def _grant_target(tokens: list[_Token]) -> tuple[str | None, str | None, str | None]:
    """`*.*`, `*`, `db`.*, `db`.`table`: the level and the names."""
    values = [t.value for t in tokens]
    if values in (["*", ".", "*"], ["*"]):
        return "global", None, None
    if len(tokens) == 3 and values[1] == "." and tokens[0].kind in ("ident", "word"):
        if values[2] == "*":
            return "database", tokens[0].value, None
        if tokens[2].kind in ("ident", "word"):
            return "table", tokens[0].value, tokens[2].value
    return None, None, None


def _like(pattern: str, name: str, fold: bool) -> bool:
    """A database-level grant's name is a LIKE pattern: `_` one character, `%` any, `\\` escapes."""
    regex = []
    escaped = False
    for char in pattern:
        if escaped:
            regex.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            regex.append(".*")
        elif char == "_":
            regex.append(".")
        else:
            regex.append(re.escape(char))
    flags = re.DOTALL | (re.IGNORECASE if fold else 0)
    return re.fullmatch("".join(regex), name, flags) is not None


def _quote_mysql(role: str) -> str:
    user, _, host = role.partition("@")
    quoted = "`" + user.replace("`", "``") + "`"
    return quoted + ("@`" + host.replace("`", "``") + "`" if host else "")


# -- PostgreSQL: ask the server ---------------------------------------------------------------

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
    row = _run(
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
    value = _scalar(
        connection,
        "schema privileges",
        "SELECT has_schema_privilege(current_user, n.oid, 'USAGE') "
        "FROM pg_catalog.pg_namespace n WHERE n.nspname = :schema",
        {"schema": schema},
    )
    return bool(value)


def _postgres_missing(
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
        held = _scalar(connection, str(need), query, parameters)
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


def _postgres_excess(connection: Connection, table: str, schema: str | None) -> set[str]:
    oid, _ = _postgres_table(connection, table, schema)
    row = _run("role attributes", lambda: connection.execute(text(_PG_EXCESS), {"oid": oid}).one())
    superuser, owner, grant_option = (bool(v) for v in row)
    excess: set[str] = set()
    if superuser:
        excess.add("SUPERUSER")
    if owner:
        excess.add("OWNER")
    if grant_option and not owner:  # an owner holds every privilege with grant option
        excess.add("GRANT")
    return excess
