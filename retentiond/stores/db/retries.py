"""Retries of database work: which failures are worth another try, the backoff between tries,
and the words for giving up.

Lock waits, deadlocks and lost connections are transient: `Database.retrying` runs the work again
after a backoff of 0.5 s, 1 s, 2 s, ... (at most BACKOFF_MAX), up to the connection's `retries`.
Each wait is logged with its reason and the database's error code, never the statement or the
URL. A write that failed with the server's answer was rolled back (`RolledBack`); one whose
commit got no reply may have been committed.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from sqlalchemy.exc import DBAPIError

from retentiond.dberrors import (
    classify,
    connection_failed,
    error_code,
    too_many_clients,
    unknown_host,
)
from retentiond.errors import StoreError

log = structlog.get_logger()


# Retries back off 0.5 s, 1 s, 2 s, ... and never wait longer than this between attempts.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0

TRANSIENT_CODES = {
    "1205": "lock wait timeout",  # MariaDB/MySQL innodb_lock_wait_timeout and lock_wait_timeout
    "3572": "lock wait timeout",  # MySQL NOWAIT
    "55P03": "lock wait timeout",  # PostgreSQL lock_timeout
    "SQLITE_BUSY": "database locked",
    "SQLITE_LOCKED": "database locked",
    "1213": "deadlock",
    "40P01": "deadlock",
    "40001": "deadlock",  # PostgreSQL serialization failure: same remedy
    "1927": "connection lost",  # MariaDB: the session was killed
    "2003": "connection lost",
    "2006": "connection lost",
    "2013": "connection lost",
    "2055": "connection lost",
    "4031": "connection lost",  # MariaDB: disconnected for inactivity
    "57P01": "connection lost",  # PostgreSQL admin shutdown (server restart)
    "57P02": "connection lost",
    "57P03": "connection lost",
}

GAVE_UP = {
    "lock wait timeout": (
        "lock wait timeout exceeded {attempts} times; the PBX holds locks on the table "
        "(a long transaction, a backup or a table lock)"
    ),
    "database locked": (
        "the database file stayed locked {attempts} times; Asterisk or another program holds "
        "a write lock on it"
    ),
    "deadlock": "deadlocked with another transaction {attempts} times",
    "connection lost": "lost the connection to the database {attempts} times",
}

# A batch's count in BatchResult.counts: rows a commit whose reply was lost deleted, or not.
UNCONFIRMED_DELETED_MAX = "unconfirmed_deleted_max"


class RolledBack(StoreError):
    """A write the database rolled back: none of it was committed. `code` and `sqlstate`: the
    database's (dberror.DbFailure)."""

    def __init__(self, message: str, code: str | None = None, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.sqlstate = sqlstate


def failed(message: str, exc: DBAPIError, rolled_back: bool) -> StoreError:
    if not rolled_back:
        return StoreError(message)
    failure = classify(exc)
    return RolledBack(message, failure.code, failure.sqlstate)


def transient_reason(exc: DBAPIError) -> str | None:
    code = error_code(exc) or ""
    if code in TRANSIENT_CODES:
        return TRANSIENT_CODES[code]
    if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return "database locked"
    if code.startswith("08") or exc.connection_invalidated:  # SQLSTATE class 08: connection
        return "connection lost"
    if not code and connection_failed(exc):
        return "connection lost"
    return None


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt + 1`: 0.5 s, 1 s, 2 s, ... up to BACKOFF_MAX."""
    return float(min(BACKOFF_FIRST * 2**attempt, BACKOFF_MAX))


def wait_to_retry(
    event: str,
    context: dict[str, Any],
    *,
    action: str,
    attempt: int,
    of: int,
    reason: str,
    exc: DBAPIError,
) -> int:
    """Log the retry (the reason and error code, never the statement or the URL), wait its
    backoff, and return the number of the attempt about to start."""
    delay = backoff(attempt)
    log.warning(
        event,
        **context,
        action=action,
        attempt=attempt + 1,
        of=of,
        error=reason,
        code=error_code(exc),
        delay=delay,
    )
    time.sleep(delay)
    return attempt + 1


def connect_transient_reason(exc: DBAPIError) -> str | None:
    """Why a failed connect is worth another try: the server is down, restarting or full. A
    refusal by the server (user, password, database) or a host name that does not resolve: None."""
    if unknown_host(exc):
        return None
    if too_many_clients(exc):
        return "too many connections"
    reason = transient_reason(exc)
    return "cannot connect" if reason == "connection lost" else reason
