"""The files store on real folder trees: what it deletes, what it never touches, what it counts."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import pytest

from retentiond.config.globs import compile_glob
from retentiond.config.model import FilesStoreConfig
from retentiond.errors import StoreError
from retentiond.policy.rules import end_of_day
from retentiond.stores.base import Batch
from retentiond.stores.files.store import FilesStore
from retentiond.stores.fs.ages import filename_age, path_age

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
CUTOFF = datetime(2026, 5, 14, 12, 0, tzinfo=UTC)
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)
RECENTLY = datetime(2026, 5, 20, 14, 15, tzinfo=UTC)
AUDIO = b"RIFF$\x00\x00\x00WAVEfmt " + bytes(32)  # 44 bytes, the smallest file FreePBX lists

# Fragments of the fixture's personal data that must never leave the store.
PHONE = "017612345678"
UNIQUEID = "1712043000.7"

StoreFactory = Callable[..., FilesStore]
AgeSource = Literal["path_date", "filename_date", "mtime"]


@dataclass
class Enforcement:
    planned: list[int] = field(default_factory=list)
    deleted: int = 0
    bytes: int = 0
    skipped: Counter[str] = field(default_factory=Counter)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    monitor = tmp_path / "monitor"
    monitor.mkdir()
    return monitor


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    return folder


@pytest.fixture
def open_store(open_files_store: StoreFactory) -> StoreFactory:
    def make(
        root: Path,
        *,
        age_from: AgeSource = "path_date",
        match: tuple[str, ...] = ("**/*.wav", "**/*.mp3"),
        batch_size: int = 500,
        zone: ZoneInfo = UTC_ZONE,
    ) -> FilesStore:
        return open_files_store(
            root, zone=zone, match=list(match), age_from=age_from, batch_size=batch_size
        )

    return make


def put(root: Path, relative: str | bytes, *, mtime: datetime = RECENTLY) -> Path:
    """A recording at `relative` (bytes for names that are not UTF-8) with the given mtime."""
    path = root / (os.fsdecode(relative) if isinstance(relative, bytes) else relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(AUDIO)
    set_mtime(path, mtime)
    return path


def set_mtime(path: Path, mtime: datetime) -> None:
    ns = (mtime - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def enforce(store: FilesStore, cutoff: datetime = CUTOFF) -> Enforcement:
    """What the engine does: walk the batches and apply each one."""
    done = Enforcement()
    for batch in store.batches(cutoff):
        done.planned.append(batch.planned)
        result = store.apply(batch, cutoff)
        done.deleted += result.deleted
        done.bytes += result.bytes or 0
        done.skipped.update(result.skipped)
    return done


def open_descriptors() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


def first_batch(store: FilesStore, cutoff: datetime = CUTOFF) -> Batch:
    return next(iter(store.batches(cutoff)))


# -- age sources -----------------------------------------------------------------------------

# Each file is old by one age source only; the young one is young by all three.
OLD_BY = {
    "path_date": "2026/04/02/out-017612345678-1001-20260520-141500-1716214500.7",
    "filename_date": "2026/05/20/out-017612345678-1001-20260402-093000-1712043000.7",
    "mtime": "2026/05/20/in-0301234567-1002-20260520-151500-1716218100.9",
}
YOUNG = "2026/05/21/in-0301234567-1002-20260521-101500-1716279300.10"
OLDEST_BY = {
    "path_date": end_of_day(date(2026, 4, 2), UTC_ZONE),
    "filename_date": datetime(2026, 4, 2, 9, 30, tzinfo=UTC),
    "mtime": datetime(2026, 4, 2, 8, 0, tzinfo=UTC),
}


@pytest.mark.parametrize("age_from", ["path_date", "filename_date", "mtime"])
def test_expired_recordings_are_deleted_and_young_ones_kept(
    root: Path, open_store: StoreFactory, age_from: str
) -> None:
    for source, stem in OLD_BY.items():
        mtime = OLDEST_BY["mtime"] if source == "mtime" else RECENTLY
        for extension in (".wav", ".mp3"):
            put(root, stem + extension, mtime=mtime)
    put(root, YOUNG + ".wav")
    put(root, YOUNG + ".mp3")
    store = open_store(root, age_from=age_from)

    survey = store.survey(CUTOFF)
    done = enforce(store)

    assert (survey.unit, survey.total, survey.expired) == ("files", 8, 2)
    assert survey.expired_bytes == 2 * len(AUDIO)
    assert survey.oldest == OLDEST_BY[age_from]
    assert (done.deleted, done.bytes) == (2, 2 * len(AUDIO))
    for source, stem in OLD_BY.items():
        for extension in (".wav", ".mp3"):
            assert (root / (stem + extension)).exists() == (source != age_from)
    assert (root / (YOUNG + ".wav")).exists()
    assert store.survey(CUTOFF).expired == 0


def test_file_modified_exactly_at_cutoff_is_kept(root: Path, open_store: StoreFactory) -> None:
    at_cutoff = put(root, "a/out-017612345678-1001.wav", mtime=CUTOFF)
    just_before = put(root, "a/out-017612345678-1002.wav", mtime=CUTOFF - timedelta(microseconds=1))
    store = open_store(root, age_from="mtime")

    assert store.survey(CUTOFF).expired == 1
    done = enforce(store)
    assert (done.planned, done.deleted) == ([1], 1)
    assert at_cutoff.exists()
    assert not just_before.exists()


def test_file_named_exactly_at_cutoff_is_kept(root: Path, open_store: StoreFactory) -> None:
    recording = put(root, "2026/05/14/out-017612345678-1001-20260514-120000-1715688000.1.wav")
    store = open_store(root, age_from="filename_date")

    assert store.survey(CUTOFF).expired == 0
    assert enforce(store, CUTOFF).planned == []
    assert recording.exists()
    assert enforce(store, CUTOFF + timedelta(microseconds=1)).deleted == 1
    assert not recording.exists()


@pytest.mark.parametrize(("zone", "deleted"), [(BERLIN, True), (UTC_ZONE, False)])
def test_time_in_file_name_is_read_in_configured_zone(
    root: Path, open_store: StoreFactory, zone: ZoneInfo, deleted: bool
) -> None:
    # 13:15 on the PBX's wall clock: 11:15 UTC in Berlin (summer time), before a 12:00 UTC cutoff.
    recording = put(root, "2026/05/14/out-017612345678-1001-20260514-131500-1715692500.3.wav")
    store = open_store(root, age_from="filename_date", zone=zone)

    assert enforce(store).deleted == int(deleted)
    assert recording.exists() != deleted


def test_folder_date_counts_until_the_end_of_that_day(root: Path, open_store: StoreFactory) -> None:
    cutoff = datetime(2026, 5, 14, 18, 0, tzinfo=BERLIN)
    same_day = put(root, "2026/05/14/out-017612345678-1001-20260514-010000-1715641200.1.wav")
    day_before = put(root, "2026/05/13/out-017612345678-1001-20260513-235900-1715637540.1.wav")
    # Month folders only: a file is as young as the month's last day.
    april = put(root, "monthly/2026/04/out-017612345678-1001.wav")
    may = put(root, "monthly/2026/05/out-017612345678-1002.wav")
    store = open_store(root, age_from="path_date", zone=BERLIN)

    assert store.survey(cutoff).oldest == end_of_day(date(2026, 4, 30), BERLIN)
    assert enforce(store, cutoff).deleted == 2
    assert same_day.exists()
    assert may.exists()
    assert not day_before.exists()
    assert not april.exists()


def test_3cx_and_date_only_names_are_aged_by_their_time_stamp(
    root: Path, open_store: StoreFactory
) -> None:
    old = put(root, "Recordings/1001/[Alice]_1001-017612345678_20260402093000(42).wav")
    # A 14-digit international number is no time stamp; the real one makes the file young.
    young = put(root, "Recordings/1001/[Bob]_1001-00493012345678_20260520101500(43).wav")
    fax_before = put(root, "faxes/fax-20260513.wav")
    fax_same_day = put(root, "faxes/fax-20260514.wav")
    store = open_store(root, age_from="filename_date")

    assert enforce(store).deleted == 2
    assert young.exists()
    assert fax_same_day.exists()
    assert not old.exists()
    assert not fax_before.exists()


def test_undated_files_are_counted_and_never_deleted(root: Path, open_store: StoreFactory) -> None:
    undated = [
        put(root, "misc/greeting.wav", mtime=LONG_AGO),
        put(root, "2026/13/01/out-017612345678-1001.wav", mtime=LONG_AGO),
        put(root, "2026/02/30/out-017612345678-1002.wav", mtime=LONG_AGO),
        put(root, "2026/02/29/out-017612345678-1003.wav", mtime=LONG_AGO),  # 2026 is no leap year
    ]
    dated = put(root, "2024/02/29/out-017612345678-1004.wav", mtime=LONG_AGO)
    store = open_store(root, age_from="path_date")

    survey = store.survey(CUTOFF)
    done = enforce(store)

    assert (survey.total, survey.expired, survey.skipped) == (5, 1, {"undated": 4})
    assert done.deleted == 1
    assert not dated.exists()
    assert all(path.exists() for path in undated)


def test_file_name_with_impossible_time_stamp_is_undated(
    root: Path, open_store: StoreFactory
) -> None:
    recording = put(root, "2020/01/01/out-017612345678-1001-20201399-093000-1.wav", mtime=LONG_AGO)
    store = open_store(root, age_from="filename_date")

    assert store.survey(CUTOFF).skipped == {"undated": 1}
    assert enforce(store).deleted == 0
    assert recording.exists()


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ((b"2024", b"02", b"29"), end_of_day(date(2024, 2, 29), UTC_ZONE)),
        ((b"2024", b"02"), end_of_day(date(2024, 2, 29), UTC_ZONE)),
        ((b"2024", b"01", b"15", b"sub"), end_of_day(date(2024, 1, 15), UTC_ZONE)),
        ((b"2024", b"00"), None),
        ((b"2024", b"01", b"32"), None),
        ((b"recordings", b"1001"), None),
    ],
)
def test_path_age_reads_the_nearest_date_folders(
    folder: tuple[bytes, ...], expected: datetime | None
) -> None:
    assert path_age(folder, UTC_ZONE) == expected


def test_look_alike_numbers_in_a_name_can_only_delay_deletion() -> None:
    # A caller number shaped like a later time stamp makes the file younger, never older.
    name = b"[Eve]_1001-20991231235959_20260402093000(44).wav"
    assert filename_age(name, UTC_ZONE) == datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC)


# -- selection -------------------------------------------------------------------------------


def test_only_files_matching_the_patterns_are_selected(
    root: Path, open_store: StoreFactory
) -> None:
    top = put(root, "out-017612345678-1001.wav", mtime=LONG_AGO)
    nested = put(root, "2020/01/01/out-017612345678-1001.wav", mtime=LONG_AGO)
    notes = put(root, "2020/01/01/out-017612345678-1001.txt", mtime=LONG_AGO)
    upper = put(root, "2020/01/01/out-017612345678-1002.WAV", mtime=LONG_AGO)
    store = open_store(root, age_from="mtime", match=("**/*.wav",))

    assert store.survey(CUTOFF).total == 2
    assert enforce(store).deleted == 2
    assert not top.exists()
    assert not nested.exists()
    assert notes.exists()
    assert upper.exists()


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("**/*.wav", "2024/01/15/x.wav", True),
        ("**/*.wav", "x.wav", True),
        ("**/*.wav", "x.WAV", False),
        ("*.wav", "2024/x.wav", False),
        ("2024/**", "2024/01/15/x.wav", True),
        ("2024/*/x.wav", "2024/01/x.wav", True),
        ("2024/*/x.wav", "2024/01/15/x.wav", False),
        ("**/q-?.wav", "a/q-1.wav", True),
        ("**/q-?.wav", "a/q-12.wav", False),
        ("**/[io]n-*.wav", "a/in-1.wav", True),
        ("**/[!io]n-*.wav", "a/in-1.wav", False),
        ("**/[!io]n-*.wav", "a/an-1.wav", True),
        ("a[/]b", "a/b", False),
        ("**/*.wav", "a/\udcff\udcfe.wav", True),
    ],
)
def test_match_patterns(pattern: str, path: str, matches: bool) -> None:
    assert bool(compile_glob(pattern).fullmatch(path)) == matches


def test_lock_files_are_never_deleted(root: Path, open_store: StoreFactory) -> None:
    locks = [put(root, f"1001/INBOX/{name}", mtime=LONG_AGO) for name in (".lock", "lock")]
    locks.append(put(root, "1001/INBOX/.lock-0000abcd", mtime=LONG_AGO))
    message = put(root, "1001/INBOX/msg0000.wav", mtime=LONG_AGO)
    store = open_store(root, age_from="mtime", match=("**/*",))

    assert store.survey(CUTOFF).skipped == {"lock_file": 3}
    assert enforce(store).deleted == 1
    assert not message.exists()
    assert all(lock.exists() for lock in locks)


def test_greetings_and_tmp_folders_are_never_deleted(root: Path, open_store: StoreFactory) -> None:
    greetings = [put(root, f"1001/{name}", mtime=LONG_AGO) for name in ("busy.wav", "unavail.WAV")]
    greetings += [
        put(root, "1001/greet.wav", mtime=LONG_AGO),
        put(root, "1001/temp.gsm", mtime=LONG_AGO),
    ]
    recording = put(root, "1001/tmp/msg0000.wav", mtime=LONG_AGO)
    message = put(root, "1001/INBOX/msg0000.wav", mtime=LONG_AGO)
    store = open_store(root, age_from="mtime", match=("**/*",))

    assert store.survey(CUTOFF).skipped == {"protected": 5}
    assert enforce(store).deleted == 1
    assert not message.exists()
    assert recording.exists() and all(greeting.exists() for greeting in greetings)


# -- never following, never leaving -----------------------------------------------------------


def test_symlinked_folder_outside_the_root_is_not_followed(
    root: Path, outside: Path, open_store: StoreFactory
) -> None:
    elsewhere = put(outside, "2020/01/01/out-017612345678-1001.wav", mtime=LONG_AGO)
    (root / "2020").symlink_to(outside / "2020")
    store = open_store(root, age_from="mtime")

    survey = store.survey(CUTOFF)
    done = enforce(store)

    assert (survey.total, survey.skipped) == (0, {"symlink": 1})
    assert done.deleted == 0
    assert elsewhere.exists()
    assert (root / "2020").is_symlink()


def test_symlinked_file_pointing_outside_is_left_with_its_target(
    root: Path, outside: Path, open_store: StoreFactory
) -> None:
    target = put(outside, "out-017612345678-1001.wav", mtime=LONG_AGO)
    link = root / "2020/01/01/out-017612345678-1001.wav"
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    set_mtime(link, LONG_AGO)
    store = open_store(root, age_from="path_date")

    assert store.survey(CUTOFF).skipped == {"symlink": 1}
    assert enforce(store).deleted == 0
    assert link.is_symlink()
    assert target.exists()


def test_symlink_loops_are_counted_without_hanging(root: Path, open_store: StoreFactory) -> None:
    old = put(root, "2020/01/01/out-017612345678-1001.wav", mtime=LONG_AGO)
    (root / "2020/01/01/up").symlink_to("..")
    (root / "self").symlink_to(".")
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    store = open_store(root, age_from="mtime")

    survey = store.survey(CUTOFF)

    assert (survey.total, survey.expired, survey.skipped) == (1, 1, {"symlink": 4})
    assert enforce(store).deleted == 1
    assert not old.exists()


def test_fifo_is_skipped(root: Path, open_store: StoreFactory) -> None:
    pipe = root / "2020/01/01/out-017612345678-1001.wav"
    pipe.parent.mkdir(parents=True)
    os.mkfifo(pipe)
    set_mtime(pipe, LONG_AGO)
    store = open_store(root, age_from="mtime")

    assert store.survey(CUTOFF).skipped == {"not_regular_file": 1}
    assert enforce(store).deleted == 0
    assert stat.S_ISFIFO(pipe.lstat().st_mode)


def test_undecodable_file_names_are_deleted_when_expired(
    root: Path, open_store: StoreFactory
) -> None:
    old = put(root, b"2020/01/01/\xff\xfe-old.wav")
    young = put(root, b"2026/05/20/\xff\xfe-young.wav")
    store = open_store(root, age_from="path_date")

    survey = store.survey(CUTOFF)
    done = enforce(store)

    assert (survey.total, survey.expired) == (2, 1)
    assert done.deleted == 1
    assert not old.exists()
    assert young.exists()
    assert "\\xff" not in repr(survey) + repr(done)


# -- between planning and deleting ------------------------------------------------------------


def test_folder_swapped_for_a_symlink_after_planning_is_not_followed(
    root: Path, outside: Path, open_store: StoreFactory
) -> None:
    name = "out-017612345678-1001-20200101-101500-1577873700.1.wav"
    put(root, f"2020/01/01/{name}")
    store = open_store(root, age_from="path_date")
    batch = first_batch(store)

    # The planned folder moves out of the root and a symlink takes its place: the file behind
    # it is the very file planned (same inode), so only refusing the symlink protects it.
    (root / "2020/01/01").rename(outside / "01")
    (root / "2020/01/01").symlink_to(outside / "01")
    result = store.apply(batch, CUTOFF)

    assert (result.deleted, result.skipped) == (0, {"changed": 1})
    assert (outside / "01" / name).exists()
    assert (root / "2020/01/01").is_symlink()


def test_folder_swapped_for_a_symlink_to_a_look_alike_is_not_followed(
    root: Path, outside: Path, open_store: StoreFactory
) -> None:
    name = "out-017612345678-1001-20200101-101500-1577873700.1.wav"
    put(root, f"2020/01/01/{name}")
    store = open_store(root, age_from="path_date")
    batch = first_batch(store)

    (root / "2020/01/01").rename(root / "2020/01/moved")
    decoy = put(outside, f"01/{name}")
    (root / "2020/01/01").symlink_to(outside / "01")
    result = store.apply(batch, CUTOFF)

    assert (result.deleted, result.skipped) == (0, {"changed": 1})
    assert decoy.exists()
    assert (root / "2020/01/moved" / name).exists()


def test_file_replaced_after_planning_is_skipped(root: Path, open_store: StoreFactory) -> None:
    recording = put(root, "2020/01/01/out-017612345678-1001-20200101-101500-1577873700.1.wav")
    store = open_store(root, age_from="path_date")
    batch = first_batch(store)

    replacement = recording.with_name("incoming")
    replacement.write_bytes(AUDIO)
    replacement.replace(recording)  # same name, another inode
    result = store.apply(batch, CUTOFF)

    assert (result.deleted, result.skipped) == (0, {"changed": 1})
    assert recording.exists()


def test_file_still_growing_after_planning_is_skipped(root: Path, open_store: StoreFactory) -> None:
    recording = put(root, "2020/01/01/out-017612345678-1001-20200101-101500-1577873700.1.wav")
    store = open_store(root, age_from="path_date")
    batch = first_batch(store)

    with recording.open("ab") as handle:
        handle.write(b"\x00" * 16)
    result = store.apply(batch, CUTOFF)

    assert (result.deleted, result.skipped) == (0, {"changed": 1})
    assert recording.exists()


def test_file_modified_after_planning_is_skipped_when_aged_by_mtime(
    root: Path, open_store: StoreFactory
) -> None:
    recording = put(root, "a/out-017612345678-1001.wav", mtime=LONG_AGO)
    store = open_store(root, age_from="mtime")
    batch = first_batch(store)

    set_mtime(recording, RECENTLY)
    result = store.apply(batch, CUTOFF)

    assert (result.deleted, result.skipped) == (0, {"changed": 1})
    assert recording.exists()


def test_file_removed_by_someone_else_is_counted_as_vanished(
    root: Path, open_store: StoreFactory
) -> None:
    recording = put(root, "2020/01/01/out-017612345678-1001.wav")
    store = open_store(root, age_from="path_date")
    batch = first_batch(store)

    recording.unlink()

    assert store.apply(batch, CUTOFF).skipped == {"vanished": 1}


def test_plan_is_not_applied_with_an_earlier_cutoff(root: Path, open_store: StoreFactory) -> None:
    recording = put(root, "2026/05/01/out-017612345678-1001.wav")
    store = open_store(root, age_from="path_date")
    batch = first_batch(store, CUTOFF)

    result = store.apply(batch, datetime(2026, 4, 1, tzinfo=UTC))

    assert (result.deleted, result.skipped) == (0, {"changed": 1})
    assert recording.exists()


# -- several recordings at once (unlink_threads) ----------------------------------------------


@pytest.mark.parametrize("threads", [1, 4])
def test_every_file_of_a_batch_deleted_by_several_threads_is_counted_once(
    root: Path,
    open_files_store: StoreFactory,
    immutable_file: Callable[[Path], None],
    threads: int,
) -> None:
    # 3 day folders of 10 old recordings; after planning one is removed, one grows, one
    # becomes young by its mtime, and one cannot be unlinked: each is counted, none quietly.
    paths = [
        put(root, f"2020/01/0{day}/out-017612345678-1001-{n:02d}.wav", mtime=LONG_AGO)
        for day in (1, 2, 3)
        for n in range(10)
    ]
    store = open_files_store(root, age_from="mtime", match=["**/*.wav"], unlink_threads=threads)
    batch = first_batch(store)
    removed, grown, young, stuck = paths[3], paths[14], paths[15], paths[27]
    removed.unlink()
    with grown.open("ab") as handle:
        handle.write(b"\x00")
    set_mtime(young, RECENTLY)
    immutable_file(stuck)

    result = store.apply(batch, CUTOFF)

    assert batch.planned == 30
    assert result.deleted == 26
    assert result.bytes == 26 * len(AUDIO)
    assert result.skipped == {"changed": 2, "unremovable": 1, "vanished": 1}
    left = {path for path in paths if path.exists()}
    assert left == {grown, young, stuck}
    assert (root / "2020/01/01").exists() is False  # emptied day folders still go


def test_recordings_of_a_folder_swapped_for_a_symlink_are_kept_by_every_thread(
    root: Path, outside: Path, open_files_store: StoreFactory
) -> None:
    for n in range(8):
        put(root, f"2020/01/01/out-017612345678-1001-{n}.wav", mtime=LONG_AGO)
    store = open_files_store(root, age_from="mtime", match=["**/*.wav"], unlink_threads=4)
    batch = first_batch(store)
    (root / "2020/01/01").rename(outside / "01")
    (root / "2020/01/01").symlink_to(outside / "01")

    result = store.apply(batch, CUTOFF)

    assert (result.deleted, sum(result.skipped.values())) == (0, 8)
    assert len(list((outside / "01").iterdir())) == 8


# -- tidying up --------------------------------------------------------------------------------


def test_emptied_date_folders_are_removed_and_others_stay(
    root: Path, open_store: StoreFactory
) -> None:
    put(root, "2020/01/01/out-017612345678-1001.wav")
    put(root, "2020/01/02/out-017612345678-1002.wav")
    notes = put(root, "2020/01/02/notes.txt")
    put(root, "2020/01/04/split/out-017612345678-1003.wav")
    put(root, "archive/2019/12/31/out-017612345678-1004.wav")
    store = open_store(root, age_from="path_date")

    assert enforce(store).deleted == 4

    assert not (root / "2020/01/01").exists()
    assert notes.exists()  # so 2020/01/02, 2020/01 and 2020 stay
    assert (root / "2020/01/04/split").is_dir()  # not a date folder
    assert not (root / "archive/2019").exists()
    assert (root / "archive").is_dir()
    assert sorted(p.name for p in (root / "2020/01").iterdir()) == ["02", "04"]


def test_root_is_never_removed_even_when_named_like_a_date(
    tmp_path: Path, open_store: StoreFactory
) -> None:
    root = tmp_path / "2026"
    put(root, "2020/01/01/out-017612345678-1001.wav")
    store = open_store(root, age_from="path_date")

    assert enforce(store).deleted == 1
    assert root.is_dir()
    assert list(root.iterdir()) == []


# -- batches ---------------------------------------------------------------------------------


def test_batches_are_bounded_and_planned_while_walking(
    root: Path, open_store: StoreFactory
) -> None:
    for day in range(1, 8):
        put(root, f"2020/01/{day:02d}/out-017612345678-1001-202001{day:02d}-101500-1.wav")
    (root / "2020/02/01").mkdir(parents=True)
    store = open_store(root, age_from="path_date", batch_size=3)

    assert inspect.isgenerator(store.batches(CUTOFF))
    batches = store.batches(CUTOFF)
    first = next(batches)
    # A file appearing further along the walk after the first batch is still planned: the walk
    # is lazy, not a list of everything expired built up front.
    put(root, "2020/02/01/out-017612345678-1001-20200201-101500-1.wav")
    results = [store.apply(first, CUTOFF)] + [store.apply(b, CUTOFF) for b in batches]

    assert (first.planned, first.span) == (3, (date(2020, 1, 1), date(2020, 1, 3)))
    assert [r.deleted for r in results] == [3, 3, 2]
    assert results[-1].span == (date(2020, 1, 7), date(2020, 2, 1))
    assert list(root.iterdir()) == []


def test_no_folder_stays_open_after_a_run(root: Path, open_store: StoreFactory) -> None:
    for day in range(1, 6):
        put(root, f"2020/01/{day:02d}/sub/out-017612345678-1001.wav", mtime=LONG_AGO)
        put(root, f"2026/05/{day + 20:02d}/out-017612345678-1001.wav")
    before = open_descriptors()
    store = open_store(root, age_from="mtime", batch_size=2)

    store.survey(CUTOFF)
    abandoned = store.batches(CUTOFF)
    assert isinstance(abandoned, Generator)
    next(abandoned)
    abandoned.close()  # an engine stopping early releases the walk's folders
    assert enforce(store).deleted == 5
    store.close()

    assert open_descriptors() == before


def test_batch_span_is_in_the_configured_zone(root: Path, open_store: StoreFactory) -> None:
    # 23:30 UTC on 1 April is already 2 April in Berlin.
    put(root, "a/out-017612345678-1001.wav", mtime=datetime(2026, 4, 1, 23, 30, tzinfo=UTC))
    store = open_store(root, age_from="mtime", zone=BERLIN)

    batch = first_batch(store)

    assert batch.span == (date(2026, 4, 2), date(2026, 4, 2))
    assert store.apply(batch, CUTOFF).span == (date(2026, 4, 2), date(2026, 4, 2))


def test_results_name_no_file(root: Path, open_store: StoreFactory) -> None:
    put(root, f"2020/01/01/out-{PHONE}-1001-20200101-101500-{UNIQUEID}.wav")
    put(root, b"2020/01/01/\xff\xfe-" + PHONE.encode() + b".wav")
    store = open_store(root, age_from="path_date")

    survey = store.survey(CUTOFF)
    batch = first_batch(store)
    result = store.apply(batch, CUTOFF)

    shown = " ".join(str(value) + repr(value) for value in (survey, batch, result))
    assert result.deleted == 2
    for fragment in (PHONE, UNIQUEID, "out-", "xff", "2020/01/01"):
        assert fragment not in shown


# -- opening ---------------------------------------------------------------------------------


def test_missing_root_is_refused_with_what_to_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    store = FilesStore(FilesStoreConfig(type="files", root=missing), UTC_ZONE)

    with pytest.raises(StoreError, match="does not exist; create it or fix the store's root"):
        store.open()


def test_symlinked_root_is_refused(tmp_path: Path, root: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(root)
    store = FilesStore(FilesStoreConfig(type="files", root=link), UTC_ZONE)

    with pytest.raises(StoreError, match="is a symlink"):
        store.open()


def test_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "monitor"
    file.write_bytes(b"")
    store = FilesStore(FilesStoreConfig(type="files", root=file), UTC_ZONE)

    with pytest.raises(StoreError, match="is not a folder"):
        store.open()


def test_describe_states_the_config_without_walking(tmp_path: Path, root: Path) -> None:
    config = FilesStoreConfig(
        type="files", root=root, match=["**/*.wav", "**/*.mp3"], age_from="path_date"
    )
    missing = FilesStoreConfig(type="files", root=tmp_path / "nowhere")

    lines = "\n".join(FilesStore(config, BERLIN).describe())
    missing_lines = "\n".join(FilesStore(missing, BERLIN).describe())

    assert str(root) in lines
    assert "**/*.wav, **/*.mp3" in lines
    assert "path_date" in lines
    assert "Europe/Berlin" in lines
    assert "readable" in lines
    assert "warning" in missing_lines


# -- permissions and filesystems, in a child process -------------------------------------------

CHILD = """
import json, subprocess, sys
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo
from retentiond.config.model import FilesStoreConfig
from retentiond.stores.files.store import FilesStore

root, cutoff, mount = Path(sys.argv[1]), datetime.fromisoformat(sys.argv[2]), sys.argv[3]
planted = None
if mount:
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(root / mount)], check=True)
    planted = root / mount / "01" / "01" / "out-017612345678-1001.wav"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"RIFF")
config = FilesStoreConfig(type="files", root=root, match=["**/*.wav"], age_from="path_date")
store = FilesStore(config, ZoneInfo("UTC"))
store.open()
survey = store.survey(cutoff)
deleted = sum(store.apply(batch, cutoff).deleted for batch in store.batches(cutoff))
store.close()
print(json.dumps({
    "expired": survey.expired,
    "skipped": dict(survey.skipped),
    "deleted": deleted,
    "planted_survives": planted.exists() if planted else None,
}))
"""


def run_child(prefix: list[str], root: Path, mount: str = "") -> tuple[dict[str, Any], str]:
    """Runs a survey and enforcement in a child process; its result and everything it printed."""
    done = subprocess.run(
        [*prefix, sys.executable, "-c", CHILD, str(root), CUTOFF.isoformat(), mount],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout + done.stderr


def test_unreadable_folders_are_counted_and_the_walk_goes_on(root: Path) -> None:
    # Root reads any folder whatever its mode, so the child runs as root without the two
    # capabilities that allow it, as a hardened service unit would.
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing to drop DAC override")
        drop = "-dac_override,-dac_read_search"
        prefix = [setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}", "--"]
    readable = put(root, "2019/01/01/out-017612345678-1001.wav")
    closed = put(root, "2020/01/01/out-017612345678-1002.wav")
    listable = put(root, "2021/01/01/out-017612345678-1003.wav")
    (root / "2020").chmod(0)
    (root / "2021").chmod(0o644)  # names can be listed, but nothing in it can be looked at
    try:
        result, output = run_child(prefix, root)
    finally:
        (root / "2020").chmod(0o755)
        (root / "2021").chmod(0o755)

    assert result["skipped"] == {"unreadable": 2}
    assert (result["expired"], result["deleted"]) == (1, 1)
    assert not readable.exists()
    assert closed.exists()
    assert listable.exists()
    assert "warning" in output.lower()  # the blind spot is logged...
    assert PHONE not in output  # ...without naming anything in it


def test_folder_on_another_filesystem_is_not_entered(root: Path) -> None:
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare (util-linux) to mount a tmpfs in a private namespace")
    prefix = [unshare, "--mount", "--propagation", "private"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("this host does not allow a private mount namespace")
    old = put(root, "2019/01/01/out-017612345678-1001.wav")
    (root / "2020").mkdir()  # the child mounts a tmpfs here holding an expired recording

    result, output = run_child(prefix, root, mount="2020")

    assert result["skipped"] == {"other_filesystem": 1}
    assert (result["expired"], result["deleted"]) == (1, 1)
    assert result["planted_survives"] is True
    assert not old.exists()
    assert PHONE not in output
