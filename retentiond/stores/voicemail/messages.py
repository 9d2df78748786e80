"""The messages of an Asterisk voicemail spool: what a message is and what its msgNNNN.txt says.

A message is `msgNNNN.<ext>` in every recorded format plus FreePBX's `msgNNNN_*.*` siblings, aged
by `origtime` in `msgNNNN.txt` and naming a person by its caller id or its mailbox. The `.txt` is
read tolerantly (comments, sections, unparsable lines passed over), but a value that is no epoch
seconds, or a key named twice, makes it malformed: never guessed, kept. Mailbox numbers and file
names are personal data: they never show in a repr.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from retentiond.policy.subjects import Subject
from retentiond.stores.fs.folders import (
    NOT_REGULAR_FILE,
    OTHER_FILESYSTEM,
    READ_FLAGS,
    SYMLINK,
    UNREADABLE,
    VANISHED,
    Skip,
    entries,
    list_folder,
    open_folder,
)

_MESSAGE_NAME = re.compile(rb"(msg[0-9]{4})(?:\..*|_.*\..*)", re.DOTALL)
_TXT_LIMIT = 64 * 1024  # an Asterisk msgNNNN.txt is a few hundred bytes
_ORIGTIME = re.compile(rb"[0-9]{1,12}")
_CALLERID_LIMIT = 256  # characters of a caller id worth matching; Asterisk's own limit is 80


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


def subfolders(
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


def message_stem(name: bytes) -> bytes | None:
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


def read_txt(fd: int, name: bytes, device: int | None = None) -> tuple[os.stat_result, bytes]:
    """The status and (first 64 KiB of) text of a msgNNNN.txt, opened without following a link.

    Its status is the open file's own, so the text is the one of the file it describes. With
    `device`, a file on another filesystem (mounted over the name) is OTHER_FILESYSTEM, unread.
    """
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
        if device is not None and status.st_dev != device:
            raise Skip(OTHER_FILESYSTEM)
        chunks: list[bytes] = []
        size = 0
        # Up to the size it had when opened (one read for a whole .txt), or an empty read.
        wanted = min(_TXT_LIMIT, max(status.st_size, 1))
        while size < wanted:
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


def prefetch_txts(fd: int, names: Iterable[bytes], device: int) -> None:
    """Ask the disk for the contents of a folder's msgNNNN.txt files at once, without waiting.

    Read one after the other from a cold cache, each .txt costs the disk a round trip; asked
    for together (POSIX_FADV_WILLNEED starts the read and returns), they come in one queue.
    Opened as read_txt opens them (no link followed, no FIFO waited for), and only a regular
    file on the root's filesystem is asked for; anything else is passed over here, and
    read_txt finds and counts why.
    """
    for name in names:
        try:
            txt_fd = os.open(name, READ_FLAGS, dir_fd=fd)
        except OSError:
            continue
        try:
            status = os.fstat(txt_fd)
            if stat.S_ISREG(status.st_mode) and status.st_dev == device:
                os.posix_fadvise(txt_fd, 0, _TXT_LIMIT, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # only a hint
        finally:
            os.close(txt_fd)


def messages_by_stem(names: Iterable[bytes]) -> dict[bytes, set[bytes]]:
    """A folder's message files by message (msgNNNN); other names are left out."""
    groups: dict[bytes, set[bytes]] = {}
    for name in names:
        stem = message_stem(name)
        if stem is not None:
            groups.setdefault(stem, set()).add(name)
    return groups
