"""A folder tree of files (call recordings, faxes, exports), purged by age without following links.

Every folder is reached from the root's file descriptor one component at a time with O_NOFOLLOW,
so no symlink, swapped folder or mount point can send a delete outside the root. Names stay bytes:
PBX file names carry phone numbers and caller names in whatever encoding the caller ID had, and
they are personal data, so they never appear in a log line, an exception or a result.

With `group_siblings`, files in one folder whose names differ only in the extension (a FreePBX
`.wav` and the `.mp3` MIXMON_POST made of it) are one recording: deleted together, and only once
every one of them has expired. With `references`, the rows naming a deleted file by its base name
(FreePBX `cdr.recordingfile`) are set to '' after each batch, so the PBX shows no broken links;
the rows themselves stay. A base name still found where FreePBX looks for it (the folder of the
name's date, or the root), or dated on or after the cutoff, is another recording's: its rows
keep their reference. Every run ends with a sweep that also clears references older than the
cutoff, not held, whose file is gone, which a failed update leaves behind. Reference values are
personal data too and are never logged.

With `named_by`, the store sweeps what a rows store leaves (3CX `recordings.recording_url`): a
file a row names by its path relative to the root is that rows store's to delete with its row,
so this one neither counts nor deletes it (`named_by_row`), asking again right before a batch
deletes, since a row may have been written after the plan.

With `subject_in_name`, a file whose name (without its extension) has a person's number as one
of its `-`/`_`-separated parts is theirs: holds by number keep it, `find` and `subject_batches`
serve Art. 15/17 requests. Without it, whose a file is cannot be told: a hold by number keeps
every file of its window, and `find`/`subject_batches` refuse.
"""

from __future__ import annotations

import calendar
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import partial
from typing import Any, TypeVar

import structlog
from sqlalchemy import Connection, Inspector, TextClause, bindparam, inspect, make_url, text
from sqlalchemy import types as sqltypes
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchTableError

from retentiond.config.globs import compile_glob, expand_braces
from retentiond.config.model import ConnectionConfig, FilesStoreConfig, ReferencesConfig
from retentiond.config.roots import system_root_warning
from retentiond.errors import StoreAbsent, StoreError
from retentiond.policy.rules import NO_HOLDS, Holds, earliest_instant, end_of_day, latest_instant
from retentiond.policy.subjects import Subject
from retentiond.stores.base import Batch, BatchFailed, BatchResult, Found, Store, Survey
from retentiond.stores.db.connection import Database
from retentiond.stores.db.errors import describe
from retentiond.stores.db.indexes import leading_index
from retentiond.stores.db.retries import GAVE_UP
from retentiond.stores.db.rows import IN_LIST_CHUNK
from retentiond.stores.fs.folders import (
    CHANGED,
    HARD_LINKED,
    MOUNT_POINT,
    MOUNTS_UNTOLD,
    NOT_REGULAR_FILE,
    OTHER_FILESYSTEM,
    SYMLINK,
    UNREADABLE,
    UNREMOVABLE,
    VANISHED,
    FolderChain,
    RootFolder,
    RootUnfit,
    RootWording,
    Skip,
    check_component,
    entries,
    examine_root,
    list_folder,
    mounts_told_apart,
    open_folder,
    open_root,
    sorted_names,
)

log = structlog.get_logger()

# Why an object was left alone, as counted in Survey.skipped and BatchResult.skipped (besides
# the folders module's symlink, other_filesystem, unreadable, changed, vanished, ...).
UNDATED = "undated"
LOCK_FILE = "lock_file"
PROTECTED = "protected"  # voicemail greetings and tmp/ folders (DESIGN.md safety rule 5)
NAMED_BY_ROW = "named_by_row"  # a row of `named_by` names it: the store purging the rows owns it

# What a walk's patterns selected (kept or not) and the regular files they did not: never
# counted in a survey, but tallied to tell a store whose patterns select nothing at all.
_MATCHED = "_matched"
_UNMATCHED = "_unmatched"

# What a batch did besides deleting, as counted in BatchResult.counts.
REFERENCES_CLEARED = "references_cleared"  # rows naming a deleted file, set to ''

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The reference values one sweep query reads, walking the column's index.
SWEEP_CHUNK = 1000

T = TypeVar("T")
U = TypeVar("U")
A = TypeVar("A")  # the ages of a recording's files: known (`datetime`) or perhaps not (`None`)

# FreePBX `...-YYYYMMDD-HHMMSS-<uniqueid>`, 3CX `..._YYYYMMDDhhmmss(<id>)`, or a bare `YYYYMMDD`.
_FREEPBX_TIME = re.compile(rb"(?<![0-9])([0-9]{8})-([0-9]{6})(?![0-9])")
_COMPACT_TIME = re.compile(rb"(?<![0-9])([0-9]{14})(?![0-9])")
_DAY_ONLY = re.compile(rb"(?<![0-9])([0-9]{8})(?![0-9])")


@dataclass(frozen=True, slots=True)
class PlannedFile:
    """One file a batch will delete, as it was when planned. Its names never show in a repr."""

    folder: tuple[bytes, ...] = field(repr=False)  # folder names from the root down
    name: bytes = field(repr=False)
    device: int
    inode: int
    size: int
    age: datetime | None  # None only in an erasure, which deletes a subject's files of any age


@dataclass(frozen=True, slots=True)
class _Sweep:
    """The payload of a run's last batch: clear dangling references the holds leave free."""

    holds: Holds


@dataclass(frozen=True, slots=True)
class _Found:
    """A matching regular file met on a walk."""

    folder: tuple[bytes, ...]
    name: bytes
    status: os.stat_result


# One recording as planned: a file, or a file and its siblings (group_siblings).
Recording = tuple[PlannedFile, ...]
# One recording as walked, with the age of each of its files.
Walked = tuple[tuple[_Found, ...], list[datetime]]


class FilesStore(Store):
    """Files under one root, selected by glob patterns, aged by folder date, name or mtime."""

    kind = "files"
    unit = "files"

    def __init__(
        self,
        config: FilesStoreConfig,
        zone: tzinfo,
        references: ConnectionConfig | None = None,
        *,
        named_by_connection: ConnectionConfig | None = None,
    ) -> None:
        self.config = config
        self.references = references
        self.named_by_connection = named_by_connection
        self.zone = zone
        self.root = config.root
        self.label = str(config.root)
        self.pause = config.pause
        # Checked when the config was loaded: each expands to patterns that can match.
        self._patterns = [
            compile_glob(expanded)
            for pattern in config.match
            for expanded in expand_braces(pattern)
        ]
        self._root = RootFolder(config.root, RootWording(), probe=True)
        self._reference_column = (
            ReferenceColumn(config.references, references)
            if config.references is not None and references is not None
            else None
        )
        self._named_by = (
            NamedByColumn(config.named_by, named_by_connection)
            if config.named_by is not None and named_by_connection is not None
            else None
        )

    # -- Store interface -------------------------------------------------------------------------

    def open(self) -> None:
        self.close()
        root = self.root
        self._root.open()
        if self.config.references is not None and self._reference_column is None:
            self.close()
            raise StoreError(
                f"{root}: references.connection {self.config.references.connection} is not "
                "defined; add it under connections"
            )
        if self.config.named_by is not None and self._named_by is None:
            self.close()
            raise StoreError(
                f"{root}: named_by.connection {self.config.named_by.connection} is not "
                "defined; add it under connections"
            )
        for column in (self._reference_column, self._named_by):
            if column is not None:
                try:
                    column.open()
                except StoreError:  # also StoreAbsent: no named_by table, no store
                    self.close()
                    raise

    def close(self) -> None:
        self._root.close()
        if self._reference_column is not None:
            self._reference_column.close()
        if self._named_by is not None:
            self._named_by.close()

    def describe(self) -> list[str]:
        config = self.config
        system = system_root_warning(config.root, config.allow_system_root)
        lines = [
            f"root: {self.root} ({self._root_state()})",
            *([system] if system is not None else []),
            f"match: {', '.join(config.match)} (relative to the root, case-sensitive)",
            f"age from: {self._age_source()}",
            f"batches of up to {config.batch_size} files, {config.pause:g}s apart",
            "never follows symlinks, stays on the root's filesystem and mount (mount points "
            f"below it are left alone: {OTHER_FILESYSTEM}, {MOUNT_POINT}), leaves lock files alone",
        ]
        if not mounts_told_apart():
            lines.append(MOUNTS_UNTOLD)
        unmatched = self._selects_nothing()
        if unmatched:
            lines.append(f"warning: {self._nothing_matches(unmatched)}")
        if config.group_siblings:
            lines.append(
                "group_siblings: files in one folder whose names differ only in the extension "
                "(a .wav and its .mp3) are one recording, deleted together once all have expired; "
                "a batch can exceed its size by one recording"
            )
        if self._reference_column is not None:
            lines.extend(self._reference_column.describe())
        if self._named_by is not None:
            lines.extend(self._named_by.describe())
        if config.age_from == "mtime":
            lines.append(
                "note: copying or converting a recording resets its mtime; "
                "path_date or filename_date is steadier where the PBX writes them"
            )
        return lines

    def survey(self, cutoff: datetime, holds: Holds = NO_HOLDS) -> Survey:
        skipped: Counter[str] = Counter()
        held_by: Counter[str] = Counter()
        total = expired = expired_bytes = held = 0
        oldest: datetime | None = None
        for recording, ages in self._owned(self._dated(skipped), skipped):
            total += len(recording)
            age = max(ages)  # a recording is as young as its youngest file
            oldest = age if oldest is None else min(oldest, age)
            if not age < cutoff:
                continue
            covering = self._covering(recording, ages, holds)
            if covering:
                held += len(recording)
                held_by.update(dict.fromkeys(covering, len(recording)))
            else:
                expired += len(recording)
                expired_bytes += sum(found.status.st_size for found in recording)
        self._warn_if_incomplete(skipped)
        matched, unmatched = skipped.pop(_MATCHED, 0), skipped.pop(_UNMATCHED, 0)
        warnings: tuple[str, ...] = ()
        if unmatched and not matched:
            warnings = (self._nothing_matches(unmatched),)
            log.warning("files store matches no file", store=self.label, unmatched=unmatched)
        return Survey(
            unit=self.unit,
            total=total + skipped[UNDATED],  # undated files are there, but never expire
            expired=expired,
            oldest=oldest,
            expired_bytes=expired_bytes,
            skipped=dict(sorted(skipped.items())),
            held=held,
            held_by=dict(sorted(held_by.items())),
            warnings=warnings,
        )

    def _selects_nothing(self) -> int:
        """For `check`: the number of files under the root when `match` selects none of them
        (0 when it selects one: the walk stops at the first)."""
        if self._root.fd is None:
            return 0
        skipped: Counter[str] = Counter()
        walk = self._walk(skipped)
        try:
            next(walk, None)
        finally:
            walk.close()
        return 0 if skipped[_MATCHED] else skipped[_UNMATCHED]

    def _nothing_matches(self, unmatched: int) -> str:
        files = f"{unmatched} file{'' if unmatched == 1 else 's'}"
        return (
            f"match selects no file, but the root has {files} that no pattern matches; check "
            "the patterns (relative to the root, case-sensitive: *.wav is not *.WAV)"
        )

    def batches(self, cutoff: datetime, holds: Holds = NO_HOLDS) -> Iterator[Batch]:
        # The survey reports what a walk skips; a batch plan only carries what it will delete.
        skipped: Counter[str] = Counter()
        expired = (
            (recording, ages)
            for recording, ages in self._dated(skipped)
            if max(ages) < cutoff and not self._covering(recording, ages, holds)
        )
        return self._then_sweep(self._batched(self._owned(expired, skipped)), holds)

    def sweeps(self) -> bool:
        return self._reference_column is not None

    def _then_sweep(self, batches: Iterator[Batch], holds: Holds) -> Iterator[Batch]:
        """The file batches, then (with `references`) one that sweeps dangling references: every
        run has it, also one with no expired file, so a failed update is cleared up next time."""
        number = 0
        for batch in batches:
            number = batch.number
            yield batch
        if self._reference_column is not None:
            yield Batch(number=number + 1, planned=0, payload=_Sweep(holds))

    def apply(self, batch: Batch, cutoff: datetime) -> BatchResult:
        if isinstance(batch.payload, _Sweep):
            return self._apply_sweep(batch.payload.holds, cutoff)
        root_fd = self._require_open()
        skipped: Counter[str] = Counter()
        deleted: list[PlannedFile] = []
        deleted_bytes = hard_linked = 0
        # A row may have come to name a planned file since the plan: asked again, right before.
        recordings = self._still_unnamed(batch.payload, skipped)
        with FolderChain(root_fd, self._root.device) as chain:
            for recording in recordings:
                for planned, status in self._delete(chain, recording, cutoff, skipped):
                    deleted.append(planned)
                    deleted_bytes += status.st_size
                    hard_linked += status.st_nlink > 1
            # Deepest first, so a day folder goes before the month folder that holds it.
            for folder in sorted({planned.folder for planned in deleted}, reverse=True):
                _remove_emptied_date_folders(chain, folder)
        if skipped[UNREMOVABLE]:
            log.warning("files could not be removed", store=self.label, count=skipped[UNREMOVABLE])
        counts: dict[str, int] = {}
        if hard_linked:
            log.warning(
                "deleted files had other names (hard links), which keep their content",
                store=self.label,
                count=hard_linked,
            )
            counts[HARD_LINKED] = hard_linked
        deleted_days = [self._day(planned.age) for planned in deleted if planned.age is not None]
        result = BatchResult(
            deleted=len(deleted),
            span=(min(deleted_days), max(deleted_days)) if deleted_days else None,
            bytes=deleted_bytes,
            skipped=dict(sorted(skipped.items())),
            counts=counts,
        )
        if self._reference_column is None:
            return result
        cleared = self.clear_references(deleted, result, cutoff)
        log.info("references cleared", store=self.label, count=cleared)
        return replace(result, counts={**counts, REFERENCES_CLEARED: cleared})

    def privileges(self) -> tuple[list[str], list[str]]:
        """What the columns need: SELECT, and UPDATE on the column `references` clears."""
        missing: list[str] = []
        warnings: list[str] = []
        for column in (self._reference_column, self._named_by):
            if column is not None:
                lacking, unreadable = column.missing_privileges()
                missing += lacking
                warnings += unreadable
        return missing, warnings

    # -- data subjects ---------------------------------------------------------------------------

    def subject_fields(self) -> list[str]:
        return ["file name"] if self.config.subject_in_name else []

    def find(self, subject: Subject, holds: Holds = NO_HOLDS) -> Iterator[Found]:
        self._require_subject_in_name()
        return self._found(subject, holds)

    def subject_batches(self, subject: Subject, holds: Holds = NO_HOLDS) -> Iterator[Batch]:
        self._require_subject_in_name()
        # An erasure is no regular run: dangling references wait for the next one's sweep.
        skipped: Counter[str] = Counter()
        unheld = (
            (recording, ages)
            for recording, ages in self._of_subject(subject, skipped)
            if not self._covering(recording, ages, holds)
        )
        return self._batched(self._owned(unheld, skipped))

    def _found(self, subject: Subject, holds: Holds) -> Iterator[Found]:
        skipped: Counter[str] = Counter()
        for recording, ages in self._owned(self._of_subject(subject, skipped), skipped):
            held = bool(self._covering(recording, ages, holds))
            for found, age in zip(recording, ages, strict=True):
                yield Found(
                    when=age,
                    held=held,
                    where=os.fsdecode(b"/".join((*found.folder, found.name))),
                    fields={"file name": os.fsdecode(found.name)},
                )

    def _of_subject(
        self, subject: Subject, skipped: Counter[str]
    ) -> Iterator[tuple[tuple[_Found, ...], list[datetime | None]]]:
        """The recordings whose names name `subject`, of any age, undated ones too."""
        for recording in self._recordings(skipped):
            if any(subject.matches_name(_stem_text(found.name)) for found in recording):
                yield recording, [self._age(found) for found in recording]

    def _covering(
        self, recording: tuple[_Found, ...], ages: Sequence[datetime | None], holds: Holds
    ) -> list[str]:
        """The holds covering any file of a recording: its files go together or not at all."""
        covering: dict[str, None] = {}
        for found, age in zip(recording, ages, strict=True):
            covering.update(dict.fromkeys(holds.covering(age, self._names(found.name))))
        return list(covering)

    def _names(self, name: bytes) -> Callable[[Subject], bool] | None:
        """Whether a file names a subject; None when names do not tell (then holds by number
        hold every file of their window)."""
        if not self.config.subject_in_name:
            return None
        stem = _stem_text(name)
        return lambda subject: subject.matches_name(stem)

    def _require_subject_in_name(self) -> None:
        if not self.config.subject_in_name:
            raise StoreError(
                f"{self.label}: this store cannot tell whose files are; set subject_in_name: "
                "true when the file names carry the numbers of the call"
            )

    # -- walking ---------------------------------------------------------------------------------

    def _dated(self, skipped: Counter[str]) -> Iterator[Walked]:
        """The walk's recordings with the age of each file; undated ones are counted, not given."""
        for recording in self._recordings(skipped):
            ages = self._ages(recording)
            if ages is None:
                skipped[UNDATED] += len(recording)
                continue
            yield recording, ages

    def _owned(
        self, items: Iterator[tuple[tuple[_Found, ...], A]], skipped: Counter[str]
    ) -> Iterator[tuple[tuple[_Found, ...], A]]:
        """The recordings no `named_by` row names, in walk order; the others counted.

        The rows are asked about the paths of up to IN_LIST_CHUNK files at a time, never one
        query per file. A recording is left alone when a row names any of its files.
        """
        if self._named_by is None:
            yield from items
            return
        pending: list[tuple[tuple[_Found, ...], A]] = []
        paths = 0
        for item in items:
            pending.append(item)
            paths += len(item[0])
            if paths >= IN_LIST_CHUNK:
                yield from self._unnamed(pending, _recording_of, skipped)
                pending, paths = [], 0
        if pending:
            yield from self._unnamed(pending, _recording_of, skipped)

    def _still_unnamed(
        self, recordings: Sequence[Recording], skipped: Counter[str]
    ) -> list[Recording]:
        """The planned recordings no `named_by` row names now; a failed check deletes nothing."""
        if self._named_by is None:
            return list(recordings)
        try:
            return self._unnamed(recordings, _itself, skipped)
        except StoreError as error:
            raise StoreError(
                f"{self.label}: cannot check which planned files rows of "
                f"{self._named_by.where} name ({error}); nothing of this batch was deleted"
            ) from None

    def _unnamed(
        self,
        items: Sequence[U],
        files: Callable[[U], Sequence[_Found | PlannedFile]],
        skipped: Counter[str],
    ) -> list[U]:
        """The items none of whose `files` a `named_by` row names; the others are counted."""
        column = self._named_by
        if column is None:
            return list(items)
        paths = [[_relative_text(file.folder, file.name) for file in files(item)] for item in items]
        named = column.named([path for item in paths for path in item if path is not None])
        kept: list[U] = []
        for item, item_paths in zip(items, paths, strict=True):
            if named.intersection(item_paths):
                skipped[NAMED_BY_ROW] += len(item_paths)
            else:
                kept.append(item)
        return kept

    def _recordings(self, skipped: Counter[str]) -> Iterator[tuple[_Found, ...]]:
        """The walk's files as recordings: each file alone, or with its siblings when grouping."""
        walk = self._walk(skipped, _sibling_order if self.config.group_siblings else None)
        try:
            if not self.config.group_siblings:
                for found in walk:
                    yield (found,)
                return
            # Siblings come one after the other, unless a subfolder sorts between them: a group
            # stays open until its folder has no more of them or the walk has left the folder.
            groups: dict[tuple[bytes, ...], list[_Found]] = {}
            for found in walk:
                left = [f for f in groups if found.folder[: len(f)] != f]
                for folder in sorted(left, key=len, reverse=True):
                    yield tuple(groups.pop(folder))
                group = groups.get(found.folder)
                if group is not None and _stem(group[0].name) == _stem(found.name):
                    group.append(found)
                    continue
                if group is not None:
                    yield tuple(group)
                groups[found.folder] = [found]
            for folder in sorted(groups, key=len, reverse=True):
                yield tuple(groups[folder])
        finally:
            walk.close()

    def _walk(
        self, skipped: Counter[str], order: Callable[[bytes], Any] | None = None
    ) -> Generator[_Found, None, None]:
        """Matching regular files, depth first in name order, holding one open folder per level."""
        root_fd = self._require_open()
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
                elif self._matches((*listing.folder, name)):
                    skipped[_MATCHED] += 1
                    if _is_lock_file(name):
                        skipped[LOCK_FILE] += 1
                    elif _is_greeting(name):
                        skipped[PROTECTED] += 1
                    elif not stat.S_ISREG(mode):
                        skipped[NOT_REGULAR_FILE] += 1
                    elif status.st_dev != self._root.device:
                        # A file mounted over a name in the root (a bind mount): another
                        # filesystem, which the store never touches (and cannot unlink).
                        skipped[OTHER_FILESYSTEM] += 1
                    else:
                        yield _Found(listing.folder, name, status)
                elif stat.S_ISREG(mode):
                    skipped[_UNMATCHED] += 1
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
        if status.st_dev != self._root.device:
            skipped[OTHER_FILESYSTEM] += 1
            return None
        if name == b"tmp":  # Asterisk records into tmp/ and renames into place when done
            skipped[PROTECTED] += 1
            return None
        try:
            fd = open_folder(name, parent.fd, self._root.device)
        except Skip as skip:
            if skip.reason != VANISHED:
                skipped[skip.reason] += 1
            return None
        return _Listing.of(fd, (*parent.folder, name), skipped, order, owned=True)

    def _matches(self, relative: tuple[bytes, ...]) -> bool:
        # Patterns are text; surrogateescape keeps undecodable bytes matchable by `*` and `?`.
        path = os.fsdecode(b"/".join(relative))
        return any(pattern.fullmatch(path) for pattern in self._patterns)

    # -- ages ------------------------------------------------------------------------------------

    def _age(self, found: _Found) -> datetime | None:
        if self.config.age_from == "mtime":
            return mtime_age(found.status)
        if self.config.age_from == "path_date":
            return path_age(found.folder, self.zone)
        return filename_age(found.name, self.zone)

    def _ages(self, recording: tuple[_Found, ...]) -> list[datetime] | None:
        """The age of each file of a recording; None when one is undated, which keeps them all."""
        ages = [self._age(found) for found in recording]
        return None if None in ages else [age for age in ages if age is not None]

    def _day(self, age: datetime) -> date:
        return age.astimezone(self.zone).date()

    def _batched(
        self, recordings: Iterator[tuple[tuple[_Found, ...], Sequence[datetime | None]]]
    ) -> Iterator[Batch]:
        """Batches of about `batch_size` files; a recording is never split across batches."""
        planned: list[Recording] = []
        files = number = 0
        for recording, ages in recordings:
            planned.append(tuple(map(_plan, recording, ages)))
            files += len(recording)
            if files >= self.config.batch_size:
                number += 1
                yield self._batch(number, planned)
                planned, files = [], 0
        if planned:
            yield self._batch(number + 1, planned)

    def _batch(self, number: int, planned: list[Recording]) -> Batch:
        days = [
            self._day(file.age)
            for recording in planned
            for file in recording
            if file.age is not None
        ]
        return Batch(
            number=number,
            planned=sum(len(recording) for recording in planned),
            span=(min(days), max(days)) if days else None,
            payload=tuple(planned),
        )

    # -- deleting --------------------------------------------------------------------------------

    def _delete(
        self, chain: FolderChain, recording: Recording, cutoff: datetime, skipped: Counter[str]
    ) -> list[tuple[PlannedFile, os.stat_result]]:
        """Unlink the files of one planned recording if all are still as planned.

        One file changed (rewritten, replaced, grown, made young) keeps the whole recording;
        one removed by someone else does not. Returns the files unlinked, each with its status
        as checked right before.
        """
        checked: list[tuple[PlannedFile, os.stat_result]] = []
        vanished = 0
        for planned in recording:
            try:
                checked.append((planned, self._check(chain, planned, cutoff)))
            except Skip as skip:
                if skip.reason == VANISHED:
                    vanished += 1
                    continue
                if vanished:
                    skipped[VANISHED] += vanished
                skipped[skip.reason] += len(recording) - vanished
                return []
        if vanished:
            skipped[VANISHED] += vanished
        deleted = []
        for planned, status in checked:
            try:
                os.unlink(planned.name, dir_fd=chain.open(planned.folder))
            except Skip as skip:
                skipped[skip.reason] += 1
                continue
            except FileNotFoundError:
                skipped[VANISHED] += 1
                continue
            except OSError:
                skipped[UNREMOVABLE] += 1
                continue
            deleted.append((planned, status))
        return deleted

    def _check(self, chain: FolderChain, planned: PlannedFile, cutoff: datetime) -> os.stat_result:
        """The status of a planned file if it is still the file planned, or raise Skip."""
        if planned.age is not None and not planned.age < cutoff:
            raise Skip(CHANGED)  # a plan made for another cutoff is never applied
        for component in (*planned.folder, planned.name):
            check_component(component)
        folder_fd = chain.open(planned.folder)
        try:
            status = os.stat(planned.name, dir_fd=folder_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise Skip(VANISHED) from None
        except OSError:
            raise Skip(UNREADABLE) from None
        if not self._still_planned(status, planned, cutoff):
            raise Skip(CHANGED)
        return status

    def _still_planned(
        self, status: os.stat_result, planned: PlannedFile, cutoff: datetime
    ) -> bool:
        same_file = (
            stat.S_ISREG(status.st_mode)
            and status.st_dev == planned.device
            and status.st_ino == planned.inode
            and status.st_size == planned.size  # a growing file is still being recorded
        )
        if not same_file:
            return False
        return self.config.age_from != "mtime" or mtime_age(status) < cutoff

    # -- references ------------------------------------------------------------------------------

    def clear_references(
        self, deleted: Sequence[PlannedFile], result: BatchResult, cutoff: datetime
    ) -> int:
        """Clear the references to a batch's deleted files; how many were cleared.

        The files are gone already when this fails: BatchFailed carries `result`, so they are
        counted as deleted, and the next run's sweep clears what is left.
        """
        column = self._require_reference_column()
        try:
            names = self._unresolvable(deleted, cutoff)
            return column.clear(names)
        except StoreError as error:
            files = f"{len(deleted)} file{'' if len(deleted) == 1 else 's'}"
            raise BatchFailed(
                f"{self.label}: this batch deleted {files}, but references to them in "
                f"{column.where} could not be cleared ({error}); the next run clears them",
                replace(result, counts={**result.counts, REFERENCES_CLEARED: 0}),
                getattr(error, "code", None),
                getattr(error, "sqlstate", None),
            ) from None

    def _unresolvable(self, deleted: Sequence[PlannedFile], cutoff: datetime) -> list[str]:
        """The base names of deleted files that no row can still mean.

        A row names a file by its base name alone, which FreePBX looks for in the folder of the
        name's date: a row whose name is dated on or after the cutoff, or whose name still
        resolves to a file (or a sibling) in that folder, the root or where it was deleted,
        belongs to another recording of the same name and keeps its reference. (A sibling with
        another extension does not keep it: the row names this one.)
        """
        names: set[str] = set()
        with FolderChain(self._require_open(), self._root.device) as chain:
            for planned in deleted:
                text = _as_text(planned.name)  # not UTF-8: it cannot be in the database
                if text is None or text in names:
                    continue
                days = reference_days(planned.name)
                last = days[-1] if days else None
                young = _end_of_day(last.year, last.month, last.day, self.zone) if last else None
                if last is not None and (young is None or not young < cutoff):
                    continue
                folders = {(), planned.folder, *(_day_folder(day) for day in days)}
                if all(_folder_without(chain, f, planned.name) is not None for f in folders):
                    names.add(text)
        return sorted(names)

    def _apply_sweep(self, holds: Holds, cutoff: datetime) -> BatchResult:
        """The run's sweep of dangling references: no file is deleted, rows are cleared."""
        column = self._require_reference_column()
        cleared = 0
        try:
            for count in self._sweep_references(cutoff, holds):
                cleared += count
        except StoreError as error:
            raise BatchFailed(
                f"{self.label}: references to files that are gone in {column.where} could not "
                f"be cleared ({error}); {cleared} were cleared before the failure, the next run "
                "clears the others",
                BatchResult(deleted=0, counts={REFERENCES_CLEARED: cleared}),
                getattr(error, "code", None),
                getattr(error, "sqlstate", None),
            ) from None
        log.info("dangling references cleared", store=self.label, count=cleared)
        return BatchResult(deleted=0, counts={REFERENCES_CLEARED: cleared})

    def _sweep_references(self, cutoff: datetime, holds: Holds) -> Iterator[int]:
        """Clear references to files that are gone and whose name dates them before the cutoff.

        These are left by a run that could not clear them, or by files removed by hand. A young
        reference is never cleared (its file may still be being recorded), nor a held one, nor
        one whose file, or a sibling of it with another extension, exists or cannot be looked for.
        """
        column = self._require_reference_column()
        with FolderChain(self._require_open(), self._root.device) as chain:
            for values in column.values():
                stems: dict[tuple[bytes, ...], set[bytes] | None] = {}
                gone = [
                    value for value in values if self._is_gone(chain, value, cutoff, holds, stems)
                ]
                if gone:
                    yield column.clear(gone)

    def _is_gone(
        self,
        chain: FolderChain,
        value: str,
        cutoff: datetime,
        holds: Holds,
        stems: dict[tuple[bytes, ...], set[bytes] | None],
    ) -> bool:
        name = value.encode("utf-8", "surrogateescape")
        try:
            check_component(name)
        except Skip:
            return False  # a path, not a base name: not one of ours
        days = reference_days(name)
        young = (
            _end_of_day(days[-1].year, days[-1].month, days[-1].day, self.zone) if days else None
        )
        if young is None or not young < cutoff:
            return False  # no date, or as young as the cutoff: perhaps still being recorded
        if self._held_reference(name, days, holds):
            return False
        # Where FreePBX looks (YYYY/MM/DD of the name's date), and the root itself.
        folders = [(), *(_day_folder(day) for day in days)]
        if not any(self._matches((*folder, name)) for folder in folders):
            return False  # a file `match` does not select is not this store's to account for
        return all(_absent(chain, folder, name, stems) for folder in folders)

    def _held_reference(self, name: bytes, days: Sequence[date], holds: Holds) -> bool:
        """Whether a hold may cover the call a reference belongs to: its window meets any day
        the name dates it to, and (with subject_in_name) the name names the hold's person."""
        first = earliest_instant(datetime.combine(days[0], time()), self.zone)
        last = end_of_day(days[-1], self.zone)
        names = self._names(name)
        return any(
            (scope.start is None or scope.start <= last)
            and (scope.end is None or first < scope.end)
            and (scope.subject is None or names is None or names(scope.subject))
            for scope in holds.scopes
        )

    # -- helpers ---------------------------------------------------------------------------------

    def _require_open(self) -> int:
        if self._root.fd is None:
            raise RuntimeError("FilesStore used before open()")  # a bug in the caller
        return self._root.fd

    def _require_reference_column(self) -> ReferenceColumn:
        if self._reference_column is None:
            raise RuntimeError("FilesStore has no references")  # a bug in the caller
        return self._reference_column

    def _root_state(self) -> str:
        try:
            status = examine_root(self.root)
            os.close(open_root(self.root, probe=True))
        except RootUnfit as unfit:
            return unfit.warning
        return f"readable, filesystem device {os.major(status.st_dev)}:{os.minor(status.st_dev)}"

    def _age_source(self) -> str:
        zone = getattr(self.zone, "key", None) or str(self.zone)
        if self.config.age_from == "path_date":
            return (
                f"path_date: the YYYY/MM/DD folders, a file as young as the end of its day ({zone})"
            )
        if self.config.age_from == "filename_date":
            return (
                "filename_date: the time in the file name (YYYYMMDD-HHMMSS or YYYYMMDDhhmmss), "
                f"wall time in {zone}"
            )
        return "mtime: the file's modification time (never access or change time)"

    def _warn_if_incomplete(self, skipped: Counter[str]) -> None:
        blind_spots = {
            reason: skipped[reason] for reason in (UNREADABLE, OTHER_FILESYSTEM, MOUNT_POINT)
        }
        if any(blind_spots.values()):
            log.warning("files store could not look everywhere", store=self.label, **blind_spots)


# -- folders -------------------------------------------------------------------------------------


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


def _remove_emptied_date_folders(chain: FolderChain, folder: tuple[bytes, ...]) -> None:
    """Remove the YYYY/MM/DD folders a batch emptied, upwards, up to the first non-empty one."""
    while folder and folder[-1].isdigit():
        try:
            parent_fd = chain.open(folder[:-1])
        except Skip:
            return
        try:
            os.rmdir(folder[-1], dir_fd=parent_fd)
        except FileNotFoundError:
            pass  # already gone; its parent may be empty now
        except OSError:
            return  # not empty, or no longer a plain folder: leave it and everything above
        folder = folder[:-1]


def _is_lock_file(name: bytes) -> bool:
    return name in (b".lock", b"lock") or name.startswith(b".lock-")


_GREETINGS = (b"busy", b"unavail", b"greet", b"temp")


def _is_greeting(name: bytes) -> bool:
    """Voicemail greetings (`busy.wav`, `unavail.WAV`, ...): never retention's business."""
    return name.split(b".", 1)[0] in _GREETINGS


def _stem(name: bytes) -> bytes:
    """The name up to its last dot: `x.12.wav` and `x.12.mp3` share the stem `x.12`."""
    stem, dot, _ = name.rpartition(b".")
    return stem if dot else name


def _stem_text(name: bytes) -> str:
    """A file name without its extension, as text for matching (undecodable bytes escaped)."""
    return os.fsdecode(_stem(name))


def _sibling_order(name: bytes) -> tuple[bytes, bytes]:
    # By stem first: `x.mp3`, `x.n.wav`, `x.wav` would put a stranger between two siblings.
    return _stem(name), name


def _as_text(name: bytes) -> str | None:
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _recording_of(item: tuple[tuple[_Found, ...], Any]) -> tuple[_Found, ...]:
    return item[0]


def _itself(recording: Recording) -> Recording:
    return recording


def _relative_text(folder: tuple[bytes, ...], name: bytes) -> str | None:
    """The path below the root as a row names it (`1001/x.wav`); None when it is not UTF-8."""
    return _as_text(b"/".join((*folder, name)))


def _plan(found: _Found, age: datetime | None) -> PlannedFile:
    return PlannedFile(
        folder=found.folder,
        name=found.name,
        device=found.status.st_dev,
        inode=found.status.st_ino,
        size=found.status.st_size,
        age=age,
    )


# -- references ----------------------------------------------------------------------------------


class _NamingColumnBase:
    """A text column of an SQL table naming recordings, connected like an SQL store.

    Connected through `sql.Database` (password file or systemd credential, session timeouts),
    with retries and backoff on lock waits and lost connections. Its values are personal data:
    they are compared and cleared, never logged, and driver messages lose what they quote before
    they reach an exception.
    """

    key = ""  # the config key, which names the column in messages and logs
    table_hint = ""  # what to set the table to, for the message of a missing table
    column_hint = ""  # what to set the column to, for the message of a missing column
    absent_when_missing = False  # a missing database or table: StoreAbsent, else StoreError

    def __init__(self, config: ReferencesConfig, connection: ConnectionConfig) -> None:
        self.config = config
        self.where = f"{config.table}.{config.column} of connection {config.connection}"
        self._database = Database(config.connection, connection, f"{self.key} in {self.where}")
        self._opened = False
        self._table_sql = ""
        self._column_sql = ""
        self._column_name = config.column
        self._index: str | None = None

    def open(self) -> None:
        self.close()
        try:
            connection = self._database.open()
        except StoreAbsent as absent:
            if self.absent_when_missing:
                raise
            # A missing reference database is an error of this store, not an absent store.
            raise StoreError(str(absent)) from None
        try:
            with connection:
                # The inspector, not a reflected Table: only the column and its indexes matter.
                inspector = inspect(connection)
                column = self._column(inspector)
                self._index = leading_index(inspector, self.config.table, column)
                preparer = self._database.preparer
                self._table_sql = preparer.quote(self.config.table)
                self._column_sql = preparer.quote(column)
                self._column_name = column
        except DBAPIError as exc:
            self.close()
            failure = describe(exc, f"{self.key} in {self.where}: reading the table definition")
            raise StoreError(
                f"{self.key} in {self.where}: cannot read the table definition: {failure}"
            ) from None
        except StoreError:
            self.close()
            raise
        self._opened = True
        log.debug(f"{self.key} opened", **{self.key: self.where}, database=self._database.server)

    def close(self) -> None:
        self._opened = False
        self._database.close()

    def _server(self) -> str:
        return self._database.server or _backend(self._database.settings.url)

    def _needed(self) -> set[str]:
        return {"SELECT"}

    def missing_privileges(self) -> tuple[list[str], list[str]]:
        """For `check`: what the user lacks on the column's table, with the GRANT that fixes it;
        and, as a warning, privileges that could not be read (as an SQL store reports them)."""
        from retentiond.stores.db.privileges import (
            PrivilegeError,
            grant_statement,
            missing_privileges,
        )

        table = self.config.table
        try:
            missing = missing_privileges(self._database, None, table, self._needed())
            grant = grant_statement(self._database, table, missing) if missing else None
        except PrivilegeError as error:
            return [], [f"{self.key}: privileges on {table} could not be read: {error}"]
        if not missing:
            return [], []
        names = ", ".join(sorted(missing))
        fix = f"; run: {grant}" if grant else ""
        return [f"{self.key}: missing privilege {names} on {table}{fix}"], []

    def _index_warning(self, reads: str) -> list[str]:
        if not self._opened or self._index is not None:
            return []
        table, column = self.config.table, self._column_name
        return [
            f"warning: no index on {table}.{column}: {reads} the whole table; "
            f"CREATE INDEX {table}_{column} ON {table} ({column}) fixes it"
        ]

    def _column(self, inspector: Inspector) -> str:
        """The column's name as the database spells it; StoreError naming what is missing."""
        table, wanted, key = self.config.table, self.config.column, self.key
        try:
            columns = inspector.get_columns(table)
        except NoSuchTableError:
            tables = sorted(inspector.get_table_names())
            there = f"; tables there: {', '.join(tables)}" if 0 < len(tables) <= 20 else ""
            missing = StoreAbsent if self.absent_when_missing else StoreError
            raise missing(
                f"{key}: table {table} does not exist in connection "
                f"{self.config.connection}{there}. {self.table_hint}"
            ) from None
        found = [c for c in columns if c["name"] == wanted]
        if not found:
            # MariaDB column names are case-insensitive; accept a unique case-insensitive match.
            found = [c for c in columns if c["name"].lower() == wanted.lower()]
        if len(found) != 1:
            names = ", ".join(c["name"] for c in columns)
            raise StoreError(
                f"{key}: column {wanted} does not exist in table {table} of connection "
                f"{self.config.connection}; its columns: {names}. {self.column_hint}"
            )
        column = found[0]
        if not isinstance(column["type"], sqltypes.String | sqltypes.NullType):
            raise StoreError(
                f"{key}: column {column['name']} of table {table} has type "
                f"{column['type']!r}; it must hold file names as text"
            )
        return column["name"]

    def _failed(self, action: str, exc: DBAPIError) -> str:
        failure = describe(exc, f"{self.key} in {self.where}: {action}")
        message = f"{action} failed ({failure.codes}): {failure.description}"
        return f"{message}; {failure.remedy}" if failure.remedy else message

    def _retrying(
        self,
        action: str,
        work: Callable[[Connection], T],
        *,
        write: bool = False,
        failure: Callable[[DBAPIError], str] | None = None,
    ) -> T:
        """`sql.Database.retrying`, with messages that fit files already deleted."""
        return self._database.retrying(
            action,
            work,
            write=write,
            failure=failure or (lambda exc: self._failed(action, exc)),
            gave_up=lambda reason, attempts: GAVE_UP[reason].format(attempts=attempts),
            event=f"{self.key} retrying",
            context={self.key: self.where},
        )


class ReferenceColumn(_NamingColumnBase):
    """A column naming recordings by base name (FreePBX `cdr.recordingfile`) in an SQL database.

    Its rows are set to '' when their file is deleted; the rows themselves stay.
    """

    key = "references"
    table_hint = "Set references.table to the table naming the recordings"
    column_hint = "Set references.column to the column holding the recording file names"

    def _needed(self) -> set[str]:
        return {"SELECT", f"UPDATE({self._column_name})"}

    def describe(self) -> list[str]:
        return [
            f"references: {self.where} ({self._server()}): rows naming a deleted file by its base "
            "name are set to '' after each batch; the rows themselves stay",
            "references: every run ends with a sweep: references whose file is gone under every "
            "extension, whose name dates them before the cutoff and that no hold covers are "
            "cleared too (left by a failed update or a file removed by hand)",
            *self._index_warning("every batch's update and the sweep read"),
        ]

    def clear(self, names: Sequence[str]) -> int:
        """Set every reference to one of `names` to '', in one transaction. How many were set."""
        if not names:
            return 0
        column = self._column_sql
        # MariaDB compares case- and trailing-space-insensitively: `x.WAV` is not `x.wav`.
        exact = self._database.dialect.exact_in(column, "names")
        statement = text(
            f"UPDATE {self._table_sql} SET {column} = '' WHERE {column} IN :names{exact}"
        ).bindparams(bindparam("names", expanding=True))

        def update(connection: Connection) -> int:
            cleared = 0
            for start in range(0, len(names), IN_LIST_CHUNK):
                chunk = list(names[start : start + IN_LIST_CHUNK])
                cleared += connection.execute(statement, {"names": chunk}).rowcount
            return cleared

        return self._retrying("clearing references", update, write=True, failure=self._refused)

    def _refused(self, exc: DBAPIError) -> str:
        """Why the update failed, in fixed words and the error code: never the server's text."""
        failure = describe(exc, f"{self.key} in {self.where}: clearing references")
        if failure.code in _NO_PRIVILEGE_CODES:
            return (
                f"clearing references failed ({failure.codes}): the database user may not update "
                f"{self.config.table}.{self._column_name}; grant it UPDATE on that column "
                "(retentiond check prints the GRANT statement)"
            )
        return f"clearing references failed ({failure.codes}): {failure.description}"

    def values(self) -> Iterator[list[str]]:
        """The distinct non-empty references, in chunks along the column's order."""
        column = self._column_sql
        statement = text(
            f"SELECT DISTINCT {column} FROM {self._table_sql} WHERE {column} > :last "
            f"ORDER BY {column} LIMIT :n"
        )
        last: Any = ""
        while True:
            rows = self._retrying(
                "reading references", partial(_read_values, statement, last, SWEEP_CHUNK)
            )
            if not rows:
                return
            last = rows[-1]
            yield [value for value in rows if isinstance(value, str) and value]
            if len(rows) < SWEEP_CHUNK:
                return


class NamedByColumn(_NamingColumnBase):
    """A column naming files by their path relative to the store's root (3CX
    `recordings.recording_url`): the files it names belong to the store purging its rows.

    Only read. A missing table (or SQLite file) makes the files store absent: without the rows,
    no file can be told apart from one a row still names, so none is deleted.
    """

    key = "named_by"
    table_hint = "Set named_by.table to the table whose rows name the files"
    column_hint = "Set named_by.column to the column holding the paths relative to the root"
    absent_when_missing = True

    def describe(self) -> list[str]:
        return [
            f"named_by: {self.where} ({self._server()}): a file a row names by its path "
            "relative to the root is left to the store purging those rows, checked again "
            "before each batch deletes (counted as named_by_row)",
            *self._index_warning("each check of up to 500 files reads"),
        ]

    def named(self, paths: Sequence[str]) -> set[str]:
        """Those of `paths` a row names, read in chunks in one transaction.

        The database may match loosely (MariaDB ignores case and trailing spaces, and a latin1
        column would defeat a binary comparison); the values it returns are compared here
        exactly, as the rows' store follows them to the file byte for byte.
        """
        if not paths:
            return set()
        column = self._column_sql
        statement = text(
            f"SELECT DISTINCT {column} FROM {self._table_sql} WHERE {column} IN :paths"
        ).bindparams(bindparam("paths", expanding=True))

        def read(connection: Connection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(paths), IN_LIST_CHUNK):
                chunk = list(dict.fromkeys(paths[start : start + IN_LIST_CHUNK]))
                wanted = set(chunk)
                for value in connection.execute(statement, {"paths": chunk}).scalars():
                    if isinstance(value, bytes):
                        value = _as_text(value)
                    if value in wanted:
                        found.add(value)
            return found

        return self._retrying("reading the rows that name files", read)


# The server refused a statement for want of a privilege (MariaDB/MySQL, PostgreSQL).
_NO_PRIVILEGE_CODES = {"1142", "1143", "42501"}


def _read_values(statement: TextClause, last: Any, size: int, connection: Connection) -> list[Any]:
    return list(connection.execute(statement, {"last": last, "n": size}).scalars())


def _backend(url: str) -> str:
    try:
        return make_url(url).get_backend_name()
    except ArgumentError:
        return "unknown database"


def reference_days(name: bytes) -> list[date]:
    """The days a FreePBX recording name files it under, oldest first.

    FreePBX takes the fourth `-` field as YYYYMMDD; a destination or caller holding a `-` shifts
    the fields, so every `YYYYMMDD-HHMMSS` in the name counts as well.
    """
    candidates = [match.group(1) for match in _FREEPBX_TIME.finditer(name)]
    fields = name.split(b"-")
    if len(fields) > 3:
        candidates.append(fields[3])
    days = set()
    for digits in candidates:
        if len(digits) == 8 and digits.isdigit():
            try:
                days.add(date(int(digits[0:4]), int(digits[4:6]), int(digits[6:8])))
            except ValueError:
                continue
    return sorted(days)


def _day_folder(day: date) -> tuple[bytes, bytes, bytes]:
    """The folder FreePBX files a recording of `day` under: YYYY/MM/DD."""
    return (b"%04d" % day.year, b"%02d" % day.month, b"%02d" % day.day)


_NO_FOLDER = -1


def _folder_without(chain: FolderChain, folder: tuple[bytes, ...], name: bytes) -> int | None:
    """The open `folder` when `name` is not in it (_NO_FOLDER when the folder does not exist);
    None when the name is there or that cannot be told."""
    try:
        fd = chain.open(folder)
    except Skip as skip:
        return _NO_FOLDER if skip.reason == VANISHED else None  # no folder: nothing in it
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return fd
    except OSError:
        return None
    return None


def _absent(
    chain: FolderChain,
    folder: tuple[bytes, ...],
    name: bytes,
    stems: dict[tuple[bytes, ...], set[bytes] | None],
) -> bool:
    """Whether neither `name` nor a sibling of it is in `folder`; False when that is unknown."""
    fd = _folder_without(chain, folder, name)
    if fd is None:
        return False
    if fd == _NO_FOLDER:
        return True
    if folder not in stems:
        try:
            stems[folder] = {_stem(name) for name in sorted_names(fd)}
        except OSError:
            stems[folder] = None
    known = stems[folder]
    return known is not None and _stem(name) not in known


# -- ages ----------------------------------------------------------------------------------------


def mtime_age(status: os.stat_result) -> datetime:
    """The modification time, floored to the microsecond (which never moves it across a cutoff)."""
    return _EPOCH + timedelta(microseconds=status.st_mtime_ns // 1000)


def path_age(folder: Sequence[bytes], zone: tzinfo) -> datetime | None:
    """The end of the day (YYYY/MM/DD) or month (YYYY/MM) named by the folders nearest the file."""
    digits = [name.decode("ascii") if name.isdigit() else "" for name in folder]
    for end in range(len(digits), 0, -1):
        window = ["", "", "", *digits[:end]][-3:]  # the folder and its two parents
        lengths = tuple(len(name) for name in window)
        if lengths == (4, 2, 2):
            year, month, day = window
            return _end_of_day(int(year), int(month), int(day), zone)
        if lengths[1:] == (4, 2):
            year, month = window[1:]
            return _end_of_month(int(year), int(month), zone)
    return None


def filename_age(name: bytes, zone: tzinfo) -> datetime | None:
    """The time stamp in a file name, read as wall time in `zone`.

    A name can hold other digit runs (numbers dialled, unique ids); among valid candidates of the
    most specific form the youngest wins, so a look-alike can only delay a deletion.
    """
    for pattern in (_FREEPBX_TIME, _COMPACT_TIME):
        times = [_wall_time(b"".join(match.groups()), zone) for match in pattern.finditer(name)]
        valid = [time for time in times if time is not None]
        if valid:
            return max(valid)
    days = [_day_digits(match.group(1), zone) for match in _DAY_ONLY.finditer(name)]
    valid = [day for day in days if day is not None]
    return max(valid) if valid else None


def _wall_time(digits: bytes, zone: tzinfo) -> datetime | None:
    text = digits.decode("ascii")
    try:
        wall = datetime(
            int(text[0:4]),
            int(text[4:6]),
            int(text[6:8]),
            int(text[8:10]),
            int(text[10:12]),
            int(text[12:14]),
        )
        return latest_instant(wall, zone)
    except (ValueError, OverflowError):
        return None


def _day_digits(digits: bytes, zone: tzinfo) -> datetime | None:
    text = digits.decode("ascii")
    return _end_of_day(int(text[0:4]), int(text[4:6]), int(text[6:8]), zone)


def _end_of_day(year: int, month: int, day: int, zone: tzinfo) -> datetime | None:
    try:
        return end_of_day(date(year, month, day), zone)
    except (ValueError, OverflowError):
        return None


def _end_of_month(year: int, month: int, zone: tzinfo) -> datetime | None:
    if not 1 <= month <= 12:
        return None
    return _end_of_day(year, month, calendar.monthrange(year, month)[1], zone)
