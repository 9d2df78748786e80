"""The key walk's batches as the survey plans them: one read splits the rows to delete into key
ranges, and each batch deletes its range under the full predicate. Rows that change between the
survey and the delete are judged by the delete itself (a row made younger, or held, stays; an
expired row inserted into an old key gap goes), and expired rows past the last range are left
for the verifying survey to count. FreePBX cel on the servers, Asterisk's SQLite cdr (AcctId)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from databases import ALL_BACKENDS
from pbxdata import PbxDatabase, cel_rows, sqlite_cdr_rows
from sqlalchemy import text

from retentiond.policy.rules import NO_HOLDS, Holds, HoldScope
from retentiond.stores.base import BatchResult
from retentiond.stores.sql.store import SqlStore

BERLIN = ZoneInfo("Europe/Berlin")
CUTOFF = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
CUTOFF_IN_BERLIN = datetime(2024, 3, 1, 13, 0)  # naive wall-clock time, as FreePBX writes it

StoreFactory = Callable[..., SqlStore]


def before_cutoff(hours: float) -> datetime:
    return CUTOFF_IN_BERLIN - timedelta(hours=hours)


def after_cutoff(hours: float) -> datetime:
    return CUTOFF_IN_BERLIN + timedelta(hours=hours)


class Events:
    """The walked table of `database`: cel on the servers, cdr (AcctId) on SQLite."""

    def __init__(self, database: PbxDatabase) -> None:
        self.database = database
        sqlite = database.dialect == "sqlite"
        self.table, self.column, self.key = (
            ("cdr", "calldate", "AcctId") if sqlite else ("cel", "eventtime", "id")
        )
        database.create(self.table)

    def rows(self, times: list[datetime]) -> list[dict[str, Any]]:
        if self.database.dialect == "sqlite":
            return sqlite_cdr_rows(times)
        return cel_rows(times)

    def insert(self, times: list[datetime], key: int | None = None) -> None:
        rows = self.rows(times)
        if key is not None:
            rows[0][self.key] = key
        self.database.insert(self.table, rows)

    def listed(self, where: str = "1 = 1", **params: Any) -> list[int]:
        with self.database.engine.connect() as connection:
            found = connection.execute(
                text(f"SELECT {self.key} FROM {self.table} WHERE {where} ORDER BY {self.key}"),
                params,
            )
            return [int(row[0]) for row in found]

    def stored(self, moment: datetime) -> Any:
        if self.database.dialect == "sqlite":
            return moment.strftime("%Y-%m-%d %H:%M:%S")
        return moment

    def execute(self, sql: str, **params: Any) -> None:
        with self.database.engine.begin() as connection:
            connection.execute(text(sql), params)


def purge(store: SqlStore, holds: Holds = NO_HOLDS) -> list[BatchResult]:
    return [store.apply(batch, CUTOFF) for batch in store.batches(CUTOFF, holds)]


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_rows_changed_after_the_survey_are_judged_by_each_delete(
    database: PbxDatabase, open_sql_store: StoreFactory
) -> None:
    events = Events(database)
    # expired and younger events interleaved in key order
    times = [before_cutoff(100 - i) if i % 5 else after_cutoff(i) for i in range(60)]
    events.insert(times)
    cutoff = events.stored(CUTOFF_IN_BERLIN)
    expired = events.listed(f"{events.column} < :t", t=cutoff)
    # two old key gaps, made before the survey
    old_gap, young_gap = expired[10], expired[30]
    events.execute(
        f"DELETE FROM {events.table} WHERE {events.key} IN (:a, :b)", a=old_gap, b=young_gap
    )
    store = open_sql_store(database.url, events.table, events.column, batch_size=6)

    assert store.strategy == "key_walk"
    assert store.survey(CUTOFF).expired == len(expired) - 2
    # After the survey: an expired row made younger; an expired row inserted into an old key
    # gap, a younger one into another; a new expired row past every planned range.
    made_younger = expired[20]
    events.execute(
        f"UPDATE {events.table} SET {events.column} = :t WHERE {events.key} = :k",
        t=events.stored(after_cutoff(500)),
        k=made_younger,
    )
    events.insert([before_cutoff(300)], key=old_gap)
    events.insert([after_cutoff(300)], key=young_gap)
    events.insert([before_cutoff(200)])
    (past_the_walk,) = set(events.listed()) - set(expired) - set(
        events.listed(f"{events.column} >= :t", t=cutoff)
    ) or {None}
    younger = set(events.listed(f"{events.column} >= :t", t=cutoff))
    results = purge(store)

    # a batch's range took the row inserted into its gap as well
    assert sorted(result.deleted for result in results)[-2:] == [6, 7]
    assert sum(result.deleted for result in results) == len(expired) - 2  # old_gap's in them
    assert set(events.listed()) == younger | {past_the_walk}
    assert made_younger in younger and young_gap in younger
    assert old_gap not in events.listed()
    assert store.survey(CUTOFF).expired == 1, "the verifying survey counts what was left"


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("surveyed_with_holds", [True, False])
def test_planned_ranges_leave_held_rows(
    database: PbxDatabase, open_sql_store: StoreFactory, surveyed_with_holds: bool
) -> None:
    events = Events(database)
    times = [before_cutoff(400 - 5 * i) for i in range(50)] + [after_cutoff(2)]
    events.insert(times)
    window = HoldScope(
        "HOLD-1",
        before_cutoff(300).replace(tzinfo=BERLIN).astimezone(UTC),
        before_cutoff(250).replace(tzinfo=BERLIN).astimezone(UTC),
    )
    holds = Holds((window,))
    held = [
        moment
        for moment in times
        if window.in_window(moment.replace(tzinfo=BERLIN)) and moment < CUTOFF_IN_BERLIN
    ]
    assert held
    store = open_sql_store(database.url, events.table, events.column, batch_size=4)

    # batches for holds the survey did not see plan their ranges again, with those holds
    surveyed = store.survey(CUTOFF, holds if surveyed_with_holds else NO_HOLDS)
    results = purge(store, holds)

    assert surveyed.expired == 50 - (len(held) if surveyed_with_holds else 0)
    assert sum(result.deleted for result in results) == 50 - len(held)
    assert all(0 < result.deleted <= 4 for result in results)
    assert len(events.listed()) == len(held) + 1
    assert store.survey(CUTOFF, holds).expired == 0


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_planned_batches_count_the_rows_they_delete(
    database: PbxDatabase, open_sql_store: StoreFactory
) -> None:
    events = Events(database)
    events.insert([before_cutoff(1000 - 3 * i) for i in range(101)] + [after_cutoff(1)])
    store = open_sql_store(database.url, events.table, events.column, batch_size=10)

    store.survey(CUTOFF)
    batches = []
    for batch in store.batches(CUTOFF):
        batches.append((batch.planned, store.apply(batch, CUTOFF)))

    assert [planned for planned, _ in batches] == [10] * 10 + [1]
    assert all(result.deleted == planned and result.span for planned, result in batches)
    assert events.listed() == events.listed(
        f"{events.column} >= :t", t=events.stored(CUTOFF_IN_BERLIN)
    )


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_the_plan_stays_small_however_many_rows_are_to_go(
    database: PbxDatabase, open_sql_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("retentiond.stores.sql.survey.MAX_SEGMENTS", 3)
    events = Events(database)
    events.insert([before_cutoff(1000 - 3 * i) for i in range(101)] + [after_cutoff(1)])
    store = open_sql_store(database.url, events.table, events.column, batch_size=10)

    store.survey(CUTOFF)
    results = purge(store)

    # three segments of at most 34 rows: batches larger than batch_size, and every row goes
    assert [result.deleted for result in results] == [34, 34, 33]
    assert len(events.listed()) == 1


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_the_survey_reads_the_table_once_for_counts_and_ranges_alike(
    database: PbxDatabase, open_sql_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_sql_throughput import watch

    events = Events(database)
    times = [before_cutoff(400 - 5 * i) for i in range(40)] + [after_cutoff(i) for i in (1, 2)]
    events.insert(times)
    window = HoldScope(
        "HOLD-1",
        before_cutoff(300).replace(tzinfo=BERLIN).astimezone(UTC),
        before_cutoff(250).replace(tzinfo=BERLIN).astimezone(UTC),
    )
    store = open_sql_store(database.url, events.table, events.column, batch_size=8)
    traffic = watch(store._db.engine, monkeypatch)

    surveyed = store.survey(CUTOFF, Holds((window,)))
    reads = [sql for sql, _ in traffic.statements if sql.startswith("SELECT")]
    results = purge(store, Holds((window,)))

    # the key's bounds (from the primary key's index) and one grouped pass: nothing else
    assert len(reads) == 2, reads
    assert "GROUP BY" not in reads[0] and "GROUP BY" in reads[1]
    assert "OVER" not in reads[1], "no window function: it runs on MySQL 5.7 and sorts nothing"
    assert surveyed.total == 42 and surveyed.held == 10 and surveyed.held_by == {"HOLD-1": 10}
    assert surveyed.expired == 30
    assert sum(result.deleted for result in results) == 30
    assert all(0 < result.deleted <= 8 for result in results)
    assert len(events.listed()) == 12


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_the_verifying_survey_counts_without_grouping_and_a_later_walk_plans_again(
    database: PbxDatabase, open_sql_store: StoreFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_sql_throughput import watch

    events = Events(database)
    events.insert([before_cutoff(200 - i) for i in range(20)] + [after_cutoff(1)])
    store = open_sql_store(database.url, events.table, events.column, batch_size=8)
    store.survey(CUTOFF)
    purge(store)
    events.insert([before_cutoff(50), before_cutoff(40)])  # arrive after the walk
    traffic = watch(store._db.engine, monkeypatch)

    verified = store.survey(CUTOFF)
    reads = [sql for sql, _ in traffic.statements if sql.startswith("SELECT")]
    results = purge(store)

    assert verified.expired == 2
    assert len(reads) == 1 and "GROUP BY" not in reads[0], reads
    # the next walk read its own ranges (no segments were kept) and took both rows
    assert [result.deleted for result in results] == [2]
    assert store.survey(CUTOFF).expired == 0
    assert len(events.listed()) == 1
