"""PostgreSQL: sessions with lock_timeout, statement_timeout and an idle-in-transaction limit;
TCP keepalives and a read deadline (`ReadDeadline`, libpq has no read timeout) for a server that
stops answering.

A table without a primary key is walked by `ctid`, which changes when a row is updated. Lists of
keys and values go as one array parameter (`= ANY(:keys)`): psycopg allows at most 65535
parameters per statement.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, text

from retentiond.stores.db.dialects import postgresql_privileges
from retentiond.stores.db.dialects.base import Dialect

if TYPE_CHECKING:
    from retentiond.config.model import ConnectionConfig
    from retentiond.stores.db.grants import Needed


class PostgreSQL(Dialect):
    name = "postgresql"
    tested_driver = "postgresql+psycopg"
    default_port = 5432
    needs_read_deadline = True
    clock_query = "SELECT clock_timestamp()"
    archived_log = "wal"
    null_safe_equal = "IS NOT DISTINCT FROM"

    def connect_args(self, settings: ConnectionConfig, io_timeout: int) -> dict[str, Any]:
        options = (
            f"-c lock_timeout={_milliseconds(settings.lock_timeout)} "
            f"-c statement_timeout={_milliseconds(settings.statement_timeout)} "
            "-c idle_in_transaction_session_timeout=60000"
        )
        return {
            "options": options,
            "application_name": "retentiond",
            "connect_timeout": max(2, math.ceil(settings.connect_timeout)),
            # A server host that died or is cut off: the kernel drops the connection once
            # nothing was acknowledged for the I/O timeout, while sending or waiting alike
            # (keepalive probes). A server alive but silent is `ReadDeadline`'s.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": io_timeout * 1000,
        }

    def server_version(self, connection: Connection) -> str:
        return f"PostgreSQL {connection.execute(text('SHOW server_version')).scalar()}"

    def implicit_row_key(
        self, connection: Connection, table_sql: str
    ) -> tuple[str, str, bool] | None:
        return "ctid", "ctid", False

    def explain(
        self, connection: Connection, statement: str, params: dict[str, Any]
    ) -> tuple[list[str], bool]:
        # As the planner would for a big table: a small one is read whole, which says nothing.
        connection.execute(text("SET LOCAL enable_seqscan = off"))
        plan = connection.execute(text(f"EXPLAIN {statement}"), params)
        lines = _without_jit([str(row[0]) for row in plan])
        full_scan = any("Seq Scan" in line for line in lines)
        lines.append("(planned with enable_seqscan off, as for a large table)")
        return lines, full_scan

    def position(self, text: str, character: Literal["<", ">"]) -> str:
        return f"strpos({text}, '{character}')"

    def up_to(self, text: str, character: Literal[">"]) -> str:
        return f"split_part({text}, '{character}', 1)"

    def contains(self, haystack: str, param: str) -> str:
        return f"strpos({haystack}, CAST(:{param} AS TEXT)) > 0"

    def file_stem(self, value: str, text_type: bool) -> str:
        value = value if text_type else f"encode({value}, 'escape')"
        # `[.]`, not a backslash: old servers may read backslashes in literals as escapes.
        return f"regexp_replace(regexp_replace({value}, '^.*/', ''), '[.][^.]*$', '')"

    def key_equals(self, key: str, param: str) -> str:
        if key == "ctid":
            return f"ctid = CAST(:{param} AS tid)"
        return f"{key} = :{param}"

    def key_moves(self, key: str) -> bool:
        # PostgreSQL gives an updated row a new ctid.
        return key == "ctid"

    def array_match(self, column: str, param: str) -> str | None:
        if column == "ctid":
            return f"ctid = ANY(CAST(:{param} AS tid[]))"
        return f"{column} = ANY(:{param})"

    def missing_privileges(
        self, connection: Connection, table: str, wanted: dict[str, Needed], schema: str | None
    ) -> set[str]:
        return postgresql_privileges.missing(connection, table, schema, wanted)

    def excess_privileges(self, connection: Connection, table: str, schema: str | None) -> set[str]:
        return postgresql_privileges.excess(connection, table, schema)

    def grant_statement(
        self,
        connection: Connection,
        table: str,
        privileges: str,
        schemas: list[str],
        schema: str | None,
    ) -> str | None:
        return postgresql_privileges.grant(connection, table, privileges, schemas, schema)


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _without_jit(lines: list[str]) -> list[str]:
    """The plan without its JIT block: the disabled seq scan's huge cost makes PostgreSQL plan
    to compile it, which says nothing about a batch on a large table."""
    kept: list[str] = []
    block: int | None = None  # the JIT: line's indentation while inside its block
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if block is not None and indent > block:
            continue
        block = indent if line.strip() == "JIT:" else None
        if block is None:
            kept.append(line)
    return kept
