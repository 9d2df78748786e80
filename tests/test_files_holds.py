"""Holds and data subjects in the files store: held recordings survive expiry, `find` lists exactly
one person's recordings whatever form their number has in the name, and an erasure removes exactly
those that no hold keeps."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retentiond.errors import StoreError
from retentiond.policy.rules import Holds, HoldScope
from retentiond.policy.subjects import Subject
from retentiond.stores.files.store import FilesStore

CUTOFF = datetime(2026, 5, 14, 12, 0, tzinfo=UTC)
ERASED_AT = datetime(2026, 5, 25, 9, 0, tzinfo=UTC)  # an erasure's "cutoff" is its moment
AUDIO = b"RIFF$\x00\x00\x00WAVEfmt " + bytes(32)

SUBJECT = Subject.parse(numbers=["+4930123456"])


def recording(kind: str, dest: str, caller: str, moment: datetime, uniqueid: str) -> str:
    """Where FreePBX's sub-record-check puts a recording, without the extension."""
    stamp = moment.strftime("%Y%m%d-%H%M%S")
    return f"{moment:%Y/%m/%d}/{kind}-{dest}-{caller}-{stamp}-{uniqueid}"


# The subject's recordings, their number written as dialled, from a trunk and with 00.
DIALLED = recording("out", "030123456", "201", datetime(2026, 4, 2, 10, 15), "1775124900.11")
FROM_TRUNK = recording("in", "201", "+4930123456", datetime(2026, 4, 3, 9, 0), "1775206800.12")
WITH_00 = recording("in", "203", "004930123456", datetime(2026, 4, 4, 11, 5), "1775300700.14")
YOUNG_OWN = recording("in", "201", "+4930123456", datetime(2026, 5, 20, 8, 30), "1779265800.15")
# Strangers: one whose number only starts like the subject's.
STRANGER = recording("out", "0891234567", "202", datetime(2026, 4, 5, 16, 40), "1775234400.13")
LOOKALIKE = recording("out", "0301234567", "204", datetime(2026, 4, 6, 12, 0), "1775476800.16")
YOUNG_STRANGER = recording("out", "069123456", "204", datetime(2026, 5, 21, 17, 0), "1779382800.17")

OWN = [DIALLED + ".wav", DIALLED + ".mp3", FROM_TRUNK + ".wav", WITH_00 + ".wav"]
OTHERS = [STRANGER + ".wav", LOOKALIKE + ".wav"]
YOUNG = [YOUNG_OWN + ".wav", YOUNG_STRANGER + ".wav"]

StoreFactory = Callable[..., FilesStore]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    monitor = tmp_path / "monitor"
    for relative in (*OWN, *OTHERS, *YOUNG):
        put(monitor, relative)
    return monitor


@pytest.fixture
def open_store(open_files_store: StoreFactory) -> StoreFactory:
    def make(
        root: Path, *, subject_in_name: bool = True, age_from: str = "path_date"
    ) -> FilesStore:
        return open_files_store(
            root,
            match=["**/*.wav", "**/*.mp3"],
            age_from=age_from,
            group_siblings=True,
            subject_in_name=subject_in_name,
        )

    return make


def put(root: Path, relative: str, *, mtime: datetime = ERASED_AT) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(AUDIO)
    set_mtime(path, mtime)
    return path


def set_mtime(path: Path, when: datetime) -> None:
    ns = (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def remaining(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


def enforce(store: FilesStore, holds: Holds, cutoff: datetime = CUTOFF) -> int:
    return sum(store.apply(batch, cutoff).deleted for batch in store.batches(cutoff, holds))


def erase(store: FilesStore, subject: Subject, holds: Holds) -> int:
    batches = store.subject_batches(subject, holds)
    return sum(store.apply(batch, ERASED_AT).deleted for batch in batches)


def day(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- holds ---------------------------------------------------------------------------------------


def test_hold_by_number_keeps_the_subjects_expired_recordings_and_the_rest_expire(
    root: Path, open_store: StoreFactory
) -> None:
    store = open_store(root)
    holds = Holds((HoldScope("HOLD-2026-07", subject=SUBJECT),))

    survey = store.survey(CUTOFF, holds)
    deleted = enforce(store, holds)

    assert (survey.held, survey.held_by) == (len(OWN), {"HOLD-2026-07": len(OWN)})
    assert survey.expired == len(OTHERS)
    assert deleted == len(OTHERS)
    assert remaining(root) == {*OWN, *YOUNG}
    after = store.survey(CUTOFF, holds)
    assert (after.expired, after.held) == (0, len(OWN))


def test_hold_window_holds_only_recordings_of_its_days(
    root: Path, open_store: StoreFactory
) -> None:
    store = open_store(root)
    holds = Holds((HoldScope("HOLD-APRIL-3", start=day("2026-04-03"), end=day("2026-04-04")),))

    survey = store.survey(CUTOFF, holds)
    enforce(store, holds)

    assert (survey.held, survey.held_by) == (1, {"HOLD-APRIL-3": 1})
    assert remaining(root) == {FROM_TRUNK + ".wav", *YOUNG}


def test_without_subject_in_name_a_hold_by_number_holds_every_file_of_its_window(
    root: Path, open_store: StoreFactory
) -> None:
    store = open_store(root, subject_in_name=False)
    window = HoldScope("HOLD-X", day("2026-04-02"), day("2026-04-06"), subject=SUBJECT)
    holds = Holds((window,))

    survey = store.survey(CUTOFF, holds)
    enforce(store, holds)

    # The stranger of 5 April cannot be told apart from the subject's recordings: it stays too.
    assert survey.held == len(OWN) + 1
    assert remaining(root) == {*OWN, STRANGER + ".wav", *YOUNG}


def test_store_that_cannot_tell_whose_files_are_refuses_to_find_or_erase(
    root: Path, open_store: StoreFactory
) -> None:
    store = open_store(root, subject_in_name=False)

    assert store.subject_fields() == []
    for attempt in (store.find, store.subject_batches):
        with pytest.raises(StoreError, match="subject_in_name") as raised:
            attempt(SUBJECT)
        assert "30123456" not in str(raised.value)
    assert remaining(root) == {*OWN, *OTHERS, *YOUNG}


def test_sibling_group_is_held_when_any_of_its_files_is(
    tmp_path: Path, open_store: StoreFactory
) -> None:
    root = tmp_path / "monitor"
    stem = "exports/out-0891234567-202-export"
    put(root, stem + ".wav", mtime=datetime(2026, 4, 2, 10, 0, tzinfo=UTC))
    put(root, stem + ".mp3", mtime=datetime(2026, 4, 20, 10, 0, tzinfo=UTC))  # converted later
    put(root, "exports/out-069123456-204-export.wav", mtime=datetime(2026, 4, 2, tzinfo=UTC))
    store = open_store(root, age_from="mtime")
    holds = Holds((HoldScope("HOLD-APRIL-2", day("2026-04-02"), day("2026-04-03")),))

    survey = store.survey(CUTOFF, holds)
    enforce(store, holds)

    # Only the .wav lies in the window, but the .mp3 is the same recording and stays with it.
    assert (survey.held, survey.expired) == (3, 0)
    assert remaining(root) == {stem + ".wav", stem + ".mp3", "exports/out-069123456-204-export.wav"}
    assert enforce(store, Holds()) == 3


# -- data subjects -------------------------------------------------------------------------------


def test_find_lists_exactly_the_subjects_recordings_in_every_number_form(
    root: Path, open_store: StoreFactory
) -> None:
    store = open_store(root)
    holds = Holds((HoldScope("HOLD-APRIL-3", day("2026-04-03"), day("2026-04-04"), SUBJECT),))

    found = {item.where: item for item in store.find(SUBJECT, holds)}

    assert store.subject_fields() == ["file name"]
    assert set(found) == {*OWN, YOUNG_OWN + ".wav"}
    assert {where for where, item in found.items() if item.held} == {FROM_TRUNK + ".wav"}
    assert found[WITH_00 + ".wav"].fields == {"file name": Path(WITH_00).name + ".wav"}
    assert found[DIALLED + ".wav"].when == day("2026-04-02T23:59:59.999999")  # end of its day


def test_erase_removes_the_subjects_recordings_of_any_age_and_keeps_held_ones(
    root: Path, open_store: StoreFactory
) -> None:
    store = open_store(root)
    holds = Holds((HoldScope("HOLD-APRIL-3", day("2026-04-03"), day("2026-04-04"), SUBJECT),))

    deleted = erase(store, SUBJECT, holds)

    assert deleted == len(OWN) - 1 + 1  # all but the held one, and the young one too
    assert remaining(root) == {FROM_TRUNK + ".wav", *OTHERS, YOUNG_STRANGER + ".wav"}
    assert [item.where for item in store.find(SUBJECT, holds)] == [FROM_TRUNK + ".wav"]


def test_undated_recording_of_the_subject_is_held_by_every_hold_and_erased_without_one(
    root: Path, open_store: StoreFactory
) -> None:
    undated = "in-201-+4930123456-manual-export.wav"  # no date folder: its time is unknown
    put(root, undated)
    store = open_store(root)
    holds = Holds((HoldScope("HOLD-APRIL-3", day("2026-04-03"), day("2026-04-04"), SUBJECT),))

    found = {item.where: item for item in store.find(SUBJECT, holds)}
    erase(store, SUBJECT, holds)
    kept_under_hold = (root / undated).exists()
    erase(store, SUBJECT, Holds())

    assert (found[undated].when, found[undated].held) == (None, True)
    assert kept_under_hold
    assert remaining(root) == {*OTHERS, YOUNG_STRANGER + ".wav"}


def test_erase_batches_name_no_file_and_are_applied_only_as_planned(
    root: Path, open_store: StoreFactory
) -> None:
    store = open_store(root)
    batches = list(store.subject_batches(SUBJECT))
    replaced = root / (FROM_TRUNK + ".wav")
    replaced.unlink()
    replaced.write_bytes(AUDIO + b"new")  # a new file under the planned name

    results = [store.apply(batch, ERASED_AT) for batch in batches]

    shown = " ".join(
        f"{batch!r} {result!r}" for batch, result in zip(batches, results, strict=True)
    )
    assert "30123456" not in shown
    assert sum(result.deleted for result in results) == len(OWN) - 1 + 1
    assert sum(result.skipped.get("changed", 0) for result in results) == 1
    assert replaced.exists()
