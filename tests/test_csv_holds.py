"""Holds, data subjects and anonymization in the csv store: held lines stay in the file, `find`
lists exactly one person's lines whatever form their number has, an erasure removes exactly those
no hold keeps, and anonymization leaves no full number and changes nothing the second time."""

from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retentiond.policy.rules import NO_HOLDS, Holds, HoldScope
from retentiond.policy.subjects import Subject
from retentiond.stores.base import BatchResult
from retentiond.stores.csv.store import CsvStore

CUTOFF = datetime(2026, 2, 14, 12, 0, tzinfo=UTC)
ERASED_AT = datetime(2026, 6, 1, tzinfo=UTC)
SUBJECT = Subject.parse(numbers=["+4930123456"])
STRANGER = "+4917612345678"
LOOKALIKE = "0301234567"  # starts like the subject's number, is someone else's
# Every form of a number the fixture holds in full; none may survive anonymization.
NUMBERS = ("030123456", "4930123456", "4917612345678", "0301234567", "089555123")

StoreFactory = Callable[..., CsvStore]


def cdr_line(start: datetime, src: str, dst: str, clid: str, *, uniqueid: str) -> bytes:
    """One record the way cdr_csv's build_csv_record writes it: strings quoted, ints bare."""

    def quoted(value: str) -> str:
        return '"' + value.replace('"', '""') + '"'

    fields = [
        quoted("1001"),
        quoted(src),
        quoted(dst),
        quoted("from-internal"),
        quoted(clid),
        quoted("PJSIP/1001-00000a1f"),
        quoted("PJSIP/trunk-00000a20"),
        quoted("Dial"),
        quoted(f"PJSIP/{dst}@trunk,60,Tt"),
        quoted(start.strftime("%Y-%m-%d %H:%M:%S")),
        quoted((start + timedelta(seconds=7)).strftime("%Y-%m-%d %H:%M:%S")),
        quoted((start + timedelta(seconds=169)).strftime("%Y-%m-%d %H:%M:%S")),
        "169",
        "162",
        quoted("ANSWERED"),
        quoted("DOCUMENTATION"),
        quoted(uniqueid),
        quoted("Weber, Kanzlei"),
    ]
    return (",".join(fields) + "\n").encode()


# Master.csv, line by line; the subject's number as dialled, from a trunk, and with 00.
LINES = [
    cdr_line(datetime(2026, 1, 5, 9, 0), "1001", "030123456", '"Sales" <1001>', uniqueid="1.1"),
    cdr_line(
        datetime(2026, 1, 6, 10, 0),
        "+4930123456",
        "1001",
        '"Erika Mustermann" <+4930123456>',
        uniqueid="1.2",
    ),
    cdr_line(datetime(2026, 1, 7, 11, 0), "1002", "004930123456", '"" <1002>', uniqueid="1.3"),
    cdr_line(datetime(2026, 1, 8, 12, 0), STRANGER, "1001", f'"Max" <{STRANGER}>', uniqueid="1.4"),
    cdr_line(datetime(2026, 1, 9, 13, 0), "1001", LOOKALIKE, '"Sales" <1001>', uniqueid="1.5"),
    cdr_line(datetime(2026, 1, 10, 8, 0), "1003", "089555123", '"Lab" <1003>', uniqueid="1.7"),
    cdr_line(
        datetime(2026, 3, 2, 14, 0), "+4930123456", "1001", '"E" <+4930123456>', uniqueid="1.6"
    ),
]
OWN = [1, 2, 3, 7]  # 1-based line numbers naming the subject
YOUNG = [7]

ANONYMIZE = {"1": "truncate_digits", "2": "truncate_digits", "4": "blank", "8": "blank"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "cdr-csv"
    folder.mkdir()
    (folder / "Master.csv").write_bytes(b"".join(LINES))
    return folder


@pytest.fixture
def open_store(open_csv_store: StoreFactory) -> StoreFactory:
    return open_csv_store


def lines_of(root: Path) -> list[bytes]:
    return (root / "Master.csv").read_bytes().splitlines(keepends=True)


def only(numbers: list[int]) -> list[bytes]:
    return [LINES[number - 1] for number in numbers]


def enforce(store: CsvStore, holds: Holds) -> int:
    return sum(store.apply(batch, CUTOFF).deleted for batch in store.batches(CUTOFF, holds))


def anonymize(
    store: CsvStore, holds: Holds = NO_HOLDS, since: datetime | None = None
) -> list[BatchResult]:
    batches = store.anonymize_batches(CUTOFF, holds, since)
    return [store.apply(batch, CUTOFF) for batch in batches]


def day(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- holds ---------------------------------------------------------------------------------------


def test_held_lines_stay_in_the_file_and_the_other_expired_lines_go(
    root: Path, open_store: StoreFactory
) -> None:
    store = open_store(root)
    holds = Holds((HoldScope("HOLD-2026-07", subject=SUBJECT),))

    survey = store.survey(CUTOFF, holds)
    deleted = enforce(store, holds)

    assert (survey.held, survey.held_by, survey.expired) == (3, {"HOLD-2026-07": 3}, 3)
    assert deleted == 3
    assert lines_of(root) == only([1, 2, 3, 7])
    assert (store.survey(CUTOFF, holds).expired, store.survey(CUTOFF).expired) == (0, 3)


def test_hold_window_without_a_subject_holds_every_line_of_its_days(
    root: Path, open_store: StoreFactory
) -> None:
    store = open_store(root)
    holds = Holds((HoldScope("HOLD-JAN-8", day("2026-01-08"), day("2026-01-10")),))

    survey = store.survey(CUTOFF, holds)
    enforce(store, holds)

    assert (survey.held, survey.held_by) == (2, {"HOLD-JAN-8": 2})
    assert lines_of(root) == only([4, 5, 7])


# -- data subjects -------------------------------------------------------------------------------


def test_find_lists_exactly_the_subjects_lines_in_every_number_form(
    root: Path, open_store: StoreFactory
) -> None:
    store = open_store(root)
    holds = Holds((HoldScope("HOLD-JAN-6", day("2026-01-06"), day("2026-01-07"), SUBJECT),))

    found = {item.where: item for item in store.find(SUBJECT, holds)}

    assert store.subject_fields() == ["1", "2", "4"]
    assert set(found) == {f"Master.csv:{number}" for number in OWN}
    assert found["Master.csv:1"].fields == {"2": "030123456"}
    assert found["Master.csv:2"].fields == {
        "1": "+4930123456",
        "4": '"Erika Mustermann" <+4930123456>',
    }
    assert found["Master.csv:3"].fields == {"2": "004930123456"}
    assert found["Master.csv:3"].when == day("2026-01-07T11:00:00")
    assert [where for where, item in found.items() if item.held] == ["Master.csv:2"]


def test_erase_removes_the_subjects_lines_of_any_age_and_keeps_held_ones(
    root: Path, open_store: StoreFactory
) -> None:
    store = open_store(root)
    holds = Holds((HoldScope("HOLD-JAN-6", day("2026-01-06"), day("2026-01-07"), SUBJECT),))

    batches = list(store.subject_batches(SUBJECT, holds))
    results = [store.apply(batch, ERASED_AT) for batch in batches]

    assert [batch.planned for batch in batches] == [3]
    assert sum(result.deleted for result in results) == 3
    assert lines_of(root) == only([2, 4, 5, 6])
    assert [item.where for item in store.find(SUBJECT, holds)] == ["Master.csv:1"]
    assert "30123456" not in " ".join(map(repr, [*batches, *results]))


# -- anonymization -------------------------------------------------------------------------------


def test_anonymization_leaves_no_full_number_and_keeps_everything_else(
    root: Path, open_store: StoreFactory
) -> None:
    store = open_store(root, anonymize=ANONYMIZE)

    survey = store.anonymize_survey(CUTOFF)
    results = anonymize(store)

    assert store.anonymizes
    assert (survey.expired, survey.held) == (6, 0)
    assert [(result.anonymized, result.counts["unchanged"]) for result in results] == [(6, 0)]
    after = lines_of(root)
    assert len(after) == len(LINES)
    assert after[-1] == LINES[-1]  # young: untouched
    expired_text = b"".join(after[:-1]).decode()
    assert not [number for number in NUMBERS if number in expired_text]
    assert "Mustermann" not in expired_text
    for old, new in zip(LINES[:-1], after[:-1], strict=True):
        old_fields, new_fields = (next(csv.reader([line.decode()])) for line in (old, new))
        assert new_fields[2].endswith("xxx") and new_fields[4] == ""
        kept = [i for i in range(len(old_fields)) if str(i) not in ANONYMIZE]
        assert [new_fields[i] for i in kept] == [old_fields[i] for i in kept]
        # Quoting is kept as cdr_csv wrote it: blanked strings quoted, bare numbers bare.
        assert b',"from-internal","",' in new
        assert new.endswith(old[old.index(b',"2026-') :])


def test_second_anonymization_changes_nothing(root: Path, open_store: StoreFactory) -> None:
    store = open_store(root, anonymize=ANONYMIZE)
    anonymize(store)
    first = (root / "Master.csv").read_bytes()
    inode = (root / "Master.csv").stat().st_ino

    results = anonymize(store)

    assert [(result.anonymized, result.counts["unchanged"]) for result in results] == [(0, 6)]
    assert (root / "Master.csv").read_bytes() == first
    assert (root / "Master.csv").stat().st_ino == inode  # not even rewritten


def test_anonymization_leaves_held_lines_and_lines_before_since(
    root: Path, open_store: StoreFactory
) -> None:
    store = open_store(root, anonymize=ANONYMIZE)
    holds = Holds((HoldScope("HOLD-2026-07", subject=SUBJECT),))
    since = day("2026-01-06")

    survey = store.anonymize_survey(CUTOFF, holds, since)
    results = anonymize(store, holds, since)

    assert (survey.expired, survey.held, survey.held_by) == (3, 2, {"HOLD-2026-07": 2})
    assert sum(result.anonymized for result in results) == 3
    after = lines_of(root)
    assert after[:3] == only([1, 2, 3])  # before since, and held
    assert [line != original for line, original in zip(after, LINES, strict=True)] == [
        False,
        False,
        False,
        True,
        True,
        True,
        False,
    ]
