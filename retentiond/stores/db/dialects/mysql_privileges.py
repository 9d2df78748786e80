"""MariaDB/MySQL privileges: `SHOW GRANTS` of the current user, parsed.

It lists the grants of the role the session has enabled (the default role) too; a role's grants
the listing leaves out are read with `SHOW GRANTS FOR role`. Global (`*.*`), database (`db.*`, a
LIKE pattern where `_` and `%` are wildcards unless escaped) and table (`db.table`) grants apply;
column grants (`UPDATE (recordingfile)`) count for the columns they name. Excess: DROP, ALTER,
GRANT OPTION, FILE, SUPER.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from retentiond.stores.db.grants import Needed, read_lines, read_scalar

# What retentiond warns about when the user holds it.
MYSQL_EXCESS = ("DROP", "ALTER", "GRANT", "FILE", "SUPER")

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


def missing(
    connection: Connection, table: str, wanted: dict[str, Needed], schema: str | None
) -> set[str]:
    """The privileges in `wanted` the user does not hold on `table` of database `schema`
    (default: the connection's)."""
    grants = _mysql_grants(connection)
    database_name = schema or _current_database(connection)
    fold = _mysql_folds_names(connection)
    held = grants.on(database_name, table, fold)
    return {text_ for text_, need in wanted.items() if not held.satisfies(need)}


def excess(connection: Connection, table: str, schema: str | None) -> set[str]:
    """A subset of MYSQL_EXCESS the user holds on `table`."""
    grants = _mysql_grants(connection)
    database_name = schema or _current_database(connection)
    held = grants.on(database_name, table, _mysql_folds_names(connection))
    return {name for name in MYSQL_EXCESS if name in held.table}


def grant(connection: Connection, table: str, privileges: str, schema: str | None) -> str | None:
    """GRANT `privileges` ON the table TO the current user; None when the user cannot be read."""
    preparer = connection.dialect.identifier_preparer
    user = read_scalar(connection, "current user", "SELECT CURRENT_USER()")
    if not isinstance(user, str):
        return None
    name, _, host = user.rpartition("@")
    grantee = "'{}'@'{}'".format(name.replace("'", "''"), host.replace("'", "''"))
    database_name = schema or _current_database(connection)
    target = preparer.quote_identifier(table)
    if database_name:
        target = f"{preparer.quote_identifier(database_name)}.{target}"
    return f"GRANT {privileges} ON {target} TO {grantee}" if privileges else None


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
    lines = read_lines(connection, "SHOW GRANTS")
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
        for line in read_lines(connection, f"SHOW GRANTS FOR {_quote_mysql(role)}"):
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
    value = read_scalar(connection, "current database", "SELECT DATABASE()")
    return None if value is None else str(value)


def _mysql_folds_names(connection: Connection) -> bool:
    """Whether table and database names compare without case (lower_case_table_names)."""
    value = read_scalar(connection, "lower_case_table_names", "SELECT @@lower_case_table_names")
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
