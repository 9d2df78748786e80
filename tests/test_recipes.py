"""The config recipes in config/examples/, used the way an administrator uses them.

Each recipe is copied with only its paths, URLs and password file pointed at fixtures (and
`max_delete_fraction` raised where a fixture is mostly old, `max_undated_fraction` where its
spool holds a damaged message), then `check`, `plan --json`, `run --once --json` and
`audit verify` run as real processes against real MariaDB and PostgreSQL databases, voicemail
spools as Asterisk writes them and recording folders. The fixtures follow the PBXs' own schemas
(Gemeinschaft's asterisk.sql, Asterisk's alembic cdr table, the cdr_pgsql table of Asterisk's
documentation).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pbxdata import DDL, PbxDatabase, cdr_rows, cel_rows, person, phone_number
from privacy import leaked
from spool import PERSONAL_FRAGMENTS, Message, Spool, add_message, put, realistic_spool
from test_cli import retentiond

from retentiond.config.loader import parse_config
from retentiond.config.model import parse_keep
from retentiond.policy.rules import cutoff as rule_cutoff
from retentiond.stores.fs.ages import filename_age

RECIPES = Path(__file__).resolve().parent.parent / "config" / "examples"
# realistic_spool's msgNNNN.txt without origtime is 1 of the 7 messages a run leaves: more than
# the 1% a store tolerates undated by default (safety.max_undated_fraction); the recipes accept it.
ONE_DAMAGED_MESSAGE = "\n  max_undated_fraction: 0.2"
BERLIN = ZoneInfo("Europe/Berlin")
# Fixture times are this far ahead of the test's clock, so none sits within minutes of a cutoff
# the commands compute a few seconds later.
MARGIN = timedelta(minutes=7)
# The personal columns of pbxdata's call and event rows.
PERSONAL_CDR_KEYS = ("clid", "src", "dst", "uniqueid", "lastdata", "cnam", "linkedid")
PERSONAL_CEL_KEYS = ("cid_name", "cid_num", "appdata", "uniqueid")

# -- the recipes as shipped -----------------------------------------------------------------------


def recipe(name: str) -> str:
    return (RECIPES / name).read_text(encoding="utf-8")


def adapt(text: str, changes: dict[str, str]) -> str:
    """Replace every occurrence of each key; a key the recipe no longer has is a test bug."""
    for old, new in changes.items():
        assert old in text, f"{old!r} is no longer in the recipe"
        text = text.replace(old, new)
    return text


def uncomment(text: str, first: str) -> str:
    """Uncomment the commented block starting at the line `first`, up to the next blank line."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.rstrip("\n") == first)
    for index in range(start, len(lines)):
        line = lines[index]
        if not line.strip():
            break
        indent = len(line) - len(line.lstrip(" "))
        assert line[indent:].startswith("#"), line
        body = line[indent + 1 :]
        lines[index] = " " * indent + (body[1:] if body.startswith(" ") else body)
    return "".join(lines)


def test_every_recipe_loads_as_shipped() -> None:
    names = sorted(path.name for path in RECIPES.glob("*.yaml"))
    assert names == [
        "asterisk-odbc.yaml",
        "gemeinschaft.yaml",
        "generic-asterisk-postgresql.yaml",
        "pascom.yaml",
        "ucware.yaml",
    ]
    for name in names:
        config = parse_config((RECIPES / name).read_bytes(), name)
        assert config.rules
        assert config.audit.path == Path("/var/lib/retentiond/audit.jsonl")
        text = recipe(name)
        assert "retentiond -c /etc/retentiond/retentiond.yaml check" in text
        assert "[U]" in text  # every recipe says what is uncertain


@pytest.mark.parametrize(
    ("name", "rule", "connection", "fill"),
    [
        (
            "pascom.yaml",
            "  # - name: call-journal",
            "# connections:",
            {"SCHEMA": "public", "TABLE": "journal", "COLUMN": "started", "DATABASE": "pbx"},
        ),
        (
            "ucware.yaml",
            "  # - name: call-records",
            "# connections:",
            {"TABLE": "calls", "COLUMN": "calldate", "DATABASE": "ucware"},
        ),
    ],
)
def test_commented_templates_load_once_filled_in(
    name: str, rule: str, connection: str, fill: dict[str, str]
) -> None:
    text = uncomment(uncomment(recipe(name), rule), connection)
    config = parse_config(adapt(text, fill), name)
    (store,) = config.rule(rule.split()[-1]).stores
    assert store.type == "sql"
    assert store.table == fill["TABLE"] and store.time_column == fill["COLUMN"]
    assert set(config.connections) == {store.connection}


# -- running a recipe -----------------------------------------------------------------------------


@dataclass
class Session:
    """What an administrator saw: check's text, plan and run as JSON, every line of the log."""

    check: str
    plan: str  # plan --json
    run: str  # run --once --json
    audit: str  # the deletion log
    logged: list[str] = field(default_factory=list)  # stderr of every command

    @property
    def plans(self) -> list[dict[str, Any]]:
        plans: list[dict[str, Any]] = json.loads(self.plan)
        return plans

    @property
    def runs(self) -> list[dict[str, Any]]:
        runs: list[dict[str, Any]] = json.loads(self.run)["runs"]
        return runs

    @property
    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.splitlines()]

    def cutoff(self, rule: str) -> datetime:
        (run,) = [r for r in self.runs if r["rule"] == rule]
        return datetime.fromisoformat(run["cutoff"])

    def deleted(self) -> dict[tuple[str, str], int]:
        return {(r["rule"], s["store"]): s["deleted"] for r in self.runs for s in r["stores"]}

    def planned(self) -> dict[tuple[str, str], int]:
        return {(p["rule"], s["store"]): s["would_delete"] for p in self.plans for s in p["stores"]}


def install(tmp_path: Path, text: str) -> Path:
    audit = tmp_path / "state" / "audit.jsonl"
    audit.parent.mkdir()
    config = tmp_path / "retentiond.yaml"
    config.write_text(adapt(text, {"/var/lib/retentiond/audit.jsonl": str(audit)}))
    return config


def password_file(tmp_path: Path) -> str:
    """The recipe's password file, holding the test servers' empty password."""
    path = tmp_path / "db.password"
    path.write_text("\n")
    path.chmod(0o600)
    return str(path)


def check(config: Path) -> str:
    result = retentiond("-c", config, "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout
    return result.stdout


def administer(config: Path, *, checked: str | None = None) -> Session:
    """check (unless done already), plan --json, run --once --json, audit verify."""
    check_text = checked if checked is not None else check(config)
    plan = retentiond("-c", config, "plan", "--json")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    run = retentiond("-c", config, "run", "--once", "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    verify = retentiond("-c", config, "audit", "verify")
    assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout
    audit = (config.parent / "state" / "audit.jsonl").read_text()
    session = Session(
        check_text, plan.stdout, run.stdout, audit, [plan.stderr, run.stderr, verify.stderr]
    )
    plans = session.plans
    assert all(p["refusal"] is None for p in plans), [p["refusal"] for p in plans]
    for outcome in session.runs:
        assert outcome["status"] == "done", outcome
        assert all(s["remaining"] == 0 for s in outcome["stores"]), outcome
    assert session.deleted() == session.planned()
    finished = [e for e in session.log_lines if e["type"] == "run_finished"]
    assert sorted(e["rule"] for e in finished) == sorted(p["rule"] for p in plans)
    return session


def assert_no_personal_data(session: Session, personal: Iterable[str]) -> None:
    """No number, name, uniqueid or file name of the fixture in the log or any output."""
    values = {v for v in personal if v}
    assert len(values) > 15  # the check has something to find
    found = leaked(
        values,
        texts=[session.check],
        jsonl=[session.audit, *session.logged],
        documents=[session.plan, session.run],
    )
    assert not found, found[:5]


def spool_cutoff(keep: str) -> datetime:
    """A cutoff just after the one a run computes now: messages built around it expire as the
    spool module says (its `kept` message exactly at the cutoff stays young)."""
    moment = datetime.now(UTC) + 2 * MARGIN
    return rule_cutoff(moment, parse_keep(keep), BERLIN).replace(microsecond=0)


def assert_spool_enforced(spool: Spool, extra_expired: Iterable[Message] = ()) -> None:
    gone = [m.key for m in [*spool.expired, *extra_expired] if not m.gone()]
    assert not gone, gone
    assert all(m.exists() for m in spool.kept), [m.key for m in spool.kept if not m.exists()]
    assert all(path.exists() for path in spool.protected)  # greetings, tmp/, lock files


def origtime_and_caller(message: Message) -> tuple[int, str] | None:
    txt = message.folder / f"{message.stem}.txt"
    if not txt.exists():
        return None
    text = txt.read_text()
    origtime = re.search(r"^origtime=(\d+)$", text, re.M)
    callerid = re.search(r"^callerid=(.*)$", text, re.M)
    if origtime is None or callerid is None:
        return None
    return int(origtime.group(1)), callerid.group(1)


def recording(
    folder: Path, name: str, when: datetime, content: bytes = b"RIFF" + bytes(400)
) -> Path:
    return put(folder / name, content, when)


def steps(anchor: datetime, step: timedelta, count: int) -> list[datetime]:
    return [anchor - step * i for i in range(count)]


# -- LocaPhone / Gemeinschaft ---------------------------------------------------------------------

# Gemeinschaft 3.0's own DDL (usr/share/doc/gemeinschaft/asterisk.sql); `users` and `hosts` cut
# down to the columns the foreign keys of dial_log and vm_msgs need.
GEMEINSCHAFT_DDL = [
    """
    CREATE TABLE `hosts` (
      `id` mediumint(8) unsigned NOT NULL AUTO_INCREMENT,
      `host` varchar(15) CHARACTER SET ascii NOT NULL DEFAULT '',
      `comment` varchar(50) COLLATE utf8_unicode_ci NOT NULL DEFAULT '',
      PRIMARY KEY (`id`),
      UNIQUE KEY `host` (`host`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8 COLLATE=utf8_unicode_ci
    """,
    """
    CREATE TABLE `users` (
      `id` int(10) unsigned NOT NULL AUTO_INCREMENT,
      `user` varchar(20) CHARACTER SET ascii NOT NULL DEFAULT '',
      `firstname` varchar(50) COLLATE utf8_unicode_ci NOT NULL DEFAULT '',
      `lastname` varchar(50) COLLATE utf8_unicode_ci NOT NULL DEFAULT '',
      `host_id` mediumint(8) unsigned DEFAULT '1',
      PRIMARY KEY (`id`),
      UNIQUE KEY `user` (`user`),
      CONSTRAINT `users_ibfk_3` FOREIGN KEY (`host_id`) REFERENCES `hosts` (`id`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8 COLLATE=utf8_unicode_ci
    """,
    """
    CREATE TABLE `ast_cdr` (
      `_id` int(10) unsigned NOT NULL AUTO_INCREMENT,
      `calldate` datetime NOT NULL DEFAULT '0000-00-00 00:00:00',
      `uniqueid` varchar(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
      `clid` varchar(80) CHARACTER SET utf8 COLLATE utf8_unicode_ci NOT NULL DEFAULT '',
      `src` varchar(30) NOT NULL DEFAULT '',
      `dst` varchar(30) NOT NULL DEFAULT '',
      `dcontext` varchar(50) NOT NULL DEFAULT '',
      `channel` varchar(60) NOT NULL DEFAULT '',
      `dstchannel` varchar(60) NOT NULL DEFAULT '',
      `lastapp` varchar(30) NOT NULL DEFAULT '',
      `lastdata` varchar(80) NOT NULL DEFAULT '',
      `duration` mediumint(8) unsigned NOT NULL DEFAULT '0',
      `billsec` mediumint(8) unsigned NOT NULL DEFAULT '0',
      `disposition` varchar(15) NOT NULL DEFAULT '',
      `amaflags` tinyint(3) unsigned NOT NULL DEFAULT '0',
      `accountcode` varchar(25) NOT NULL DEFAULT '',
      `userfield` varchar(255) NOT NULL DEFAULT '',
      PRIMARY KEY (`_id`),
      KEY `calldate` (`calldate`),
      KEY `accountcode` (`accountcode`),
      KEY `src_disposition` (`src`(25),`disposition`(4)),
      KEY `dst_disposition` (`dst`(25),`disposition`(4)),
      KEY `uniqueid` (`uniqueid`(25))
    ) ENGINE=MyISAM DEFAULT CHARSET=ascii
    """,
    """
    CREATE TABLE `dial_log` (
      `user_id` int(10) unsigned NOT NULL DEFAULT '0',
      `type` enum('in','out','missed','queue') CHARACTER SET ascii NOT NULL DEFAULT 'out',
      `timestamp` int(10) unsigned NOT NULL DEFAULT '0',
      `number` varchar(50) CHARACTER SET ascii NOT NULL DEFAULT '',
      `remote_name` varchar(50) COLLATE utf8_unicode_ci NOT NULL DEFAULT '',
      `remote_user_id` int(10) unsigned DEFAULT NULL,
      KEY `timestamp` (`timestamp`),
      KEY `user_timestamp` (`user_id`,`timestamp`),
      KEY `user_type_number_timestamp` (`user_id`,`type`,`number`(10),`timestamp`),
      KEY `user_type_timestamp` (`user_id`,`type`,`timestamp`),
      KEY `remote_user_id` (`remote_user_id`),
      CONSTRAINT `dial_log_ibfk_1` FOREIGN KEY (`user_id`) REFERENCES `users` (`id`),
      CONSTRAINT `dial_log_ibfk_2` FOREIGN KEY (`remote_user_id`) REFERENCES `users` (`id`)
        ON DELETE SET NULL ON UPDATE SET NULL
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8 COLLATE=utf8_unicode_ci
    """,
    """
    CREATE TABLE `queue_log` (
      `queue_id` int(10) unsigned DEFAULT NULL,
      `timestamp` int(10) unsigned NOT NULL DEFAULT '0',
      `event` varchar(15) CHARACTER SET ascii NOT NULL DEFAULT '',
      `reason` varchar(10) CHARACTER SET ascii DEFAULT NULL,
      `ast_call_id` varchar(32) CHARACTER SET ascii COLLATE ascii_bin DEFAULT NULL,
      `user_id` int(10) unsigned DEFAULT NULL,
      `caller` varchar(50) COLLATE utf8_unicode_ci DEFAULT NULL,
      `pos` mediumint(8) unsigned DEFAULT NULL,
      `origpos` mediumint(8) unsigned DEFAULT NULL,
      `waittime` mediumint(8) unsigned DEFAULT NULL,
      `logindur` int(10) unsigned DEFAULT NULL,
      `calldur` mediumint(8) unsigned DEFAULT NULL,
      `info` varchar(50) CHARACTER SET ascii DEFAULT NULL,
      KEY `queue_timestamp` (`queue_id`,`timestamp`),
      KEY `queue_event_timestamp` (`queue_id`,`event`,`timestamp`),
      KEY `queue_event_reason_timestamp` (`queue_id`,`event`,`reason`,`timestamp`),
      KEY `timestamp` (`timestamp`),
      KEY `ast_call_id` (`ast_call_id`(25)),
      KEY `user_id` (`user_id`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8 COLLATE=utf8_unicode_ci
    """,
    """
    CREATE TABLE `vm_msgs` (
      `id` int(10) unsigned NOT NULL AUTO_INCREMENT,
      `host_id` mediumint(8) unsigned NOT NULL,
      `mbox` varchar(8) CHARACTER SET ascii NOT NULL,
      `user_id` int(10) unsigned DEFAULT NULL,
      `orig_mbox` varchar(8) CHARACTER SET ascii NOT NULL,
      `folder` varchar(10) CHARACTER SET ascii NOT NULL,
      `file` varchar(10) CHARACTER SET ascii NOT NULL,
      `orig_time` int(10) unsigned NOT NULL,
      `dur` smallint(5) unsigned NOT NULL,
      `callerchan` varchar(40) CHARACTER SET ascii NOT NULL,
      `cidnum` varchar(25) CHARACTER SET ascii NOT NULL,
      `cidname` varchar(30) COLLATE utf8_unicode_ci NOT NULL,
      `listened_to` tinyint(1) unsigned NOT NULL DEFAULT '0',
      PRIMARY KEY (`id`),
      KEY `mbox_folder_origtime` (`mbox`,`folder`,`orig_time`),
      KEY `origtime_callerchan` (`orig_time`,`callerchan`(20)),
      KEY `hostid` (`host_id`),
      KEY `userid_folder_origtime` (`user_id`,`folder`,`orig_time`),
      KEY `mbox_origtime_callerchan` (`mbox`,`orig_time`,`callerchan`(20)),
      CONSTRAINT `vm_msgs_ibfk_1` FOREIGN KEY (`host_id`) REFERENCES `hosts` (`id`),
      CONSTRAINT `vm_msgs_ibfk_2` FOREIGN KEY (`user_id`) REFERENCES `users` (`id`)
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8 COLLATE=utf8_unicode_ci
    """,
]
GEMEINSCHAFT_USERS = {
    1: ("201", "Anna", "Becker"),
    2: ("202", "Jonas", "Wagner"),
    3: ("2001", "Lea", "Fischer"),
}


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def gemeinschaft_calls(anchor: datetime) -> list[dict[str, Any]]:
    """ast_cdr rows as cdr_mysql writes them: local wall-clock calldate, every 12 hours."""
    local = anchor.astimezone(BERLIN).replace(tzinfo=None)
    rows = cdr_rows(steps(local, timedelta(hours=12), 240), seed=11)
    columns = [
        "calldate",
        "uniqueid",
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
        "userfield",
    ]
    return [{c: row[c] for c in columns} for row in rows]


def dial_log_rows(anchor: datetime) -> list[dict[str, Any]]:
    """Per-user call lists: epoch seconds, every 5 hours over a month."""
    rng = random.Random(12)
    rows = []
    for i, moment in enumerate(steps(anchor, timedelta(hours=5), 150)):
        internal = i % 4 == 0
        rows.append(
            {
                "user_id": 1 + i % 3,
                "type": ("in", "out", "missed", "queue")[i % 4],
                "timestamp": epoch(moment),
                "number": GEMEINSCHAFT_USERS[1 + (i + 1) % 3][0] if internal else phone_number(rng),
                "remote_name": person(rng),
                "remote_user_id": 1 + (i + 1) % 3 if internal else None,
            }
        )
    return rows


def queue_log_rows(anchor: datetime) -> list[dict[str, Any]]:
    """gs-queuelog-to-db's rows: epoch seconds, the caller's number, every 12 hours."""
    rng = random.Random(13)
    events = ("ENTERQUEUE", "CONNECT", "COMPLETECALLER", "ABANDON")
    return [
        {
            "queue_id": 7,
            "timestamp": epoch(moment),
            "event": events[i % 4],
            "reason": None,
            "ast_call_id": f"{epoch(moment)}.{300 + i}",
            "user_id": 1 + i % 3 if events[i % 4] == "CONNECT" else None,
            "caller": phone_number(rng),
            "pos": 1,
            "origpos": 1,
            "waittime": 12,
            "logindur": None,
            "calldur": 95,
            "info": None,
        }
        for i, moment in enumerate(steps(anchor, timedelta(hours=12), 240))
    ]


def vm_msgs_rows(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """vm-postexec's index of the spool: one row per message with an origtime."""
    rows = []
    for message in messages:
        found = origtime_and_caller(message)
        if found is None:
            continue
        origtime, callerid = found
        match = re.match(r'"(.*)" <(.*)>', callerid)
        assert match is not None
        mailbox = message.folder.parent.name
        rows.append(
            {
                "host_id": 1,
                "mbox": mailbox,
                "user_id": 3 if mailbox == "2001" else None,
                "orig_mbox": mailbox,
                "folder": message.folder.name,
                "file": message.stem,
                "orig_time": origtime,
                "dur": 12,
                "callerchan": f"SIP/gw-{origtime % 65536:08x}",
                "cidnum": match.group(2),
                "cidname": match.group(1),
                "listened_to": 0,
            }
        )
    return rows


def test_gemeinschaft_recording_names_carry_no_date_filename_date_reads() -> None:
    # Why the recipe ages recordings by mtime: rec_<yymmddHHMMSS>_<from>-<to>.wav
    assert filename_age(b"rec_240115143022_201-+4930123456.wav", BERLIN) is None


@pytest.mark.server_clock  # runs retentiond against the server
@pytest.mark.mariadb
def test_gemeinschaft_recipe(
    mariadb_url: str, pbx_database: Callable[[str], PbxDatabase], tmp_path: Path
) -> None:
    database = pbx_database(mariadb_url)
    database.execute(*GEMEINSCHAFT_DDL)
    database.execute("INSERT INTO hosts (id, host, comment) VALUES (1, '127.0.0.1', 'PBX')")
    for user_id, (user, first, last) in GEMEINSCHAFT_USERS.items():
        database.execute(
            "INSERT INTO users (id, user, firstname, lastname) VALUES (:i, :u, :f, :l)",
            i=user_id,
            u=user,
            f=first,
            l=last,
        )
    anchor = datetime.now(UTC).replace(microsecond=0) + MARGIN
    calls, dials, queue = gemeinschaft_calls(anchor), dial_log_rows(anchor), queue_log_rows(anchor)
    database.insert("ast_cdr", calls)
    database.insert("dial_log", dials)
    database.insert("queue_log", queue)

    # The spool, with messages in Gemeinschaft's format=alaw besides the standard ones.
    spool_root = tmp_path / "spool" / "voicemail"
    spool = realistic_spool(spool_root, spool_cutoff("60d"))
    old, young = anchor - timedelta(days=75), anchor - timedelta(days=3)
    alaw_old = add_message(spool_root, "2002", "INBOX", 0, origtime=old, formats=("alaw",))
    alaw_young = add_message(spool_root, "2002", "INBOX", 1, origtime=young, formats=("alaw",))
    messages = [*spool.expired, *spool.kept, alaw_old, alaw_young]
    vm_rows = vm_msgs_rows(messages)
    database.insert("vm_msgs", vm_rows)

    # Recordings as in-get-where.agi names them, in the monitor folder itself.
    monitor = tmp_path / "spool" / "monitor"
    monitor.mkdir()
    recordings: dict[Path, datetime] = {}
    rng = random.Random(14)
    for i, moment in enumerate(steps(anchor, timedelta(days=3, hours=5), 16)):
        local = moment.astimezone(BERLIN)
        name = (
            f"rec_{local:%y%m%d%H%M%S}_{GEMEINSCHAFT_USERS[1 + i % 2][0]}-{phone_number(rng)}.wav"
        )
        recordings[recording(monitor, name, moment)] = moment

    config = install(tmp_path, recipe("gemeinschaft.yaml"))
    text = adapt(
        config.read_text(),
        {
            "mariadb+pymysql://retentiond@localhost/asterisk?charset=utf8mb4": mariadb_url
            + "?charset=utf8mb4",
            "/etc/retentiond/asterisk.password": password_file(tmp_path),
            "/var/spool/asterisk/voicemail": str(spool_root),
            "/var/spool/asterisk/monitor": str(monitor),
            "max_delete_fraction: 0.5": "max_delete_fraction: 0.95" + ONE_DAMAGED_MESSAGE,
        },
    )
    config.write_text(text)

    checked = check(config)
    # What the recipe's comments promise `check` will show.
    assert "sql cdrdb/ast_cdr: ok" in checked and "row key _id" in checked
    assert "time column timestamp (epoch seconds)" in checked  # dial_log and queue_log
    assert "time column orig_time (epoch seconds)" in checked
    assert "asterisk_voicemail" in checked and "files " in checked
    session = administer(config, checked=checked)
    deleted = session.deleted()
    assert all(deleted[key] > 0 for key in deleted), deleted

    assert (
        database.scalar(
            "SELECT engine FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = 'ast_cdr'"
        )
        == "MyISAM"
    )
    records_cutoff = session.cutoff("call-records")
    wall = records_cutoff.astimezone(BERLIN).replace(tzinfo=None)
    assert database.count("ast_cdr", "calldate < :c", c=wall) == 0
    assert database.count("ast_cdr") == sum(1 for row in calls if row["calldate"] >= wall)
    bound = epoch(records_cutoff)
    assert database.count("queue_log", "timestamp < :c", c=bound) == 0
    assert database.count("queue_log") == sum(1 for row in queue if row["timestamp"] >= bound)
    lists_bound = epoch(session.cutoff("call-lists"))
    assert database.count("dial_log", "timestamp < :c", c=lists_bound) == 0
    assert database.count("dial_log") == sum(1 for r in dials if r["timestamp"] >= lists_bound)
    assert database.count("users") == len(GEMEINSCHAFT_USERS)

    vm_bound = epoch(session.cutoff("voicemail"))
    assert database.count("vm_msgs", "orig_time < :c", c=vm_bound) == 0
    assert database.count("vm_msgs") == sum(1 for r in vm_rows if r["orig_time"] >= vm_bound) > 0
    assert_spool_enforced(spool, [alaw_old])
    assert alaw_young.exists()

    recordings_cutoff = session.cutoff("call-recordings")
    for path, moment in recordings.items():
        assert path.exists() == (moment >= recordings_cutoff), (moment, recordings_cutoff)

    personal = {str(v) for row in calls for k, v in row.items() if k in PERSONAL_CDR_KEYS}
    personal |= {str(row[k]) for row in dials for k in ("number", "remote_name")}
    personal |= {str(row[k]) for row in queue for k in ("caller", "ast_call_id")}
    personal |= {str(row[k]) for row in vm_rows for k in ("cidnum", "cidname", "callerchan")}
    personal |= {p.name for p in recordings} | {u for u, _, _ in GEMEINSCHAFT_USERS.values()}
    personal |= {f"{first} {last}" for _, first, last in GEMEINSCHAFT_USERS.values()}
    assert_no_personal_data(session, personal | set(PERSONAL_FRAGMENTS) | {"2002"})


# -- pascom ---------------------------------------------------------------------------------------


def journal(caller: str, name: str, callee: str) -> bytes:
    """A stand-in journal: pascom's format is not documented; it names the parties."""
    return json.dumps(
        {"caller": caller, "callerName": name, "callee": callee, "direction": "in"}
    ).encode()


def test_pascom_recipe(tmp_path: Path) -> None:
    spool_root = tmp_path / "spool" / "voicemail"
    spool = realistic_spool(spool_root, spool_cutoff("30d"))
    monitor = tmp_path / "spool" / "monitor"
    now = datetime.now(UTC).replace(microsecond=0) + MARGIN
    rng = random.Random(21)
    expired: list[Path] = []
    kept: list[Path] = []
    personal: set[str] = set()

    def call(folder: Path, when: datetime, journal_when: datetime | None = None) -> list[Path]:
        caller, name = phone_number(rng), person(rng)
        personal.update({caller, name})
        stem = f"{when:%Y%m%d-%H%M%S}-{caller}"
        personal.add(stem)
        wav = recording(folder, f"{stem}.wav", when)
        note = put(folder / f"{stem}.json", journal(caller, name, "201"), journal_when or when)
        return [wav, note]

    for days in (95, 61, 44, 33):  # both files old: deleted together
        expired += call(monitor / "2024", now - timedelta(days=days))
    for days in (20, 5, 1):  # young
        kept += call(monitor / "2024", now - timedelta(days=days))
    # An old recording whose journal was written recently is as young as its journal.
    kept += call(monitor, now - timedelta(days=50), journal_when=now - timedelta(days=2))
    # A journal whose recording is gone already: matched, deleted on its own.
    expired.append(
        put(
            monitor / "orphan-journal.json",
            journal("+4930555123", "X Y", "202"),
            now - timedelta(days=70),
        )
    )
    personal.add("+4930555123")
    # Not a recording nor a journal: never matched.
    kept.append(put(monitor / "README.txt", b"pascom monitor", now - timedelta(days=400)))

    config = install(tmp_path, recipe("pascom.yaml"))
    config.write_text(
        adapt(
            config.read_text(),
            {
                "/var/spool/asterisk/voicemail": str(spool_root),
                "/var/spool/asterisk/monitor": str(monitor),
                "max_delete_fraction: 0.5": "max_delete_fraction: 0.9" + ONE_DAMAGED_MESSAGE,
            },
        )
    )
    session = administer(config)
    assert "group_siblings" in session.check

    assert_spool_enforced(spool)
    assert [p.name for p in expired if p.exists()] == []
    assert [p.name for p in kept if not p.exists()] == []
    # Every recording went with its journal: no .json is left without its .wav, or vice versa.
    stems = {}
    for path in monitor.rglob("*"):
        if path.suffix in (".wav", ".json"):
            stems.setdefault((path.parent, path.stem), set()).add(path.suffix)
    assert all(suffixes == {".wav", ".json"} for suffixes in stems.values()), stems
    (plan,) = [p for p in session.plans if p["rule"] == "call-recordings"]
    assert plan["stores"][0]["would_delete"] == len(expired) == 9
    assert_no_personal_data(session, personal | set(PERSONAL_FRAGMENTS))


# -- Asterisk with cdr_adaptive_odbc (alembic schema) ---------------------------------------------

# contrib/ast-db-manage/cdr: 210693f3123d (create) and 54cde9847798 (accountcode, peeraccount 80),
# as alembic creates it on MySQL: every column nullable, no primary key, no index.
ALEMBIC_CDR = """
    CREATE TABLE cdr (
      accountcode VARCHAR(80),
      src VARCHAR(80),
      dst VARCHAR(80),
      dcontext VARCHAR(80),
      clid VARCHAR(80),
      channel VARCHAR(80),
      dstchannel VARCHAR(80),
      lastapp VARCHAR(80),
      lastdata VARCHAR(80),
      `start` DATETIME,
      answer DATETIME,
      `end` DATETIME,
      duration INTEGER,
      billsec INTEGER,
      disposition VARCHAR(45),
      amaflags VARCHAR(45),
      userfield VARCHAR(256),
      uniqueid VARCHAR(150),
      linkedid VARCHAR(150),
      peeraccount VARCHAR(80),
      sequence INTEGER
    )
"""


def alembic_rows(anchor_local: datetime) -> list[dict[str, Any]]:
    rows = []
    for row in cdr_rows(steps(anchor_local, timedelta(hours=12), 240), seed=31):
        start = row["calldate"]
        rows.append(
            {
                "accountcode": "",
                **{k: row[k] for k in ("src", "dst", "dcontext", "clid", "channel")},
                **{k: row[k] for k in ("dstchannel", "lastapp", "lastdata", "duration")},
                "start": start,
                "answer": start + timedelta(seconds=4) if row["billsec"] else None,
                "end": start + timedelta(seconds=row["duration"]),
                "billsec": row["billsec"],
                "disposition": row["disposition"],
                "amaflags": "DOCUMENTATION",
                "userfield": "",
                "uniqueid": row["uniqueid"],
                "linkedid": row["linkedid"],
                "peeraccount": "",
                "sequence": row["sequence"],
            }
        )
    return rows


def csv_line(row: dict[str, Any]) -> bytes:
    """cdr_csv's build_csv_record: strings quoted, integers bare, dates '%Y-%m-%d %H:%M:%S'."""

    def quoted(value: Any) -> str:
        if isinstance(value, datetime):
            value = value.strftime("%Y-%m-%d %H:%M:%S")
        return '"' + ("" if value is None else str(value)).replace('"', '""') + '"'

    fields = [quoted(row[k]) for k in ["accountcode", "src", "dst", "dcontext", "clid", "channel"]]
    fields += [
        quoted(row[k]) for k in ["dstchannel", "lastapp", "lastdata", "start", "answer", "end"]
    ]
    fields += [str(row["duration"]), str(row["billsec"]), quoted(row["disposition"])]
    fields += [quoted(row["amaflags"]), quoted(row["uniqueid"]), quoted(row["userfield"])]
    return (",".join(fields) + "\n").encode()


@pytest.mark.server_clock  # runs retentiond against the server
@pytest.mark.mariadb
def test_asterisk_odbc_recipe(
    mariadb_url: str, pbx_database: Callable[[str], PbxDatabase], tmp_path: Path
) -> None:
    database = pbx_database(mariadb_url)
    database.execute(ALEMBIC_CDR)
    anchor = datetime.now(UTC).replace(microsecond=0) + MARGIN
    local = anchor.astimezone(BERLIN).replace(tzinfo=None)
    calls = sorted(alembic_rows(local), key=lambda row: row["start"])
    for row in calls[::3]:
        row["accountcode"] = "kanzlei"
    database.insert("cdr", calls)
    cdr_csv = tmp_path / "log" / "cdr-csv"
    spool_root = tmp_path / "spool" / "voicemail"
    spool = realistic_spool(spool_root, spool_cutoff("60d"))

    config = install(tmp_path, recipe("asterisk-odbc.yaml"))
    config.write_text(
        adapt(
            config.read_text(),
            {
                "mariadb+pymysql://retentiond@localhost/asterisk?charset=utf8mb4": mariadb_url
                + "?charset=utf8mb4",
                "/etc/retentiond/asterisk.password": password_file(tmp_path),
                "/var/log/asterisk/cdr-csv": str(cdr_csv),
                "/var/spool/asterisk/voicemail": str(spool_root),
                "max_delete_fraction: 0.5": "max_delete_fraction: 0.9" + ONE_DAMAGED_MESSAGE,
            },
        )
    )
    # CEL off and no cdr_csv: the optional stores are reported, the rest is usable.
    without = check(config)
    assert "sql asterisk/cel: not found (optional)" in without and "tables there: cdr" in without
    assert f"csv {cdr_csv}: not found (optional)" in without

    database.execute(*DDL["mariadb"]["cel"])
    events = cel_rows(steps(local, timedelta(hours=4), 720), seed=32)
    database.insert("cel", events)
    # Master.csv and one per-account file, lines in the order Asterisk appended them.
    cdr_csv.mkdir(parents=True)
    (cdr_csv / "Master.csv").write_bytes(b"".join(map(csv_line, calls)))
    accounts = [row for row in calls if row["accountcode"]]
    (cdr_csv / "kanzlei.csv").write_bytes(b"".join(map(csv_line, accounts)))

    checked = check(config)
    # As the recipe says: no index on start, and check says which statement fixes it.
    assert "strategy scan" in checked
    assert "warning: no index on start" in checked and "CREATE INDEX" in checked
    assert "strategy key_walk" in checked  # cel: id, no index on eventtime
    assert "not found (optional)" not in checked
    session = administer(config, checked=checked)
    assert all(count > 0 for count in session.deleted().values()), session.deleted()
    assert all(s["absent"] is None for p in session.plans for s in p["stores"])

    wall = session.cutoff("call-records").astimezone(BERLIN).replace(tzinfo=None)
    assert database.count("cdr", "start < :c", c=wall) == 0
    assert database.count("cdr") == sum(1 for row in calls if row["start"] >= wall)
    assert database.count("cel", "eventtime < :c", c=wall) == 0
    assert database.count("cel") == sum(1 for row in events if row["eventtime"] >= wall)
    # Each CSV file holds exactly its young lines, byte for byte, in their order.
    for name, rows in (("Master.csv", calls), ("kanzlei.csv", accounts)):
        young = b"".join(csv_line(row) for row in rows if row["start"] >= wall)
        assert (cdr_csv / name).read_bytes() == young, name
    assert_spool_enforced(spool)

    personal = {str(v) for row in calls for k, v in row.items() if k in PERSONAL_CDR_KEYS}
    personal |= {str(v) for row in events for k, v in row.items() if k in PERSONAL_CEL_KEYS}
    assert_no_personal_data(session, personal | set(PERSONAL_FRAGMENTS) | {"kanzlei"})


# -- UC-Ware (template) ---------------------------------------------------------------------------


def test_ucware_template_runs_its_spool_and_monitor_stores(tmp_path: Path) -> None:
    spool_root = tmp_path / "spool" / "voicemail"
    spool = realistic_spool(spool_root, spool_cutoff("60d"))
    monitor = tmp_path / "spool" / "monitor"
    now = datetime.now(UTC).replace(microsecond=0) + MARGIN
    rng = random.Random(41)
    expected: dict[Path, bool] = {}
    personal: set[str] = set()
    for i, days in enumerate((90, 45, 31, 29, 10, 0)):
        when = now - timedelta(days=days)
        number = phone_number(rng)
        personal |= {number, f"{i}-{number}"}
        folder = monitor / f"{when:%Y}" / f"{when:%m}"
        # a recording and the .mp3 made of it a little later
        wav = recording(folder, f"{i}-{number}.wav", when)
        mp3 = recording(folder, f"{i}-{number}.mp3", when + timedelta(minutes=2))
        expected[wav] = expected[mp3] = days > 30  # kept: the pair is as young as its .mp3
    config = install(tmp_path, recipe("ucware.yaml"))
    config.write_text(
        adapt(
            config.read_text(),
            {
                "/var/spool/asterisk/voicemail": str(spool_root),
                "/var/spool/asterisk/monitor": str(monitor),
                "max_delete_fraction: 0.5": "max_delete_fraction: 0.9" + ONE_DAMAGED_MESSAGE,
            },
        )
    )
    session = administer(config)
    assert "group_siblings" in session.check
    assert_spool_enforced(spool)
    for path, old in expected.items():
        assert path.exists() != old, path.name
    assert_no_personal_data(session, personal | set(PERSONAL_FRAGMENTS))


# -- Asterisk with cdr_pgsql ----------------------------------------------------------------------

# The table of Asterisk's "PostgreSQL CDR Backend" page, calldate with time zone, plus the 1.8+
# columns: no primary key, no index.
PGSQL_CDR = """
    CREATE TABLE cdr (
      calldate timestamp with time zone NOT NULL,
      clid varchar (80) NOT NULL,
      src varchar (80) NOT NULL,
      dst varchar (80) NOT NULL,
      dcontext varchar (80) NOT NULL,
      channel varchar (80) NOT NULL,
      dstchannel varchar (80) NOT NULL,
      lastapp varchar (80) NOT NULL,
      lastdata varchar (80) NOT NULL,
      duration int NOT NULL,
      billsec int NOT NULL,
      disposition varchar (45) NOT NULL,
      amaflags int NOT NULL,
      accountcode varchar (20) NOT NULL,
      uniqueid varchar (150) NOT NULL,
      userfield varchar (255) NOT NULL,
      peeraccount varchar(20) NOT NULL,
      linkedid varchar(150) NOT NULL,
      sequence int NOT NULL
    )
"""
PGSQL_COLUMNS = [
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
    "peeraccount",
    "linkedid",
    "sequence",
]


@pytest.mark.server_clock  # runs retentiond against the server
@pytest.mark.postgres
def test_generic_asterisk_postgresql_recipe(
    postgres_url: str, pbx_database: Callable[[str], PbxDatabase], tmp_path: Path
) -> None:
    database = pbx_database(postgres_url)
    database.execute(PGSQL_CDR)
    anchor = datetime.now(UTC).replace(microsecond=0) + MARGIN
    calls = [
        {c: row[c] for c in PGSQL_COLUMNS}
        for row in cdr_rows(steps(anchor, timedelta(hours=12), 240), seed=51)
    ]
    database.insert("cdr", calls)
    spool_root = tmp_path / "spool" / "voicemail"
    spool = realistic_spool(spool_root, spool_cutoff("60d"))

    config = install(tmp_path, recipe("generic-asterisk-postgresql.yaml"))
    config.write_text(
        adapt(
            config.read_text(),
            {
                "postgresql+psycopg://retentiond@localhost/asterisk": postgres_url,
                "/etc/retentiond/asterisk.password": password_file(tmp_path),
                "/var/spool/asterisk/voicemail": str(spool_root),
                "max_delete_fraction: 0.5": "max_delete_fraction: 0.9" + ONE_DAMAGED_MESSAGE,
            },
        )
    )
    # As the recipe says: check warns about the missing index and prints the statement that
    # fixes it; the administrator runs it, and check then shows batches along the index.
    first = check(config)
    assert "time column calldate (timestamp with time zone)" in first
    assert "strategy scan" in first and "warning: no index on calldate" in first
    statement = re.search(r"CREATE INDEX \S+ ON \S+ \(\S+\)", first)
    assert statement is not None, first
    database.execute(statement.group(0))
    second = check(config)
    assert "strategy time_index" in second and "warning: no index" not in second
    session = administer(config, checked=second)

    records_cutoff = session.cutoff("call-records")
    assert database.count("cdr", "calldate < :c", c=records_cutoff) == 0
    assert database.count("cdr") == sum(1 for row in calls if row["calldate"] >= records_cutoff)
    assert_spool_enforced(spool)
    personal = {str(v) for row in calls for k, v in row.items() if k in PERSONAL_CDR_KEYS}
    assert_no_personal_data(session, personal | set(PERSONAL_FRAGMENTS))
