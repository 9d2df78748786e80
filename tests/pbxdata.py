"""Realistic PBX tables and fake call data for tests against real databases.

The DDL is FreePBX's own (`asteriskcdrdb.cdr` from framework `installlib/SQL/cdr.sql` plus the
columns the cdr module adds on install, `cel` from the cel module), a PostgreSQL translation of
both, and the untyped table Asterisk's `cdr_sqlite3_custom` creates in `master.db`. The rows look
like a small German office: +49 numbers, names, extensions 2xx, Asterisk uniqueids. All of it is
fake, generated from a seed, so every test sees the same data.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, create_engine, text

# FreePBX `cdr`: no primary key at all, five indexes from cdr.sql, two more from the cdr module.
MARIADB_CDR = [
    """
    CREATE TABLE cdr (
       calldate datetime NOT NULL default '0000-00-00 00:00:00',
       clid varchar(80) NOT NULL default '',
       src varchar(80) NOT NULL default '',
       dst varchar(80) NOT NULL default '',
       dcontext varchar(80) NOT NULL default '',
       channel varchar(80) NOT NULL default '',
       dstchannel varchar(80) NOT NULL default '',
       lastapp varchar(80) NOT NULL default '',
       lastdata varchar(80) NOT NULL default '',
       duration int(11) NOT NULL default '0',
       billsec int(11) NOT NULL default '0',
       disposition varchar(45) NOT NULL default '',
       amaflags int(11) NOT NULL default '0',
       accountcode varchar(20) NOT NULL default '',
       uniqueid varchar(32) NOT NULL default '',
       userfield varchar(255) NOT NULL default '',
       did varchar(50) NOT NULL default '',
       recordingfile varchar(255) NOT NULL default '',
       cnum varchar(80) NOT NULL default '',
       cnam varchar(80) NOT NULL default '',
       outbound_cnum varchar(80) NOT NULL default '',
       outbound_cnam varchar(80) NOT NULL default '',
       dst_cnam varchar(80) NOT NULL default '',
       linkedid varchar(32) NOT NULL default '',
       peeraccount varchar(80) NOT NULL default '',
       sequence int(11) NOT NULL default 0,
       KEY `calldate` (`calldate`),
       KEY `dst` (`dst`),
       KEY `accountcode` (`accountcode`),
       KEY `uniqueid` (`uniqueid`),
       KEY `did` (`did`),
       KEY `recordingfile` (`recordingfile`),
       KEY `linkedid` (`linkedid`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """
]

# FreePBX `cel`: primary key id, but no index on eventtime.
MARIADB_CEL = [
    """
    CREATE TABLE cel (
      `id` int(11) NOT NULL auto_increment,
      `eventtype` varchar(30) NOT NULL,
      `eventtime` datetime NOT NULL,
      `cid_name` varchar(80) NOT NULL,
      `cid_num` varchar(80) NOT NULL,
      `cid_ani` varchar(80) NOT NULL,
      `cid_rdnis` varchar(80) NOT NULL,
      `cid_dnid` varchar(80) NOT NULL,
      `exten` varchar(80) NOT NULL,
      `context` varchar(80) NOT NULL,
      `channame` varchar(80) NOT NULL,
      `appname` varchar(80) NOT NULL,
      `appdata` varchar(1024) NOT NULL,
      `amaflags` int(11) NOT NULL,
      `accountcode` varchar(20) NOT NULL,
      `uniqueid` varchar(32) NOT NULL,
      `linkedid` varchar(32) NOT NULL,
      `peer` varchar(255) NOT NULL,
      `userdeftype` varchar(255) NOT NULL,
      `extra` varchar(512) NOT NULL,
      PRIMARY KEY  (`id`),
      KEY `uniqueid_index` (`uniqueid`),
      KEY `linkedid_index` (`linkedid`),
      KEY `context_index` (`context`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
    """
]

_PG_CDR_COLUMNS = """
       calldate timestamp NOT NULL,
       clid varchar(80) NOT NULL default '',
       src varchar(80) NOT NULL default '',
       dst varchar(80) NOT NULL default '',
       dcontext varchar(80) NOT NULL default '',
       channel varchar(80) NOT NULL default '',
       dstchannel varchar(80) NOT NULL default '',
       lastapp varchar(80) NOT NULL default '',
       lastdata varchar(80) NOT NULL default '',
       duration integer NOT NULL default 0,
       billsec integer NOT NULL default 0,
       disposition varchar(45) NOT NULL default '',
       amaflags integer NOT NULL default 0,
       accountcode varchar(20) NOT NULL default '',
       uniqueid varchar(32) NOT NULL default '',
       userfield varchar(255) NOT NULL default '',
       did varchar(50) NOT NULL default '',
       recordingfile varchar(255) NOT NULL default '',
       cnum varchar(80) NOT NULL default '',
       cnam varchar(80) NOT NULL default '',
       outbound_cnum varchar(80) NOT NULL default '',
       outbound_cnam varchar(80) NOT NULL default '',
       dst_cnam varchar(80) NOT NULL default '',
       linkedid varchar(32) NOT NULL default '',
       peeraccount varchar(80) NOT NULL default '',
       sequence integer NOT NULL default 0
"""

# The same tables as Asterisk's cdr_pgsql/cel_pgsql users create them: cdr without a key.
POSTGRES_CDR = [
    f"CREATE TABLE cdr ({_PG_CDR_COLUMNS})",
    "CREATE INDEX cdr_calldate ON cdr (calldate)",
    "CREATE INDEX cdr_dst ON cdr (dst)",
    "CREATE INDEX cdr_uniqueid ON cdr (uniqueid)",
]

POSTGRES_CEL = [
    """
    CREATE TABLE cel (
      id serial PRIMARY KEY,
      eventtype varchar(30) NOT NULL,
      eventtime timestamp NOT NULL,
      cid_name varchar(80) NOT NULL,
      cid_num varchar(80) NOT NULL,
      cid_ani varchar(80) NOT NULL,
      cid_rdnis varchar(80) NOT NULL,
      cid_dnid varchar(80) NOT NULL,
      exten varchar(80) NOT NULL,
      context varchar(80) NOT NULL,
      channame varchar(80) NOT NULL,
      appname varchar(80) NOT NULL,
      appdata varchar(1024) NOT NULL,
      amaflags integer NOT NULL,
      accountcode varchar(20) NOT NULL,
      uniqueid varchar(32) NOT NULL,
      linkedid varchar(32) NOT NULL,
      peer varchar(255) NOT NULL,
      userdeftype varchar(255) NOT NULL,
      extra varchar(512) NOT NULL
    )
    """,
    "CREATE INDEX cel_uniqueid ON cel (uniqueid)",
    "CREATE INDEX cel_linkedid ON cel (linkedid)",
]

# Asterisk cdr_sqlite3_custom (/var/log/asterisk/master.db): untyped columns holding strings.
SQLITE_CDR = [
    """
    CREATE TABLE cdr (
      AcctId INTEGER PRIMARY KEY, calldate, clid, src, dst, dcontext, channel, dstchannel,
      lastapp, lastdata, duration, billsec, disposition, amaflags, accountcode, uniqueid, userfield
    )
    """
]

SQLITE_CDR_COLUMNS = [
    "calldate",
    "clid",
    "src",
    "dst",
    "dcontext",
    "channel",
    "dstchannel",
    "lastapp",
    "lastdata",
    "duration",
    "billsec",
    "disposition",
    "amaflags",
    "accountcode",
    "uniqueid",
    "userfield",
]

DDL: Mapping[str, Mapping[str, list[str]]] = {
    "mariadb": {"cdr": MARIADB_CDR, "cel": MARIADB_CEL},
    "postgresql": {"cdr": POSTGRES_CDR, "cel": POSTGRES_CEL},
    "sqlite": {"cdr": SQLITE_CDR},
}

FIRST_NAMES = ["Anna", "Jonas", "Lea", "Lukas", "Marie", "Felix", "Sophie", "Paul", "Emma", "Ben"]
LAST_NAMES = ["Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker"]
AREA_CODES = ["30", "40", "89", "221", "69", "711", "151", "160", "170", "176"]
OFFICE_DID = "+4930123456"


def phone_number(rng: random.Random) -> str:
    """A German number in E.164 form: +49, an area or mobile prefix, the subscriber number."""
    area = rng.choice(AREA_CODES)
    digits = (11 if area.startswith("1") else 10) - len(area)
    return f"+49{area}{rng.randrange(10 ** (digits - 1), 10**digits)}"


def person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def uniqueid(moment: datetime, sequence: int) -> str:
    """Asterisk's uniqueid: epoch seconds of the channel's creation, a dot, a running number."""
    return f"{int(moment.timestamp())}.{sequence}"


def cdr_rows(calldates: Iterable[datetime], seed: int = 0) -> list[dict[str, Any]]:
    """One FreePBX cdr row per call date (naive or aware, as the column wants), in that order."""
    rng = random.Random(seed)
    rows = []
    for sequence, calldate in enumerate(calldates, start=100):
        inbound = rng.random() < 0.6
        extension = str(rng.randrange(200, 260))
        outside = phone_number(rng)
        caller, callee = (outside, extension) if inbound else (extension, outside)
        name = person(rng)
        answered = rng.random() < 0.8
        duration = rng.randrange(5, 900)
        uid = uniqueid(calldate, sequence)
        stamp = calldate.strftime("%Y%m%d-%H%M%S")
        rows.append(
            {
                "calldate": calldate,
                "clid": f'"{name}" <{caller}>',
                "src": caller,
                "dst": callee,
                "dcontext": "from-trunk" if inbound else "from-internal",
                "channel": f"PJSIP/{'trunk' if inbound else extension}-{sequence:08x}",
                "dstchannel": f"PJSIP/{extension if inbound else 'trunk'}-{sequence + 1:08x}",
                "lastapp": "Dial",
                "lastdata": f"PJSIP/{callee},,HhTtrb(func-apply-sipheaders^s^1)",
                "duration": duration,
                "billsec": duration - 4 if answered else 0,
                "disposition": "ANSWERED" if answered else rng.choice(["NO ANSWER", "BUSY"]),
                "amaflags": 3,
                "accountcode": "",
                "uniqueid": uid,
                "userfield": "",
                "did": OFFICE_DID if inbound else "",
                "recordingfile": (
                    f"{'in' if inbound else 'out'}-{callee}-{caller}-{stamp}-{uid}.wav"
                    if answered
                    else ""
                ),
                "cnum": caller,
                "cnam": name,
                "outbound_cnum": "" if inbound else OFFICE_DID,
                "outbound_cnam": "",
                "dst_cnam": "",
                "linkedid": uid,
                "peeraccount": "",
                "sequence": sequence,
            }
        )
    return rows


def sqlite_cdr_rows(calldates: Iterable[datetime], seed: int = 0) -> list[dict[str, Any]]:
    """cdr_sqlite3_custom rows: every value a string, dates as 'YYYY-MM-DD HH:MM:SS'."""
    rows = []
    for row in cdr_rows(calldates, seed):
        values = {name: row[name] for name in SQLITE_CDR_COLUMNS}
        values["calldate"] = row["calldate"].strftime("%Y-%m-%d %H:%M:%S")
        rows.append({name: str(value) for name, value in values.items()})
    return rows


def cel_rows(eventtimes: Iterable[datetime], seed: int = 0) -> list[dict[str, Any]]:
    """One FreePBX cel event per time, in that order (the id follows the insert order)."""
    rng = random.Random(seed)
    events = ["CHAN_START", "ANSWER", "BRIDGE_ENTER", "BRIDGE_EXIT", "HANGUP", "CHAN_END"]
    rows = []
    for sequence, eventtime in enumerate(eventtimes, start=100):
        eventtype = events[sequence % len(events)]
        number = phone_number(rng)
        extension = str(rng.randrange(200, 260))
        uid = uniqueid(eventtime, sequence)
        extra = (
            json.dumps({"hangupcause": 16, "hangupsource": "", "dialstatus": "ANSWER"})
            if eventtype == "HANGUP"
            else ""
        )
        rows.append(
            {
                "eventtype": eventtype,
                "eventtime": eventtime,
                "cid_name": person(rng),
                "cid_num": number,
                "cid_ani": number,
                "cid_rdnis": "",
                "cid_dnid": OFFICE_DID,
                "exten": extension,
                "context": "from-trunk",
                "channame": f"PJSIP/trunk-{sequence:08x}",
                "appname": "MixMonitor" if eventtype == "ANSWER" else "",
                "appdata": f"in-{extension}-{number}-{uid}.wav" if eventtype == "ANSWER" else "",
                "amaflags": 3,
                "accountcode": "",
                "uniqueid": uid,
                "linkedid": uid,
                "peer": "",
                "userdeftype": "",
                "extra": extra,
            }
        )
    return rows


@dataclass
class PbxDatabase:
    """A test database with PBX tables: create them, fill them, count what is left."""

    url: str
    engine: Engine

    @classmethod
    def connect(cls, url: str) -> PbxDatabase:
        return cls(url, create_engine(url))

    @property
    def dialect(self) -> str:
        """'mariadb', 'postgresql' or 'sqlite' (MySQL URLs count as 'mariadb')."""
        name = self.engine.dialect.name
        return "mariadb" if name == "mysql" else name

    def cdr_rows(self, calldates: Iterable[datetime], seed: int = 0) -> list[dict[str, Any]]:
        """cdr rows as this database's PBX writes them: cdr_sqlite3_custom's strings on SQLite,
        FreePBX's elsewhere."""
        rows = sqlite_cdr_rows if self.dialect == "sqlite" else cdr_rows
        return rows(calldates, seed)

    def create(self, *tables: str) -> None:
        """Create PBX tables by name ('cdr', 'cel') in this database's dialect."""
        for table in tables:
            self.execute(*DDL[self.dialect][table])

    def execute(self, *statements: str, **params: Any) -> None:
        with self.engine.begin() as connection:
            for statement in statements:
                connection.execute(text(statement), params)

    def insert(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        columns = list(rows[0])
        statement = text(
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join(':' + column for column in columns)})"
        )
        with self.engine.begin() as connection:
            connection.execute(statement, [dict(row) for row in rows])

    def scalar(self, query: str, **params: Any) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(text(query), params).scalar()

    def count(self, table: str, where: str = "1 = 1", **params: Any) -> int:
        return int(self.scalar(f"SELECT COUNT(*) FROM {table} WHERE {where}", **params))

    def close(self) -> None:
        self.engine.dispose()
