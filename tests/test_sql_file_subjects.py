"""`subject_in_file_name`: rows whose file name carries the caller's number (3CX `recordings`).

3CX names a recording `<ext>/[<Name>]_<ext>-<number>_<YYYYMMDDhhmmss>(<id>).wav` and its table
has no number column. With subject_in_file_name the SQL store tells whose a row is by the parts
of that name, in the database, as a files store's subject_in_name does in Python: holds by number
keep exactly the person's rows and files, `find` lists them, `erase` deletes them.

PostgreSQL gets the 3CX v20 table itself; MariaDB a keyless equivalent (deleted with ORDER BY
... LIMIT and RETURNING), SQLite one walked by its integer key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from databases import ALL_BACKENDS
from pbxdata import PbxDatabase
from pydantic import ValidationError
from sqlalchemy import text
from structlog.testing import capture_logs
from threecx_schema import EXTENSIONS, RECORDINGS, recording_name

from retentiond.config.model import SqlStoreConfig
from retentiond.errors import StoreError
from retentiond.policy.rules import Holds, HoldScope
from retentiond.policy.subjects import Subject
from retentiond.stores.base import BatchResult
from retentiond.stores.sql.store import SqlStore

BERLIN = ZoneInfo("Europe/Berlin")
CUTOFF = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)  # 13:00 in Berlin

PERSON = "+4930555123"
PERSON_SUBJECT = Subject.parse(numbers=[PERSON])
STRANGER = "+4930999888"


TABLES = {
    # Keyless, like FreePBX's cdr: batches delete with ORDER BY ... LIMIT ... RETURNING.
    "mariadb": [
        "CREATE TABLE recordings (start_time DATETIME NOT NULL, recording_url VARCHAR(511), "
        "KEY recordings_start_time (start_time))"
    ],
    "postgresql": RECORDINGS,  # 3CX v20
    # No index on the time: batches walk the integer key.
    "sqlite": [
        "CREATE TABLE recordings (id INTEGER PRIMARY KEY, start_time TEXT NOT NULL, "
        "recording_url TEXT)"
    ],
}

StoreFactory = Callable[..., SqlStore]


@dataclass(frozen=True)
class Recording:
    url: str | None
    moment: datetime  # Berlin wall-clock time
    theirs: bool  # names PERSON, in any of the forms a PBX stores

    @property
    def base_name(self) -> str:
        return (self.url or "").rsplit("/", 1)[-1]


def berlin(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """A Berlin wall-clock time, naive as MariaDB and SQLite store it."""
    return datetime(year, month, day, hour, minute)


def stem(name: str) -> str:
    """The name up to its last dot, as the files store takes it."""
    before, dot, _ = name.rpartition(".")
    return before if dot else name


def named(
    extension: str, number: str, moment: datetime, sequence: int, folder: str | None = None
) -> str:
    name = recording_name(extension, EXTENSIONS[extension], number, moment, sequence)
    return f"{folder or extension}/{name}"


def calls() -> list[Recording]:
    """The person's recordings (dialled, international and 00 forms, expired and young) and
    strangers' whose names come close: one digit more or less, the person's digits in the
    `(<id>)` part or in the folder."""
    recordings = []
    for sequence, (extension, number, moment, theirs, folder) in enumerate(
        [
            ("1001", "030555123", berlin(2024, 2, 12, 9, 30), True, None),
            ("1002", PERSON, berlin(2024, 2, 14, 10, 0), True, None),
            ("1001", "0305551234", berlin(2024, 2, 15, 11, 0), False, None),
            ("1003", "30555123", berlin(2024, 2, 16, 12, 0), False, None),
            ("1004", "+49305551230", berlin(2024, 2, 17, 8, 15), False, None),
            ("1005", STRANGER, berlin(2024, 2, 18, 14, 0), False, "030555123"),
            ("1006", "004930555123", berlin(2024, 2, 22, 16, 45), True, None),
            ("1002", STRANGER, berlin(2024, 2, 23, 9, 0), False, None),
            ("1001", "030555123", berlin(2024, 2, 26, 17, 0), True, None),
            ("1003", "+4989555000", berlin(2024, 2, 27, 7, 0), False, None),
            ("1004", PERSON, berlin(2024, 3, 2, 10, 0), True, None),  # young
            ("1005", STRANGER, berlin(2024, 3, 3, 10, 0), False, None),  # young
        ],
        start=1,
    ):
        url = named(extension, number, moment, sequence, folder)
        recordings.append(Recording(url, moment, theirs))
    # The person's international digits as the `(<id>)` part: not a part of its own.
    moment = berlin(2024, 2, 19, 13, 0)
    url = named("1002", STRANGER, moment, 4930555123)
    recordings.append(Recording(url, moment, False))
    recordings.append(Recording(None, berlin(2024, 2, 20, 13, 0), False))  # no file
    return recordings


def stored_time(database: PbxDatabase, moment: datetime) -> Any:
    if database.dialect == "sqlite":
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    if database.dialect == "postgresql":
        return moment.replace(tzinfo=BERLIN)  # timestamp with time zone
    return moment


def insert(database: PbxDatabase, root: Path, recordings: list[Recording]) -> None:
    """The recordings' rows, and a file for each under root."""
    database.execute(*TABLES[database.dialect])
    rows = []
    for recording in recordings:
        if recording.url is not None and recording.url.endswith((".wav", ".mp3")):
            path = root / recording.url
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"RIFF" + bytes(60))
        rows.append(
            {
                "start_time": stored_time(database, recording.moment),
                "recording_url": recording.url,
            }
        )
    database.insert("recordings", rows)


def urls_left(database: PbxDatabase) -> set[str | None]:
    with database.engine.connect() as connection:
        return set(connection.execute(text("SELECT recording_url FROM recordings")).scalars())


def files_left(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


def expired(recording: Recording) -> bool:
    return recording.moment.replace(tzinfo=BERLIN) < CUTOFF


# Their recordings from 20 February on are held; those before may be erased.
HOLD_FROM = datetime(2024, 2, 20, tzinfo=BERLIN)
WINDOW_HOLD = Holds((HoldScope("HOLD-P", HOLD_FROM, None, PERSON_SUBJECT),))


def held(recording: Recording) -> bool:
    return recording.theirs and recording.moment.replace(tzinfo=BERLIN) >= HOLD_FROM


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "Recordings"
    folder.mkdir()
    return folder


@pytest.fixture
def open_store(open_sql_store: StoreFactory, root: Path) -> StoreFactory:
    """A SqlStore on the recordings table with subject_in_file_name; closed after the test."""

    def factory(url: str, **settings: Any) -> SqlStore:
        defaults = {
            "connection": "3cx",
            "file_column": "recording_url",
            "file_root": str(root),
            "subject_in_file_name": True,
            "batch_size": 2,
        }
        return open_sql_store(url, "recordings", "start_time", **(defaults | settings))

    return factory


# -- holds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_hold_by_number_keeps_exactly_that_persons_recordings_and_their_files(
    database: PbxDatabase, open_store: StoreFactory, root: Path
) -> None:
    recordings = calls()
    insert(database, root, recordings)
    store = open_store(database.url)
    holds = Holds((HoldScope("HOLD-P", None, None, PERSON_SUBJECT),))
    kept = [r for r in recordings if r.theirs or not expired(r)]
    theirs_expired = [r for r in recordings if r.theirs and expired(r)]

    survey = store.survey(CUTOFF, holds)
    results: list[BatchResult] = [store.apply(b, CUTOFF) for b in store.batches(CUTOFF, holds)]

    assert survey.held == survey.held_by["HOLD-P"] == len(theirs_expired) == 4
    assert survey.expired == len([r for r in recordings if expired(r)]) - 4
    assert sum(result.deleted for result in results) == survey.expired
    assert urls_left(database) == {r.url for r in kept}, "strangers' rows go, however close"
    assert files_left(root) == {r.url for r in kept if r.url is not None}


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_store_tells_whose_a_recording_is_by_its_file_name_alone(
    database: PbxDatabase, open_store: StoreFactory, root: Path
) -> None:
    insert(database, root, calls())
    store = open_store(database.url)

    assert store.subject_fields() == ["recording_url"]
    assert any(
        line.startswith("subjects: the parts of the file names in recording_url")
        for line in store.describe()
    )


# -- find -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_find_lists_exactly_the_persons_recordings_in_every_stored_form(
    database: PbxDatabase, open_store: StoreFactory, root: Path
) -> None:
    recordings = calls()
    insert(database, root, recordings)
    store = open_store(database.url)

    found = list(store.find(PERSON_SUBJECT, WINDOW_HOLD))

    theirs = [r for r in recordings if r.theirs]
    assert len(theirs) == 5
    assert [item.fields["recording_url"] for item in found] == [r.base_name for r in theirs]
    assert all(set(item.fields) == {"start_time", "recording_url"} for item in found)
    assert [item.held for item in found] == [held(r) for r in theirs]
    assert [item.when for item in found] == [
        r.moment.replace(tzinfo=BERLIN).astimezone(UTC) for r in theirs
    ]


# Names whose parts do or do not name PERSON (+4930555123, dialled 030555123), as
# Subject.matches_name reads them: the base name up to its last dot, split at `-`, `_` and
# blanks; a number's part may carry `.()` (taken out), `%` and `_` are no wildcards.
TRICKY_NAMES = {
    "1001/x-030555123.wav": True,
    "1001/030555123": True,  # no extension
    "1001/030555123.wav": True,
    "1001/x_030555123 y.mp3": True,
    "1001/x-030555123-.wav": True,
    "1001/x-030.555.123-y.wav": True,
    "1001/x-(030)555123-y.wav": True,
    "1001/x-+49 30 555123-y.wav": False,  # blanks split: three parts
    "1001/x-030555123.part.wav": False,  # the part is 030555123.part
    "1001/.030555123": False,  # all of it is the extension
    "1001/x-030555123x.wav": False,
    "1001/x-0305551230.wav": False,
    "1001/x-30555123.wav": False,
    "1001/x-030%55123.wav": False,
    "1001/x-030_55123.wav": False,
    "1001/x-0305_5123.wav": False,
    "1001/x-03055512_.wav": False,
    "1001/x-%030555123.wav": False,
    "1001/x-20240215093000(030555123).wav": False,
    "030555123/x-1002.wav": False,  # a folder is no part of the name
    "030555123-a/x.wav": False,
    "1003/[Jürgen Weiß]_1003-030555123_20240215093000(7).wäv": True,
    "1003/[Jürgen Weiß]_1003-0305551234_20240215093000(8).wäv": False,
}


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_the_database_reads_file_names_as_subjects_matches_name_does(
    database: PbxDatabase, open_store: StoreFactory, root: Path
) -> None:
    moment = berlin(2024, 2, 10, 12, 0)
    recordings = [Recording(url, moment, theirs) for url, theirs in TRICKY_NAMES.items()]
    insert(database, root, recordings)
    store = open_store(database.url)

    found = {item.fields["recording_url"] for item in store.find(PERSON_SUBJECT)}

    assert found == {r.base_name for r in recordings if r.theirs}
    assert found == {
        r.base_name for r in recordings if PERSON_SUBJECT.matches_name(stem(r.base_name))
    }


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_an_extension_is_a_part_of_the_name_exactly_and_with_its_case(
    database: PbxDatabase, open_store: StoreFactory, root: Path
) -> None:
    moment = berlin(2024, 2, 10, 12, 0)
    names = {
        "1001/[Erika Mustermann]_1001-030555123_20240215093000(1).wav": True,
        "1001/[Erika Mustermann]_10010-030555123_20240215093000(2).wav": False,
        "1001/[Erika Mustermann]_1002-030555123_20240215093000(3).wav": False,  # folder only
        "Sales/[Queue]_Sales-030555123_20240215093000(4).wav": False,
        "sales/[Queue]_sales-030555123_20240215093000(5).wav": True,
    }
    insert(database, root, [Recording(url, moment, theirs) for url, theirs in names.items()])
    store = open_store(database.url)

    found = {
        item.fields["recording_url"]
        for item in store.find(Subject.parse(extensions=["1001", "sales"]))
    }

    assert found == {url.rsplit("/", 1)[-1] for url, theirs in names.items() if theirs}


# -- erase ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_erase_removes_the_persons_unheld_recordings_and_files_only(
    database: PbxDatabase, open_store: StoreFactory, root: Path
) -> None:
    recordings = calls()
    insert(database, root, recordings)
    store = open_store(database.url)
    erased = [r for r in recordings if r.theirs and not held(r)]
    assert len(erased) == 2

    with capture_logs() as logs:
        results = [
            store.apply(batch, CUTOFF)
            for batch in store.subject_batches(PERSON_SUBJECT, WINDOW_HOLD)
        ]

    assert sum(result.deleted for result in results) == 2
    assert sum(result.bytes or 0 for result in results) == 2 * 64
    assert urls_left(database) == {r.url for r in recordings if r not in erased}
    assert files_left(root) == {r.url for r in recordings if r not in erased and r.url}
    shown = repr(logs) + repr(results)
    assert "555123" not in shown and "Mustermann" not in shown


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_erase_plan_without_apply_deletes_nothing(
    database: PbxDatabase, open_store: StoreFactory, root: Path
) -> None:
    recordings = calls()
    insert(database, root, recordings)
    store = open_store(database.url, batch_size=100)

    planned = list(store.subject_batches(PERSON_SUBJECT))

    assert sum(batch.planned for batch in planned) == 5
    assert database.count("recordings") == len(recordings)
    assert len(files_left(root)) == len(recordings) - 1


def test_subject_columns_and_file_names_both_tell_whose_a_row_is(
    sqlite_url: str,
    pbx_database: Callable[[str], PbxDatabase],
    open_store: StoreFactory,
    root: Path,
) -> None:
    database = pbx_database(sqlite_url)
    recordings = calls()
    insert(database, root, recordings)
    database.execute("ALTER TABLE recordings ADD COLUMN caller TEXT")
    stranger_by_name = next(r for r in recordings if not r.theirs and r.url and expired(r))
    database.execute(
        "UPDATE recordings SET caller = :caller WHERE recording_url = :url",
        caller="030555123",
        url=stranger_by_name.url,
    )
    store = open_store(sqlite_url, subject_columns=["caller"])

    found = list(store.find(PERSON_SUBJECT))

    assert store.subject_fields() == ["caller", "recording_url"]
    assert len(found) == 6
    assert stranger_by_name.base_name in {item.fields["recording_url"] for item in found}


# -- configuration --------------------------------------------------------------------------------


def test_subject_in_file_name_needs_file_column() -> None:
    with pytest.raises(ValidationError, match=r"subject_in_file_name .* set file_column"):
        SqlStoreConfig.model_validate(
            {
                "type": "sql",
                "connection": "3cx",
                "table": "recordings",
                "time_column": "start_time",
                "subject_in_file_name": True,
            }
        )


def test_without_subject_in_file_name_the_recordings_cannot_be_searched(
    sqlite_url: str,
    pbx_database: Callable[[str], PbxDatabase],
    open_store: StoreFactory,
    root: Path,
) -> None:
    insert(pbx_database(sqlite_url), root, calls())
    store = open_store(sqlite_url, subject_in_file_name=False)

    assert store.subject_fields() == []
    with pytest.raises(StoreError, match=r"cannot be searched.*or subject_in_file_name: true"):
        store.find(PERSON_SUBJECT)
