"""Holds on SQL tables: held rows survive a purge, in every strategy, on real databases.

The FreePBX cdr (no primary key: MariaDB deletes with ORDER BY ... LIMIT, PostgreSQL by ctid),
Asterisk's SQLite cdr (walked by AcctId), FreePBX cel (walked by id) and a keyed table.
The cutoff is 2024-03-01 12:00 UTC, 13:00 on the wall clock in Berlin.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from databases import ALL_BACKENDS
from pbxdata import PbxDatabase, cel_rows, sqlite_cdr_rows
from sqlalchemy import text

from retentiond.policy.rules import Holds, HoldScope
from retentiond.policy.subjects import Subject
from retentiond.stores.base import BatchResult
from retentiond.stores.db.timecols import hold_bound
from retentiond.stores.sql.store import SqlStore

BERLIN = ZoneInfo("Europe/Berlin")
CUTOFF = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
CUTOFF_IN_BERLIN = datetime(2024, 3, 1, 13, 0)
PERSON = "+4989555123"  # the person a hold by number is about; not in the generated data

StoreFactory = Callable[..., SqlStore]


@pytest.fixture
def open_store(open_sql_store: StoreFactory) -> StoreFactory:
    """Open a SqlStore on a URL with any store settings; closed after the test."""
    return open_sql_store


def wall(database: PbxDatabase, moment: datetime) -> Any:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if database.dialect == "sqlite" else moment


def berlin(*args: int) -> datetime:
    """An instant given as Berlin wall-clock time."""
    return datetime(*args, tzinfo=BERLIN).astimezone(UTC)


def insert_calls(database: PbxDatabase, calldates: list[datetime]) -> None:
    """FreePBX cdr rows (Asterisk's SQLite cdr on SQLite); every third call is PERSON's."""
    database.create("cdr")
    rows = database.cdr_rows(calldates)
    for index, row in enumerate(rows):
        if index % 3 == 0:
            row["src"] = PERSON
        elif index % 3 == 1 and index % 2 == 0:
            row["dst"] = PERSON
    database.insert("cdr", rows)


def subject_columns(database: PbxDatabase) -> list[str]:
    return ["src", "dst"] if database.dialect == "sqlite" else ["src", "dst", "cnum", "did"]


def purge(store: SqlStore, holds: Holds) -> list[BatchResult]:
    return [store.apply(batch, CUTOFF) for batch in store.batches(CUTOFF, holds)]


def calldates_left(
    database: PbxDatabase, table: str = "cdr", column: str = "calldate"
) -> list[Any]:
    with database.engine.connect() as connection:
        values = connection.execute(text(f"SELECT {column} FROM {table}")).scalars()
        return sorted(str(value) for value in values)


def as_stored(database: PbxDatabase, moments: list[datetime]) -> list[str]:
    return sorted(str(wall(database, moment)) for moment in moments)


def every_hours(first: datetime, count: int, step: float) -> list[datetime]:
    return [first + timedelta(hours=step * i) for i in range(count)]


# Calls every 5 hours from 20 February 13:00 to the cutoff, and a few younger ones.
EXPIRED = every_hours(datetime(2024, 2, 20, 13), 48, 5)
YOUNGER = every_hours(CUTOFF_IN_BERLIN, 4, 3)
WINDOW = HoldScope("HOLD-1", berlin(2024, 2, 23), berlin(2024, 2, 26))


def in_window(moment: datetime, scope: HoldScope = WINDOW) -> bool:
    return scope.in_window(moment.replace(tzinfo=BERLIN))


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_calls_in_a_hold_window_survive_and_other_expired_calls_go(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    insert_calls(database, EXPIRED + YOUNGER)
    store = open_store(database.url, batch_size=7)
    holds = Holds((WINDOW,))
    held = [moment for moment in EXPIRED if in_window(moment)]
    assert 0 < len(held) < len(EXPIRED)

    survey = store.survey(CUTOFF, holds)
    results = purge(store, holds)

    assert (survey.expired, survey.held) == (len(EXPIRED) - len(held), len(held))
    assert survey.held_by == {"HOLD-1": len(held)}
    assert sum(result.deleted for result in results) == len(EXPIRED) - len(held)
    assert calldates_left(database) == as_stored(database, held + YOUNGER)
    after = store.survey(CUTOFF, holds)
    assert (after.expired, after.held) == (0, len(held))


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_each_hold_counts_the_calls_it_covers_and_a_call_under_two_counts_once(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    insert_calls(database, EXPIRED + YOUNGER)
    store = open_store(database.url)
    later = HoldScope("HOLD-2", berlin(2024, 2, 25), None)  # open end: up to the cutoff
    holds = Holds((WINDOW, later))
    first = {moment for moment in EXPIRED if in_window(moment)}
    second = {moment for moment in EXPIRED if in_window(moment, later)}
    assert first & second and first - second and second - first

    survey = store.survey(CUTOFF, holds)

    assert survey.held_by == {"HOLD-1": len(first), "HOLD-2": len(second)}
    assert survey.held == len(first | second)
    assert survey.expired == len(EXPIRED) - len(first | second)


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_hold_by_number_keeps_only_that_persons_calls(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    insert_calls(database, EXPIRED + YOUNGER)
    store = open_store(database.url, batch_size=5, subject_columns=subject_columns(database))
    person = Subject.parse(numbers=[PERSON])
    holds = Holds((HoldScope("HOLD-P", subject=person),))
    with database.engine.connect() as connection:
        theirs = connection.execute(
            text("SELECT COUNT(*) FROM cdr WHERE src = :n OR dst = :n"), {"n": PERSON}
        ).scalar()
        expired_theirs = connection.execute(
            text("SELECT COUNT(*) FROM cdr WHERE (src = :n OR dst = :n) AND calldate < :t"),
            {"n": PERSON, "t": wall(database, CUTOFF_IN_BERLIN)},
        ).scalar()
    assert 0 < expired_theirs < len(EXPIRED)

    survey = store.survey(CUTOFF, holds)
    purge(store, holds)

    assert (survey.held, survey.expired) == (expired_theirs, len(EXPIRED) - expired_theirs)
    assert database.count("cdr") == theirs + len(YOUNGER) - (theirs - expired_theirs)
    assert database.count("cdr", "calldate < :t", t=wall(database, CUTOFF_IN_BERLIN)) == (
        expired_theirs
    )
    assert database.count(
        "cdr", "calldate < :t AND src <> :n AND dst <> :n", t=wall(database, CUTOFF_IN_BERLIN),
        n=PERSON,
    ) == 0  # fmt: skip


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_hold_by_number_holds_the_whole_window_of_a_table_without_subject_columns(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    """The store cannot tell whose a row is, so it keeps every row of the window."""
    insert_calls(database, EXPIRED)
    store = open_store(database.url)
    scope = HoldScope("HOLD-P", WINDOW.start, WINDOW.end, Subject.parse(numbers=[PERSON]))
    held = [moment for moment in EXPIRED if in_window(moment)]

    purge(store, Holds((scope,)))

    assert calldates_left(database) == as_stored(database, held)


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_key_walk_leaves_held_events(database: PbxDatabase, open_store: StoreFactory) -> None:
    times = EXPIRED + YOUNGER
    if database.dialect == "sqlite":
        database.create("cdr")  # no index on calldate: walked by AcctId
        database.insert("cdr", sqlite_cdr_rows(times))
        table, column = "cdr", "calldate"
    else:
        database.create("cel")
        database.insert("cel", cel_rows(times))
        table, column = "cel", "eventtime"
    store = open_store(database.url, table, column, batch_size=4)
    held = [moment for moment in EXPIRED if in_window(moment)]
    holds = Holds((WINDOW,))

    assert store.strategy == "key_walk"
    assert store.survey(CUTOFF, holds).held == len(held)
    results = purge(store, holds)

    assert all(0 < result.deleted <= 4 for result in results)
    assert calldates_left(database, table, column) == as_stored(database, held + YOUNGER)


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_null_in_a_subject_column_matches_no_hold(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    time_type = {"mariadb": "DATETIME", "postgresql": "TIMESTAMP", "sqlite": "TEXT"}
    database.execute(
        f"CREATE TABLE calls (id INTEGER PRIMARY KEY, started {time_type[database.dialect]} "
        "NOT NULL, src VARCHAR(40) NULL, dst VARCHAR(40) NULL)",
        "CREATE INDEX calls_started ON calls (started)",
    )
    old = wall(database, datetime(2024, 2, 1, 10))
    database.insert(
        "calls",
        [
            {"id": 1, "started": old, "src": None, "dst": PERSON},  # theirs: held
            {"id": 2, "started": old, "src": None, "dst": "+4930999888"},
            {"id": 3, "started": old, "src": "+4930999888", "dst": None},
            {"id": 4, "started": old, "src": None, "dst": None},
        ],
    )
    store = open_store(database.url, "calls", "started", subject_columns=["src", "dst"])
    holds = Holds((HoldScope("HOLD-P", subject=Subject.parse(numbers=[PERSON])),))

    survey = store.survey(CUTOFF, holds)
    purge(store, holds)

    assert (survey.expired, survey.held) == (3, 1)
    with database.engine.connect() as connection:
        assert connection.execute(text("SELECT id FROM calls")).scalars().all() == [1]


# -- the window's edges where the wall clock is ambiguous --------------------------------------

# 27 October 2024, Berlin: 03:00 CEST becomes 02:00 CET, so 02:00-02:59 happen twice.
AUTUMN = [datetime(2024, 10, 27, hour, 15) for hour in (0, 1, 2, 3, 4)] + [
    datetime(2024, 10, 27, 2, 45)
]


@pytest.mark.parametrize(
    ("scope", "gone"),
    [
        # Ends at 02:30 in the second pass: 02:45 may be the first pass, so it is kept (the
        # edge moves by the whole shift, so 03:15 is kept too; 04:15 is out of reach).
        (HoldScope("H", end=datetime(2024, 10, 27, 1, 30, tzinfo=UTC)), [AUTUMN[4]]),
        # Starts at 02:30 in the first pass: 02:15 may be the second pass, so it is kept;
        # 01:15 happens once, before the start.
        (HoldScope("H", start=datetime(2024, 10, 27, 0, 30, tzinfo=UTC)), AUTUMN[:2]),
    ],
    ids=["end", "start"],
)
@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_hold_window_widens_over_the_repeated_autumn_hour(
    database: PbxDatabase, open_store: StoreFactory, scope: HoldScope, gone: list[datetime]
) -> None:
    insert_calls(database, AUTUMN)
    store = open_store(database.url)
    cutoff = datetime(2024, 11, 1, tzinfo=UTC)

    for batch in store.batches(cutoff, Holds((scope,))):
        store.apply(batch, cutoff)

    kept = [moment for moment in AUTUMN if moment not in gone]
    assert calldates_left(database) == as_stored(database, kept)


@pytest.mark.parametrize(
    ("kind", "side", "instant", "bound"),
    [
        ("epoch", "from", datetime(2024, 3, 1, 12, 0, 0, 500000, tzinfo=UTC), 1709294400),
        ("epoch", "to", datetime(2024, 3, 1, 12, 0, 0, 500000, tzinfo=UTC), 1709294401),
        ("date", "from", berlin(2024, 3, 1, 13), date(2024, 3, 1)),
        ("date", "to", berlin(2024, 3, 1, 13), date(2024, 3, 2)),
        ("date", "to", berlin(2024, 3, 2), date(2024, 3, 2)),
        ("text", "from", berlin(2024, 3, 1), "2024-03-01"),
        ("text", "to", berlin(2024, 3, 1, 13, 0, 0, 1), "2024-03-01 13:00:01"),
        ("local", "from", berlin(2024, 3, 1, 13), datetime(2024, 3, 1, 13)),
        # The spring gap: 02:00-02:59 on 31 March does not exist, a value there may be either
        ("local", "from", berlin(2024, 3, 31, 3, 30), datetime(2024, 3, 31, 2, 30)),
        ("local", "to", berlin(2024, 3, 31, 1, 30), datetime(2024, 3, 31, 2, 30)),
    ],
)
def test_hold_bounds_round_outwards(kind: Any, side: Any, instant: datetime, bound: Any) -> None:
    zone: tzinfo = BERLIN
    assert hold_bound(kind, "mysql", instant, zone, side) == bound
