"""Presets: a known PBX's stores, found from its own settings, from three lines of YAML.

    version: 1
    preset: freepbx
    keep: {call-records: 3 months, voicemail: 60d, call-recordings: 30d}

`expand()` turns that into the full config (connections and rules) before validation, so a
preset config is checked exactly like a hand-written one, and `retentiond init` prints the
same expansion for review. Stores a PBX has only in some installs are marked optional: `check`
and `plan` say which were found and which were not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from retentiond.config.model import parse_keep
from retentiond.config.pbxfiles import PbxSettingsError, read_3cx_config, read_freepbx_conf

PRESETS = ("freepbx", "asterisk", "3cx")
OFF = "off"  # `keep: {voicemail: off}` leaves a preset rule out, visibly


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
    "CELDBNAME",
)
RECORDING_PATTERNS = ["**/*.wav", "**/*.WAV", "**/*.mp3", "**/*.gsm", "**/*.ogg", "**/*.opus"]


def freepbx(settings: dict[str, Any]) -> tuple[dict[str, Any], list[RuleTemplate], str | None]:
    conf_path = Path(str(settings.get("freepbx_conf", "/etc/freepbx.conf")))
    amp = read_freepbx_conf(conf_path)
    values = dict(FREEPBX_DEFAULTS)
    if settings.get("read_database", True):
        values.update(read_freepbx_settings(amp))
    values.update({k: str(v) for k, v in settings.items() if k.isupper()})

    host = values.get("CDRDBHOST") or amp.get("AMPDBHOST", "localhost")
    port = values.get("CDRDBPORT") or amp.get("AMPDBPORT", "")
    user = values.get("CDRDBUSER") or amp["AMPDBUSER"]
    cdr_db = values["CDRDBNAME"]
    connection: dict[str, Any] = {"url": _mysql_url(user, host, port, cdr_db)}
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
        connection["password_from"] = str(conf_path)
    connections = {"cdrdb": connection}
    cel_connection = "cdrdb"
    cel_db = values.get("CELDBNAME") or cdr_db
    if cel_db != cdr_db:
        connections["celdb"] = {**connection, "url": _mysql_url(user, host, port, cel_db)}
        cel_connection = "celdb"

    spool = Path(values["ASTSPOOLDIR"])
    monitor = Path(values["MIXMON_DIR"]) if values["MIXMON_DIR"] else spool / "monitor"
    cdr_table = values["CDRDBTABLENAME"]
    rules = [
        RuleTemplate(
            "call-records",
            "Call detail and call event records (numbers, names, times, durations)",
            "Troubleshooting, cost control and call statistics",
            "daily 03:15",
            [
                _sql("cdrdb", cdr_table, "calldate"),
                _sql(cel_connection, values["CELDBTABLENAME"], "eventtime", optional=True),
                _sql("cdrdb", "transient_cdr", "calldate", optional=True),
                _sql("cdrdb", "queuelog", "time", optional=True),
                {
                    "type": "csv",
                    "root": str(Path(values["ASTLOGDIR"]) / "cdr-csv"),
                    "optional": True,
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


def read_freepbx_settings(amp: dict[str, str]) -> dict[str, str]:
    """The settings retentiond needs from the `freepbx_settings` table of FreePBX's database."""
    from sqlalchemy import bindparam, create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    url = _mysql_url(
        amp["AMPDBUSER"],
        amp.get("AMPDBHOST", "localhost"),
        amp.get("AMPDBPORT", ""),
        amp.get("AMPDBNAME", "asterisk"),
        password=amp.get("AMPDBPASS", ""),
    )
    engine = create_engine(url, connect_args={"connect_timeout": 10})
    query = text("SELECT keyword, value FROM freepbx_settings WHERE keyword IN :keys")
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                query.bindparams(bindparam("keys", expanding=True)), {"keys": list(FREEPBX_KEYS)}
            ).all()
    except SQLAlchemyError as error:
        first = str(getattr(error, "orig", error)).splitlines()[0]
        raise PbxSettingsError(
            f"cannot read freepbx_settings from FreePBX's database ({first}); set "
            "preset_settings: {read_database: false} and give the settings there"
        ) from None
    finally:
        engine.dispose()
    return {str(k): str(v) for k, v in rows if v is not None}


# -- plain Asterisk -----------------------------------------------------------------------------


def asterisk(settings: dict[str, Any]) -> tuple[dict[str, Any], list[RuleTemplate], str | None]:
    log_dir = Path(str(settings.get("astlogdir", "/var/log/asterisk")))
    spool = Path(str(settings.get("astspooldir", "/var/spool/asterisk")))
    monitor = Path(str(settings.get("monitor_dir", spool / "monitor")))
    connections: dict[str, Any] = {"masterdb": {"url": f"sqlite:///{log_dir / 'master.db'}"}}
    call_stores = [
        _sql("masterdb", "cdr", "calldate", optional=True),  # cdr_sqlite3_custom
        {"type": "csv", "root": str(log_dir / "cdr-csv"), "optional": True},  # cdr_csv
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
            ),
        )
        if settings.get("cel_table"):
            call_stores.insert(
                1,
                _sql(
                    "cdrdb",
                    str(settings["cel_table"]),
                    str(settings.get("cel_time_column", "eventtime")),
                    optional=True,
                ),
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


# -- 3CX ------------------------------------------------------------------------------------------


def threecx(settings: dict[str, Any]) -> tuple[dict[str, Any], list[RuleTemplate], str | None]:
    config_json = Path(str(settings.get("config_json", "/var/lib/3cxpbx/Bin/config.json")))
    data_dir = Path(str(settings.get("data_dir", "/var/lib/3cxpbx/Instance1/Data")))
    db = read_3cx_config(config_json)
    url = (
        f"postgresql+psycopg://{quote(db['DbUser'], safe='')}@{db.get('DbHost', '127.0.0.1')}"
        f":{db.get('DbPort', '5432')}/{db.get('DbName', 'database_single')}"
    )
    connections = {"3cx": {"url": url, "password_from": str(config_json)}}
    recordings = data_dir / "Recordings"
    voicemail = data_dir / "Ivr" / "Voicemail" / "Data"
    rules = [
        RuleTemplate(
            "call-records",
            "Call history (numbers, names, times, durations)",
            "Troubleshooting, cost control and call statistics",
            "daily 03:15",
            [{"type": "3cx_call_history", "connection": "3cx"}],
        ),
        RuleTemplate(
            "call-recordings",
            "Call recordings (voice, transcriptions; numbers in the file names)",
            "Quality assurance or documentation, as the recording consent says",
            "daily 03:45",
            [
                {
                    **_sql("3cx", "recordings", "start_time", optional=True),
                    "file_column": "recording_url",
                    "file_root": str(recordings),
                },
                {
                    "type": "files",
                    "root": str(recordings),
                    "match": ["**/*.wav", "**/*.mp3", "**/*.opus"],
                    "age_from": "filename_date",
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
            "voicemail",
            "Voicemail messages (voice, caller numbers and names)",
            "Delivering messages to the called person",
            "daily 03:30",
            [
                {
                    **_sql("3cx", "s_voicemail", "created_time", optional=True),
                    "file_column": "wav_file",
                    "file_root": str(voicemail),
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


EXPANDERS: dict[
    str, Callable[[dict[str, Any]], tuple[dict[str, Any], list[RuleTemplate], str | None]]
] = {"freepbx": freepbx, "asterisk": asterisk, "3cx": threecx}


# -- expansion ----------------------------------------------------------------------------------


def expand(data: dict[str, Any]) -> dict[str, Any]:
    """The config with its preset expanded into connections and rules; unchanged without one."""
    preset = data.get("preset")
    if preset is None:
        return data
    if preset not in EXPANDERS:
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
    connections, templates, timezone = EXPANDERS[preset](settings)
    keep = data.get("keep")
    problems = _keep_problems(preset, keep, templates)
    if problems:
        raise PresetError(problems)
    assert isinstance(keep, dict)  # checked above
    rules = [
        {
            "name": t.name,
            "description": t.description,
            "purpose": t.purpose,
            "keep": keep[t.name],
            "schedule": t.schedule,
            "stores": t.stores,
        }
        for t in templates
        if t.name in keep and keep[t.name] != OFF
    ]
    expanded = {k: v for k, v in data.items() if k not in ("preset", "preset_settings", "keep")}
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


def _mysql_url(user: str, host: str, port: str, database: str, password: str | None = None) -> str:
    credentials = quote(user, safe="")
    if password:
        credentials += ":" + quote(password, safe="")
    address = f"{host}:{port}" if port else host
    return f"mariadb+pymysql://{credentials}@{address}/{database}?charset=utf8mb4"
