"""FreePBX call recordings: siblings deleted together, and `cdr.recordingfile` cleared after them.
3CX recordings: the files store sweeping what no `recordings.recording_url` row names.

Real recording trees (`YYYY/MM/DD/<type>-<dest>-<from>-YYYYMMDD-HHMMSS-<uniqueid>.wav`, some with
the `.mp3` a MIXMON_POST script made beside them) and real cdr tables on MariaDB, PostgreSQL and
SQLite. Every test looks at what a user would: which files are left, what the cdr rows say.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pbxdata import PbxDatabase, cdr_rows, sqlite_cdr_rows
from sqlalchemy import Engine, event, text
from structlog.testing import capture_logs

from retentiond.config.model import ConnectionConfig, FilesStoreConfig, ReferencesConfig
from retentiond.errors import StoreAbsent, StoreError
from retentiond.policy.rules import NO_HOLDS, Holds, HoldScope
from retentiond.stores.files.references import reference_days
from retentiond.stores.files.store import FilesStore

UTC_ZONE = ZoneInfo("UTC")
CUTOFF = datetime(2026, 5, 14, 12, 0, tzinfo=UTC)
RECENTLY = datetime(2026, 5, 20, 14, 15, tzinfo=UTC)
LONG_AGO = datetime(2026, 4, 1, 8, 0, tzinfo=UTC)
AUDIO = b"RIFF$\x00\x00\x00WAVEfmt " + bytes(32)  # 44 bytes, the smallest file FreePBX lists

URL_FIXTURES = {"mariadb": "mariadb_url", "postgresql": "postgres_url", "sqlite": "sqlite_url"}
ALL_BACKENDS = [
    pytest.param("mariadb", marks=pytest.mark.mariadb),
    pytest.param("postgresql", marks=pytest.mark.postgres),
    "sqlite",
]
SERVER_BACKENDS = ALL_BACKENDS[:2]

# Fragments of the recordings' personal data that must never leave the store.
PHONE = "017612345678"
UNIQUEID = "1775124900.11"


def recording(kind: str, dest: str, caller: str, moment: datetime, uniqueid: str) -> str:
    """Where FreePBX's sub-record-check puts a recording, without the extension."""
    stamp = moment.strftime("%Y%m%d-%H%M%S")
    return f"{moment:%Y/%m/%d}/{kind}-{dest}-{caller}-{stamp}-{uniqueid}"


def base(stem: str, extension: str) -> str:
    """What cdr.recordingfile holds: the base name only."""
    return Path(stem).name + extension


# Expired: a .wav whose row still names it although an .mp3 was made beside it.
CONVERTED_KEEPS_WAV = recording("out", PHONE, "201", datetime(2026, 4, 2, 10, 15), UNIQUEID)
# Expired: a .wav and its .mp3, the row renamed to the .mp3 by MIXMON_POST.
CONVERTED_TO_MP3 = recording(
    "in", "201", "+4930555123", datetime(2026, 4, 3, 9, 0), "1775206800.12"
)
# Expired: one file named by two rows (both legs of a call).
TWO_LEGS = recording("out", "0891234567", "202", datetime(2026, 4, 3, 16, 40), "1775234400.13")
# Expired: no row names it (the CDR was reset by a transfer, or never written).
ORPHAN = recording("in", "203", "015112345678", datetime(2026, 4, 4, 11, 5), "1775300700.14")
# Young: a pair named by its .mp3, and a single .wav.
YOUNG_PAIR = recording("in", "201", "017098765432", datetime(2026, 5, 20, 8, 30), "1779265800.15")
YOUNG_WAV = recording("out", "069123456", "204", datetime(2026, 5, 21, 17, 0), "1779382800.16")


@dataclass
class Run:
    planned: list[int] = field(default_factory=list)
    deleted: int = 0
    references_cleared: int = 0


@pytest.fixture
def root(tmp_path: Path) -> Path:
    monitor = tmp_path / "monitor"
    monitor.mkdir()
    return monitor


@pytest.fixture
def database(
    request: pytest.FixtureRequest, pbx_database: Callable[[str], PbxDatabase]
) -> PbxDatabase:
    """A cdr table in the backend the test is parametrized with."""
    database = pbx_database(request.getfixturevalue(URL_FIXTURES[request.param]))
    database.create("cdr")
    if database.dialect == "sqlite":
        # cdr_sqlite3_custom writes the columns its config lists; FreePBX setups add this one.
        database.execute("ALTER TABLE cdr ADD COLUMN recordingfile TEXT NOT NULL DEFAULT ''")
    return database


StoreFactory = Callable[..., FilesStore]


@pytest.fixture
def open_store() -> Iterator[StoreFactory]:
    opened: list[FilesStore] = []

    def make(
        root: Path,
        url: str | None = None,
        *,
        age_from: str = "path_date",
        match: tuple[str, ...] = ("**/*.wav", "**/*.mp3"),
        group_siblings: bool = True,
        batch_size: int = 500,
        table: str = "cdr",
        column: str = "recordingfile",
        lock_timeout: float = 5.0,
        retries: int = 2,
        named_by: str | None = None,
        named_by_table: str = "recordings",
        named_by_column: str = "recording_url",
    ) -> FilesStore:
        references = (
            ReferencesConfig(connection="cdrdb", table=table, column=column) if url else None
        )
        config = FilesStoreConfig(
            type="files",
            root=root,
            match=list(match),
            age_from=age_from,  # type: ignore[arg-type]
            batch_size=batch_size,
            group_siblings=group_siblings,
            references=references,
            named_by=(
                ReferencesConfig(connection="3cx", table=named_by_table, column=named_by_column)
                if named_by
                else None
            ),
        )
        connection = (
            ConnectionConfig(url=url, lock_timeout=lock_timeout, retries=retries) if url else None
        )
        store = FilesStore(
            config,
            UTC_ZONE,
            connection,
            named_by_connection=ConnectionConfig(url=named_by, retries=retries)
            if named_by
            else None,
        )
        opened.append(store)
        store.open()
        return store

    yield make
    for store in opened:
        store.close()


def put(root: Path, relative: str | bytes, *, mtime: datetime = RECENTLY) -> Path:
    path = root / (os.fsdecode(relative) if isinstance(relative, bytes) else relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(AUDIO)
    ns = (mtime - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
    os.utime(path, ns=(ns, ns))
    return path


def freepbx_tree(root: Path) -> None:
    for stem in (CONVERTED_KEEPS_WAV, CONVERTED_TO_MP3, YOUNG_PAIR):
        put(root, stem + ".wav")
        put(root, stem + ".mp3")
    for stem in (TWO_LEGS, ORPHAN, YOUNG_WAV):
        put(root, stem + ".wav")


FREEPBX_REFERENCES = [
    base(CONVERTED_KEEPS_WAV, ".wav"),
    base(CONVERTED_TO_MP3, ".mp3"),
    base(TWO_LEGS, ".wav"),
    base(TWO_LEGS, ".wav"),
    base(YOUNG_PAIR, ".mp3"),
    base(YOUNG_WAV, ".wav"),
    "",  # an unanswered call
]


def insert_calls(database: PbxDatabase, references: list[str]) -> None:
    """One FreePBX cdr row per reference (cdr_sqlite3_custom rows on SQLite), all from April."""
    calldates = [datetime(2026, 4, 2, 10, 0) + timedelta(hours=i) for i in range(len(references))]
    rows = sqlite_cdr_rows(calldates) if database.dialect == "sqlite" else cdr_rows(calldates)
    for row, reference in zip(rows, references, strict=True):
        row["recordingfile"] = reference
    database.insert("cdr", rows)


def references_in(database: PbxDatabase) -> list[str]:
    with database.engine.connect() as connection:
        values = connection.execute(text("SELECT recordingfile FROM cdr")).scalars()
        return sorted(str(value) for value in values)


def enforce(store: FilesStore, cutoff: datetime = CUTOFF, holds: Holds = NO_HOLDS) -> Run:
    """What the engine does: plan a batch, apply it, plan the next."""
    run = Run()
    for batch in store.batches(cutoff, holds):
        run.planned.append(batch.planned)
        result = store.apply(batch, cutoff)
        run.deleted += result.deleted
        run.references_cleared += result.counts.get("references_cleared", 0)
    return run


def exists(root: Path, stem: str, extension: str) -> bool:
    return (root / (stem + extension)).exists()


# -- siblings ------------------------------------------------------------------------------------


def test_expired_recordings_go_with_all_their_siblings_and_young_ones_stay(
    root: Path, open_store: StoreFactory
) -> None:
    freepbx_tree(root)
    store = open_store(root)

    survey = store.survey(CUTOFF)
    run = enforce(store)

    assert (survey.total, survey.expired) == (9, 6)  # files, not recordings
    assert run.deleted == 6
    for stem in (CONVERTED_KEEPS_WAV, CONVERTED_TO_MP3, TWO_LEGS, ORPHAN):
        assert not exists(root, stem, ".wav")
        assert not exists(root, stem, ".mp3")
    assert exists(root, YOUNG_PAIR, ".wav") and exists(root, YOUNG_PAIR, ".mp3")
    assert exists(root, YOUNG_WAV, ".wav")
    assert sorted(p.name for p in (root / "2026").iterdir()) == ["05"]  # emptied days removed
    assert store.survey(CUTOFF).expired == 0


def test_recording_is_kept_while_any_of_its_files_is_young(
    root: Path, open_store: StoreFactory
) -> None:
    # Aged by mtime, a .wav can be old while the .mp3 made of it later is young.
    wav = put(root, CONVERTED_KEEPS_WAV + ".wav", mtime=LONG_AGO)
    mp3 = put(root, CONVERTED_KEEPS_WAV + ".mp3", mtime=RECENTLY)
    store = open_store(root, age_from="mtime")

    survey = store.survey(CUTOFF)

    assert (survey.total, survey.expired, survey.oldest) == (2, 0, RECENTLY)
    assert enforce(store).planned == []
    assert wav.exists() and mp3.exists()
    # Without grouping, each file goes by its own age.
    assert enforce(open_store(root, age_from="mtime", group_siblings=False)).deleted == 1
    assert not wav.exists() and mp3.exists()


def test_files_the_patterns_do_not_select_are_no_part_of_a_recording(
    root: Path, open_store: StoreFactory
) -> None:
    wav = put(root, CONVERTED_KEEPS_WAV + ".wav", mtime=LONG_AGO)
    notes = put(root, CONVERTED_KEEPS_WAV + ".txt", mtime=RECENTLY)
    store = open_store(root, age_from="mtime", match=("**/*.wav",))

    assert (store.survey(CUTOFF).total, enforce(store).deleted) == (1, 1)
    assert not wav.exists()
    assert notes.exists()


def test_a_recording_is_never_split_across_batches(root: Path, open_store: StoreFactory) -> None:
    freepbx_tree(root)
    store = open_store(root, batch_size=1)
    batches = store.batches(CUTOFF)

    first = next(batches)
    result = store.apply(first, CUTOFF)

    # Walk order: 2026/04/02 first, a .wav and its .mp3 in one batch over batch_size.
    assert (first.planned, result.deleted) == (2, 2)
    assert not exists(root, CONVERTED_KEEPS_WAV, ".wav")
    assert not exists(root, CONVERTED_KEEPS_WAV, ".mp3")
    assert exists(root, CONVERTED_TO_MP3, ".wav") and exists(root, CONVERTED_TO_MP3, ".mp3")
    rest = [(batch.planned, store.apply(batch, CUTOFF).deleted) for batch in batches]
    assert sorted(rest) == [(1, 1), (1, 1), (2, 2)]


def test_siblings_stay_together_when_other_names_sort_between_them(
    root: Path, open_store: StoreFactory
) -> None:
    # In name order `x.n.wav` and the folder `x.sub` come between `x.mp3` and `x.wav`.
    day = root / "2026/04/02"
    for name in ("x.mp3", "x.wav", "x.n.wav", "x.sub/y.wav"):
        put(root, f"2026/04/02/{name}")
    store = open_store(root, batch_size=1)

    planned = []
    for batch in store.batches(CUTOFF):
        planned.append(batch.planned)
        store.apply(batch, CUTOFF)
        assert (day / "x.mp3").exists() == (day / "x.wav").exists()

    assert sorted(planned) == [1, 1, 2]
    assert not [path for path in day.rglob("*") if path.is_file()]


def test_sibling_changed_after_planning_keeps_the_whole_recording(
    root: Path, open_store: StoreFactory
) -> None:
    wav = put(root, CONVERTED_KEEPS_WAV + ".wav")
    mp3 = put(root, CONVERTED_KEEPS_WAV + ".mp3")
    store = open_store(root)
    batch = next(iter(store.batches(CUTOFF)))

    with mp3.open("ab") as handle:  # the conversion is still writing it
        handle.write(b"\x00" * 16)
    result = store.apply(batch, CUTOFF)

    assert (result.deleted, result.skipped) == (0, {"changed": 2})
    assert wav.exists() and mp3.exists()


# -- references ----------------------------------------------------------------------------------


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_references_to_deleted_recordings_are_cleared_and_the_rows_stay(
    root: Path, database: PbxDatabase, open_store: StoreFactory
) -> None:
    freepbx_tree(root)
    insert_calls(database, FREEPBX_REFERENCES)
    store = open_store(root, database.url)

    with capture_logs() as logs:
        run = enforce(store)

    assert run.deleted == 6
    assert database.count("cdr") == len(FREEPBX_REFERENCES)  # cdr has its own, longer keep
    assert references_in(database) == sorted(
        ["", "", "", "", "", base(YOUNG_PAIR, ".mp3"), base(YOUNG_WAV, ".wav")]
    )
    assert run.references_cleared == 4  # two rows name the same file
    cleared = [entry for entry in logs if entry["event"] == "references cleared"]
    assert sum(entry["count"] for entry in cleared) == 4
    assert PHONE not in repr(logs) and UNIQUEID not in repr(logs)


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_a_young_call_naming_a_deleted_files_base_name_keeps_its_reference(
    root: Path, database: PbxDatabase, open_store: StoreFactory
) -> None:
    """Only the rows the deleted files belonged to lose their reference: a copy of a young
    recording that landed in an old date folder is deleted with that folder's day, but the
    young call's row names its own file (FreePBX looks in the folder of the name's date, where
    it still is), so its reference stays."""
    young = recording("in", "201", PHONE, datetime(2026, 5, 20, 8, 30), "1779265800.21")
    put(root, young + ".wav")
    copy = put(root, "2026/04/02/" + base(young, ".wav"))
    old = recording("out", "0891234567", "202", datetime(2026, 4, 2, 16, 40), "1775234400.22")
    put(root, old + ".wav")
    insert_calls(database, [base(young, ".wav"), base(old, ".wav")])
    store = open_store(root, database.url)

    run = enforce(store)

    assert not copy.exists() and not exists(root, old, ".wav")
    assert run.deleted == 2 and exists(root, young, ".wav")
    assert references_in(database) == ["", base(young, ".wav")]
    assert run.references_cleared == 1


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_orphan_recordings_without_a_call_record_are_swept_by_date(
    root: Path, database: PbxDatabase, open_store: StoreFactory
) -> None:
    orphan = put(root, ORPHAN + ".wav")
    undecodable = put(root, b"2026/04/04/in-203-\xff\xfe-20260404-110500-1775300700.15.wav")
    young = put(root, YOUNG_WAV + ".wav")
    insert_calls(database, [base(YOUNG_WAV, ".wav")])
    store = open_store(root, database.url)

    assert enforce(store).deleted == 2
    assert not orphan.exists() and not undecodable.exists()
    assert young.exists()
    assert references_in(database) == [base(YOUNG_WAV, ".wav")]


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_sweep_clears_old_references_whose_file_is_gone_and_leaves_the_others(
    root: Path, database: PbxDatabase, open_store: StoreFactory
) -> None:
    gone_old = recording("out", PHONE, "201", datetime(2026, 4, 1, 9, 0), "1775034000.20")
    # Its day is not over at the cutoff: the file may still be being recorded.
    gone_cutoff_day = recording("in", "201", PHONE, datetime(2026, 5, 14, 9, 0), "1778749200.21")
    gone_young = recording("in", "202", PHONE, datetime(2026, 5, 20, 9, 0), "1779267600.22")
    # Only a sibling the store does not select is left: the call still has a recording.
    converted = recording("out", PHONE, "203", datetime(2026, 4, 1, 10, 0), "1775037600.23")
    put(root, converted + ".gsm")
    flat = "ondemand-201-202-20260401-110000-1775041200.24.wav"  # filed directly in the root
    put(root, flat)  # undated by its folder, so it stays, and so does its reference
    put(root, ORPHAN + ".wav")  # something expired, so the run has a batch
    kept = [
        base(gone_cutoff_day, ".wav"),
        base(gone_young, ".wav"),
        base(converted, ".wav"),
        flat,
        "2026/04/01/" + base(gone_old, ".wav"),  # a path, not a base name FreePBX writes
        "recording-without-date.wav",
        base(gone_old, ".gsm"),  # a format the store does not select: not its business
    ]
    insert_calls(database, [base(gone_old, ".wav"), base(gone_old, ".wav"), *kept])
    store = open_store(root, database.url, match=("**/*.wav",))

    run = enforce(store)

    assert (run.deleted, run.references_cleared) == (1, 2)
    assert references_in(database) == sorted(["", "", *kept])


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_sweep_leaves_a_held_reference_whose_file_is_gone(
    root: Path, database: PbxDatabase, open_store: StoreFactory
) -> None:
    held = recording("out", PHONE, "201", datetime(2026, 4, 1, 9, 0), "1775034000.30")
    free = recording("out", PHONE, "202", datetime(2026, 4, 3, 9, 0), "1775206800.31")
    put(root, ORPHAN + ".wav")  # something expired, so the run has a batch
    insert_calls(database, [base(held, ".wav"), base(free, ".wav")])
    store = open_store(root, database.url)
    # A hold on the 1st of April (from the start of that day to the start of the next)
    hold = HoldScope("HOLD-1", datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 4, 2, tzinfo=UTC))

    run = enforce(store, holds=Holds((hold,)))

    assert (run.deleted, run.references_cleared) == (1, 1)
    assert references_in(database) == sorted(["", base(held, ".wav")])


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_planning_leaves_the_references_alone(
    root: Path, database: PbxDatabase, open_store: StoreFactory
) -> None:
    put(root, ORPHAN + ".wav")
    gone = base(CONVERTED_KEEPS_WAV, ".wav")
    insert_calls(database, [gone])
    store = open_store(root, database.url)

    store.survey(CUTOFF)
    # The run's last batch sweeps dangling references; planning it clears nothing.
    assert [batch.planned for batch in store.batches(CUTOFF)] == [1, 0]

    assert references_in(database) == [gone]
    assert exists(root, ORPHAN, ".wav")


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_reference_differing_only_in_case_or_spaces_is_left(
    root: Path, database: PbxDatabase, open_store: StoreFactory
) -> None:
    # MariaDB compares utf8mb4 case-insensitively and ignores trailing spaces; a file is not.
    put(root, CONVERTED_KEEPS_WAV + ".wav")
    upper = put(root, CONVERTED_KEEPS_WAV + ".WAV")
    other = [base(CONVERTED_KEEPS_WAV, ".WAV"), base(CONVERTED_KEEPS_WAV, ".wav") + " "]
    insert_calls(database, [base(CONVERTED_KEEPS_WAV, ".wav"), *other])
    store = open_store(root, database.url, match=("**/*.wav",), group_siblings=False)

    assert enforce(store).deleted == 1

    assert upper.exists()
    assert references_in(database) == sorted(["", *other])


@pytest.mark.parametrize("database", SERVER_BACKENDS, indirect=True)
def test_locked_reference_stops_the_run_after_its_files_and_the_next_run_clears_it(
    root: Path, database: PbxDatabase, open_store: StoreFactory
) -> None:
    freepbx_tree(root)
    insert_calls(database, FREEPBX_REFERENCES)
    locked = base(CONVERTED_KEEPS_WAV, ".wav")
    store = open_store(root, database.url, batch_size=2, lock_timeout=1, retries=1)

    with database.engine.connect() as pbx, capture_logs() as logs:
        # The PBX (or a report) holds the row of the first batch's recording.
        pbx.execute(
            text("SELECT recordingfile FROM cdr WHERE recordingfile = :name FOR UPDATE"),
            {"name": locked},
        )
        batches = store.batches(CUTOFF)
        first = next(batches)
        with pytest.raises(StoreError) as failure:
            store.apply(first, CUTOFF)
        pbx.rollback()

    message = str(failure.value)
    assert "this batch deleted 2 files" in message
    assert "could not be cleared" in message and "next run" in message
    assert "lock wait timeout exceeded 2 times" in message
    assert PHONE not in message + repr(logs) and UNIQUEID not in message + repr(logs)
    assert [entry["event"] for entry in logs].count("references retrying") == 1
    assert not exists(root, CONVERTED_KEEPS_WAV, ".wav")
    assert not exists(root, CONVERTED_KEEPS_WAV, ".mp3")
    assert references_in(database).count(locked) == 1  # left behind

    next_run = enforce(open_store(root, database.url))

    assert (next_run.deleted, next_run.references_cleared) == (4, 4)  # 3 of its own, 1 left over
    assert database.count("cdr") == len(FREEPBX_REFERENCES)
    assert references_in(database) == sorted(
        ["", "", "", "", "", base(YOUNG_PAIR, ".mp3"), base(YOUNG_WAV, ".wav")]
    )


# A database that refuses the update for a reason no retry fixes (a constraint, a trigger).
REFUSE_UPDATE = {
    "mariadb": "ALTER TABLE cdr ADD CONSTRAINT recording_kept CHECK (recordingfile <> '')",
    "postgresql": (
        "ALTER TABLE cdr ADD CONSTRAINT recording_kept CHECK (recordingfile <> '') NOT VALID"
    ),
    "sqlite": (
        "CREATE TRIGGER recording_kept BEFORE UPDATE ON cdr "
        "BEGIN SELECT RAISE(ABORT, 'recordings are kept'); END"
    ),
}


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_refused_reference_update_is_reported_without_the_recording_name(
    root: Path, database: PbxDatabase, open_store: StoreFactory
) -> None:
    put(root, CONVERTED_KEEPS_WAV + ".wav")
    insert_calls(database, [base(CONVERTED_KEEPS_WAV, ".wav")])
    database.execute(REFUSE_UPDATE[database.dialect])
    store = open_store(root, database.url)

    with capture_logs() as logs, pytest.raises(StoreError) as failure:
        enforce(store)

    message = str(failure.value)
    assert "this batch deleted 1 file, but references" in message
    assert "clearing references failed" in message
    assert PHONE not in message and UNIQUEID not in message
    assert not any(entry["event"] == "references retrying" for entry in logs)
    assert not exists(root, CONVERTED_KEEPS_WAV, ".wav")
    assert references_in(database) == [base(CONVERTED_KEEPS_WAV, ".wav")]


def test_missing_references_column_is_named(
    root: Path,
    sqlite_url: str,
    pbx_database: Callable[[str], PbxDatabase],
    open_store: StoreFactory,
) -> None:
    # Asterisk's cdr_sqlite3_custom table as it comes: no recordingfile column.
    pbx_database(sqlite_url).create("cdr")

    with pytest.raises(StoreError, match="column recordingfile does not exist in table cdr"):
        open_store(root, sqlite_url)
    with pytest.raises(StoreError, match="table recordings does not exist"):
        open_store(root, sqlite_url, table="recordings")


@pytest.mark.parametrize("database", SERVER_BACKENDS, indirect=True)
def test_column_named_in_another_case_is_found(
    root: Path, database: PbxDatabase, open_store: StoreFactory
) -> None:
    put(root, ORPHAN + ".wav")
    insert_calls(database, [base(ORPHAN, ".wav")])
    store = open_store(root, database.url, column="RecordingFile")

    assert enforce(store).deleted == 1
    assert references_in(database) == [""]


def test_missing_reference_database_is_an_error_not_an_absent_store(
    root: Path, tmp_path: Path, open_store: StoreFactory
) -> None:
    missing = f"sqlite:///{tmp_path / 'nowhere.db'}"

    with pytest.raises(StoreError, match="does not exist") as failure:
        open_store(root, missing)

    assert type(failure.value) is StoreError
    assert not (tmp_path / "nowhere.db").exists()


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_describe_names_grouping_references_and_database(
    root: Path, database: PbxDatabase, open_store: StoreFactory
) -> None:
    store = open_store(root, database.url)

    lines = "\n".join(store.describe())

    assert "group_siblings" in lines
    assert "cdr.recordingfile of connection cdrdb" in lines
    server = {"mariadb": "MariaDB", "postgresql": "PostgreSQL", "sqlite": "SQLite"}
    assert server[database.dialect] in lines
    # FreePBX indexes recordingfile on MariaDB; Asterisk's PostgreSQL and SQLite tables do not.
    assert ("warning: no index on cdr.recordingfile" in lines) == (database.dialect != "mariadb")


# -- named_by: files a rows store owns ----------------------------------------------------------

# 3CX keeps `Recordings/<extension>/[<name>]_<extension>-<number>_<YYYYMMDDhhmmss>(<id>).wav` and
# a `recordings` row naming each by that path. Rows older than the keep go with their file through
# the rows store; the files store sweeps only what no row names (a restore brought it back, say).
NAMED_EXPIRED = f"1001/[Erika Müller]_1001-{PHONE}_20260402101500(1).wav"  # the row's store's
NAMED_YOUNG = "1002/[Max Mustermann]_1002-+4930555123_20260520083000(2).wav"
ORPHAN_EXPIRED = "1001/[Erika Müller]_1001-015112345678_20260404110500(3).wav"
# Rows name it only loosely (case, a trailing space): the rows' store would not find it either.
ORPHAN_LOOSELY_NAMED = "1002/[Max Mustermann]_1002-0891234567_20260403164000(4).wav"
# A row names it by its base name, not its path below the root.
ORPHAN_BASE_NAMED = "1003/[Lena Schmidt]_1003-069123456_20260405120000(5).wav"
ORPHAN_YOUNG = "1003/[Lena Schmidt]_1003-017098765432_20260521170000(6).wav"
# A caller name in Latin-1: no row can name it, since rows hold text.
ORPHAN_NOT_UTF8 = b"1001/[M\xfcller]_1001-015112345679_20260406090000(7).wav"

THREECX_ROWS = [
    NAMED_EXPIRED,
    NAMED_YOUNG,
    NAMED_YOUNG,  # two rows (legs of one call) may name one file
    ORPHAN_LOOSELY_NAMED.replace(".wav", ".WAV"),
    ORPHAN_LOOSELY_NAMED + " ",
    Path(ORPHAN_BASE_NAMED).name,
    "",  # a call without a recording
    None,
]

THREECX_PERSONAL = [PHONE, "Müller", "Mustermann", "Schmidt", "015112345678", "069123456"]


@pytest.fixture
def rows_database(
    request: pytest.FixtureRequest, pbx_database: Callable[[str], PbxDatabase]
) -> PbxDatabase:
    """3CX's `recordings` table, reduced to its key and the path, in the backend of the test."""
    database = pbx_database(request.getfixturevalue(URL_FIXTURES[request.param]))
    database.execute(
        "CREATE TABLE recordings (id_recording integer PRIMARY KEY, recording_url varchar(511))"
    )
    return database


def name_files(database: PbxDatabase, paths: list[str | None]) -> None:
    """One `recordings` row per path."""
    start = database.count("recordings") + 1
    rows = [{"id_recording": start + i, "recording_url": p} for i, p in enumerate(paths)]
    database.insert("recordings", rows)


def threecx_tree(root: Path) -> None:
    for relative in (
        NAMED_EXPIRED,
        NAMED_YOUNG,
        ORPHAN_EXPIRED,
        ORPHAN_LOOSELY_NAMED,
        ORPHAN_BASE_NAMED,
        ORPHAN_YOUNG,
        ORPHAN_NOT_UTF8,
    ):
        put(root, relative)


def open_sweeper(
    open_store: StoreFactory, root: Path, database: PbxDatabase, **options: object
) -> FilesStore:
    """The 3CX preset's files store over Recordings, left to sweep what no row names."""
    settings: dict[str, object] = {
        "age_from": "filename_date",
        "match": ("**/*.wav", "**/*.mp3"),
        "group_siblings": False,
        "named_by": database.url,
    }
    return open_store(root, **(settings | options))


def files_left(root: Path) -> set[bytes]:
    return {os.fsencode(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("rows_database", ALL_BACKENDS, indirect=True)
def test_files_a_row_names_are_neither_counted_nor_deleted_and_orphans_are_swept(
    root: Path, rows_database: PbxDatabase, open_store: StoreFactory
) -> None:
    threecx_tree(root)
    name_files(rows_database, THREECX_ROWS)
    store = open_sweeper(open_store, root, rows_database)

    with capture_logs() as logs:
        survey = store.survey(CUTOFF)
        batches = list(store.batches(CUTOFF))
        results = [store.apply(batch, CUTOFF) for batch in batches]

    # Only the orphans are this store's: four expired, one young.
    assert (survey.total, survey.expired) == (5, 4)
    assert survey.expired_bytes == 4 * len(AUDIO)
    assert survey.oldest is not None and survey.oldest.date().isoformat() == "2026-04-03"
    assert survey.skipped == {"named_by_row": 2}
    assert [batch.planned for batch in batches] == [4]
    assert [(r.deleted, dict(r.skipped)) for r in results] == [(4, {})]
    assert files_left(root) == {os.fsencode(NAMED_EXPIRED), os.fsencode(NAMED_YOUNG)} | {
        os.fsencode(ORPHAN_YOUNG)
    }
    assert rows_database.count("recordings") == len(THREECX_ROWS)  # rows are read, never written
    after = store.survey(CUTOFF)
    assert (after.total, after.expired, after.skipped) == (1, 0, {"named_by_row": 2})
    for value in THREECX_PERSONAL:
        assert value not in repr(logs) + repr(batches) + repr(results) + repr(survey)


@pytest.mark.parametrize("rows_database", ALL_BACKENDS, indirect=True)
def test_a_row_written_after_the_plan_keeps_the_file_it_names(
    root: Path, rows_database: PbxDatabase, open_store: StoreFactory
) -> None:
    threecx_tree(root)
    name_files(rows_database, THREECX_ROWS)
    store = open_sweeper(open_store, root, rows_database)
    batch = next(iter(store.batches(CUTOFF)))

    # 3CX re-imports an archived recording: its row names the file again.
    name_files(rows_database, [ORPHAN_EXPIRED])
    result = store.apply(batch, CUTOFF)

    assert (batch.planned, result.deleted, result.skipped) == (4, 3, {"named_by_row": 1})
    assert (root / ORPHAN_EXPIRED).exists()
    assert not (root / ORPHAN_LOOSELY_NAMED).exists()


@pytest.mark.parametrize("rows_database", ALL_BACKENDS, indirect=True)
def test_a_failed_check_before_deleting_deletes_nothing_and_names_no_file(
    root: Path, rows_database: PbxDatabase, open_store: StoreFactory
) -> None:
    threecx_tree(root)
    name_files(rows_database, THREECX_ROWS)
    store = open_sweeper(open_store, root, rows_database, retries=0)
    batch = next(iter(store.batches(CUTOFF)))

    rows_database.execute("DROP TABLE recordings")
    with pytest.raises(StoreError) as failure:
        store.apply(batch, CUTOFF)

    message = str(failure.value)
    assert "recordings.recording_url of connection 3cx" in message
    assert "nothing of this batch was deleted" in message
    assert not any(value in message for value in THREECX_PERSONAL)
    assert len(files_left(root)) == 7


@pytest.mark.parametrize("rows_database", ALL_BACKENDS, indirect=True)
def test_siblings_stay_together_when_a_row_names_one_of_them(
    root: Path, rows_database: PbxDatabase, open_store: StoreFactory
) -> None:
    stem = ORPHAN_EXPIRED.removesuffix(".wav")
    put(root, stem + ".wav")
    put(root, stem + ".mp3")
    put(root, ORPHAN_LOOSELY_NAMED)
    name_files(rows_database, [stem + ".mp3"])
    store = open_sweeper(open_store, root, rows_database, group_siblings=True)

    survey = store.survey(CUTOFF)
    run = enforce(store)

    assert (survey.total, survey.expired, survey.skipped) == (1, 1, {"named_by_row": 2})
    assert run.deleted == 1
    assert (root / (stem + ".wav")).exists() and (root / (stem + ".mp3")).exists()


@pytest.mark.parametrize("rows_database", SERVER_BACKENDS[:1], indirect=True)
def test_a_latin1_column_names_a_file_with_umlauts(
    root: Path, rows_database: PbxDatabase, open_store: StoreFactory
) -> None:
    # A binary comparison would compare latin1 bytes with UTF-8 ones and miss the row.
    rows_database.execute(
        "ALTER TABLE recordings MODIFY recording_url varchar(511) CHARACTER SET latin1"
    )
    put(root, NAMED_EXPIRED)
    name_files(rows_database, [NAMED_EXPIRED])
    store = open_sweeper(open_store, root, rows_database)

    assert store.survey(CUTOFF).skipped == {"named_by_row": 1}
    assert enforce(store).deleted == 0
    assert (root / NAMED_EXPIRED).exists()


def test_rows_are_asked_about_many_files_at_a_time(
    root: Path,
    sqlite_url: str,
    pbx_database: Callable[[str], PbxDatabase],
    open_store: StoreFactory,
) -> None:
    database = pbx_database(sqlite_url)
    database.execute(
        "CREATE TABLE recordings (id_recording integer PRIMARY KEY, recording_url varchar(511))"
    )
    paths = [f"1001/[Erika]_1001-0151{n:05}_20260402101500({n}).wav" for n in range(1200)]
    for path in paths:
        put(root, path)
    name_files(database, paths[::3])  # every third file is a row's
    store = open_sweeper(open_store, root, database, batch_size=300)
    statements: list[str] = []

    def record(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(Engine, "before_cursor_execute", record)
    try:
        survey = store.survey(CUTOFF)
        surveyed = len(statements)
        run = enforce(store)
    finally:
        event.remove(Engine, "before_cursor_execute", record)

    assert (survey.total, survey.skipped) == (800, {"named_by_row": 400})
    assert run.deleted == 800 and run.planned == [300, 300, 200]
    assert len(files_left(root)) == 400
    assert surveyed == 3  # 1200 files, 500 at a time
    # Planning asks about 500 expired files at a time; each batch asks again about its own.
    assert len(statements) == 3 + 3 + 3
    assert all("recording_url IN" in statement for statement in statements)


@pytest.mark.parametrize("rows_database", ALL_BACKENDS, indirect=True)
def test_a_missing_named_by_table_makes_the_store_absent_and_a_missing_column_is_named(
    root: Path, rows_database: PbxDatabase, open_store: StoreFactory
) -> None:
    with pytest.raises(StoreAbsent, match="named_by: table s_voicemail does not exist"):
        open_sweeper(open_store, root, rows_database, named_by_table="s_voicemail")
    with pytest.raises(StoreError) as failure:
        open_sweeper(open_store, root, rows_database, named_by_column="wav_file")

    assert type(failure.value) is StoreError
    assert "column wav_file does not exist in table recordings" in str(failure.value)
    assert "named_by.column" in str(failure.value)


@pytest.mark.parametrize("rows_database", ALL_BACKENDS, indirect=True)
def test_describe_says_which_rows_own_files(
    root: Path, rows_database: PbxDatabase, open_store: StoreFactory
) -> None:
    store = open_sweeper(open_store, root, rows_database)

    lines = "\n".join(store.describe())

    assert "named_by: recordings.recording_url of connection 3cx" in lines
    assert "named_by_row" in lines
    assert "warning: no index on recordings.recording_url" in lines
    rows_database.execute("CREATE INDEX recordings_url ON recordings (recording_url)")
    store.open()
    assert "warning" not in "\n".join(store.describe())


def test_a_named_by_connection_missing_from_the_config_is_an_error(
    root: Path, sqlite_url: str
) -> None:
    config = FilesStoreConfig(
        type="files",
        root=root,
        named_by=ReferencesConfig(connection="3cx", table="recordings", column="recording_url"),
    )
    store = FilesStore(config, UTC_ZONE)

    with pytest.raises(StoreError, match=r"named_by.connection 3cx is not defined"):
        store.open()
    store.close()


@pytest.mark.parametrize(
    ("name", "days"),
    [
        (b"out-017612345678-201-20260402-101500-1775124900.11.wav", ["2026-04-02"]),
        (b"q-600-+49-30-555-20260402-101500-1.wav", ["2026-04-02"]),  # a `-` in the caller
        (b"ondemand-201-202-20260230-101500-1.wav", []),
        (b"recording.wav", []),
    ],
)
def test_reference_days_follow_freepbx(name: bytes, days: list[str]) -> None:
    assert [day.isoformat() for day in reference_days(name)] == days
