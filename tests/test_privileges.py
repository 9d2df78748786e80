"""What the connected user may do to a table, read from real MariaDB and PostgreSQL servers.

Each test creates a user (MariaDB) or a login role (PostgreSQL) with a uniquely named identity,
grants it exactly what the test is about, connects as it and asks `retentiond.stores.db.privileges`.
Users and roles are server-wide, so every one created here is dropped after its test.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import CompletedProcess
from zoneinfo import ZoneInfo

import pytest
from pbxdata import PbxDatabase, cdr_rows, cel_rows
from sqlalchemy import URL, Engine, create_engine, make_url, text
from threecx_schema import (
    RECORDINGS,
    S_VOICEMAIL,
    cdrbilling_rows,
    cdroutput_rows,
    cl_history,
    create_cdroutput_schema,
    create_cl_schema,
    recording_rows,
)

from retentiond.stores.db.dialects.mysql_privileges import _like, _parse_grant
from retentiond.stores.db.privileges import (
    MYSQL_EXCESS,
    Needed,
    PrivilegeError,
    describe_excess,
    excess_privileges,
    missing_privileges,
)

# Names a careless quoting would break: a dot, both quote characters, a space, a dash.
ODD_TABLE = 'cdr.2024 "x" `y` z-1'
ODD_COLUMN = "recording file"


@dataclass
class Server:
    """A fresh database on a server, with helpers to create users that are dropped afterwards."""

    admin: Engine  # connected to the fresh database as root/postgres
    url: str
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    engines: list[Engine] = field(default_factory=list)

    def execute(self, *statements: str) -> None:
        with self.admin.begin() as connection:
            for statement in statements:
                connection.execute(text(statement))

    def connect_as(
        self, user: str, password: str | None = None, *, database: bool = True
    ) -> Engine:
        server = make_url(self.url)
        # A user without any privilege in the database cannot name it when connecting.
        url = URL.create(
            server.drivername,
            username=user,
            password=password,
            host=server.host,
            port=server.port,
            database=server.database if database else None,
        )
        engine = create_engine(url)
        self.engines.append(engine)
        return engine

    def close(self) -> None:
        for engine in self.engines:
            engine.dispose()
        for cleanup in reversed(self.cleanups):
            cleanup()
        self.admin.dispose()


def _name(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


# -- MariaDB ------------------------------------------------------------------------------------


@pytest.fixture
def mariadb(mariadb_url: str, mariadb_server: Engine) -> Iterator[Server]:
    server = Server(create_engine(mariadb_url), mariadb_url)
    server.execute(
        "CREATE TABLE cdr (calldate DATETIME NOT NULL, src VARCHAR(80), "
        "recordingfile VARCHAR(255) NOT NULL DEFAULT '', KEY (calldate))",
        "CREATE TABLE cel (id INT AUTO_INCREMENT PRIMARY KEY, eventtime DATETIME NOT NULL)",
        f"CREATE TABLE `{ODD_TABLE.replace('`', '``')}` (id INT, `{ODD_COLUMN}` VARCHAR(10))",
    )
    yield server
    server.close()


def mariadb_user(
    server: Server, mariadb_server: Engine, *grants: str, database: bool = True
) -> Engine:
    """A new user@'%' with these GRANT statements (`{user}` stands for the user), connected."""
    user, password = _name("rtd_priv"), secrets.token_hex(8)
    account = f"'{user}'@'%'"

    def drop() -> None:
        with mariadb_server.connect() as connection:
            connection.execute(text(f"DROP USER IF EXISTS {account}"))

    server.cleanups.append(drop)
    with mariadb_server.connect() as connection:
        connection.execute(text(f"CREATE USER {account} IDENTIFIED BY '{password}'"))
        for grant in grants:
            connection.execute(text(grant.format(user=account)))
    return server.connect_as(user, password, database=database)


def mariadb_role(server: Server, mariadb_server: Engine) -> str:
    role = _name("rtd_role")

    def drop() -> None:
        with mariadb_server.connect() as connection:
            connection.execute(text(f"DROP ROLE IF EXISTS {role}"))

    server.cleanups.append(drop)
    with mariadb_server.connect() as connection:
        connection.execute(text(f"CREATE ROLE {role}"))
    return role


def _db(server: Server) -> str:
    database = make_url(server.url).database
    assert database
    return database


@pytest.mark.mariadb
def test_mariadb_exactly_select_delete_is_enough_and_not_too_much(
    mariadb: Server, mariadb_server: Engine
) -> None:
    db = _db(mariadb)
    engine = mariadb_user(mariadb, mariadb_server, f"GRANT SELECT, DELETE ON {db}.cdr TO {{user}}")

    assert missing_privileges(engine, "mariadb", "cdr", {"SELECT", "DELETE"}) == set()
    assert excess_privileges(engine, "mariadb", "cdr") == set()
    # the grant is on cdr only
    assert missing_privileges(engine, None, "cel", {"SELECT", "DELETE"}) == {"SELECT", "DELETE"}
    assert missing_privileges(engine, None, "cdr", {"SELECT", "DELETE"}, schema=db) == set()


@pytest.mark.mariadb
def test_mariadb_only_select_misses_delete(mariadb: Server, mariadb_server: Engine) -> None:
    engine = mariadb_user(
        mariadb, mariadb_server, f"GRANT SELECT ON {_db(mariadb)}.cdr TO {{user}}"
    )

    assert missing_privileges(engine, "mysql", "cdr", {"SELECT", "DELETE"}) == {"DELETE"}
    assert excess_privileges(engine, "mysql", "cdr") == set()


@pytest.mark.mariadb
def test_mariadb_root_has_every_excess_privilege(mariadb: Server) -> None:
    # the fixture's own connection is root@127.0.0.1: ALL PRIVILEGES ON *.* WITH GRANT OPTION
    assert missing_privileges(mariadb.admin, None, "cdr", {"SELECT", "DELETE", "UPDATE"}) == set()
    excess = excess_privileges(mariadb.admin, None, "cdr")
    assert excess == set(MYSQL_EXCESS)
    print("root on MariaDB:", "; ".join(describe_excess(excess or set())))


@pytest.mark.mariadb
def test_mariadb_column_grant_covers_only_its_column(
    mariadb: Server, mariadb_server: Engine
) -> None:
    # The least privilege for the FreePBX preset's call-recordings store.
    engine = mariadb_user(
        mariadb,
        mariadb_server,
        f"GRANT SELECT, DELETE, UPDATE (recordingfile) ON {_db(mariadb)}.cdr TO {{user}}",
    )

    needed = {"SELECT", "DELETE", "UPDATE(recordingfile)"}
    assert missing_privileges(engine, None, "cdr", needed) == set()
    assert missing_privileges(engine, None, "cdr", {"UPDATE"}) == {"UPDATE"}
    assert missing_privileges(engine, None, "cdr", {"update (src)"}) == {"update (src)"}
    assert excess_privileges(engine, None, "cdr") == set()


@pytest.mark.mariadb
def test_mariadb_database_level_grants(mariadb: Server, mariadb_server: Engine) -> None:
    db = _db(mariadb)
    engine = mariadb_user(mariadb, mariadb_server, f"GRANT SELECT, DELETE ON `{db}`.* TO {{user}}")
    assert missing_privileges(engine, None, "cel", {"SELECT", "DELETE"}) == set()
    assert excess_privileges(engine, None, "cel") == set()

    # FreePBX's own database user: ALL PRIVILEGES on its databases
    engine = mariadb_user(mariadb, mariadb_server, f"GRANT ALL PRIVILEGES ON `{db}`.* TO {{user}}")
    assert missing_privileges(engine, None, "cel", {"SELECT", "DELETE", "UPDATE"}) == set()
    assert excess_privileges(engine, None, "cel") == {"DROP", "ALTER"}


@pytest.mark.mariadb
def test_mariadb_database_pattern_underscore_is_escaped(
    mariadb: Server, mariadb_server: Engine
) -> None:
    # `rtd\_test\_zz%` is a pattern with literal underscores: it must not match this database
    # (rtd_test_<hex>), while the unescaped `rtd_test%` matches it.
    engine = mariadb_user(
        mariadb,
        mariadb_server,
        r"GRANT ALL PRIVILEGES ON `rtd\_test\_zz%`.* TO {user} WITH GRANT OPTION",
        f"GRANT SELECT, DELETE ON {_db(mariadb)}.cdr TO {{user}}",
    )
    assert excess_privileges(engine, None, "cdr") == set()
    engine = mariadb_user(mariadb, mariadb_server, "GRANT DROP ON `rtd_test%`.* TO {user}")
    assert excess_privileges(engine, None, "cdr") == {"DROP"}


@pytest.mark.mariadb
def test_mariadb_odd_table_name_is_matched_exactly(mariadb: Server, mariadb_server: Engine) -> None:
    quoted = "`" + ODD_TABLE.replace("`", "``") + "`"
    engine = mariadb_user(
        mariadb,
        mariadb_server,
        f"GRANT SELECT, DELETE, UPDATE (`{ODD_COLUMN}`) ON {_db(mariadb)}.{quoted} TO {{user}}",
    )
    needed = {"SELECT", "DELETE", f"UPDATE({ODD_COLUMN})"}
    assert missing_privileges(engine, None, ODD_TABLE, needed) == set()
    assert missing_privileges(engine, None, "cdr", {"SELECT"}) == {"SELECT"}
    assert missing_privileges(engine, None, "cdr.2024", {"SELECT"}) == {"SELECT"}


@pytest.mark.mariadb
def test_mariadb_privileges_through_the_default_role(
    mariadb: Server, mariadb_server: Engine
) -> None:
    db = _db(mariadb)
    role, inner = mariadb_role(mariadb, mariadb_server), mariadb_role(mariadb, mariadb_server)
    mariadb.execute(
        f"GRANT SELECT ON {db}.cdr TO {inner}",
        f"GRANT {inner} TO {role}",
        f"GRANT DELETE ON `{db}`.* TO {role}",
    )
    without = mariadb_user(mariadb, mariadb_server, f"GRANT {role} TO {{user}}", database=False)
    # granted, but not enabled in the session: the role's privileges do not apply
    needed = {"SELECT", "DELETE"}
    assert missing_privileges(without, None, "cdr", needed, schema=db) == needed

    with_default = mariadb_user(
        mariadb,
        mariadb_server,
        f"GRANT {role} TO {{user}}",
        f"SET DEFAULT ROLE {role} FOR {{user}}",
    )
    assert missing_privileges(with_default, None, "cdr", {"SELECT", "DELETE"}) == set()
    assert excess_privileges(with_default, None, "cdr") == set()


@pytest.mark.mariadb
def test_mariadb_accepts_a_connection(mariadb: Server, mariadb_server: Engine) -> None:
    engine = mariadb_user(
        mariadb, mariadb_server, f"GRANT SELECT ON {_db(mariadb)}.cdr TO {{user}}"
    )
    with engine.connect() as connection:
        assert missing_privileges(connection, None, "cdr", {"SELECT", "DELETE"}) == {"DELETE"}


# -- PostgreSQL ---------------------------------------------------------------------------------

PG_SCHEMA = 'Odd "Schema".x'
PG_TABLE = 'we\'ird "T" 1'


def _pg_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


PG_QUALIFIED = f"{_pg_ident(PG_SCHEMA)}.{_pg_ident(PG_TABLE)}"


@pytest.fixture
def postgres(postgres_url: str) -> Iterator[Server]:
    server = Server(create_engine(postgres_url), postgres_url)
    server.execute(
        "CREATE TABLE cl_calls (id INT PRIMARY KEY, start_time TIMESTAMPTZ NOT NULL)",
        f"CREATE SCHEMA {_pg_ident(PG_SCHEMA)}",
        f"CREATE TABLE {PG_QUALIFIED} (id INT, recordingfile TEXT, {_pg_ident(ODD_COLUMN)} TEXT)",
    )
    yield server
    server.close()


def postgres_role(server: Server, *grants: str, login: bool = True) -> tuple[str, Engine | None]:
    """A new role with these statements (`{role}` stands for it), connected when it can log in."""
    role = _name("rtd_priv")

    def drop() -> None:
        # DROP OWNED revokes what the role was granted in this database; the database itself
        # is dropped by the postgres_url fixture afterwards.
        server.execute(f"DROP OWNED BY {role}", f"DROP ROLE {role}")

    server.execute(f"CREATE ROLE {role} {'LOGIN' if login else 'NOLOGIN'}")
    server.cleanups.append(drop)
    server.execute(*(grant.format(role=role) for grant in grants))
    return role, server.connect_as(role) if login else None


@pytest.mark.postgres
def test_postgres_exactly_select_delete_is_enough_and_not_too_much(postgres: Server) -> None:
    _, engine = postgres_role(postgres, "GRANT SELECT, DELETE ON cl_calls TO {role}")
    assert engine is not None

    assert missing_privileges(engine, "postgresql", "cl_calls", {"SELECT", "DELETE"}) == set()
    assert missing_privileges(engine, None, "cl_calls", {"SELECT"}, schema="public") == set()
    assert excess_privileges(engine, "postgresql", "cl_calls") == set()
    assert missing_privileges(engine, None, "cl_calls", {"UPDATE", "TRUNCATE", "INSERT"}) == {
        "UPDATE",
        "TRUNCATE",
        "INSERT",
    }


@pytest.mark.postgres
def test_postgres_only_select_misses_delete(postgres: Server) -> None:
    _, engine = postgres_role(postgres, "GRANT SELECT ON cl_calls TO {role}")
    assert engine is not None
    assert missing_privileges(engine, None, "cl_calls", {"SELECT", "DELETE"}) == {"DELETE"}


@pytest.mark.postgres
def test_postgres_superuser_and_owner_are_excess(postgres: Server) -> None:
    # the fixture's connection is postgres: superuser, and owner of the tables it created
    assert missing_privileges(postgres.admin, None, "cl_calls", {"SELECT", "DELETE"}) == set()
    excess = excess_privileges(postgres.admin, None, "cl_calls")
    assert excess == {"SUPERUSER", "OWNER"}
    print("postgres on PostgreSQL:", "; ".join(describe_excess(excess or set())))


@pytest.mark.postgres
def test_postgres_owner_without_superuser(postgres: Server) -> None:
    role, engine = postgres_role(postgres, "ALTER TABLE cl_calls OWNER TO {role}")
    assert engine is not None
    assert missing_privileges(engine, None, "cl_calls", {"SELECT", "DELETE"}) == set()
    assert excess_privileges(engine, None, "cl_calls") == {"OWNER"}
    # a member of the owning role may act as the owner too
    _, member = postgres_role(postgres, f"GRANT {role} TO {{role}}")
    assert member is not None
    assert excess_privileges(member, None, "cl_calls") == {"OWNER"}


@pytest.mark.postgres
def test_postgres_privileges_through_a_role(postgres: Server) -> None:
    group, _ = postgres_role(postgres, "GRANT SELECT, DELETE ON cl_calls TO {role}", login=False)
    _, engine = postgres_role(postgres, f"GRANT {group} TO {{role}}")
    assert engine is not None
    assert missing_privileges(engine, None, "cl_calls", {"SELECT", "DELETE"}) == set()
    assert excess_privileges(engine, None, "cl_calls") == set()


@pytest.mark.postgres
def test_postgres_grant_option_is_excess(postgres: Server) -> None:
    _, engine = postgres_role(
        postgres, "GRANT SELECT, DELETE ON cl_calls TO {role} WITH GRANT OPTION"
    )
    assert engine is not None
    assert excess_privileges(engine, None, "cl_calls") == {"GRANT"}


@pytest.mark.postgres
def test_postgres_odd_schema_and_table_names(postgres: Server) -> None:
    _, engine = postgres_role(
        postgres,
        f"GRANT USAGE ON SCHEMA {_pg_ident(PG_SCHEMA)} TO {{role}}",
        f"GRANT SELECT, DELETE ON {PG_QUALIFIED} TO {{role}}",
        f"GRANT UPDATE ({_pg_ident(ODD_COLUMN)}) ON {PG_QUALIFIED} TO {{role}}",
    )
    assert engine is not None
    needed = {"SELECT", "DELETE", f"UPDATE({ODD_COLUMN})"}
    assert missing_privileges(engine, None, PG_TABLE, needed, schema=PG_SCHEMA) == set()
    assert missing_privileges(
        engine, None, PG_TABLE, {"UPDATE", "UPDATE(recordingfile)"}, schema=PG_SCHEMA
    ) == {"UPDATE", "UPDATE(recordingfile)"}
    assert excess_privileges(engine, None, PG_TABLE, schema=PG_SCHEMA) == set()


@pytest.mark.postgres
def test_postgres_column_privilege(postgres: Server) -> None:
    _, engine = postgres_role(
        postgres,
        f"GRANT USAGE ON SCHEMA {_pg_ident(PG_SCHEMA)} TO {{role}}",
        f"GRANT SELECT, DELETE, UPDATE (recordingfile) ON {PG_QUALIFIED} TO {{role}}",
    )
    assert engine is not None
    needed = {"SELECT", "DELETE", "UPDATE(recordingfile)", "UPDATE(no such column)"}
    assert missing_privileges(engine, None, PG_TABLE, needed, schema=PG_SCHEMA) == {
        "UPDATE(no such column)"
    }


@pytest.mark.postgres
def test_postgres_schema_without_usage(postgres: Server) -> None:
    _, engine = postgres_role(postgres, f"GRANT SELECT, DELETE ON {PG_QUALIFIED} TO {{role}}")
    assert engine is not None
    assert missing_privileges(engine, None, PG_TABLE, {"SELECT"}, schema=PG_SCHEMA) == {
        "SELECT",
        f"USAGE ON SCHEMA {PG_SCHEMA}",
    }


@pytest.mark.postgres
def test_postgres_missing_table_is_an_error(postgres: Server) -> None:
    with pytest.raises(PrivilegeError, match="table no_such_table not found"):
        missing_privileges(postgres.admin, None, "no_such_table", {"SELECT"})


# -- SQLite and the parser ------------------------------------------------------------------------


def test_sqlite_is_not_applicable(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    try:
        assert missing_privileges(engine, None, "cdr", {"SELECT", "DELETE"}) is None
        assert excess_privileges(engine, "sqlite", "cdr") is None
    finally:
        engine.dispose()


def test_needed_privilege_spellings() -> None:
    assert Needed.parse("delete") == Needed("DELETE")
    assert Needed.parse(" UPDATE ( recordingfile ) ") == Needed("UPDATE", "recordingfile")
    assert str(Needed.parse("update(recordingfile)")) == "UPDATE(recordingfile)"
    with pytest.raises(ValueError, match="is not a privilege"):
        Needed.parse("UPDATE(a")


@pytest.mark.parametrize(
    ("line", "level", "database", "table", "privileges", "grant_option"),
    [
        ("GRANT USAGE ON *.* TO `u`@`%` IDENTIFIED BY PASSWORD '*AB'", "global", None, None,
         {"USAGE"}, False),
        ("GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION", "global", None,
         None, {"ALL"}, True),
        ("GRANT SELECT, DELETE ON `asteriskcdrdb`.`cdr` TO `retentiond`@`localhost`", "table",
         "asteriskcdrdb", "cdr", {"SELECT", "DELETE"}, False),
        ("GRANT SELECT ON `db`.`we``ird.t` TO 'u'@'h'", "table", "db", "we`ird.t", {"SELECT"},
         False),
        ('GRANT DELETE ON "ansi"."quoted ""t""" TO "u"@"%"', "table", "ansi", 'quoted "t"',
         {"DELETE"}, False),
        ("GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP ON `asterisk`.* "
         "TO `freepbxuser`@`localhost`", "database", "asterisk", None,
         {"SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP"}, False),
        ("GRANT SELECT ON TABLE `db`.`t` TO `u`@`%`", "table", "db", "t", {"SELECT"}, False),
    ],
)  # fmt: skip
def test_parse_grant_lines(
    line: str,
    level: str,
    database: str | None,
    table: str | None,
    privileges: set[str],
    grant_option: bool,
) -> None:
    parsed = _parse_grant(line)
    assert parsed is not None
    _, grant, roles = parsed
    assert grant is not None and roles == []
    assert (grant.level, grant.database, grant.table) == (level, database, table)
    assert grant.privileges == privileges
    assert grant.grant_option is grant_option


def test_parse_grant_columns_roles_and_lines_without_tables() -> None:
    parsed = _parse_grant(
        "GRANT SELECT, UPDATE (`recordingfile`, `a b`), DELETE ON `cdrdb`.`cdr` TO `r`@`%`"
    )
    assert parsed is not None
    grantee, grant, _ = parsed
    assert grantee == "r@%"
    assert grant is not None
    assert grant.privileges == {"SELECT", "DELETE"}
    assert grant.columns == (("UPDATE", frozenset({"recordingfile", "a b"})),)

    assert _parse_grant("GRANT `role1`, `role2` TO `u`@`%`") == ("u@%", None, ["role1", "role2"])
    assert _parse_grant("SET DEFAULT ROLE `role1` FOR `u`@`%`") is None
    assert _parse_grant("GRANT PROXY ON ''@'%' TO 'root'@'localhost' WITH GRANT OPTION") is None
    assert _parse_grant("GRANT EXECUTE ON PROCEDURE `db`.`p` TO `u`@`%`") is None


def test_database_patterns() -> None:
    assert _like("rtd\\_test%", "rtd_test_1", fold=False)
    assert not _like("rtd\\_test%", "rtdxtest_1", fold=False)
    assert _like("rtd_test%", "rtdxtest_1", fold=False)
    assert not _like("Asterisk", "asterisk", fold=False)
    assert _like("Asterisk", "asterisk", fold=True)
    assert _like("a.b", "a.b", fold=False) and not _like("a.b", "axb", fold=False)


# -- the grants docs/install.md gives, used as written -------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "install.md"
BERLIN = ZoneInfo("Europe/Berlin")


def documented_sql(marker: str) -> str:
    """The ```sql block of docs/install.md whose first line is `-- grants: <marker>`."""
    blocks = re.findall(r"```sql\n(.*?)```", DOCS.read_text(), re.DOTALL)
    found = [b for b in blocks if b.startswith(f"-- grants: {marker}\n")]
    assert len(found) == 1, f"docs/install.md has no single grants block for {marker}"
    return found[0]


def statements(sql: str) -> list[str]:
    """The statements of a block as psql would run them: split at a `;` that ends a line,
    except inside a dollar-quoted body (a DO block); comment lines dropped."""
    result: list[str] = []
    current: list[str] = []
    quote: str | None = None
    for line in sql.splitlines():
        if quote is None and line.lstrip().startswith("--"):
            continue
        current.append(line)
        for tag in re.findall(r"\$\w*\$", line):
            quote = None if quote == tag else (quote or tag)
        if quote is None and line.rstrip().endswith(";"):
            result.append("\n".join(current).strip().removesuffix(";"))
            current = []
    assert not "\n".join(current).strip(), "a statement without its `;`"
    return result


def retentiond_cli(*args: str | Path, env: dict[str, str] | None = None) -> CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "RETENTIOND_CONFIG"}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "retentiond", *map(str, args)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )


QUEUELOG = (
    "CREATE TABLE queuelog (id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, time DATETIME, "
    "callid VARCHAR(80), queuename VARCHAR(20), agent VARCHAR(80), event VARCHAR(32), "
    "data1 VARCHAR(100), KEY timeindex (time))"
)


@pytest.mark.server_clock  # runs retentiond against the server
@pytest.mark.mariadb
def test_documented_freepbx_grants_are_exactly_enough(
    mariadb_url: str, mariadb_server: Engine, tmp_path: Path
) -> None:
    cdr_db = make_url(mariadb_url).database
    ast_db = f"{cdr_db}_ast"  # FreePBX's `asterisk` database, where freepbx_settings lives
    user, password = _name("rtd_doc"), secrets.token_hex(12)
    spool, log_dir = tmp_path / "spool", tmp_path / "log"
    (spool / "monitor").mkdir(parents=True)
    (spool / "voicemail").mkdir()
    database = PbxDatabase.connect(mariadb_url)
    admin = mariadb_server.connect()
    try:
        database.create("cdr", "cel")
        database.execute(
            "CREATE TABLE transient_cdr ENGINE=MyISAM SELECT * FROM cdr LIMIT 0",
            "ALTER TABLE transient_cdr ADD INDEX calldate (calldate)",
        )
        now = datetime.now(BERLIN).replace(tzinfo=None, microsecond=0)
        times = [now - timedelta(hours=12 * i + 1) for i in range(400)]
        calls = cdr_rows(times, seed=5)
        database.insert("cdr", calls)
        database.insert("transient_cdr", calls)
        database.insert("cel", cel_rows(times, seed=6))
        for call in calls:  # the recordings, in FreePBX's date folders
            if call["recordingfile"]:
                folder = spool / "monitor" / f"{call['calldate']:%Y/%m/%d}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / str(call["recordingfile"])).write_bytes(b"RIFF....WAVE")
        admin.execute(text(f"CREATE DATABASE {ast_db}"))
        admin.execute(
            text(
                f"CREATE TABLE {ast_db}.freepbx_settings "
                "(keyword VARCHAR(50) PRIMARY KEY, value VARCHAR(255))"
            )
        )
        settings = {
            "CDRDBNAME": cdr_db,
            "ASTSPOOLDIR": str(spool),
            "ASTLOGDIR": str(log_dir),
            "MIXMON_DIR": "",
            "CDRUSEGMT": "0",
        }
        for keyword, value in settings.items():
            admin.execute(
                text(f"INSERT INTO {ast_db}.freepbx_settings VALUES (:k, :v)"),
                {"k": keyword, "v": value},
            )
        # The documented statements, for this test's databases and user.
        admin.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
        sql = documented_sql("freepbx (MariaDB)")
        sql = re.sub(r"\basteriskcdrdb\.", f"{cdr_db}.", sql)
        sql = re.sub(r"\basterisk\.", f"{ast_db}.", sql)
        sql = sql.replace("'retentiond'@'localhost'", f"'{user}'@'%'")
        for statement in statements(sql):
            admin.execute(text(statement))

        # FreePBX's bootstrap file, naming the new user (the page's /etc/retentiond/freepbx.conf).
        freepbx_conf = tmp_path / "freepbx.conf"
        freepbx_conf.write_text(
            f"<?php\n$amp_conf['AMPDBUSER'] = '{user}';\n$amp_conf['AMPDBPASS'] = '{password}';\n"
            "$amp_conf['AMPDBHOST'] = '127.0.0.1';\n$amp_conf['AMPDBPORT'] = '3306';\n"
            f"$amp_conf['AMPDBNAME'] = '{ast_db}';\n"
        )

        # 1. The config `init` writes, edited as the page says: no password_from (the password is
        # the credential named like the connection). This FreePBX has no queuelog: its optional
        # store is reported as not found (MariaDB cannot tell missing from not granted).
        config = tmp_path / "retentiond.yaml"
        init = retentiond_cli(
            "init", "--preset", "freepbx", "--set", f"freepbx_conf={freepbx_conf}", "-o", config
        )
        assert init.returncode == 0, init.stderr
        written = config.read_text()
        assert f"password_from: {freepbx_conf}" in written
        written = re.sub(r"\n *password_from: .*", "", written)
        written = written.replace("/var/lib/retentiond/audit.jsonl", str(tmp_path / "audit.jsonl"))
        written = written.replace("max_delete_fraction: 0.5", "max_delete_fraction: 1.0")
        written = written.replace("# timezone: Europe/Berlin", "timezone: Europe/Berlin")
        config.write_text(written)
        credentials = tmp_path / "credentials"
        credentials.mkdir(mode=0o700)
        (credentials / "cdrdb").write_text(password + "\n")
        (credentials / "cdrdb").chmod(0o400)  # as systemd leaves a credential
        env = {"CREDENTIALS_DIRECTORY": str(credentials)}

        check = retentiond_cli("-c", config, "check", env=env)
        assert check.returncode == 0, check.stdout + check.stderr
        for store in ("cdrdb/cdr: ok", "cdrdb/cel: ok", "cdrdb/transient_cdr: ok"):
            assert store in check.stdout
        assert "cdrdb/queuelog: not found (optional)" in check.stdout
        plan = retentiond_cli("-c", config, "plan", env=env)
        assert plan.returncode == 0, plan.stdout + plan.stderr
        run = retentiond_cli("-c", config, "run", "--once", "--json", env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        assert {r["status"] for r in json.loads(run.stdout)["runs"]} == {"done"}

        cutoff = now - timedelta(days=93)
        for table in ("cdr", "transient_cdr"):
            assert database.count(table, "calldate < :c", c=cutoff) == 0
            assert database.count(table) > 0
        assert database.count("cel", "eventtime < :c", c=cutoff) == 0
        # recordings older than 30 days are gone, and the kept calls no longer name them (UPDATE)
        kept = [c for c in calls if c["calldate"] >= cutoff]
        named = database.count("cdr", "recordingfile <> ''")
        assert 0 < named < sum(1 for c in kept if c["recordingfile"])

        # 2. The short preset form, on a FreePBX that has queuelog: the page's optional grant.
        database.execute(QUEUELOG)
        optional = re.search(r"^-- (GRANT SELECT, DELETE ON \S+\.queuelog .*);$", sql, re.M)
        assert optional is not None
        admin.execute(text(optional.group(1)))
        short = tmp_path / "short.yaml"
        short.write_text(
            f"version: 1\ntimezone: Europe/Berlin\npreset: freepbx\n"
            f"preset_settings: {{freepbx_conf: {freepbx_conf}}}\n"
            "keep: {call-records: 3 months, voicemail: 60d, call-recordings: 30d}\n"
            f"audit: {{path: {tmp_path / 'audit.jsonl'}}}\n"
        )
        check = retentiond_cli("-c", short, "check")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "cdrdb/queuelog: ok" in check.stdout
        run = retentiond_cli("-c", short, "run", "--once", "--json")
        assert run.returncode == 0, run.stdout + run.stderr

        # The privileges module agrees: nothing missing, nothing too much.
        engine = create_engine(
            URL.create(
                "mariadb+pymysql",
                username=user,
                password=password,
                host="127.0.0.1",
                port=3306,
                database=cdr_db,
            )
        )
        try:
            needs = {
                "cdr": {"SELECT", "DELETE", "UPDATE(recordingfile)"},
                "cel": {"SELECT", "DELETE"},
                "transient_cdr": {"SELECT", "DELETE"},
                "queuelog": {"SELECT", "DELETE"},
            }
            for table, needed in needs.items():
                assert missing_privileges(engine, None, table, needed) == set(), table
                assert excess_privileges(engine, None, table) == set(), table
            settings_table = "freepbx_settings"
            assert missing_privileges(engine, None, settings_table, {"SELECT"}, ast_db) == set()
            assert missing_privileges(engine, None, settings_table, {"UPDATE"}, ast_db) == {
                "UPDATE"
            }
        finally:
            engine.dispose()
    finally:
        database.close()
        admin.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))
        admin.execute(text(f"DROP DATABASE IF EXISTS {ast_db}"))
        admin.close()


# The call tables' keys: what `SELECT ... FOR UPDATE` of the 3CX call history store needs.
KEY_UPDATE = {"cl_calls": {"UPDATE(id)"}, "cdroutput": {"UPDATE(cdr_id)"}}
CHAT_MESSAGE = (
    "CREATE TABLE chat_message (id_message serial PRIMARY KEY, fkid_chat_conversation integer, "
    "message text, time_sent timestamp with time zone, party character varying(255))"
)


@pytest.mark.server_clock  # runs retentiond against the server
@pytest.mark.postgres
def test_documented_3cx_grants_are_exactly_enough(postgres_url: str, tmp_path: Path) -> None:
    database = PbxDatabase.connect(postgres_url)
    db_name = make_url(postgres_url).database
    role = _name("rtd_doc")
    data_dir = tmp_path / "Data"
    (data_dir / "Recordings").mkdir(parents=True)
    (data_dir / "Ivr" / "Voicemail" / "Data").mkdir(parents=True)
    try:
        create_cl_schema(database)
        database.execute(*RECORDINGS, *S_VOICEMAIL, CHAT_MESSAGE)
        now = datetime.now(UTC).replace(microsecond=0)
        starts = [now - timedelta(hours=12 * i + 1) for i in range(300)][::-1]
        cl_history(starts, seed=8).insert(database)
        # v20 Update 6+ beside it, as on a 3CX updated in place: both generations are purged
        create_cdroutput_schema(database)
        cdrs = cdroutput_rows(starts, seed=10)
        database.insert("cdroutput", cdrs)
        database.insert("cdrbilling", cdrbilling_rows(cdrs))
        database.insert("recordings", recording_rows(starts[::5], seed=9))

        # The documented statements, for this test's database and role.
        database.execute(f"CREATE ROLE {role} LOGIN")
        sql = documented_sql("3cx (PostgreSQL)")
        sql = sql.replace("database_single", str(db_name)).replace("retentiond", role)
        # psql-like: no parameters, so RAISE NOTICE's `%` is not taken for a placeholder
        raw = database.engine.raw_connection()
        try:
            cursor = raw.cursor()
            for statement in statements(sql):
                cursor.execute(statement)
            raw.commit()
        finally:
            raw.close()

        config_json = tmp_path / "Bin" / "config.json"
        config_json.parent.mkdir()
        config_json.write_text(
            json.dumps(
                {
                    "DbHost": "127.0.0.1",
                    "DbPort": 5432,
                    "DbUser": role,
                    "DbPassword": "trust-authentication",
                    "DbName": db_name,
                }
            )
        )
        config = tmp_path / "retentiond.yaml"
        config.write_text(
            "version: 1\npreset: 3cx\n"
            f"preset_settings: {{config_json: {config_json}, data_dir: {data_dir}}}\n"
            "keep: {call-records: 3 months, voicemail: 30d, call-recordings: 30d, chats: 6m}\n"
            f"audit: {{path: {tmp_path / 'audit.jsonl'}}}\n"
            "safety: {max_delete_fraction: 1.0}\n"
        )
        check = retentiond_cli("-c", config, "check")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "3cx_call_history 3cx/3cx-call-history: ok" in check.stdout
        for store in ("sql 3cx/recordings: ok", "sql 3cx/s_voicemail: ok", "3cx/chat_message: ok"):
            assert store in check.stdout
        run = retentiond_cli("-c", config, "run", "--once", "--json")
        assert run.returncode == 0, run.stdout + run.stderr
        assert {r["status"] for r in json.loads(run.stdout)["runs"]} == {"done"}
        assert database.count("cl_calls", "start_time < :c", c=now - timedelta(days=93)) == 0
        assert 0 < database.count("cl_calls") < len(starts)
        assert database.count("cdroutput", "cdr_started_at < :c", c=now - timedelta(days=93)) == 0
        assert 0 < database.count("cdroutput") < len(cdrs)

        engine = create_engine(make_url(postgres_url).set(username=role))
        try:
            for table in (
                "cl_calls",
                "cl_participants",
                "cl_party_info",
                "cl_segments",
                "cl_quality",
                "cdroutput",
                "cdrbilling",
                "recordings",
                "s_voicemail",
                "chat_message",
            ):
                needed = {"SELECT", "DELETE"} | KEY_UPDATE.get(table, set())
                assert missing_privileges(engine, None, table, needed) == set(), table
                assert missing_privileges(engine, None, table, {"UPDATE"}) == {"UPDATE"}, table
                assert excess_privileges(engine, None, table) == set(), table
        finally:
            engine.dispose()
    finally:
        database.close()
        # DROP OWNED revokes the role's grants in this database (dropped by the fixture after).
        admin = create_engine(postgres_url)
        try:
            with admin.begin() as connection:
                exists = connection.execute(
                    text("SELECT 1 FROM pg_roles WHERE rolname = :role"), {"role": role}
                ).scalar()
                if exists:
                    connection.execute(text(f"DROP OWNED BY {role}"))
                    connection.execute(text(f"DROP ROLE {role}"))
        finally:
            admin.dispose()
