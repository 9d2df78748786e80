"""The freepbx preset: FreePBX's CDR, CEL and queue log tables, its Asterisk voicemail spool and
call recordings, found from /etc/freepbx.conf and the `freepbx_settings` table."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from retentiond.config.pbxfiles import PbxSettingsError, mariadb_socket, read_freepbx_conf
from retentiond.config.presets.templates import (
    RECORDING_PATTERNS,
    TRANSFORMS,
    RuleTemplate,
    people,
    sql_store,
)
from retentiond.config.presets.transforms import (
    CDR_ANONYMIZE,
    CDR_SUBJECTS,
    CEL_ANONYMIZE,
    CEL_SUBJECTS,
    CSV_ANONYMIZE,
    QUEUELOG_ANONYMIZE,
)

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


def expand(settings: dict[str, Any]) -> tuple[dict[str, Any], list[RuleTemplate], str | None]:
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
                sql_store("cdrdb", cdr_table, "calldate") | people(CDR_SUBJECTS, CDR_ANONYMIZE),
                sql_store(cel_connection, values["CELDBTABLENAME"], "eventtime", optional=True)
                | people(CEL_SUBJECTS, CEL_ANONYMIZE),
                sql_store("cdrdb", "transient_cdr", "calldate", optional=True)
                | people(CDR_SUBJECTS, CDR_ANONYMIZE),
                sql_store("cdrdb", "queuelog", "time", optional=True)
                | {TRANSFORMS: QUEUELOG_ANONYMIZE},
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
    return mariadb_url(user, host, port, database, socket=socket)


def read_freepbx_settings(amp: dict[str, str]) -> dict[str, str]:
    """The settings retentiond needs from the `freepbx_settings` table of FreePBX's database."""
    from sqlalchemy import bindparam, create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    from retentiond.dberrors import describe

    url = mariadb_url(
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


def mariadb_url(
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
