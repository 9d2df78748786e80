"""Presets: a known PBX's stores, found from its own settings, from three lines of YAML.

    version: 1
    preset: freepbx
    keep: {call-records: 3 months, voicemail: 60d, call-recordings: 30d}
    anonymize: {call-records: 2 years}   # optional: anonymize after keep, delete after 2 years

`anonymize:` turns a rule of call records into `action: anonymize` with the preset's transforms
for every table of the rule (`never` instead of a period keeps the anonymized records). Stores
also name the columns that hold numbers (`subject_columns`), so holds by number and
`erase`/`find` work without more configuration.

`expand()` turns that into the full config (connections and rules) before validation, so a
preset config is checked exactly like a hand-written one, and `retentiond init` prints the
same expansion for review. Stores a PBX has only in some installs are marked optional: `check`
and `plan` say which were found and which were not.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from retentiond.config.model import parse_keep
from retentiond.config.pbxfiles import (
    PbxSettingsError,
    SqliteCdrMapping,
    find_3cx_settings,
    mariadb_socket,
    read_3cx_settings,
    read_cdr_sqlite3_custom,
    read_freepbx_conf,
)

PRESETS = ("freepbx", "asterisk", "3cx")
OFF = "off"  # `keep: {voicemail: off}` leaves a preset rule out, visibly
NEVER = "never"  # `anonymize: {call-records: never}`: keep the anonymized records
TRANSFORMS = "_anonymize"  # a template store's transforms, used only when the rule anonymizes

# FreePBX/Asterisk `cdr`: the columns that name a party (clid as a caller id, `"Name" <number>`),
# and how each personal field is anonymized. uniqueid/linkedid encode the call's time to the
# second, channels and lastdata the numbers dialled, recordingfile both: blanked, not truncated.
CDR_SUBJECTS = ["src", "dst", "cnum", "did", "outbound_cnum", "clid"]
CDR_ANONYMIZE: dict[str, Any] = {
    "src": "truncate_digits",
    "dst": "truncate_digits",
    "cnum": "truncate_digits",
    "did": "truncate_digits",
    "outbound_cnum": "truncate_digits",
    "clid": "blank",
    "cnam": "blank",
    "outbound_cnam": "blank",
    "dst_cnam": "blank",
    "uniqueid": "blank",
    "linkedid": "blank",
    "channel": "blank",
    "dstchannel": "blank",
    "lastdata": "blank",
    "recordingfile": "blank",
    "userfield": "blank",
}
# Columns of the plain Asterisk cdr table that cdr_adaptive_odbc and cdr_pgsql write (clid:
# "Name" <number>)
ASTERISK_CDR_SUBJECTS = ["src", "dst", "clid"]
# ... and the transform of each CDR field, wherever a cdr_sqlite3_custom mapping puts it
ASTERISK_CDR_ANONYMIZE: dict[str, Any] = {
    "src": "truncate_digits",
    "dst": "truncate_digits",
    "clid": "blank",
    "channel": "blank",
    "dstchannel": "blank",
    "lastdata": "blank",
    "uniqueid": "blank",
    "userfield": "blank",
}
CEL_SUBJECTS = ["cid_num", "cid_ani", "cid_rdnis", "cid_dnid", "exten"]
CEL_ANONYMIZE: dict[str, Any] = {
    "cid_name": "blank",
    "cid_num": "truncate_digits",
    "cid_ani": "truncate_digits",
    "cid_rdnis": "truncate_digits",
    "cid_dnid": "truncate_digits",
    "exten": "truncate_digits",
    "channame": "blank",
    "appdata": "blank",
    "uniqueid": "blank",
    "linkedid": "blank",
    "peer": "blank",
    "extra": "blank",
}
# FreePBX queuelog: callid is the call's uniqueid, data1..data5 carry caller ids and positions
QUEUELOG_ANONYMIZE: dict[str, Any] = {
    "callid": "blank",
    "agent": "blank",
    "data1": "blank",
    "data2": "blank",
    "data3": "blank",
    "data4": "blank",
    "data5": "blank",
}
# cdr_csv's Master.csv by position: src 1, dst 2, clid 4, channel 5, dstchannel 6, lastdata 8,
# uniqueid 16, userfield 17
CSV_ANONYMIZE: dict[str, Any] = {
    "1": "truncate_digits",
    "2": "truncate_digits",
    "4": "blank",
    "5": "blank",
    "6": "blank",
    "8": "blank",
    "16": "blank",
    "17": "blank",
}


@dataclass(frozen=True)
class PresetProblem:
    path: tuple[str | int, ...]
    message: str


class PresetError(Exception):
    def __init__(self, problems: list[PresetProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(p.message for p in problems))


@dataclass(frozen=True)
class RuleTemplate:
    name: str
    description: str
    purpose: str
    schedule: str
    stores: list[dict[str, Any]]
    required: bool = True  # must the user give it a keep (or `off`)?


# -- FreePBX ---------------------------------------------------------------------------------------

# FreePBX's installer defines the CDRDB*/CELDB* settings with the value '' (framework
# installlib/installer.class.php), and its cdr and cel modules read '' as "the default": these
# (FreePBX/cdr release/17.0 Cdr.class.php and install.php, FreePBX/cel release/17.0 install.php).
FREEPBX_DEFAULTS = {
    "CDRDBNAME": "asteriskcdrdb",
    "CDRDBTABLENAME": "cdr",
    "CELDBTABLENAME": "cel",
    "CDRUSEGMT": "0",
    "ASTSPOOLDIR": "/var/spool/asterisk",
    "ASTLOGDIR": "/var/log/asterisk",
    "MIXMON_DIR": "",
}
FREEPBX_KEYS = (
    *FREEPBX_DEFAULTS,
    "CDRDBHOST",
    "CDRDBPORT",
    "CDRDBUSER",
    "CDRDBPASS",
    "CDRDBTYPE",
    "CDRDBSOCK",
    "CELDBNAME",
)
RECORDING_PATTERNS = ["**/*.wav", "**/*.WAV", "**/*.mp3", "**/*.gsm", "**/*.ogg", "**/*.opus"]


def freepbx(settings: dict[str, Any]) -> tuple[dict[str, Any], list[RuleTemplate], str | None]:
    conf_path = Path(str(settings.get("freepbx_conf", "/etc/freepbx.conf")))
    amp = read_freepbx_conf(conf_path)
    found = read_freepbx_settings(amp) if settings.get("read_database", True) else {}
    given = {k: str(v) for k, v in settings.items() if k.isupper()}
    # '' means "the default", in FreePBX's table as in preset_settings
    values = FREEPBX_DEFAULTS | _set(found) | _set(given)

    cdr_db = values["CDRDBNAME"]
    connection: dict[str, Any] = {"url": _freepbx_cdr_url(values, amp, cdr_db)}
    if values.get("CDRDBPASS"):
        # A remote CDR database has a password of its own in freepbx_settings.
        password_file = settings.get("cdr_password_file")
        if not password_file:
            raise PbxSettingsError(
                "FreePBX keeps the CDR database on another server (CDRDBHOST); store its "
                "password in a file and set preset_settings: {cdr_password_file: /path}"
            )
        connection["password_file"] = str(password_file)
    else:
        connection["password_from"] = str(conf_path)  # AMPDBPASS, as FreePBX falls back to it
    connections = {"cdrdb": connection}
    cel_connection = "cdrdb"
    cel_db = values.get("CELDBNAME") or cdr_db  # FreePBX/cel install.php
    if cel_db != cdr_db:
        connections["celdb"] = {**connection, "url": _freepbx_cdr_url(values, amp, cel_db)}
        cel_connection = "celdb"

    spool = Path(values["ASTSPOOLDIR"])
    monitor = Path(values["MIXMON_DIR"]) if values.get("MIXMON_DIR") else spool / "monitor"
    cdr_table = values["CDRDBTABLENAME"]
    rules = [
        RuleTemplate(
            "call-records",
            "Call detail and call event records (numbers, names, times, durations)",
            "Troubleshooting, cost control and call statistics",
            "daily 03:15",
            [
                _sql("cdrdb", cdr_table, "calldate") | _people(CDR_SUBJECTS, CDR_ANONYMIZE),
                _sql(cel_connection, values["CELDBTABLENAME"], "eventtime", optional=True)
                | _people(CEL_SUBJECTS, CEL_ANONYMIZE),
                _sql("cdrdb", "transient_cdr", "calldate", optional=True)
                | _people(CDR_SUBJECTS, CDR_ANONYMIZE),
                _sql("cdrdb", "queuelog", "time", optional=True) | {TRANSFORMS: QUEUELOG_ANONYMIZE},
                {
                    "type": "csv",
                    "root": str(Path(values["ASTLOGDIR"]) / "cdr-csv"),
                    "optional": True,
                    TRANSFORMS: CSV_ANONYMIZE,
                },
            ],
        ),
        RuleTemplate(
            "voicemail",
            "Voicemail messages (voice, caller numbers and names)",
            "Delivering messages to the called person",
            "daily 03:30",
            [{"type": "asterisk_voicemail", "root": str(spool / "voicemail")}],
        ),
        RuleTemplate(
            "call-recordings",
            "Call recordings (voice; numbers in the file names) and their cdr references",
            "Quality assurance or documentation, as the recording consent says",
            "daily 03:45",
            [
                {
                    "type": "files",
                    "root": str(monitor),
                    "match": RECORDING_PATTERNS,
                    "age_from": "path_date",
                    "group_siblings": True,
                    "subject_in_name": True,
                    "references": {
                        "connection": "cdrdb",
                        "table": cdr_table,
                        "column": "recordingfile",
                    },
                }
            ],
        ),
    ]
    timezone = "UTC" if values["CDRUSEGMT"].strip().lower() in ("1", "true", "yes") else None
    return connections, rules, timezone


def _set(values: dict[str, str]) -> dict[str, str]:
    """The settings that have a value: FreePBX reads '' (or blanks) as "use the default"."""
    return {key: value.strip() for key, value in values.items() if value.strip()}


def _freepbx_cdr_url(values: dict[str, str], amp: dict[str, str], database: str) -> str:
    """The CDR database's URL as FreePBX's cdr module connects: each empty CDRDB* setting falls
    back to its AMPDB* value in freepbx.conf (FreePBX/cdr release/17.0 Cdr.class.php)."""
    user = values.get("CDRDBUSER") or amp["AMPDBUSER"]
    host = values.get("CDRDBHOST") or amp.get("AMPDBHOST", "")
    port = values.get("CDRDBPORT") or amp.get("AMPDBPORT", "")
    if values.get("CDRDBTYPE", "").lower() in ("postgres", "pgsql"):
        address = f"{host or 'localhost'}:{port}" if port else host or "localhost"
        return f"postgresql+psycopg://{quote(user, safe='')}@{address}/{database}"
    socket = values.get("CDRDBSOCK") or amp.get("AMPDBSOCK", "")
    return _mysql_url(user, host, port, database, socket=socket)


def read_freepbx_settings(amp: dict[str, str]) -> dict[str, str]:
    """The settings retentiond needs from the `freepbx_settings` table of FreePBX's database."""
    from sqlalchemy import bindparam, create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    from retentiond.stores.db.errors import describe

    url = _mysql_url(
        amp["AMPDBUSER"],
        amp.get("AMPDBHOST", ""),
        amp.get("AMPDBPORT", ""),
        amp.get("AMPDBNAME") or "asterisk",
        password=amp.get("AMPDBPASS", ""),
        socket=amp.get("AMPDBSOCK", ""),
    )
    engine = create_engine(url, connect_args={"connect_timeout": 10})
    query = text("SELECT keyword, value FROM freepbx_settings WHERE keyword IN :keys")
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                query.bindparams(bindparam("keys", expanding=True)), {"keys": list(FREEPBX_KEYS)}
            ).all()
    except SQLAlchemyError as error:
        # Codes and fixed words only: the message reaches the journal (safety rule 11).
        failure = describe(error, "reading freepbx_settings from FreePBX's database")
        raise PbxSettingsError(
            f"cannot read freepbx_settings from FreePBX's database ({failure}); set "
            "preset_settings: {read_database: false} and give the settings there"
        ) from None
    finally:
        engine.dispose()
    return {str(k): str(v) for k, v in rows if v is not None}


# -- plain Asterisk -----------------------------------------------------------------------------


def asterisk(settings: dict[str, Any]) -> tuple[dict[str, Any], list[RuleTemplate], str | None]:
    log_dir = Path(str(settings.get("astlogdir", "/var/log/asterisk")))
    etc_dir = Path(str(settings.get("astetcdir", "/etc/asterisk")))
    spool = Path(str(settings.get("astspooldir", "/var/spool/asterisk")))
    monitor = Path(str(settings.get("monitor_dir", spool / "monitor")))
    connections: dict[str, Any] = {}
    call_stores = []
    for mapping in _sqlite_cdr_mappings(etc_dir / "cdr_sqlite3_custom.conf", log_dir):
        database = _sqlite_cdr_file(mapping.category, log_dir)
        name = _connection_name(database, connections)
        connections[name] = {"url": f"sqlite:///{database}"}
        call_stores.append(_sqlite_cdr_store(name, mapping))
    call_stores += [
        {  # cdr_csv
            "type": "csv",
            "root": str(log_dir / "cdr-csv"),
            "optional": True,
            TRANSFORMS: CSV_ANONYMIZE,
        },
    ]
    if settings.get("cdr_url"):  # tables written by cdr_adaptive_odbc or cdr_pgsql
        cdrdb: dict[str, Any] = {"url": str(settings["cdr_url"])}
        if settings.get("cdr_password_file"):
            cdrdb["password_file"] = str(settings["cdr_password_file"])
        connections["cdrdb"] = cdrdb
        call_stores.insert(
            0,
            _sql(
                "cdrdb",
                str(settings.get("cdr_table", "cdr")),
                str(settings.get("cdr_time_column", "calldate")),
            )
            | _people(ASTERISK_CDR_SUBJECTS, ASTERISK_CDR_ANONYMIZE),
        )
        if settings.get("cel_table"):
            call_stores.insert(
                1,
                _sql(
                    "cdrdb",
                    str(settings["cel_table"]),
                    str(settings.get("cel_time_column", "eventtime")),
                    optional=True,
                )
                | _people(CEL_SUBJECTS, CEL_ANONYMIZE),
            )
    rules = [
        RuleTemplate(
            "call-records",
            "Call detail records (numbers, names, times, durations)",
            "Troubleshooting and cost control",
            "daily 03:15",
            call_stores,
        ),
        RuleTemplate(
            "voicemail",
            "Voicemail messages (voice, caller numbers and names)",
            "Delivering messages to the called person",
            "daily 03:30",
            [{"type": "asterisk_voicemail", "root": str(spool / "voicemail")}],
        ),
        RuleTemplate(
            "call-recordings",
            "Call recordings (voice; numbers in the file names)",
            "Quality assurance or documentation, as the recording consent says",
            "daily 03:45",
            [
                {
                    "type": "files",
                    "root": str(monitor),
                    "match": RECORDING_PATTERNS,
                    "age_from": str(settings.get("monitor_age_from", "mtime")),
                    "group_siblings": True,
                    "optional": True,
                }
            ],
        ),
    ]
    return connections, rules, None


# cdr_sqlite3_custom.conf.sample's columns and values as shipped (commented out): [master] up to
# Asterisk 20.18, 22.8 and 23.2 (master.db), [cdr_master] since 20.19, 22.9 and 23.3
# (cdr_master.db). Neither has src or dst: the caller's number is only in clid.
SAMPLE_SQLITE_CDR_COLUMNS = {
    "master": "calldate, clid, dcontext, channel, dstchannel, lastapp, lastdata, duration, "
    "billsec, disposition, amaflags, accountcode, uniqueid, userfield, test",
    "cdr_master": "calldate, literal, clid, dcontext, channel, dstchannel, lastapp, lastdata, "
    "duration, billsec, disposition, amaflags, accountcode, uniqueid, userfield, ds_store",
}


def _sqlite_cdr_mappings(conf: Path, log_dir: Path) -> list[SqliteCdrMapping]:
    """The SQLite CDR tables Asterisk writes, as its cdr_sqlite3_custom.conf says, and those it
    wrote before.

    The files the samples name, master.db and cdr_master.db, are taken too when the conf does
    not name them: when they are there (left by an earlier release or mapping, with a year of
    calls), or when the conf maps nothing (no file, or the sample as shipped, all commented
    out). Their columns are those of their table, or else the sample's.
    """
    mappings = read_cdr_sqlite3_custom(conf)
    named = {_sqlite_cdr_file(m.category, log_dir) for m in mappings}
    for category, sample in SAMPLE_SQLITE_CDR_COLUMNS.items():
        database = _sqlite_cdr_file(category, log_dir)
        columns = _sqlite_columns(database, "cdr")
        if database in named or (columns is None and named):
            continue
        columns = columns or [c.strip() for c in sample.split(",")]
        fields = tuple("start" if c.lower() == "calldate" else c.lower() for c in columns)
        mappings.append(SqliteCdrMapping(category, "cdr", tuple(columns), fields))
    return mappings


def _sqlite_cdr_file(category: str, log_dir: Path) -> Path:
    """A category's database file, as res_cdrel_custom names it (config.c)."""
    name = category if category.endswith(".db") else f"{category}.db"
    return Path(name) if name.startswith("/") else log_dir / name


def _sqlite_columns(database: Path, table: str) -> list[str] | None:
    """The columns of `table` in an SQLite file, read only; None if it cannot be read."""
    import sqlite3

    if not database.is_file():
        return None
    try:
        with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT name, pk FROM pragma_table_info(?)", (table,)).fetchall()
    except sqlite3.Error:
        return None
    # cdr_sqlite3_custom's own key, AcctId INTEGER PRIMARY KEY, is no CDR field
    return [str(name) for name, key in rows if not key] or None


def _sqlite_cdr_store(connection: str, mapping: SqliteCdrMapping) -> dict[str, Any]:
    """A cdr_sqlite3_custom table as a store: the columns that receive `start`, the numbers and
    the personal fields, wherever the mapping put them."""
    columns = {c.lower(): c for c in mapping.columns}
    time_column = mapping.column_of("start") or columns.get("calldate") or "calldate"
    subjects = [c for c in (mapping.column_of("src"), mapping.column_of("dst")) if c]
    clid = mapping.column_of("clid")
    if clid:
        subjects.append(clid)  # `"Name" <number>`: without a src column, the only number
    transforms = {
        column: transform
        for field, transform in ASTERISK_CDR_ANONYMIZE.items()
        if (column := mapping.column_of(field)) and column != time_column
    }
    return _sql(connection, mapping.table, time_column, optional=True) | _people(
        subjects, transforms
    )


def _connection_name(database: Path, connections: dict[str, Any]) -> str:
    """masterdb for master.db (as before); else the file's name, unique among `connections`."""
    url = f"sqlite:///{database}"
    stem = re.sub(r"[^a-z0-9_.-]", "_", database.stem.lower()).lstrip("_.-")[:56]
    base = "masterdb" if stem == "master" else stem or "sqlitecdr"
    name, number = base, 1
    while connections.get(name, {"url": url})["url"] != url:
        number += 1
        name = f"{base}-{number}"
    return name


# -- 3CX ------------------------------------------------------------------------------------------


# The role of its own that docs/install.md creates for retentiond (SELECT, DELETE on call data),
# whose password is the systemd credential named like the connection.
THREECX_ROLE = "retentiond"
THREECX_CREDENTIALS = Path("/etc/retentiond/credentials")


def threecx(settings: dict[str, Any]) -> tuple[dict[str, Any], list[RuleTemplate], str | None]:
    data_dir = Path(str(settings.get("data_dir", "/var/lib/3cxpbx/Instance1/Data")))
    given = settings.get("ini") or settings.get("config_json")
    source = Path(str(given)) if given else find_3cx_settings()
    db = read_3cx_settings(source)
    user = _threecx_user(settings, db.master_user)
    url = f"postgresql+psycopg://{quote(user, safe='')}@{db.host}:{db.port}/{db.name}"
    connection: dict[str, Any] = {"url": url}
    if settings.get("password_file"):
        connection["password_file"] = str(settings["password_file"])
    elif user == db.master_user:
        connection["password_from"] = str(source)  # read from 3CX's file at each connect
    connections = {"3cx": connection}
    recordings = data_dir / "Recordings"
    voicemail = data_dir / "Ivr" / "Voicemail" / "Data"
    # Recordings first, in a run and in the day: a `recordings` row names a participant of a
    # call (cl_participants_id), and where a foreign key says so, the call cannot go before it.
    rules = [
        RuleTemplate(
            "call-recordings",
            "Call recordings (voice, transcriptions; numbers in the file names)",
            "Quality assurance or documentation, as the recording consent says",
            "daily 03:00",
            [
                {
                    **_sql("3cx", "recordings", "start_time", optional=True),
                    "file_column": "recording_url",
                    "file_root": str(recordings),
                    "subject_in_file_name": True,  # <ext>/[Name]_<ext>-<number>_<time>(<n>).wav
                },
                {
                    "type": "files",
                    "root": str(recordings),
                    "match": ["**/*.wav", "**/*.mp3", "**/*.opus"],
                    "age_from": "filename_date",
                    "subject_in_name": True,  # [Name]_<ext>-<number>_<time>(<n>).wav
                    "named_by": {
                        "connection": "3cx",
                        "table": "recordings",
                        "column": "recording_url",
                    },
                    "optional": True,
                },
            ],
        ),
        RuleTemplate(
            "call-records",
            "Call history (numbers, names, times, durations)",
            "Troubleshooting, cost control and call statistics",
            "daily 03:15",
            [{"type": "3cx_call_history", "connection": "3cx", TRANSFORMS: _threecx_anonymize()}],
        ),
        RuleTemplate(
            "voicemail",
            "Voicemail messages (voice, caller numbers and names)",
            "Delivering messages to the called person",
            "daily 03:30",
            [
                {
                    **_sql("3cx", "s_voicemail", "created_time", optional=True),
                    "file_column": "wav_file",
                    "file_root": str(voicemail),
                    "subject_columns": ["caller", "callee"],
                },
                {
                    "type": "files",
                    "root": str(voicemail),
                    "match": ["**/vmail_*.wav"],  # greetings and prompts live there too
                    "age_from": "mtime",
                    "named_by": {"connection": "3cx", "table": "s_voicemail", "column": "wav_file"},
                    "optional": True,
                },
            ],
        ),
        RuleTemplate(
            "chats",
            "Chat messages",
            "Communication with customers and colleagues",
            "daily 04:00",
            [_sql("3cx", "chat_message", "time_sent", optional=True)],
            required=False,
        ),
    ]
    return connections, rules, None


def _threecx_user(settings: dict[str, Any], master_user: str) -> str:
    """The database role: the one set, else retentiond's own where its credential exists (the
    service's, or where docs/install.md stores it), else 3CX's master account."""
    if settings.get("db_user"):
        return str(settings["db_user"])
    service_credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    folders = [Path(service_credentials)] if service_credentials else []
    if any((folder / "3cx").is_file() for folder in [*folders, THREECX_CREDENTIALS]):
        return THREECX_ROLE
    return master_user


EXPANDERS: dict[
    str, Callable[[dict[str, Any]], tuple[dict[str, Any], list[RuleTemplate], str | None]]
] = {"freepbx": freepbx, "asterisk": asterisk, "3cx": threecx}


# -- expansion ----------------------------------------------------------------------------------


def expand(data: dict[str, Any]) -> dict[str, Any]:
    """The config with its preset expanded into connections and rules; unchanged without one."""
    preset = data.get("preset")
    if preset is None:
        return data
    if not isinstance(preset, str) or preset not in EXPANDERS:
        raise PresetError(
            [
                PresetProblem(
                    ("preset",), f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}"
                )
            ]
        )
    settings = data.get("preset_settings") or {}
    if not isinstance(settings, dict):
        raise PresetError([PresetProblem(("preset_settings",), "expected a mapping of settings")])
    problems = [
        PresetProblem((key,), f"{message}; with a preset it adds to the preset's {key}")
        for key, kind, message in (
            ("connections", dict, "expected a mapping of connection names"),
            ("rules", list, "expected a list of rules"),
        )
        if data.get(key) is not None and not isinstance(data[key], kind)
    ]
    if problems:
        raise PresetError(problems)
    connections, templates, timezone = EXPANDERS[preset](settings)
    keep = data.get("keep")
    problems = _keep_problems(preset, keep, templates)
    if problems:
        raise PresetError(problems)
    assert isinstance(keep, dict)  # checked above
    anonymize = data.get("anonymize") or {}
    problems = _anonymize_problems(anonymize, templates)
    if problems:
        raise PresetError(problems)
    rules = [
        _rule(t, keep[t.name], anonymize.get(t.name))
        for t in templates
        if t.name in keep and keep[t.name] != OFF
    ]
    dropped = ("preset", "preset_settings", "keep", "anonymize")
    expanded = {k: v for k, v in data.items() if k not in dropped}
    user_connections = expanded.get("connections") or {}
    expanded["connections"] = {**connections, **user_connections}
    expanded["rules"] = rules + list(expanded.get("rules") or [])
    if timezone and "timezone" not in expanded:
        expanded["timezone"] = timezone
    return expanded


def _keep_problems(preset: str, keep: Any, templates: list[RuleTemplate]) -> list[PresetProblem]:
    names = [t.name for t in templates]
    if not isinstance(keep, dict):
        wanted = ", ".join(f"{n}: 3 months" for n in names if _required(n, templates))
        return [PresetProblem(("keep",), f"preset {preset} needs keep: {{{wanted}}}")]
    problems = [
        PresetProblem(
            ("keep", key), f"preset {preset} has no rule {key!r} (rules: {', '.join(names)})"
        )
        for key in keep
        if key not in names
    ]
    for key, value in keep.items():
        if key in names and value != OFF:
            try:
                parse_keep(value)
            except ValueError as error:
                problems.append(PresetProblem(("keep", key), str(error)))
    problems += [
        PresetProblem(
            ("keep",),
            f"keep has no period for {name!r}; give one, or write `{name}: off` to leave it out",
        )
        for name in names
        if name not in keep and _required(name, templates)
    ]
    return problems


def _rule(template: RuleTemplate, keep: Any, anonymize: Any) -> dict[str, Any]:
    """One rule from its template: the transforms go in only when the rule anonymizes."""
    stores = []
    for store in template.stores:
        transforms = store.get(TRANSFORMS)
        store = {k: v for k, v in store.items() if k != TRANSFORMS}
        if anonymize is not None and transforms:
            store["anonymize"] = dict(transforms)
        stores.append(store)
    rule: dict[str, Any] = {
        "name": template.name,
        "description": template.description,
        "purpose": template.purpose,
        "keep": keep,
    }
    if anonymize is not None:
        rule["action"] = "anonymize"
        if anonymize != NEVER:
            rule["then_delete_after"] = anonymize
    return rule | {"schedule": template.schedule, "stores": stores}


def _anonymize_problems(anonymize: Any, templates: list[RuleTemplate]) -> list[PresetProblem]:
    if not isinstance(anonymize, dict):
        return [
            PresetProblem(
                ("anonymize",), "expected a mapping such as {call-records: 2 years} (or never)"
            )
        ]
    problems = []
    for name, after in anonymize.items():
        template = next((t for t in templates if t.name == name), None)
        if template is None or not all(TRANSFORMS in store for store in template.stores):
            can = [t.name for t in templates if all(TRANSFORMS in s for s in t.stores)]
            problems.append(
                PresetProblem(
                    ("anonymize", name),
                    f"{name!r} cannot be anonymized with this preset (only: {', '.join(can)}); "
                    "voice recordings and voicemail are deleted",
                )
            )
            continue
        if after != NEVER:
            try:
                parse_keep(after)
            except ValueError as error:
                problems.append(
                    PresetProblem(("anonymize", name), f"{error}, or never to keep them")
                )
    return problems


def _people(subjects: list[str], transforms: dict[str, Any]) -> dict[str, Any]:
    return {"subject_columns": list(subjects), TRANSFORMS: transforms}


def _threecx_anonymize() -> dict[str, Any]:
    from retentiond.stores.threecx.anonymize import DEFAULT_ANONYMIZE

    return dict(DEFAULT_ANONYMIZE)


def _required(name: str, templates: list[RuleTemplate]) -> bool:
    return any(t.name == name and t.required for t in templates)


def _sql(
    connection: str, table: str, time_column: str, *, optional: bool = False
) -> dict[str, Any]:
    store: dict[str, Any] = {
        "type": "sql",
        "connection": connection,
        "table": table,
        "time_column": time_column,
    }
    if optional:
        store["optional"] = True
    return store


def _mysql_url(
    user: str,
    host: str,
    port: str,
    database: str,
    password: str | None = None,
    *,
    socket: str = "",
) -> str:
    """A MariaDB URL that connects as FreePBX's PHP does (PDO/mysqli): over `socket` when one is
    set (AMPDBSOCK); for `localhost` or no host, over the local socket MariaDB's client finds,
    never TCP to 127.0.0.1 (a server that skips name resolution would not see `localhost`); the
    port only where it is a TCP port above 1024 (framework BMO/Database.class.php)."""
    credentials = quote(user, safe="")
    if password:
        credentials += ":" + quote(password, safe="")
    if not socket and host.strip().lower() in ("", "localhost"):
        socket = mariadb_socket()
    if socket:
        unix_socket = quote(socket, safe="/")
        return f"mariadb+pymysql://{credentials}@localhost/{database}?charset=utf8mb4&unix_socket={unix_socket}"
    address = f"{host}:{port}" if port.strip().isdigit() and int(port) > 1024 else host
    return f"mariadb+pymysql://{credentials}@{address}/{database}?charset=utf8mb4"
