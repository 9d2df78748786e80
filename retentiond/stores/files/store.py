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

import itertools
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import date, datetime, tzinfo
from functools import partial
from typing import Any, TypeVar

import structlog

from retentiond.config.globs import compile_glob, expand_braces
from retentiond.config.model import ConnectionConfig, FilesStoreConfig
from retentiond.config.roots import system_root_warning
from retentiond.errors import StoreError
from retentiond.policy.rules import NO_HOLDS, Holds
from retentiond.policy.subjects import Subject
from retentiond.stores.base import Batch, BatchResult, Found, Store, Survey
from retentiond.stores.db.rows import IN_LIST_CHUNK
from retentiond.stores.files.columns import NamedByColumn, ReferenceColumn
from retentiond.stores.files.deleting import (
    delete_recording,
    open_recording_folder,
    remove_emptied_date_folders,
)
from retentiond.stores.files.names import relative_text, stem_text
from retentiond.stores.files.references import REFERENCES_CLEARED, References, Sweep
from retentiond.stores.files.walk import (
    MATCHED,
    UNMATCHED,
    FileTree,
    FoundFile,
    PlannedFile,
    Recording,
    plan_file,
)
from retentiond.stores.fs.ages import filename_age, mtime_age, path_age
from retentiond.stores.fs.folders import (
    HARD_LINKED,
    MOUNT_POINT,
    MOUNTS_UNTOLD,
    OTHER_FILESYSTEM,
    UNREADABLE,
    UNREMOVABLE,
    FolderChain,
    RootFolder,
    RootUnfit,
    RootWording,
    examine_root,
    mounts_told_apart,
    open_root,
)
from retentiond.stores.fs.overlap import Overlap

log = structlog.get_logger()

# Why an object was left alone, as counted in Survey.skipped and BatchResult.skipped (besides
# the folders module's symlink, other_filesystem, unreadable, changed, vanished, ...).
UNDATED = "undated"

NAMED_BY_ROW = "named_by_row"  # a row of `named_by` names it: the store purging the rows owns it

U = TypeVar("U")
A = TypeVar("A")  # the ages of a recording's files: known (`datetime`) or perhaps not (`None`)

# One recording as walked, with the age of each of its files.
Walked = tuple[tuple[FoundFile, ...], list[datetime]]


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
        self.batch_size = config.batch_size
        self.pause = config.pause
        # Checked when the config was loaded: each expands to patterns that can match.
        self._patterns = [
            compile_glob(expanded)
            for pattern in config.match
            for expanded in expand_braces(pattern)
        ]
        self._root = RootFolder(config.root, RootWording(), probe=True)
        self._tree = FileTree(self._root, self._patterns, group_siblings=config.group_siblings)
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
        self._references = (
            References(self._reference_column, self._tree, zone, self.label, self._names)
            if self._reference_column is not None
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
        matched, unmatched = skipped.pop(MATCHED, 0), skipped.pop(UNMATCHED, 0)
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
        walk = self._tree.walk(skipped)
        try:
            next(walk, None)
        finally:
            walk.close()
        return 0 if skipped[MATCHED] else skipped[UNMATCHED]

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
            yield Batch(number=number + 1, planned=0, payload=Sweep(holds))

    def apply(self, batch: Batch, cutoff: datetime) -> BatchResult:
        if isinstance(batch.payload, Sweep):
            return self._require_references().apply_sweep(batch.payload.holds, cutoff)
        root_fd = self._tree.require_open()
        skipped: Counter[str] = Counter()
        deleted: list[PlannedFile] = []
        deleted_bytes = hard_linked = 0
        # A row may have come to name a planned file since the plan: asked again, right before.
        recordings = self._still_unnamed(batch.payload, skipped)
        by_mtime = self.config.age_from == "mtime"
        with (
            FolderChain(root_fd, self._root.device) as chain,
            Overlap(self.config.unlink_threads) as overlap,
        ):
            # One folder's recordings at a time, a few at once: its descriptor stays open until
            # they are all done, each recording checked and unlinked file by file in its task.
            for _, group in itertools.groupby(recordings, key=_folder_of):
                same_folder = list(group)
                folder = open_recording_folder(chain, same_folder[0])
                task = partial(delete_recording, folder, cutoff=cutoff, by_mtime=by_mtime)
                for done, left in overlap.run(task, same_folder):
                    skipped.update(left)
                    for planned, status in done:
                        deleted.append(planned)
                        deleted_bytes += status.st_size
                        hard_linked += status.st_nlink > 1
            # Deepest first, so a day folder goes before the month folder that holds it.
            for folder_names in sorted({planned.folder for planned in deleted}, reverse=True):
                remove_emptied_date_folders(chain, folder_names)
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
        if self._references is None:
            return result
        cleared = self._references.clear_references(deleted, result, cutoff)
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
    ) -> Iterator[tuple[tuple[FoundFile, ...], list[datetime | None]]]:
        """The recordings whose names name `subject`, of any age, undated ones too."""
        for recording in self._tree.recordings(skipped):
            if any(subject.matches_name(stem_text(found.name)) for found in recording):
                yield recording, [self._age(found) for found in recording]

    def _covering(
        self, recording: tuple[FoundFile, ...], ages: Sequence[datetime | None], holds: Holds
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
        stem = stem_text(name)
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
        for recording in self._tree.recordings(skipped):
            ages = self._ages(recording)
            if ages is None:
                skipped[UNDATED] += len(recording)
                continue
            yield recording, ages

    def _owned(
        self, items: Iterator[tuple[tuple[FoundFile, ...], A]], skipped: Counter[str]
    ) -> Iterator[tuple[tuple[FoundFile, ...], A]]:
        """The recordings no `named_by` row names, in walk order; the others counted.

        The rows are asked about the paths of up to IN_LIST_CHUNK files at a time, never one
        query per file. A recording is left alone when a row names any of its files.
        """
        if self._named_by is None:
            yield from items
            return
        pending: list[tuple[tuple[FoundFile, ...], A]] = []
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
        files: Callable[[U], Sequence[FoundFile | PlannedFile]],
        skipped: Counter[str],
    ) -> list[U]:
        """The items none of whose `files` a `named_by` row names; the others are counted."""
        column = self._named_by
        if column is None:
            return list(items)
        paths = [[relative_text(file.folder, file.name) for file in files(item)] for item in items]
        named = column.named([path for item in paths for path in item if path is not None])
        kept: list[U] = []
        for item, item_paths in zip(items, paths, strict=True):
            if named.intersection(item_paths):
                skipped[NAMED_BY_ROW] += len(item_paths)
            else:
                kept.append(item)
        return kept

    # -- ages ------------------------------------------------------------------------------------

    def _age(self, found: FoundFile) -> datetime | None:
        if self.config.age_from == "mtime":
            return mtime_age(found.status)
        if self.config.age_from == "path_date":
            return path_age(found.folder, self.zone)
        return filename_age(found.name, self.zone)

    def _ages(self, recording: tuple[FoundFile, ...]) -> list[datetime] | None:
        """The age of each file of a recording; None when one is undated, which keeps them all."""
        ages = [self._age(found) for found in recording]
        return None if None in ages else [age for age in ages if age is not None]

    def _day(self, age: datetime) -> date:
        return age.astimezone(self.zone).date()

    def _batched(
        self, recordings: Iterator[tuple[tuple[FoundFile, ...], Sequence[datetime | None]]]
    ) -> Iterator[Batch]:
        """Batches of about `batch_size` files; a recording is never split across batches."""
        planned: list[Recording] = []
        files = number = 0
        for recording, ages in recordings:
            planned.append(tuple(map(plan_file, recording, ages)))
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

    # -- helpers ---------------------------------------------------------------------------------

    def _require_references(self) -> References:
        if self._references is None:
            raise RuntimeError("FilesStore has no references")  # a bug in the caller
        return self._references

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


def _recording_of(item: tuple[tuple[FoundFile, ...], Any]) -> tuple[FoundFile, ...]:
    return item[0]


def _itself(recording: Recording) -> Recording:
    return recording


def _folder_of(recording: Recording) -> tuple[bytes, ...]:
    return recording[0].folder if recording else ()
