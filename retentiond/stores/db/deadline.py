"""A client-side read deadline for PostgreSQL, whose driver has no read timeout (MariaDB's has).

A server, or a network path, that stops answering would leave a statement waiting forever;
`ReadDeadline` cuts such a connection after the I/O timeout, and the driver then reports a lost
connection, which `Database.retrying` retries like any other.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from typing import Any

import structlog
from sqlalchemy import Connection, Engine
from sqlalchemy.event import listen

log = structlog.get_logger()


class ReadDeadline:
    """A client-side read timeout for PostgreSQL, whose driver has none (MariaDB's has).

    Every statement, commit and rollback on the engine's connections must be answered within
    `seconds`; a watcher thread shuts down the socket of one that is not. The driver then reports
    a lost connection, which `Database.retrying` retries like any other. statement_timeout is
    enforced by the server: this is for a server, or a network path, that stopped answering.
    """

    def __init__(self, seconds: float, label: str) -> None:
        self.seconds = seconds
        self.label = label
        self._waiting: dict[int, tuple[float, Any]] = {}  # id of a DBAPI connection: deadline
        self._changed = threading.Condition()
        self._watcher: threading.Thread | None = None

    def watch(self, engine: Engine) -> None:
        # An answer ends the wait; so does the connection's return to the pool, after a commit,
        # a rollback or an error (a connection that failed is closed, and nothing waits on it).
        for name in ("before_cursor_execute", "commit", "rollback"):
            listen(engine, name, lambda connection, *_: self._start(driver_connection(connection)))
        listen(engine, "after_cursor_execute", self._answered)
        listen(engine, "checkin", self._checked_in)
        # A new connection's first queries (the dialect's, before its first checkout): `insert`
        # puts this ahead of the listener that runs them.
        listen(
            engine,
            "connect",
            lambda dbapi_connection, _: self._start(dbapi_connection),
            insert=True,
        )
        listen(engine, "checkout", lambda dbapi_connection, *_: self._forget(dbapi_connection))
        listen(engine, "engine_disposed", lambda _: self._end())

    def _start(self, dbapi_connection: Any) -> None:
        if dbapi_connection is None:
            return
        with self._changed:
            idle = not self._waiting
            self._waiting[id(dbapi_connection)] = (
                time.monotonic() + self.seconds,
                dbapi_connection,
            )
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch, name="retentiond-read-deadline", daemon=True
                )
                self._watcher.start()
            elif idle:
                self._changed.notify()  # every deadline is the same span ahead: only the first

    def _answered(self, connection: Connection, *_: Any) -> None:
        self._forget(driver_connection(connection))

    def _checked_in(self, dbapi_connection: Any, _record: Any) -> None:
        self._forget(dbapi_connection)

    def _forget(self, dbapi_connection: Any) -> None:
        if dbapi_connection is not None:
            with self._changed:
                self._waiting.pop(id(dbapi_connection), None)

    def _end(self) -> None:
        with self._changed:
            self._waiting.clear()
            watcher, self._watcher = self._watcher, None
            self._changed.notify()
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=1)

    def _watch(self) -> None:
        me = threading.current_thread()
        with self._changed:
            while self._watcher is me:
                now = time.monotonic()
                for key, (deadline, dbapi_connection) in list(self._waiting.items()):
                    if deadline <= now:
                        del self._waiting[key]
                        self._cut(dbapi_connection)
                following = min((deadline for deadline, _ in self._waiting.values()), default=None)
                self._changed.wait(None if following is None else max(0.0, following - now))

    def _cut(self, dbapi_connection: Any) -> None:
        """Shut the connection's socket down: the blocked driver call returns with an error.
        Called with the lock held, so the connection is still the one that was waiting."""
        try:
            if dbapi_connection.closed:
                return
            descriptor = os.dup(dbapi_connection.fileno())
        except Exception:  # closed meanwhile: nothing is waiting on it
            return
        with socket.socket(fileno=descriptor) as duplicate, contextlib.suppress(OSError):
            duplicate.shutdown(socket.SHUT_RDWR)
        log.warning(
            "sql store gave up waiting for the database",
            store=self.label,
            seconds=self.seconds,
        )


def driver_connection(connection: Connection) -> Any:
    """The driver's connection under `connection`; None once it was closed or invalidated (the
    `connection` attribute would open a new one)."""
    if connection.closed or connection.invalidated:
        return None
    return connection.connection.dbapi_connection
