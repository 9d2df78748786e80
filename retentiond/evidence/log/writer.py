"""The deletion log's writer, `AuditLog`: appends, each synced before it returns, checkpoints,
and opening the log (with repairs) and closing it.

Safety rule 3 rests on this module: `append` returns only once the line is on disk (fsync), and
raises AuditError instead when it cannot be; after a failed append the log refuses further
appends, so the engine cannot delete anything the log did not record.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import structlog

from retentiond.errors import AuditError
from retentiond.evidence.log.entries import (
    CHECKPOINT,
    CHECKPOINT_FIELDS,
    CONTINUED,
    GENESIS,
    LOG_REPAIRED,
    Broken,
    Entry,
    parse_line,
)
from retentiond.evidence.log.keys import Signer
from retentiond.evidence.log.reading import last_line, pread_exact
from retentiond.evidence.log.repair import UNRECORDED, TornTailRepair
from retentiond.evidence.log.rotation import Rotation

_OPEN_ATTEMPTS = 5
_TORN_REASON = "incomplete last line"

log = structlog.get_logger()


class AuditWriter(Protocol):
    """What a run needs of the log's writer: an `AuditLog`, or in the daemon's run process a
    proxy that has the daemon (the one writer, which holds the lock) append each entry."""

    path: Path

    @property
    def head(self) -> tuple[int, str]: ...

    @property
    def last_entry(self) -> Entry | None: ...

    def append(self, type: str, **fields: Any) -> Entry: ...

    def append_unsynced(self, type: str, **fields: Any) -> Entry: ...

    def checkpoint(self, signer: Signer) -> Entry: ...

    def rotate_if_due(self) -> Entry | None: ...


class StaleHead(Exception):
    """A checkpoint was signed for a head that another append has moved on from meanwhile."""


class AuditLog(TornTailRepair, Rotation):
    """The writer. Holds the file open with an exclusive lock so only one retentiond appends.

    Rotation is off unless asked for: `rotate_bytes` starts a new file once the current one is
    larger, `rotate_yearly` once the last entry is from another (UTC) year than `clock()`. It
    happens only in `rotate_if_due`, which the engine calls before the first entry of a run,
    so a run never spans two files. `clock` also stamps the entries (tests fake it).

    `open` repairs what a power loss can leave: a torn last line is moved aside and recorded
    (`repairs` holds the `log_repaired` entries it wrote, for the caller to report).
    """

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Create or open the log, lock it, and take the head from its last line.

        Only the last line is checked (the full chain is `retentiond audit verify`'s job). A torn
        last line (a power loss during a write) is moved aside to `<path>.torn-<UTC time>` and
        a `log_repaired` entry records its size and SHA-256; any other damage at the end is
        refused: appending after it would bury it.

        The log is never opened through a symlink, and a folder or log that others may write
        to (or, for root, that another user owns) is refused: see `safefiles`.
        """
        if self._fd is not None:
            raise RuntimeError("the audit log is already open")
        self._folder_fd = self._open_folder()
        try:
            fd, unrecorded = self._open_current()
        except BaseException:
            self._close_folder()
            raise
        self._head = (self._last.seq, self._last.hash) if self._last else (0, GENESIS)
        self._fd = fd
        self._failure = None
        self.repairs = []
        try:
            for side_file in unrecorded:
                self._record_moved_tail(side_file)
        except BaseException:
            self.close()
            raise

    def _open_current(self) -> tuple[int, list[str]]:
        """The log, opened and locked, after repairs; and the side files still to record."""
        for _ in range(_OPEN_ATTEMPTS):
            fd = self._open_file()
            try:
                self._lock_file(fd)
                if not self._is_current(fd):
                    # Rotated away between our open and our lock: open the new file instead.
                    os.close(fd)
                    continue
                if self._rotates or self._exists(self._staging_name):
                    self._repair_rotation(fd)
                unrecorded = self._move_torn_tail(fd)
                self._last = self._read_last(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            return fd, unrecorded
        raise AuditError(
            f"the audit log {self.path} was replaced {_OPEN_ATTEMPTS} times while it was "
            "opened; is another program rotating it?"
        )

    def sign_tail(self, signer: Signer) -> Entry | None:
        """Sign what the log ends with unless a checkpoint already does (entries an interrupted
        run, a failed key or a repair left unsigned); return the checkpoint written, if any.
        For the start of a run, or of the daemon, with a usable key."""
        with self._mutex:
            last = self._last
            if last is None or last.type == CHECKPOINT:
                return None
            return self.checkpoint(signer)

    def _record_moved_tail(self, staged: str) -> None:
        """Append the `log_repaired` entry for a side file (unless a crash came right after
        it was written) and give the side file its final name."""
        final = staged.removesuffix(UNRECORDED)
        last = self._last
        recorded = (
            last is not None and last.type == LOG_REPAIRED and last.fields.get("moved_to") == final
        )
        if not recorded:
            try:
                size, digest = self._size_and_sha256(staged)
            except OSError as exc:
                raise AuditError(
                    f"cannot read {self.path.with_name(staged)}, the incomplete last line moved "
                    f"aside from the audit log: {exc.strerror}"
                ) from None
            # Counts and a hash only: the bytes themselves stay in the side file.
            entry = self.append(
                LOG_REPAIRED,
                reason=_TORN_REASON,
                removed_bytes=size,
                removed_sha256=digest,
                moved_to=final,
            )
            self.repairs.append(entry)
            log.warning(
                "the deletion log ended with an incomplete line (a power loss while it was "
                "written?): moved aside and recorded",
                removed_bytes=size,
                moved_to=final,
                seq=entry.seq,
            )
        try:
            try:
                os.link(staged, final, src_dir_fd=self._folder, dst_dir_fd=self._folder)
            except FileExistsError:
                if not self._same_name(final, self._lstat(staged)):
                    raise
            os.unlink(staged, dir_fd=self._folder)
            os.fsync(self._folder)
        except OSError as exc:
            raise AuditError(
                f"cannot rename {self.path.with_name(staged)} to {final} after recording it in "
                f"the audit log: {exc.strerror}"
            ) from None

    def _read_last(self, fd: int) -> Entry | None:
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return None
            if pread_exact(fd, 1, size - 1) != b"\n":
                raise AuditError(
                    f"the audit log {self.path} ends with an incomplete entry: a write was "
                    "interrupted (crash, power loss or full disk). Nothing will be deleted "
                    "until it is repaired: run `retentiond audit verify`, keep a copy of the "
                    "file, then remove the incomplete last line"
                )
            return parse_line(last_line(fd, size))
        except OSError as exc:
            raise AuditError(f"cannot read the audit log {self.path}: {exc.strerror}") from None
        except Broken as broken:
            raise AuditError(
                f"the last entry of the audit log {self.path} is damaged ({broken.reason}); "
                "run `retentiond audit verify`"
            ) from None

    def append(self, type: str, **fields: Any) -> Entry:
        """Write one entry and fsync it; when this returns, the entry survives a power loss.

        Any write or sync failure raises AuditError and leaves the log refusing further appends,
        so nothing can be deleted that the log did not record.
        """
        if type == CONTINUED:
            raise TypeError("continued entries start a rotated file; only rotation writes them")
        with self._mutex:
            fd = self._writable_fd()
            if type == CHECKPOINT:
                self._check_checkpoint(fields)
            line = self._encode(type, fields)
            return self._write(fd, line)

    def append_unsynced(self, type: str, **fields: Any) -> Entry:
        """Write one entry whose durability can wait for the next `append`'s fsync, which
        flushes it too. For a batch's result: the next batch's intent (or the run's end) is
        written with fsync before anything more is changed, so one fsync per batch suffices.
        A crash in between loses at most this result, and the next run reconciles the batch.
        """
        if type in (CONTINUED, CHECKPOINT):
            raise TypeError(f"{type} entries are always synced")
        with self._mutex:
            fd = self._writable_fd()
            return self._write(fd, self._encode(type, fields), sync=False)

    def checkpoint(self, signer: Signer) -> Entry:
        """Sign the head and append the signature as a `checkpoint` entry.

        The entry signs the one right before it; if another thread appends meanwhile, the head
        is signed again. Raises AuditError like `append`.
        """
        for _ in range(100):
            seq, head_hash = self.head
            if seq == 0:
                raise ValueError("an empty audit log has nothing to sign")
            entry = self.append_signature(signer.sign(seq, head_hash))
            if entry is not None:
                return entry
        raise AuditError(f"the audit log {self.path} changed while a checkpoint was signed")

    def append_signature(self, fields: dict[str, Any]) -> Entry | None:
        """Append a checkpoint signed elsewhere (`Signer.sign` of the head): the daemon writes
        those of its run processes without reading the key. None when the head has moved on
        since it was signed: sign the new head and try again. Raises AuditError like `append`.
        """
        try:
            return self.append(CHECKPOINT, **fields)
        except StaleHead:
            return None

    def _check_checkpoint(self, fields: dict[str, Any]) -> None:
        if set(fields) != set(CHECKPOINT_FIELDS):
            raise TypeError(f"a checkpoint has exactly the fields {list(CHECKPOINT_FIELDS)}")
        if (fields["signed_seq"], fields["signed_hash"]) != self._head:
            raise StaleHead

    def _write(self, fd: int, line: bytes, sync: bool = True) -> Entry:
        try:
            size_before = os.fstat(fd).st_size
            written = os.write(fd, line)
            if written != len(line):
                _drop_partial_line(fd, size_before)
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(line)} bytes)")
            if sync:
                os.fsync(fd)
        except OSError as exc:
            self._failure = exc.strerror or str(exc)
            raise AuditError(
                f"cannot write the audit log {self.path}: {self._failure}; "
                "nothing was deleted after this point"
            ) from None
        entry = parse_line(line[:-1])
        self._head, self._last = (entry.seq, entry.hash), entry
        return entry

    def close(self) -> None:
        """Release the lock and the file. Every entry was already synced by `append`."""
        self._close_folder()
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        # Nothing unsynced can be lost here: each append fsyncs before it returns.
        with contextlib.suppress(OSError):
            os.close(fd)


def _drop_partial_line(fd: int, size_before: int) -> None:
    """Best effort: cut our own half-written line, so the log stays verifiable and reopenable.

    We hold the lock, so the bytes after `size_before` are ours. On an append-only (chattr +a)
    file this fails, and the next open reports the incomplete line (it cannot cut it either).
    """
    try:
        os.ftruncate(fd, size_before)
        os.fsync(fd)
    except OSError:
        pass
