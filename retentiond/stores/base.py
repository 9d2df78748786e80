"""The one small interface every store kind implements, so the engine never knows which it drives.

A run asks a store to `survey` (how much is there, how much is expired, the oldest), then walks
`batches`: each batch is a plan value, written to the audit log as an intent before `apply`
changes anything. Only `apply` deletes or rewrites. A dry run never calls it.

Holds: `survey` and every batch-planning method take the `Holds` in force. A held object is
never in a batch; the survey counts it in `held`, not in `expired`. When holds change during a
run (a reload), the engine drops the batch it has planned and asks for a new generator with the
new holds, so a batch always reflects the holds of the moment it was planned; `apply` must
therefore apply exactly what the batch planned (keys, files) or use the holds recorded in its
payload, never a wider predicate.

A store that can tell whose an object is (`subject_fields()` not empty) matches holds by number
and serves `find`/`subject_batches` for Art. 15/17 requests. A store that cannot tell treats a
hold by number as covering every object in its time window.

Anonymization (`anonymizes` True): `anonymize_survey`/`anonymize_batches` select the unheld
objects older than the cutoff and not older than `since` (the previous complete run's cutoff:
a rerun does not rescan what it already anonymized); `apply` on such a batch rewrites the
fields with the store's transforms, only where a value changes, and reports `anonymized`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from retentiond.errors import StoreError
from retentiond.policy.rules import NO_HOLDS, Holds
from retentiond.policy.subjects import Subject

# The reasons in Survey.skipped that mean "no date can be read from it": a row whose time
# column holds no time, a file with no date where age_from looks, a voicemail msgNNNN.txt
# without a usable origtime, a CSV line whose time field does not parse. Such an object never
# expires, so it is never deleted: beyond a small share, a store fails (retentiond.engine.undated).
UNDATED_REASONS = frozenset({"undated", "malformed_txt", "unparseable"})


@dataclass(frozen=True)
class Survey:
    """What a store holds relative to a cutoff. Counts only: no object is named."""

    unit: str  # "rows" or "files"
    total: int
    expired: int
    oldest: datetime | None  # the oldest object's time (aware), expired or not
    expired_bytes: int | None = None  # files only
    # How many batches deleting `expired` takes, where the store knows better than
    # expired / batch_size (csv: one per file); None: that quotient.
    batches: int | None = None
    # Objects left out and why, e.g. {"undated": 3, "symlink": 1}; reported, never deleted.
    skipped: Mapping[str, int] = field(default_factory=dict)
    # Objects older than the cutoff that a hold keeps (not counted in `expired`), and per hold
    # id how many each covers (an object under two holds counts under both).
    held: int = 0
    held_by: Mapping[str, int] = field(default_factory=dict)
    # What the operator should look at, in words with counts only (no object named): e.g. a
    # files store whose patterns match none of the files under its root.
    warnings: tuple[str, ...] = ()

    @property
    def undated(self) -> int:
        """Objects no date can be read from (counted in `total`, never in `expired`)."""
        return sum(self.skipped.get(reason, 0) for reason in UNDATED_REASONS)


@dataclass(frozen=True)
class Batch:
    """One planned step: at most `planned` objects, all older than the cutoff.

    `span` is the day range of the batch when known before applying; `payload` is private to
    the store that made it (keys, or file references), never written to the audit log.
    """

    number: int
    planned: int
    span: tuple[date, date] | None = None
    payload: Any = None


@dataclass(frozen=True)
class BatchResult:
    deleted: int
    span: tuple[date, date] | None = None  # day range of what was deleted
    bytes: int | None = None  # files only
    skipped: Mapping[str, int] = field(default_factory=dict)  # e.g. changed since planning
    # What else the batch did, e.g. {"references_cleared": 3, "files_deleted": 2}
    counts: Mapping[str, int] = field(default_factory=dict)
    anonymized: int = 0  # objects whose fields were rewritten (anonymize batches)


class BatchFailed(StoreError):
    """A batch that failed with a known outcome: `result` is what it did (nothing, for a
    transaction that was rolled back; the files it unlinked, for a files store whose reference
    step failed). The engine records `result` as the batch's result, so the log never holds an
    intent without one, then fails the store with the message. `code` and `sqlstate` are the
    database's, when it gave them; the message never carries the server's text (dberror)."""

    def __init__(
        self,
        message: str,
        result: BatchResult,
        code: str | None = None,
        sqlstate: str | None = None,
    ) -> None:
        super().__init__(message)
        self.result = result
        self.code = code
        self.sqlstate = sqlstate

    def error_fields(self) -> dict[str, str]:
        """`code` and `sqlstate` for the batch's audit entry, those the database gave."""
        known = {"code": self.code, "sqlstate": self.sqlstate}
        return {name: value for name, value in known.items() if value}


@dataclass(frozen=True)
class Found:
    """One object of a data subject, for `find` (printed on a terminal, never logged)."""

    when: datetime | None
    held: bool
    where: str  # the table or the file's path relative to the store's root
    fields: Mapping[str, str] = field(default_factory=dict)  # what the object says about them


class Store(ABC):
    """A place one category of data lives: an SQL table, a folder tree, a spool."""

    kind: str  # "sql", "files", ...
    label: str  # how logs and the audit log name it: connection/table or the root folder
    unit: str  # "rows" or "files"
    pause: float = 0.0  # seconds to wait between batches
    # Objects per batch as configured (`batch_size`): what a plan estimates its batches with. An
    # adaptive SQL store starts from it and resizes as it goes (stores/sql/sizing.py).
    batch_size: int = 1
    # Adaptive batches: the seconds each batch aims at (its size follows); None: a fixed size.
    batch_time: float | None = None

    @abstractmethod
    def open(self) -> None:
        """Connect or open and check the store is what the config says. Raises StoreError."""

    def close(self) -> None:  # noqa: B027 - most stores have nothing to release
        """Release connections and handles."""

    @abstractmethod
    def describe(self) -> list[str]:
        """Lines for `check`: how this store will be purged (strategy, query plan, warnings)."""

    @abstractmethod
    def survey(self, cutoff: datetime, holds: Holds = NO_HOLDS) -> Survey:
        """Count what is there, what is older than `cutoff` and unheld, and what is held."""

    @abstractmethod
    def batches(self, cutoff: datetime, holds: Holds = NO_HOLDS) -> Iterator[Batch]:
        """Plan batches lazily; the next one is planned after the previous one was applied."""

    @abstractmethod
    def apply(self, batch: Batch, cutoff: datetime) -> BatchResult:
        """Carry out one planned batch. The only method that changes anything."""

    def sweeps(self) -> bool:
        """Whether a delete run walks this store's batches even when nothing expired (a files
        store with `references` ends each run with a batch clearing dangling references)."""
        return False

    # Data subjects (holds by number, Art. 15 find, Art. 17 erase)

    def subject_fields(self) -> list[str]:
        """The fields that name a person; empty when the store cannot tell whose an object is."""
        return []

    def find(self, subject: Subject, holds: Holds = NO_HOLDS) -> Iterator[Found]:
        """Every object naming `subject`, of any age. Reads only."""
        raise StoreError(f"{self.label}: this store cannot search for a person's records")

    def subject_batches(self, subject: Subject, holds: Holds = NO_HOLDS) -> Iterator[Batch]:
        """Batches of every unheld object naming `subject`, of any age; `apply(batch, now)`
        deletes them (the cutoff passed is the moment of the erasure)."""
        raise StoreError(f"{self.label}: this store cannot search for a person's records")

    # Anonymization

    anonymizes: bool = False

    def anonymize_survey(
        self, cutoff: datetime, holds: Holds = NO_HOLDS, since: datetime | None = None
    ) -> Survey:
        """`expired`: unheld objects in [since, cutoff) that anonymize batches would visit."""
        raise StoreError(f"{self.label}: this store cannot anonymize")

    def anonymize_batches(
        self, cutoff: datetime, holds: Holds = NO_HOLDS, since: datetime | None = None
    ) -> Iterator[Batch]:
        raise StoreError(f"{self.label}: this store cannot anonymize")

    def smallest_group(self, cutoff: datetime) -> int | None:
        """Among objects older than `cutoff`, the size of the smallest group of records whose
        transformed fields are all equal (k-anonymity); None when the store cannot tell."""
        return None

    def privileges(self) -> tuple[list[str], list[str]]:
        """For `check`: privileges the store lacks, and more than it needs (warnings)."""
        return [], []

    def clock_skew(self) -> timedelta | None:
        """Database clock minus host clock, where the store has a clock of its own."""
        return None


class AbsentStore(Store):
    """An optional store whose table, file or folder does not exist on this system.

    It stands in for the real store so plans, runs and the log say what was not found and why.
    """

    def __init__(self, kind: str, label: str, unit: str, reason: str) -> None:
        self.kind = kind
        self.label = label
        self.unit = unit
        self.reason = reason

    def open(self) -> None:
        pass

    def describe(self) -> list[str]:
        return [f"not found (optional): {self.reason}"]

    def survey(self, cutoff: datetime, holds: Holds = NO_HOLDS) -> Survey:
        return Survey(unit=self.unit, total=0, expired=0, oldest=None)

    def batches(self, cutoff: datetime, holds: Holds = NO_HOLDS) -> Iterator[Batch]:
        return iter(())

    def find(self, subject: Subject, holds: Holds = NO_HOLDS) -> Iterator[Found]:
        return iter(())

    def subject_batches(self, subject: Subject, holds: Holds = NO_HOLDS) -> Iterator[Batch]:
        return iter(())

    def anonymize_survey(
        self, cutoff: datetime, holds: Holds = NO_HOLDS, since: datetime | None = None
    ) -> Survey:
        return Survey(unit=self.unit, total=0, expired=0, oldest=None)

    def anonymize_batches(
        self, cutoff: datetime, holds: Holds = NO_HOLDS, since: datetime | None = None
    ) -> Iterator[Batch]:
        return iter(())

    def apply(self, batch: Batch, cutoff: datetime) -> BatchResult:
        raise RuntimeError("an absent store has no batches")  # a bug in the caller


class FailedStore(AbsentStore):
    """A store that could not be opened or surveyed during a run. It stands in for the real one,
    so the other stores of the rule are still enforced and the log and report name the failure."""

    def describe(self) -> list[str]:
        return [f"FAILED: {self.reason}"]
