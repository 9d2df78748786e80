"""Objects no date can be read from: never deleted, so never silently tolerated.

A store counts them in its survey (`Survey.undated`). Up to the tolerated share of the objects
a run leaves in the store (`max_undated_fraction` of the store, else
`safety.max_undated_fraction`) they are shown and the store passes; beyond it the store fails
`check`, `plan`, the run's verification and `status`, with the count and what to set. The
wording holds counts and config keys only.
"""

from __future__ import annotations

from dataclasses import dataclass

from retentiond.config.model import (
    CsvStoreConfig,
    FilesStoreConfig,
    Safety,
    SqlStoreConfig,
    StoreConfig,
    VoicemailStoreConfig,
)
from retentiond.stores.base import Survey


@dataclass(frozen=True)
class Undated:
    """How many of a store's objects have no readable date, against how many it may have.

    The share is of what a delete leaves (`staying`: total less expired), so `plan` judges the
    store as the run's verification will find it, and a first run that empties years of dated
    data does not turn a tolerated share into a failure only afterwards.
    """

    count: int
    total: int
    staying: int  # objects left after a delete run: total less expired (anonymize: total)
    unit: str
    tolerated: float  # a share of `staying`

    @property
    def share(self) -> float:
        return self.count / self.staying

    @property
    def exceeded(self) -> bool:
        return self.count > self.tolerated * self.staying

    def counts(self) -> str:
        """`3 of 200 rows (1.5%)`, or `3 of 500 rows (1.5% of the 200 left after deletion)`"""
        if self.staying == self.total:
            return f"{self.count} of {self.total} {self.unit} ({percent(self.share)})"
        return (
            f"{self.count} of {self.total} {self.unit} ({percent(self.share)} of the "
            f"{self.staying} left after deletion)"
        )

    def note(self) -> str:
        """A line for objects within the tolerated share: shown, never silent."""
        return (
            f"undated: {self.counts()} cannot be dated and are never deleted "
            f"(tolerated up to {percent(self.tolerated)})"
        )


def undated(
    survey: Survey, store: StoreConfig, safety: Safety, *, deletes: bool = True
) -> Undated | None:
    """The store's undated objects and what it tolerates; None when it has none. `deletes`:
    the survey's expired objects are deleted (not anonymized), so they do not stay."""
    if not survey.undated:
        return None
    tolerated = store.max_undated_fraction
    if tolerated is None:
        tolerated = safety.max_undated_fraction
    staying = survey.total - survey.expired if deletes else survey.total
    # Undated objects never expire, so `staying` counts them all; max() guards a store whose
    # counts were taken in two passes while the PBX wrote
    staying = max(staying, survey.undated)
    return Undated(survey.undated, survey.total, staying, survey.unit, tolerated)


def undated_failure(
    survey: Survey, store: StoreConfig, safety: Safety, *, deletes: bool = True
) -> str | None:
    """Why the store fails for its undated objects, with what to set; None when it does not."""
    found = undated(survey, store, safety, deletes=deletes)
    if found is None or not found.exceeded:
        return None
    return (
        f"{found.counts()} {_what(store)} and are never deleted; more than the tolerated "
        f"{percent(found.tolerated)}. {_fix(store)}, or, if these are known and may stay, "
        "raise max_undated_fraction of this store (or safety.max_undated_fraction)"
    )


def percent(share: float) -> str:
    return f"{share * 100:.3g}%"


def _what(store: StoreConfig) -> str:
    if isinstance(store, SqlStoreConfig):
        return f"have no readable time in {store.time_column}"
    if isinstance(store, FilesStoreConfig):
        where = {"path_date": "their folder path", "filename_date": "their file name"}
        return f"have no date in {where.get(store.age_from, 'their metadata')}"
    if isinstance(store, VoicemailStoreConfig):
        return "have a msgNNNN.txt without a usable origtime"
    if isinstance(store, CsvStoreConfig):
        return f"have no time in field {store.time_field} that reads as {store.time_format!r}"
    return "have no start time"


def _fix(store: StoreConfig) -> str:
    if isinstance(store, SqlStoreConfig):
        return (
            "Set time_column to the column holding each row's time (a date-time, or text as "
            "YYYY-MM-DD HH:MM:SS)"
        )
    if isinstance(store, FilesStoreConfig):
        return (
            "Set age_from to where these files carry their date (path_date for YYYY/MM/DD "
            "folders, filename_date, or mtime), or narrow match to the dated files"
        )
    if isinstance(store, VoicemailStoreConfig):
        return "Check those messages (Asterisk writes origtime in every msgNNNN.txt)"
    if isinstance(store, CsvStoreConfig):
        return "Set time_field (0-based) and time_format to the field holding the call's start"
    return "Check the PBX's call history (3CX writes a start time for every call)"
