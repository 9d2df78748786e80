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

import itertools
import os
import stat
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from functools import partial

import structlog

from retentiond.config.model import VoicemailStoreConfig
from retentiond.config.roots import system_root_warning
from retentiond.policy.rules import NO_HOLDS, Holds
from retentiond.policy.subjects import Subject
from retentiond.stores.base import Batch, BatchResult, Found, Store, Survey
from retentiond.stores.fs.ages import mtime_age
from retentiond.stores.fs.folders import (
    CHANGED,
    HARD_LINKED,
    MOUNT_POINT,
    MOUNTS_UNTOLD,
    NOT_REGULAR_FILE,
    OTHER_FILESYSTEM,
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
    examine_root,
    list_folder,
    mounts_told_apart,
    open_root,
    sorted_names,
)
from retentiond.stores.fs.overlap import Overlap
from retentiond.stores.voicemail.ami import AmiFailure, ami_refresh, ami_secret
from retentiond.stores.voicemail.deleting import delete_message
from retentiond.stores.voicemail.locks import lock_by_flock, lock_by_lockfile
from retentiond.stores.voicemail.messages import (
    PlannedFile,
    PlannedMessage,
    VoicemailPlan,
    message_stem,
    messages_by_stem,
    parse_callerids,
    parse_origtime,
    prefetch_txts,
    read_txt,
    subfolders,
)

log = structlog.get_logger()

# How a message was aged or why it was left alone, as counted in Survey.skipped and
# BatchResult.skipped (besides the folders module's symlink, unreadable, changed, vanished, ...).
# msgNNNN.txt without a usable origtime, or naming a key twice: never guessed, kept
MALFORMED_TXT = "malformed_txt"
AGED_BY_MTIME = "aged_by_mtime"  # no msgNNNN.txt: aged by its newest file (reported, not kept)
LOCKED = "locked"  # Asterisk held the folder lock longer than lock_wait: left for a later run

_HOLD_LIMIT = 0.5  # seconds one folder lock is held before Asterisk gets a turn
_TURN = 0.01  # seconds the folder is left to Asterisk between two holds
_ROUND_PER_THREAD = 4  # messages per thread handed over at once under a hold
_STALE_LOCK = timedelta(minutes=10)  # a `.lock` this old is a crashed process, not a recording

# The default wording, but a missing spool says where Asterisk keeps it.
_ROOT_WORDING = RootWording(
    missing="{root} does not exist; fix the store's root (Asterisk's voicemail spool, "
    "usually /var/spool/asterisk/voicemail) or mark the store optional"
)


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
        self.batch_size = config.batch_size
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
                ami_secret(ami)
            except AmiFailure as failure:
                lines.append(f"warning: AMI {failure.reason}")
        return lines

    def survey(self, cutoff: datetime, holds: Holds = NO_HOLDS) -> Survey:
        skipped: Counter[str] = Counter()
        held_by: Counter[str] = Counter()
        total = expired = expired_bytes = held = 0
        oldest: datetime | None = None
        for found in self._walk(skipped, prefetch=True):
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
        with (
            FolderChain(root_fd, self._root.device) as chain,
            Overlap(self.config.unlink_threads) as overlap,
        ):
            for folder, messages in itertools.groupby(plan.messages, key=lambda m: m.folder):
                self._apply_folder(chain, folder, list(messages), cutoff, tally, overlap)
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

    def _walk(
        self, skipped: Counter[str], *, prefetch: bool = False
    ) -> Iterator[PlannedMessage | str]:
        """Every message in spool order: dated ones as plans, the others as the reason why not.

        One folder's names are in memory at a time; folder-level blind spots go to `skipped`.
        With `prefetch` (the survey, the run's first walk, on a cache that may be cold), each
        folder's .txt files are asked of the disk together before they are read one by one.
        """
        root_fd = self._require_open()
        device = self._root.device
        for context, context_fd in subfolders(root_fd, device, skipped):
            for mailbox, mailbox_fd in subfolders(context_fd, device, skipped):
                # tmp/ holds recordings in progress; Asterisk renames them into a folder
                for folder, folder_fd in subfolders(mailbox_fd, device, skipped, leave=b"tmp"):
                    yield from self._messages(
                        (context, mailbox, folder), folder_fd, skipped, prefetch=prefetch
                    )

    def _messages(
        self, folder: tuple[bytes, ...], fd: int, skipped: Counter[str], *, prefetch: bool
    ) -> Iterator[PlannedMessage | str]:
        groups: dict[bytes, list[bytes]] = {}
        for name in list_folder(fd, skipped):
            stem = message_stem(name)
            if stem is not None:
                groups.setdefault(stem, []).append(name)
        if prefetch:
            txts = [stem + b".txt" for stem in groups if stem + b".txt" in groups[stem]]
            prefetch_txts(fd, txts, self._root.device)
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
        txt = stem + b".txt"
        text: bytes | None = None
        for name in names:
            if name == txt:
                # Its status from the same open as its text: one lookup, and they agree.
                try:
                    status, text = read_txt(fd, txt, self._root.device)
                except Skip as skip:
                    if skip.reason == VANISHED:
                        continue
                    return skip.reason
            else:
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
        if text is None:
            return PlannedMessage(folder, stem, tuple(files), newest, aged_by_mtime=True)
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
        overlap: Overlap,
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
        # Rounds short enough that a hold ends near _HOLD_LIMIT, long enough to keep threads busy
        round_size = overlap.threads * _ROUND_PER_THREAD
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
                    by_stem = messages_by_stem(sorted_names(fd))
                except OSError:
                    tally.skipped[UNREADABLE] += len(pending)
                    return
                started = time.monotonic()
                task = partial(delete_message, fd, by_stem, cutoff=cutoff)
                while pending and time.monotonic() - started < _HOLD_LIMIT:
                    # A few messages at once (fs/overlap.py), each checked and unlinked in its
                    # own task, all under this hold of the lock, the folder's fd open throughout.
                    step = [pending.popleft() for _ in range(min(len(pending), round_size))]
                    for message, (freed, reason, linked) in zip(
                        step, overlap.run(task, step), strict=True
                    ):
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
            return lock_by_flock(fd, self.config.lock_wait)
        return lock_by_lockfile(fd, self.config.lock_wait)

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
            refused = ami_refresh(ami, sorted(mailboxes))
        except AmiFailure as failure:
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
            contexts = sum(1 for _ in subfolders(fd, os.fstat(fd).st_dev, Counter()))
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
