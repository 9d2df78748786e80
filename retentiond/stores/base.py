"""The one small interface every store kind implements, so the engine never knows which it drives.

A run asks a store to `survey` (how much is there, how much is expired, the oldest), then walks
`batches`: each batch is a plan value, written to the audit log as an intent before `apply`
changes anything. Only `apply` deletes. A dry run never calls it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class Survey:
    """What a store holds relative to a cutoff. Counts only: no object is named."""

    unit: str  # "rows" or "files"
    total: int
    expired: int
    oldest: datetime | None  # the oldest object's time (aware), expired or not
    expired_bytes: int | None = None  # files only
    # Objects left out and why, e.g. {"undated": 3, "symlink": 1}; reported, never deleted.
    skipped: Mapping[str, int] = field(default_factory=dict)


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


class Store(ABC):
    """A place one category of data lives: an SQL table, a folder tree, a spool."""

    kind: str  # "sql", "files", ...
    label: str  # how logs and the audit log name it: connection/table or the root folder
    unit: str  # "rows" or "files"
    pause: float = 0.0  # seconds to wait between batches

    @abstractmethod
    def open(self) -> None:
        """Connect or open and check the store is what the config says. Raises StoreError."""

    def close(self) -> None:  # noqa: B027 - most stores have nothing to release
        """Release connections and handles."""

    @abstractmethod
    def describe(self) -> list[str]:
        """Lines for `check`: how this store will be purged (strategy, query plan, warnings)."""

    @abstractmethod
    def survey(self, cutoff: datetime) -> Survey:
        """Count what is there and what is older than `cutoff`. Changes nothing."""

    @abstractmethod
    def batches(self, cutoff: datetime) -> Iterator[Batch]:
        """Plan batches lazily; the next one is planned after the previous one was applied."""

    @abstractmethod
    def apply(self, batch: Batch, cutoff: datetime) -> BatchResult:
        """Delete one planned batch. The only method that changes anything."""

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

    def survey(self, cutoff: datetime) -> Survey:
        return Survey(unit=self.unit, total=0, expired=0, oldest=None)

    def batches(self, cutoff: datetime) -> Iterator[Batch]:
        return iter(())

    def apply(self, batch: Batch, cutoff: datetime) -> BatchResult:
        raise RuntimeError("an absent store has no batches")  # a bug in the caller
