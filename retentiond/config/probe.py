"""What `retentiond init` finds on a host: which PBX runs there, from its own files, and the
preset settings that follow from them.

Pure reading, under a root folder ("/" on the host; a temporary tree in tests, a copied tree for
an administrator). Every place looked at becomes evidence: found (and what it said, never a
password), missing, unreadable (with who could read it) or not what it should be. The PBXs'
files are read by `pbxfiles`; this module only decides what they mean.
"""

from __future__ import annotations

import grp
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from retentiond.config.pbxfiles import (
    ASTERISK_DIRECTORIES,
    THREECX_SETTINGS,
    PbxSettingsError,
    asterisk_directories,
    read_3cx_settings,
    read_amportal_conf,
    read_asterisk_conf,
    read_cdr_sqlite3_custom,
    read_freepbx_conf,
    read_ini,
)
from retentiond.config.presets.freepbx import FREEPBX_KEYS, mariadb_url

State = Literal["found", "missing", "unreadable", "invalid"]
THREECX_HOME = Path("/var/lib/3cxpbx")
THREECX_DATA = THREECX_HOME / "Instance1" / "Data"  # the 3cx preset's default data_dir
AMPORTAL_SHOWN = ("ASTSPOOLDIR", "MIXMON_DIR", "ASTLOGDIR", "CDRDBNAME", "CDRDBHOST", "CDRUSEGMT")
FOLDER_KEYS = ("ASTSPOOLDIR", "ASTLOGDIR", "MIXMON_DIR")
# Settings that hold passwords: never derived, never shown
SECRET_KEYS = ("CDRDBPASS", "AMPDBPASS")


@dataclass(frozen=True)
class Evidence:
    """One place looked at: what it is evidence for, and what was there."""

    about: str  # "PBX", "call records", "voicemail", "call recordings", "folders"
    path: Path
    state: State
    said: str = ""  # what it said (found), or why it does not count

    def line(self) -> str:
        text = self.said or ("not found" if self.state == "missing" else "")
        return f"{self.path}: {text}" if text else str(self.path)


@dataclass(frozen=True)
class Candidate:
    """A PBX the evidence points to, how strongly, and the preset settings it gives."""

    preset: str
    strength: int  # 3: its settings file read; 2: there but not readable; 1: only its folders
    settings: dict[str, Any]
    evidence: tuple[Evidence, ...]
    todo: tuple[str, ...] = ()  # what the administrator still has to do
    problem: str = ""  # why init cannot write a config from it (e.g. cannot read: run as root)
    offline: dict[str, Any] = field(default_factory=dict)  # settings without the PBX's database

    @property
    def usable(self) -> bool:
        return not self.problem


@dataclass(frozen=True)
class Detection:
    root: Path
    candidates: tuple[Candidate, ...]  # strongest first
    missing: tuple[Evidence, ...]  # looked for and not there
    notes: tuple[str, ...] = field(default=())

    @property
    def chosen(self) -> Candidate | None:
        return self.candidates[0] if self.candidates else None


def probe(root: Path = Path("/")) -> Detection:
    """Look at the host under `root` for FreePBX, 3CX and plain Asterisk."""
    host = _Host(root)
    asterisk = _asterisk(host)
    freepbx = _freepbx(host, asterisk)
    threecx = _threecx(host)
    notes = []
    found = [c for c in (freepbx.candidate, threecx.candidate) if c]
    if asterisk.candidate and freepbx.candidate:
        notes.append(
            "Asterisk runs under FreePBX here: the freepbx preset covers its call records, "
            "voicemail and recordings"
        )
    elif asterisk.candidate:
        found.append(asterisk.candidate)
    order = {"freepbx": 0, "3cx": 1, "asterisk": 2}
    found.sort(key=lambda c: (-c.strength, -len(c.evidence), order[c.preset]))
    if freepbx.candidate:  # FreePBX says where its spool and recordings are: only Asterisk's CDR
        asterisk.missing = [e for e in asterisk.missing if e.about == "call records"]
    missing = tuple(e for part in (freepbx, threecx, asterisk) for e in part.missing)
    return Detection(root, tuple(found), missing, tuple(notes))


@dataclass
class _Part:
    candidate: Candidate | None = None
    missing: list[Evidence] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    directories: dict[str, str] = field(default_factory=lambda: dict(ASTERISK_DIRECTORIES))


class _Host:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __truediv__(self, host_path: str | Path) -> Path:
        """A host path under the root: /etc/freepbx.conf is <root>/etc/freepbx.conf."""
        return self.root / str(host_path).lstrip("/")

    @property
    def copied(self) -> bool:
        return self.root.resolve() != Path("/")


# -- reading ------------------------------------------------------------------------------------


def _state(path: Path) -> tuple[State, str]:
    """Whether a file or folder is there and readable; for one that is not, who could read it."""
    try:
        if path.is_dir():
            with os.scandir(path):
                pass
        else:
            with path.open("rb"):
                pass
    except (FileNotFoundError, NotADirectoryError):
        return "missing", ""
    except PermissionError as error:
        return "unreadable", f"cannot read ({error.strerror}): {_who_can_read(path)}"
    except OSError as error:
        return "unreadable", f"cannot read ({error.strerror})"
    return "found", ""


def _who_can_read(path: Path) -> str:
    try:
        info = path.stat()
        group = grp.getgrgid(info.st_gid).gr_name
    except (OSError, KeyError):
        return "run init as root"
    if group == "root" or not info.st_mode & stat.S_IRGRP:
        return "run init as root"
    return f"run init as root or as a member of the group {group}"


def _look(part: _Part, about: str, path: Path, found: str = "", missing: str = "") -> State:
    """Record a file or folder as evidence (or as missing); its state."""
    state, why = _state(path)
    if state == "missing":
        part.missing.append(Evidence(about, path, "missing", missing))
    else:
        part.evidence.append(Evidence(about, path, state, why or found))
    return state


def _read_into(part: _Part, about: str, path: Path, reader: Any, missing: str = "") -> Any:
    """`reader(path)`; None, recorded as evidence, when the file is absent or unusable. What a
    file read says is the caller's to record."""
    state, why = _state(path)
    if state == "missing":
        part.missing.append(Evidence(about, path, "missing", missing))
        return None
    if state == "unreadable":
        part.evidence.append(Evidence(about, path, state, why))
        return None
    try:
        return reader(path)
    except PbxSettingsError as error:
        part.evidence.append(Evidence(about, path, "invalid", str(error)))
        return None


# -- FreePBX ------------------------------------------------------------------------------------


def _freepbx(host: _Host, asterisk: _Part) -> _Part:
    part = _Part()
    conf = host / "/etc/freepbx.conf"
    state, why = _state(conf)
    if state == "missing":
        part.missing.append(Evidence("PBX", conf, "missing", "not found: no FreePBX"))
        return part
    settings: dict[str, Any] = {"freepbx_conf": str(conf)}
    try:
        amp = read_freepbx_conf(conf) if state == "found" else {}
    except PbxSettingsError as error:
        state, why = "invalid", str(error)
    if state != "found":
        part.evidence.append(Evidence("PBX", conf, state, why))
        part.candidate = Candidate("freepbx", 2, settings, tuple(part.evidence), problem=why)
        return part
    engine = amp.get("AMPDBENGINE") or "mysql"
    where = amp.get("AMPDBSOCK") or amp.get("AMPDBHOST") or "localhost"
    part.evidence.append(
        Evidence(
            "PBX",
            conf,
            "found",
            f"FreePBX: AMPDBENGINE {engine}, its settings in database "
            f"{amp.get('AMPDBNAME') or 'asterisk'} on {where} as {amp['AMPDBUSER']}",
        )
    )
    amportal = host / "/etc/amportal.conf"
    missing = "not found: the settings come from FreePBX's database alone"
    values = _read_into(part, "folders", amportal, read_amportal_conf, missing) or {}
    copy = {k: v for k, v in values.items() if k in FREEPBX_KEYS and k not in SECRET_KEYS}
    if values:
        shown = ", ".join(f"{k} {copy.get(k) or '(empty)'}" for k in AMPORTAL_SHOWN)
        part.evidence.append(
            Evidence("folders", amportal, "found", f"FreePBX's copy of its settings: {shown}")
        )
    # Without FreePBX's database, its files say it all: amportal.conf, else asterisk.conf.
    offline = settings | {"read_database": False} | {k: v for k, v in copy.items() if v.strip()}
    offline.setdefault("ASTSPOOLDIR", asterisk.directories["astspooldir"])
    offline.setdefault("ASTLOGDIR", asterisk.directories["astlogdir"])
    offline |= {k: str(host / offline[k]) for k in FOLDER_KEYS if offline.get(k)}
    todo = []
    if values.get("CDRDBPASS", "").strip():
        todo.append(
            "the CDR database is remote with a password of its own (CDRDBPASS): store it in "
            "a file and add --set cdr_password_file=FILE"
        )
    if host.copied:  # this machine's database is not the copied tree's
        settings = offline
    else:
        todo.append(
            "init reads FreePBX's settings from its database (freepbx_settings), as the "
            "freepbx preset does; where it cannot, --set read_database=false writes the "
            "config from the files alone"
        )
    spool = Path(values.get("ASTSPOOLDIR") or asterisk.directories["astspooldir"])
    _look(part, "voicemail", host / spool / "voicemail", "the voicemail spool", "not found")
    mixmon = values.get("MIXMON_DIR", "").strip()
    said = (
        "MIXMON_DIR (amportal.conf)"
        if mixmon
        else "ASTSPOOLDIR/monitor (MIXMON_DIR empty or unknown)"
    )
    _look(part, "call recordings", host / (mixmon or spool / "monitor"), said, said)
    part.evidence += [e for e in asterisk.evidence if e.about == "call records"]
    part.candidate = Candidate(
        "freepbx", 3, settings, tuple(part.evidence), tuple(todo), offline=offline
    )
    return part


# -- 3CX ----------------------------------------------------------------------------------------


def _threecx(host: _Host) -> _Part:
    part = _Part()
    home = host / THREECX_HOME
    if _look(part, "PBX", home, "3CX's folder", "not found: no 3CX") == "missing":
        return part
    settings: dict[str, Any] = {}
    problem, strength = "3CX's settings file was not found", 1
    candidates = [host / p for p in THREECX_SETTINGS]
    present = [p for p in candidates if _state(p)[0] != "missing"]
    before = candidates.index(present[0]) if present else len(candidates)
    part.missing += [Evidence("PBX", p, "missing", "not found") for p in candidates[:before]]
    for path in present[:1]:
        strength = 2
        key = "config_json" if path.suffix.lower() == ".json" else "ini"
        settings[key] = str(path)
        state, problem = _state(path)
        if state == "unreadable":
            part.evidence.append(Evidence("PBX", path, state, problem))
            continue
        try:
            db = read_3cx_settings(path)
        except PbxSettingsError as error:
            problem = str(error)
            part.evidence.append(Evidence("PBX", path, "invalid", problem))
            continue
        strength = 3
        part.evidence.append(
            Evidence(
                "PBX",
                path,
                "found",
                f"3CX: PostgreSQL database {db.name} on {db.host}:{db.port}, "
                f"master account {db.master_user}",
            )
        )
    data = host / THREECX_DATA
    settings["data_dir"] = str(data)
    _look(part, "folders", data, "3CX's data folder", "not found")
    _look(part, "call recordings", data / "Recordings", "3CX's recordings", "not found")
    _look(part, "voicemail", data / "Ivr" / "Voicemail" / "Data", "3CX's voicemail", "not found")
    todo = (
        "3CX's master account may change every table: create retentiond's own role "
        "(docs/install.md 3.1) before the first run",
    )
    part.candidate = Candidate(
        "3cx", strength, settings, tuple(part.evidence), () if problem else todo, problem
    )
    return part


# -- plain Asterisk -----------------------------------------------------------------------------


def _asterisk(host: _Host) -> _Part:
    part = _Part()
    conf = host / "/etc/asterisk/asterisk.conf"
    if _state(conf)[0] == "missing" and not (host / "/etc/asterisk").is_dir():
        part.missing.append(Evidence("PBX", conf, "missing", "not found: no Asterisk"))
        return part
    directories = _read_into(part, "PBX", conf, asterisk_directories, "not found: defaults")
    if directories is not None:
        part.directories = directories
        part.evidence.append(Evidence("PBX", conf, "found", "Asterisk's asterisk.conf"))
    etc, spool, log = (
        host / part.directories[k] for k in ("astetcdir", "astspooldir", "astlogdir")
    )
    where = "asterisk.conf" if directories else "Asterisk's default"
    part.evidence.append(Evidence("folders", spool, _state(spool)[0], f"astspooldir ({where})"))
    settings: dict[str, Any] = {
        "astetcdir": str(etc),
        "astlogdir": str(log),
        "astspooldir": str(spool),
    }
    todo = _cdr_backends(part, host, etc, log, settings)
    _look(part, "voicemail", spool / "voicemail", "the voicemail spool", "not found")
    _look(part, "call recordings", spool / "monitor", "the monitor folder", "not found")
    strength = 2 if directories is not None else 1
    part.candidate = Candidate("asterisk", strength, settings, tuple(part.evidence), tuple(todo))
    return part


def _cdr_backends(
    part: _Part, host: _Host, etc: Path, log: Path, settings: dict[str, Any]
) -> list[str]:
    """The CDR backends Asterisk's cdr_*.conf configure; the first SQL one becomes cdr_url."""
    about = "call records"
    databases: list[tuple[str, str, str, str]] = []  # (where its password is, url, table, time)
    odbc = _read_into(part, about, etc / "cdr_adaptive_odbc.conf", read_asterisk_conf)
    if odbc:
        res_odbc: dict[str, dict[str, str]] = {}
        for name in ("res_odbc.conf", "res_odbc_additional.conf"):
            res_odbc |= _read_into(part, about, etc / name, read_asterisk_conf) or {}
        ini = _read_into(part, about, host / "/etc/odbc.ini", _odbc_ini) if res_odbc else None
        for category, variables in odbc.items():
            connection = variables.get("connection", "")
            table = variables.get("table") or category  # cdr_adaptive_odbc's default
            column = variables.get("alias start") or "calldate"
            url, said = _odbc_url(res_odbc.get(connection, {}), ini or {})
            part.evidence.append(
                Evidence(
                    about,
                    etc / "cdr_adaptive_odbc.conf",
                    "found",
                    f"cdr_adaptive_odbc [{category}]: table {table} (start in {column}) over "
                    f"res_odbc connection {connection}{said}",
                )
            )
            if url:
                databases.append(("res_odbc.conf", url, table, column))
    for name, scheme in (("cdr_pgsql.conf", "pgsql"), ("cdr_mysql.conf", "mysql")):
        sections = _read_into(part, about, etc / name, read_asterisk_conf)
        given = (sections or {}).get("global", {})
        if sections is None or not given.get("dbname"):
            if sections is not None:
                part.evidence.append(Evidence(about, etc / name, "found", "no [global] dbname"))
            continue
        table = given.get("table") or "cdr"
        gone = " (cdr_mysql was removed in Asterisk 19)" if scheme == "mysql" else ""
        host_name = given.get("hostname") or "localhost"
        part.evidence.append(
            Evidence(
                about,
                etc / name,
                "found",
                f"{name.removesuffix('.conf')}: table {table} in database {given['dbname']} on "
                f"{host_name} as {given.get('user', '')}{gone}",
            )
        )
        databases.append((name, _sql_url(scheme, given), table, "calldate"))
    todo = []
    if databases:
        where, url, table, column = databases[0]
        settings |= {"cdr_url": url, "cdr_table": table, "cdr_time_column": column}
        todo.append(
            f"the CDR database's password is in {where}: give it to retentiond as the "
            "credential cdrdb, or store it in a file and add --set cdr_password_file=FILE "
            "(init never copies a password)"
        )
        todo += [
            f"{other} also names a CDR table ({other_table}): the asterisk preset takes one "
            "CDR database; add a rule for the other by hand"
            for other, _, other_table, _ in databases[1:]
        ]
    csv = log / "cdr-csv" / "Master.csv"
    _look(part, about, csv, "cdr_csv's Master.csv", "not found (cdr_csv writes none)")
    sqlite = etc / "cdr_sqlite3_custom.conf"
    mappings = _read_into(part, about, sqlite, read_cdr_sqlite3_custom)
    if mappings is not None:
        said = ", ".join(f"[{m.category}] table {m.table}" for m in mappings)
        part.evidence.append(
            Evidence(about, sqlite, "found", said or "maps nothing (the sample as shipped)")
        )
    for database in ("master.db", "cdr_master.db"):
        if (log / database).is_file():
            part.evidence.append(Evidence(about, log / database, "found", "an SQLite CDR file"))
    return todo


def _odbc_url(connection: dict[str, str], ini: dict[str, dict[str, str]]) -> tuple[str | None, str]:
    """The URL of a res_odbc connection: its DSN in unixODBC's odbc.ini names the server."""
    dsn = connection.get("dsn")
    if not dsn:
        return None, " (no such connection with a dsn in res_odbc.conf)"
    source = ini.get(dsn.lower())
    if source is None:
        return None, f", DSN {dsn} (not in /etc/odbc.ini)"
    driver = source.get("driver", "").lower()
    database = source.get("database") or connection.get("database", "")
    server = source.get("server") or source.get("servername") or "localhost"
    user = connection.get("username", "")
    said = f", DSN {dsn}: database {database} on {server} as {user}"
    if "postgres" in driver or "psql" in driver:
        port = source.get("port") or "5432"
        return f"postgresql+psycopg://{user}@{server}:{port}/{database}", said
    socket = source.get("socket", "")
    return mariadb_url(user, server, source.get("port", ""), database, socket=socket), said


def _odbc_ini(path: Path) -> dict[str, dict[str, str]]:
    return read_ini(path, "unixODBC data sources")


def _sql_url(scheme: str, given: dict[str, str]) -> str:
    user, host, database = given.get("user", ""), given.get("hostname", ""), given["dbname"]
    if scheme == "pgsql":
        port = given.get("port") or "5432"
        return f"postgresql+psycopg://{user}@{host or 'localhost'}:{port}/{database}"
    return mariadb_url(user, host, given.get("port", ""), database, socket=given.get("sock", ""))


# -- what it says -------------------------------------------------------------------------------

ABOUT = ("PBX", "folders", "call records", "voicemail", "call recordings")
PRESET_NAMES = ("freepbx", "asterisk", "3cx")


def describe(detection: Detection) -> list[str]:
    """The evidence as lines for a person: what was chosen and why, the other candidates,
    what was looked for and not found, and what is left to do."""
    chosen = detection.chosen
    if chosen is None:
        lines = ["No phone system found on this host: none of FreePBX, 3CX or Asterisk."]
    else:
        lines = [f"Found: {chosen.preset} (the strongest evidence), from:"]
        lines += [
            f"  {about}: {e.line()}" for about in ABOUT for e in chosen.evidence if e.about == about
        ]
        if chosen.problem:
            lines.append(f"  init cannot use it: {chosen.problem}")
        for other in detection.candidates[1:]:
            pbx = next((e for e in other.evidence[::-1] if e.about == "PBX"), None)
            lines.append(
                f"Also found: {other.preset}"
                + (f" ({pbx.line()})" if pbx else "")
                + f"; for it instead: retentiond init --preset {other.preset}"
            )
    lines += [f"Note: {note}" for note in detection.notes]
    if detection.missing:
        lines.append("Looked for and not found:")
        lines += [
            f"  {about}: {e.line()}"
            for about in ABOUT
            for e in detection.missing
            if e.about == about
        ]
    if chosen is not None and chosen.todo:
        lines.append("Still to do:")
        lines += [f"  {item}" for item in chosen.todo]
    if chosen is None:
        lines.append(
            f"Presets: {', '.join(PRESET_NAMES)}; for a PBX elsewhere or in other folders: "
            "retentiond init --preset NAME --set KEY=VALUE"
        )
    return lines


def as_json(detection: Detection) -> dict[str, Any]:
    """The detection as plain data (for `init --detect --json`)."""

    def evidence(items: tuple[Evidence, ...]) -> list[dict[str, str]]:
        return [
            {"about": e.about, "path": str(e.path), "state": e.state, "said": e.said} for e in items
        ]

    return {
        "root": str(detection.root),
        "found": detection.chosen.preset if detection.chosen else None,
        "candidates": [
            {
                "preset": c.preset,
                "strength": c.strength,
                "problem": c.problem,
                "settings": c.settings,
                "evidence": evidence(c.evidence),
                "todo": list(c.todo),
            }
            for c in detection.candidates
        ],
        "missing": evidence(detection.missing),
        "notes": list(detection.notes),
    }
