"""What a database said when it failed, in retentiond's own words (DESIGN.md safety rule 11).

A server's, driver's or trigger's message can quote row values: MariaDB's "Duplicate entry '…'"
holds the key's values, a trigger's `SIGNAL … MESSAGE_TEXT` or `RAISE EXCEPTION` whatever its
author put there (OLD.src, OLD.clid). Cutting the quoted parts out cannot work: an apostrophe in a
value (`"O'Brien" <+49…>`) breaks the pairing of quotes, and a trigger quotes nothing. So no part
of that text is kept. Every message built from a database error is built here, from its code
(MariaDB's errno, PostgreSQL's SQLSTATE, SQLite's error name), its SQLSTATE and a fixed
description per known code; the log, the journal and the reports get only those.

The server's own text helps an administrator at a terminal: an interactive command turns
`show_server_text` on (stderr is a terminal, or `--show-db-messages`), and `describe` then prints
it there, never anywhere else. The daemon and its run processes never turn it on.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

# MariaDB/MySQL error numbers: the SQLSTATE the server sends with each, and what it means.
# https://mariadb.com/kb/en/mariadb-error-codes/
MYSQL_CODES: dict[str, tuple[str, str]] = {
    "1021": ("HY000", "the server's disk is full"),
    "1030": ("HY000", "the storage engine reported an error"),
    "1036": ("HY000", "the table is read-only"),
    "1040": ("08004", "too many connections: the server's max_connections is used up"),
    "1044": ("42000", "access denied to the database"),
    "1045": ("28000", "access denied: wrong user or password"),
    "1048": ("23000", "a column that may not be NULL would be NULL"),
    "1049": ("42000", "unknown database"),
    "1054": ("42S22", "unknown column"),
    "1062": ("23000", "duplicate key: the change would give two rows the same unique key"),
    "1064": ("42000", "SQL syntax error"),
    "1099": ("HY000", "the table is locked for reading (LOCK TABLES)"),
    "1100": ("HY000", "the table was not locked with LOCK TABLES"),
    "1114": ("HY000", "the table is full"),
    "1142": ("42000", "a privilege on the table is missing"),
    "1143": ("42000", "a privilege on a column is missing"),
    "1146": ("42S02", "unknown table"),
    "1205": ("HY000", "lock wait timeout exceeded"),
    "1213": ("40001", "deadlock"),
    "1227": ("42000", "an administrative privilege is missing"),
    "1264": ("22003", "a value is out of range for its column"),
    "1290": ("HY000", "the server is read-only (read_only)"),
    "1292": ("22007", "a date or time value is invalid"),
    "1317": ("70100", "the statement was interrupted"),
    "1366": ("HY000", "a value is invalid for its column"),
    "1406": ("22001", "a value is too long for its column"),
    "1442": ("HY000", "a trigger changes the table being changed"),
    "1449": ("HY000", "the definer of a trigger or view does not exist"),
    "1451": ("23000", "rows of another table still refer to the row (foreign key)"),
    "1452": ("23000", "a foreign key refers to a row that does not exist"),
    "1586": ("23000", "duplicate key: the change would give two rows the same unique key"),
    "1644": ("45000", "a trigger or stored procedure refused the change (SIGNAL)"),
    "1698": ("28000", "access denied: wrong user or password"),
    "1792": ("25006", "the transaction is read-only"),
    "1927": ("70100", "the connection was killed"),
    "1969": ("70100", "the statement ran longer than max_statement_time"),
    "2003": ("HY000", "cannot connect to the server"),
    "2006": ("HY000", "the server has gone away (connection lost)"),
    "2013": ("HY000", "connection lost during the statement"),
    "2055": ("HY000", "connection lost"),
    "3024": ("HY000", "the statement ran longer than max_execution_time"),
    "3572": ("HY000", "a row is locked (NOWAIT)"),
    "3819": ("HY000", "a CHECK constraint refused the change"),
    "4025": ("23000", "a CHECK constraint refused the change"),
    "4031": ("HY000", "the server closed the idle connection"),
}

# PostgreSQL SQLSTATEs. https://www.postgresql.org/docs/current/errcodes-appendix.html
SQLSTATES: dict[str, str] = {
    "08000": "connection failure",
    "08001": "cannot connect to the server",
    "08003": "the connection does not exist",
    "08004": "the server refused the connection",
    "08006": "connection lost",
    "0A000": "a feature the server does not support",
    "22001": "a value is too long for its column",
    "22003": "a value is out of range for its column",
    "22007": "a date or time value is invalid",
    "22008": "a date or time value is out of range",
    "22P02": "a value has the wrong form for its column's type",
    "23000": "an integrity constraint refused the change",
    "23502": "a column that may not be NULL would be NULL",
    "23503": "rows of another table still refer to the row (foreign key)",
    "23505": "duplicate key: the change would give two rows the same unique key",
    "23514": "a CHECK constraint refused the change",
    "23P01": "an exclusion constraint refused the change",
    "25006": "the transaction is read-only (a read-only server or a standby)",
    "25P02": "the transaction was already aborted",
    "28000": "access denied: the server refused the login",
    "28P01": "access denied: wrong user or password",
    "3D000": "unknown database",
    "3F000": "unknown schema",
    "40001": "serialization failure",
    "40P01": "deadlock",
    "42501": "a privilege is missing",
    "42601": "SQL syntax error",
    "42703": "unknown column",
    "42883": "unknown function",
    "42P01": "unknown table",
    "45000": "a trigger or stored procedure refused the change",
    "53100": "the server's disk is full",
    "53200": "the server is out of memory",
    "53300": "too many connections: the server's max_connections is used up",
    "55000": "the object is not in a state that allows this",
    "55006": "the object is in use",
    "55P03": "lock wait timeout (lock_timeout)",
    "57014": "the statement was cancelled (statement_timeout or a cancel request)",
    "57P01": "the server is shutting down (administrator command)",
    "57P02": "the server is shutting down (crash of another server process)",
    "57P03": "the server is not accepting connections yet",
    "P0001": "a trigger or function refused the change (RAISE EXCEPTION)",
    "XX000": "internal error of the server",
}

# SQLite's extended error names (Python's sqlite3_errorname); the prefix counts for the rest.
SQLITE_CODES: dict[str, str] = {
    "SQLITE_BUSY": "the database file is locked by another program",
    "SQLITE_LOCKED": "a table is locked",
    "SQLITE_READONLY": "the database file is read-only (file permissions or a read-only mount)",
    "SQLITE_CANTOPEN": "the database file cannot be opened",
    "SQLITE_CORRUPT": "the database file is damaged",
    "SQLITE_NOTADB": "the file is not an SQLite database",
    "SQLITE_FULL": "the disk is full",
    "SQLITE_IOERR": "an I/O error on the database file",
    "SQLITE_PERM": "access denied to the database file",
    "SQLITE_AUTH": "access denied",
    "SQLITE_CONSTRAINT_UNIQUE": "duplicate key: the change would give two rows the same unique key",
    "SQLITE_CONSTRAINT_PRIMARYKEY": "duplicate key: two rows would have the same primary key",
    "SQLITE_CONSTRAINT_FOREIGNKEY": "rows of another table still refer to the row (foreign key)",
    "SQLITE_CONSTRAINT_NOTNULL": "a column that may not be NULL would be NULL",
    "SQLITE_CONSTRAINT_CHECK": "a CHECK constraint refused the change",
    "SQLITE_CONSTRAINT_TRIGGER": "a trigger refused the change (RAISE)",
    "SQLITE_CONSTRAINT": "a constraint refused the change",
    "SQLITE_ERROR": "SQL error",
}
# SQLite says SQLITE_ERROR for both; its fixed wording tells them apart (and is never shown).
_SQLITE_PHRASES = (("no such table", "unknown table"), ("no such column", "unknown column"))

# SQLSTATE classes, for a code not in the tables above.
_SQLSTATE_CLASSES = {
    "08": "connection failure",
    "22": "a value is invalid for its column",
    "23": "an integrity constraint refused the change",
    "25": "invalid transaction state",
    "28": "access denied",
    "40": "the transaction was rolled back by the server",
    "42": "SQL error or missing privilege",
    "45": "a trigger or stored procedure refused the change",
    "53": "the server is out of resources",
    "54": "a limit of the server was exceeded",
    "55": "the object is not in a state that allows this",
    "57": "the server stopped the statement",
    "58": "a system error on the server",
    "P0": "a trigger or function refused the change",
    "XX": "internal error of the server",
}

# What to do, for the codes where the remedy does not depend on the situation.
_REMEDIES = {
    "privilege": "grant it (retentiond check prints the GRANT statement)",
    "trigger": (
        "a trigger or rule on the table refused it; its message is not logged, as it may quote "
        "the row: run the command on a terminal to see it"
    ),
    "read-only": "the server or database file is read-only: enforce on the primary, writable copy",
    "connections": "the server's max_connections is used up: raise it, or find who holds them",
}
_REMEDY_OF = {
    **dict.fromkeys(("1142", "1143", "42501", "1227"), "privilege"),
    **dict.fromkeys(("1644", "45000", "P0001", "SQLITE_CONSTRAINT_TRIGGER"), "trigger"),
    **dict.fromkeys(("1290", "1792", "25006", "1036", "SQLITE_READONLY"), "read-only"),
    **dict.fromkeys(("1040", "53300"), "connections"),
}


@dataclass(frozen=True)
class DbFailure:
    """A database error as retentiond may record it: codes and fixed words, never the server's."""

    code: str | None  # MariaDB's errno, PostgreSQL's SQLSTATE or SQLite's error name
    sqlstate: str | None
    description: str

    @property
    def codes(self) -> str:
        """`error 1062, SQLSTATE 23000`; `error 23505` where the code is the SQLSTATE."""
        if self.code is None:
            return f"SQLSTATE {self.sqlstate}" if self.sqlstate else "no error code"
        if self.sqlstate and self.sqlstate != self.code:
            return f"error {self.code}, SQLSTATE {self.sqlstate}"
        return f"error {self.code}"

    @property
    def remedy(self) -> str | None:
        kind = _REMEDY_OF.get(self.code or "") or _REMEDY_OF.get(self.sqlstate or "")
        if kind is None and (self.code or "").startswith("SQLITE_READONLY"):
            kind = "read-only"
        return _REMEDIES[kind] if kind else None

    def __str__(self) -> str:
        return f"{self.description} ({self.codes})"


_terminal: TextIO | None = None


def show_server_text(stream: TextIO | None) -> None:
    """Print the database's own message to `stream` (an interactive command's stderr) as each
    error is described; None: print it nowhere (the default, and always in the daemon)."""
    global _terminal
    _terminal = stream


def describe(exc: Any, where: str) -> DbFailure:
    """A DBAPIError (or a driver exception) as codes and fixed words. `where` (the store and
    what it was doing) introduces the server's own text on the terminal, when one is shown."""
    terminal = _terminal
    if terminal is not None and (text := server_text(exc)):
        with contextlib.suppress(OSError, ValueError):  # a closed terminal loses only this
            terminal.write(
                f"retentiond: {where}: the database said (shown on this terminal only, never "
                f"logged): {text}\n"
            )
            terminal.flush()
    return classify(exc)


def is_database_error(exc: BaseException) -> bool:
    """A driver's error, or SQLAlchemy's wrapper of one (without importing SQLAlchemy)."""
    return any(
        type(e).__module__.split(".")[0] in ("pymysql", "psycopg", "sqlite3")
        for e in (exc, getattr(exc, "orig", None))
        if isinstance(e, BaseException)
    )


def classify(exc: Any) -> DbFailure:
    """Codes and the fixed description, without showing anything."""
    code = error_code(exc)
    state = sqlstate(exc)
    if code is not None and code in MYSQL_CODES:
        known_state, description = MYSQL_CODES[code]
        return DbFailure(code, state or known_state, description)
    if code is not None and code.startswith("SQLITE_"):
        return DbFailure(code, None, _sqlite_description(code, exc))
    lookup = state or code or ""
    known = SQLSTATES.get(lookup) or _SQLSTATE_CLASSES.get(lookup[:2])
    if known is None:
        known = _uncoded(exc) if not lookup else "database error (code not known)"
    return DbFailure(code, state, known)


def error_code(exc: Any) -> str | None:
    """MariaDB's errno, else PostgreSQL's SQLSTATE, else SQLite's error name."""
    orig = _original(exc)
    args: Sequence[Any] = getattr(orig, "args", ())
    if args and isinstance(args[0], int):  # pymysql: (errno, message)
        return str(args[0])
    state = getattr(orig, "sqlstate", None)  # psycopg
    if isinstance(state, str) and state:
        return state
    name = getattr(orig, "sqlite_errorname", None)  # sqlite3
    if isinstance(name, str):
        return name
    return None


def sqlstate(exc: Any) -> str | None:
    """The SQLSTATE the server sent (pymysql and psycopg keep it); None for SQLite."""
    state = getattr(_original(exc), "sqlstate", None)
    return state if isinstance(state, str) and re.fullmatch(r"[0-9A-Z]{5}", state) else None


def server_text(exc: Any) -> str:
    """The driver's or server's own message: for a terminal only, never for a log or report."""
    orig = _original(exc)
    args: Sequence[Any] = getattr(orig, "args", ())
    if len(args) >= 2 and isinstance(args[0], int) and isinstance(args[1], str):
        return args[1]
    return str(orig).strip()


def _original(exc: Any) -> Any:
    """The driver's exception under SQLAlchemy's wrapper."""
    return getattr(exc, "orig", None) or exc


def _uncoded(exc: Any) -> str:
    """psycopg's failed connects come without a code: its fixed phrases tell what happened."""
    message = str(_original(exc))
    if unknown_host(exc):
        return "the host name does not resolve"
    for pattern, description in _UNCODED_PHRASES:
        if re.search(pattern, message):
            return description
    return "database error without a code"


_UNCODED_PHRASES = (
    (r"password authentication failed|FATAL:\s+role \S+ does not exist", SQLSTATES["28P01"]),
    (r"FATAL:\s+database \S+ does not exist", "unknown database"),
    (r"permission denied for database", "access denied to the database"),
    (r"no pg_hba\.conf entry", "the server does not let this host and user in (pg_hba.conf)"),
    (r"too many clients already", SQLSTATES["53300"]),
    (
        r"the database system is (starting up|shutting down|in recovery mode|not yet)",
        "the server is starting up or shutting down",
    ),
    (
        r"^connection (failed|timeout expired)|server closed the connection|consuming input failed",
        "cannot connect to the server, or the connection was lost",
    ),
)


def _sqlite_description(code: str, exc: Any) -> str:
    if code == "SQLITE_ERROR":
        message = str(_original(exc))
        for phrase, description in _SQLITE_PHRASES:
            if message.startswith(phrase):
                return description
    name = code
    while name not in SQLITE_CODES and "_" in name[len("SQLITE_") :]:
        name = name.rsplit("_", 1)[0]  # SQLITE_IOERR_FSYNC: SQLITE_IOERR
    return SQLITE_CODES.get(name, "database error (code not known)")


# -- connecting: the driver's words classified, never repeated ----------------------------------

# psycopg reports a failed connection attempt without an SQLSTATE, whether the server refused
# it, closed it or did not answer in time. The server's own refusals (a wrong password, an unknown
# database) come as FATAL and stay failures, except the ones a restart gives for a moment.
_RESTARTING = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
)

# A host name that does not resolve stays wrong however often it is looked up (pymysql reports it
# as 2003, "can't connect"); a temporary resolver failure does not.
_UNKNOWN_HOST = (
    "Name or service not known",
    "No address associated with hostname",
    "nodename nor servname provided",
    "could not translate host name",
    "failed to resolve host",
)
_BAD_LOGIN_CODES = {"1045", "1698", "28000", "28P01"}
TOO_MANY_CLIENTS = ("1040", "53300")  # the server's max_connections, for a moment


def connection_failed(exc: Any) -> bool:
    """psycopg's failed connect without an SQLSTATE that a retry may get past."""
    orig = _original(exc)
    if not type(orig).__module__.startswith("psycopg"):
        return False
    message = str(orig)
    if "FATAL:" in message:
        return any(phrase in message for phrase in _RESTARTING)
    return message.startswith(("connection failed:", "connection timeout expired"))


def unknown_host(exc: Any) -> bool:
    message = str(_original(exc))
    return any(phrase in message for phrase in _UNKNOWN_HOST)


def too_many_clients(exc: Any) -> bool:
    return error_code(exc) in TOO_MANY_CLIENTS or "too many clients already" in str(_original(exc))


def connect_hint(exc: Any) -> str | None:
    """What to check when the server refused a connection, from the driver's error."""
    code = error_code(exc)
    message = str(_original(exc))
    if unknown_host(exc):
        return "the host name in url does not resolve: check it"
    if code in _BAD_LOGIN_CODES or re.search(
        r"authentication failed|FATAL:\s+role \S+ does not exist", message
    ):
        return (
            "check the user in url and its password (password_file, password_from or the "
            "systemd credential named like the connection)"
        )
    if code == "1044" or "permission denied for database" in message:
        return "the user may not use that database: grant it access (docs/install.md)"
    if code == "1049" or re.search(r"FATAL:\s+database \S+ does not exist", message):
        return "check the database name in url"
    if "no pg_hba.conf entry" in message:
        return "allow this host and user to connect in the server's pg_hba.conf"
    return None
