"""Moving a torn last line aside, when the writer opens the log.

A power loss can leave the log ending in a torn last line (see `reading`). The writer, on `open`,
moves its bytes to a side file `<path>.torn-<UTC time>` and records their count and SHA-256 in a
`log_repaired` entry, so the chain goes on from the last complete entry and nothing is lost.
Anything else at the end (a complete line that fails its hash, a line without its newline that
is complete JSON) stays damage that a person must look at: the writer refuses it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import os
import stat
from datetime import UTC

from retentiond import safefiles
from retentiond.errors import AuditError
from retentiond.evidence.log.entries import MAX_LINE, Broken, parse_line
from retentiond.evidence.log.logfile import LogFile, copy_owner
from retentiond.evidence.log.reading import (
    TAIL_CHUNK,
    counted,
    cut_short,
    last_line,
    pread_exact,
    rotated_files,
)

_TORN_MARK = ".torn-"  # side files: <path>.torn-<UTC time>, never a rotated file's name
UNRECORDED = ".unrecorded"  # a side file whose log_repaired entry is not written yet


class TornTailRepair(LogFile):
    """The part of `AuditLog.open` that moves a torn last line into a side file."""

    def _move_torn_tail(self, fd: int) -> list[str]:
        """Move a torn last line into a new side file and cut the log after its last complete
        line; return the side files whose `log_repaired` entry is still to be written.

        Crash-safe in this order: the side file is written and synced under a name ending in
        `.unrecorded`, the log is cut and synced, the entry is appended, the side file gets its
        final name. An open after a crash in between finishes what is left: a side file whose
        bytes the log still ends with is a redundant copy and goes; any other is recorded.
        """
        try:
            unrecorded = self._unrecorded_side_files()
            size = os.fstat(fd).st_size
            found = _find_torn_tail(fd, size)
            if found is None:
                return unrecorded
            offset, torn = found
            if offset > 0:
                parse_line(last_line(fd, offset))  # one torn line, not more damage before it
            elif rotated_files(self.path):
                raise AuditError(
                    f"the audit log {self.path} holds only an incomplete line, but after a "
                    "rotation it starts with a complete continued entry: it was emptied or "
                    "replaced; run `retentiond audit verify`"
                )
            for side_file in list(unrecorded):
                if torn.startswith(safefiles.read(self._folder, side_file, len(torn) + 1)):
                    os.unlink(side_file, dir_fd=self._folder)
                    unrecorded.remove(side_file)
            side_file = self._write_side_file(fd, torn)
            try:
                os.ftruncate(fd, offset)
                os.fsync(fd)
                os.fsync(self._folder)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(side_file, dir_fd=self._folder)  # the bytes are still in the log
                raise AuditError(
                    f"the audit log {self.path} ends with an incomplete line "
                    f"({counted(len(torn), 'byte')}, likely a power loss while it was written) "
                    f"that cannot be moved aside: {exc.strerror}. Nothing will be deleted until "
                    "it is. If the file is append-only (chattr +a), remove the attribute for "
                    "one run (chattr -a, then retentiond run --once, then chattr +a)"
                ) from None
        except OSError as exc:
            raise AuditError(
                f"cannot move the incomplete last line of the audit log {self.path} aside: "
                f"{exc.strerror}; the audit folder must be writable"
            ) from None
        except Broken as broken:
            raise AuditError(
                f"the audit log {self.path} ends with damage, not with a write cut short "
                f"({broken.reason}). Nothing will be deleted until a person has looked at it: "
                "run `retentiond audit verify`"
            ) from None
        unrecorded.append(side_file)
        return unrecorded

    def _unrecorded_side_files(self) -> list[str]:
        """Side files a crash left before their `log_repaired` entry was written, oldest first.
        Only regular files: a symlink planted under such a name is not followed."""
        pattern = f"{glob.escape(self.path.name)}{_TORN_MARK}*{UNRECORDED}"
        try:
            found = sorted(fnmatch.filter(os.listdir(self._folder), pattern))  # noqa: PTH208 - an fd
            return [name for name in found if self._is_regular(name)]
        except OSError:
            return []  # a folder we may not list: there is nothing of ours to finish either

    def _is_regular(self, name: str) -> bool:
        return stat.S_ISREG(self._lstat(name).st_mode)

    def _write_side_file(self, log_fd: int, torn: bytes) -> str:
        """Write the torn bytes, synced, to `<path>.torn-<UTC time>.unrecorded` (mode 0600)."""
        stamp = self._clock().astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        for attempt in range(1, 100):
            name = f"{self.path.name}{_TORN_MARK}{stamp}" + (f"-{attempt}" if attempt > 1 else "")
            staged = name + UNRECORDED
            if self._exists(name):
                continue
            try:
                side_fd = safefiles.create(self._folder, staged, 0o600)
            except FileExistsError:
                continue
            break
        else:
            raise AuditError(f"no free name for a side file of the audit log {self.path}")
        try:
            copy_owner(log_fd, side_fd)  # the service must be able to finish root's repair
            safefiles.write_all(side_fd, torn)
            os.fsync(side_fd)
        except OSError:
            os.close(side_fd)
            with contextlib.suppress(OSError):
                os.unlink(staged, dir_fd=self._folder)
            raise
        os.close(side_fd)
        os.fsync(self._folder)  # the copy is durable before the log is cut
        return staged

    def _size_and_sha256(self, name: str) -> tuple[int, str]:
        fd = os.open(name, safefiles.READ_FLAGS, dir_fd=self._folder)
        with os.fdopen(fd, "rb") as file:
            digest, size = hashlib.sha256(), 0
            while chunk := file.read(TAIL_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return size, digest.hexdigest()


def _find_torn_tail(fd: int, size: int) -> tuple[int, bytes] | None:
    """(offset, bytes) of a torn last line, None when the file ends with a newline; Broken when
    the end is damaged otherwise (too long for an entry, or complete JSON without a newline)."""
    if size == 0 or pread_exact(fd, 1, size - 1) == b"\n":
        return None
    start = max(0, size - MAX_LINE - 1)
    data = pread_exact(fd, size - start, start)
    newline = data.rfind(b"\n")
    torn = data[newline + 1 :]
    if (newline < 0 and start > 0) or len(torn) > MAX_LINE:
        raise Broken(f"a last line longer than {MAX_LINE} bytes")
    if not cut_short(torn):
        raise Broken("a last line without its newline that is complete JSON")
    return start + newline + 1, torn
