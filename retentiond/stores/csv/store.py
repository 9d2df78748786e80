"""CSV call records (Asterisk cdr_csv: `cdr-csv/Master.csv` and one `<accountcode>.csv` each).

Asterisk appends to these files for ever: per record it opens the file with `fopen("a")`, writes
one line and closes it again. Expired lines are removed by rewriting a file into a temporary copy
next to it and renaming the copy over it, which is atomic: a reader sees the old file or the new
one, never a half-written one. Lines Asterisk appends while that happens are carried over:

1. the lines present when the rewrite starts are filtered (expired lines dropped, every other
   line copied byte for byte, including lines whose time cannot be read);
2. whatever was appended since is copied verbatim, the copy is synced, and only if the name still
   denotes the planned file is the copy renamed over it and the folder synced;
3. a writer that opened the old file just before the rename writes into the old inode, which this
   store still holds open: it waits until no process has the old inode open for writing any more
   (a Linux read lease can only be taken then, and an unlinked inode cannot be opened again) and
   appends those late bytes to the new file with O_APPEND, so they land after anything Asterisk
   already wrote there.

The remaining window is a writer that keeps the old file open for longer than `WRITER_WAIT`
seconds after the rename; Asterisk's cdr_csv never does (fopen, one line, fclose). Where a lease
is refused (a filesystem without leases, or not the file's owner) step 3 waits until the old
inode has been quiet for `QUIET` seconds instead, so there a writer stalled longer than that
between its open and its write is the window. Late lines can land after lines Asterisk wrote to
the new file meanwhile: every line is kept exactly once, not always in arrival order. A rotation
(logrotate) between step 2's check and the rename is the other race left; a truncation
(copytruncate) during the rewrite is noticed and the file skipped as `changed`. A crash before
the rename leaves the original intact and a temporary copy, which the next rewrite of that file
removes; a crash during step 3 loses the late lines not yet carried over.

The same rewrite serves the other selections (`Selection`): an erasure removes the lines whose
`subject_fields` name a person, of any age; anonymization rewrites the configured fields of
expired lines in place, each field quoted or bare as it was, and renames a copy over the file
only when a line changed, so a second run leaves the file as it is. Held lines always stay as
they are, counted in `held`.

One batch is one file, whatever `batch_size` says: splitting a file would rewrite it once per
batch. Lines are the unit of `total` and `expired`; file-level skips (`symlink`, `changed`, ...)
count files, `unparseable` counts lines.

File names of per-account files are account codes, and lines hold phone numbers and names: none
of them appears in a log line, an exception or a repr. Extended attributes and ACLs of a file are
not copied to its rewrite; owner, group and mode are.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from typing import Literal

import structlog

from retentiond.config.model import CsvStoreConfig
from retentiond.config.roots import system_root_warning
from retentiond.errors import StoreError
from retentiond.policy.anonymize import Blank, Constant, Transform
from retentiond.policy.rules import NO_HOLDS, Holds
from retentiond.policy.subjects import Subject
from retentiond.stores.base import Batch, BatchResult, Found, Store, Survey
from retentiond.stores.csv.lines import (
    CHUNK,
    UNPARSEABLE,
    Line,
    LineReader,
    anonymized_line,
    complete_lines,
    open_file,
)
from retentiond.stores.csv.rewrite import (
    TEMP_NAME,
    carry_late_appends,
    copy_from,
    count_lines,
    create_temp,
    remove_stale_temps,
    unlink_quietly,
    write_all,
)
from retentiond.stores.fs.folders import (
    CHANGED,
    NOT_REGULAR_FILE,
    OTHER_FILESYSTEM,
    SYMLINK,
    UNREADABLE,
    VANISHED,
    RootFolder,
    RootUnfit,
    RootWording,
    Skip,
    check_component,
    examine_root,
    sorted_names,
)

log = structlog.get_logger()

# Why something was left alone, as counted in Survey.skipped and BatchResult.skipped, besides
# the folders module's symlink, not_regular_file, other_filesystem, unreadable, vanished and
# changed (here: replaced or truncated since planning).
HARD_LINKED = "hard_linked"  # a rewrite would leave the old lines under the other name
LEFTOVER_TEMP = "leftover_temp"  # a rewrite interrupted by a crash; removed by the next rewrite

# What an anonymizing batch did besides rewriting lines, as counted in BatchResult.counts.
UNCHANGED = "unchanged"  # lines visited whose fields were anonymized already

# The root is opened without listing it: a folder that cannot be listed fails at the walk.
_ROOT_WORDING = RootWording(
    not_a_folder="{root} is not a folder; set the store's root to the cdr-csv folder",
    unreadable="{root} cannot be read ({reason}); give retentiond's user read and search "
    "permission",
)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which lines a rewrite removes (`delete`: expired; `erase`: a subject's, of any age) or
    anonymizes (expired, not older than `since`), leaving held ones. A batch carries the one it
    was planned with, so its rewrite selects by the holds of that moment. Nothing personal in a
    repr."""

    action: Literal["delete", "erase", "anonymize"] = "delete"
    holds: Holds = field(default=NO_HOLDS, repr=False)
    subject: Subject | None = field(default=None, repr=False)
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class PlannedCsv:
    """The file a batch rewrites, as it was when planned. Its name never shows in a repr."""

    name: bytes = field(repr=False)
    device: int
    inode: int
    selection: Selection = Selection()


@dataclass
class _Tally:
    """Counts for one file (or all files) relative to a cutoff.

    `expired` counts the lines a selection picks (removed, or visited to be anonymized).
    """

    lines: int = 0
    expired: int = 0
    expired_bytes: int = 0
    unparseable: int = 0
    oldest: datetime | None = None
    first_day: date | None = None
    last_day: date | None = None
    held: int = 0
    held_by: Counter[str] = field(default_factory=Counter)
    anonymized: int = 0
    unchanged: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # lines a rewrite had to leave

    def expire(self, size: int, day: date | None) -> None:
        self.expired += 1
        self.expired_bytes += size
        if day is None:
            return  # an erased line whose time cannot be read
        self.first_day = day if self.first_day is None else min(self.first_day, day)
        self.last_day = day if self.last_day is None else max(self.last_day, day)

    @property
    def span(self) -> tuple[date, date] | None:
        if self.first_day is None or self.last_day is None:
            return None
        return (self.first_day, self.last_day)


@dataclass(frozen=True, slots=True)
class _Found:
    name: bytes
    status: os.stat_result


class CsvStore(Store):
    """CSV files of call records directly in one folder, purged line by line."""

    kind = "csv"
    unit = "lines"

    def __init__(self, config: CsvStoreConfig, zone: tzinfo) -> None:
        self.config = config
        self.zone = zone
        self.root = config.root
        self.label = str(config.root)
        self.batch_size = config.batch_size
        self.pause = config.pause
        # Names directly in the root, so fnmatch's `*` (which would cross a `/`) is exact here.
        self._patterns = [
            re.compile(fnmatch.translate(pattern.strip("/"))) for pattern in config.match
        ]
        self._reader = LineReader(config.time_field, config.time_format, zone)
        self._root = RootFolder(config.root, _ROOT_WORDING)
        # Keyed by position as text, the way anonymize_row meets a line's fields.
        self._transforms: dict[str, Transform] = {
            str(int(position)): transform
            for position, transform in (config.anonymize or {}).items()
        }
        self.anonymizes = bool(self._transforms)

    # -- Store interface -------------------------------------------------------------------------

    def open(self) -> None:
        self.close()  # a `match` naming a subfolder is a config error (CsvStoreConfig)
        self._root.open()

    def close(self) -> None:
        self._root.close()

    def describe(self) -> list[str]:
        config = self.config
        zone = getattr(self.zone, "key", None) or str(self.zone)
        system = system_root_warning(config.root, config.allow_system_root)
        return [
            f"root: {self.root} ({self._root_state()})",
            *([system] if system is not None else []),
            f"match: {', '.join(config.match)} (files directly in the root, case-sensitive)",
            f"time: field {config.time_field} (0-based; cdr_csv writes `start` tenth), "
            f"format {config.time_format}, wall time in {zone}",
            "lines whose time cannot be read are kept and counted; "
            "a last line without a newline is being written and is left alone",
            "each file is rewritten atomically (a copy renamed over it, owner and mode kept); "
            "lines Asterisk appends meanwhile, also to the old file just before the rename, "
            "are carried over",
            f"one batch per file (batch_size {config.batch_size} does not split a file), "
            f"{config.pause:g}s apart",
        ]

    def survey(self, cutoff: datetime, holds: Holds = NO_HOLDS) -> Survey:
        return self._survey(cutoff, Selection("delete", holds))

    def batches(self, cutoff: datetime, holds: Holds = NO_HOLDS) -> Iterator[Batch]:
        return self._batches(cutoff, Selection("delete", holds))

    def apply(self, batch: Batch, cutoff: datetime) -> BatchResult:
        root_fd = self._require_open()
        planned = batch.payload
        if not isinstance(planned, PlannedCsv):
            raise TypeError("a csv store applies only its own batches")  # a bug in the caller
        try:
            fd = self._open_planned(root_fd, planned)
        except Skip as skip:
            return BatchResult(deleted=0, bytes=0, skipped={skip.reason: 1})
        try:
            return self._rewrite(root_fd, fd, planned, cutoff)
        except Skip as skip:
            return BatchResult(deleted=0, bytes=0, skipped={skip.reason: 1})
        finally:
            os.close(fd)

    # -- data subjects ---------------------------------------------------------------------------

    def subject_fields(self) -> list[str]:
        return [str(position) for position in self.config.subject_fields]

    def find(self, subject: Subject, holds: Holds = NO_HOLDS) -> Iterator[Found]:
        for found in self._walk(Counter()):
            try:
                yield from self._found_in(found, subject, holds)
            except Skip:
                continue  # a file that cannot be read names nobody we can tell

    def _found_in(self, found: _Found, subject: Subject, holds: Holds) -> Iterator[Found]:
        """The subject's lines of one file, streamed: Master.csv can hold years of calls."""
        for number, line in enumerate(self._lines(found), start=1):
            matched = self._matched(line, subject)
            if matched:
                yield Found(
                    when=line.when,
                    held=holds.covers(line.when, self._names(line)),
                    where=f"{os.fsdecode(found.name)}:{number}",
                    fields=matched,
                )

    def subject_batches(self, subject: Subject, holds: Holds = NO_HOLDS) -> Iterator[Batch]:
        # Erased lines are of any age: the cutoff only bounds expiry, not an erasure.
        return self._batches(None, Selection("erase", holds, subject))

    def _matched(self, line: Line, subject: Subject) -> dict[str, str]:
        """The subject fields of a line that name `subject`, by position."""
        if line.fields is None:
            return {}
        return {
            str(position): line.fields[position]
            for position in self.config.subject_fields
            if position < len(line.fields) and subject.matches_callerid(line.fields[position])
        }

    def _names(self, line: Line) -> Callable[[Subject], bool] | None:
        """Whether a line names a subject; None for a line that is no CSV record (whose it is
        cannot be told, so every hold in its window holds it)."""
        if line.fields is None:
            return None
        return lambda subject: bool(self._matched(line, subject))

    # -- anonymizing -----------------------------------------------------------------------------

    def anonymize_survey(
        self, cutoff: datetime, holds: Holds = NO_HOLDS, since: datetime | None = None
    ) -> Survey:
        self._require_transforms()
        return self._survey(cutoff, Selection("anonymize", holds, since=since))

    def anonymize_batches(
        self, cutoff: datetime, holds: Holds = NO_HOLDS, since: datetime | None = None
    ) -> Iterator[Batch]:
        self._require_transforms()
        return self._batches(cutoff, Selection("anonymize", holds, since=since))

    def _require_transforms(self) -> None:
        if not self.anonymizes:
            raise StoreError(
                f"{self.label}: this csv store has no anonymize: transforms; say how each "
                "personal field (by its 0-based position) is anonymized"
            )

    def smallest_group(self, cutoff: datetime) -> int | None:
        """The smallest group of expired lines alike in every transformed field that is not
        blanked or made constant (those are alike in every line); None without expired lines.

        Lines are compared as stored: after an anonymize stage their anonymized values, while a
        held line keeps its own and may stand alone. Lines whose time cannot be read are left
        out, as they never expire. A matched file that cannot be read to its end makes the
        answer unknown (None): its lines may not be anonymized at all.
        """
        if not self.anonymizes:
            return None
        positions = sorted(
            int(key)
            for key, transform in self._transforms.items()
            if transform.groups and not isinstance(transform, Blank | Constant)
        )
        sizes: Counter[tuple[str | None, ...]] = Counter()
        skipped: Counter[str] = Counter()
        for found in self._walk(skipped):
            try:
                for line in self._lines(found):
                    fields = line.fields
                    if fields is None or line.when is None or not line.when < cutoff:
                        continue
                    sizes[tuple(fields[p] if p < len(fields) else None for p in positions)] += 1
            except Skip:
                return None
        if skipped[UNREADABLE] or not sizes:
            return None
        return min(sizes.values())

    # -- selecting -------------------------------------------------------------------------------

    def _survey(self, cutoff: datetime, selection: Selection) -> Survey:
        skipped: Counter[str] = Counter()
        tally = _Tally()
        batches = 0
        for found in self._walk(skipped):
            before = tally.expired
            try:
                for line in self._lines(found):
                    self._count(line, cutoff, selection, tally)
            except Skip as skip:
                skipped[skip.reason] += 1
            else:
                batches += tally.expired > before  # one per file with lines to rewrite
        if tally.unparseable:
            skipped[UNPARSEABLE] += tally.unparseable
        if skipped[UNREADABLE]:
            log.warning(
                "csv store could not read every file", store=self.label, count=skipped[UNREADABLE]
            )
        return Survey(
            unit=self.unit,
            total=tally.lines,
            expired=tally.expired,
            oldest=tally.oldest,
            expired_bytes=tally.expired_bytes,
            batches=batches,
            skipped=dict(sorted((reason, n) for reason, n in skipped.items() if n)),
            held=tally.held,
            held_by=dict(sorted(tally.held_by.items())),
        )

    def _batches(self, cutoff: datetime | None, selection: Selection) -> Iterator[Batch]:
        """One batch per file with lines the selection picks (`cutoff` None: of any age)."""
        number = 0
        for found in self._walk(Counter()):
            tally = _Tally()
            try:
                for line in self._lines(found):
                    self._count(line, cutoff, selection, tally)
            except Skip:
                continue
            if tally.expired:
                number += 1
                planned = PlannedCsv(
                    name=found.name,
                    device=found.status.st_dev,
                    inode=found.status.st_ino,
                    selection=selection,
                )
                yield Batch(number=number, planned=tally.expired, span=tally.span, payload=planned)

    def _count(
        self, line: Line, cutoff: datetime | None, selection: Selection, tally: _Tally
    ) -> None:
        tally.lines += 1
        if line.when is None:
            tally.unparseable += 1
        else:
            tally.oldest = line.when if tally.oldest is None else min(tally.oldest, line.when)
        if self._picks(selection, line, cutoff, tally):
            tally.expire(len(line.raw), self._day(line.when))

    def _picks(
        self, selection: Selection, line: Line, cutoff: datetime | None, tally: _Tally
    ) -> bool:
        """Whether `selection` removes or anonymizes the line; a held one is counted instead."""
        if selection.action == "erase":
            if selection.subject is None or not self._matched(line, selection.subject):
                return False
        elif cutoff is None or line.when is None or not line.when < cutoff:
            return False
        elif selection.since is not None and line.when < selection.since:
            return False  # anonymized by an earlier run
        if not selection.holds:
            return True
        covering = selection.holds.covering(line.when, self._names(line))
        if covering:
            tally.held += 1
            tally.held_by.update(covering)
            return False
        return True

    # -- reading ---------------------------------------------------------------------------------

    def _walk(self, skipped: Counter[str]) -> Iterator[_Found]:
        """Matching regular files directly in the root, in name order."""
        root_fd = self._require_open()
        try:
            names = sorted_names(root_fd)
        except OSError as error:
            raise StoreError(
                f"{self.root} cannot be listed ({error.strerror}); give retentiond's user read "
                "permission"
            ) from None
        for name in names:
            if TEMP_NAME.fullmatch(name):
                skipped[LEFTOVER_TEMP] += 1
                continue
            if not self._matches(name):
                continue
            try:
                status = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since the folder was listed
            except OSError:
                skipped[UNREADABLE] += 1
                continue
            if stat.S_ISLNK(status.st_mode):
                skipped[SYMLINK] += 1
            elif not stat.S_ISREG(status.st_mode):
                skipped[NOT_REGULAR_FILE] += 1
            elif status.st_dev != self._root.device:
                skipped[OTHER_FILESYSTEM] += 1
            else:
                yield _Found(name, status)

    def _matches(self, name: bytes) -> bool:
        text = os.fsdecode(name)
        return any(pattern.fullmatch(text) for pattern in self._patterns)

    def _lines(self, found: _Found) -> Iterator[Line]:
        """One file's complete lines, read. Raises Skip when it cannot be read."""
        try:
            fd = open_file(self._require_open(), found.name)
        except Skip as skip:
            if skip.reason == VANISHED:
                return
            raise
        try:
            status = os.fstat(fd)
            if (status.st_dev, status.st_ino) != (found.status.st_dev, found.status.st_ino):
                raise Skip(CHANGED)
            for raw in complete_lines(fd, status.st_size):
                yield self._reader.read(raw)
        except OSError:
            raise Skip(UNREADABLE) from None
        finally:
            os.close(fd)

    def _day(self, when: datetime | None) -> date | None:
        return None if when is None else when.astimezone(self.zone).date()

    # -- rewriting -------------------------------------------------------------------------------

    def _open_planned(self, root_fd: int, planned: PlannedCsv) -> int:
        check_component(planned.name)  # a single entry of the root
        fd = open_file(root_fd, planned.name)
        status = os.fstat(fd)
        reason = None
        if not stat.S_ISREG(status.st_mode) or (status.st_dev, status.st_ino) != (
            planned.device,
            planned.inode,
        ):
            reason = CHANGED
        elif status.st_nlink != 1:
            reason = HARD_LINKED
        if reason is not None:
            os.close(fd)
            raise Skip(reason)
        return fd

    def _rewrite(self, root_fd: int, fd: int, planned: PlannedCsv, cutoff: datetime) -> BatchResult:
        original = os.fstat(fd)
        remove_stale_temps(root_fd, planned.name)
        temp_name, temp_fd = create_temp(root_fd, planned.name, original, self.root)
        selection = planned.selection
        done = _Tally()
        renamed = False
        try:
            offset = self._filter(fd, temp_fd, original.st_size, cutoff, selection, done)
            filtered = offset
            if done.anonymized if selection.action == "anonymize" else done.expired:
                offset = copy_from(fd, temp_fd, offset)
                os.fsync(temp_fd)
                # Again, for what came during the sync: fewer lines left for after the rename.
                offset = copy_from(fd, temp_fd, offset)
                self._check_still_planned(root_fd, fd, planned, offset)
                # A rotation between the check and the rename is the one race left here.
                os.rename(temp_name, planned.name, src_dir_fd=root_fd, dst_dir_fd=root_fd)
                renamed = True
        except OSError as error:
            raise StoreError(
                f"rewriting a CSV file in {self.root} failed ({error.strerror}); the file is "
                "unchanged"
            ) from None
        finally:
            if not renamed:
                os.close(temp_fd)
                unlink_quietly(root_fd, temp_name, self.root)
        if not renamed:  # nothing to remove or rewrite any more: left as it is
            return _result(selection, done, appended=0)
        try:
            os.fsync(root_fd)
            late = carry_late_appends(fd, temp_fd, offset)
            os.fsync(temp_fd)
            appended = count_lines(fd, filtered, offset + late)
        except OSError as error:
            raise StoreError(
                f"a CSV file in {self.root} was rewritten, but lines appended during the rewrite "
                f"may not have been carried over ({error.strerror})"
            ) from None
        finally:
            os.close(temp_fd)
        log.debug(
            "csv file rewritten",
            store=self.label,
            action=selection.action,
            lines=done.expired,
            anonymized=done.anonymized,
            late_bytes=late,
        )
        return _result(selection, done, appended)

    def _filter(
        self,
        fd: int,
        temp_fd: int,
        stop: int,
        cutoff: datetime,
        selection: Selection,
        done: _Tally,
    ) -> int:
        """Copy the complete lines up to `stop` as the selection edits them; the offset read up to.

        Removed lines are left out, anonymized ones rewritten, every other line copied byte for
        byte. A line that cannot be anonymized field by field is copied and counted.
        """
        offset = 0
        kept: list[bytes] = []
        kept_size = 0
        for raw in complete_lines(fd, stop):
            offset += len(raw)
            line = self._reader.read(raw)
            if self._picks(selection, line, cutoff, done):
                done.expire(len(raw), self._day(line.when))
                raw = self._edited(selection, line, done)
            kept.append(raw)
            kept_size += len(raw)
            if kept_size >= CHUNK:
                write_all(temp_fd, b"".join(kept))
                kept, kept_size = [], 0
        write_all(temp_fd, b"".join(kept))
        return offset

    def _edited(self, selection: Selection, line: Line, done: _Tally) -> bytes:
        """What a picked line becomes: nothing when removed, else its anonymized form."""
        if selection.action != "anonymize":
            return b""
        try:
            rewritten = anonymized_line(line, self._transforms)
        except Skip as skip:
            done.skipped[skip.reason] += 1
            return line.raw
        if rewritten is None:
            done.unchanged += 1
            return line.raw
        done.anonymized += 1
        return rewritten

    def _check_still_planned(self, root_fd: int, fd: int, planned: PlannedCsv, offset: int) -> None:
        """Just before the rename: the name still denotes the file read, and it only grew."""
        if os.fstat(fd).st_size < offset:
            raise Skip(CHANGED)  # truncated meanwhile (logrotate copytruncate)
        try:
            current = os.stat(planned.name, dir_fd=root_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise Skip(VANISHED) from None
        if (current.st_dev, current.st_ino) != (planned.device, planned.inode):
            raise Skip(CHANGED)  # rotated or replaced meanwhile: renaming would lose the new one

    # -- helpers ---------------------------------------------------------------------------------

    def _require_open(self) -> int:
        if self._root.fd is None:
            raise RuntimeError("CsvStore used before open()")  # a bug in the caller
        return self._root.fd

    def _root_state(self) -> str:
        try:
            examine_root(self.root)
        except RootUnfit as unfit:
            return unfit.warning
        if not os.access(self.root, os.R_OK | os.W_OK | os.X_OK):
            return "warning: retentiond's user cannot read and write it"
        return "readable and writable"


def _result(selection: Selection, done: _Tally, appended: int) -> BatchResult:
    counts = {"appended_lines_carried_over": appended} if appended else {}
    skipped = dict(sorted(done.skipped.items()))
    if selection.action == "anonymize":
        return BatchResult(
            deleted=0,
            span=done.span,
            anonymized=done.anonymized,
            skipped=skipped,
            counts={UNCHANGED: done.unchanged, **counts},
        )
    if not done.expired:
        return BatchResult(deleted=0, bytes=0, skipped=skipped, counts=counts)
    return BatchResult(
        deleted=done.expired,
        span=done.span,
        bytes=done.expired_bytes,
        skipped=skipped,
        counts=counts,
    )
