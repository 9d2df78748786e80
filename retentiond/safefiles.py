"""Creating files beside the deletion log (and the metrics textfile) without being redirected.

The log's folder usually belongs to the service user, and root may run retentiond too. A name
retentiond is about to write could then be a symlink, a FIFO or a file planted there by whoever
may write the folder. So every file is made here, and only here, the same way:

- the folder is opened once with O_DIRECTORY|O_NOFOLLOW, and every name is resolved relative
  to that descriptor (a folder swapped for a symlink meanwhile changes nothing);
- a new file is created with O_CREAT|O_EXCL|O_NOFOLLOW under a random temporary name, written
  and synced whole, then given its name in that folder: linked where it must not replace
  anything (keys), renamed over the old file where it replaces one (fingerprints, metrics);
- a folder or file that others may write to, or that belongs to another user while retentiond
  runs as root, is refused (`problems`): no open flag makes writing there safe.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_TEMP_ATTEMPTS = 20


class UnsafePlace(OSError):
    """A folder or file others could use to redirect retentiond's writes; `str` says the fix."""


def open_folder(path: Path) -> int:
    """A descriptor of the folder itself, never of what a symlink in its place points to."""
    try:
        return os.open(path, FOLDER_FLAGS)
    except OSError as error:
        # O_NOFOLLOW|O_DIRECTORY on a symlink: ELOOP, or ENOTDIR on Linux
        if error.errno in (errno.ELOOP, errno.ENOTDIR) and Path(path).is_symlink():
            raise UnsafePlace(
                errno.ELOOP,
                f"{path} is a symbolic link; retentiond does not follow it: use the real "
                f"folder ({os.path.realpath(path)}) instead",
            ) from None
        raise


def open_guarded_folder(path: Path) -> int:
    """`open_folder` for a folder retentiond writes its evidence in: UnsafePlace when
    `problems` finds anything."""
    fd = open_folder(path)
    try:
        require_safe(fd, path, "folder")
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def folder(path: Path, *, guarded: bool = False) -> Iterator[int]:
    """`open_folder` (or `open_guarded_folder`) for a `with` block."""
    fd = open_guarded_folder(path) if guarded else open_folder(path)
    try:
        yield fd
    finally:
        os.close(fd)


def problems(info: os.stat_result, path: Path, what: str) -> list[str]:
    """Why retentiond must not write in (or to) this folder or file, each with the command
    that fixes it; empty when it is safe. `what`: "folder" or "file"."""
    found = []
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        found.append(
            f"the {what} {path} may be written by its group or by others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}): they could plant links that make "
            f"retentiond overwrite other files or the evidence. Fix: chmod go-w {path}"
        )
    if os.geteuid() == 0 and info.st_uid != 0:
        owner = _user(info.st_uid)
        found.append(
            f"the {what} {path} belongs to {owner}, but retentiond runs as root: {owner} could "
            f"make root overwrite any file through it. Run retentiond as {owner} (docs/install.md,"
            f' "Running retentiond as the service does"), or give it to root: chown root {path}'
        )
    return found


def require_safe(fd: int, path: Path, what: str) -> None:
    """Raise UnsafePlace when `problems` finds anything for the open folder or file `fd`."""
    found = problems(os.fstat(fd), path, what)
    if found:
        raise UnsafePlace(errno.EPERM, "; ".join(found))


def create(folder_fd: int, name: str, mode: int, access: int = os.O_WRONLY) -> int:
    """Open a new, empty file `name` in the folder (`access`: O_WRONLY, or O_RDWR|O_APPEND
    for the log), with exactly `mode`. FileExistsError when anything has that name already,
    a symlink included."""
    fd = os.open(name, NEW_FILE_FLAGS | access, mode, dir_fd=folder_fd)
    try:
        os.fchmod(fd, mode)  # whatever the umask
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=folder_fd)
        raise
    return fd


def write_new(folder_fd: int, name: str, data: bytes, mode: int) -> None:
    """Give `data` the name `name`, all at once, unless that name exists (FileExistsError):
    never overwrites, never a half-written file under the final name (keys)."""
    temporary = _written_temporary(folder_fd, name, data, mode)
    try:
        os.link(temporary, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=folder_fd)
    os.fsync(folder_fd)


def replace(folder_fd: int, name: str, data: bytes, mode: int) -> None:
    """Replace `name` by a file holding `data`, atomically: readers see the old or the new
    file, never a mix; a symlink at `name` is replaced, not followed."""
    temporary = _written_temporary(folder_fd, name, data, mode)
    try:
        os.replace(temporary, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=folder_fd)
        raise
    os.fsync(folder_fd)


def read(folder_fd: int, name: str, limit: int) -> bytes:
    """The first `limit` bytes of the regular file `name`; a symlink, FIFO or device there is
    refused (OSError), so reading never blocks or leaves the folder."""
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=folder_fd)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OSError(
                errno.ELOOP,
                f"{name} is a symbolic link, which retentiond does not follow: remove it",
            ) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, f"{name} is not a regular file")
        return os.pread(fd, limit, 0)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, "short write")
        view = view[written:]


def _written_temporary(folder_fd: int, name: str, data: bytes, mode: int) -> str:
    """A new file with `data`, synced, under an unpredictable name beside `name`."""
    for _ in range(_TEMP_ATTEMPTS):
        temporary = f".{name}.{secrets.token_hex(8)}.tmp"
        try:
            fd = create(folder_fd, temporary, mode)
        except FileExistsError:
            continue
        try:
            write_all(fd, data)
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=folder_fd)
            raise
        finally:
            os.close(fd)
        return temporary
    raise OSError(errno.EEXIST, f"no free temporary name for {name}")


def _user(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"uid {uid}"
