"""Clearing references to deleted recordings (FreePBX `cdr.recordingfile`), after each batch
and in a run's closing sweep.

A row names a file by its base name alone, which FreePBX looks for in the folder of the name's
date (YYYY/MM/DD) or the root. A base name still found there, or dated on or after the cutoff,
is another recording's: its rows keep their reference. The sweep also clears references older
than the cutoff, not held, whose file is gone, which a failed update leaves behind. Reference
values are personal data and are never logged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, time, tzinfo

import structlog

from retentiond.errors import StoreError
from retentiond.policy.rules import Holds, earliest_instant, end_of_day
from retentiond.policy.subjects import Subject
from retentiond.stores.base import BatchFailed, BatchResult
from retentiond.stores.files.columns import ReferenceColumn
from retentiond.stores.files.names import as_text, name_stem
from retentiond.stores.files.walk import FileTree, PlannedFile
from retentiond.stores.fs.ages import FREEPBX_TIME, end_of_named_day
from retentiond.stores.fs.folders import VANISHED, FolderChain, Skip, check_component, sorted_names

log = structlog.get_logger()

# What a batch did besides deleting, as counted in BatchResult.counts.
REFERENCES_CLEARED = "references_cleared"  # rows naming a deleted file, set to ''


@dataclass(frozen=True, slots=True)
class Sweep:
    """The payload of a run's last batch: clear dangling references the holds leave free."""

    holds: Holds


class References:
    """A files store's `references` column, cleared of the files its batches delete."""

    def __init__(
        self,
        column: ReferenceColumn,
        tree: FileTree,
        zone: tzinfo,
        label: str,
        names: Callable[[bytes], Callable[[Subject], bool] | None],
    ) -> None:
        self.column = column
        self._tree = tree
        self.zone = zone
        self.label = label
        self._names = names

    def clear_references(
        self, deleted: Sequence[PlannedFile], result: BatchResult, cutoff: datetime
    ) -> int:
        """Clear the references to a batch's deleted files; how many were cleared.

        The files are gone already when this fails: BatchFailed carries `result`, so they are
        counted as deleted, and the next run's sweep clears what is left.
        """
        column = self.column
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
        with FolderChain(self._tree.require_open(), self._tree.root.device) as chain:
            for planned in deleted:
                text = as_text(planned.name)  # not UTF-8: it cannot be in the database
                if text is None or text in names:
                    continue
                days = reference_days(planned.name)
                last = days[-1] if days else None
                young = (
                    end_of_named_day(last.year, last.month, last.day, self.zone) if last else None
                )
                if last is not None and (young is None or not young < cutoff):
                    continue
                folders = {(), planned.folder, *(_day_folder(day) for day in days)}
                if all(_folder_without(chain, f, planned.name) is not None for f in folders):
                    names.add(text)
        return sorted(names)

    def apply_sweep(self, holds: Holds, cutoff: datetime) -> BatchResult:
        """The run's sweep of dangling references: no file is deleted, rows are cleared."""
        column = self.column
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
        column = self.column
        with FolderChain(self._tree.require_open(), self._tree.root.device) as chain:
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
            end_of_named_day(days[-1].year, days[-1].month, days[-1].day, self.zone)
            if days
            else None
        )
        if young is None or not young < cutoff:
            return False  # no date, or as young as the cutoff: perhaps still being recorded
        if self._held_reference(name, days, holds):
            return False
        # Where FreePBX looks (YYYY/MM/DD of the name's date), and the root itself.
        folders = [(), *(_day_folder(day) for day in days)]
        if not any(self._tree.matches((*folder, name)) for folder in folders):
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


def reference_days(name: bytes) -> list[date]:
    """The days a FreePBX recording name files it under, oldest first.

    FreePBX takes the fourth `-` field as YYYYMMDD; a destination or caller holding a `-` shifts
    the fields, so every `YYYYMMDD-HHMMSS` in the name counts as well.
    """
    candidates = [match.group(1) for match in FREEPBX_TIME.finditer(name)]
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
            stems[folder] = {name_stem(name) for name in sorted_names(fd)}
        except OSError:
            stems[folder] = None
    known = stems[folder]
    return known is not None and name_stem(name) not in known
