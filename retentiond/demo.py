"""A small, realistic demo PBX: an Asterisk cdr_sqlite3_custom CDR database with a year of calls
and a FreePBX-style recordings tree, plus a config that enforces retention on both.

Everything is made up (seeded), lives in one folder, and needs nothing but Python.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from retentiond.config.loader import LoadedConfig
from retentiond.errors import RetentiondError
from retentiond.evidence import log as audit

MARKER = ".retentiond-demo"
ZONE = ZoneInfo("Europe/Berlin")
EXTENSIONS = ["1001", "1002", "1003", "1004", "1005", "2001", "2002"]
NAMES = ["Erika Mustermann", "Max Mustermann", "Jonas Schmidt", "Lena Fischer", "Ali Yilmaz"]
DISPOSITIONS = ["ANSWERED"] * 7 + ["NO ANSWER", "BUSY", "FAILED"]
# WAV header of an empty 8 kHz mono recording: enough to look like a recording to tools
WAV_HEADER = bytes.fromhex(
    "52494646240000005741564566d7420100000001000100401f0000803e0000020010006461746100000000"
)

CDR_TABLE = """
CREATE TABLE cdr (
    AcctId INTEGER PRIMARY KEY,
    calldate, clid, src, dst, dcontext, channel, dstchannel, lastapp, lastdata,
    duration, billsec, disposition, amaflags, accountcode, uniqueid, userfield, recordingfile
)"""

CONFIG = """\
# retentiond demo config: written by `retentiond demo`. Compare it with config/example.yaml.
version: 1
timezone: Europe/Berlin          # Asterisk writes calldate as local wall-clock time
audit:
  path: {audit}
connections:
  cdrdb:
    url: sqlite:///{database}
rules:
  - name: call-records
    description: Call detail records (numbers, names, times, durations)
    purpose: Troubleshooting and cost control
    legal_basis: Art. 6(1)(f) GDPR
    keep: 3 months
    schedule: daily 03:15
    stores:
      - type: sql
        connection: cdrdb
        table: cdr
        time_column: calldate
        batch_size: 500
        subject_columns: [src, dst]      # holds by number, `find` and `erase` match these
  - name: voicemail
    description: Voicemail messages (voice, caller numbers and names)
    purpose: Delivering messages to the called person
    legal_basis: Art. 6(1)(f) GDPR
    keep: 60d
    schedule: daily 03:20
    stores:
      - type: asterisk_voicemail
        root: {voicemail}
  - name: call-recordings
    description: Recorded calls (voice, numbers in the file names)
    purpose: Quality assurance, with the caller's consent
    legal_basis: Art. 6(1)(a) GDPR
    keep: 30d
    schedule: daily 03:30
    stores:
      - type: files
        root: {monitor}
        match: ["**/*.wav", "**/*.WAV", "**/*.mp3"]
        age_from: path_date
        subject_in_name: true            # FreePBX names carry the numbers: in-<dst>-<src>-...
safety:
  # The first run on a year of data removes most of it; a regular run removes a few percent.
  max_delete_fraction: 0.95
"""


HOLD = """\
# A legal hold, as the DPO adds one: a file in holds.d/ beside the config.
id: DEMO-HOLD-1
reason: "Litigation (demo): the calls of two weeks are evidence"
approved_by: DPO
review_by: {review_by}
rules: [call-records, call-recordings]
from: {start}
to: {end}
"""


def build(
    directory: Path,
    *,
    now: datetime | None = None,
    days: int = 365,
    seed: int = 7,
    hold: bool = False,
) -> Path:
    """Create the demo PBX in `directory` and return the path of its config file.

    With `hold`, a legal hold over two weeks of five months ago is put into `holds.d/`: their
    calls and recordings are expired but kept, and counted as held.
    """
    directory = directory.resolve()
    _prepare(directory)
    pbx = directory / "pbx"
    database = pbx / "master.db"
    monitor = pbx / "monitor"
    monitor.mkdir(parents=True)
    rng = random.Random(seed)
    end = (now or datetime.now(UTC)).astimezone(ZONE).replace(tzinfo=None)
    with sqlite3.connect(database) as db:
        db.execute(CDR_TABLE)
        db.execute("CREATE INDEX cdr_uniqueid ON cdr (uniqueid)")
        rows = list(_calls(rng, end, days))
        db.executemany(
            "INSERT INTO cdr (calldate, clid, src, dst, dcontext, channel, dstchannel, lastapp, "
            "lastdata, duration, billsec, disposition, amaflags, accountcode, uniqueid, userfield, "
            "recordingfile) VALUES (" + ",".join("?" * 17) + ")",
            rows,
        )
    db.close()
    for row in rows:
        recording = str(row[16])
        if recording:
            day = str(row[0])[:10].replace("-", "/")
            folder = monitor / day
            folder.mkdir(parents=True, exist_ok=True)
            (folder / recording).write_bytes(WAV_HEADER + rng.randbytes(rng.randint(200, 4000)))
    messages = _voicemail(pbx / "voicemail", rows, end)
    config_file = directory / "retentiond.yaml"
    if hold:
        holds = directory / "holds.d"
        holds.mkdir()
        start = (end - timedelta(days=150)).date()
        (holds / "demo-hold-1.yaml").write_text(
            HOLD.format(
                review_by=(end + timedelta(days=60)).date(),
                start=start,
                end=start + timedelta(days=13),
            )
        )
    config_file.write_text(
        CONFIG.format(
            audit=directory / "audit.jsonl",
            database=database,
            monitor=monitor,
            voicemail=pbx / "voicemail",
        )
    )
    print(
        f"demo PBX built in {directory}: {len(rows)} calls over {days} days, "
        f"{sum(1 for r in rows if r[16])} recordings, {messages} voicemail messages"
    )
    return config_file


def _voicemail(spool: Path, rows: list[tuple[object, ...]], end: datetime) -> int:
    """An Asterisk spool: a message for every unanswered inbound call, greetings per mailbox."""
    numbers: dict[Path, int] = {}
    for row in rows:
        calldate, clid, _, mailbox, disposition = row[0], row[1], row[2], row[3], row[11]
        if disposition == "ANSWERED" or mailbox not in EXTENSIONS:
            continue
        start = datetime.strptime(str(calldate), "%Y-%m-%d %H:%M:%S")
        folder = (
            spool / "default" / str(mailbox) / ("Old" if end - start > timedelta(7) else "INBOX")
        )
        folder.mkdir(parents=True, exist_ok=True)
        number = numbers.get(folder, 0)
        numbers[folder] = number + 1
        origtime = int(start.replace(tzinfo=ZONE).timestamp())
        stem = folder / f"msg{number:04d}"
        stem.with_suffix(".txt").write_text(
            ";\n; Message Information file\n;\n[message]\n"
            f"origmailbox={mailbox}\ncontext=macro-vm\nexten=s-NOANSWER\nrdnis=unknown\n"
            f"priority=2\ncallerchan=PJSIP/trunk-{origtime:08x}\ncallerid={clid}\n"
            f"origdate={start:%a %b %d %I:%M:%S %p} UTC {start:%Y}\norigtime={origtime}\n"
            f"category=\nmsg_id={origtime}-{number:08x}\nflag=\nduration=12\n"
        )
        for extension in ("wav", "WAV"):
            stem.with_suffix(f".{extension}").write_bytes(WAV_HEADER)
        for path in folder.glob(f"msg{number:04d}.*"):
            os.utime(path, (origtime, origtime))
    for mailbox in EXTENSIONS:
        box = spool / "default" / mailbox
        box.mkdir(parents=True, exist_ok=True)
        for greeting in ("unavail.wav", "busy.wav", "greet.wav"):
            (box / greeting).write_bytes(WAV_HEADER)
    return sum(numbers.values())


def _prepare(directory: Path) -> None:
    """Use an empty or missing folder, or replace an earlier demo; never touch anything else."""
    if directory.exists():
        if (directory / MARKER).exists():
            shutil.rmtree(directory)
        elif any(directory.iterdir()):
            raise RetentiondError(
                f"{directory} exists and is not an earlier demo; pick a new or empty folder"
            )
    directory.mkdir(parents=True, exist_ok=True)
    # The deletion log goes here: a folder others may write to is refused (umask 002, say).
    directory.chmod(stat.S_IMODE(directory.stat().st_mode) & ~0o022)
    (directory / MARKER).write_text("made by `retentiond demo`; safe to delete\n")


def _calls(rng: random.Random, end: datetime, days: int) -> list[tuple[object, ...]]:
    calls: list[tuple[object, ...]] = []
    first_day = (end - timedelta(days=days)).date()
    for offset in range(days + 1):
        day = first_day + timedelta(days=offset)
        busy = day.weekday() < 5
        for _ in range(rng.randint(6, 14) if busy else rng.randint(0, 3)):
            start = datetime(day.year, day.month, day.day, rng.randint(7, 18), rng.randint(0, 59))
            start += timedelta(seconds=rng.randint(0, 59))
            if start >= end:
                continue
            calls.append(_call(rng, start))
    calls.sort(key=lambda row: str(row[0]))
    return calls


def _call(rng: random.Random, start: datetime) -> tuple[object, ...]:
    extension = rng.choice(EXTENSIONS)
    external = (
        f"+49{rng.choice(['30', '40', '89', '221', '151', '176'])}{rng.randint(1000000, 9999999)}"
    )
    inbound = rng.random() < 0.55
    src, dst = (external, extension) if inbound else (extension, external)
    name = rng.choice(NAMES)
    disposition = rng.choice(DISPOSITIONS)
    billsec = rng.randint(5, 900) if disposition == "ANSWERED" else 0
    epoch = int(start.replace(tzinfo=ZONE).timestamp())
    uniqueid = f"{epoch}.{rng.randint(1, 9999)}"
    recording = ""
    if disposition == "ANSWERED" and rng.random() < 0.35:
        kind = "in" if inbound else "out"
        recording = f"{kind}-{dst}-{src}-{start:%Y%m%d-%H%M%S}-{uniqueid}.wav"
    return (
        start.strftime("%Y-%m-%d %H:%M:%S"),
        f'"{name}" <{src}>',
        src,
        dst,
        "from-internal" if not inbound else "ext-local",
        f"PJSIP/{extension}-{rng.randint(0, 0xFFFFFF):08x}",
        f"PJSIP/trunk-{rng.randint(0, 0xFFFFFF):08x}",
        "Dial",
        f"PJSIP/{dst}@trunk,60",
        billsec + rng.randint(0, 30),
        billsec,
        disposition,
        3,
        "",
        uniqueid,
        "",
        recording,
    )


def summary(directory: Path, config_file: Path, loaded: LoadedConfig) -> str:
    directory = directory.resolve()
    database = directory / "pbx" / "master.db"
    with sqlite3.connect(database) as db:
        (calls,) = db.execute("SELECT COUNT(*) FROM cdr").fetchone()
        (oldest,) = db.execute("SELECT MIN(calldate) FROM cdr").fetchone()
    db.close()
    recordings = sum(1 for p in (directory / "pbx" / "monitor").rglob("*") if p.is_file())
    voicemail = directory / "pbx" / "voicemail"
    messages = sum(1 for _ in voicemail.rglob("msg*.txt"))
    greetings = sum(1 for _ in voicemail.glob("default/*/unavail.wav"))
    return f"""
== what the deletion log proves (no numbers, names or file names in it) ==
{_log_summary(loaded)}

== where everything is ==
  config        {config_file}
  call records  {database}  ({calls} calls left, oldest {oldest})
  recordings    {directory / "pbx" / "monitor"}  ({recordings} files left)
  voicemail     {voicemail}  ({messages} messages left; greetings of {greetings} mailboxes kept)
  deletion log  {audit.log_path(loaded.config)}

== try next ==
  .venv/bin/retentiond -c {config_file} plan          # nothing is expired any more
  .venv/bin/retentiond audit verify {audit.log_path(loaded.config)}
  # change one digit in the deletion log, then verify again: it names the broken entry
"""


def _log_summary(loaded: LoadedConfig) -> str:
    """Per rule, from the deletion log alone: what was deleted, from which days, and the outcome."""
    lines = []
    runs: dict[str, dict[str, object]] = {}
    days: dict[str, list[str]] = {}
    for entry in audit.read_entries(audit.log_path(loaded.config)):
        run_id = str(entry.fields.get("run_id"))
        if entry.type == "run_started":
            runs[run_id] = {"rule": entry.fields["rule"], "cutoff": entry.fields["cutoff"]}
            days[run_id] = []
        elif entry.type == "batch_done" and run_id in days:
            days[run_id] += [str(entry.fields.get("first_day")), str(entry.fields.get("last_day"))]
        elif entry.type == "run_finished" and run_id in runs:
            run = runs[run_id]
            spread = sorted(d for d in days[run_id] if d != "None")
            period = f" dated {spread[0]} to {spread[-1]}" if spread else ""
            stores = ", ".join(
                f"{s['deleted']} from {s['store']}" for s in entry.fields.get("stores", [])
            )
            lines.append(
                f"  {run['rule']}: {entry.fields['status']}, cutoff {run['cutoff']}, "
                f"deleted {entry.fields['deleted']}{period} ({stores}), "
                f"run {run_id}, entry #{entry.seq}"
            )
    seq, head = audit.verify(audit.log_path(loaded.config)).head
    lines.append(f"  chain head #{seq} {head}")
    return "\n".join(lines)
