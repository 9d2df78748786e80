"""The writer's hold on the log: its file and folder, opened safely and locked, and the state
that the writer's parts (`writer`, `repair`, `rotation`) share.

The log is never opened through a symlink, and a folder or log that others may write to (or,
for root, that another user owns) is refused: see `safefiles`. Every name beside the log is
resolved in the folder, opened once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from retentiond import safefiles
from retentiond.errors import AuditError
from retentiond.evidence.log.entries import (
    GENESIS,
    MAX_LINE,
    RESERVED,
    Entry,
    canonical,
    json_safe,
    line_text,
    utc_text,
)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class LogFile:
    """The log's file and folder as the writer holds them (see `AuditLog`)."""

    def __init__(
        self,
        path: Path,
        *,
        rotate_bytes: int | None = None,
        rotate_yearly: bool = False,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if rotate_bytes is not None and rotate_bytes < 1:
            raise ValueError("rotate_bytes must be positive")
        self.path = Path(path)
        self.rotate_bytes = rotate_bytes
        self.rotate_yearly = rotate_yearly
        self._clock = clock
        self._fd: int | None = None
        self._folder_fd: int | None = None  # every name beside the log is resolved in it
        self._head = (0, GENESIS)
        self._last: Entry | None = None
        self._failure: str | None = None
        self.repairs: list[Entry] = []
        # Appends, checkpoints and rotation from several threads (the daemon) stay in order.
        self._mutex = threading.RLock()

    @property
    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last entry, or (0, GENESIS) for an empty log."""
        return self._head

    @property
    def last_entry(self) -> Entry | None:
        """The last entry of the log (None when empty), e.g. to see whether it is signed."""
        return self._last

    def _open_folder(self) -> int:
        folder = self.path.absolute().parent
        try:
            return safefiles.open_guarded_folder(folder)
        except FileNotFoundError:
            raise AuditError(
                f"audit folder {folder} does not exist; create it or change audit.path"
            ) from None
        except safefiles.UnsafePlace as unsafe:
            raise AuditError(f"refusing to write the audit log: {unsafe.strerror}") from None
        except OSError as exc:
            raise AuditError(f"cannot open the audit folder {folder}: {exc.strerror}") from None

    @property
    def _folder(self) -> int:
        if self._folder_fd is None:
            raise RuntimeError("the audit log is not open")
        return self._folder_fd

    def _exists(self, name: str) -> bool:
        try:
            self._lstat(name)
        except FileNotFoundError:
            return False
        return True

    def _close_folder(self) -> None:
        fd, self._folder_fd = self._folder_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _lstat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self._folder, follow_symlinks=False)

    def _same_name(self, name: str, info: os.stat_result) -> bool:
        """Whether `name` in the log's folder is the file `info` describes (not a symlink)."""
        try:
            mine = self._lstat(name)
        except OSError:
            return False
        return (mine.st_dev, mine.st_ino) == (info.st_dev, info.st_ino)

    def _open_file(self) -> int:
        """The log itself, created if missing; never through a symlink, never a FIFO or a
        device, never a file others may write (`safefiles.problems`)."""
        access = os.O_RDWR | os.O_APPEND
        try:
            try:
                fd = safefiles.create(self._folder, self.path.name, 0o640, access)
            except FileExistsError:
                flags = access | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
                fd = os.open(self.path.name, flags, dir_fd=self._folder)
            else:
                try:
                    os.fsync(self._folder)  # a new file is only durable once its folder entry is
                except BaseException:
                    os.close(fd)
                    raise
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise AuditError(
                    f"the audit log {self.path} is a symbolic link; retentiond does not follow "
                    "it: set audit.path to the real file, or remove the link"
                ) from None
            raise AuditError(
                f"cannot open the audit log {self.path} for writing: {exc.strerror}; "
                "check its owner, permissions, attributes (lsattr) and that the filesystem "
                "is writable"
            ) from None
        try:
            self._require_plain_file(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _require_plain_file(self, fd: int) -> None:
        try:
            info = os.fstat(fd)
        except OSError as exc:
            raise AuditError(f"cannot read the audit log {self.path}: {exc.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise AuditError(
                f"the audit log {self.path} is not a regular file; move it away, or set "
                "audit.path to a file"
            )
        found = safefiles.problems(info, self.path, "file")
        if found:
            raise AuditError("refusing to write the audit log: " + "; ".join(found))

    def _lock_file(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AuditError(
                f"another retentiond process is writing {self.path}; wait for it to finish"
            ) from None
        except OSError as exc:
            raise AuditError(f"cannot lock the audit log {self.path}: {exc.strerror}") from None

    def _is_current(self, fd: int) -> bool:
        try:
            mine = os.fstat(fd)
        except OSError as exc:
            raise AuditError(f"cannot read the audit log {self.path}: {exc.strerror}") from None
        return self._same_name(self.path.name, mine)

    def _writable_fd(self) -> int:
        if self._fd is None:
            raise RuntimeError("the audit log is not open")
        if self._failure is not None:
            raise AuditError(
                f"the audit log {self.path} failed earlier ({self._failure}); "
                "nothing more may be deleted until it can be written"
            )
        return self._fd

    def _encode(self, type: str, fields: dict[str, Any]) -> bytes:
        if not isinstance(type, str) or not type:
            raise TypeError("an audit entry needs a non-empty text type")
        reserved = RESERVED.intersection(fields)
        if reserved:
            raise TypeError(f"audit fields {sorted(reserved)} are reserved for the chain")
        seq, prev = self._head[0] + 1, self._head[1]
        obj: dict[str, Any] = {"seq": seq, "ts": utc_text(self._clock()), "type": type}
        obj.update((key, json_safe(value, key)) for key, value in fields.items())
        obj["prev"] = prev
        try:
            obj["hash"] = hashlib.sha256(canonical(obj)).hexdigest()
            line = (line_text(obj) + "\n").encode()
        except UnicodeEncodeError:
            raise TypeError("audit fields must be valid Unicode text") from None
        if len(line) > MAX_LINE:
            raise ValueError(f"audit entry of {len(line)} bytes; entries hold counts, not lists")
        return line


def copy_owner(source_fd: int, target_fd: int) -> None:
    """Give a new log file the owner of the old one (root rotating the service's log must not
    leave it a file it cannot write). Best effort: only root may give files away."""
    with contextlib.suppress(OSError):
        info = os.fstat(source_fd)
        mine = os.fstat(target_fd)
        if (info.st_uid, info.st_gid) != (mine.st_uid, mine.st_gid):
            os.fchown(target_fd, info.st_uid, info.st_gid)
