"""Rotation of the deletion log.

`AuditLog.rotate_if_due` renames a full (or last year's) file to `<path>.<N>` and starts
`<path>` with a `continued` entry that carries the previous file's name, last seq and hash; seq
and prev simply go on, so the chain runs unbroken through all files (`reading` follows it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from datetime import UTC

from retentiond import safefiles
from retentiond.errors import AuditError
from retentiond.evidence.log.entries import CONTINUED, MAX_LINE, Broken, Entry, parse_line
from retentiond.evidence.log.logfile import LogFile, copy_owner
from retentiond.evidence.log.reading import rotated_files, rotation_number


class Rotation(LogFile):
    """The writer's rotation: due by size or year, done between runs, repaired on open."""

    @property
    def _rotates(self) -> bool:
        return self.rotate_bytes is not None or self.rotate_yearly

    @property
    def _staging_name(self) -> str:
        return self.path.name + ".rotating"

    def _repair_rotation(self, fd: int) -> None:
        """Undo a rotation a crash interrupted (we hold the lock, so no rotation is running):
        the half-made next file goes, and so does a rotated name still linked to this file."""
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._staging_name, dir_fd=self._folder)
            rotated = rotated_files(self.path)
            if rotated and self._same_name(rotated[-1][1].name, os.fstat(fd)):
                os.unlink(rotated[-1][1].name, dir_fd=self._folder)
        except OSError as exc:
            raise AuditError(
                f"cannot repair an interrupted rotation of the audit log {self.path}: "
                f"{exc.strerror}"
            ) from None

    def rotate_if_due(self) -> Entry | None:
        """Start a new file if rotation is due; call it only between runs.

        Returns the `continued` entry that starts the new file, or None. On failure (folder not
        writable, `chattr +a` on the file) it raises AuditError and the log goes on in the
        current file, with nothing lost, unless the folder could not be synced after the
        switch: then the log refuses appends like after a failed append.
        """
        with self._mutex:
            fd = self._writable_fd()
            reason = self._rotation_due(fd)
            if reason is None:
                return None
            return self._rotate(fd, reason)

    def _rotation_due(self, fd: int) -> str | None:
        last = self._last
        if last is None:
            return None
        if self.rotate_bytes is not None:
            try:
                size = os.fstat(fd).st_size
            except OSError as exc:
                raise AuditError(f"cannot read the audit log {self.path}: {exc.strerror}") from None
            if size > self.rotate_bytes:
                return "size"
        if self.rotate_yearly:
            year = last.ts[:4]
            if year.isdigit() and int(year) != self._clock().astimezone(UTC).year:
                return "year"
        return None

    def _next_number(self, fd: int) -> int:
        """One more than any rotated file there is or was: names are never reused, even after
        old files were removed, so a `previous_file` always means one file."""
        highest = max((number for number, _ in rotated_files(self.path)), default=0)
        data = os.pread(fd, MAX_LINE + 1, 0)
        newline = data.find(b"\n")
        if newline > 0:
            with contextlib.suppress(Broken):
                first = parse_line(data[:newline])
                named = first.fields.get("previous_file")
                if first.type == CONTINUED and isinstance(named, str):
                    highest = max(highest, rotation_number(self.path, named) or 0)
        return highest + 1

    def _rotate(self, fd: int, reason: str) -> Entry:
        """Rename the current file to `<path>.<N>` and start `<path>` with a continued entry.

        `<path>` exists at every moment: the new file is made and locked under a staging name,
        the current file gets its rotated name as a second link, then the new file is renamed
        over `<path>`. A crash in between leaves the staging file and the extra link, which the
        next `open` removes (and readers ignore).
        """
        try:
            number = self._next_number(fd)
        except OSError as exc:
            raise AuditError(f"cannot read the audit log {self.path}: {exc.strerror}") from None
        rotated = self.path.with_name(f"{self.path.name}.{number}")
        seq, prev = self._head
        line = self._encode(
            CONTINUED,
            {
                "previous_file": rotated.name,
                "previous_seq": seq,
                "previous_hash": prev,
                "reason": reason,
            },
        )
        staging, folder = self._staging_name, self._folder
        new_fd: int | None = None
        linked = False
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging, dir_fd=folder)
            new_fd = safefiles.create(folder, staging, 0o640, os.O_RDWR | os.O_APPEND)
            copy_owner(fd, new_fd)
            fcntl.flock(new_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            safefiles.write_all(new_fd, line)
            os.fsync(new_fd)
            os.link(self.path.name, rotated.name, src_dir_fd=folder, dst_dir_fd=folder)
            linked = True
            os.replace(staging, self.path.name, src_dir_fd=folder, dst_dir_fd=folder)
        except OSError as exc:
            if linked:
                with contextlib.suppress(OSError):
                    os.unlink(rotated.name, dir_fd=folder)
            with contextlib.suppress(OSError):
                os.unlink(staging, dir_fd=folder)
            if new_fd is not None:
                os.close(new_fd)
            raise AuditError(
                f"cannot rotate the audit log {self.path} ({exc.strerror}); it goes on in the "
                "current file and nothing is lost. Rotation needs a writable folder and no "
                "append-only attribute (chattr +a) on the file"
            ) from None
        with contextlib.suppress(OSError):
            os.close(fd)
        self._fd = new_fd
        entry = parse_line(line[:-1])
        self._head, self._last = (entry.seq, entry.hash), entry
        try:
            os.fsync(folder)
        except OSError as exc:
            # Until the rename is durable, a power loss could bring back the old names: appends
            # to the new file could then be lost, so none are made.
            self._failure = exc.strerror or str(exc)
            raise AuditError(
                f"cannot sync the audit folder after rotating {self.path}: {self._failure}; "
                "nothing was deleted after this point"
            ) from None
        return entry
