"""A database connection as retentiond uses it: engine, session timeouts, retries, deadlines.

`Database` reads the password (password_file, the PBX's own file, else the systemd credential
named like the connection), sets the lock and statement timeouts of every session per dialect,
and runs each piece of work in its own transaction, retrying lock waits, deadlocks and lost
connections with backoff (`retries`); the first connect too, when the server is down or
restarting. It also measures the database's clock against the host's (`clock_skew`).

A store's statements run one after another on one pooled connection, without a ping at checkout
or a rollback at checkin (see `Database.open`). A connection found dead fails its statement, and
`Database.retrying` retries it on a new one. No URL, password or server text is ever logged or
put into an exception: messages carry the connection's name, where it goes, and the database's
error codes with fixed words (`retentiond.dberrors`).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import URL, Connection, Engine, create_engine, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from retentiond.config.dburl import EXAMPLES, check_database_url
from retentiond.config.model import ConnectionConfig
from retentiond.config.pbxfiles import PbxSettingsError, password_from
from retentiond.credentials import CredentialError, read_secret
from retentiond.dberrors import connect_hint, describe
from retentiond.errors import StoreError
from retentiond.stores.db.deadline import ReadDeadline
from retentiond.stores.db.dialects import Dialect, dialect_named, dialect_of
from retentiond.stores.db.retries import (
    GAVE_UP,
    connect_transient_reason,
    failed,
    transient_reason,
    wait_to_retry,
)

T = TypeVar("T")

STATEMENT_TIMEOUT_CODES = {"57014", "1969", "3024"}
# A row still referred to by a foreign key of another table (PostgreSQL, MariaDB/MySQL, SQLite).
FOREIGN_KEY_CODES = {"23503", "1451", "SQLITE_CONSTRAINT_FOREIGNKEY"}


class Database:
    """One connection of the config as a store uses it: engine, timeouts, retries.

    It reads the password (password_file, else the systemd credential named like the connection),
    sets the lock and statement timeouts of every session per dialect, and runs each piece of work
    in its own transaction, retrying lock waits, deadlocks and lost connections with backoff; the
    first connect too, when the server is down or restarting. A server that stops answering is a
    lost connection after statement_timeout + 5 s (the driver's read timeout on MariaDB/MySQL,
    `ReadDeadline` on PostgreSQL). `label` names the store in messages and logs.
    """

    def __init__(self, name: str, settings: ConnectionConfig, label: str) -> None:
        self.name = name
        self.settings = settings
        self.label = label
        self._dialect: Dialect | None = None  # known once open
        self.server = ""  # e.g. "PostgreSQL 15.4", for describe()
        self.url: URL | None = None
        self._engine: Engine | None = None

    def open(self) -> Connection:
        """Create the engine and return a first connection, for reflection; the caller closes it."""
        self.close()
        url = self._engine_url()
        self.url = url
        dialect = dialect_of(url, self.name)
        self._dialect = dialect
        dialect.check_before_connect(url, self.name)
        try:
            engine = create_engine(
                url,
                connect_args=dialect.connect_args(self.settings, self._io_timeout()),
                # A store's statements run one after another on the one pooled connection. No
                # ping at checkout and no rollback at checkin: each Connection ends its own
                # transaction, and a connection that died fails its statement, which `retrying`
                # retries on a new one. Both would cost a round trip per statement.
                pool_pre_ping=False,
                pool_reset_on_return=None,
                pool_size=1,
                max_overflow=2,
                pool_recycle=3600,
                # SQLAlchemy errors print bound parameters (keys, file names) unless told not to.
                hide_parameters=True,
            )
        except (NoSuchModuleError, ImportError):
            tested = dialect.tested_driver
            raise StoreError(
                f"connection {self.name}: the driver {url.get_driver_name()} in url is not "
                f"installed; install it, or use {tested}"
            ) from None
        except (ArgumentError, TypeError, ValueError):
            # Never the exception's text: SQLAlchemy's repeats the URL, password and all.
            raise StoreError(
                f"connection {self.name}: url cannot be used; write it like {EXAMPLES}"
            ) from None
        self._engine = engine
        if dialect.needs_read_deadline:
            # libpq has no read timeout: give up on a server silent as long as MariaDB's would be.
            ReadDeadline(self._io_timeout(), self.label).watch(engine)
        try:
            return self._first_connection(engine)
        except StoreError:
            self.close()
            raise

    def _first_connection(self, engine: Engine) -> Connection:
        """A first connection, and the server's version read on it.

        A server that is down, restarting or busy is waited for with the backoff of `retrying`;
        one that refuses us (user, password, database, host name) fails at once, with what to
        check. Each wait is logged with its reason and error code, never the URL.
        """
        retries = self.settings.retries
        attempt = 0
        while True:
            connection: Connection | None = None
            try:
                connection = engine.connect()
                self.server = self.dialect.server_version(connection)
                return connection
            except DBAPIError as exc:
                if connection is not None:
                    with contextlib.suppress(DBAPIError):
                        connection.close()
                reason = connect_transient_reason(exc)
                if reason is None:
                    if connection is not None:
                        failure = describe(exc, f"{self.label}: reading the server version")
                        raise StoreError(
                            f"{self.label}: cannot read the server version: {failure}"
                        ) from None
                    raise StoreError(self._refused_message(exc)) from None
                if attempt >= retries:
                    check = (
                        "the server's max_connections is used up: raise it, or find who holds them"
                        if reason == "too many connections"
                        else "check that the database server is running and accepts connections "
                        "at that address (firewall, bind-address, listen_addresses)"
                    )
                    failure = describe(exc, f"connection {self.name}: connecting")
                    raise StoreError(
                        f"cannot connect to {self.name} ({self.where()}): {failure}; "
                        f"tried {attempt + 1} times: {check}"
                    ) from None
                attempt = wait_to_retry(
                    "sql store retrying",
                    {"store": self.label},
                    action="connecting",
                    attempt=attempt,
                    of=retries,
                    reason=reason,
                    exc=exc,
                )

    def _refused_message(self, exc: DBAPIError) -> str:
        failure = describe(exc, f"connection {self.name}: connecting")
        message = f"cannot connect to {self.name} ({self.where()}): {failure}"
        hint = connect_hint(exc)
        return f"{message}; {hint}" if hint else message

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError(f"{self.label}: the store is not open")  # a bug in the caller
        return self._engine

    @property
    def dialect(self) -> Dialect:
        """The database family's SQL and behaviours (stores/db/dialects)."""
        if self._dialect is None:
            raise RuntimeError(f"{self.label}: the store is not open")  # a bug in the caller
        return self._dialect

    @property
    def preparer(self) -> Any:
        """The dialect's quoting of table and column names."""
        return self.engine.dialect.identifier_preparer

    @property
    def delete_returning(self) -> bool:
        """Whether DELETE can hand back the deleted rows (not on MySQL, nor SQLite < 3.35)."""
        return bool(self.engine.dialect.delete_returning)

    @property
    def database_name(self) -> str | None:
        return self.url.database if self.url is not None else None

    def where(self) -> str:
        """Host and port, or the SQLite file: where the connection goes, without credentials."""
        url = self.url
        if url is None:
            return "?"
        return self.dialect.where(url)

    def retrying(
        self,
        action: str,
        work: Callable[[Connection], T],
        *,
        write: bool = False,
        settle: Callable[[Connection, T], T] | None = None,
        failure: Callable[[DBAPIError], str] | None = None,
        gave_up: Callable[[str, int], str] | None = None,
        event: str = "sql store retrying",
        context: dict[str, Any] | None = None,
        autocommit: bool = False,
    ) -> T:
        """Run `work` in its own transaction; retry lock waits, deadlocks and lost connections.

        A write commits before returning. A failed attempt rolled back completely, so retrying it
        cannot delete twice what one batch planned. `failure` and `gave_up` word the errors for
        callers whose situation differs (files already deleted), `event` and `context` the log.

        Except a write whose connection was lost while committing: the server may have committed
        it and only the reply was lost. With `settle`, the next attempt runs
        `settle(connection, that attempt's result)` instead of `work`, which finds out in its own
        transaction and returns the result to keep (doing the work again where it was not
        committed). Without `settle` the work simply runs again.

        `autocommit` (reads only): each statement of `work` sees its own snapshot, as in READ
        COMMITTED; for work that is one statement, whose transaction would add two round trips.
        """
        engine = self.engine
        retries = self.settings.retries
        attempt = 0
        unsettled: list[T] = []  # the result of the attempt whose commit got no reply
        commit_unanswered = False  # an attempt's commit got no reply: it may have gone through
        while True:
            done: list[T] = []  # this attempt's result, once its work is done: committing
            try:
                if not write:
                    with engine.connect() as connection:
                        if autocommit:
                            # No BEGIN and ROLLBACK around it: one round trip instead of three
                            connection.execution_options(isolation_level="AUTOCOMMIT")
                        return work(connection)
                with engine.begin() as connection:
                    if settle is not None and unsettled:
                        done.append(settle(connection, unsettled[0]))
                    else:
                        done.append(work(connection))
                return done[0]
            except DBAPIError as exc:
                reason = transient_reason(exc)
                lost_commit = bool(done) and reason == "connection lost"
                commit_unanswered = commit_unanswered or lost_commit
                # A write that failed with the server's answer was rolled back; one whose commit
                # got no reply (now or in an earlier attempt) may have been committed.
                rolled_back = write and not commit_unanswered
                if reason is None:
                    # `from None`: the chained SQLAlchemy error would print the bound parameters.
                    message = failure(exc) if failure else self.failure_message(action, exc)
                    raise failed(message, exc, rolled_back) from None
                if lost_commit and settle is not None:
                    unsettled[:] = done
                if attempt >= retries:
                    attempts = attempt + 1
                    raise failed(
                        gave_up(reason, attempts)
                        if gave_up
                        else f"{self.label}: {GAVE_UP[reason].format(attempts=attempts)}; the "
                        "run was stopped, "
                        + (
                            "and whether the last batch was committed is not known (the next run "
                            "reconciles it)"
                            if unsettled or lost_commit
                            else "nothing beyond the committed batches was deleted"
                        ),
                        exc,
                        rolled_back,
                    ) from None
                attempt = wait_to_retry(
                    event,
                    {
                        **(context if context is not None else {"store": self.label}),
                        **({"while_committing": True} if lost_commit else {}),
                    },
                    action=action,
                    attempt=attempt,
                    of=retries,
                    reason=reason,
                    exc=exc,
                )

    def failure_message(self, action: str, exc: DBAPIError) -> str:
        """The store, the action, the codes and fixed words: never the server's text."""
        failure = describe(exc, f"{self.label}: {action}")
        if failure.code in FOREIGN_KEY_CODES:
            return (
                f"{self.label}: {action} failed ({failure.codes}) and was rolled back: rows "
                "of another table still refer to the rows being deleted; purge that table first "
                "(a store listed before this one in the rule, or a rule that runs before it)"
            )
        message = f"{self.label}: {action} failed ({failure.codes}): {failure.description}"
        if failure.code in STATEMENT_TIMEOUT_CODES:
            message += (
                "; the statement ran longer than statement_timeout "
                f"({self.settings.statement_timeout:g} s): lower batch_size or raise it"
            )
        elif failure.remedy:
            message += f"; {failure.remedy}"
        return message

    def clock_skew(self) -> timedelta | None:
        """Database clock minus host clock; None for SQLite, a file without a clock."""
        query = self.dialect.clock_query
        if query is None:
            return None

        def measure(connection: Connection) -> timedelta:
            before = datetime.now(UTC)
            value = connection.execute(text(query)).scalar()
            after = datetime.now(UTC)
            if not isinstance(value, datetime):
                raise StoreError(f"{self.label}: the database clock returned no time")
            database_now = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
            return database_now - (before + (after - before) / 2)

        return self.retrying("reading the database clock", measure)

    def _engine_url(self) -> URL:
        try:
            url = make_url(check_database_url(self.settings.url))
        except (ArgumentError, ValueError):  # the config's validation lets none through
            raise StoreError(
                f"connection {self.name}: url is not a database URL; write it like {EXAMPLES}"
            ) from None
        named = dialect_named(url.get_backend_name())
        if url.password is None and (named is None or named.has_users):
            password = self._password()
            if password is not None:
                url = url.set(password=password)
        return url

    def _password(self) -> str | None:
        """From password_file, else the PBX's own file (password_from), else the systemd
        credential named like the connection."""
        name = self.name
        path = self.settings.password_file
        if path is None and self.settings.password_from is not None:
            try:
                return password_from(self.settings.password_from)
            except PbxSettingsError as error:
                raise StoreError(f"connection {name}: {error}") from None
        if path is None:
            credentials = os.environ.get("CREDENTIALS_DIRECTORY")
            if not credentials or not (Path(credentials) / name).is_file():
                return None
            path = Path(credentials) / name
        try:
            return read_secret(path, "password file")
        except CredentialError as error:
            raise StoreError(f"connection {name}: {error}") from None

    def _io_timeout(self) -> int:
        """Seconds to wait for an answer: a little longer than the server's own timeouts, so
        the server's error wins where it still answers."""
        settings = self.settings
        return math.ceil(max(settings.statement_timeout, settings.lock_timeout) + 5)
