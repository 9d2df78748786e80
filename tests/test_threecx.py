"""3CX call history against a real PostgreSQL, and 3CX recordings rows whose files go with them.

The tables are 3CX's own (tests/threecx_schema.py): the cl_* generation with and without foreign
keys, cdroutput with cdrbilling, and the recordings table. Every test compares what is in the
tables (and in the recordings folder) before and after, as a 3CX administrator would see it.
The cutoff is 2024-03-01 12:00 UTC.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pbxdata import PbxDatabase
from sqlalchemy import text
from structlog.testing import capture_logs
from threecx_schema import (
    CL_DEPENDENTS,
    RECORDINGS,
    S_VOICEMAIL,
    cdrbilling_rows,
    cdroutput_rows,
    cl_history,
    create_cdroutput_schema,
    create_cl_schema,
    recording_rows,
)

from retentiond.errors import StoreAbsent, StoreError
from retentiond.stores.base import BatchResult, Store
from retentiond.stores.sql.store import SqlStore
from retentiond.stores.threecx.queries import key_array
from retentiond.stores.threecx.store import ThreeCxCallsStore

pytestmark = pytest.mark.postgres

BERLIN = ZoneInfo("Europe/Berlin")
CUTOFF = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)

StoreFactory = Callable[..., ThreeCxCallsStore]
Rows = set[tuple[tuple[str, Any], ...]]


@pytest.fixture
def database(postgres_url: str, pbx_database: Callable[[str], PbxDatabase]) -> PbxDatabase:
    """An empty PostgreSQL database, as 3CX's database_single before 3CX creates its tables."""
    return pbx_database(postgres_url)


@pytest.fixture
def open_store(open_3cx_store: StoreFactory) -> StoreFactory:
    """Open a ThreeCxCallsStore on a URL; every one opened is closed after the test."""

    def factory(
        url: str, *, batch_size: int = 500, lock_timeout: float = 5.0, retries: int = 5
    ) -> ThreeCxCallsStore:
        connection = {"lock_timeout": lock_timeout, "retries": retries}
        return open_3cx_store(url, batch_size=batch_size, connection_settings=connection)

    return factory


def purge(store: Store, cutoff: datetime = CUTOFF) -> list[BatchResult]:
    """What the engine does: plan a batch, apply it, plan the next."""
    return [store.apply(batch, cutoff) for batch in store.batches(cutoff)]


def before_cutoff(count: int, step_hours: float = 5.0) -> list[datetime]:
    return [CUTOFF - timedelta(hours=1 + step_hours * i) for i in range(count)]


def after_cutoff(count: int) -> list[datetime]:
    return [CUTOFF + timedelta(minutes=30 + 97 * i) for i in range(count)]


def shuffled(*groups: list[datetime]) -> list[datetime]:
    """The ids 3CX hands out follow the insert order, not the call time."""
    starts = [moment for group in groups for moment in group]
    random.Random(11).shuffle(starts)
    return starts


def table_rows(database: PbxDatabase, table: str) -> list[dict[str, Any]]:
    with database.engine.connect() as connection:
        return [dict(row) for row in connection.execute(text(f"SELECT * FROM {table}")).mappings()]


def as_set(rows: list[dict[str, Any]]) -> Rows:
    return {tuple(sorted(row.items())) for row in rows}


def column(database: PbxDatabase, table: str, name: str) -> set[Any]:
    return {row[name] for row in table_rows(database, table)}


# -- the cl_* generation (3CX v18, v20 before Update 6) -------------------------------------------


@pytest.mark.parametrize("foreign_keys", [False, True], ids=["as_3cx", "with_foreign_keys"])
def test_expired_calls_go_with_segments_quality_participants_and_unused_party_info(
    database: PbxDatabase, open_store: StoreFactory, foreign_keys: bool
) -> None:
    expired_starts = before_cutoff(40)
    starts = shuffled(expired_starts, after_cutoff(15))
    history = cl_history(starts)
    create_cl_schema(database, foreign_keys=foreign_keys)
    history.insert(database)
    before = {table: table_rows(database, table) for table in history.rows}
    expired = history.call_ids(starts_before=CUTOFF)
    young = history.call_ids() - expired
    parties_of_young = history.party_ids_of(young)
    parties_of_expired = history.party_ids_of(expired)
    assert parties_of_expired & parties_of_young, "some party rows serve old and young calls"
    assert parties_of_expired - parties_of_young, "some serve only expired calls"
    store = open_store(database.url, batch_size=7)

    survey = store.survey(CUTOFF)
    assert (survey.unit, survey.total, survey.expired) == ("calls", 55, 40)
    assert survey.oldest == min(expired_starts)
    results = purge(store)

    assert sum(result.deleted for result in results) == 40
    assert all(0 < result.deleted <= 7 for result in results)
    assert column(database, "cl_calls", "id") == young
    for table in (*CL_DEPENDENTS, "cl_calls"):
        key = "id" if table == "cl_calls" else "call_id"
        kept = [row for row in before[table] if row[key] in young]
        assert as_set(table_rows(database, table)) == as_set(kept), table
    assert column(database, "cl_party_info", "id") == parties_of_young
    kept_parties = [row for row in before["cl_party_info"] if row["id"] in parties_of_young]
    assert as_set(table_rows(database, "cl_party_info")) == as_set(kept_parties)
    spans = [result.span for result in results if result.span]
    assert min(span[0] for span in spans) == min(expired_starts).astimezone(BERLIN).date()
    assert max(span[1] for span in spans) == max(expired_starts).astimezone(BERLIN).date()
    assert store.survey(CUTOFF).expired == 0


def test_party_rows_with_text_keys_that_need_quoting_go_once_unused(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    """The party keys go back to the server in the text form of their array, as it wrote them:
    keys of any type, quoted as the server quotes them, meet their rows again."""
    starts = shuffled(before_cutoff(30), after_cutoff(10))
    history = cl_history(starts)
    create_cl_schema(database)
    history.insert(database)
    with database.engine.begin() as connection:
        for statement in (
            "ALTER TABLE cl_party_info ALTER COLUMN id DROP DEFAULT",
            """ALTER TABLE cl_party_info ALTER COLUMN id TYPE text USING 'party, "' || id""",
            """ALTER TABLE cl_participants ALTER COLUMN info_id TYPE text
               USING 'party, "' || info_id""",
        ):
            connection.execute(text(statement))
    expired = history.call_ids(starts_before=CUTOFF)
    young = history.call_ids() - expired
    parties_of_young = history.party_ids_of(young)
    assert history.party_ids_of(expired) - parties_of_young, "some serve only expired calls"
    store = open_store(database.url, batch_size=7)

    assert sum(result.deleted for result in purge(store)) == 30

    assert column(database, "cl_calls", "id") == young
    assert column(database, "cl_party_info", "id") == {
        f'party, "{party}' for party in parties_of_young
    }


def test_integer_keys_go_as_one_array_literal_and_any_others_as_a_list() -> None:
    assert key_array("keys", [3, 1, 2]) == ("CAST(:keys AS bigint[])", "{3,1,2}")
    assert key_array("ids", [-(2**63), 2**63 - 1]) == (
        "CAST(:ids AS bigint[])",
        f"{{{-(2**63)},{2**63 - 1}}}",
    )
    ids = [uuid.UUID(int=1), uuid.UUID(int=2)]
    for keys in ([], ids, ["1", "2"], [1, True], [1, 2**63], [1, 2.0]):
        assert key_array("keys", keys) == (":keys", list(keys)), keys


def test_no_batch_deletes_more_than_batch_size_calls(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    create_cl_schema(database)
    cl_history(shuffled(before_cutoff(25, step_hours=0.5), after_cutoff(4))).insert(database)
    store = open_store(database.url, batch_size=10)

    batches, results = [], []
    for batch in store.batches(CUTOFF):
        batches.append(batch)
        results.append(store.apply(batch, CUTOFF))

    assert [batch.planned for batch in batches] == [10, 10, 5]
    assert [batch.number for batch in batches] == [1, 2, 3]
    assert [result.deleted for result in results] == [10, 10, 5]
    assert database.count("cl_calls") == 4


def test_without_batch_size_batches_start_at_500_calls_and_adapt_in_bounded_steps(
    database: PbxDatabase, open_3cx_store: StoreFactory
) -> None:
    create_cl_schema(database)
    cl_history(shuffled(before_cutoff(1300, step_hours=0.01), after_cutoff(3))).insert(database)
    store = open_3cx_store(database.url)  # no batch_size: sized by how long each batch takes

    batches, results = [], []
    for batch in store.batches(CUTOFF):
        batches.append(batch)
        results.append(store.apply(batch, CUTOFF))

    sizes = [batch.planned for batch in batches]
    assert sizes[0] == 500
    assert sum(result.deleted for result in results) == sum(sizes) == 1300
    for before, after in pairwise(sizes[:-1]):  # the last batch takes what is left
        assert before * 0.5 <= after <= before * 1.5  # ADAPT_SHRINK, ADAPT_GROWTH
    assert database.count("cl_calls") == 3
    assert "then as many as one transaction deletes in about 0.5 s" in store.describe()[-1]


def test_planning_without_applying_deletes_nothing(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    create_cl_schema(database)
    history = cl_history(before_cutoff(12))
    history.insert(database)
    store = open_store(database.url, batch_size=5)

    planned = list(store.batches(CUTOFF))

    assert [batch.planned for batch in planned] == [5]
    for table, rows in history.rows.items():
        assert database.count(table) == len(rows), table


def test_call_that_began_before_the_cutoff_goes_whole_even_when_it_ended_after(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    create_cl_schema(database)
    history = cl_history([CUTOFF - timedelta(seconds=1), CUTOFF], seed=3)
    history.rows["cl_calls"][0]["end_time"] = CUTOFF + timedelta(minutes=20)
    history.insert(database)
    store = open_store(database.url)

    assert [result.deleted for result in purge(store)] == [1]

    assert column(database, "cl_calls", "id") == {2}
    assert column(database, "cl_participants", "call_id") == {2}
    assert column(database, "cl_segments", "call_id") == {2}


def test_locked_call_is_retried_then_the_run_stops_keeping_earlier_batches(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    create_cl_schema(database)
    history = cl_history(sorted(before_cutoff(30)) + after_cutoff(5))  # ids oldest first
    history.insert(database)
    locked_call = 15  # the fifteenth oldest: in the second batch of ten
    participants = database.count("cl_participants", "call_id = :c", c=locked_call)
    store = open_store(database.url, batch_size=10, lock_timeout=0.5, retries=2)

    with database.engine.connect() as pbx, capture_logs() as logs:
        pbx.execute(text("SELECT 1 FROM cl_calls WHERE id = :c FOR UPDATE"), {"c": locked_call})
        with pytest.raises(StoreError) as raised:
            purge(store)
        pbx.rollback()

    assert str(raised.value) == (
        "threecx/3cx-call-history: lock wait timeout exceeded 3 times; the PBX holds locks on "
        "the table (a long transaction, a backup or a table lock); the run was stopped, nothing "
        "beyond the committed batches was deleted"
    )
    assert database.count("cl_calls") == 25  # the first batch of ten committed
    assert database.count("cl_calls", "id = :c", c=locked_call) == 1
    assert database.count("cl_participants", "call_id = :c", c=locked_call) == participants
    assert database.count("cl_segments", "call_id = 11") > 0, "the second batch rolled back whole"
    retries = [entry for entry in logs if entry["event"] == "sql store retrying"]
    assert [entry["attempt"] for entry in retries] == [1, 2]
    assert all(entry["store"] == "threecx/3cx-call-history" for entry in retries)


def test_no_personal_data_in_results_or_logs(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    create_cl_schema(database)
    history = cl_history(before_cutoff(20) + after_cutoff(3))
    history.insert(database)
    store = open_store(database.url, batch_size=6)

    with capture_logs() as logs:
        survey = store.survey(CUTOFF)
        batches, results = [], []
        for batch in store.batches(CUTOFF):
            batches.append(batch)
            results.append(store.apply(batch, CUTOFF))

    shown = repr(logs) + repr(survey) + repr(batches) + repr(results) + str(batches)
    personal = {
        value
        for row in history.rows["cl_party_info"]
        for value in (row["caller_number"], row["display_name"], row["firstlastname"])
        if value and len(value) > 4
    } | {row["recording_url"] for row in history.rows["cl_participants"] if row["recording_url"]}
    assert personal
    assert not [value for value in personal if value in shown]
    assert any(entry["event"] == "3cx store deleted a batch" for entry in logs)


def test_dependent_without_a_call_column_is_left_alone_and_named(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    create_cl_schema(database, quality=False)
    database.execute("CREATE TABLE cl_quality (call_history_id uuid, a_number varchar(255))")
    database.execute("INSERT INTO cl_quality VALUES (NULL, '+4930555123')")
    cl_history(before_cutoff(3)).insert(database, quality=False)
    store = open_store(database.url)

    description = store.describe()
    purge(store)

    assert (
        "warning: cl_quality has no column call_id and no foreign key to cl_calls; its rows are "
        "left alone (retentiond does not guess which column names the cl_calls row)"
    ) in description
    assert database.count("cl_calls") == 0
    assert database.count("cl_quality") == 1


def test_cl_calls_without_start_time_is_refused(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    database.execute("CREATE TABLE cl_calls (id serial PRIMARY KEY, began timestamptz)")

    with pytest.raises(StoreError) as raised:
        open_store(database.url)

    assert not isinstance(raised.value, StoreAbsent)
    assert str(raised.value) == (
        "threecx/3cx-call-history: table cl_calls has no column start_time; this is not a 3CX "
        "call history retentiond knows (its columns: id, began)"
    )


# -- the cdroutput generation (3CX v20 Update 6 and later) ----------------------------------------


def test_expired_cdroutput_rows_go_with_their_billing(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    create_cdroutput_schema(database)
    cdrs = cdroutput_rows(shuffled(before_cutoff(30), after_cutoff(10)))
    billing = cdrbilling_rows(cdrs)
    database.insert("cdroutput", cdrs)
    database.insert("cdrbilling", billing)
    billing = table_rows(database, "cdrbilling")  # as stored: numeric comes back as Decimal
    young = [cdr for cdr in cdrs if cdr["cdr_started_at"] >= CUTOFF]
    young_ids = {cdr["cdr_id"] for cdr in young}
    store = open_store(database.url, batch_size=8)

    survey = store.survey(CUTOFF)
    assert (survey.total, survey.expired) == (40, 30)
    results = purge(store)

    assert [result.deleted for result in results] == [8, 8, 8, 6]
    assert as_set(table_rows(database, "cdroutput")) == as_set(young)
    kept_billing = [row for row in billing if row["cdr_id"] in young_ids]
    assert kept_billing, "some young calls were billed"
    assert as_set(table_rows(database, "cdrbilling")) == as_set(kept_billing)


def test_cdroutput_without_cdrbilling_is_described_and_purged(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    create_cdroutput_schema(database, billing=False)
    database.insert("cdroutput", cdroutput_rows(before_cutoff(5) + after_cutoff(2)))
    store = open_store(database.url)

    description = store.describe()
    purge(store)

    assert "generation: cdroutput (3CX v20 Update 6 and later), one row per call segment" in (
        description
    )
    assert "cdrbilling: not present in this 3CX version; no billing rows to delete" in description
    assert database.count("cdroutput") == 2


def test_old_cl_tables_left_by_an_upgrade_are_purged_with_cdroutput(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    create_cl_schema(database)
    create_cdroutput_schema(database)
    cl_history(before_cutoff(6)).insert(database)
    database.insert("cdroutput", cdroutput_rows(before_cutoff(4) + after_cutoff(3)))
    store = open_store(database.url, batch_size=5)

    assert store.survey(CUTOFF).expired == 10
    results = purge(store)

    assert [result.deleted for result in results] == [5, 1, 4]
    assert database.count("cl_calls") == 0
    assert database.count("cl_party_info") == 0
    assert database.count("cdroutput") == 3
    generations = [line for line in store.describe() if line.startswith("generation:")]
    assert len(generations) == 2


# -- what open() finds ----------------------------------------------------------------------------


def test_database_without_3cx_call_history_is_absent(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    database.execute(*S_VOICEMAIL)

    with pytest.raises(StoreAbsent) as raised:
        open_store(database.url)

    name = database.url.rsplit("/", 1)[1]
    assert str(raised.value) == (
        "threecx/3cx-call-history: no 3CX call history tables (cl_calls or cdroutput) in "
        f"database {name} of connection threecx; 3CX keeps them in database_single"
    )


def test_describe_names_generation_links_missing_tables_and_order(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    create_cl_schema(database, quality=False)
    store = open_store(database.url)

    description = store.describe()

    assert description[0].startswith("threecx/3cx-call-history: PostgreSQL 1")
    assert "generation: cl_* tables (3CX v18, and v20 before Update 6)" in description
    assert "index cl_calls_start_time_idx on start_time" in description
    assert (
        "found: cl_segments, linked to cl_calls by call_id (no foreign key, as in 3CX's own "
        "databases)"
    ) in description
    assert "cl_quality: not present in this 3CX version; no quality reports to delete" in (
        description
    )
    assert (
        "each batch, in one transaction: lock the batch's rows of cl_calls that are still expired, "
        "delete cl_segments, delete cl_participants, delete the cl_party_info rows no remaining "
        "cl_participants row points to, delete cl_calls"
    ) in description
    assert not [line for line in description if line.startswith("warning:")]


def test_describe_follows_foreign_keys_and_names_tables_that_would_block(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    create_cl_schema(database, foreign_keys=True)
    database.execute(
        *RECORDINGS,
        "ALTER TABLE recordings ADD CONSTRAINT recordings_participant_fk "
        "FOREIGN KEY (cl_participants_id) REFERENCES cl_participants (id)",
    )
    history = cl_history(before_cutoff(2))
    history.insert(database)
    participant = history.rows["cl_participants"][0]
    database.insert(
        "recordings",
        [
            {
                "cl_participants_id": participant["id"],
                "recording_url": "1001/[Erika Mustermann]_1001-+4930987654_20240229100000(1).wav",
                "start_time": CUTOFF - timedelta(days=1),
            }
        ],
    )
    store = open_store(database.url)

    description = store.describe()
    with pytest.raises(StoreError) as raised:
        purge(store)

    assert (
        "found: cl_segments, linked to cl_calls by call_id (foreign key cl_segments_call_fk)"
        in description
    )
    assert (
        "found: cl_party_info, linked from cl_participants by info_id "
        "(foreign key cl_participants_info_fk)"
    ) in description
    assert (
        "note: recordings.cl_participants_id refers to cl_participants; ON DELETE NO ACTION: a "
        "batch fails while recordings still names a row it deletes; purge that table first "
        "(a store listed before this one)"
    ) in description
    message = str(raised.value)
    assert "(error 23503) and was rolled back" in message  # the code, never the server's words
    assert "violates" not in message and "recordings_participant_fk" not in message
    assert message.endswith(
        "purge that table first (a store listed before this one in the rule, "
        "or a rule that runs before it)"
    )
    assert "+4930987654" not in message
    assert database.count("cl_calls") == 2


def test_sqlite_database_is_refused(sqlite_url: str, open_store: StoreFactory) -> None:
    with pytest.raises(StoreError, match=r"3CX keeps its call history in PostgreSQL"):
        open_store(sqlite_url)


@pytest.mark.server_clock  # measures this host's clock against the server's
def test_clock_skew_is_small(database: PbxDatabase, open_store: StoreFactory) -> None:
    create_cdroutput_schema(database)

    skew = open_store(database.url).clock_skew()

    assert skew is not None
    assert abs(skew) < timedelta(seconds=2)


# -- 3CX recordings: rows and their files (sql store with file_column) ----------------------------


@pytest.fixture
def recordings_root(tmp_path: Path) -> Path:
    """/var/lib/3cxpbx/Instance1/Data/Recordings, in miniature."""
    root = tmp_path / "Instance1" / "Data" / "Recordings"
    root.mkdir(parents=True)
    return root


@pytest.fixture
def open_recordings(open_sql_store: Callable[..., SqlStore]) -> Callable[..., SqlStore]:
    """Open a SqlStore on a table whose rows name files; every one is closed after the test."""

    def factory(
        url: str,
        root: Path,
        *,
        table: str = "recordings",
        time_column: str = "start_time",
        file_column: str = "recording_url",
        batch_size: int = 1000,
    ) -> SqlStore:
        return open_sql_store(
            url,
            table,
            time_column,
            connection="threecx",
            file_column=file_column,
            file_root=str(root),
            batch_size=batch_size,
        )

    return factory


def write_file(path: Path, size: int) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF" + bytes(size - 4))
    return size


def test_expired_recordings_go_with_their_files_and_nothing_outside_is_touched(
    database: PbxDatabase,
    recordings_root: Path,
    tmp_path: Path,
    open_recordings: Callable[..., SqlStore],
) -> None:
    database.execute(*RECORDINGS)
    expired = recording_rows(before_cutoff(12), seed=1)
    young = recording_rows(after_cutoff(4), seed=2)
    sizes = {
        row["recording_url"]: write_file(recordings_root / row["recording_url"], 1000 + 10 * i)
        for i, row in enumerate(expired + young)
    }
    outside = tmp_path / "Instance1" / "Data" / "outside.wav"
    absolute = tmp_path / "secret" / "absolute.wav"
    elsewhere = tmp_path / "elsewhere"
    for path in (outside, absolute, elsewhere / "x.wav", elsewhere / "target.wav"):
        write_file(path, 100)
    (recordings_root / "linked").symlink_to(elsewhere)
    (recordings_root / "1001" / "alias.wav").parent.mkdir(exist_ok=True)
    (recordings_root / "1001" / "alias.wav").symlink_to(elsewhere / "target.wav")
    sizes["1003/shared.wav"] = write_file(recordings_root / "1003" / "shared.wav", 500)
    sizes["1004/twice.wav"] = write_file(recordings_root / "1004" / "twice.wav", 700)
    odd = {
        "../outside.wav": "unsafe",
        str(absolute): "unsafe",
        "linked/x.wav": "unsafe",
        "1001/alias.wav": "unsafe",
        "1005//double-slash.wav": "unsafe",
        "1002/[Max Mustermann]_1002-+491701234567_20240101120000(99).wav": "missing",
        "1003/shared.wav": "shared",
        "1004/twice.wav": "twice",
    }
    extra_expired = [
        {**expired[0], "recording_url": url} for url in [*odd, "1004/twice.wav", None, ""]
    ]
    database.insert("recordings", expired + extra_expired)
    database.insert("recordings", [*young, {**young[0], "recording_url": "1003/shared.wav"}])
    young_rows = as_set(
        [row for row in table_rows(database, "recordings") if row["start_time"] >= CUTOFF]
    )
    store = open_recordings(database.url, recordings_root)

    with capture_logs() as logs:
        results = purge(store)

    assert [result.deleted for result in results] == [len(expired) + len(extra_expired)]
    assert results[0].skipped == {"file_missing": 1, "still_referenced": 1, "unsafe_path": 5}
    deleted_files = [row["recording_url"] for row in expired] + ["1004/twice.wav"]
    assert results[0].bytes == sum(sizes[name] for name in deleted_files)
    assert as_set(table_rows(database, "recordings")) == young_rows
    assert not [name for name in deleted_files if (recordings_root / name).exists()]
    assert all((recordings_root / row["recording_url"]).is_file() for row in young)
    assert (recordings_root / "1003" / "shared.wav").is_file()
    for path in (outside, absolute, elsewhere / "x.wav", elsewhere / "target.wav"):
        assert path.read_bytes().startswith(b"RIFF"), path
    assert (recordings_root / "1001" / "alias.wav").is_symlink()
    assert (recordings_root / "linked").is_symlink()
    done = [entry for entry in logs if entry["event"] == "sql store deleted files"]
    assert [(entry["files"], entry["unsafe_path"]) for entry in done] == [(13, 5)]
    shown = repr(logs) + repr(results)
    names = [row["recording_url"] for row in expired + young] + list(odd)
    assert not [name for name in names if name in shown or Path(name).name in shown]
    assert "+49" not in shown


def test_file_named_by_rows_in_two_batches_goes_with_the_last_of_them(
    database: PbxDatabase, recordings_root: Path, open_recordings: Callable[..., SqlStore]
) -> None:
    database.execute(*RECORDINGS)
    rows = recording_rows(before_cutoff(2), seed=4)
    rows[1]["recording_url"] = rows[0]["recording_url"]
    size = write_file(recordings_root / rows[0]["recording_url"], 2048)
    database.insert("recordings", rows)
    store = open_recordings(database.url, recordings_root, batch_size=1)

    results = purge(store)

    assert [(r.deleted, r.bytes, dict(r.skipped)) for r in results] == [
        (1, 0, {"still_referenced": 1}),
        (1, size, {}),
    ]
    assert not (recordings_root / rows[0]["recording_url"]).exists()


def test_expired_voicemail_rows_go_with_their_wav_files(
    database: PbxDatabase, tmp_path: Path, open_recordings: Callable[..., SqlStore]
) -> None:
    root = tmp_path / "Instance1" / "Data" / "Ivr" / "Voicemail" / "Data"
    database.execute(*S_VOICEMAIL)
    messages = []
    for i, moment in enumerate(before_cutoff(3) + after_cutoff(2)):
        name = f"1001/vmail_+4915112345{i:02d}_1001_{moment:%Y%m%d%H%M%S}.wav"
        write_file(root / name, 800)
        messages.append(
            {
                "wav_file": name,
                "callee": "1001",
                "caller": f"+4915112345{i:02d}",
                "caller_name": "Jonas Krüger",
                "duration": 12,
                "created_time": moment,
            }
        )
    database.insert("s_voicemail", messages)
    store = open_recordings(
        database.url,
        root,
        table="s_voicemail",
        time_column="created_time",
        file_column="wav_file",
    )

    results = purge(store)

    assert [(result.deleted, result.bytes) for result in results] == [(3, 2400)]
    assert sorted(path.name for path in (root / "1001").iterdir()) == sorted(
        Path(m["wav_file"]).name for m in messages[3:]
    )
    assert database.count("s_voicemail") == 2


def test_missing_file_root_or_file_column_is_refused(
    database: PbxDatabase,
    recordings_root: Path,
    tmp_path: Path,
    open_recordings: Callable[..., SqlStore],
) -> None:
    database.execute(*RECORDINGS)

    with pytest.raises(StoreError, match=r"file_root .*Nowhere does not exist"):
        open_recordings(database.url, tmp_path / "Nowhere")
    with pytest.raises(StoreError, match=r"column recording_path does not exist"):
        open_recordings(database.url, recordings_root, file_column="recording_path")
    link = tmp_path / "link"
    link.symlink_to(recordings_root)
    with pytest.raises(StoreError, match=r"is a symlink"):
        open_recordings(database.url, link)
    assert list(recordings_root.iterdir()) == []
