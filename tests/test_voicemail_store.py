"""The voicemail store on real Asterisk spools: which messages go, which stay, and how it shares
each folder with Asterisk (its folder lock, its numbering, its message-waiting lamps)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socketserver
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from spool import (
    CALLERIDS,
    PERSONAL_FRAGMENTS,
    Spool,
    add_message,
    hold_lockfile,
    message_txt,
    realistic_spool,
    set_mtime,
)

from retentiond.config.model import AmiConfig, VoicemailStoreConfig
from retentiond.errors import StoreAbsent, StoreError
from retentiond.stores.base import Batch
from retentiond.stores.voicemail.messages import parse_origtime
from retentiond.stores.voicemail.store import VoicemailStore

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
CUTOFF = datetime(2026, 5, 14, 12, 0, tzinfo=UTC)
LONG_AGO = CUTOFF - timedelta(days=120)
YOUNG = CUTOFF + timedelta(days=5)
AMI_SECRET = "s3cr3t-ami-Pa55"

LockMode = Literal["lockfile", "flock"]
StoreFactory = Callable[..., VoicemailStore]


@dataclass
class Enforcement:
    planned: list[int] = field(default_factory=list)
    deleted: int = 0
    bytes: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    spans: list[tuple[date, date] | None] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)  # str and repr of every batch and result


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return realistic_spool(tmp_path / "voicemail", CUTOFF)


@pytest.fixture
def open_store(open_voicemail_store: StoreFactory) -> StoreFactory:
    def make(
        root: Path,
        *,
        lock_mode: LockMode = "lockfile",
        lock_wait: float = 0.2,
        batch_size: int = 200,
        ami: AmiConfig | None = None,
        zone: ZoneInfo = UTC_ZONE,
    ) -> VoicemailStore:
        return open_voicemail_store(
            root,
            zone=zone,
            lock_mode=lock_mode,
            lock_wait=lock_wait,
            batch_size=batch_size,
            ami=ami,
        )

    return make


def enforce(store: VoicemailStore, cutoff: datetime = CUTOFF) -> Enforcement:
    """What the engine does: walk the batches and apply each one."""
    done = Enforcement()
    for batch in store.batches(cutoff):
        done.planned.append(batch.planned)
        result = store.apply(batch, cutoff)
        done.deleted += result.deleted
        done.bytes += result.bytes or 0
        done.skipped.update(result.skipped)
        done.spans.append(result.span)
        done.shown += [str(batch), repr(batch), str(result), repr(result)]
    return done


def first_batch(store: VoicemailStore, cutoff: datetime = CUTOFF) -> Batch:
    return next(iter(store.batches(cutoff)))


def lock_files(root: Path) -> set[Path]:
    names = {path for path in root.rglob("*") if path.name in (".lock", "lock")}
    return names | set(root.rglob(".lock-*"))


# -- what goes, what stays -----------------------------------------------------------------------


@pytest.mark.parametrize("lock_mode", ["lockfile", "flock"])
def test_expired_messages_go_with_every_file_and_nothing_else_changes(
    spool: Spool, open_store: StoreFactory, lock_mode: LockMode
) -> None:
    store = open_store(spool.root, lock_mode=lock_mode)
    before = spool.files()
    expired_bytes = spool.expired_bytes
    expired_files = {path for message in spool.expired for path in message.paths}

    done = enforce(store)

    assert (done.deleted, done.bytes) == (9, expired_bytes)
    assert done.skipped == {"aged_by_mtime": 1, "malformed_txt": 1}
    # Every file of an expired message is gone; nothing else was removed, renamed or left behind
    # (no lock of ours, no renumbering: the gaps are Asterisk's to close).
    assert spool.files() == before - expired_files
    assert all(message.gone() for message in spool.expired)
    assert all(message.exists() for message in spool.kept)
    assert all(path.exists() for path in spool.protected)
    assert store.survey(CUTOFF).expired == 0


def test_survey_counts_messages_bytes_and_how_they_were_aged(
    spool: Spool, open_store: StoreFactory
) -> None:
    store = open_store(spool.root)

    survey = store.survey(CUTOFF)

    assert (survey.unit, survey.total, survey.expired) == ("messages", 15, 9)
    assert survey.oldest == LONG_AGO
    assert survey.expired_bytes == spool.expired_bytes
    assert survey.skipped == {"aged_by_mtime": 1, "malformed_txt": 1}
    assert spool.files() >= {path for message in spool.expired for path in message.paths}


def test_deleted_and_custom_folders_are_purged_like_the_inbox(
    spool: Spool, open_store: StoreFactory
) -> None:
    enforce(open_store(spool.root))

    for key in ("1001/Deleted/0000", "1001/Deleted/0001", "1001/Work/0000", "1001/Old/0000"):
        assert spool.message(key).gone()
    assert spool.message("1001/Urgent/0000").exists()


def test_message_exactly_at_the_cutoff_is_kept(tmp_path: Path, open_store: StoreFactory) -> None:
    at_cutoff = add_message(tmp_path, "1001", "INBOX", 0, origtime=CUTOFF)
    just_before = add_message(tmp_path, "1001", "INBOX", 1, origtime=CUTOFF - timedelta(seconds=1))
    store = open_store(tmp_path)

    assert store.survey(CUTOFF).expired == 1
    assert enforce(store).deleted == 1
    assert at_cutoff.exists()
    assert just_before.gone()


def test_numbering_gaps_are_left_for_asterisk_to_close(
    spool: Spool, open_store: StoreFactory
) -> None:
    enforce(open_store(spool.root))

    inbox = spool.root / "default/1001/INBOX"
    assert sorted(path.name for path in inbox.iterdir()) == [
        ".lock-0a1b2c3d",
        "msg0001.WAV",
        "msg0001.txt",
        "msg0001.wav",
        "msg0004.WAV",
        "msg0004.txt",
        "msg0004.wav",
    ]


# -- how messages are aged -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "txt",
    [
        "",
        "[message]\norigtime=\n",
        "[message]\norigtime=yesterday\n",
        "[message]\norigtime=-1705329022\n",
        "[message]\norigtime=0\n",
        "[message]\n;origtime=1705329022\n",
        "[other]\norigtime=1705329022\n",
        "\x00\xff garbage",
    ],
)
def test_txt_without_usable_origtime_is_counted_and_never_guessed(
    tmp_path: Path, open_store: StoreFactory, txt: str
) -> None:
    malformed = add_message(tmp_path, "1001", "INBOX", 0, origtime=LONG_AGO, txt=txt)
    store = open_store(tmp_path)

    survey = store.survey(CUTOFF)

    assert (survey.total, survey.expired, survey.skipped) == (1, 0, {"malformed_txt": 1})
    assert enforce(store).deleted == 0
    assert malformed.exists()


def test_message_without_txt_is_aged_by_its_newest_file_and_counted(
    tmp_path: Path, open_store: StoreFactory
) -> None:
    old = add_message(tmp_path, "1001", "INBOX", 0, origtime=LONG_AGO, with_txt=False)
    # One file touched after the cutoff keeps the whole message.
    mixed = add_message(tmp_path, "1001", "INBOX", 1, origtime=LONG_AGO, with_txt=False)
    set_mtime(mixed.paths[0], YOUNG)
    store = open_store(tmp_path)

    survey = store.survey(CUTOFF)
    done = enforce(store)

    assert (survey.total, survey.expired, survey.skipped) == (2, 1, {"aged_by_mtime": 2})
    assert survey.oldest == LONG_AGO
    assert (done.deleted, done.skipped) == (1, {"aged_by_mtime": 1})
    assert old.gone()
    assert mixed.exists()


def test_origtime_not_mtime_decides(tmp_path: Path, open_store: StoreFactory) -> None:
    # Moving a message to Old/ copies its files (new mtimes) but keeps its origtime.
    moved = add_message(tmp_path, "1001", "Old", 0, origtime=LONG_AGO, mtime=YOUNG)
    touched_young = add_message(tmp_path, "1001", "Old", 1, origtime=YOUNG, mtime=LONG_AGO)
    store = open_store(tmp_path)

    assert enforce(store).deleted == 1
    assert moved.gone()
    assert touched_young.exists()


ASTERISK_TXT = message_txt(origtime=LONG_AGO, mailbox="1001", callerid=CALLERIDS[0], sequence=7)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (ASTERISK_TXT, LONG_AGO),
        (ASTERISK_TXT.replace("\n", "\r\n"), LONG_AGO),
        ("[message]\norigtime=oops\norigtime=1705329022\norigtime=1\n", None),  # named 3 times
        ("origtime=1705329022\n[message]\norigtime=1705329022\n", None),  # the same twice
        ("origtime = 1705329022 ; written by hand\n", 1705329022),
        ("[Message]\n  ORIGTIME=1705329022\n", 1705329022),
        ("[other]\norigtime=1\n[message]\norigtime=1705329022\n", 1705329022),
        ("[message]\norigdate=Mon Jan 15 02:30:22 PM UTC 2024\n", None),
        ("[message]\norigtime=99999999999999999999\n", None),
        ("[message]\norigtime=1705329022.5\n", None),
        ("[message\norigtime=1705329022\n", 1705329022),  # an unclosed header still names it
        ("[message]\norigtime 1705329022\n", None),
    ],
)
def test_origtime_is_read_tolerantly(text: str, expected: datetime | int | None) -> None:
    if isinstance(expected, int):
        expected = datetime.fromtimestamp(expected, UTC)
    assert parse_origtime(text.encode()) == expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_origtime_parser_never_crashes(text: bytes) -> None:
    found = parse_origtime(text)
    assert found is None or found.tzinfo is UTC


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=1, max_value=4_000_000_000),
    st.sampled_from(["origtime", "ORIGTIME", " origtime ", "callerid", "flag", "Flag"]),
    st.sampled_from(["", "x", "1", "4000000000", "<1>"]),
    st.booleans(),
)
def test_a_key_named_twice_leaves_a_message_undated(
    epoch: int, key: str, value: str, before: bool
) -> None:
    # Asterisk writes each key once: a second one, before or after, valid or not, is no date.
    asterisk = f"[message]\norigtime={epoch}\ncallerid=<1>\nflag=\n"
    added = f"{key}={value}\n"
    text = added + asterisk if before else asterisk + added
    assert parse_origtime(text.encode()) is None


# -- batches -------------------------------------------------------------------------------------


def test_batches_are_small_and_report_what_was_left_alone_once(
    spool: Spool, open_store: StoreFactory
) -> None:
    store = open_store(spool.root, batch_size=4)

    done = enforce(store)

    assert done.planned == [4, 4, 1]
    assert done.deleted == 9
    assert done.skipped == {"aged_by_mtime": 1, "malformed_txt": 1}
    assert all(span is not None and span[0] <= span[1] for span in done.spans)


def test_batch_span_is_in_the_configured_zone(tmp_path: Path, open_store: StoreFactory) -> None:
    # 23:30 UTC on 1 April is already 2 April in Berlin.
    add_message(tmp_path, "1001", "INBOX", 0, origtime=datetime(2026, 4, 1, 23, 30, tzinfo=UTC))
    store = open_store(tmp_path, zone=BERLIN)

    batch = first_batch(store)

    assert batch.span == (date(2026, 4, 2), date(2026, 4, 2))
    assert store.apply(batch, CUTOFF).span == (date(2026, 4, 2), date(2026, 4, 2))


def test_plan_for_a_later_cutoff_is_not_applied_under_an_earlier_one(
    spool: Spool, open_store: StoreFactory
) -> None:
    store = open_store(spool.root)
    batch = first_batch(store)

    result = store.apply(batch, CUTOFF - timedelta(days=60))

    # Only the messages of 120 days ago are older than the earlier cutoff.
    assert result.deleted == 6
    assert result.skipped["changed"] == 3
    assert spool.message("1001/INBOX/0003").exists()


# -- Asterisk's folder lock ----------------------------------------------------------------------


def test_folder_locked_by_asterisk_is_left_for_a_later_run(
    spool: Spool, open_store: StoreFactory
) -> None:
    inbox = spool.root / "default/1002/INBOX"
    lock = hold_lockfile(inbox)
    held = lock.stat().st_ino
    store = open_store(spool.root, lock_wait=0.2)

    started = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        done = enforce(store)
    elapsed = time.monotonic() - started

    assert elapsed < 1.5
    assert done.deleted == 7  # the other folders went ahead
    assert done.skipped["locked"] == 2
    assert spool.message("1002/INBOX/0000").exists()
    assert spool.message("1002/INBOX/0001").exists()
    assert lock.stat().st_ino == held  # never broken
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [(w["folders"], w["messages"]) for w in warnings] == [(1, 2)]

    lock.unlink()  # Asterisk is done with the folder
    again = enforce(store)

    assert (again.deleted, again.skipped) == (2, {"malformed_txt": 1})
    assert spool.message("1002/INBOX/0000").gone()
    assert lock_files(spool.root) == set(spool.protected) & lock_files(spool.root)


def test_stale_lock_is_reported_and_never_broken(spool: Spool, open_store: StoreFactory) -> None:
    lock = hold_lockfile(spool.root / "default/1001/Work")
    set_mtime(lock, CUTOFF - timedelta(days=2))  # a crashed process, days ago
    store = open_store(spool.root, lock_wait=0.1)

    with structlog.testing.capture_logs() as logs:
        done = enforce(store)

    assert done.skipped["locked"] == 1
    assert spool.message("1001/Work/0000").exists()
    assert lock.exists()
    stale = [entry for entry in logs if "older than 10 minutes" in entry["event"]]
    assert [entry["folders"] for entry in stale] == [1]


def test_lock_released_within_lock_wait_is_waited_for(
    spool: Spool, open_store: StoreFactory
) -> None:
    lock = hold_lockfile(spool.root / "default/1002/INBOX")
    releasing = threading.Timer(0.3, lock.unlink)
    store = open_store(spool.root, lock_wait=3)

    releasing.start()
    try:
        done = enforce(store)
    finally:
        releasing.join()

    assert (done.deleted, done.skipped["locked"]) == (9, 0)
    assert spool.message("1002/INBOX/0001").gone()


HOLD_FLOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_folder_flocked_by_another_process_is_left_for_a_later_run(
    spool: Spool, open_store: StoreFactory
) -> None:
    lock = spool.root / "default/1002/INBOX/lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FLOCK, str(lock)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        assert holder.stdout.readline().strip() == "locked"
        store = open_store(spool.root, lock_mode="flock", lock_wait=0.2)
        done = enforce(store)
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()

    assert (done.deleted, done.skipped["locked"]) == (7, 2)
    assert spool.message("1002/INBOX/0000").exists()

    again = enforce(store)

    assert (again.deleted, again.skipped) == (2, {"malformed_txt": 1})
    assert spool.message("1002/INBOX/0000").gone()
    assert lock.exists()  # the holder's lock file is not ours to remove


@pytest.mark.parametrize("lock_mode", ["lockfile", "flock"])
def test_no_lock_is_taken_while_planning_nor_left_after_a_batch(
    spool: Spool, open_store: StoreFactory, lock_mode: LockMode
) -> None:
    leftovers = lock_files(spool.root)
    store = open_store(spool.root, lock_mode=lock_mode, batch_size=2)

    for batch in store.batches(CUTOFF):
        assert lock_files(spool.root) == leftovers
        store.apply(batch, CUTOFF)
        assert lock_files(spool.root) == leftovers


# -- several messages at once under a hold (unlink_threads) ------------------------------------


@pytest.mark.parametrize("threads", [1, 4])
def test_messages_deleted_by_several_threads_are_each_checked_and_counted(
    tmp_path: Path,
    open_voicemail_store: StoreFactory,
    immutable_file: Callable[[Path], None],
    threads: int,
) -> None:
    # 12 old messages of one folder; after planning Asterisk rewrites one, its owner deletes
    # one, and one has an audio file nobody can unlink: each counted, none quietly.
    messages = [add_message(tmp_path, "1001", "INBOX", n, origtime=LONG_AGO) for n in range(12)]
    store = open_voicemail_store(tmp_path, lock_wait=0.2, unlink_threads=threads)
    batch = first_batch(store)
    rewritten, gone, stuck = messages[2], messages[6], messages[9]
    add_message(tmp_path, "1001", "INBOX", 2, origtime=LONG_AGO - timedelta(days=1))
    for path in gone.paths:
        path.unlink()
    immutable_file(stuck.folder / f"{stuck.stem}.WAV")

    result = store.apply(batch, CUTOFF)

    assert batch.planned == 12
    assert result.deleted == 9
    assert result.skipped == {"changed": 1, "unremovable": 1, "vanished": 1}
    assert all(path.exists() for path in rewritten.paths)
    stuck_wav = stuck.folder / f"{stuck.stem}.WAV"
    assert stuck_wav.exists()
    assert (stuck.folder / f"{stuck.stem}.txt").exists()  # the .txt goes last, so it stays
    deleted = [m for m in messages if m not in (rewritten, gone, stuck)]
    assert not any(path.exists() for message in deleted for path in message.paths)
    assert not lock_files(tmp_path)  # the folder lock was released


# -- Asterisk renumbering between planning and deleting ------------------------------------------


def renumber(folder: Path, source: int, target: int) -> None:
    for path in sorted(folder.glob(f"msg{source:04d}*")):
        path.rename(folder / path.name.replace(f"msg{source:04d}", f"msg{target:04d}", 1))


@pytest.mark.parametrize("change", ["resequenced", "moved down", "file added"])
def test_message_changed_after_planning_is_skipped_and_nothing_else_deleted(
    tmp_path: Path, open_store: StoreFactory, change: str
) -> None:
    inbox = tmp_path / "default/1001/INBOX"
    add_message(tmp_path, "1001", "INBOX", 1, origtime=LONG_AGO)  # 0000 is a gap
    store = open_store(tmp_path)
    batch = first_batch(store)
    # Meanwhile Asterisk closes the gap; when resequencing, a young message takes number 0001.
    if change == "file added":
        (inbox / "msg0001_transcript.txt").write_text("Hallo")
    else:
        renumber(inbox, 1, 0)
    if change == "resequenced":
        add_message(tmp_path, "1001", "INBOX", 1, origtime=YOUNG)
    before = {path.name for path in inbox.iterdir()}

    result = store.apply(batch, CUTOFF)

    assert (result.deleted, result.skipped) == (0, {"changed": 1})
    assert {path.name for path in inbox.iterdir()} == before
    assert enforce(store).deleted == 1  # the next run deletes the old message, wherever it is
    if change == "resequenced":
        assert (inbox / "msg0001.txt").exists()


def test_message_deleted_by_its_owner_meanwhile_is_counted_as_vanished(
    tmp_path: Path, open_store: StoreFactory
) -> None:
    message = add_message(tmp_path, "1001", "INBOX", 0, origtime=LONG_AGO)
    store = open_store(tmp_path)
    batch = first_batch(store)
    for path in message.paths:
        path.unlink()

    assert store.apply(batch, CUTOFF).skipped == {"vanished": 1}


def test_plan_dated_by_a_txt_it_no_longer_holds_deletes_nothing(
    tmp_path: Path, open_store: StoreFactory
) -> None:
    # Young files, an old origtime: without its .txt, nothing says the message has expired.
    message = add_message(
        tmp_path, "1001", "INBOX", 0, origtime=LONG_AGO, mtime=YOUNG + timedelta(days=1)
    )
    store = open_store(tmp_path)
    batch = first_batch(store)
    plan = batch.payload
    planned = plan.messages[0]
    txt = planned.stem + b".txt"
    forged = dataclasses.replace(
        planned, files=tuple(file for file in planned.files if file.name != txt)
    )
    batch = dataclasses.replace(batch, payload=dataclasses.replace(plan, messages=(forged,)))
    (tmp_path / "default/1001/INBOX/msg0000.txt").unlink()

    result = store.apply(batch, CUTOFF)

    assert (result.deleted, result.skipped) == (0, {"changed": 1})
    assert all(path.exists() for path in message.paths if path.suffix != ".txt")


# -- message-waiting lamps through AMI -----------------------------------------------------------


@dataclass
class AmiServer:
    port: int = 0
    actions: list[dict[str, str]] = field(default_factory=list)
    knows_refresh: bool = True  # VoicemailRefresh exists since Asterisk 12


@pytest.fixture
def ami_server() -> Iterator[AmiServer]:
    """A tiny Asterisk manager: banner, Login, VoicemailRefresh, Logoff; records every action."""
    state = AmiServer()

    class Manager(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"Asterisk Call Manager/9.0.0\r\n")
            while (action := self.read_action()) is not None:
                state.actions.append(action)
                name = action.get("Action", "").lower()
                if name == "logoff":
                    self.reply("Response: Goodbye", "Message: Thanks for all the fish.")
                    return
                if name == "login":
                    if action.get("Secret") != AMI_SECRET:
                        self.reply("Response: Error", "Message: Authentication failed")
                        return
                    self.reply("Event: FullyBooted", "Privilege: system,all", "Status: Fully")
                    self.reply("Response: Success", "Message: Authentication accepted")
                elif name == "voicemailrefresh" and state.knows_refresh:
                    self.reply("Response: Success", f"ActionID: {action.get('ActionID')}")
                else:
                    self.reply("Response: Error", "Message: Invalid/unknown command")

        def read_action(self) -> dict[str, str] | None:
            action: dict[str, str] = {}
            while line := self.rfile.readline().decode():
                if line == "\r\n":
                    return action
                key, _, value = line.rstrip("\r\n").partition(": ")
                action[key] = value
            return None

        def reply(self, *lines: str) -> None:
            self.wfile.write("".join(line + "\r\n" for line in lines).encode() + b"\r\n")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Manager)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.port = server.server_address[1]
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def ami_config(tmp_path: Path, port: int, secret: str = AMI_SECRET) -> AmiConfig:
    secret_file = tmp_path / "ami.secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)  # retentiond refuses a secret every user can read
    return AmiConfig(host="127.0.0.1", port=port, username="retentiond", secret_file=secret_file)


def free_port() -> int:
    """A port nobody listens on (as when Asterisk is down)."""
    server = socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler)
    port = server.server_address[1]
    server.server_close()
    return port


def test_lamps_of_each_touched_mailbox_are_refreshed_after_deleting(
    tmp_path: Path, spool: Spool, open_store: StoreFactory, ami_server: AmiServer
) -> None:
    store = open_store(spool.root, ami=ami_config(tmp_path, ami_server.port))

    assert enforce(store).deleted == 9

    login, *refreshes, logoff = ami_server.actions
    assert login == {
        "Action": "Login",
        "Username": "retentiond",
        "Secret": AMI_SECRET,
        "Events": "off",
    }
    assert [(r["Action"], r["Context"], r["Mailbox"]) for r in refreshes] == [
        ("VoicemailRefresh", "default", "1001"),
        ("VoicemailRefresh", "default", "1002"),
    ]
    assert len({r["ActionID"] for r in refreshes}) == 2
    assert logoff == {"Action": "Logoff"}


def test_lamps_are_not_refreshed_when_nothing_was_deleted(
    tmp_path: Path, spool: Spool, open_store: StoreFactory, ami_server: AmiServer
) -> None:
    store = open_store(spool.root, ami=ami_config(tmp_path, ami_server.port))

    assert enforce(store, LONG_AGO).deleted == 0
    assert ami_server.actions == []


def test_secret_comes_from_the_systemd_credential_when_no_file_is_set(
    tmp_path: Path,
    spool: Spool,
    open_store: StoreFactory,
    ami_server: AmiServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "ami").write_text(AMI_SECRET)
    (credentials / "ami").chmod(0o400)  # as systemd leaves it
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    ami = AmiConfig(host="127.0.0.1", port=ami_server.port, username="retentiond")

    enforce(open_store(spool.root, ami=ami))

    assert ami_server.actions[0]["Secret"] == AMI_SECRET
    assert len(ami_server.actions) == 4


@pytest.mark.parametrize("problem", ["asterisk down", "wrong secret"])
def test_run_succeeds_with_one_warning_when_lamps_cannot_be_refreshed(
    tmp_path: Path, spool: Spool, open_store: StoreFactory, ami_server: AmiServer, problem: str
) -> None:
    if problem == "asterisk down":
        ami = ami_config(tmp_path, free_port())
    else:
        ami = ami_config(tmp_path, ami_server.port, secret="not-the-secret")
    store = open_store(spool.root, ami=ami, batch_size=4)

    with structlog.testing.capture_logs() as logs:
        done = enforce(store)

    assert done.deleted == 9
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1  # not once per batch
    assert "lamps not refreshed" in warnings[0]["event"]
    assert warnings[0]["mailboxes"] == 1  # those of the first batch; later ones are not tried
    expected = "Connection refused" if problem == "asterisk down" else "login refused"
    assert expected in warnings[0]["reason"]
    assert [action["Action"] for action in ami_server.actions] == (
        [] if problem == "asterisk down" else ["Login"]
    )


def test_asterisk_without_voicemailrefresh_is_reported_and_the_run_goes_on(
    tmp_path: Path, spool: Spool, open_store: StoreFactory, ami_server: AmiServer
) -> None:
    ami_server.knows_refresh = False
    store = open_store(spool.root, ami=ami_config(tmp_path, ami_server.port))

    with structlog.testing.capture_logs() as logs:
        done = enforce(store)

    assert done.deleted == 9
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert [(w["mailboxes"], w["refused"]) for w in warnings] == [(2, 2)]
    assert ami_server.actions[-1] == {"Action": "Logoff"}


# -- personal data -------------------------------------------------------------------------------


def test_nothing_personal_in_results_logs_or_descriptions(
    tmp_path: Path, spool: Spool, open_store: StoreFactory, ami_server: AmiServer
) -> None:
    hold_lockfile(spool.root / "default/1002/INBOX")
    (spool.root / "default/1001/INBOX/msg0009.txt").symlink_to(tmp_path)
    store = open_store(spool.root, ami=ami_config(tmp_path, free_port()), batch_size=3)

    with structlog.testing.capture_logs() as logs:
        survey = store.survey(CUTOFF)
        done = enforce(store)
        described = store.describe()

    assert done.deleted == 7 and done.skipped["locked"] == 2  # warnings were logged
    shown = " ".join([str(survey), repr(survey), *done.shown, *described, json.dumps(logs)])
    shown = shown.replace(str(spool.root), "<root>")
    for fragment in (*PERSONAL_FRAGMENTS, AMI_SECRET):
        assert fragment not in shown


def test_store_errors_name_no_mailbox(tmp_path: Path) -> None:
    root = tmp_path / "voicemail"
    config = VoicemailStoreConfig(type="asterisk_voicemail", root=root)

    with pytest.raises(StoreAbsent, match="does not exist") as raised:
        VoicemailStore(config, UTC_ZONE).open()

    assert str(raised.value).startswith(f"{root} does not exist; ")


# -- never following, never leaving --------------------------------------------------------------


def test_symlinks_are_never_followed(
    tmp_path: Path, spool: Spool, open_store: StoreFactory
) -> None:
    outside = tmp_path / "outside"
    elsewhere = add_message(outside, "3001", "INBOX", 0, origtime=LONG_AGO)
    (spool.root / "default/3001").symlink_to(outside / "default/3001")
    linked = add_message(tmp_path / "audio", "1001", "INBOX", 7, origtime=LONG_AGO)
    (spool.root / "default/1001/INBOX/msg0007.wav").symlink_to(linked.paths[1])
    add_message(spool.root, "1001", "INBOX", 7, origtime=LONG_AGO, formats=("WAV",))
    store = open_store(spool.root)

    survey = store.survey(CUTOFF)
    done = enforce(store)

    assert survey.skipped == {"aged_by_mtime": 1, "malformed_txt": 1, "symlink": 2}
    assert (survey.total, survey.expired, done.deleted) == (16, 9, 9)
    assert elsewhere.exists()
    assert linked.exists()
    assert (spool.root / "default/1001/INBOX/msg0007.txt").exists()


def test_missing_root_is_absent_and_a_wrong_root_an_error(tmp_path: Path) -> None:
    def store(root: Path) -> VoicemailStore:
        return VoicemailStore(VoicemailStoreConfig(type="asterisk_voicemail", root=root), UTC_ZONE)

    folder = tmp_path / "spool"
    folder.mkdir()
    (tmp_path / "link").symlink_to(folder)
    (tmp_path / "file").write_bytes(b"")

    with pytest.raises(StoreAbsent):
        store(tmp_path / "nowhere").open()
    with pytest.raises(StoreError, match="is a symlink") as link:
        store(tmp_path / "link").open()
    with pytest.raises(StoreError, match="is not a folder") as file:
        store(tmp_path / "file").open()
    assert not isinstance(link.value, StoreAbsent)
    assert not isinstance(file.value, StoreAbsent)


CHILD = """
import json, sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo
from retentiond.config.model import VoicemailStoreConfig
from retentiond.stores.voicemail.store import VoicemailStore

root, cutoff = Path(sys.argv[1]), datetime.fromisoformat(sys.argv[2])
store = VoicemailStore(VoicemailStoreConfig(type="asterisk_voicemail", root=root), ZoneInfo("UTC"))
store.open()
survey = store.survey(cutoff)
deleted = sum(store.apply(batch, cutoff).deleted for batch in store.batches(cutoff))
store.close()
print(json.dumps({"expired": survey.expired, "skipped": dict(survey.skipped), "deleted": deleted}))
"""


def test_unreadable_mailbox_is_counted_and_the_walk_goes_on(spool: Spool) -> None:
    # Root reads any folder whatever its mode, so the child runs as root without the two
    # capabilities that allow it, as a hardened service unit would.
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing to drop DAC override")
        drop = "-dac_override,-dac_read_search"
        prefix = [setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}", "--"]
    mailbox = spool.root / "default/1002"
    mailbox.chmod(0)
    try:
        done = subprocess.run(
            [*prefix, sys.executable, "-c", CHILD, str(spool.root), CUTOFF.isoformat()],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        mailbox.chmod(0o755)

    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["skipped"] == {"aged_by_mtime": 1, "malformed_txt": 1, "unreadable": 1}
    assert (result["expired"], result["deleted"]) == (7, 7)
    assert spool.message("1002/INBOX/0000").exists()
    assert "warning" in done.stderr.lower() + done.stdout.lower()
    for fragment in PERSONAL_FRAGMENTS:
        assert fragment not in done.stdout + done.stderr.replace(str(spool.root), "")


# -- check ---------------------------------------------------------------------------------------


def test_describe_says_how_without_naming_mailboxes(
    tmp_path: Path, spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    ami = AmiConfig(host="pbx.local", port=5038, username="retentiond")
    config = VoicemailStoreConfig(
        type="asterisk_voicemail", root=spool.root, lock_mode="flock", lock_wait=2, ami=ami
    )
    missing = VoicemailStoreConfig(type="asterisk_voicemail", root=tmp_path / "nowhere")

    lines = "\n".join(VoicemailStore(config, UTC_ZONE).describe())
    missing_lines = "\n".join(VoicemailStore(missing, UTC_ZONE).describe())

    assert str(spool.root) in lines
    assert "readable, 1 voicemail context" in lines
    assert "flock" in lines and "2s" in lines
    assert "pbx.local:5038" in lines
    assert "warning: AMI secret missing" in lines  # neither secret_file nor a credential
    for fragment in PERSONAL_FRAGMENTS:
        assert fragment not in lines.replace(str(spool.root), "<root>")
    assert "warning" in missing_lines
    assert "pollmailboxes=yes" in missing_lines
