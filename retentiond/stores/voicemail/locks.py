"""Asterisk's own voicemail folder lock (main/app.c ast_lock_path), taken for a moment.

`lockfile` mode hard-links a unique `.lock-XXXXXXXX` to `.lock`; `flock` mode locks the folder's
`lock` file. A lock held by someone else is waited for up to `lock_wait`, and never broken, stale
or not: Asterisk may still be writing a message.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from collections.abc import Callable

import structlog

from retentiond.stores.fs.folders import READ_FLAGS, UNREMOVABLE, Skip

log = structlog.get_logger()

_RETRY = 0.05  # seconds between attempts to take a folder lock


def lock_by_lockfile(fd: int, wait: float) -> Callable[[], None] | None:
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


def lock_by_flock(fd: int, wait: float) -> Callable[[], None] | None:
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
