"""retentiond under a real systemd: a Debian 12 machine booted with systemd-nspawn (tests/nspawn.py)
gets the Debian package installed with apt, as on a fresh minimal server, and configured as an
administrator would, against the host's MariaDB (socket and TCP) and PostgreSQL, an SQLite file,
a voicemail spool and a recordings tree; then each test checks one promise of the units by its
effect: systemd's own view of the unit (`systemctl show`), the deletion log, the journal and the
data itself.

The package is `make deb` of this tree, built while the machine's tree is built or checked
(RETENTIOND_DEB=path/to/retentiond_*.deb uses one built before). The machine is booted once for
the module and the tests tell one story in file order (pytest keeps it): installed, start, stop
mid-run and start again, what the runs removed, the credential, reload, the watchdog, the timer,
the journal they all wrote to, and last the package's life cycle: an upgrade mid-run, remove and
purge. Measured on the CI machine: about 2 min 45 s from a cold cache (debootstrap, make deb, the
Debian packages downloaded), about 1 min with all of it cached (57 s for the 12 tests).

Where systemd-nspawn cannot boot (no debootstrap or systemd-container, not root, no network for
the first build of the cached tree, no make deb tools) the module skips and says why; with CI
set it fails: .ci/run installs what it needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from machines import tree_and_package, unavailable
from nspawn import Machine, Unavailable, archives, booted
from nspawn_config import CONFIG_TEXT
from pbxdata import DDL, PbxDatabase, cdr_rows, cel_rows, sqlite_cdr_rows
from privacy import leaked
from spool import PERSONAL_FRAGMENTS, Spool, put, realistic_spool
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from retentiond.config.model import parse_keep
from retentiond.policy.rules import cutoff as rule_cutoff

pytestmark = [pytest.mark.mariadb, pytest.mark.postgres, pytest.mark.slow]

KEEP = "30d"
KEEP_TIME = timedelta(days=30)
# Fixture times stay this far from the cutoff a run computes while the module runs.
MARGIN = timedelta(hours=2)
AUDIT = "/var/lib/retentiond/audit.jsonl"
# Debian's MariaDB socket, bound into the machine at the same path.
MARIADB_SOCKET = "/run/mysqld/mysqld.sock"
CONFIG = "/etc/retentiond/retentiond.yaml"
# What the package makes at install, with its mode, owner and group (INSTALLED["modes"])
MODES = ("/etc/retentiond", "/etc/retentiond/credentials", "/var/lib/retentiond", AUDIT)
# The config the unit names is a link to this file: the daemon watches its own file name only,
# so editing this one changes nothing until `systemctl reload` (SIGHUP) says so.
LIVE = "/etc/retentiond/live.yaml"
RULES = ["call-records", "voicemail", "call-recordings"]
# What `apt install` of the package left before any config was written (the machine fixture).
INSTALLED: dict[str, str] = {}
# journald's PRIORITY for each of the daemon's levels (syslog: 2 crit, 3 err, 4 warning, 6 info).
PRIORITY = {
    "critical": "2",
    "exception": "3",
    "error": "3",
    "warning": "4",
    "info": "6",
    "debug": "7",
}
SECURITY_LIMIT = 1.4


# -- the PBX's data, on the host and in folders bound into the machine ---------------------------


@dataclass
class Pbx:
    """What the machine's retentiond works on, and what a run must leave."""

    root: Path
    now: datetime
    user: str
    password: str
    mariadb: PbxDatabase
    postgres: PbxDatabase
    sqlite: Path
    spool: Spool
    recordings: dict[Path, bool] = field(default_factory=dict)  # path: expired
    personal: set[str] = field(default_factory=set)
    expired_at: datetime = field(init=False)
    kept_at: datetime = field(init=False)

    def __post_init__(self) -> None:
        self.expired_at = (self.now - KEEP_TIME - MARGIN).replace(tzinfo=None)
        self.kept_at = (self.now - KEEP_TIME + MARGIN).replace(tzinfo=None)

    def config(self, **settings: Any) -> str:
        values = {
            "audit": AUDIT,
            "user": self.user,
            "mariadb": self.mariadb.engine.url.database,
            "mariadb_port": self.mariadb.engine.url.port or 3306,
            "postgres": self.postgres.engine.url.database,
            "postgres_port": self.postgres.engine.url.port or 5432,
            "keep": KEEP,
            "description": "Call detail records",
            "batch_size": 500,
            "pause": 0,
        }
        return CONFIG_TEXT.format(**(values | settings))

    def counts(self) -> dict[str, tuple[int, int]]:
        """Per table: (expired rows left, younger rows left)."""
        found = {}
        for name, database, table, column in (
            ("mariadb cdr", self.mariadb, "cdr", "calldate"),
            ("mariadb cel", self.mariadb, "cel", "eventtime"),
            ("postgres cdr", self.postgres, "cdr", "calldate"),
        ):
            old = database.count(table, f"{column} < :at", at=self.expired_at)
            young = database.count(table, f"{column} > :at", at=self.kept_at)
            found[name] = (old, young)
        with contextlib.closing(sqlite3.connect(self.sqlite)) as db:
            at = (self.expired_at.isoformat(" "), self.kept_at.isoformat(" "))
            old = db.execute("SELECT COUNT(*) FROM cdr WHERE calldate < ?", at[:1]).fetchone()[0]
            young = db.execute("SELECT COUNT(*) FROM cdr WHERE calldate > ?", at[1:]).fetchone()[0]
        found["sqlite cdr"] = (old, young)
        return found


EXPIRED_ROWS = 40  # per table; MariaDB's cdr has more, for a run long enough to stop
KEPT_ROWS = 50


def _times(start: datetime, count: int, step: timedelta) -> list[datetime]:
    return [start - i * step for i in range(count)]


def _fill(pbx: Pbx, seed: int, expired: int) -> None:
    old = _times(pbx.expired_at - timedelta(days=3), expired, timedelta(hours=5))
    young = _times(pbx.kept_at + timedelta(days=3), KEPT_ROWS, timedelta(hours=-5))
    for database, tables in ((pbx.mariadb, ("cdr", "cel")), (pbx.postgres, ("cdr",))):
        for table in tables:
            many = old * 2 if (database, table) == (pbx.mariadb, "cdr") else old
            rows = (cdr_rows if table == "cdr" else cel_rows)([*many, *young], seed)
            database.insert(table, rows)
            pbx.personal |= _personal(rows)
    rows = sqlite_cdr_rows([*old, *young], seed)
    with contextlib.closing(sqlite3.connect(pbx.sqlite)) as db, db:
        columns = list(rows[0])
        db.executemany(
            f"INSERT INTO cdr ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            [tuple(row.values()) for row in rows],
        )
    pbx.personal |= _personal(rows)


def _personal(rows: list[dict[str, Any]]) -> set[str]:
    keys = ("clid", "src", "dst", "cnam", "uniqueid", "cid_name", "cid_num", "lastdata")
    return {str(row[k]) for row in rows for k in keys if row.get(k) and len(str(row[k])) >= 6}


def _database(server: Engine, name: str, create: str) -> PbxDatabase:
    with server.connect() as connection:
        connection.execute(text(create))
    return PbxDatabase.connect(server.url.set(database=name).render_as_string(hide_password=False))


@pytest.fixture(scope="module")
def pbx(
    tmp_path_factory: pytest.TempPathFactory, mariadb_server: Engine, postgres_server: Engine
) -> Iterator[Pbx]:
    root = tmp_path_factory.mktemp("pbx")
    now = datetime.now(UTC).replace(microsecond=0)
    name = f"rtd_nspawn_{secrets.token_hex(5)}"
    password = secrets.token_urlsafe(18)
    mariadb = _database(mariadb_server, name, f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    postgres = _database(postgres_server, name, f"CREATE DATABASE {name}")
    try:
        with mariadb_server.connect() as connection:
            for host in ("localhost", "127.0.0.1"):
                connection.execute(
                    text(f"CREATE USER '{name}'@'{host}' IDENTIFIED BY :p"), {"p": password}
                )
                connection.execute(
                    text(f"GRANT SELECT, DELETE, UPDATE ON {name}.* TO '{name}'@'{host}'")
                )
        with postgres_server.connect() as connection:
            connection.execute(text(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'"))
        mariadb.create("cdr", "cel")
        postgres.create("cdr")
        postgres.execute(f"GRANT SELECT, DELETE, UPDATE ON cdr TO {name}")
        logs = root / "log"
        logs.mkdir()
        sqlite = logs / "master.db"
        with contextlib.closing(sqlite3.connect(sqlite)) as db:
            db.executescript(";".join(DDL["sqlite"]["cdr"]))
        spool_cutoff = rule_cutoff(now + MARGIN, parse_keep(KEEP), UTC).replace(microsecond=0)
        spool = realistic_spool(root / "spool" / "voicemail", spool_cutoff)
        built = Pbx(root, now, name, password, mariadb, postgres, sqlite, spool)
        built.personal |= set(PERSONAL_FRAGMENTS)
        _fill(built, seed=19, expired=EXPIRED_ROWS)
        monitor = root / "spool" / "monitor"
        for i in range(12):
            expired = i % 2 == 0
            moment = (built.expired_at if expired else built.kept_at).replace(tzinfo=UTC)
            moment += timedelta(days=-1 - i) if expired else timedelta(days=1 + i)
            number = f"+4930555{i:04d}"
            path = monitor / f"{moment:%Y/%m/%d}/out-{number}-20{i}-{moment:%Y%m%d-%H%M%S}.wav"
            built.recordings[put(path, b"RIFF" + bytes(60), moment)] = expired
            built.personal.add(number)
        yield built
    finally:
        mariadb.close()
        postgres.close()
        with mariadb_server.connect() as connection:
            sessions = connection.execute(
                text("SELECT id FROM information_schema.processlist WHERE db = :n"), {"n": name}
            ).scalars()
            for session in list(sessions):
                with contextlib.suppress(SQLAlchemyError):
                    connection.execute(text(f"KILL {int(session)}"))
            connection.execute(text(f"DROP DATABASE IF EXISTS {name}"))
            for host in ("localhost", "127.0.0.1"):
                connection.execute(text(f"DROP USER IF EXISTS '{name}'@'{host}'"))
        with postgres_server.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            connection.execute(text(f"DROP ROLE IF EXISTS {name}"))


# -- the machine: the package installed and configured as an administrator would ---------------


def _install(machine: Machine, package: Path) -> dict[str, str]:
    """`apt install ./retentiond_*.deb`, as on a fresh server; what it left, before a config."""
    output = machine.apt_install(f"/mnt/{package.name}")
    return {
        "enabled": machine.systemctl("is-enabled", "retentiond.service", check=False).stdout,
        "active": machine.systemctl("is-active", "retentiond.service", check=False).stdout,
        "timer": machine.systemctl("is-enabled", "retentiond-once.timer", check=False).stdout,
        "program": machine.sh("command -v retentiond"),
        "usr_local": machine.sh("find /usr/local -type f"),
        "output": output,
        "modes": machine.run("stat", "-c", "%n %a %U %G", *MODES).stdout,
        "user": machine.run("getent", "passwd", "retentiond").stdout,
        "override": machine.run("dpkg-statoverride", "--list", "/etc/retentiond").stdout,
        "bytecode": machine.sh("find /opt/retentiond -name '*.pyc' | wc -l"),
    }


def _example(machine: Machine, name: str) -> str:
    """A file the package ships for the admin to copy (the PBX drop-ins)."""
    folders = ("/etc/retentiond/dropins", "/usr/share/doc/retentiond/examples")
    for folder in folders:
        for candidate in (f"{folder}/{name}", f"{folder}/{name}.gz"):
            path = machine.path(candidate)
            if path.exists():
                if candidate.endswith(".gz"):
                    return machine.run("zcat", candidate).stdout
                return path.read_text()
    raise AssertionError(f"the package does not ship {name} in {' or '.join(folders)}")


# Test-only settings: a watchdog that bites within seconds, a restart without the 30 s pause.
FAST_WATCHDOG = """\
[Service]
WatchdogSec=3
RestartSec=1
TimeoutAbortSec=10
"""
# The connections besides cdrdb need credentials of their own (the unit's comment says so).
CREDENTIALS = """\
[Service]
LoadCredential=cdrtcp:/etc/retentiond/credentials/cdrtcp
LoadCredential=pgcdr:/etc/retentiond/credentials/pgcdr
"""


def _configure(machine: Machine, pbx: Pbx) -> None:
    """The PBX's user and group, the config, the passwords as credentials, the drop-ins."""
    machine.sh(
        "groupadd --system asterisk\n"
        "useradd --system --gid asterisk --home-dir /var/lib/asterisk asterisk\n"
        "chown -R asterisk:asterisk /var/spool/asterisk /var/log/asterisk\n"
        "chmod -R g+rwX /var/spool/asterisk /var/log/asterisk"
    )
    write(machine, LIVE, pbx.config(batch_size=5, pause=0.5), mode=0o640, group="retentiond")
    machine.run("ln", "-sfn", LIVE, CONFIG)
    for name in ("cdrdb", "cdrtcp", "pgcdr"):
        write(machine, f"/etc/retentiond/credentials/{name}", pbx.password + "\n", mode=0o600)
    pbx_dropin = _example(machine, "asterisk.conf")
    for unit in ("retentiond.service", "retentiond-once.service"):
        write(machine, f"/etc/systemd/system/{unit}.d/pbx.conf", pbx_dropin)
        write(machine, f"/etc/systemd/system/{unit}.d/credentials.conf", CREDENTIALS)
    write(machine, "/run/systemd/system/retentiond.service.d/test.conf", FAST_WATCHDOG)
    machine.systemctl("daemon-reload")


def write(
    machine: Machine, path: str, content: str, mode: int = 0o644, group: str = "root"
) -> None:
    machine.run(
        "sh",
        "-euc",
        'mkdir -p "$(dirname "$1")"; cat > "$1"; chmod "$2" "$1"; chgrp "$3" "$1"',
        "write",
        path,
        f"{mode:o}",
        group,
        input=content,
    )


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory, pbx: Pbx) -> Iterator[Machine]:
    if os.geteuid() != 0:
        unavailable("booting a container with systemd-nspawn needs root")
    folder = tmp_path_factory.mktemp("machine")
    tree, package = tree_and_package()
    binds = [
        (pbx.root / "spool", "/var/spool/asterisk"),
        (pbx.root / "log", "/var/log/asterisk"),
        (archives(), "/var/cache/apt/archives"),
    ]
    if not Path(MARIADB_SOCKET).is_socket():
        unavailable(f"MariaDB's socket {MARIADB_SOCKET} is missing: the machine reaches it there")
    binds.append((Path(MARIADB_SOCKET).parent, str(Path(MARIADB_SOCKET).parent)))
    name = f"retentiond-{secrets.token_hex(3)}"
    try:
        with booted(
            tree,
            name,
            folder / "console.log",
            binds=binds,
            binds_ro=[(package, f"/mnt/{package.name}")],
        ) as booted_machine:
            INSTALLED.update(_install(booted_machine, package))
            _configure(booted_machine, pbx)
            yield booted_machine
    except Unavailable as error:
        unavailable(f"systemd-nspawn cannot boot a machine here: {error}")
    console = (folder / "console.log").read_text(errors="replace")
    assert booted_machine.exit_code == 0, f"no clean power-off:\n{console[-3000:]}"


# -- what the machine shows -----------------------------------------------------------------------


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def entries(machine: Machine) -> list[dict[str, Any]]:
    """The deletion log, read from the host through the machine's root."""
    path = machine.path(AUDIT)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def finished(machine: Machine, since: int = 0) -> dict[str, str]:
    """Each rule's last run_finished status among the entries from `since` on."""
    return {e["rule"]: e["status"] for e in entries(machine)[since:] if e["type"] == "run_finished"}


def every_rule_finished(machine: Machine, since: int) -> dict[str, str] | None:
    runs = finished(machine, since)
    return runs if set(runs) == set(RULES) else None


def journal(machine: Machine, *units: str) -> list[dict[str, Any]]:
    args = [arg for unit in units for arg in ("-u", unit)]
    out = machine.run("journalctl", "--no-pager", "-o", "json", *args).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def events(machine: Machine, unit: str = "retentiond.service") -> list[dict[str, Any]]:
    """The daemon's own log lines (JSON events) with the journal's PRIORITY and _PID."""
    found = []
    for record in journal(machine, unit):
        message = record.get("MESSAGE")
        if record.get("_PID") == "1" or not isinstance(message, str):
            continue
        with contextlib.suppress(ValueError):
            event = json.loads(message)
            if isinstance(event, dict) and "event" in event:
                event["PRIORITY"] = record.get("PRIORITY")
                event["_PID"] = record.get("_PID")
                found.append(event)
    return found


def state(machine: Machine, unit: str = "retentiond.service") -> dict[str, str]:
    return machine.show(
        unit,
        "ActiveState",
        "SubState",
        "MainPID",
        "Result",
        "NRestarts",
        "ExecMainStatus",
        "StatusText",
    )


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- the tests, in the order of the story ---------------------------------------------------------


def test_the_package_installs_from_debian_alone_and_starts_nothing(machine: Machine) -> None:
    """`apt install ./retentiond_*.deb` on minbase pulled every dependency from Debian's mirror;
    before a config exists nothing is enabled or running, and nothing is under /usr/local."""
    assert {k: INSTALLED[k] for k in ("enabled", "active", "timer", "program", "usr_local")} == {
        "enabled": "disabled\n",
        "active": "inactive\n",
        "timer": "disabled\n",
        "program": "/usr/bin/retentiond\n",
        "usr_local": "",
    }
    # postinst tells the admin what to do next
    assert "not configured" in INSTALLED["output"] and "retentiond init" in INSTALLED["output"]


def test_the_package_makes_its_system_user_folders_and_bytecode(machine: Machine) -> None:
    """sysusers' user, tmpfiles' folders with their modes, the statoverride that keeps the
    config folder's group, and the venv compiled by postinst (the package ships no bytecode)."""
    home, shell = INSTALLED["user"].strip().split(":")[5:]
    assert (home, shell) == ("/var/lib/retentiond", "/usr/sbin/nologin")
    assert int(INSTALLED["user"].split(":")[2]) < 1000  # a system user
    modes = dict(line.split(" ", 1) for line in INSTALLED["modes"].splitlines())
    assert modes == {
        "/etc/retentiond": "750 root retentiond",
        "/etc/retentiond/credentials": "700 root root",
        "/var/lib/retentiond": "750 retentiond retentiond",
        AUDIT: "640 retentiond retentiond",
    }
    assert INSTALLED["override"] == "root retentiond 750 /etc/retentiond\n"
    assert int(INSTALLED["bytecode"]) > 1000


def test_installed_unit_security_exposure_stays_at_most_1_4(machine: Machine) -> None:
    result = machine.run("systemd-analyze", "security", "--no-pager", "retentiond.service")
    match = re.search(r"Overall exposure level for retentiond\.service: (\d+\.\d)", result.stdout)
    assert match is not None, result.stdout[-2000:]
    print(match.group(0))  # shown with -s or -rA
    assert float(match.group(1)) <= SECURITY_LIMIT, result.stdout


def test_start_reaches_active_only_after_ready(machine: Machine) -> None:
    """Type=notify: the unit stays `activating` while the process runs its start check, and
    becomes `active` when READY=1 arrives; `systemctl start` waits for that."""
    machine.systemctl("start", "--no-block", "retentiond.service")
    seen: list[tuple[str, str, bool]] = []

    def active() -> bool:
        now = state(machine)
        seen.append((now["ActiveState"], now["SubState"], now["MainPID"] != "0"))
        return now["ActiveState"] != "activating" and now["ActiveState"] != "inactive"

    wait_for("the unit to leave activating", active, timeout=120)
    assert ("activating", "start", True) in seen, seen  # the process ran before it was ready
    final = state(machine)
    assert (final["ActiveState"], final["SubState"]) == ("active", "running"), final
    assert final["StatusText"], final  # STATUS= from the daemon's own notify message
    started = [e for e in events(machine) if e["event"] == "daemon started"]
    assert [e["_PID"] for e in started] == [final["MainPID"]]


def test_stop_mid_run_ends_it_interrupted_and_the_next_start_completes_it(
    machine: Machine, pbx: Pbx
) -> None:
    """The first catch-up run goes in batches of 5 with half a second between them; `systemctl
    stop` (SIGTERM to every process of the unit) ends it after its batch, recorded as
    interrupted. The next start runs the rule again at once and removes the rest."""
    wait_for(
        "the first batch of call-records",
        lambda: any(e["type"] == "batch_done" for e in entries(machine)),
    )
    machine.systemctl("stop", "retentiond.service")
    stopped = state(machine)
    assert (stopped["ActiveState"], stopped["Result"]) == ("inactive", "success"), stopped
    assert stopped["ExecMainStatus"] == "0"
    log = entries(machine)
    assert log[-1]["type"] == "run_finished", log[-1]
    assert (log[-1]["rule"], log[-1]["status"]) == ("call-records", "interrupted")
    assert pbx.counts()["mariadb cdr"][0] > 0  # the stop left expired rows

    mark = len(log)
    write(machine, LIVE, pbx.config(), mode=0o640, group="retentiond")  # full-size batches
    machine.systemctl("start", "retentiond.service")  # returns once READY=1 arrived
    assert state(machine)["ActiveState"] == "active"
    done = wait_for(
        "every rule's run after the restart",
        lambda: every_rule_finished(machine, mark),
        timeout=120,
    )
    assert done == dict.fromkeys(RULES, "done"), done
    started = [e for e in entries(machine)[mark:] if e["type"] == "run_started"]
    assert [e["rule"] for e in started] == RULES
    assert pbx.counts()["mariadb cdr"][0] == 0


def test_every_store_kind_works_under_the_hardening(machine: Machine, pbx: Pbx) -> None:
    """MariaDB over its socket and over TCP, PostgreSQL, SQLite, voicemail and recordings, from
    inside ProtectSystem=strict, an empty capability set and the system call filter."""
    counts = pbx.counts()
    assert counts == {
        "mariadb cdr": (0, KEPT_ROWS),
        "mariadb cel": (0, KEPT_ROWS),
        "postgres cdr": (0, KEPT_ROWS),
        "sqlite cdr": (0, KEPT_ROWS),
    }
    gone = [m.key for m in pbx.spool.expired if not m.gone()]
    assert not gone, gone
    assert all(m.exists() for m in pbx.spool.kept)
    assert all(path.exists() for path in pbx.spool.protected)
    for path, expired in pbx.recordings.items():
        assert path.exists() != expired, path
    # Every store of every rule reported what it deleted, by the daemon's run processes.
    deleted: dict[str, int] = {}
    for entry in entries(machine):
        if entry["type"] == "run_finished":
            for store in entry.get("stores") or []:
                deleted[store["store"]] = deleted.get(store["store"], 0) + store["deleted"]
    assert len(deleted) == 6 and all(deleted.values()), deleted
    sandbox = machine.show(
        "retentiond.service", "ProtectSystem", "CapabilityBoundingSet", "SystemCallFilter"
    )
    assert sandbox["ProtectSystem"] == "strict"
    assert sandbox["CapabilityBoundingSet"] == ""
    assert sandbox["SystemCallFilter"]


def test_the_password_arrives_through_load_credential(machine: Machine, pbx: Pbx) -> None:
    """The config names no password; the database user needs one; the service user cannot read
    the credential files, only systemd's copy in $CREDENTIALS_DIRECTORY."""
    config = machine.path(LIVE).read_text()
    assert pbx.password not in config and "password" not in config
    pid = state(machine)["MainPID"]
    environ = dict(
        item.split("=", 1)
        for item in machine.path(f"/proc/{pid}/environ").read_text().split("\0")
        if "=" in item
    )
    credentials = environ["CREDENTIALS_DIRECTORY"]
    for name in ("cdrdb", "cdrtcp", "pgcdr"):
        assert machine.path(f"{credentials}/{name}").read_text().strip() == pbx.password
    denied = machine.run(
        "setpriv",
        "--reuid=retentiond",
        "--regid=retentiond",
        "--init-groups",
        "cat",
        "/etc/retentiond/credentials/cdrdb",
        check=False,
    )
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    without = pbx.mariadb.engine.url.set(password=None)
    refused = machine.run(
        "setpriv",
        "--reuid=retentiond",
        "--regid=retentiond",
        "--init-groups",
        "/opt/retentiond/bin/python",
        "-c",
        "import pymysql, sys; pymysql.connect(unix_socket='/run/mysqld/mysqld.sock', "
        f"user={pbx.user!r}, database={without.database!r})",
        check=False,
    )
    assert "Access denied" in refused.stderr, refused.stderr[-1000:]


def test_reload_records_config_reloaded(machine: Machine, pbx: Pbx) -> None:
    """`systemctl reload` (SIGHUP): a changed config is recorded as config_reloaded in the
    deletion log; a broken one is rejected, logged as an error, and the old one stays."""
    changed = pbx.config(description="Call detail records, reviewed")
    mark = len(entries(machine))
    write(machine, LIVE, changed, mode=0o640, group="retentiond")
    time.sleep(1.5)  # the daemon watches retentiond.yaml, not the file the link points to
    assert [e for e in entries(machine)[mark:] if e["type"] == "config_reloaded"] == []
    pid = state(machine)["MainPID"]
    machine.systemctl("reload", "retentiond.service")
    reloaded = wait_for(
        "config_reloaded",
        lambda: [e for e in entries(machine)[mark:] if e["type"] == "config_reloaded"],
    )
    assert [e["new_config_sha256"] for e in reloaded] == [sha256(changed)]
    assert (
        wait_for(
            "the journal's reload event",
            lambda: [e for e in events(machine) if e["event"] == "config reloaded"],
        )[-1]["source"]
        == "SIGHUP"
    )

    write(
        machine, LIVE, changed.replace(f"keep: {KEEP}", "keep: 30"), mode=0o640, group="retentiond"
    )
    machine.systemctl("reload", "retentiond.service")
    rejected = wait_for(
        "the rejection",
        lambda: [e for e in events(machine) if e["event"].startswith("config rejected")],
    )
    assert rejected[-1]["PRIORITY"] == PRIORITY["error"], rejected[-1]
    write(machine, LIVE, changed, mode=0o640, group="retentiond")
    assert state(machine)["MainPID"] == pid  # reloads never restart the daemon
    assert len([e for e in entries(machine) if e["type"] == "config_reloaded"]) == 1


def test_the_watchdog_kills_and_restarts_a_frozen_daemon(machine: Machine) -> None:
    """SIGSTOP freezes the daemon: no WATCHDOG=1 arrives, systemd aborts it (WatchdogSec=3 in
    a drop-in here; 120 s as shipped) and restarts it."""
    before = state(machine)
    assert before["ActiveState"] == "active"
    machine.run("kill", "-STOP", before["MainPID"])
    after = wait_for(
        "a restarted daemon",
        lambda: (
            (now := state(machine))["NRestarts"] != before["NRestarts"]
            and now["ActiveState"] == "active"
            and now
        ),
        timeout=60,
    )
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    assert after["MainPID"] not in ("0", before["MainPID"])
    messages = [r.get("MESSAGE", "") for r in journal(machine, "retentiond.service")]
    assert any("Watchdog timeout" in str(m) for m in messages), messages[-20:]


def test_the_timer_fires_a_run(machine: Machine, pbx: Pbx) -> None:
    """retentiond-once.timer starts retentiond-once.service (run --once) at its calendar time;
    starting the timer stops the daemon (Conflicts=). New expired rows are gone after it."""
    _fill(pbx, seed=20, expired=5)
    assert pbx.counts()["mariadb cdr"][0] == 10
    mark = len(entries(machine))
    at = datetime.now(UTC) + timedelta(seconds=5)
    write(
        machine,
        "/run/systemd/system/retentiond-once.timer.d/soon.conf",
        f"[Timer]\nOnCalendar=\nOnCalendar={at:%Y-%m-%d %H:%M:%S} UTC\n"
        "RandomizedDelaySec=0\nAccuracySec=1s\n",
    )
    machine.systemctl("daemon-reload")
    machine.systemctl("start", "retentiond-once.timer")
    wait_for("the daemon to stop (Conflicts=)", lambda: state(machine)["ActiveState"] == "inactive")
    ran = wait_for(
        "the timer's run",
        lambda: (
            (o := state(machine, "retentiond-once.service"))["Result"] == "success"
            and o["ExecMainStatus"] == "0"
            and o["ActiveState"] == "inactive"
            and finished(machine, mark)
        ),
        timeout=90,
    )
    assert ran == dict.fromkeys(RULES, "done"), ran
    trigger = machine.show("retentiond-once.timer", "LastTriggerUSec")["LastTriggerUSec"]
    assert trigger not in ("", "n/a", "0")
    assert pbx.counts()["mariadb cdr"] == (0, 2 * KEPT_ROWS)


def test_the_journal_has_each_event_at_its_priority_and_no_personal_data(
    machine: Machine, pbx: Pbx
) -> None:
    daemon, once = events(machine), events(machine, "retentiond-once.service")
    assert daemon and once
    wrong = [
        (e["event"], e["level"], e["PRIORITY"])
        for e in [*daemon, *once]
        if PRIORITY[e["level"]] != e["PRIORITY"]
    ]
    assert not wrong, wrong
    levels = {e["level"] for e in daemon}
    assert {"info", "error"} <= levels, levels
    names = {e["event"] for e in daemon}
    assert {"daemon started", "config reloaded", "daemon stopped"} <= names
    records = journal(machine, "retentiond.service", "retentiond-once.service")
    lines, texts = [], []
    for record in records:
        message = str(record.get("MESSAGE", ""))
        (lines if message.startswith("{") else texts).append(message)
    found = leaked(pbx.personal, texts=texts, jsonl=["\n".join(lines)])
    assert not found, found[:5]


# -- the package's life cycle: upgrade mid-run, remove, purge (last: they remove the package) ----

RULE = "call-records-since-upgrade"
UPGRADE = "/root/retentiond_up.deb"
APT = ("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-q", "-y", "-o", "Dpkg::Use-Pty=0")


def test_an_upgrade_mid_run_stops_between_batches_and_starts_the_daemon_again(
    machine: Machine, pbx: Pbx
) -> None:
    """`apt-get install` of a higher version runs the upgrade's maintainer scripts: preinst
    stops the running daemon (SIGTERM: its batch finishes, the run ends interrupted), postinst
    starts it again, and its first run removes what the interrupted one left."""
    machine.systemctl("stop", "retentiond-once.timer")
    # The next version: this package with a higher version number (repacked, fast: gzip -1)
    machine.sh(
        "dpkg-deb -R /mnt/retentiond_*.deb /root/up\n"
        "sed -i 's/^Version: .*/&+up/' /root/up/DEBIAN/control\n"
        f"dpkg-deb -Zgzip -z1 -b /root/up {UPGRADE} >/dev/null\n"
        "rm -rf /root/up"
    )
    # A rule without history runs at once when the daemon starts (catch-up); small batches
    slow = pbx.config(batch_size=5, pause=0.5).replace("name: call-records", f"name: {RULE}")
    write(machine, LIVE, slow, mode=0o640, group="retentiond")
    _fill(pbx, seed=21, expired=EXPIRED_ROWS)
    mark = len(entries(machine))
    machine.systemctl("start", "retentiond.service")
    before = state(machine)["MainPID"]
    wait_for(
        "a batch of the run before the upgrade",
        lambda: any(e["type"] == "batch_done" for e in entries(machine)[mark:]),
    )
    machine.run(*APT, "install", UPGRADE, timeout=600)
    assert machine.run("dpkg-query", "-f", "${Version}", "-W", "retentiond").stdout.endswith("+up")
    after = state(machine)
    assert (after["ActiveState"], after["SubState"]) == ("active", "running"), after
    assert after["MainPID"] not in ("0", before), (before, after)
    log = entries(machine)[mark:]
    runs = [(e["rule"], e["status"]) for e in log if e["type"] == "run_finished"]
    assert runs[0] == (RULE, "interrupted"), runs
    intents = {(e["run_id"], e["store"], e["batch"]) for e in log if e["type"] == "batch_intent"}
    done = {(e["run_id"], e["store"], e["batch"]) for e in log if e["type"] == "batch_done"}
    assert intents and intents == done, intents ^ done  # no batch cut by the upgrade
    again = len(log) + mark
    wait_for(
        "the rule done after the upgrade",
        lambda: finished(machine, again).get(RULE) == "done",
        timeout=120,
    )
    assert pbx.counts()["mariadb cdr"][0] == 0


def test_remove_stops_the_program_and_purge_keeps_the_log_and_the_key(machine: Machine) -> None:
    """`apt-get remove` stops the service and removes the program, keeps config and log;
    `apt-get purge` deletes the config but keeps the deletion log (same bytes), the signing key
    and the user retentiond, and says so."""
    key = "/etc/retentiond/credentials/signing-key"
    if not machine.path(key).exists():
        machine.sh(
            "retentiond audit keygen --out-dir /root/keys --name signing >/dev/null\n"
            f"install -m 0600 /root/keys/signing.key {key}"
        )
    signing_key = machine.path(key).read_bytes()
    machine.run(*APT, "remove", "retentiond", timeout=300)
    assert machine.systemctl("is-active", "retentiond.service", check=False).stdout == (
        "inactive\n"
    )
    assert not machine.path("/opt/retentiond").exists()
    assert machine.path("/opt").is_dir()  # dpkg took /opt with the venv; postrm gives it back
    assert not machine.path("/usr/bin/retentiond").exists()
    assert machine.path(LIVE).exists() and machine.path(CONFIG).is_symlink()
    audit = machine.path(AUDIT).read_bytes()
    assert audit

    purged = machine.run(*APT, "purge", "retentiond", timeout=300).stdout
    assert "Kept on purpose" in purged, purged
    assert "/var/lib/retentiond" in purged and key in purged, purged
    assert not machine.path(LIVE).exists() and not machine.path(CONFIG).is_symlink()
    assert not machine.path("/etc/retentiond/credentials/cdrdb").exists()
    assert machine.path(AUDIT).read_bytes() == audit
    assert machine.path(key).read_bytes() == signing_key
    kept = machine.run("stat", "-c", "%a %U %G", AUDIT, key).stdout.splitlines()
    assert kept == ["640 retentiond retentiond", "600 root root"]
    assert not machine.path("/etc/retentiond/dropins/asterisk.conf").exists()  # a conffile
    assert machine.run("dpkg-statoverride", "--list", "/etc/retentiond", check=False).stdout == ""
    assert machine.run("getent", "passwd", "retentiond").stdout.startswith("retentiond:")
