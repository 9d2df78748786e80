"""The asterisk preset: plain Asterisk's call records (cdr_sqlite3_custom, cdr_csv, and tables
written by cdr_adaptive_odbc or cdr_pgsql where preset_settings name them), voicemail spool and
call recordings, found from its configuration files."""

from __future__ import annotations

import re
from contextlib import closing
from pathlib import Path
from typing import Any

from retentiond.config.pbxfiles import SqliteCdrMapping, read_cdr_sqlite3_custom
from retentiond.config.presets.templates import (
    RECORDING_PATTERNS,
    TRANSFORMS,
    RuleTemplate,
    people,
    sql_store,
)
from retentiond.config.presets.transforms import (
    ASTERISK_CDR_ANONYMIZE,
    ASTERISK_CDR_SUBJECTS,
    CEL_ANONYMIZE,
    CEL_SUBJECTS,
    CSV_ANONYMIZE,
)


def expand(settings: dict[str, Any]) -> tuple[dict[str, Any], list[RuleTemplate], str | None]:
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
            sql_store(
                "cdrdb",
                str(settings.get("cdr_table", "cdr")),
                str(settings.get("cdr_time_column", "calldate")),
            )
            | people(ASTERISK_CDR_SUBJECTS, ASTERISK_CDR_ANONYMIZE),
        )
        if settings.get("cel_table"):
            call_stores.insert(
                1,
                sql_store(
                    "cdrdb",
                    str(settings["cel_table"]),
                    str(settings.get("cel_time_column", "eventtime")),
                    optional=True,
                )
                | people(CEL_SUBJECTS, CEL_ANONYMIZE),
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
    return sql_store(connection, mapping.table, time_column, optional=True) | people(
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
