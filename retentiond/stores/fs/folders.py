"""Safe folder handling for the stores that delete files: their root, the folders below, listings.

A path is no promise about what it leads to. Between two system calls anyone who can write to a
folder on the way can swap a folder for a symlink (to /etc, to another mailbox's spool) or mount
something there, and a delete by path would follow. So a store opens its root once, by path,
refusing a symlink, and from then on reaches every folder below from its parent's descriptor,
one name at a time with O_NOFOLLOW, never by path again: a name swapped for a symlink fails to
open instead of being followed, and whatever is reached lies below the root.

A store also stays on its root's filesystem and mount: every folder opened below the root is
checked against the root's device (`RootFolder.device`) and against its parent's mount, so a
mount point is never walked into: a backup disk or a network share (another device), and a bind
mount of a folder on the same filesystem (the same device, another mount), which could bring
any folder of that filesystem, /etc included, below the root. Mounts are told apart by the
mount ID Linux gives each open descriptor (/proc/self/fdinfo); where it cannot be read, only
other filesystems are recognised, and `describe` says so.

What is shared here is the mechanism. What a store counts or raises stays with the store: the
reasons below are the words the file stores count in Survey.skipped and BatchResult.skipped,
each store decides which of them it counts (or translates them into its own, as sql.FileRoot
does), and each words the errors about its root (`RootWording`). Names stay bytes throughout:
they carry phone numbers and caller names in whatever encoding the PBX got them, and are personal
data, so nothing here puts one into an exception or a log line.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol

from retentiond.errors import StoreAbsent, StoreError

# Why an object was left alone, as counted in Survey.skipped and BatchResult.skipped.
SYMLINK = "symlink"
OTHER_FILESYSTEM = "other_filesystem"
MOUNT_POINT = "mount_point"  # a folder mounted below the root, from this filesystem or another
NOT_REGULAR_FILE = "not_regular_file"
UNREADABLE = "unreadable"
CHANGED = "changed"  # differs from what was planned: swapped, replaced, rewritten
VANISHED = "vanished"  # removed by someone else between planning and deleting
UNREMOVABLE = "unremovable"  # unlink refused (permissions, read-only filesystem, a mount point)

# What a batch did besides deleting, as counted in BatchResult.counts. A file with another name
# (a hard link, perhaps outside the root) is deleted like any other: only the name inside the
# root goes, the other name and the content behind it are not the store's to touch, so the
# count tells the operator that the content lives on there.
HARD_LINKED = "hard_linked"

# O_NOFOLLOW: a symlink in a folder's place is refused, never followed (with ENOTDIR on Linux,
# ELOOP elsewhere). O_CLOEXEC: no descriptor leaks into a process the daemon starts.
FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# A file to read, opened from its folder's descriptor: never through a symlink (ELOOP), and
# O_NONBLOCK so that a FIFO planted under a file's name cannot hang the open (regular files
# ignore it).
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Skip(Exception):
    """One object is left alone; `reason` is what gets counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- the root ------------------------------------------------------------------------------------

RootProblem = Literal["missing", "unexaminable", "symlink", "not_a_folder", "unreadable"]

_ROOT_WARNINGS: dict[RootProblem, str] = {
    "missing": "warning: cannot be examined: {reason}",
    "unexaminable": "warning: cannot be examined: {reason}",
    "symlink": "warning: a symlink, which retentiond refuses to follow",
    "not_a_folder": "warning: not a folder",
    "unreadable": "warning: cannot be read",
}


class RootUnfit(Exception):
    """A root that cannot be used: `problem` says how, `reason` is the system's word for why.

    Carries no message of its own: a store words it (`RootWording`), `describe` shows `warning`.
    """

    def __init__(self, problem: RootProblem, reason: str | None = None) -> None:
        super().__init__(problem)
        self.problem: RootProblem = problem
        self.reason = reason

    @property
    def warning(self) -> str:
        """The root's state as `describe` shows it."""
        return _ROOT_WARNINGS[self.problem].format(reason=self.reason)


@dataclass(frozen=True, slots=True)
class RootWording:
    """What a store says when its root cannot be used, one message per `RootProblem`.

    `{root}` stands for the root as the store shows it, `{reason}` for the system's reason. The
    defaults fit a store whose folder is its `root` key; a store replaces what it says otherwise.
    """

    missing: str = "{root} does not exist; create it or fix the store's root"
    unexaminable: str = "{root} cannot be examined ({reason}); fix the store's root"
    symlink: str = (
        "{root} is a symlink and retentiond never follows symlinks; "
        "set the store's root to the folder it points to"
    )
    not_a_folder: str = "{root} is not a folder; fix the store's root"
    unreadable: str = (
        "{root} cannot be read ({reason}); give retentiond's user read and search permission "
        "or fix the store's root"
    )

    def error(self, unfit: RootUnfit, shown: str) -> StoreError:
        """StoreAbsent for a missing root, so that an optional store is passed over; else
        StoreError."""
        templates: dict[RootProblem, str] = {
            "missing": self.missing,
            "unexaminable": self.unexaminable,
            "symlink": self.symlink,
            "not_a_folder": self.not_a_folder,
            "unreadable": self.unreadable,
        }
        message = templates[unfit.problem].format(root=shown, reason=unfit.reason)
        return StoreAbsent(message) if unfit.problem == "missing" else StoreError(message)


def examine_root(path: os.PathLike[str]) -> os.stat_result:
    """The root's own status (lstat); RootUnfit unless it is a folder, and not a symlink to one.

    The root is the one path a store follows by name. A symlink there would let whoever can
    change the link decide where deletes happen; naming the link's target in the config instead
    leaves that decision with the config.
    """
    try:
        status = os.lstat(path)
    except FileNotFoundError as error:
        raise RootUnfit("missing", error.strerror) from None
    except OSError as error:
        raise RootUnfit("unexaminable", error.strerror) from None
    if stat.S_ISLNK(status.st_mode):
        raise RootUnfit("symlink")
    if not stat.S_ISDIR(status.st_mode):
        raise RootUnfit("not_a_folder")
    return status


def open_root(path: os.PathLike[str], *, probe: bool = False) -> int:
    """A descriptor for the examined root; RootUnfit("unreadable") when it cannot be opened.

    O_NOFOLLOW still refuses a symlink swapped in since `examine_root`. With `probe` the root is
    also listed and searched, which every walk below it needs, so that missing permissions fail
    here and not half-way through a run.
    """
    try:
        fd = os.open(path, FOLDER_FLAGS)
    except OSError as error:
        raise RootUnfit("unreadable", error.strerror) from None
    if probe:
        try:
            os.listdir(fd)  # noqa: PTH208 - listing a descriptor, which pathlib cannot
            os.stat(".", dir_fd=fd)  # needs search permission, which every lookup below needs too
        except OSError as error:
            os.close(fd)
            raise RootUnfit("unreadable", error.strerror) from None
    return fd


class RootFolder:
    """A store's root folder, held open by its descriptor between `open` and `close`.

    Everything below the root is reached from `fd`, never by path, so the root being renamed or
    replaced after `open` cannot send the store elsewhere. `device` is the root's filesystem,
    the one the store never leaves.
    """

    def __init__(
        self,
        path: os.PathLike[str],
        wording: RootWording,
        *,
        shown: str | None = None,
        probe: bool = False,
    ) -> None:
        self.path = path
        self.fd: int | None = None
        self.device = 0
        self._wording = wording
        self._shown = str(path) if shown is None else shown
        self._probe = probe

    def open(self) -> None:
        """Open the root, or raise the store's StoreAbsent or StoreError (`RootWording`)."""
        self.close()
        try:
            examine_root(self.path)
            fd = open_root(self.path, probe=self._probe)
        except RootUnfit as unfit:
            raise self._wording.error(unfit, self._shown) from None
        self.fd = fd
        self.device = os.fstat(fd).st_dev

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# -- mounts --------------------------------------------------------------------------------------


def mount_id(fd: int) -> int | None:
    """The ID of the mount an open descriptor lies on; None where Linux does not tell.

    Read from /proc/self/fdinfo, which names the mount of the descriptor itself: no path is
    looked up again, so nothing can be swapped in between. (statx's STATX_MNT_ID says the same,
    but Python has no os.statx before 3.15, and this needs no call into C through ctypes.)
    """
    try:
        info = os.open(f"/proc/self/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = os.read(info, 4096)
    except OSError:
        return None
    finally:
        os.close(info)
    for line in text.splitlines():
        key, _, value = line.partition(b":")
        if key == b"mnt_id":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def mounts_told_apart() -> bool:
    """Whether this system tells each descriptor's mount (see `mount_id`), so that bind mounts
    of the root's own filesystem are recognised."""
    try:
        fd = os.open("/proc/self/fdinfo", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return mount_id(fd) is not None
    finally:
        os.close(fd)


MOUNTS_UNTOLD = (
    "warning: this system does not tell mounts apart (/proc/self/fdinfo has no mnt_id): "
    "folders mounted from other filesystems are left alone, but a bind mount of a folder of "
    "the root's own filesystem is not recognised; mount /proc"
)


# -- below the root ------------------------------------------------------------------------------


def open_folder(name: bytes, parent_fd: int, root_device: int) -> int:
    """Open the subfolder `name` of an open folder, or raise Skip.

    Never follows a symlink and never leaves the root's filesystem or mount: a name that is no
    longer a folder (swapped for a symlink or a file since it was seen) is CHANGED, a folder on
    another filesystem is OTHER_FILESYSTEM, one mounted from this filesystem (a bind mount) is
    MOUNT_POINT. Gone: VANISHED; anything else: UNREADABLE.
    """
    try:
        fd = os.open(name, FOLDER_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        raise Skip(VANISHED) from None
    except PermissionError:
        raise Skip(UNREADABLE) from None
    except OSError as error:
        # ELOOP: now a symlink; ENOTDIR: no longer a folder. Anything else: cannot be read.
        swapped = error.errno in (errno.ELOOP, errno.ENOTDIR)
        raise Skip(CHANGED if swapped else UNREADABLE) from None
    if os.fstat(fd).st_dev != root_device:
        os.close(fd)
        raise Skip(OTHER_FILESYSTEM)
    if mount_id(fd) != mount_id(parent_fd):
        os.close(fd)
        raise Skip(MOUNT_POINT)
    return fd


class FolderChain:
    """The open folders from the root down to the one last asked for: at most one fd per level.

    Each level is opened from the one above with `open_folder`, so a path planned earlier is
    followed again without trusting it. Batches come in walk order, so consecutive files share
    folders and each is opened once. Used as a context manager, which closes them all.
    """

    def __init__(self, root_fd: int, root_device: int) -> None:
        self._root_fd = root_fd
        self._root_device = root_device
        self._names: list[bytes] = []
        self._fds: list[int] = []

    def open(self, folder: Sequence[bytes]) -> int:
        """The descriptor of `folder` (names from the root down); raises Skip like open_folder."""
        shared = 0
        while shared < min(len(folder), len(self._names)) and folder[shared] == self._names[shared]:
            shared += 1
        self._close_below(shared)
        for name in folder[shared:]:
            fd = open_folder(name, self._innermost(), self._root_device)
            self._names.append(name)
            self._fds.append(fd)
        return self._innermost()

    def _innermost(self) -> int:
        return self._fds[-1] if self._fds else self._root_fd

    def _close_below(self, depth: int) -> None:
        while len(self._fds) > depth:
            os.close(self._fds.pop())
            self._names.pop()

    def __enter__(self) -> FolderChain:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._close_below(0)


class PlannedEntry(Protocol):
    """What a store planned of a file to delete: enough to know it again."""

    @property
    def device(self) -> int: ...

    @property
    def inode(self) -> int: ...

    @property
    def size(self) -> int: ...


def same_file(status: os.stat_result, planned: PlannedEntry) -> bool:
    """Whether `status` is still the regular file planned, at its planned size (a growing file
    is still being written)."""
    return (
        stat.S_ISREG(status.st_mode)
        and status.st_dev == planned.device
        and status.st_ino == planned.inode
        and status.st_size == planned.size
    )


def check_component(name: bytes) -> None:
    """A payload names a single entry of a folder: never a path, `.` or `..` (else CHANGED).

    Plans are made by the store itself, but checking costs nothing and keeps a corrupted or
    forged plan from reaching outside the folder it names.
    """
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise Skip(CHANGED)


def sorted_names(fd: int, order: Callable[[bytes], Any] | None = None) -> list[bytes]:
    """The names in an open folder, as bytes (any encoding), sorted by `order` or by name.

    Raises OSError when the folder cannot be listed.
    """
    names = os.listdir(fd)
    return sorted((os.fsencode(name) for name in names), key=order)


def list_folder(
    fd: int, skipped: Counter[str], order: Callable[[bytes], Any] | None = None
) -> Iterator[bytes]:
    """`sorted_names`, or none and UNREADABLE counted when the folder cannot be listed.

    Name order walks date folders oldest first, so batches cover contiguous days.
    """
    try:
        return iter(sorted_names(fd, order))
    except OSError:
        skipped[UNREADABLE] += 1
        return iter(())


def entries(
    folder_fd: int, names: Iterable[bytes], skipped: Counter[str]
) -> Iterator[tuple[bytes, os.stat_result]]:
    """Each of `names` still in the folder, with its own status: a symlink's, never its target's.

    A name removed since the folder was listed is passed over. A status that cannot be read is
    counted as UNREADABLE and ends the folder: without search permission on it, every other
    name would fail the same way.
    """
    for name in names:
        try:
            status = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError:
            skipped[UNREADABLE] += 1
            return
        yield name, status
