"""Art. 15 find and Art. 17 erase on SQL tables, on real databases.

The FreePBX cdr (keyless on MariaDB, ctid on PostgreSQL) and Asterisk's SQLite cdr (AcctId).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from databases import ALL_BACKENDS
from pbxdata import PbxDatabase
from sqlalchemy import text

from retentiond.errors import StoreError
from retentiond.policy.rules import Holds, HoldScope
from retentiond.policy.subjects import Subject
from retentiond.stores.sql.store import SqlStore

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
PERSON = "+4989555123"
PERSON_DIALLED = "089555123"  # the same number as dialled from a German extension
STRANGER = "+4989555124"  # one digit away: never theirs

StoreFactory = Callable[..., SqlStore]


@pytest.fixture
def open_store(open_sql_store: StoreFactory) -> StoreFactory:
    """Open a SqlStore on a URL with any store settings; closed after the test."""
    return open_sql_store


def insert_calls(database: PbxDatabase) -> list[dict[str, Any]]:
    """30 calls over two months around NOW; the person's number is on a third of them, as
    caller (international form) or callee (dialled form); a stranger's number on others."""
    calldates = [datetime(2024, 2, 1, 9) + timedelta(hours=47 * i) for i in range(30)]
    database.create("cdr")
    rows = database.cdr_rows(calldates)
    for index, row in enumerate(rows):
        if index % 6 == 0:
            row["src"] = PERSON
        elif index % 6 == 3:
            row["dst"] = PERSON_DIALLED
        elif index % 6 == 1:
            row["src"] = STRANGER
    database.insert("cdr", rows)
    return rows


def subject_columns(database: PbxDatabase) -> list[str]:
    return ["src", "dst"] if database.dialect == "sqlite" else ["src", "dst", "cnum", "did"]


def theirs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [row for row in rows if row["src"] == PERSON or row["dst"] == PERSON_DIALLED]


def held(row: dict[str, Any]) -> bool:
    """Under HOLD: the call's Berlin time is on or after the hold's start."""
    calldate = row["calldate"]
    if isinstance(calldate, str):
        calldate = datetime.fromisoformat(calldate)
    return HOLD.covers(calldate.replace(tzinfo=BERLIN))


def uniqueids_left(database: PbxDatabase) -> set[str]:
    with database.engine.connect() as connection:
        return set(connection.execute(text("SELECT uniqueid FROM cdr")).scalars())


PERSON_SUBJECT = Subject.parse(numbers=[PERSON])
# Their calls from 20 February on are under a hold by their number.
HOLD = Holds((HoldScope("HOLD-P", datetime(2024, 2, 20, tzinfo=UTC), None, PERSON_SUBJECT),))


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_find_lists_every_call_naming_the_person_of_any_age_and_nothing_more(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    rows = insert_calls(database)
    columns = subject_columns(database)
    store = open_store(database.url, subject_columns=columns)

    found = list(store.find(PERSON_SUBJECT, HOLD))

    expected = theirs(rows)
    assert len(found) == len(expected) == 10
    assert store.subject_fields() == columns
    assert [item.fields["src"] for item in found] == [row["src"] for row in expected]
    assert all(set(item.fields) == {"calldate", *columns} for item in found)
    assert all(item.where == "cdrdb/cdr" for item in found)
    assert any(item.when is not None and item.when > NOW for item in found), "young calls too"
    assert [item.held for item in found] == [held(row) for row in expected]
    assert any(item.held for item in found) and not all(item.held for item in found)


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_erase_deletes_every_unheld_call_of_the_person_and_nothing_else(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    rows = insert_calls(database)
    store = open_store(database.url, subject_columns=subject_columns(database), batch_size=2)
    erased = [row for row in theirs(rows) if not held(row)]
    assert 0 < len(erased) < len(theirs(rows))

    batches = []
    deleted = 0
    for batch in store.subject_batches(PERSON_SUBJECT, HOLD):
        batches.append(batch)
        deleted += store.apply(batch, NOW).deleted

    assert deleted == len(erased)
    assert all(batch.planned <= 2 for batch in batches)
    assert uniqueids_left(database) == {row["uniqueid"] for row in rows if row not in erased}, (
        "the stranger's calls, the held ones and everyone else's stay"
    )


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_erase_plan_without_apply_deletes_nothing(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    rows = insert_calls(database)
    store = open_store(database.url, subject_columns=subject_columns(database))

    planned = list(store.subject_batches(PERSON_SUBJECT))

    assert sum(batch.planned for batch in planned) == len(theirs(rows))
    assert database.count("cdr") == len(rows)


def test_table_without_subject_columns_cannot_be_searched(
    sqlite_url: str, pbx_database: Callable[[str], PbxDatabase], open_store: StoreFactory
) -> None:
    pbx_database(sqlite_url).create("cdr")
    store = open_store(sqlite_url)

    assert store.subject_fields() == []
    for search in (store.find, store.subject_batches):
        with pytest.raises(StoreError, match=r"cannot be searched.*set subject_columns"):
            search(PERSON_SUBJECT)


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_missing_subject_and_anonymize_columns_are_named_at_open(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    database.create("cdr")

    with pytest.raises(StoreError, match=r"subject_columns names columns callerid, cnum2.*its col"):
        open_store(database.url, subject_columns=["src", "callerid", "cnum2"])
    with pytest.raises(StoreError, match=r"anonymize names column caller, not in table cdr"):
        open_store(database.url, anonymize={"src": "blank", "caller": "blank"})


def test_numbers_stored_with_blanks_and_separators_are_held_and_found(
    sqlite_url: str,
) -> None:
    """A PBX that stores `030 123456` or `+49 (30) 123-456`: a hold for +4930123456 keeps the
    row, `find` lists it, as the files and voicemail stores already do."""
    from sqlalchemy import create_engine, text

    from retentiond.config.model import ConnectionConfig, SqlStoreConfig
    from retentiond.policy.rules import Holds, HoldScope
    from retentiond.policy.subjects import Subject
    from retentiond.stores.sql.store import SqlStore

    engine = create_engine(sqlite_url)
    with engine.begin() as connection:
        connection.execute(
            text("CREATE TABLE calls (id INTEGER PRIMARY KEY, started TEXT, src TEXT)")
        )
        connection.execute(text("CREATE INDEX calls_started ON calls (started)"))
        for key, src in enumerate(["030 123456", "+49 (30) 123-456", "030 1234567", "1001"], 1):
            connection.execute(
                text("INSERT INTO calls VALUES (:k, '2024-02-01 10:00:00', :s)"),
                {"k": key, "s": src},
            )
    engine.dispose()
    config = SqlStoreConfig.model_validate(
        {
            "type": "sql",
            "connection": "c",
            "table": "calls",
            "time_column": "started",
            "subject_columns": ["src"],
        }
    )
    store = SqlStore(config, ConnectionConfig.model_validate({"url": sqlite_url}), BERLIN)
    store.open()
    try:
        person = Subject.parse(numbers=["+4930123456"])
        assert len(list(store.find(person))) == 2
        holds = Holds((HoldScope("HOLD-P", subject=person),))
        cutoff = datetime(2025, 1, 1, tzinfo=UTC)
        deleted = sum(store.apply(b, cutoff).deleted for b in store.batches(cutoff, holds))
        assert deleted == 2  # the stranger's 0301234567 and the extension's row
    finally:
        store.close()
    engine = create_engine(sqlite_url)
    with engine.connect() as connection:
        left = sorted(r[0] for r in connection.execute(text("SELECT src FROM calls")))
    engine.dispose()
    assert left == ["+49 (30) 123-456", "030 123456"]
