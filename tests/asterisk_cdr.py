"""Asterisk's cdr_sqlite3_custom, as shipped: its sample config enabled, its database built.

The samples are in tests/vendor/asterisk (see the README there for tags and commits). The table
is created as both implementations do (cdr/cdr_sqlite3_custom.c up to 20.18/22.8/23.2,
res/cdrel_custom/config.c since 20.19/22.9/23.3): `CREATE TABLE <table> (AcctId INTEGER
PRIMARY KEY, <columns>)`, untyped, and every value is written as text (sqlite3_bind_text in
res/cdrel_custom/writers.c; string literals in the old module's INSERT).
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from retentiond.config.pbxfiles import read_cdr_sqlite3_custom

VENDOR = Path(__file__).parent / "vendor" / "asterisk"
SAMPLE_20 = VENDOR / "cdr_sqlite3_custom.conf.sample-20.18.2"
SAMPLE_23 = VENDOR / "cdr_sqlite3_custom.conf.sample-23.3.0"
CALLER = "+493077700010"
CALLED = "+493077700099"


def enabled(sample: Path, category: str, **replace: str) -> str:
    """The sample with `category`'s commented lines uncommented, as an administrator does;
    `replace` rewrites a setting's value (e.g. fields with start(int64))."""
    lines = sample.read_text().splitlines()
    out, inside = [], False
    for line in lines:
        header = re.match(r"^;?\[(\w+)\]", line)
        if header:
            inside = header.group(1) == category
            line = line.lstrip(";") if inside else line
        elif inside:
            setting = re.match(r"^;(table|columns|values|fields|busy_timeout)\s*=>?", line)
            if setting and not (setting.group(1) == "values" and "High Resolution" in out[-1]):
                line = line[1:]
                value = replace.get(setting.group(1))
                if value is not None:
                    line = line[: setting.end()] + " " + value
        out.append(line)
    return "\n".join(out) + "\n"


def write_conf(etc_dir: Path, text: str) -> Path:
    etc_dir.mkdir(parents=True, exist_ok=True)
    conf = etc_dir / "cdr_sqlite3_custom.conf"
    conf.write_text(text)
    return conf


def field_value(field: str, start: datetime, number: int) -> str:
    """What Asterisk writes for one field of a call that started at `start` (aware)."""
    name, _, qualifiers = field.strip().partition("(")
    name = name.lower()
    if field.startswith('"'):
        return field.strip('"')
    if name == "start":
        if "int64" in qualifiers:
            return f"{int(start.timestamp()):d}"  # formatters.c "%ld"
        if "float" in qualifiers:
            return f"{start.timestamp():.6f}"  # formatters.c "%.6f"
        return start.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")  # "%Y-%m-%d %T"
    return {
        "clid": f'"Erika Mustermann" <{CALLER}>',
        "src": CALLER,
        "dst": CALLED,
        "dcontext": "from-internal",
        "channel": f"PJSIP/1001-{number:08x}",
        "dstchannel": f"PJSIP/trunk-{number:08x}",
        "lastapp": "Dial",
        "lastdata": f"PJSIP/{CALLED}@trunk,60",
        "duration": "42",
        "billsec": "40",
        "disposition": "ANSWERED",
        "amaflags": "DOCUMENTATION",
        "uniqueid": f"{int(start.timestamp())}.{number}",
    }.get(name, "")


def build_database(conf: Path, log_dir: Path, starts: list[datetime]) -> dict[str, Path]:
    """Every database the enabled categories of `conf` write, with one row per call start."""
    text = conf.read_text()
    written = {}
    for mapping in read_cdr_sqlite3_custom(conf):
        raw = _raw_fields(text, mapping.category)
        name = mapping.category if mapping.category.endswith(".db") else f"{mapping.category}.db"
        path = log_dir / name
        log_dir.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path)) as db, db:
            db.execute(
                f"CREATE TABLE {mapping.table} (AcctId INTEGER PRIMARY KEY, "
                f"{','.join(mapping.columns)})"
            )
            db.executemany(
                f"INSERT INTO {mapping.table} ({','.join(mapping.columns)}) "
                f"VALUES ({','.join('?' * len(mapping.columns))})",
                [tuple(field_value(f, start, i) for f in raw) for i, start in enumerate(starts)],
            )
        written[mapping.category] = path
    return written


def _raw_fields(text: str, category: str) -> list[str]:
    """The category's fields (or values reduced to their CDR field) as written in the conf."""
    section = text.split(f"[{category}]", 1)[1]
    for line in section.splitlines():
        if line.startswith("values"):
            values = re.findall(r"'([^']*)'", line)
            return [m.group(1) if (m := re.search(r"CDR\((\w+)", v)) else f'"{v}"' for v in values]
        if line.startswith("fields"):
            return [f.strip() for f in line.split("=", 1)[1].split(",")]
    raise AssertionError(f"no values or fields in [{category}]")


def calldates(path: Path, column: str = "calldate") -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        return [str(row[0]) for row in db.execute(f"SELECT {column} FROM cdr ORDER BY AcctId")]
