"""The Asterisk voicemail spool (app_voicemail file storage), purged message by message.

Layout: `<root>/<context>/<mailbox>/<folder>/msgNNNN.*`. A message is `msgNNNN.<ext>` in every
recorded format plus FreePBX's `msgNNNN_*.*` siblings, aged by `origtime` in `msgNNNN.txt`.
Deleting takes Asterisk's own per-folder lock (the `.lock` hard link, or `flock` on `lock`) for a
moment, re-checks each message under it, removes the audio first and the `.txt` last (Asterisk
counts messages by their `.txt`), and leaves numbering gaps for Asterisk to resequence.
Greetings, `tmp/` and lock files are never touched. Mailbox numbers are extensions, hence
personal data: they and every file name stay out of logs, exceptions and results.

A message names a person by the caller id in its `.txt` or by its mailbox (an extension): holds
by number or extension keep it whole (it is never planned, so gaps left around it never move
it), and `find`/`subject_batches` serve Art. 15/17 requests, of any age, also for a message
whose `.txt` has no usable origtime (which expiry never touches).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import re
import secrets
import socket
import stat
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import BinaryIO

import structlog

from retentiond.config.model import AmiConfig, VoicemailStoreConfig
from retentiond.config.roots import system_root_warning
from retentiond.credentials import CredentialError, read_secret
from retentiond.policy.rules import NO_HOLDS, Holds
from retentiond.policy.subjects import Subject
from retentiond.stores.base import Batch, BatchResult, Found, Store, Survey
from retentiond.stores.files.store import mtime_age
from retentiond.stores.fs.folders import (
    CHANGED,
    HARD_LINKED,
    MOUNT_POINT,
    MOUNTS_UNTOLD,
    NOT_REGULAR_FILE,
    OTHER_FILESYSTEM,
    READ_FLAGS,
    SYMLINK,
    UNREADABLE,
    UNREMOVABLE,
    VANISHED,
    FolderChain,
    RootFolder,
    RootUnfit,
    RootWording,
    Skip,
    check_component,
    entries,
    examine_root,
    list_folder,
    mounts_told_apart,
    open_folder,
    open_root,
    sorted_names,
)

log = structlog.get_logger()

# How a message was aged or why it was left alone, as counted in Survey.skipped and
# BatchResult.skipped (besides the folders module's symlink, unreadable, changed, vanished, ...).
# msgNNNN.txt without a usable origtime, or naming a key twice: never guessed, kept
MALFORMED_TXT = "malformed_txt"
AGED_BY_MTIME = "aged_by_mtime"  # no msgNNNN.txt: aged by its newest file (reported, not kept)
LOCKED = "locked"  # Asterisk held the folder lock longer than lock_wait: left for a later run

_MESSAGE_NAME = re.compile(rb"(msg[0-9]{4})(?:\..*|_.*\..*)", re.DOTALL)
_TXT_LIMIT = 64 * 1024  # an Asterisk msgNNNN.txt is a few hundred bytes
_ORIGTIME = re.compile(rb"[0-9]{1,12}")
_CALLERID_LIMIT = 256  # characters of a caller id worth matching; Asterisk's own limit is 80
_AMI_NAME = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space: nothing can end a line

_RETRY = 0.05  # seconds between attempts to take a folder lock
_HOLD_LIMIT = 0.5  # seconds one folder lock is held before Asterisk gets a turn
_TURN = 0.01  # seconds the folder is left to Asterisk between two holds
_STALE_LOCK = timedelta(minutes=10)  # a `.lock` this old is a crashed process, not a recording

# The default wording, but a missing spool says where Asterisk keeps it.
_ROOT_WORDING = RootWording(
    missing="{root} does not exist; fix the store's root (Asterisk's voicemail spool, "
    "usually /var/spool/asterisk/voicemail) or mark the store optional"
)


@dataclass(frozen=True, slots=True)
class PlannedFile:
    """One file of a planned message, as it was when planned. Its name never shows in a repr."""

    name: bytes = field(repr=False)
    device: int
    inode: int
    size: int


@dataclass(frozen=True, slots=True)
class PlannedMessage:
    """One message a batch will delete, as it was when planned. No name shows in a repr."""

    folder: tuple[bytes, ...] = field(repr=False)  # context, mailbox, folder
    stem: bytes = field(repr=False)  # msgNNNN
    files: tuple[PlannedFile, ...] = field(repr=False)
    age: datetime | None  # None: a msgNNNN.txt without origtime, never expired, only erased
    aged_by_mtime: bool
    callerids: tuple[str, ...] = field(default=(), repr=False)  # from msgNNNN.txt, if it has one

    @property
    def size(self) -> int:
        return sum(file.size for file in self.files)

    @property
    def txt(self) -> bytes:
        return self.stem + b".txt"

    @property
    def mailbox(self) -> str:
        return os.fsdecode(self.folder[1])

    def names(self, subject: Subject) -> bool:
        """The message is the subject's: their mailbox, or their number as its caller id."""
        if self.mailbox in subject.extensions:
            return True
        return any(subject.matches_callerid(callerid) for callerid in self.callerids)

    def where(self) -> str:
        """Where it lies below the root: context/mailbox/folder/msgNNNN."""
        return os.fsdecode(b"/".join((*self.folder, self.stem)))


@dataclass(frozen=True, slots=True)
class VoicemailPlan:
    """A batch's payload: the messages to delete and what the walk left alone on the way."""

    messages: tuple[PlannedMessage, ...] = field(repr=False)
    left_alone: Mapping[str, int]  # counts only


@dataclass
class _Tally:
    """What applying one batch did, folder by folder."""

    deleted: list[PlannedMessage] = field(default_factory=list)
    bytes: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    locked_folders: int = 0
    stale_locks: int = 0
    hard_linked: int = 0  # files deleted that had another name, which keeps their content


class VoicemailStore(Store):
    """Every message in every folder of every mailbox under an Asterisk voicemail spool."""

    kind = "asterisk_voicemail"
    unit = "messages"

    def __init__(self, config: VoicemailStoreConfig, zone: tzinfo) -> None:
        self.config = config
        self.zone = zone
        self.root = config.root
        self.label = str(config.root)
        self.pause = config.pause
        self._root = RootFolder(config.root, _ROOT_WORDING, probe=True)
        self._ami_failed = False  # refresh once per open store at most after a failure

    # -- Store interface -------------------------------------------------------------------------

    def open(self) -> None:
        self.close()
        self._root.open()
        self._ami_failed = False

    def close(self) -> None:
        self._root.close()

    def describe(self) -> list[str]:
        config = self.config
        if config.lock_mode == "lockfile":
            lock = "lockfile (a .lock hard link, Asterisk's default)"
        else:
            lock = "flock on each folder's lock file (asterisk.conf lockmode=flock)"
        system = system_root_warning(config.root, config.allow_system_root)
        lines = [
            f"root: {self.root} ({self._root_state()})",
            *([system] if system is not None else []),
            "messages: msgNNNN.* with their msgNNNN_*.* siblings, in every folder of every "
            "mailbox (INBOX, Old, Urgent, Deleted, Work, custom), aged by origtime in msgNNNN.txt",
            f"a message without msgNNNN.txt is aged by its newest file's mtime ({AGED_BY_MTIME}); "
            f"a msgNNNN.txt without origtime, or naming a key twice, is left alone "
            f"({MALFORMED_TXT})",
            f"folder lock: {lock}, waited for up to {config.lock_wait:g}s; a folder locked "
            "longer is left for the next run, a stale lock is never broken",
            f"batches of up to {config.batch_size} messages, {config.pause:g}s apart",
            "never touches greetings (busy, unavail, greet, temp), tmp/ or lock files, never "
            "follows symlinks, stays on the root's filesystem and mount (mount points below it "
            f"are left alone: {OTHER_FILESYSTEM}, {MOUNT_POINT}), leaves numbering gaps to "
            "Asterisk",
        ]
        if not mounts_told_apart():
            lines.append(MOUNTS_UNTOLD)
        ami = config.ami
        if ami is None:
            lines.append(
                "message-waiting lamps: not refreshed (no ami); Asterisk notices deletions "
                "only with pollmailboxes=yes in voicemail.conf"
            )
        else:
            lines.append(
                f"message-waiting lamps: refreshed through AMI at {ami.host}:{ami.port} "
                "(VoicemailRefresh) after each batch"
            )
            try:
                _ami_secret(ami)
            except _AmiFailure as failure:
                lines.append(f"warning: AMI {failure.reason}")
        return lines

    def survey(self, cutoff: datetime, holds: Holds = NO_HOLDS) -> Survey:
        skipped: Counter[str] = Counter()
        held_by: Counter[str] = Counter()
        total = expired = expired_bytes = held = 0
        oldest: datetime | None = None
        for found in self._walk(skipped):
            total += 1
            if isinstance(found, str) or found.age is None:
                skipped[found if isinstance(found, str) else MALFORMED_TXT] += 1
                continue
            if found.aged_by_mtime:
                skipped[AGED_BY_MTIME] += 1
            oldest = found.age if oldest is None else min(oldest, found.age)
            if not found.age < cutoff:
                continue
            covering = holds.covering(found.age, found.names)
            if covering:
                held += 1
                held_by.update(covering)
            else:
                expired += 1
                expired_bytes += found.size
        self._warn_if_incomplete(skipped)
        return Survey(
            unit=self.unit,
            total=total,
            expired=expired,
            oldest=oldest,
            expired_bytes=expired_bytes,
            skipped=dict(sorted(skipped.items())),
            held=held,
            held_by=dict(sorted(held_by.items())),
        )

    def batches(self, cutoff: datetime, holds: Holds = NO_HOLDS) -> Iterator[Batch]:
        return self._batched(
            lambda message: (
                message.age is not None
                and message.age < cutoff
                and not holds.covers(message.age, message.names)
            )
        )

    def apply(self, batch: Batch, cutoff: datetime) -> BatchResult:
        root_fd = self._require_open()
        plan = batch.payload
        if not isinstance(plan, VoicemailPlan):
            raise TypeError("a voicemail batch carries a VoicemailPlan")  # a bug in the caller
        tally = _Tally(skipped=Counter(plan.left_alone))
        with FolderChain(root_fd, self._root.device) as chain:
            for folder, messages in itertools.groupby(plan.messages, key=lambda m: m.folder):
                self._apply_folder(chain, folder, list(messages), cutoff, tally)
        tally.skipped[AGED_BY_MTIME] += sum(m.aged_by_mtime for m in tally.deleted)
        self._warn_about(tally)
        if tally.deleted:
            self._refresh_lamps({m.folder[:2] for m in tally.deleted})
        days = [self._day(m.age) for m in tally.deleted if m.age is not None]
        return BatchResult(
            deleted=len(tally.deleted),
            span=(min(days), max(days)) if days else None,
            bytes=tally.bytes,
            skipped={reason: n for reason, n in sorted(tally.skipped.items()) if n},
            counts={HARD_LINKED: tally.hard_linked} if tally.hard_linked else {},
        )

    # -- data subjects ---------------------------------------------------------------------------

    def subject_fields(self) -> list[str]:
        return ["callerid", "mailbox"]

    def find(self, subject: Subject, holds: Holds = NO_HOLDS) -> Iterator[Found]:
        for found in self._walk(Counter()):
            if isinstance(found, str) or not found.names(subject):
                continue
            matched = {}
            callerid = next(filter(subject.matches_callerid, found.callerids), None)
            if callerid is not None:
                matched["callerid"] = callerid
            if found.mailbox in subject.extensions:
                matched["mailbox"] = found.mailbox
            yield Found(
                when=found.age,
                held=holds.covers(found.age, found.names),
                where=found.where(),
                fields=matched,
            )

    def subject_batches(self, subject: Subject, holds: Holds = NO_HOLDS) -> Iterator[Batch]:
        # Any age, also a message whose .txt lacks origtime: an erasure does not wait for expiry.
        return self._batched(
            lambda message: message.names(subject) and not holds.covers(message.age, message.names)
        )

    def _batched(self, wanted: Callable[[PlannedMessage], bool]) -> Iterator[Batch]:
        """Batches of the `wanted` messages, in spool order, up to `batch_size` each."""
        left_alone: Counter[str] = Counter()
        planned: list[PlannedMessage] = []
        number = 0
        for found in self._walk(left_alone):
            if isinstance(found, str):
                left_alone[found] += 1
                continue
            if not wanted(found):
                if found.age is None:
                    left_alone[MALFORMED_TXT] += 1
                continue
            if len(planned) == self.config.batch_size:
                # A full batch waits for the next wanted message, so whatever the walk leaves
                # alone after it is reported with the last batch.
                number += 1
                yield self._batch(number, planned, left_alone)
                planned = []
                left_alone.clear()
            planned.append(found)
        if planned:
            yield self._batch(number + 1, planned, left_alone)

    # -- walking ---------------------------------------------------------------------------------

    def _walk(self, skipped: Counter[str]) -> Iterator[PlannedMessage | str]:
        """Every message in spool order: dated ones as plans, the others as the reason why not.

        One folder's names are in memory at a time; folder-level blind spots go to `skipped`.
        """
        root_fd = self._require_open()
        device = self._root.device
        for context, context_fd in _subfolders(root_fd, device, skipped):
            for mailbox, mailbox_fd in _subfolders(context_fd, device, skipped):
                # tmp/ holds recordings in progress; Asterisk renames them into a folder
                for folder, folder_fd in _subfolders(mailbox_fd, device, skipped, leave=b"tmp"):
                    yield from self._messages((context, mailbox, folder), folder_fd, skipped)

    def _messages(
        self, folder: tuple[bytes, ...], fd: int, skipped: Counter[str]
    ) -> Iterator[PlannedMessage | str]:
        groups: dict[bytes, list[bytes]] = {}
        for name in list_folder(fd, skipped):
            stem = _stem(name)
            if stem is not None:
                groups.setdefault(stem, []).append(name)
        for stem in sorted(groups):
            found = self._examine(folder, fd, stem, groups[stem])
            if found is not None:
                yield found

    def _examine(
        self, folder: tuple[bytes, ...], fd: int, stem: bytes, names: list[bytes]
    ) -> PlannedMessage | str | None:
        """A message's plan, the reason it is left alone, or None when it is gone."""
        files: list[PlannedFile] = []
        newest: datetime | None = None
        for name in names:
            try:
                status = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            except OSError:
                return UNREADABLE
            if stat.S_ISLNK(status.st_mode):
                return SYMLINK
            if not stat.S_ISREG(status.st_mode):
                return NOT_REGULAR_FILE
            if status.st_dev != self._root.device:
                # A file mounted over a message's name (a bind mount): another filesystem,
                # never read nor deleted (its unlink would fail half-way through a message).
                return OTHER_FILESYSTEM
            files.append(PlannedFile(name, status.st_dev, status.st_ino, status.st_size))
            modified = mtime_age(status)
            newest = modified if newest is None else max(newest, modified)
        if newest is None:
            return None
        txt = stem + b".txt"
        if not any(file.name == txt for file in files):
            return PlannedMessage(folder, stem, tuple(files), newest, aged_by_mtime=True)
        try:
            _, text = _read_txt(fd, txt)
        except Skip as skip:
            return None if skip.reason == VANISHED else skip.reason
        return PlannedMessage(
            folder,
            stem,
            tuple(files),
            parse_origtime(text),
            aged_by_mtime=False,
            callerids=parse_callerids(text),
        )

    def _batch(self, number: int, planned: list[PlannedMessage], left_alone: Counter[str]) -> Batch:
        days = [self._day(message.age) for message in planned if message.age is not None]
        return Batch(
            number=number,
            planned=len(planned),
            span=(min(days), max(days)) if days else None,
            payload=VoicemailPlan(tuple(planned), dict(sorted(left_alone.items()))),
        )

    # -- deleting --------------------------------------------------------------------------------

    def _apply_folder(
        self,
        chain: FolderChain,
        folder: tuple[bytes, ...],
        messages: list[PlannedMessage],
        cutoff: datetime,
        tally: _Tally,
    ) -> None:
        """Delete one folder's planned messages, each hold of its lock short."""
        try:
            if len(folder) != 3 or folder[2] == b"tmp":
                raise Skip(CHANGED)  # a payload only ever names context/mailbox/folder
            for component in folder:
                check_component(component)
            fd = chain.open(folder)
        except Skip as skip:
            tally.skipped[skip.reason] += len(messages)
            return
        pending = deque(messages)
        while pending:
            try:
                release = self._lock(fd)
            except Skip as skip:
                tally.skipped[skip.reason] += len(pending)
                return
            if release is None:
                tally.skipped[LOCKED] += len(pending)
                tally.locked_folders += 1
                tally.stale_locks += self._lock_is_stale(fd)
                return
            try:
                try:
                    # Grouped by message once per hold: a message looks up its own files, so a
                    # full folder (msg0000 to msg9998) is not scanned once per message.
                    by_stem = _by_stem(sorted_names(fd))
                except OSError:
                    tally.skipped[UNREADABLE] += len(pending)
                    return
                started = time.monotonic()
                while pending and time.monotonic() - started < _HOLD_LIMIT:
                    message = pending.popleft()
                    freed, reason, linked = _delete(fd, by_stem, message, cutoff)
                    tally.bytes += freed
                    tally.hard_linked += linked
                    if reason is None:
                        tally.deleted.append(message)
                    else:
                        tally.skipped[reason] += 1
            finally:
                release()
            if pending:
                time.sleep(_TURN)

    def _lock(self, fd: int) -> Callable[[], None] | None:
        if self.config.lock_mode == "flock":
            return _lock_by_flock(fd, self.config.lock_wait)
        return _lock_by_lockfile(fd, self.config.lock_wait)

    def _lock_is_stale(self, fd: int) -> bool:
        if self.config.lock_mode != "lockfile":
            return False  # a flock dies with its holder
        try:
            status = os.stat(b".lock", dir_fd=fd, follow_symlinks=False)
        except OSError:
            return False
        return datetime.now(UTC) - mtime_age(status) > _STALE_LOCK

    def _warn_about(self, tally: _Tally) -> None:
        if tally.locked_folders:
            log.warning(
                "voicemail folders locked by Asterisk; their messages are left for a later run",
                store=self.label,
                folders=tally.locked_folders,
                messages=tally.skipped[LOCKED],
                lock_wait=self.config.lock_wait,
            )
        if tally.stale_locks:
            log.warning(
                "voicemail folder locks older than 10 minutes: Asterisk never breaks them and "
                "cannot store new messages there; check the PBX",
                store=self.label,
                folders=tally.stale_locks,
            )
        if tally.skipped[UNREMOVABLE]:
            log.warning(
                "voicemail messages could not be removed",
                store=self.label,
                count=tally.skipped[UNREMOVABLE],
            )
        if tally.hard_linked:
            log.warning(
                "deleted voicemail files had other names (hard links), which keep their content",
                store=self.label,
                count=tally.hard_linked,
            )

    # -- message-waiting lamps -------------------------------------------------------------------

    def _refresh_lamps(self, mailboxes: set[tuple[bytes, ...]]) -> None:
        ami = self.config.ami
        if ami is None:
            return
        if self._ami_failed:
            log.debug("voicemail lamps not refreshed", store=self.label, mailboxes=len(mailboxes))
            return
        try:
            refused = _ami_refresh(ami, sorted(mailboxes))
        except _AmiFailure as failure:
            self._ami_failed = True
            log.warning(
                "voicemail lamps not refreshed; Asterisk catches up only with pollmailboxes=yes",
                store=self.label,
                mailboxes=len(mailboxes),
                reason=failure.reason,
            )
            return
        if refused:
            log.warning(
                "Asterisk refused to refresh some voicemail lamps",
                store=self.label,
                mailboxes=len(mailboxes),
                refused=refused,
            )
        else:
            log.debug("voicemail lamps refreshed", store=self.label, mailboxes=len(mailboxes))

    # -- helpers ---------------------------------------------------------------------------------

    def _day(self, age: datetime) -> date:
        return age.astimezone(self.zone).date()

    def _require_open(self) -> int:
        if self._root.fd is None:
            raise RuntimeError("VoicemailStore used before open()")  # a bug in the caller
        return self._root.fd

    def _root_state(self) -> str:
        try:
            examine_root(self.root)
            fd = open_root(self.root, probe=True)
        except RootUnfit as unfit:
            return unfit.warning
        try:
            contexts = sum(1 for _ in _subfolders(fd, os.fstat(fd).st_dev, Counter()))
        finally:
            os.close(fd)
        return f"readable, {contexts} voicemail context{'s' if contexts != 1 else ''}"

    def _warn_if_incomplete(self, skipped: Counter[str]) -> None:
        blind_spots = {
            reason: skipped[reason] for reason in (UNREADABLE, OTHER_FILESYSTEM, MOUNT_POINT)
        }
        if any(blind_spots.values()):
            log.warning(
                "voicemail store could not look everywhere", store=self.label, **blind_spots
            )


# -- messages ------------------------------------------------------------------------------------


def _subfolders(
    parent_fd: int, root_device: int, skipped: Counter[str], leave: bytes = b""
) -> Iterator[tuple[bytes, int]]:
    """Each plain subfolder, opened without following links or leaving the filesystem."""
    names = (name for name in list_folder(parent_fd, skipped) if name != leave)
    for name, status in entries(parent_fd, names, skipped):
        if stat.S_ISLNK(status.st_mode):
            skipped[SYMLINK] += 1
            continue
        if not stat.S_ISDIR(status.st_mode):
            continue  # greetings and other mailbox files are not retention's business
        try:
            fd = open_folder(name, parent_fd, root_device)
        except Skip as skip:
            if skip.reason != VANISHED:
                skipped[skip.reason] += 1
            continue
        try:
            yield name, fd
        finally:
            os.close(fd)


def _stem(name: bytes) -> bytes | None:
    match = _MESSAGE_NAME.fullmatch(name)
    return match.group(1) if match else None


def parse_origtime(text: bytes) -> datetime | None:
    """`origtime` of a msgNNNN.txt, read tolerantly, else None.

    Keys before any section and in `[message]` count; comments (`;`, `#`), other sections and
    unparsable lines are passed over. None for a value that is no positive epoch seconds, and
    for a text that names any key twice: Asterisk writes each key once, so a second `origtime`
    (or `callerid`) was added by someone else, and which one is true cannot be told.
    """
    keys = _message_keys(text)
    values = keys.get(b"origtime", [])
    if len(values) != 1 or _names_a_key_twice(keys):
        return None
    value = values[0].partition(b";")[0].strip()
    if not _ORIGTIME.fullmatch(value) or int(value) <= 0:
        return None
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (OverflowError, OSError, ValueError):
        return None


def parse_callerids(text: bytes) -> tuple[str, ...]:
    """Every non-empty `callerid` of a msgNNNN.txt (`"Name" <number>`); one in Asterisk's own.

    Taken whole: a `;` in a caller's name is no comment to Asterisk's config reader there. A
    text with two is malformed (never aged), but both are kept: a hold on either number holds
    the message, an erasure of either finds it.
    """
    values = (raw.strip()[:_CALLERID_LIMIT] for raw in _message_keys(text).get(b"callerid", []))
    return tuple(value.decode("utf-8", "replace") for value in values if value)


def _message_keys(text: bytes) -> dict[bytes, list[bytes]]:
    """The values of each key (lower case) before any section and in `[message]`, in order."""
    keys: dict[bytes, list[bytes]] = {}
    section: bytes | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith((b";", b"#")):
            continue
        if line.startswith(b"["):
            section = line[1:].partition(b"]")[0].strip().lower()
            continue
        if section not in (None, b"message"):
            continue
        key, equals, value = line.partition(b"=")
        if equals:
            keys.setdefault(key.strip().lower(), []).append(value)
    return keys


def _names_a_key_twice(keys: Mapping[bytes, list[bytes]]) -> bool:
    return any(len(values) > 1 for values in keys.values())


def _read_txt(fd: int, name: bytes) -> tuple[os.stat_result, bytes]:
    """The status and (first 64 KiB of) text of a msgNNNN.txt, opened without following a link."""
    try:
        txt_fd = os.open(name, READ_FLAGS, dir_fd=fd)
    except FileNotFoundError:
        raise Skip(VANISHED) from None
    except OSError as error:
        raise Skip(SYMLINK if error.errno == errno.ELOOP else UNREADABLE) from None
    try:
        status = os.fstat(txt_fd)
        if not stat.S_ISREG(status.st_mode):
            raise Skip(NOT_REGULAR_FILE)
        chunks: list[bytes] = []
        size = 0
        while size < _TXT_LIMIT:
            chunk = os.read(txt_fd, _TXT_LIMIT - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        raise Skip(UNREADABLE) from None
    finally:
        os.close(txt_fd)
    text = b"".join(chunks)
    if size >= _TXT_LIMIT:  # a line cut by the limit (`origtime=17` of a longer value) is no line
        text = text[: text.rfind(b"\n") + 1]
    return status, text


def _by_stem(names: Iterable[bytes]) -> dict[bytes, set[bytes]]:
    """A folder's message files by message (msgNNNN); other names are left out."""
    groups: dict[bytes, set[bytes]] = {}
    for name in names:
        stem = _stem(name)
        if stem is not None:
            groups.setdefault(stem, set()).add(name)
    return groups


def _delete(
    fd: int, by_stem: Mapping[bytes, set[bytes]], message: PlannedMessage, cutoff: datetime
) -> tuple[int, str | None, int]:
    """Under the folder lock: unlink one message if it is still the one planned.

    Returns the bytes freed, why the message was not (completely) deleted (None if it was), and
    how many of the files unlinked had another name (HARD_LINKED).
    """
    if message.age is not None and not message.age < cutoff:
        return 0, CHANGED, 0  # a plan made for another cutoff is never applied
    try:
        for name in (message.stem, *(file.name for file in message.files)):
            check_component(name)
    except Skip as skip:
        return 0, skip.reason, 0
    planned = {file.name for file in message.files}
    if any(_stem(name) != message.stem for name in planned):
        return 0, CHANGED, 0
    current = by_stem.get(message.stem, set())
    if not current:
        return 0, _gone(fd, by_stem, message), 0
    if current != planned:
        return 0, CHANGED, 0  # a file came or went: Asterisk is working on this number
    newest: datetime | None = None
    linked: set[bytes] = set()
    for file in message.files:
        try:
            status = os.stat(file.name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return 0, CHANGED, 0
        except OSError:
            return 0, UNREADABLE, 0
        if not _same_file(status, file):
            return 0, CHANGED, 0  # renumbered, moved, or rewritten since planning
        if status.st_nlink > 1:
            linked.add(file.name)
        modified = mtime_age(status)
        newest = modified if newest is None else max(newest, modified)
    if message.aged_by_mtime:
        if newest is None or not newest < cutoff:
            return 0, CHANGED, 0
    else:
        txt = next(file for file in message.files if file.name == message.txt)
        try:
            status, text = _read_txt(fd, message.txt)
        except Skip:
            return 0, CHANGED, 0
        if not _same_file(status, txt) or parse_origtime(text) != message.age:
            return 0, CHANGED, 0
    freed = unlinked_linked = 0
    # Asterisk counts a message by its .txt, so the .txt goes last
    for file in sorted(message.files, key=lambda f: f.name == message.txt):
        try:
            os.unlink(file.name, dir_fd=fd)
        except FileNotFoundError:
            return freed, CHANGED, unlinked_linked
        except OSError:
            return freed, UNREMOVABLE, unlinked_linked
        freed += file.size
        unlinked_linked += file.name in linked
    return freed, None, unlinked_linked


def _same_file(status: os.stat_result, planned: PlannedFile) -> bool:
    return (
        stat.S_ISREG(status.st_mode)
        and status.st_dev == planned.device
        and status.st_ino == planned.inode
        and status.st_size == planned.size
    )


def _gone(fd: int, by_stem: Mapping[bytes, set[bytes]], message: PlannedMessage) -> str:
    """Why a planned message is no longer under its number: renumbered (changed) or deleted."""
    planned = {(file.device, file.inode) for file in message.files}
    for name in itertools.chain.from_iterable(by_stem.values()):
        try:
            status = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue
        if (status.st_dev, status.st_ino) in planned:
            return CHANGED
    return VANISHED


# -- Asterisk's folder lock (main/app.c ast_lock_path) -------------------------------------------


def _lock_by_lockfile(fd: int, wait: float) -> Callable[[], None] | None:
    """Hard-link a unique `.lock-XXXXXXXX` to `.lock`, as Asterisk does; None after `wait`."""
    helper, held = _lock_helper(fd)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                os.link(helper, b".lock", src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
                break
            except FileExistsError:
                if time.monotonic() >= deadline:
                    return None  # held by someone else, maybe long dead: never broken
                time.sleep(_RETRY)
            except OSError:
                raise Skip(UNREMOVABLE) from None
    finally:
        try:
            os.unlink(helper, dir_fd=fd)
        except OSError:
            log.warning("a voicemail lock helper file could not be removed")

    def release() -> None:
        try:
            if _names(fd, b".lock", held):
                os.unlink(b".lock", dir_fd=fd)
        except FileNotFoundError:
            pass
        except OSError:
            log.error(
                "a voicemail folder lock could not be released; Asterisk cannot store "
                "messages in that folder until its .lock is removed"
            )

    return release


def _lock_helper(fd: int) -> tuple[bytes, os.stat_result]:
    for _ in range(8):
        name = b".lock-" + secrets.token_hex(4).encode("ascii")
        try:
            helper_fd = os.open(
                name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd
            )
        except FileExistsError:
            continue
        except OSError:
            raise Skip(UNREMOVABLE) from None  # no write permission: nothing to delete either
        try:
            return name, os.fstat(helper_fd)
        finally:
            os.close(helper_fd)
    raise Skip(UNREMOVABLE)


def _lock_by_flock(fd: int, wait: float) -> Callable[[], None] | None:
    """`flock` on `<folder>/lock`, created if missing as Asterisk does; None after `wait`."""
    deadline = time.monotonic() + wait
    while True:
        lock_fd, created = _open_lock_file(fd)
        release: Callable[[], None] | None = None
        try:
            if not _flock_until(lock_fd, deadline):
                return None
            held = os.fstat(lock_fd)
            # Asterisk removes `lock` when it unlocks: only the file the name still names counts.
            if _names(fd, b"lock", held):
                release = _flock_release(fd, lock_fd, held, created)
                return release
        except OSError:
            raise Skip(UNREMOVABLE) from None
        finally:
            if release is None:
                os.close(lock_fd)
        if time.monotonic() >= deadline:
            return None


def _flock_until(lock_fd: int, deadline: float) -> bool:
    while True:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_RETRY)


def _names(fd: int, name: bytes, held: os.stat_result) -> bool:
    """Whether `name` in the folder is still the very file `held`."""
    try:
        status = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (status.st_dev, status.st_ino) == (held.st_dev, held.st_ino)


def _open_lock_file(fd: int) -> tuple[int, bool]:
    for _ in range(8):
        try:
            return os.open(b"lock", READ_FLAGS | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=fd), True
        except FileExistsError:
            pass
        except OSError:
            raise Skip(UNREMOVABLE) from None
        try:
            return os.open(b"lock", READ_FLAGS, dir_fd=fd), False
        except FileNotFoundError:
            continue  # removed in between: create it
        except OSError:
            raise Skip(UNREMOVABLE) from None
    raise Skip(UNREMOVABLE)


def _flock_release(
    fd: int, lock_fd: int, held: os.stat_result, created: bool
) -> Callable[[], None]:
    def release() -> None:
        try:
            # A lock file found there is left as it was; one this lock created goes again.
            if created and _names(fd, b"lock", held):
                os.unlink(b"lock", dir_fd=fd)
        except OSError:
            pass
        finally:
            os.close(lock_fd)  # closing the last descriptor releases the flock

    return release


# -- Asterisk manager interface ------------------------------------------------------------------


class _AmiFailure(Exception):
    """The lamps could not be refreshed; `reason` names no mailbox and no secret."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _ami_refresh(ami: AmiConfig, mailboxes: Sequence[tuple[bytes, ...]]) -> int:
    """Log in to AMI, send VoicemailRefresh for each (context, mailbox), log off.

    Returns how many refreshes Asterisk refused; raises _AmiFailure when it cannot be asked.
    """
    secret = _ami_secret(ami)
    if not _AMI_NAME.fullmatch(ami.username):
        raise _AmiFailure("ami.username must be one word of printable ASCII")
    try:
        with socket.create_connection((ami.host, ami.port), timeout=ami.timeout) as connection:
            connection.settimeout(ami.timeout)
            with connection.makefile("rb") as replies:
                session = _AmiSession(connection, replies)
                session.banner()
                login = [("Action", "Login"), ("Username", ami.username), ("Secret", secret)]
                reply = session.send([*login, ("Events", "off")])
                if reply.get("response", "").lower() != "success":
                    raise _AmiFailure("login refused; check ami.username and the AMI secret")
                refused = 0
                for number, (context, mailbox) in enumerate(mailboxes, start=1):
                    names = [name.decode("ascii", "replace") for name in (context, mailbox)]
                    if not all(_AMI_NAME.fullmatch(name) for name in names):
                        refused += 1  # a folder name that could smuggle a line into AMI
                        continue
                    where = [("Context", names[0]), ("Mailbox", names[1])]
                    action = [("Action", "VoicemailRefresh"), *where, ("ActionID", str(number))]
                    reply = session.send(action)
                    if reply.get("response", "").lower() != "success":
                        refused += 1
                with contextlib.suppress(_AmiFailure):  # refreshed already; a rude goodbye is fine
                    session.send([("Action", "Logoff")])
                return refused
    except TimeoutError:
        raise _AmiFailure(f"no answer within {ami.timeout:g}s (ami.timeout)") from None
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise _AmiFailure(f"cannot talk to {ami.host}:{ami.port} ({reason})") from None


class _AmiSession:
    """The AMI line protocol: `Key: Value` lines, each block ended by an empty line."""

    _LINE_LIMIT = 8192
    _BLOCK_LIMIT = 200  # lines

    def __init__(self, connection: socket.socket, replies: BinaryIO) -> None:
        self._connection = connection
        self._replies = replies

    def banner(self) -> None:
        line = self._replies.readline(self._LINE_LIMIT)
        if not line.startswith(b"Asterisk Call Manager"):
            raise _AmiFailure("the port does not speak the Asterisk manager protocol")

    def send(self, fields: Iterable[tuple[str, str]]) -> dict[str, str]:
        """Send one action and return its response block, passing over events."""
        message = "".join(f"{key}: {value}\r\n" for key, value in fields) + "\r\n"
        self._connection.sendall(message.encode("utf-8"))
        while True:
            block = self._block()
            if "response" in block:
                return block

    def _block(self) -> dict[str, str]:
        block: dict[str, str] = {}
        for _ in range(self._BLOCK_LIMIT):
            line = self._replies.readline(self._LINE_LIMIT)
            if not line:
                raise _AmiFailure("Asterisk closed the connection")
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if not text:
                if block:
                    return block
                continue
            key, colon, value = text.partition(":")
            if colon:
                block.setdefault(key.strip().lower(), value.strip())
        raise _AmiFailure("an AMI reply too long to be one")


def _ami_secret(ami: AmiConfig) -> str:
    path = ami.secret_file
    if path is None:
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if not credentials:
            raise _AmiFailure(
                "secret missing: set ami.secret_file or pass the systemd credential 'ami'"
            )
        path = Path(credentials) / "ami"
    try:
        secret = read_secret(path, "the AMI secret file")
    except CredentialError as error:
        raise _AmiFailure(str(error)) from None
    if not secret or "\n" in secret or "\r" in secret:
        raise _AmiFailure(f"secret file {path} must hold the secret on one line")
    return secret
