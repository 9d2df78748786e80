"""The file side of a csv rewrite: the temporary copy next to the file and the lines Asterisk
appends while the copy is renamed over it.

The copy gets the original's owner, group and mode, is written with O_APPEND, and is named
`.<name>.retentiond-XXXXXXXX`, so a crash before the rename leaves a copy the next rewrite of
that file removes (after `STALE_TEMP`). After the rename, writers that opened the old file just
before are waited for (a read lease, else `QUIET` seconds without change, at most
`WRITER_WAIT`) and their late lines appended to the new file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import stat
import time

import structlog

from retentiond.errors import StoreError
from retentiond.stores.csv.lines import CHUNK
from retentiond.stores.fs.folders import sorted_names

log = structlog.get_logger()

WRITER_WAIT = 5.0  # seconds to wait for writers that opened the old file before the rename
QUIET = 0.1  # without a lease: seconds the old file must stay unchanged
STALE_TEMP = 600.0  # seconds after which a temporary copy is an interrupted rewrite's leftover

_POLL = 0.002
_TEMP_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TEMP_MARK = b".retentiond-"
TEMP_NAME = re.compile(rb"\..+\.retentiond-[0-9a-f]{8}", re.DOTALL)
_TEMP_PREFIX_MAX = 200  # bytes of the original name in a temporary name (NAME_MAX is 255)


def copy_from(fd: int, temp_fd: int, offset: int) -> int:
    """Copy everything from `offset` to the current end verbatim; the new offset."""
    while chunk := os.pread(fd, CHUNK, offset):
        write_all(temp_fd, chunk)
        offset += len(chunk)
    return offset


def carry_late_appends(fd: int, new_fd: int, offset: int) -> int:
    """After the rename: copy what writers that opened the old file still put there.

    Complete lines are copied as they come, a partial line only once its writer is gone, so a
    line is never split around one Asterisk writes to the new file. Returns the bytes carried.
    """
    start = offset
    deadline = time.monotonic() + WRITER_WAIT
    quiet_since = time.monotonic()
    while True:
        chunk = os.pread(fd, CHUNK, offset)
        if chunk:
            quiet_since = time.monotonic()
        end = chunk.rfind(b"\n") + 1
        if end:
            write_all(new_fd, chunk[:end])
            offset += end
        if end and len(chunk) == CHUNK:
            continue  # more to read before judging whether the rest is complete
        writers = _has_writers(fd)
        now = time.monotonic()
        settled = not writers if writers is not None else now - quiet_since >= QUIET
        if settled or now >= deadline:
            if not settled:
                log.warning(
                    "a writer kept the old CSV file open after the rewrite; "
                    "lines it writes from now on are lost",
                    waited=WRITER_WAIT,
                )
            offset = copy_from(fd, new_fd, offset)
            return offset - start
        time.sleep(_POLL)


def _has_writers(fd: int) -> bool | None:
    """Whether any process has the file open for writing; None when the kernel will not say.

    A read lease is granted only while nobody has the file open for writing.
    """
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as error:
        return True if error.errno == errno.EAGAIN else None
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False


def count_lines(fd: int, start: int, stop: int) -> int:
    """Newlines between two offsets: the appended lines a rewrite carried over verbatim."""
    count = 0
    while start < stop:
        chunk = os.pread(fd, min(CHUNK, stop - start), start)
        if not chunk:
            break
        count += chunk.count(b"\n")
        start += len(chunk)
    return count


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _temp_prefix(name: bytes) -> bytes:
    return b"." + name[:_TEMP_PREFIX_MAX] + _TEMP_MARK


def create_temp(
    root_fd: int, name: bytes, original: os.stat_result, root: os.PathLike[str]
) -> tuple[bytes, int]:
    """An empty file next to `name` with its owner, group and mode, opened for appending."""
    mode = stat.S_IMODE(original.st_mode)
    for _ in range(8):
        temp_name = _temp_prefix(name) + secrets.token_hex(4).encode()
        try:
            fd = os.open(temp_name, _TEMP_FLAGS, mode & 0o600, dir_fd=root_fd)
        except FileExistsError:
            continue
        except OSError as error:
            raise StoreError(
                f"cannot create a temporary file in {root} to rewrite a CSV file "
                f"({error.strerror}); retentiond needs write permission there; the file is "
                "unchanged"
            ) from None
        try:
            os.fchown(fd, original.st_uid, original.st_gid)
            os.fchmod(fd, mode)
        except OSError as error:
            os.close(fd)
            unlink_quietly(root_fd, temp_name, root)
            raise StoreError(
                f"cannot give the rewrite of a CSV file in {root} the original's owner and mode "
                f"({error.strerror}); run retentiond as root or as the files' owner; the file is "
                "unchanged"
            ) from None
        return temp_name, fd
    raise StoreError(f"cannot find a free temporary name in {root}")  # pragma: no cover


def unlink_quietly(root_fd: int, name: bytes, root: os.PathLike[str]) -> None:
    try:
        os.unlink(name, dir_fd=root_fd)
    except FileNotFoundError:
        pass
    except OSError as error:
        log.error(
            "a temporary copy of a CSV file could not be removed",
            store=str(root),
            reason=error.strerror,
        )


def remove_stale_temps(root_fd: int, name: bytes) -> None:
    """Remove this file's temporary copies left by a rewrite that a crash interrupted."""
    prefix = _temp_prefix(name)
    now = time.time()
    removed = 0
    try:
        names = sorted_names(root_fd)
    except OSError:
        return  # the rewrite itself reports what is wrong with the folder
    for entry_name in names:
        if not (entry_name.startswith(prefix) and TEMP_NAME.fullmatch(entry_name)):
            continue
        try:
            status = os.stat(entry_name, dir_fd=root_fd, follow_symlinks=False)
            if stat.S_ISREG(status.st_mode) and now - status.st_mtime > STALE_TEMP:
                os.unlink(entry_name, dir_fd=root_fd)
                removed += 1
        except OSError:
            continue
    if removed:
        log.info("removed copies left by an interrupted CSV rewrite", count=removed)
