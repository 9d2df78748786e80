"""MariaDB and MySQL: one dialect ("mysql"), told apart only in the server's version.

Sessions run with time_zone +00:00 (TIMESTAMP columns read in UTC), innodb_lock_wait_timeout and
lock_wait_timeout from lock_timeout, and MariaDB's max_statement_time from statement_timeout;
the driver's read and write timeouts make a server that stops answering a lost connection.
MyISAM and Aria tables lock the whole table for a DELETE and keep what a statement wrote before
it failed. A table without any key can still be purged in bounded batches: DELETE ... LIMIT.
MariaDB compares text without regard to case or trailing spaces; exact comparisons go through
BINARY.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, Table, text
from sqlalchemy import types as sqltypes

from retentiond.stores.db.dialects import mysql_privileges
from retentiond.stores.db.dialects.base import Dialect, TableStorage

if TYPE_CHECKING:
    from retentiond.config.model import ConnectionConfig
    from retentiond.stores.db.grants import Needed
    from retentiond.stores.db.timekinds import TimeKind

# MariaDB/MySQL engines that lock the whole table for a DELETE, and their batch size unless
# batch_size is set: about 10-20 ms per DELETE on FreePBX's cdr, so the PBX's inserts barely wait.
TABLE_LOCKING_ENGINES = frozenset({"MyISAM", "Aria", "MRG_MyISAM"})


class MySQL(Dialect):
    name = "mysql"
    tested_driver = "mariadb+pymysql"
    default_port = 3306
    clock_query = "SELECT UTC_TIMESTAMP(6)"
    archived_log = "binlog"
    text_type = "CHAR"
    null_safe_equal = "<=>"
    deletes_without_key = True

    def integer_divide(self, dividend: str, divisor: str) -> str:
        return f"{dividend} DIV {divisor}"  # `/` gives a decimal

    def connect_args(self, settings: ConnectionConfig, io_timeout: int) -> dict[str, Any]:
        lock = max(1, math.ceil(settings.lock_timeout))
        # Versioned comments: /*M!100100 */ runs on MariaDB 10.1+ only (MySQL has no
        # max_statement_time); /*!50500 */ skips lock_wait_timeout on servers before 5.5.
        init = (
            f"SET SESSION innodb_lock_wait_timeout={lock} "
            f"/*!50500 , SESSION lock_wait_timeout={lock} */, SESSION time_zone='+00:00' "
            f"/*M!100100 , SESSION max_statement_time={settings.statement_timeout:.3f} */"
        )
        # A server that stops answering is a lost connection (2013), retried like one.
        return {
            "init_command": init,
            "connect_timeout": max(1, math.ceil(settings.connect_timeout)),
            "read_timeout": io_timeout,
            "write_timeout": io_timeout,
        }

    def server_version(self, connection: Connection) -> str:
        version = str(connection.execute(text("SELECT VERSION()")).scalar())
        return f"MariaDB {version}" if "mariadb" in version.lower() else f"MySQL {version}"

    def naive_time_kind(self, column_type: sqltypes.DateTime) -> TimeKind:
        if isinstance(column_type, sqltypes.TIMESTAMP):
            return "utc"  # the session time_zone is +00:00
        return "local"

    def table_storage(self, connection: Connection, table: Table) -> TableStorage:
        found = connection.execute(
            text(
                "SELECT ENGINE FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = COALESCE(:schema, DATABASE()) AND TABLE_NAME = :table"
            ),
            {"schema": table.schema, "table": table.name},
        ).scalar()
        engine = str(found) if found is not None else None
        locking = engine in TABLE_LOCKING_ENGINES
        return TableStorage(engine, locks_table=locking, transactional=not locking)

    def explain(
        self, connection: Connection, statement: str, params: dict[str, Any]
    ) -> tuple[list[str], bool]:
        rows = connection.execute(text(f"EXPLAIN {statement}"), params).mappings().all()
        # NULL columns (no key, no table for an impossible WHERE) are left out, not shown as None.
        lines = [
            ", ".join(
                part
                for part in (
                    f"{row['table'] or '-'}: access {row['type'] or '-'}",
                    f"key {row['key']}" if row["key"] else "no key",
                    f"rows {row['rows']}" if row["rows"] is not None else "",
                    str(row["Extra"] or ""),
                )
                if part
            )
            for row in rows
        ]
        # ALL reads every row, index every entry of an index: both are a full scan per batch.
        return lines, any(row["type"] in ("ALL", "index") for row in rows)

    def position(self, text: str, character: Literal["<", ">"]) -> str:
        return f"LOCATE('{character}', {text})"

    def up_to(self, text: str, character: Literal[">"]) -> str:
        return f"SUBSTRING_INDEX({text}, '{character}', 1)"

    def contains(self, haystack: str, param: str) -> str:
        return f"LOCATE(CAST(:{param} AS BINARY), CAST({haystack} AS BINARY)) > 0"

    def file_stem(self, value: str, text_type: bool) -> str:
        # Binary values work alike: the functions then count bytes.
        base = f"SUBSTRING_INDEX({value}, '/', -1)"
        after_dot = f"SUBSTRING_INDEX({base}, '.', -1)"
        return (
            f"CASE WHEN LOCATE('.', {base}) > 0 THEN "
            f"SUBSTRING({base}, 1, CHAR_LENGTH({base}) - CHAR_LENGTH({after_dot}) - 1) "
            f"ELSE {base} END"
        )

    def exact_in(self, column: str, param: str) -> str:
        # MariaDB compares case- and trailing-space-insensitively: `x.WAV` is not `x.wav`.
        return f" AND CAST({column} AS BINARY) IN :{param}"

    def missing_privileges(
        self, connection: Connection, table: str, wanted: dict[str, Needed], schema: str | None
    ) -> set[str]:
        return mysql_privileges.missing(connection, table, wanted, schema)

    def excess_privileges(self, connection: Connection, table: str, schema: str | None) -> set[str]:
        return mysql_privileges.excess(connection, table, schema)

    def grant_statement(
        self,
        connection: Connection,
        table: str,
        privileges: str,
        schemas: list[str],
        schema: str | None,
    ) -> str | None:
        return mysql_privileges.grant(connection, table, privileges, schema)
