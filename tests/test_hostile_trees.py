"""Hostile file trees (issue 8, part 4): whatever someone who can write below a store's root
plants there, nothing outside the root changes, nothing crashes, every object left alone is
counted with a reason, expired regular files inside still go, and no count names a file.

Driven through survey/batches/apply on real trees, for the files store (by mtime, path_date and
filename_date) and the voicemail spool. Covered elsewhere and not repeated here:
test_files_store.py (a symlinked folder and file pointing outside, symlink loops, a FIFO named
like a recording, undecodable names deleted when expired, a folder swapped for a symlink between
planning and apply, unreadable folders, a tmpfs folder mounted in the root, no descriptor left
open) and test_voicemail_store.py (a symlinked mailbox and message file, an unreadable mailbox).

Hard links: a file inside the root with another name (inside or outside) is deleted like any
other expired file. Only the name inside the root goes (unlink removes a folder entry, and the
folder is below the root); the other name, its content and its mtime stay, and the batch counts
the file as `hard_linked`, so the operator learns that the content lives on elsewhere.

Mounts (issue 16, item 3): a folder bind-mounted below the root from the same filesystem has the
root's device, so only its mount ID tells it apart; it is left alone and counted as
`mount_point`, as a folder of another filesystem is as `other_filesystem`.
"""

# Names here are bytes (newlines, bytes that are no UTF-8), which pathlib does not take.
# ruff: noqa: PTH101, PTH102, PTH103, PTH104, PTH109, PTH110, PTH112, PTH114
# ruff: noqa: PTH115, PTH118, PTH119, PTH120, PTH123, PTH208, PTH211

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, NoReturn
from zoneinfo import ZoneInfo

import pytest
from spool import add_message, message_txt

from retentiond.config.model import FilesStoreConfig, VoicemailStoreConfig
from retentiond.stores.base import Batch, BatchResult, Survey
from retentiond.stores.files.store import FilesStore
from retentiond.stores.fs.folders import open_folder
from retentiond.stores.voicemail.store import VoicemailStore

UTC_ZONE = ZoneInfo("UTC")
CUTOFF = datetime(2026, 5, 14, 12, 0, tzinfo=UTC)
LONG_AGO = CUTOFF - timedelta(days=120)
RECENTLY = CUTOFF + timedelta(days=6)
AUDIO = b"RIFF$\x00\x00\x00WAVEfmt " + bytes(32)
OTHER_UID = 4242  # an owner that is neither root nor the daemon's user

AgeSource = Literal["mtime", "path_date", "filename_date"]
AGE_SOURCES: tuple[AgeSource, ...] = ("mtime", "path_date", "filename_date")
OLD_DAY = b"2020/01/15"
YOUNG_DAY = b"2026/05/20"


def old_name(tag: bytes) -> bytes:
    """A recording name that is expired by its time stamp (and, in OLD_DAY, by its folder)."""
    return b"out-" + tag + b"-1001-20200115-101500-1579083300.1.wav"


def young_name(tag: bytes) -> bytes:
    return b"out-" + tag + b"-1001-20260520-141500-1779286500.1.wav"


# Parts of the names planted below: none may show in a survey, batch or result.
NAME_FRAGMENTS = ("out-", "1579083300", "plain", "line", "latin", "owned", "second", "xff", "\\n")


@dataclass
class Enforcement:
    planned: list[int] = field(default_factory=list)
    deleted: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    shown: list[str] = field(default_factory=list)  # str and repr of every batch and result


def enforce(store: FilesStore | VoicemailStore, cutoff: datetime = CUTOFF) -> Enforcement:
    """What the engine does: walk the batches and apply each one."""
    done = Enforcement()
    for batch in store.batches(cutoff):
        result = store.apply(batch, cutoff)
        done.planned.append(batch.planned)
        done.deleted += result.deleted
        done.skipped.update(result.skipped)
        done.counts.update(result.counts)
        done.shown += [str(batch), repr(batch), str(result), repr(result)]
    return done


def shows_no_name(survey: Survey, done: Enforcement, fragments: tuple[str, ...]) -> None:
    shown = " ".join([str(survey), repr(survey), *done.shown])
    for fragment in fragments:
        assert fragment not in shown


@pytest.fixture
def files_store() -> Iterator[Callable[..., FilesStore]]:
    opened: list[FilesStore] = []

    def make(root: Path, age_from: AgeSource = "mtime", batch_size: int = 500) -> FilesStore:
        config = FilesStoreConfig(
            type="files", root=root, match=["**/*.wav"], age_from=age_from, batch_size=batch_size
        )
        store = FilesStore(config, UTC_ZONE)
        store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def voicemail_store() -> Iterator[Callable[..., VoicemailStore]]:
    opened: list[VoicemailStore] = []

    def make(root: Path, batch_size: int = 200) -> VoicemailStore:
        config = VoicemailStoreConfig(
            type="asterisk_voicemail", root=root, lock_wait=0.2, batch_size=batch_size
        )
        store = VoicemailStore(config, UTC_ZONE)
        store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "root"
    folder.mkdir()
    return folder


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


# -- building and watching trees -------------------------------------------------------------


def at(folder: Path, relative: bytes) -> bytes:
    return os.path.join(os.fsencode(folder), relative)


def set_mtime(path: bytes | Path, when: datetime) -> None:
    ns = (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def put(folder: Path, relative: bytes, when: datetime = LONG_AGO) -> bytes:
    """A recording at `relative` below `folder` (bytes: any name), modified `when`."""
    path = at(folder, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(AUDIO)
    set_mtime(path, when)
    return path


def make_device(path: bytes) -> bool:
    """A character device node (/dev/null's numbers) at `path`; False where that is refused."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except (PermissionError, OSError):
        return False
    return True


def make_socket(path: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listening socket's name at `path` (bound from its folder: socket paths are short)."""
    with monkeypatch.context() as patch:
        patch.chdir(os.fsdecode(os.path.dirname(path)))
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(os.path.basename(path))


def snapshot(top: Path) -> dict[bytes, tuple[Any, ...]]:
    """Every object at and below `top`: inode, type and mode, owner, mtime, size, and a regular
    file's content or a symlink's target. Link counts and ctimes are left out: deleting a hard
    link's other name inside the root changes them, and nothing else."""
    state: dict[bytes, tuple[Any, ...]] = {}
    top_bytes = os.fsencode(top)
    paths = [top_bytes]
    for folder, folders, files in os.walk(top_bytes):  # never follows a symlink
        paths += [os.path.join(folder, name) for name in folders + files]
    for path in paths:
        status = os.lstat(path)
        content: bytes | None = None
        if stat.S_ISREG(status.st_mode):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                content = os.read(fd, 1 << 20)
            finally:
                os.close(fd)
        elif stat.S_ISLNK(status.st_mode):
            content = os.readlink(path)
        state[path] = (
            status.st_ino,
            status.st_mode,
            status.st_uid,
            status.st_mtime_ns,
            status.st_size,
            content,
        )
    return state


# -- the files store -------------------------------------------------------------------------


@pytest.mark.parametrize("age_from", AGE_SOURCES)
def test_hostile_tree_is_purged_inside_and_untouched_outside(
    root: Path,
    outside: Path,
    age_from: AgeSource,
    files_store: Callable[..., FilesStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What links in the root reach: expired look-alikes, and a file with a second name inside.
    victim = put(outside, OLD_DAY + b"/" + old_name(b"victim"))
    shared = put(outside, old_name(b"shared"))
    # Expired regular files with hostile names and owners: these go.
    long_tag = b"L" * (255 - len(old_name(b"")))  # the longest name a folder entry can have
    expired = [
        put(root, OLD_DAY + b"/" + old_name(tag))
        for tag in (b"plain", b"new\nline", b"tab\tbed", b"\xff\xfe-latin1", long_tag)
    ]
    owned = put(root, OLD_DAY + b"/" + old_name(b"owned"))
    os.chown(owned, OTHER_UID, OTHER_UID)
    os.chown(os.path.dirname(owned), OTHER_UID, OTHER_UID)
    linked = at(root, OLD_DAY + b"/" + old_name(b"second"))
    os.link(shared, linked)
    expired += [owned, linked]
    young = put(root, YOUNG_DAY + b"/" + young_name(b"young"), RECENTLY)
    # Left alone, each counted: links out of the root and in loops, and what is no file.
    day = at(root, OLD_DAY)
    symlinks = {
        at(root, OLD_DAY + b"/" + old_name(b"to-victim")): victim,
        at(root, b"2019"): os.path.join(os.fsencode(outside), b"2020"),
        at(root, OLD_DAY + b"/up"): b"..",
        at(root, b"self"): b".",
        at(root, b"a.wav"): b"b.wav",
        at(root, b"b.wav"): b"a.wav",
        at(root, OLD_DAY + b"/" + old_name(b"dangling")): os.fsencode(outside / "nothing"),
    }
    for link, target in symlinks.items():
        os.symlink(target, link)
    fifo = os.path.join(day, old_name(b"fifo"))
    os.mkfifo(fifo)
    sock = os.path.join(day, old_name(b"sock"))
    make_socket(sock, monkeypatch)
    device = os.path.join(day, old_name(b"device"))
    devices = make_device(device)
    special = [fifo, sock, *([device] if devices else [])]
    for path in [*symlinks, *special]:
        set_mtime(path, LONG_AGO)
    before = snapshot(outside)
    store = files_store(root, age_from)

    survey = store.survey(CUTOFF)
    done = enforce(store)

    assert survey.skipped == {"not_regular_file": len(special), "symlink": len(symlinks)}
    assert (survey.total, survey.expired) == (len(expired) + 1, len(expired))
    assert (done.deleted, done.skipped) == (len(expired), {})
    assert done.counts == {"hard_linked": 1}
    assert not any(os.path.lexists(path) for path in expired)
    assert os.path.exists(young)
    assert all(os.path.islink(link) for link in symlinks)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and stat.S_ISSOCK(os.lstat(sock).st_mode)
    assert not devices or stat.S_ISCHR(os.lstat(device).st_mode)
    assert snapshot(outside) == before  # the hard link's other name keeps content and mtime
    shows_no_name(survey, done, NAME_FRAGMENTS)


def test_folder_swapped_for_a_symlink_while_the_walk_enters_it_is_not_entered(
    root: Path,
    outside: Path,
    files_store: Callable[..., FilesStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = [old_name(b"%d" % number) for number in range(3)]
    for name in names:
        put(root, OLD_DAY + b"/" + name)
    day, moved = at(root, OLD_DAY), os.fsencode(outside / "15")
    taken: list[dict[bytes, tuple[Any, ...]]] = []

    def swapping(name: bytes, parent_fd: int, root_device: int) -> int:
        # Between the walk's look at the day folder and its opening, the folder moves out of
        # the root and a symlink takes its place: the files behind it are the very files seen.
        if name == b"15" and not taken:
            os.rename(day, moved)
            os.symlink(moved, day)
            taken.append(snapshot(outside))
        return open_folder(name, parent_fd, root_device)

    monkeypatch.setattr("retentiond.stores.files.walk.open_folder", swapping)
    store = files_store(root, "path_date")

    survey = store.survey(CUTOFF)
    done = enforce(store)

    assert (survey.total, survey.skipped) == (0, {"changed": 1})
    assert done.deleted == 0  # the next walk sees the symlink itself and counts it
    assert snapshot(outside) == taken[0]
    assert all(os.path.exists(os.path.join(moved, name)) for name in names)


def test_folder_swapped_back_and_forth_during_runs_never_sends_a_delete_outside(
    root: Path,
    outside: Path,
    files_store: Callable[..., FilesStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stress test of real races (the two tests above pin each race down deterministically).
    # The files outside are second names of the very files inside: after following a symlink,
    # no check of inode, size or age could tell them apart.
    names = [old_name(b"%03d" % number) for number in range(120)]
    inside = [put(root, OLD_DAY + b"/" + name) for name in names]
    decoys = os.fsencode(outside / "15")
    os.mkdir(decoys)
    for path, name in zip(inside, names, strict=True):
        os.link(path, os.path.join(decoys, name))
    before = snapshot(outside)
    day, parked = at(root, OLD_DAY), at(root, b"2020/01/parked")
    root_path = os.path.realpath(root)
    removed_in: list[str] = []
    unlink, rmdir = os.unlink, os.rmdir

    def where(dir_fd: int | None) -> str:
        return os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else os.getcwd()

    def watched_unlink(path: Any, *, dir_fd: int | None = None) -> None:
        removed_in.append(where(dir_fd))
        unlink(path, dir_fd=dir_fd)

    def watched_rmdir(path: Any, *, dir_fd: int | None = None) -> None:
        removed_in.append(where(dir_fd))
        rmdir(path, dir_fd=dir_fd)

    stop = threading.Event()

    def swap() -> None:
        # The day folder is parked inside the root while a symlink to outside stands in, until
        # the store has emptied and removed it.
        while not stop.is_set() and os.path.isdir(day):
            try:
                os.rename(day, parked)
            except FileNotFoundError:
                return
            os.symlink(decoys, day)
            time.sleep(0.0005)
            unlink(day)
            os.rename(parked, day)
            time.sleep(0.0005)

    store = files_store(root, "mtime", batch_size=3)
    results: list[tuple[Batch, BatchResult]] = []
    swapper = threading.Thread(target=swap)
    monkeypatch.setattr(os, "unlink", watched_unlink)
    monkeypatch.setattr(os, "rmdir", watched_rmdir)
    swapper.start()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(map(os.path.lexists, inside)):
            store.survey(CUTOFF)
            results += [(batch, store.apply(batch, CUTOFF)) for batch in store.batches(CUTOFF)]
    finally:
        stop.set()
        swapper.join()
    results += [(batch, store.apply(batch, CUTOFF)) for batch in store.batches(CUTOFF)]

    assert snapshot(outside) == before
    assert {place for place in removed_in if not place.startswith(root_path + "/")} <= {root_path}
    assert not any(map(os.path.lexists, inside))  # once the swapping stops, all of them go
    for batch, result in results:  # every planned file deleted or counted
        assert result.deleted + sum(result.skipped.values()) == batch.planned
    assert sum(result.deleted for _, result in results) == len(names)


def test_nesting_deeper_than_a_path_can_be_long_is_walked_without_recursion(
    root: Path, files_store: Callable[..., FilesStore]
) -> None:
    depth = 300  # 300 names of 20 bytes: a path of 6,300 bytes, beyond PATH_MAX (4,096)
    bottom = [b"n" * 20] * depth + OLD_DAY.split(b"/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in bottom:
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        for name in (old_name(b"deep"), young_name(b"deep")):
            file = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.close(file)
            when = LONG_AGO if name == old_name(b"deep") else RECENTLY
            ns = int(when.timestamp()) * 10**9
            os.utime(name, ns=(ns, ns), dir_fd=fd)
    finally:
        os.close(fd)
    shallow = put(root, OLD_DAY + b"/" + old_name(b"shallow"))
    store = files_store(root, "filename_date")

    survey = store.survey(CUTOFF)
    done = enforce(store)

    assert (survey.total, survey.expired, survey.skipped) == (3, 2, {})
    assert done.deleted == 2
    assert not os.path.exists(shallow)
    assert open_descriptor_count_is_back(store)


def open_descriptor_count_is_back(store: FilesStore) -> bool:
    """Only the root stays open between walks (the 300 folder descriptors were released)."""
    before = len(os.listdir("/proc/self/fd"))
    store.close()
    return len(os.listdir("/proc/self/fd")) == before - 1


# -- the voicemail spool ---------------------------------------------------------------------


def test_hostile_spool_is_purged_inside_and_untouched_outside(
    tmp_path: Path, outside: Path, voicemail_store: Callable[..., VoicemailStore]
) -> None:
    spool = tmp_path / "voicemail"
    elsewhere = add_message(outside, "3001", "INBOX", 0, origtime=LONG_AGO)
    inbox = spool / "default/1001/INBOX"
    expired = [add_message(spool, "1001", "INBOX", 0, origtime=LONG_AGO).paths]
    # A message whose audio has a second name outside the spool.
    linked = add_message(spool, "1001", "INBOX", 1, origtime=LONG_AGO, formats=())
    os.link(elsewhere.paths[0], inbox / "msg0001.WAV")
    expired.append((*linked.paths, inbox / "msg0001.WAV"))
    owned = add_message(spool, "1001", "INBOX", 2, origtime=LONG_AGO)
    for path in owned.paths:
        os.chown(path, OTHER_UID, OTHER_UID)
    expired.append(owned.paths)
    # Mailboxes named with a newline, a tab, bytes that are no UTF-8, and the longest name.
    txt = message_txt(origtime=LONG_AGO, mailbox="1001", callerid='"A" <1>', sequence=1)
    for mailbox in (b"10\n01", b"\t", b"\xff\xfe", b"7" * 255):
        message = add_message(spool, os.fsdecode(mailbox), "INBOX", 0, origtime=LONG_AGO, txt=txt)
        expired.append(message.paths)
    young = add_message(spool, "1001", "INBOX", 7, origtime=RECENTLY)
    # Left alone, each counted: what is no file under a message's name, and links.
    add_message(spool, "1001", "INBOX", 3, origtime=LONG_AGO, formats=())
    os.mkfifo(inbox / "msg0003.wav")
    devices = make_device(bytes(inbox / "msg0004.wav"))
    if devices:
        add_message(spool, "1001", "INBOX", 4, origtime=LONG_AGO, formats=())
    add_message(spool, "1001", "INBOX", 5, origtime=LONG_AGO, with_txt=False)
    (inbox / "msg0005.txt").symlink_to(elsewhere.paths[-1])
    add_message(spool, "1001", "INBOX", 6, origtime=LONG_AGO, formats=())
    (inbox / "msg0006.wav").mkdir()
    (spool / "linked").symlink_to(outside / "default")
    (spool / "default/loop").symlink_to(".")
    (spool / "default/1001/Old").symlink_to(outside / "default/3001/INBOX")
    left_alone = {"not_regular_file": 2 + devices, "symlink": 4}
    before = snapshot(outside)
    store = voicemail_store(spool)

    survey = store.survey(CUTOFF)
    done = enforce(store)

    assert survey.skipped == left_alone
    # Messages: the expired, the young, and those left alone (links to folders are none).
    assert (survey.total, survey.expired) == (len(expired) + 4 + devices, len(expired))
    assert done.deleted == len(expired)
    assert done.skipped == left_alone  # the walk's skips, reported once with the batches
    assert done.counts == {"hard_linked": 1}
    assert not any(path.exists() for paths in expired for path in paths)
    assert young.exists()
    assert stat.S_ISFIFO((inbox / "msg0003.wav").lstat().st_mode)
    assert (inbox / "msg0005.txt").is_symlink() and (inbox / "msg0006.wav").is_dir()
    assert snapshot(outside) == before
    shows_no_name(survey, done, ("msg0", "10\\n01", "xff", "7777", "\\t", "Mustermann"))


def test_mailbox_swapped_for_a_symlink_after_planning_is_not_followed(
    tmp_path: Path, outside: Path, voicemail_store: Callable[..., VoicemailStore]
) -> None:
    spool = tmp_path / "voicemail"
    message = add_message(spool, "1001", "INBOX", 0, origtime=LONG_AGO)
    store = voicemail_store(spool)
    batch = next(iter(store.batches(CUTOFF)))

    # The mailbox moves out of the spool and a symlink takes its place: the message behind it
    # is the very message planned, so only refusing the symlink protects it.
    (spool / "default/1001").rename(outside / "1001")
    (spool / "default/1001").symlink_to(outside / "1001")
    before = snapshot(outside)
    result = store.apply(batch, CUTOFF)

    assert (result.deleted, result.skipped) == (0, {"changed": 1})
    assert snapshot(outside) == before
    assert all((outside / "1001/INBOX" / path.name).exists() for path in message.paths)


def test_mailbox_swapped_for_a_symlink_while_the_walk_enters_it_is_not_entered(
    tmp_path: Path,
    outside: Path,
    voicemail_store: Callable[..., VoicemailStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spool = tmp_path / "voicemail"
    message = add_message(spool, "1001", "INBOX", 0, origtime=LONG_AGO)
    mailbox, moved = spool / "default/1001", outside / "1001"
    taken: list[dict[bytes, tuple[Any, ...]]] = []

    def swapping(name: bytes, parent_fd: int, root_device: int) -> int:
        if name == b"1001" and not taken:
            mailbox.rename(moved)
            mailbox.symlink_to(moved)
            taken.append(snapshot(outside))
        return open_folder(name, parent_fd, root_device)

    monkeypatch.setattr("retentiond.stores.voicemail.messages.open_folder", swapping)
    store = voicemail_store(spool)

    survey = store.survey(CUTOFF)
    done = enforce(store)

    assert (survey.total, survey.skipped) == (0, {"changed": 1})
    assert (done.deleted, done.skipped) == (0, {})  # the symlink is then seen and passed over
    assert snapshot(outside) == taken[0]
    assert all((moved / "INBOX" / path.name).exists() for path in message.paths)


def test_fifo_named_like_the_flock_lock_file_does_not_hang_the_run(
    tmp_path: Path, voicemail_store: Callable[..., VoicemailStore]
) -> None:
    spool = tmp_path / "voicemail"
    message = add_message(spool, "1001", "INBOX", 0, origtime=LONG_AGO)
    os.mkfifo(spool / "default/1001/INBOX/lock")
    config = VoicemailStoreConfig(
        type="asterisk_voicemail", root=spool, lock_mode="flock", lock_wait=0.2
    )
    store = VoicemailStore(config, UTC_ZONE)
    store.open()
    try:
        started = time.monotonic()
        done = enforce(store)
    finally:
        store.close()

    assert time.monotonic() - started < 5  # opened without blocking, flocked like a file
    assert (done.deleted, done.skipped) == (1, {})
    assert message.gone()
    assert stat.S_ISFIFO((spool / "default/1001/INBOX/lock").lstat().st_mode)


# -- large folders, in a child process (its peak memory is its own) ---------------------------

CHILD = r"""
import json, os, resource, subprocess, sys, time
from datetime import datetime
from zoneinfo import ZoneInfo

spec = json.loads(sys.argv[1])
for step in spec.get("setup", []):
    if step[0] == "tmpfs":
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", step[1]], check=True)
    elif step[0] == "write":
        os.makedirs(os.path.dirname(step[1]), exist_ok=True)
        with open(step[1], "wb") as file:
            file.write(bytes.fromhex(step[2]))
        os.utime(step[1], (step[3], step[3]))
    elif step[0] == "bind":
        subprocess.run(["mount", "--bind", step[1], step[2]], check=True)

from retentiond.config.model import FilesStoreConfig, VoicemailStoreConfig
from retentiond.stores.files.store import FilesStore
from retentiond.stores.voicemail.store import VoicemailStore

zone, cutoff = ZoneInfo("UTC"), datetime.fromisoformat(spec["cutoff"])
if spec["kind"] == "files":
    config = FilesStoreConfig(
        type="files", root=spec["root"], match=["**/*.wav"], age_from=spec["age_from"],
        batch_size=spec["batch_size"],
    )
    store = FilesStore(config, zone)
else:
    config = VoicemailStoreConfig(
        type="asterisk_voicemail", root=spec["root"], batch_size=spec["batch_size"]
    )
    store = VoicemailStore(config, zone)
looks = 0
stat = os.stat
def counted(*args, **kwargs):
    global looks
    looks += 1
    return stat(*args, **kwargs)
os.stat = counted
store.open()
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
survey = store.survey(cutoff)
surveyed = time.monotonic()
looks_before, looks_at_first, planned, deleted, skipped, counts = looks, None, [], 0, {}, {}
for batch in store.batches(cutoff):
    if looks_at_first is None:
        looks_at_first = looks - looks_before
    planned.append(batch.planned)
    result = store.apply(batch, cutoff)
    deleted += result.deleted
    for key, value in result.skipped.items():
        skipped[key] = skipped.get(key, 0) + value
    for key, value in result.counts.items():
        counts[key] = counts.get(key, 0) + value
store.close()
watched = {path: open(path, "rb").read().hex() if os.path.exists(path) else None
           for path in spec.get("watch", [])}
print(json.dumps({
    "total": survey.total, "expired": survey.expired, "survey_skipped": dict(survey.skipped),
    "planned": planned, "deleted": deleted, "skipped": skipped, "counts": counts,
    "looks_at_first_batch": looks_at_first,
    "rss_growth_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline,
    "survey_seconds": surveyed - started, "enforce_seconds": time.monotonic() - surveyed,
    "watched": watched,
}))
"""


def run_child(spec: dict[str, Any], prefix: list[str] | None = None) -> tuple[dict[str, Any], str]:
    """Survey and enforce as the spec says, in a child process; its result and its output."""
    spec = {"cutoff": CUTOFF.isoformat(), "batch_size": 500, "age_from": "mtime", **spec}
    done = subprocess.run(
        [*(prefix or []), sys.executable, "-c", CHILD, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout + done.stderr


FILES_IN_ONE_FOLDER = 100_000


def test_hundred_thousand_files_in_one_folder_stream_in_bounded_memory(root: Path) -> None:
    day = at(root, OLD_DAY)
    os.makedirs(day)
    fd = os.open(day, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for number in range(FILES_IN_ONE_FOLDER):
            os.close(os.open(old_name(b"%06d" % number), os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    finally:
        os.close(fd)

    result, _ = run_child(
        {"kind": "files", "root": str(root), "age_from": "path_date", "batch_size": 500}
    )

    assert (result["total"], result["expired"]) == (FILES_IN_ONE_FOLDER, FILES_IN_ONE_FOLDER)
    assert result["deleted"] == FILES_IN_ONE_FOLDER
    assert max(result["planned"]) == 500 and len(result["planned"]) == 200
    # The first batch is planned after looking at its own files, not at the whole folder.
    assert result["looks_at_first_batch"] < 1_000
    # One folder's names are held to sort them (some 15 MB here); plans are never all held.
    assert result["rss_growth_kib"] < 64 * 1024, result
    assert result["survey_seconds"] + result["enforce_seconds"] < 60, result
    assert os.listdir(root) == []  # the emptied date folders went too
    print(
        f"100k files: survey {result['survey_seconds']:.1f}s, enforce "
        f"{result['enforce_seconds']:.1f}s, peak RSS +{result['rss_growth_kib'] // 1024} MiB"
    )


def test_a_full_voicemail_folder_streams_in_bounded_memory(tmp_path: Path) -> None:
    spool = tmp_path / "voicemail"
    # Asterisk numbers messages msg0000 to msg9998 (maxmsg is at most 9999).
    messages = 9_999
    txt = message_txt(origtime=LONG_AGO, mailbox="1001", callerid='"A" <1>', sequence=1)
    for number in range(messages):
        add_message(spool, "1001", "INBOX", number, origtime=LONG_AGO, formats=("wav",), txt=txt)

    result, _ = run_child({"kind": "voicemail", "root": str(spool), "batch_size": 200})

    assert (result["total"], result["expired"], result["deleted"]) == (messages,) * 3
    assert max(result["planned"]) == 200
    assert result["rss_growth_kib"] < 64 * 1024, result
    assert result["survey_seconds"] + result["enforce_seconds"] < 60, result
    assert sorted(os.listdir(spool / "default/1001/INBOX")) == []
    print(
        f"{messages} messages: survey {result['survey_seconds']:.1f}s, enforce "
        f"{result['enforce_seconds']:.1f}s, peak RSS +{result['rss_growth_kib'] // 1024} MiB"
    )


# -- mounts and owners, in a child process ----------------------------------------------------


def mount_namespace() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        cannot("needs root and unshare (util-linux) to mount in a private namespace")
    prefix = [unshare, "--mount", "--propagation", "private"]
    if subprocess.run([*prefix, "true"], capture_output=True, check=False).returncode != 0:
        cannot("this host does not allow a private mount namespace")
    return prefix


def cannot(reason: str) -> NoReturn:
    """Skip where mounts cannot be tried; in CI, which runs as root, that is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI runs the tests as root so that mounts are tried")
    pytest.skip(reason)


def test_files_mounted_over_names_in_the_root_are_left_alone(root: Path, outside: Path) -> None:
    prefix = mount_namespace()
    # One file bound from another filesystem (a tmpfs outside), one from this one.
    foreign_source = str(outside / "tmpfs" / "foreign.wav")
    same_source = put(outside, b"same.wav")
    foreign = put(root, OLD_DAY + b"/" + old_name(b"foreign"))
    same = put(root, OLD_DAY + b"/" + old_name(b"same"))
    plain = put(root, OLD_DAY + b"/" + old_name(b"plain"))
    (outside / "tmpfs").mkdir()
    old = int(LONG_AGO.timestamp())
    before = snapshot(outside)

    result, output = run_child(
        {
            "kind": "files",
            "root": str(root),
            "setup": [
                ["tmpfs", str(outside / "tmpfs")],
                ["write", foreign_source, b"FOREIGN".hex(), old],
                ["bind", foreign_source, os.fsdecode(foreign)],
                ["bind", os.fsdecode(same_source), os.fsdecode(same)],
            ],
            "watch": [foreign_source],
        },
        prefix,
    )

    assert result["survey_skipped"] == {"other_filesystem": 1}
    assert (result["expired"], result["deleted"]) == (2, 1)
    assert result["skipped"] == {"unremovable": 1}  # a mount point cannot be unlinked
    assert result["watched"] == {foreign_source: b"FOREIGN".hex()}
    assert not os.path.exists(plain)
    assert os.path.exists(foreign) and os.path.exists(same)
    assert snapshot(outside) == before
    assert "1579083300" not in output


def test_voicemail_mounts_are_left_alone(tmp_path: Path, outside: Path) -> None:
    prefix = mount_namespace()
    spool = tmp_path / "voicemail"
    plain = add_message(spool, "1001", "INBOX", 0, origtime=LONG_AGO)
    bound = add_message(spool, "1001", "INBOX", 1, origtime=LONG_AGO)
    add_message(spool, "1002", "INBOX", 0, origtime=LONG_AGO)  # hidden under a tmpfs
    (outside / "tmpfs").mkdir()
    source = str(outside / "tmpfs/msg.txt")
    txt = message_txt(origtime=LONG_AGO, mailbox="1001", callerid='"A" <1>', sequence=2)
    old = int(LONG_AGO.timestamp())
    mailbox = str(spool / "default/1002")
    planted = mailbox + "/INBOX/msg0000.txt"

    result, _ = run_child(
        {
            "kind": "voicemail",
            "root": str(spool),
            "setup": [
                ["tmpfs", str(outside / "tmpfs")],
                ["write", source, txt.encode().hex(), old],
                ["bind", source, str(bound.paths[-1])],
                ["tmpfs", mailbox],
                ["write", planted, txt.encode().hex(), old],
            ],
            "watch": [source, planted],
        },
        prefix,
    )

    assert result["survey_skipped"] == {"other_filesystem": 2}
    assert (result["expired"], result["deleted"]) == (1, 1)
    assert result["skipped"] == {"other_filesystem": 2}
    assert result["watched"] == {source: txt.encode().hex(), planted: txt.encode().hex()}
    assert plain.gone()
    assert bound.exists()  # left whole: not even its audio went


def test_a_bind_mount_of_a_folder_of_the_same_filesystem_is_not_entered(
    root: Path, outside: Path
) -> None:
    """A bind mount below the root of a folder outside it, on the same filesystem (the device
    is the same): it was walked into and the files outside the root deleted."""
    prefix = mount_namespace()
    elsewhere = put(outside, OLD_DAY + b"/" + old_name(b"elsewhere"))
    plain = put(root, OLD_DAY + b"/" + old_name(b"plain"))
    os.makedirs(at(root, b"2020/02"))  # where the child binds the outside folder
    assert outside.stat().st_dev == root.stat().st_dev
    before = snapshot(outside)

    result, output = run_child(
        {
            "kind": "files",
            "root": str(root),
            "setup": [["bind", str(outside), os.fsdecode(at(root, b"2020/02"))]],
        },
        prefix,
    )

    assert os.path.exists(elsewhere)
    assert snapshot(outside) == before
    assert result["survey_skipped"] == {"mount_point": 1}
    assert (result["total"], result["expired"], result["deleted"]) == (1, 1, 1)
    assert not os.path.exists(plain)
    assert "1579083300" not in output


def test_voicemail_bind_mounts_of_the_same_filesystem_are_not_entered(
    tmp_path: Path, outside: Path
) -> None:
    prefix = mount_namespace()
    spool = tmp_path / "voicemail"
    plain = add_message(spool, "1001", "INBOX", 0, origtime=LONG_AGO)
    (spool / "default/1002").mkdir(parents=True)  # where the child binds another spool's box
    other_spool = outside / "voicemail"
    stranger = add_message(other_spool, "2001", "INBOX", 0, origtime=LONG_AGO)
    before = snapshot(outside)

    result, _ = run_child(
        {
            "kind": "voicemail",
            "root": str(spool),
            "setup": [["bind", str(other_spool / "default/2001"), str(spool / "default/1002")]],
        },
        prefix,
    )

    assert stranger.exists()
    assert snapshot(outside) == before
    assert result["survey_skipped"] == {"mount_point": 1}
    assert (result["total"], result["expired"], result["deleted"]) == (1, 1, 1)
    assert plain.gone()


def test_a_run_reports_the_bind_mount_it_left_alone(root: Path, outside: Path) -> None:
    """The whole command, in a mount namespace of its own: files outside the root survive, plan
    says a mount point was left alone, the run warns and its log counts it."""
    prefix = mount_namespace()
    elsewhere = put(outside, b"2020/01/15/" + old_name(b"elsewhere"))
    plain = put(root, b"2020/01/15/" + old_name(b"plain"))
    os.makedirs(at(root, b"2020/02"))
    config = root.parent / "retentiond.yaml"
    config.write_text(
        f"""\
version: 1
audit: {{path: {root.parent / "audit.jsonl"}}}
rules:
  - name: call-recordings
    keep: 30d
    stores:
      - {{type: files, root: {root}, match: ["**/*.wav"], age_from: path_date}}
safety: {{max_delete_fraction: 1.0}}
"""
    )
    retentiond = f"{shlex.quote(sys.executable)} -m retentiond -c {shlex.quote(str(config))}"
    script = (
        f"mount --bind {shlex.quote(str(outside))} {shlex.quote(os.fsdecode(at(root, b'2020/02')))}"
        f" && {retentiond} plan && {retentiond} run --once"
    )

    done = subprocess.run(
        [*prefix, "sh", "-c", script], capture_output=True, text=True, timeout=120, check=False
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert os.path.exists(elsewhere)
    assert "left alone: mount_point 1" in done.stdout
    assert "deleted 1 files" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if "could not look everywhere" in line]
    # <4>: the journal's priority prefix, then the event as JSON; plan once, run and verify
    counted = [json.loads(line[line.index("{") :])["mount_point"] for line in warnings]
    assert counted == [1, 1, 1]
    entries = [json.loads(line) for line in (root.parent / "audit.jsonl").read_text().splitlines()]
    started = [entry for entry in entries if entry["type"] == "run_started"]
    assert [store["skipped"] for store in started[0]["stores"]] == [{"mount_point": 1}]
    assert not os.path.exists(plain)


def test_files_of_other_owners_that_cannot_be_removed_are_counted(root: Path) -> None:
    # Root removes any file, so the child runs as root without the capabilities that allow it.
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to drop the capabilities of root")
    drop = "-dac_override,-dac_read_search,-fowner"  # fowner: the sticky bit binds root too
    prefix = [setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}", "--"]
    theirs = put(root, b"2020/01/14/" + old_name(b"theirs"))  # in a folder of theirs
    os.chown(os.path.dirname(theirs), OTHER_UID, OTHER_UID)
    sticky = put(root, b"2020/01/15/" + old_name(b"sticky"))  # theirs, in a sticky folder
    os.chown(sticky, OTHER_UID, OTHER_UID)
    os.chown(os.path.dirname(sticky), OTHER_UID + 1, OTHER_UID + 1)  # of a third owner
    os.chmod(os.path.dirname(sticky), 0o1777)  # noqa: S103 - the sticky bit is the point
    mine = put(root, b"2020/01/16/" + old_name(b"mine"))  # theirs, in a folder of root's
    os.chown(mine, OTHER_UID, OTHER_UID)

    result, output = run_child({"kind": "files", "root": str(root)}, prefix)

    assert (result["expired"], result["deleted"]) == (3, 1)
    assert result["skipped"] == {"unremovable": 2}
    assert os.path.exists(theirs) and os.path.exists(sticky) and not os.path.exists(mine)
    assert "could not be removed" in output
    assert "1579083300" not in output
