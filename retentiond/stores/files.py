"""A folder tree of files (call recordings, faxes, exports), purged by age without following links.

Every folder is reached from the root's file descriptor one component at a time with O_NOFOLLOW,
so no symlink, swapped folder or mount point can send a delete outside the root. Names stay bytes:
PBX file names carry phone numbers and caller names in whatever encoding the caller ID had, and
they are personal data, so they never appear in a log line, an exception or a result.
"""

from __future__ import annotations

import calendar
import errno
import os
import re
import stat
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from types import TracebackType

import structlog

from retentiond.config.model import ConnectionConfig, FilesStoreConfig
from retentiond.errors import StoreAbsent, StoreError
from retentiond.rules import end_of_day, latest_instant
from retentiond.stores.base import Batch, BatchResult, Store, Survey

log = structlog.get_logger()

# Why an object was left alone, as counted in Survey.skipped and BatchResult.skipped.
SYMLINK = "symlink"
OTHER_FILESYSTEM = "other_filesystem"
NOT_REGULAR_FILE = "not_regular_file"
UNREADABLE = "unreadable"
UNDATED = "undated"
LOCK_FILE = "lock_file"
PROTECTED = "protected"  # voicemail greetings and tmp/ folders (DESIGN.md safety rule 5)
CHANGED = "changed"  # differs from what was planned: swapped, replaced, rewritten
VANISHED = "vanished"  # removed by someone else between planning and deleting
UNREMOVABLE = "unremovable"  # unlink refused (permissions, read-only filesystem)

_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# FreePBX `...-YYYYMMDD-HHMMSS-<uniqueid>`, 3CX `..._YYYYMMDDhhmmss(<id>)`, or a bare `YYYYMMDD`.
_FREEPBX_TIME = re.compile(rb"(?<![0-9])([0-9]{8})-([0-9]{6})(?![0-9])")
_COMPACT_TIME = re.compile(rb"(?<![0-9])([0-9]{14})(?![0-9])")
_DAY_ONLY = re.compile(rb"(?<![0-9])([0-9]{8})(?![0-9])")


@dataclass(frozen=True, slots=True)
class PlannedFile:
    """One file a batch will delete, as it was when planned. Its names never show in a repr."""

    folder: tuple[bytes, ...] = field(repr=False)  # folder names from the root down
    name: bytes = field(repr=False)
    device: int
    inode: int
    size: int
    age: datetime


@dataclass(frozen=True, slots=True)
class _Found:
    """A matching regular file met on a walk."""

    folder: tuple[bytes, ...]
    name: bytes
    status: os.stat_result


class _Skip(Exception):
    """One object is left alone; `reason` is what gets counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FilesStore(Store):
    """Files under one root, selected by glob patterns, aged by folder date, name or mtime."""

    kind = "files"
    unit = "files"

    def __init__(
        self, config: FilesStoreConfig, zone: tzinfo, references: ConnectionConfig | None = None
    ) -> None:
        self.config = config
        self.references = references
        self.zone = zone
        self.root = config.root
        self.label = str(config.root)
        self.pause = config.pause
        self._patterns = [_compile_match(pattern) for pattern in config.match]
        self._root_fd: int | None = None
        self._root_device = 0

    # -- Store interface -------------------------------------------------------------------------

    def open(self) -> None:
        self.close()
        root = self.root
        try:
            status = os.lstat(root)
        except FileNotFoundError:
            raise StoreAbsent(f"{root} does not exist; create it or fix the store's root") from None
        except OSError as error:
            raise StoreError(
                f"{root} cannot be examined ({error.strerror}); fix the store's root"
            ) from None
        if stat.S_ISLNK(status.st_mode):
            raise StoreError(
                f"{root} is a symlink and retentiond never follows symlinks; "
                "set the store's root to the folder it points to"
            )
        if not stat.S_ISDIR(status.st_mode):
            raise StoreError(f"{root} is not a folder; fix the store's root")
        fd = _open_root(root)
        self._root_fd = fd
        self._root_device = os.fstat(fd).st_dev

    def close(self) -> None:
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None

    def describe(self) -> list[str]:
        config = self.config
        lines = [
            f"root: {self.root} ({self._root_state()})",
            f"match: {', '.join(config.match)} (relative to the root, case-sensitive)",
            f"age from: {self._age_source()}",
            f"batches of up to {config.batch_size} files, {config.pause:g}s apart",
            "never follows symlinks, stays on the root's filesystem, leaves lock files alone",
        ]
        if config.age_from == "mtime":
            lines.append(
                "note: copying or converting a recording resets its mtime; "
                "path_date or filename_date is steadier where the PBX writes them"
            )
        return lines

    def survey(self, cutoff: datetime) -> Survey:
        skipped: Counter[str] = Counter()
        total = expired = expired_bytes = 0
        oldest: datetime | None = None
        for found in self._walk(skipped):
            total += 1
            age = self._age(found)
            if age is None:
                skipped[UNDATED] += 1
                continue
            oldest = age if oldest is None else min(oldest, age)
            if age < cutoff:
                expired += 1
                expired_bytes += found.status.st_size
        self._warn_if_incomplete(skipped)
        return Survey(
            unit=self.unit,
            total=total,
            expired=expired,
            oldest=oldest,
            expired_bytes=expired_bytes,
            skipped=dict(sorted(skipped.items())),
        )

    def batches(self, cutoff: datetime) -> Iterator[Batch]:
        # The survey reports what a walk skips; a batch plan only carries what it will delete.
        skipped: Counter[str] = Counter()
        planned: list[PlannedFile] = []
        number = 0
        for found in self._walk(skipped):
            age = self._age(found)
            if age is None or not age < cutoff:
                continue
            planned.append(_plan(found, age))
            if len(planned) == self.config.batch_size:
                number += 1
                yield self._batch(number, planned)
                planned = []
        if planned:
            yield self._batch(number + 1, planned)

    def apply(self, batch: Batch, cutoff: datetime) -> BatchResult:
        root_fd = self._require_open()
        skipped: Counter[str] = Counter()
        deleted_days: list[date] = []
        deleted_bytes = 0
        touched_folders: set[tuple[bytes, ...]] = set()
        with _FolderChain(root_fd, self._root_device) as chain:
            for planned in batch.payload:
                try:
                    deleted_bytes += self._delete(chain, planned, cutoff)
                except _Skip as skip:
                    skipped[skip.reason] += 1
                    continue
                deleted_days.append(self._day(planned.age))
                touched_folders.add(planned.folder)
            # Deepest first, so a day folder goes before the month folder that holds it.
            for folder in sorted(touched_folders, reverse=True):
                _remove_emptied_date_folders(chain, folder)
        if skipped[UNREMOVABLE]:
            log.warning("files could not be removed", store=self.label, count=skipped[UNREMOVABLE])
        return BatchResult(
            deleted=len(deleted_days),
            span=(min(deleted_days), max(deleted_days)) if deleted_days else None,
            bytes=deleted_bytes,
            skipped=dict(sorted(skipped.items())),
        )

    # -- walking ---------------------------------------------------------------------------------

    def _walk(self, skipped: Counter[str]) -> Iterator[_Found]:
        """Matching regular files, depth first in name order, holding one open folder per level."""
        root_fd = self._require_open()
        stack = [_Listing(root_fd, (), _list_folder(root_fd, skipped), owned=False)]
        try:
            while stack:
                listing = stack[-1]
                name = next(listing.names, None)
                if name is None:
                    stack.pop().close()
                    continue
                try:
                    status = os.stat(name, dir_fd=listing.fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed since the folder was listed
                except OSError:
                    skipped[UNREADABLE] += 1
                    listing.names = iter(())  # no search permission: the rest fails the same way
                    continue
                mode = status.st_mode
                if stat.S_ISLNK(mode):
                    skipped[SYMLINK] += 1
                elif stat.S_ISDIR(mode):
                    child = self._enter(listing, name, status, skipped)
                    if child is not None:
                        stack.append(child)
                elif self._matches((*listing.folder, name)):
                    if _is_lock_file(name):
                        skipped[LOCK_FILE] += 1
                    elif _is_greeting(name):
                        skipped[PROTECTED] += 1
                    elif not stat.S_ISREG(mode):
                        skipped[NOT_REGULAR_FILE] += 1
                    else:
                        yield _Found(listing.folder, name, status)
        finally:
            for listing in stack:
                listing.close()

    def _enter(
        self, parent: _Listing, name: bytes, status: os.stat_result, skipped: Counter[str]
    ) -> _Listing | None:
        if status.st_dev != self._root_device:
            skipped[OTHER_FILESYSTEM] += 1
            return None
        if name == b"tmp":  # Asterisk records into tmp/ and renames into place when done
            skipped[PROTECTED] += 1
            return None
        try:
            fd = _open_folder(name, parent.fd, self._root_device)
        except _Skip as skip:
            if skip.reason != VANISHED:
                skipped[skip.reason] += 1
            return None
        return _Listing(fd, (*parent.folder, name), _list_folder(fd, skipped), owned=True)

    def _matches(self, relative: tuple[bytes, ...]) -> bool:
        # Patterns are text; surrogateescape keeps undecodable bytes matchable by `*` and `?`.
        path = os.fsdecode(b"/".join(relative))
        return any(pattern.fullmatch(path) for pattern in self._patterns)

    # -- ages ------------------------------------------------------------------------------------

    def _age(self, found: _Found) -> datetime | None:
        if self.config.age_from == "mtime":
            return mtime_age(found.status)
        if self.config.age_from == "path_date":
            return path_age(found.folder, self.zone)
        return filename_age(found.name, self.zone)

    def _day(self, age: datetime) -> date:
        return age.astimezone(self.zone).date()

    def _batch(self, number: int, planned: list[PlannedFile]) -> Batch:
        days = [self._day(file.age) for file in planned]
        return Batch(
            number=number, planned=len(planned), span=(min(days), max(days)), payload=tuple(planned)
        )

    # -- deleting --------------------------------------------------------------------------------

    def _delete(self, chain: _FolderChain, planned: PlannedFile, cutoff: datetime) -> int:
        """Unlink one planned file if it is still the file planned; its size, or raise _Skip."""
        if not planned.age < cutoff:
            raise _Skip(CHANGED)  # a plan made for another cutoff is never applied
        for component in (*planned.folder, planned.name):
            _check_component(component)
        folder_fd = chain.open(planned.folder)
        try:
            status = os.stat(planned.name, dir_fd=folder_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise _Skip(VANISHED) from None
        except OSError:
            raise _Skip(UNREADABLE) from None
        if not self._still_planned(status, planned, cutoff):
            raise _Skip(CHANGED)
        try:
            os.unlink(planned.name, dir_fd=folder_fd)
        except FileNotFoundError:
            raise _Skip(VANISHED) from None
        except OSError:
            raise _Skip(UNREMOVABLE) from None
        return status.st_size

    def _still_planned(
        self, status: os.stat_result, planned: PlannedFile, cutoff: datetime
    ) -> bool:
        same_file = (
            stat.S_ISREG(status.st_mode)
            and status.st_dev == planned.device
            and status.st_ino == planned.inode
            and status.st_size == planned.size  # a growing file is still being recorded
        )
        if not same_file:
            return False
        return self.config.age_from != "mtime" or mtime_age(status) < cutoff

    # -- helpers ---------------------------------------------------------------------------------

    def _require_open(self) -> int:
        if self._root_fd is None:
            raise RuntimeError("FilesStore used before open()")  # a bug in the caller
        return self._root_fd

    def _root_state(self) -> str:
        try:
            status = os.lstat(self.root)
        except OSError as error:
            return f"warning: cannot be examined: {error.strerror}"
        if stat.S_ISLNK(status.st_mode):
            return "warning: a symlink, which retentiond refuses to follow"
        if not stat.S_ISDIR(status.st_mode):
            return "warning: not a folder"
        try:
            os.close(_open_root(self.root))
        except StoreError:
            return "warning: cannot be read"
        return f"readable, filesystem device {os.major(status.st_dev)}:{os.minor(status.st_dev)}"

    def _age_source(self) -> str:
        zone = getattr(self.zone, "key", None) or str(self.zone)
        if self.config.age_from == "path_date":
            return (
                f"path_date: the YYYY/MM/DD folders, a file as young as the end of its day ({zone})"
            )
        if self.config.age_from == "filename_date":
            return (
                "filename_date: the time in the file name (YYYYMMDD-HHMMSS or YYYYMMDDhhmmss), "
                f"wall time in {zone}"
            )
        return "mtime: the file's modification time (never access or change time)"

    def _warn_if_incomplete(self, skipped: Counter[str]) -> None:
        blind_spots = {reason: skipped[reason] for reason in (UNREADABLE, OTHER_FILESYSTEM)}
        if any(blind_spots.values()):
            log.warning("files store could not look everywhere", store=self.label, **blind_spots)


# -- folders -------------------------------------------------------------------------------------


@dataclass
class _Listing:
    """One open folder on a walk and the names in it still to visit."""

    fd: int
    folder: tuple[bytes, ...]
    names: Iterator[bytes]
    owned: bool

    def close(self) -> None:
        if self.owned:
            os.close(self.fd)
            self.owned = False


class _FolderChain:
    """The open folders from the root down to the one last asked for: at most one fd per level.

    Batches come in walk order, so consecutive files share folders and each is opened once.
    """

    def __init__(self, root_fd: int, root_device: int) -> None:
        self._root_fd = root_fd
        self._root_device = root_device
        self._names: list[bytes] = []
        self._fds: list[int] = []

    def open(self, folder: Sequence[bytes]) -> int:
        shared = 0
        while shared < min(len(folder), len(self._names)) and folder[shared] == self._names[shared]:
            shared += 1
        self._close_below(shared)
        for name in folder[shared:]:
            fd = _open_folder(name, self._innermost(), self._root_device)
            self._names.append(name)
            self._fds.append(fd)
        return self._innermost()

    def _innermost(self) -> int:
        return self._fds[-1] if self._fds else self._root_fd

    def _close_below(self, depth: int) -> None:
        while len(self._fds) > depth:
            os.close(self._fds.pop())
            self._names.pop()

    def __enter__(self) -> _FolderChain:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._close_below(0)


def _open_root(root: os.PathLike[str]) -> int:
    try:
        fd = os.open(root, _FOLDER_FLAGS)
    except OSError as error:
        raise StoreError(
            f"{root} cannot be read ({error.strerror}); give retentiond's user read and search "
            "permission or fix the store's root"
        ) from None
    try:
        os.listdir(fd)  # noqa: PTH208 - listing a descriptor, which pathlib cannot
        os.stat(".", dir_fd=fd)  # needs search permission, which every lookup below needs too
    except OSError as error:
        os.close(fd)
        raise StoreError(
            f"{root} cannot be read ({error.strerror}); give retentiond's user read and search "
            "permission or fix the store's root"
        ) from None
    return fd


def _open_folder(name: bytes, parent_fd: int, root_device: int) -> int:
    """Open a subfolder without following a symlink or leaving the root's filesystem."""
    try:
        fd = os.open(name, _FOLDER_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        raise _Skip(VANISHED) from None
    except PermissionError:
        raise _Skip(UNREADABLE) from None
    except OSError as error:
        # ELOOP: now a symlink; ENOTDIR: no longer a folder. Anything else: cannot be read.
        swapped = error.errno in (errno.ELOOP, errno.ENOTDIR)
        raise _Skip(CHANGED if swapped else UNREADABLE) from None
    if os.fstat(fd).st_dev != root_device:
        os.close(fd)
        raise _Skip(OTHER_FILESYSTEM)
    return fd


def _list_folder(fd: int, skipped: Counter[str]) -> Iterator[bytes]:
    try:
        names = os.listdir(fd)
    except OSError:
        skipped[UNREADABLE] += 1
        return iter(())
    # Name order walks date folders oldest first, so batches cover contiguous days.
    return iter(sorted(os.fsencode(name) for name in names))


def _remove_emptied_date_folders(chain: _FolderChain, folder: tuple[bytes, ...]) -> None:
    """Remove the YYYY/MM/DD folders a batch emptied, upwards, up to the first non-empty one."""
    while folder and folder[-1].isdigit():
        try:
            parent_fd = chain.open(folder[:-1])
        except _Skip:
            return
        try:
            os.rmdir(folder[-1], dir_fd=parent_fd)
        except FileNotFoundError:
            pass  # already gone; its parent may be empty now
        except OSError:
            return  # not empty, or no longer a plain folder: leave it and everything above
        folder = folder[:-1]


def _check_component(name: bytes) -> None:
    """A payload names a single entry of a folder: never a path, `.` or `..`."""
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise _Skip(CHANGED)


def _is_lock_file(name: bytes) -> bool:
    return name in (b".lock", b"lock") or name.startswith(b".lock-")


_GREETINGS = (b"busy", b"unavail", b"greet", b"temp")


def _is_greeting(name: bytes) -> bool:
    """Voicemail greetings (`busy.wav`, `unavail.WAV`, ...): never retention's business."""
    return name.split(b".", 1)[0] in _GREETINGS


def _plan(found: _Found, age: datetime) -> PlannedFile:
    return PlannedFile(
        folder=found.folder,
        name=found.name,
        device=found.status.st_dev,
        inode=found.status.st_ino,
        size=found.status.st_size,
        age=age,
    )


# -- ages ----------------------------------------------------------------------------------------


def mtime_age(status: os.stat_result) -> datetime:
    """The modification time, floored to the microsecond (which never moves it across a cutoff)."""
    return _EPOCH + timedelta(microseconds=status.st_mtime_ns // 1000)


def path_age(folder: Sequence[bytes], zone: tzinfo) -> datetime | None:
    """The end of the day (YYYY/MM/DD) or month (YYYY/MM) named by the folders nearest the file."""
    digits = [name.decode("ascii") if name.isdigit() else "" for name in folder]
    for end in range(len(digits), 0, -1):
        window = ["", "", "", *digits[:end]][-3:]  # the folder and its two parents
        lengths = tuple(len(name) for name in window)
        if lengths == (4, 2, 2):
            year, month, day = window
            return _end_of_day(int(year), int(month), int(day), zone)
        if lengths[1:] == (4, 2):
            year, month = window[1:]
            return _end_of_month(int(year), int(month), zone)
    return None


def filename_age(name: bytes, zone: tzinfo) -> datetime | None:
    """The time stamp in a file name, read as wall time in `zone`.

    A name can hold other digit runs (numbers dialled, unique ids); among valid candidates of the
    most specific form the youngest wins, so a look-alike can only delay a deletion.
    """
    for pattern in (_FREEPBX_TIME, _COMPACT_TIME):
        times = [_wall_time(b"".join(match.groups()), zone) for match in pattern.finditer(name)]
        valid = [time for time in times if time is not None]
        if valid:
            return max(valid)
    days = [_day_digits(match.group(1), zone) for match in _DAY_ONLY.finditer(name)]
    valid = [day for day in days if day is not None]
    return max(valid) if valid else None


def _wall_time(digits: bytes, zone: tzinfo) -> datetime | None:
    text = digits.decode("ascii")
    try:
        wall = datetime(
            int(text[0:4]),
            int(text[4:6]),
            int(text[6:8]),
            int(text[8:10]),
            int(text[10:12]),
            int(text[12:14]),
        )
        return latest_instant(wall, zone)
    except (ValueError, OverflowError):
        return None


def _day_digits(digits: bytes, zone: tzinfo) -> datetime | None:
    text = digits.decode("ascii")
    return _end_of_day(int(text[0:4]), int(text[4:6]), int(text[6:8]), zone)


def _end_of_day(year: int, month: int, day: int, zone: tzinfo) -> datetime | None:
    try:
        return end_of_day(date(year, month, day), zone)
    except (ValueError, OverflowError):
        return None


def _end_of_month(year: int, month: int, zone: tzinfo) -> datetime | None:
    if not 1 <= month <= 12:
        return None
    return _end_of_day(year, month, calendar.monthrange(year, month)[1], zone)


# -- match patterns ------------------------------------------------------------------------------


def _compile_match(pattern: str) -> re.Pattern[str]:
    try:
        return compile_glob(pattern)
    except re.error:
        raise StoreError(
            f"match pattern {pattern!r} is not a valid glob; check its [...] ranges"
        ) from None


def compile_glob(pattern: str) -> re.Pattern[str]:
    """A `match` pattern as a regex over a root-relative path.

    `**` as a whole component spans any number of folders (also none); `*`, `?` and `[...]` stay
    within one name. Case-sensitive, like the filesystem.
    """
    components = pattern.strip("/").split("/")
    parts: list[str] = []
    for index, component in enumerate(components):
        last = index == len(components) - 1
        if component == "**":
            parts.append(".*" if last else "(?:[^/]*/)*")
        else:
            parts.append(_component_regex(component) + ("" if last else "/"))
    return re.compile("".join(parts), re.DOTALL)


def _component_regex(component: str) -> str:
    parts: list[str] = []
    index = 0
    while index < len(component):
        char = component[index]
        index += 1
        if char == "*":
            parts.append("[^/]*")
        elif char == "?":
            parts.append("[^/]")
        elif char == "[" and (end := _class_end(component, index)) is not None:
            parts.append(_class_regex(component[index:end]))
            index = end + 1
        else:
            parts.append(re.escape(char))
    return "".join(parts)


def _class_end(component: str, start: int) -> int | None:
    index = start
    if index < len(component) and component[index] in "!^":
        index += 1
    if index < len(component) and component[index] == "]":
        index += 1  # a leading ] is a member, as in fnmatch
    end = component.find("]", index)
    return end if end >= 0 else None


def _class_regex(body: str) -> str:
    negated = body[:1] in ("!", "^")
    if negated:
        body = body[1:]
    members = "".join(char if char == "-" else re.escape(char) for char in body)
    # The lookahead keeps a class (negated or naming "/") from ever spanning two folders.
    return f"(?!/)[^{members}]" if negated else f"(?!/)[{members}]"
