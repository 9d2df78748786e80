"""How a purge batch talks to the database: few round trips, one summary row per plan (the next
batch's read in the deleting transaction), a range DELETE without ORDER BY, LIMIT or RETURNING,
and counts and day spans that stay exact.

Every test counts what reaches the driver (statements, commits, rollbacks, pings) or compares a
batch's report with the rows that really left the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from databases import ALL_BACKENDS, SERVER_BACKENDS
from pbxdata import PbxDatabase, cel_rows
from sqlalchemy import Engine, event, text

from retentiond.stores.sql.sizing import TABLE_LOCK_BATCH_SIZE
from retentiond.stores.sql.store import SqlStore

CUTOFF = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
WALL_CUTOFF = datetime(2024, 3, 1, 13, 0)  # the cutoff on Berlin's wall clock


@pytest.fixture
def open_store(open_sql_store: Callable[..., SqlStore]) -> Callable[..., SqlStore]:
    def factory(
        url: str, table: str = "cdr", batch_size: int | None = None, **options: Any
    ) -> SqlStore:
        settings: dict[str, Any] = dict(options)
        if batch_size is not None:
            settings["batch_size"] = batch_size
        time_column = "calldate" if table == "cdr" else "eventtime"
        return open_sql_store(url, table, time_column, **settings)

    return factory


@dataclass
class Traffic:
    """What a store sent its driver: statements (with the rows a SELECT returned), commits,
    rollbacks and connection pings."""

    statements: list[tuple[str, int]] = field(default_factory=list)
    commits: int = 0
    rollbacks: int = 0
    pings: int = 0

    @property
    def round_trips(self) -> int:
        return len(self.statements) + self.commits + self.rollbacks + self.pings


def watch(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Traffic:
    traffic = Traffic()

    def executed(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        traffic.statements.append((" ".join(statement.split()), cursor.rowcount))

    event.listen(engine, "after_cursor_execute", executed)
    dialect = engine.dialect

    def counting(name: str, attribute: str) -> None:
        original = getattr(dialect, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            setattr(traffic, attribute, getattr(traffic, attribute) + 1)
            return original(*args, **kwargs)

        monkeypatch.setattr(dialect, name, counted)

    counting("do_commit", "commits")
    counting("do_rollback", "rollbacks")
    counting("do_ping", "pings")
    return traffic


def insert_calls(database: PbxDatabase, calldates: list[datetime]) -> None:
    database.insert("cdr", database.cdr_rows(calldates))


def expired_hours(count: int) -> list[datetime]:
    return [WALL_CUTOFF - timedelta(hours=1 + 3 * i) for i in range(count)]


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
@pytest.mark.parametrize("table", ["cdr", "cel"])
def test_a_purge_batch_costs_three_round_trips_and_no_pings(
    database: PbxDatabase,
    table: str,
    open_store: Callable[..., SqlStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if table == "cel" and database.dialect == "sqlite":
        pytest.skip("no cel table on SQLite")
    database.create(table)
    times = expired_hours(100)
    if table == "cdr":
        insert_calls(database, times)
    else:
        database.insert("cel", cel_rows(times))
    store = open_store(database.url, table, batch_size=25)
    store.survey(CUTOFF)
    traffic = watch(store._db.engine, monkeypatch)

    results = [store.apply(batch, CUTOFF) for batch in store.batches(CUTOFF)]

    assert [result.deleted for result in results] == [25] * 4
    assert traffic.pings == 0, "no pre-ping per checkout"
    if store.strategy == "key_walk":
        # The survey planned every batch's key range: a DELETE and its commit per batch
        assert traffic.round_trips <= 2 * len(results), traffic
        assert traffic.rollbacks == 0, "no planning read of its own"
    else:
        # DELETE, the next batch's plan in the same transaction, its commit; the first plan and
        # its rollback come before the first batch
        assert traffic.round_trips <= 3 * len(results) + 2, traffic
        assert traffic.rollbacks == 1, "only the first plan is read in a transaction of its own"
    assert traffic.commits == len(results)
    deletes = [sql for sql, _ in traffic.statements if sql.startswith("DELETE")]
    assert len(deletes) == 4
    assert not [sql for sql in deletes if "RETURNING" in sql], "no rows sent back"


@pytest.mark.parametrize("database", SERVER_BACKENDS, indirect=True)
def test_each_plan_is_one_summary_row_not_the_batch_s_rows(
    database: PbxDatabase, open_store: Callable[..., SqlStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    database.create("cdr")
    insert_calls(database, expired_hours(300))
    store = open_store(database.url, batch_size=100)
    traffic = watch(store._db.engine, monkeypatch)

    results = [store.apply(batch, CUTOFF) for batch in store.batches(CUTOFF)]

    assert sum(result.deleted for result in results) == 300
    reads = [rows for sql, rows in traffic.statements if sql.startswith("SELECT")]
    assert reads and set(reads) == {1}


@pytest.mark.mariadb
@pytest.mark.parametrize("engine", ["InnoDB", "MyISAM"])
def test_plans_read_about_a_batch_of_index_entries_however_many_rows_remain(
    mariadb_url: str,
    pbx_database: Callable[[str], PbxDatabase],
    open_store: Callable[..., SqlStore],
    engine: str,
) -> None:
    """The purge's cost grows with the rows it deletes, not with the table: each plan reads
    along the index from where the last batch ended (a MIN() under two lower bounds once read
    every expired row that was left, for every batch)."""
    database = pbx_database(mariadb_url)
    database.create("cdr")
    database.execute(f"ALTER TABLE cdr ENGINE={engine}")
    insert_calls(database, [WALL_CUTOFF - timedelta(minutes=1 + i) for i in range(3000)])
    store = open_store(database.url, batch_size=100)

    def index_reads() -> int:
        # the store's one pooled connection: its session's counters
        with store._db.engine.connect() as connection:
            found = connection.execute(text("SHOW SESSION STATUS LIKE 'Handler_read_%'"))
            return sum(int(value) for name, value in found if name != "Handler_read_rnd_deleted")

    before = index_reads()
    deleted = sum(store.apply(batch, CUTOFF).deleted for batch in store.batches(CUTOFF))
    reads = index_reads() - before

    assert deleted == 3000
    # each row once for its plan and once for its delete, and a few entries per statement
    assert reads < 3 * deleted, reads


@pytest.mark.mariadb
def test_keyless_cdr_deletes_a_time_range_without_order_by_or_limit(
    mariadb_url: str,
    pbx_database: Callable[[str], PbxDatabase],
    open_store: Callable[..., SqlStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MIXED binary logging writes such a DELETE as one statement, not every row deleted."""
    database = pbx_database(mariadb_url)
    database.create("cdr")
    insert_calls(database, expired_hours(60))
    store = open_store(database.url, batch_size=25)
    traffic = watch(store._db.engine, monkeypatch)

    assert sum(store.apply(batch, CUTOFF).deleted for batch in store.batches(CUTOFF)) == 60

    deletes = [sql for sql, _ in traffic.statements if sql.startswith("DELETE")]
    assert len(deletes) == 3
    for sql in deletes:
        assert "ORDER BY" not in sql and "LIMIT" not in sql and "RETURNING" not in sql
        assert "calldate < %(bound)s" in sql and "calldate <= %(upto)s" in sql


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_ties_at_a_batch_edge_are_counted_and_spanned_exactly(
    database: PbxDatabase, open_store: Callable[..., SqlStore]
) -> None:
    """Batches never exceed batch_size, and each reports exactly the rows that left the table:
    how many, and the first and last day among them, in its plan and in its result."""
    database.create("cdr")
    day = datetime(2024, 1, 10, 12, 0)
    calldates = [day + timedelta(days=i) for i in range(8)]  # one call a day
    calldates += [day + timedelta(days=8)] * 5  # five at once straddle the first batch's edge
    calldates += [day + timedelta(days=9)] * 23  # more at once than a batch holds
    calldates += [day + timedelta(days=10, hours=i) for i in range(7)]
    calldates += [WALL_CUTOFF, WALL_CUTOFF + timedelta(days=1)]  # not expired
    insert_calls(database, calldates)
    store = open_store(database.url, batch_size=10)

    def rows() -> dict[str, date]:
        with database.engine.connect() as connection:
            found = connection.exec_driver_sql("SELECT uniqueid, calldate FROM cdr")
            return {
                str(key): (
                    when if isinstance(when, datetime) else datetime.fromisoformat(when)
                ).date()
                for key, when in found
            }

    before = rows()
    reports = []
    for batch in store.batches(CUTOFF):
        result = store.apply(batch, CUTOFF)
        after = rows()
        gone = [before[key] for key in before.keys() - after.keys()]
        before = after
        reports.append((batch.planned, batch.span, result.deleted, result.span))
        assert result.deleted == len(gone) == batch.planned <= 10
        assert result.span == batch.span == (min(gone), max(gone))

    assert sum(report[2] for report in reports) == 43
    assert len(before) == 2, "the calls at and after the cutoff stay"


@pytest.mark.mariadb
@pytest.mark.parametrize(
    ("engine", "options", "expected"),
    [
        # Adaptive: a MyISAM table starts at TABLE_LOCK_BATCH_SIZE rows. A batch far faster
        # than batch_time makes the next one ADAPT_GROWTH times larger (the rest: 350 rows)...
        ("MyISAM", {"batch_time": 10}, [TABLE_LOCK_BATCH_SIZE, 350]),
        # ...one far slower makes it ADAPT_SHRINK times smaller, down to ADAPT_MIN_ROWS.
        ("MyISAM", {"batch_time": 1e-6}, [250, 125, 62, 31, 20, 20, 20, 20, 20, 20, 12]),
        # A row-locking engine starts at batch_size's default, 1000.
        ("InnoDB", {"batch_time": 1e-6}, [600]),
        # batch_size fixes the size, whatever the engine.
        ("MyISAM", {"batch_size": 100}, [100] * 6),
        ("MyISAM", {"batch_size": 1000}, [600]),
    ],
)
def test_batches_adapt_to_their_duration_unless_batch_size_is_set(
    mariadb_url: str,
    pbx_database: Callable[[str], PbxDatabase],
    open_store: Callable[..., SqlStore],
    engine: str,
    options: dict[str, Any],
    expected: list[int],
) -> None:
    """MyISAM locks the whole table for each DELETE: the PBX's inserts wait for it, so its
    batches start small and aim at TABLE_LOCK_BATCH_TIME; each batch is sized from how long
    the one before took."""
    database = pbx_database(mariadb_url)
    database.create("cdr")
    database.execute(f"ALTER TABLE cdr ENGINE={engine}")
    insert_calls(database, [WALL_CUTOFF - timedelta(minutes=1 + i) for i in range(600)])
    store = open_store(database.url, **options)

    results = [store.apply(batch, CUTOFF) for batch in store.batches(CUTOFF)]

    assert [result.deleted for result in results] == expected
    assert (store.batch_time is None) == ("batch_size" in options)


@pytest.mark.mariadb
@pytest.mark.parametrize(
    ("table", "engine", "first", "aim"),
    # Seconds the config's reference and `check` promise: a DELETE that locks the table holds
    # the PBX's inserts for as long as it runs; one that locks rows does not, and one that
    # takes a range of the oldest keys (cel: no index on eventtime) is far from where the PBX
    # inserts, and cheaper per row the longer the range.
    [
        ("cdr", "MyISAM", 250, 0.02),
        ("cdr", "InnoDB", 1000, 0.2),
        ("cel", "MyISAM", 250, 0.02),
        ("cel", "InnoDB", 1000, 0.5),
    ],
)
def test_the_default_batches_aim_at_the_engines_duration(
    mariadb_url: str,
    pbx_database: Callable[[str], PbxDatabase],
    open_store: Callable[..., SqlStore],
    table: str,
    engine: str,
    first: int,
    aim: float,
) -> None:
    database = pbx_database(mariadb_url)
    database.create(table)
    database.execute(f"ALTER TABLE {table} ENGINE={engine}")
    times = [WALL_CUTOFF - timedelta(minutes=1 + i) for i in range(2000)]
    if table == "cdr":
        insert_calls(database, times)
    else:
        database.insert("cel", cel_rows(reversed(times)))
    store = open_store(database.url, table)

    results = [store.apply(batch, CUTOFF) for batch in store.batches(CUTOFF)]

    assert store.strategy == ("time_index" if table == "cdr" else "key_walk")
    assert store.batch_time == aim
    # a key walk's batches take whole segments of about a quarter batch each
    assert first * 0.75 < results[0].deleted <= first
    assert sum(result.deleted for result in results) == 2000
    assert any(f"about {aim:g} s each" in line for line in store.describe())
