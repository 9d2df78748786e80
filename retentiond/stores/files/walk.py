"""Walking a files store's root: the regular files its patterns select, as recordings.

Depth first in name order, holding one open folder per level, each reached from its parent's
descriptor (fs.folders): no symlink is followed and no other filesystem or mount entered. Lock
files, voicemail greetings and Asterisk's tmp/ are never selected. With `group_siblings`, files
of one folder whose names differ only in the extension come out together, as one recording.
What a walk finds is a `FoundFile`; what a batch plans from it, a `PlannedFile`.
"""

from __future__ import annotations

import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from retentiond.stores.files.names import is_greeting, is_lock_file, name_stem, sibling_order
from retentiond.stores.fs.folders import (
    NOT_REGULAR_FILE,
    OTHER_FILESYSTEM,
    SYMLINK,
    VANISHED,
    RootFolder,
    Skip,
    entries,
    list_folder,
    open_folder,
)

# Why an object was left alone, as counted in Survey.skipped and BatchResult.skipped (besides
# the folders module's symlink, other_filesystem, unreadable, changed, vanished, ...).
LOCK_FILE = "lock_file"
PROTECTED = "protected"  # voicemail greetings and tmp/ folders (DESIGN.md safety rule 5)

# What a walk's patterns selected (kept or not) and the regular files they did not: never
# counted in a survey, but tallied to tell a store whose patterns select nothing at all.
MATCHED = "_matched"
UNMATCHED = "_unmatched"


@dataclass(frozen=True, slots=True)
class FoundFile:
    """A matching regular file met on a walk."""

    folder: tuple[bytes, ...]
    name: bytes
    status: os.stat_result


@dataclass(frozen=True, slots=True)
class PlannedFile:
    """One file a batch will delete, as it was when planned. Its names never show in a repr."""

    folder: tuple[bytes, ...] = field(repr=False)  # folder names from the root down
    name: bytes = field(repr=False)
    device: int
    inode: int
    size: int
    age: datetime | None  # None only in an erasure, which deletes a subject's files of any age


# One recording as planned: a file, or a file and its siblings (group_siblings).
Recording = tuple[PlannedFile, ...]


def plan_file(found: FoundFile, age: datetime | None) -> PlannedFile:
    return PlannedFile(
        folder=found.folder,
        name=found.name,
        device=found.status.st_dev,
        inode=found.status.st_ino,
        size=found.status.st_size,
        age=age,
    )


class FileTree:
    """The files under a store's open root that its patterns select."""

    def __init__(
        self, root: RootFolder, patterns: Sequence[re.Pattern[str]], *, group_siblings: bool
    ) -> None:
        self.root = root
        self._patterns = patterns
        self.group_siblings = group_siblings

    def recordings(self, skipped: Counter[str]) -> Iterator[tuple[FoundFile, ...]]:
        """The walk's files as recordings: each file alone, or with its siblings when grouping."""
        walk = self.walk(skipped, sibling_order if self.group_siblings else None)
        try:
            if not self.group_siblings:
                for found in walk:
                    yield (found,)
                return
            # Siblings come one after the other, unless a subfolder sorts between them: a group
            # stays open until its folder has no more of them or the walk has left the folder.
            groups: dict[tuple[bytes, ...], list[FoundFile]] = {}
            for found in walk:
                left = [f for f in groups if found.folder[: len(f)] != f]
                for folder in sorted(left, key=len, reverse=True):
                    yield tuple(groups.pop(folder))
                group = groups.get(found.folder)
                if group is not None and name_stem(group[0].name) == name_stem(found.name):
                    group.append(found)
                    continue
                if group is not None:
                    yield tuple(group)
                groups[found.folder] = [found]
            for folder in sorted(groups, key=len, reverse=True):
                yield tuple(groups[folder])
        finally:
            walk.close()

    def walk(
        self, skipped: Counter[str], order: Callable[[bytes], Any] | None = None
    ) -> Generator[FoundFile, None, None]:
        """Matching regular files, depth first in name order, holding one open folder per level."""
        root_fd = self.require_open()
        stack = [_Listing.of(root_fd, (), skipped, order, owned=False)]
        try:
            while stack:
                listing = stack[-1]
                entry = next(listing.entries, None)
                if entry is None:
                    stack.pop().close()
                    continue
                name, status = entry
                mode = status.st_mode
                if stat.S_ISLNK(mode):
                    skipped[SYMLINK] += 1
                elif stat.S_ISDIR(mode):
                    child = self._enter(listing, name, status, skipped, order)
                    if child is not None:
                        stack.append(child)
                elif self.matches((*listing.folder, name)):
                    skipped[MATCHED] += 1
                    if is_lock_file(name):
                        skipped[LOCK_FILE] += 1
                    elif is_greeting(name):
                        skipped[PROTECTED] += 1
                    elif not stat.S_ISREG(mode):
                        skipped[NOT_REGULAR_FILE] += 1
                    elif status.st_dev != self.root.device:
                        # A file mounted over a name in the root (a bind mount): another
                        # filesystem, which the store never touches (and cannot unlink).
                        skipped[OTHER_FILESYSTEM] += 1
                    else:
                        yield FoundFile(listing.folder, name, status)
                elif stat.S_ISREG(mode):
                    skipped[UNMATCHED] += 1
        finally:
            for listing in stack:
                listing.close()

    def _enter(
        self,
        parent: _Listing,
        name: bytes,
        status: os.stat_result,
        skipped: Counter[str],
        order: Callable[[bytes], Any] | None = None,
    ) -> _Listing | None:
        if status.st_dev != self.root.device:
            skipped[OTHER_FILESYSTEM] += 1
            return None
        if name == b"tmp":  # Asterisk records into tmp/ and renames into place when done
            skipped[PROTECTED] += 1
            return None
        try:
            fd = open_folder(name, parent.fd, self.root.device)
        except Skip as skip:
            if skip.reason != VANISHED:
                skipped[skip.reason] += 1
            return None
        return _Listing.of(fd, (*parent.folder, name), skipped, order, owned=True)

    def matches(self, relative: tuple[bytes, ...]) -> bool:
        # Patterns are text; surrogateescape keeps undecodable bytes matchable by `*` and `?`.
        path = os.fsdecode(b"/".join(relative))
        return any(pattern.fullmatch(path) for pattern in self._patterns)

    def require_open(self) -> int:
        if self.root.fd is None:
            raise RuntimeError("FilesStore used before open()")  # a bug in the caller
        return self.root.fd


@dataclass
class _Listing:
    """One open folder on a walk and the entries in it still to visit."""

    fd: int
    folder: tuple[bytes, ...]
    entries: Iterator[tuple[bytes, os.stat_result]]
    owned: bool

    @classmethod
    def of(
        cls,
        fd: int,
        folder: tuple[bytes, ...],
        skipped: Counter[str],
        order: Callable[[bytes], Any] | None,
        *,
        owned: bool,
    ) -> _Listing:
        return cls(fd, folder, entries(fd, list_folder(fd, skipped, order), skipped), owned)

    def close(self) -> None:
        if self.owned:
            os.close(self.fd)
            self.owned = False
