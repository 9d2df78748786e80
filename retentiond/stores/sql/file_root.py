"""The folder a file column's paths are relative to, and the removal of a deleted row's file.

Rows may name a file (3CX `recordings.recording_url`, relative to `file_root`). The delete itself
says which files its rows named (RETURNING, or a locking read in the same transaction on MySQL);
once the rows are committed, each file no remaining row names is unlinked from the root's
descriptor, one folder at a time, never through a symlink and never outside the root.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from retentiond.stores.fs.folders import (
    CHANGED,
    MOUNT_POINT,
    NOT_REGULAR_FILE,
    OTHER_FILESYSTEM,
    UNREMOVABLE,
    VANISHED,
    RootFolder,
    RootWording,
    Skip,
    open_folder,
)

# Why a row's file was left in place, as counted in BatchResult.skipped (besides the folders
# module's not_regular_file, other_filesystem and unremovable). The row is gone anyway.
UNSAFE_PATH = "unsafe_path"  # absolute, `..`, empty component, or a symlink on the way
FILE_MISSING = "file_missing"
STILL_REFERENCED = "still_referenced"  # a row that stays names the same file

# `{root}` is "<store label>: file_root <path>".
_FILE_ROOT_WORDING = RootWording(
    missing="{root} does not exist; set it to the folder the file column's paths are relative to",
    unexaminable="{root} cannot be examined ({reason})",
    symlink="{root} is a symlink and retentiond never follows symlinks; "
    "set file_root to the folder it points to",
    not_a_folder="{root} is not a folder",
    unreadable="{root} cannot be opened ({reason}); give retentiond's user search and write "
    "permission there",
)


class FileRoot:
    """The folder a file column's relative paths start from, held open by its descriptor.

    Each path is followed one component at a time from the root's descriptor with O_NOFOLLOW, so
    no symlink, `..`, absolute path or mount point can send an unlink outside the root. Paths are
    recording names (numbers, names): they never appear in a log line, an exception or a result.
    """

    def __init__(self, path: Path, label: str) -> None:
        self.path = path
        self.label = label
        # Not probed: unlinking needs search and write permission, never listing.
        self._root = RootFolder(path, _FILE_ROOT_WORDING, shown=f"{label}: file_root {path}")

    def open(self) -> None:
        self._root.open()

    def close(self) -> None:
        self._root.close()

    def remove(self, relative: str | bytes) -> tuple[str | None, int]:
        """Unlink the regular file at `relative` below the root: (None, its size) or (reason, 0)."""
        if self._root.fd is None:
            raise RuntimeError(f"{self.label}: the file root is not open")  # a bug in the caller
        path = os.fsencode(relative)
        parts = path.split(b"/")
        if path.startswith(b"/") or b"\0" in path or any(p in (b"", b".", b"..") for p in parts):
            return UNSAFE_PATH, 0
        opened: list[int] = []
        folder = self._root.fd
        try:
            for part in parts[:-1]:
                try:
                    folder = open_folder(part, folder, self._root.device)
                except Skip as skip:
                    return self._why_not_a_folder(part, folder, skip.reason), 0
                opened.append(folder)
            return self._unlink(parts[-1], folder)
        finally:
            for fd in reversed(opened):
                os.close(fd)

    def _unlink(self, name: bytes, folder: int) -> tuple[str | None, int]:
        try:
            status = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return FILE_MISSING, 0
        except OSError:
            return UNREMOVABLE, 0
        if stat.S_ISLNK(status.st_mode):
            return UNSAFE_PATH, 0
        if not stat.S_ISREG(status.st_mode):
            return NOT_REGULAR_FILE, 0
        if status.st_dev != self._root.device:
            return OTHER_FILESYSTEM, 0
        try:
            os.unlink(name, dir_fd=folder)
        except FileNotFoundError:
            return FILE_MISSING, 0
        except OSError:
            return UNREMOVABLE, 0
        return None, status.st_size

    @staticmethod
    def _why_not_a_folder(name: bytes, parent: int, reason: str) -> str:
        """This store's reason for a folder on the way that `open_folder` refused."""
        if reason == VANISHED:
            return FILE_MISSING
        if reason in (OTHER_FILESYSTEM, MOUNT_POINT):
            return reason
        if reason == CHANGED:
            # Not a folder: a symlink (refused by O_NOFOLLOW) is unsafe, anything else missing.
            try:
                status = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except OSError:
                return FILE_MISSING
            return UNSAFE_PATH if stat.S_ISLNK(status.st_mode) else FILE_MISSING
        return UNREMOVABLE
