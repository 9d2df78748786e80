"""Time columns holding epoch seconds, as Asterisk writes them, dated and purged at the cutoff.

- cdr_sqlite3_custom / res_cdrel_custom: the 23.x sample (asterisk/asterisk
  configs/samples/cdr_sqlite3_custom.conf.sample, tag 23.3.0) documents `start(int64)` and
  `start(float)`; res/cdrel_custom/formatters.c formats them as "%ld" and "%.6f" and
  writers.c binds every value with sqlite3_bind_text, so the untyped column holds text.
- cdr_pgsql (asterisk/asterisk cdr/cdr_pgsql.c, tag 23.3.0): a `start`/`calldate` column whose
  type is int* gets `tv_sec`, one of type float* gets seconds with microseconds.

The cutoff is 2024-03-01 12:00 UTC.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from databases import ALL_BACKENDS
from pbxdata import PbxDatabase
from sqlalchemy import text
from test_sql_store import StoreFactory, open_store, purge

from retentiond.policy.rules import Holds, HoldScope
from retentiond.stores.db.timecols import hold_bound
from retentiond.stores.sql.survey import UNDATED

__all__ = ["open_store"]  # a fixture used by name

CUTOFF = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
SECOND = int(CUTOFF.timestamp())
DAY = 86_400
# res_cdrel_custom's CREATE TABLE for the 23.x sample's [cdr_master] columns (config.c:
# "CREATE TABLE %q (AcctId INTEGER PRIMARY KEY, %s)"): untyped columns, no src or dst.
CDR_MASTER_DDL = (
    "CREATE TABLE cdr (AcctId INTEGER PRIMARY KEY, calldate, literal, clid, dcontext, channel, "
    "dstchannel, lastapp, lastdata, duration, billsec, disposition, amaflags, accountcode, "
    "uniqueid, userfield, ds_store)"
)


def cdr_master_row(calldate: object, duration: object = "42") -> dict[str, object]:
    return {
        "calldate": calldate,
        "literal": "some literal",
        "clid": '"Erika Mustermann" <+493077700010>',
        "dcontext": "from-internal",
        "channel": "PJSIP/1001-00000001",
        "dstchannel": "PJSIP/trunk-00000002",
        "lastapp": "Dial",
        "lastdata": "PJSIP/+493077700099@trunk,60",
        "duration": duration,
        "billsec": "40",
        "disposition": "ANSWERED",
        "amaflags": "DOCUMENTATION",
        "accountcode": "",
        "uniqueid": "1700000000.1",
        "userfield": "",
        "ds_store": "",
    }


def int64_text(offset: int) -> str:
    return f"{SECOND + offset:d}"  # formatters.c: "%ld"


def float_text(offset: float) -> str:
    return f"{SECOND + offset:.6f}"  # formatters.c: "%.6f"


def sqlite_cdr(database: PbxDatabase, calldates: list[object]) -> None:
    database.execute(CDR_MASTER_DDL)
    database.insert("cdr", [cdr_master_row(c) for c in calldates])


def remaining(database: PbxDatabase) -> list[object]:
    with database.engine.connect() as connection:
        return list(connection.execute(text("SELECT calldate FROM cdr ORDER BY AcctId")).scalars())


@pytest.mark.parametrize("form", [int64_text, float_text], ids=["int64", "float"])
def test_epoch_text_of_res_cdrel_custom_is_purged_at_the_cutoff(
    sqlite_url: str,
    pbx_database: Callable[[str], PbxDatabase],
    open_store: StoreFactory,
    form: Callable[[float], str],
) -> None:
    database = pbx_database(sqlite_url)
    offsets = [-365 * DAY, -100 * DAY, -2, -1, 0, 1, 30 * DAY]
    sqlite_cdr(database, [form(o) for o in offsets])
    store = open_store(sqlite_url)

    survey = store.survey(CUTOFF)
    assert (survey.total, survey.expired, survey.skipped) == (7, 4, {})
    assert survey.oldest == CUTOFF - timedelta(days=365)
    assert "epoch seconds stored as text" in " ".join(store.describe())
    assert sum(result.deleted for result in purge(store)) == 4
    assert remaining(database) == [form(0), form(1), form(30 * DAY)]
    assert store.survey(CUTOFF).expired == 0


def test_within_the_cutoff_second_a_call_is_kept_never_deleted_early(
    sqlite_url: str, pbx_database: Callable[[str], PbxDatabase], open_store: StoreFactory
) -> None:
    database = pbx_database(sqlite_url)
    sqlite_cdr(database, [float_text(-0.25), float_text(0.25), float_text(0.75)])
    store = open_store(sqlite_url)
    purge(store, CUTOFF + timedelta(seconds=0.5))
    # 0.25 is before the cutoff, in its second: compared by whole seconds it waits a run
    assert remaining(database) == [float_text(0.25), float_text(0.75)]


def test_numbers_that_are_no_epoch_are_undated_and_kept(
    sqlite_url: str, pbx_database: Callable[[str], PbxDatabase], open_store: StoreFactory
) -> None:
    """A duration, milliseconds or garbage in the time column is counted, never read as a time."""
    database = pbx_database(sqlite_url)
    odd = ["42", "0", "1709294400000", "1709294400x", "", "-1709294400"]
    sqlite_cdr(database, [int64_text(-DAY), int64_text(-2 * DAY), int64_text(DAY), *odd])
    store = open_store(sqlite_url)

    survey = store.survey(CUTOFF)
    assert survey.expired == 2
    assert survey.skipped == {UNDATED: len(odd)}
    purge(store)
    assert remaining(database) == [int64_text(DAY), *odd]


def test_mixed_forms_take_the_most_common_and_count_the_rest_undated(
    sqlite_url: str, pbx_database: Callable[[str], PbxDatabase], open_store: StoreFactory
) -> None:
    database = pbx_database(sqlite_url)
    dates = ["2023-01-01 10:00:00", "2024-12-01 10:00:00"]
    epochs = [int64_text(-DAY), int64_text(-2 * DAY), int64_text(DAY)]
    sqlite_cdr(database, [*dates, *epochs])
    store = open_store(sqlite_url)

    survey = store.survey(CUTOFF)
    assert (survey.expired, survey.skipped) == (2, {UNDATED: 2})
    purge(store)
    assert remaining(database) == [*dates, int64_text(DAY)]


@pytest.mark.parametrize("declared", ["", "INTEGER", "REAL", "NUMERIC"])
def test_numbers_in_an_sqlite_column_of_any_affinity_are_epoch_seconds(
    sqlite_url: str,
    pbx_database: Callable[[str], PbxDatabase],
    open_store: StoreFactory,
    declared: str,
) -> None:
    database = pbx_database(sqlite_url)
    database.execute(f"CREATE TABLE calls (id INTEGER PRIMARY KEY, started {declared})")
    values = [SECOND - DAY, SECOND - 0.5, SECOND, SECOND + 10.25, 42]
    database.insert("calls", [{"started": v} for v in values])
    store = open_store(sqlite_url, "calls", "started")

    survey = store.survey(CUTOFF)
    assert (survey.expired, survey.skipped) == (2, {UNDATED: 1})  # 42 is a duration, no time
    purge(store)
    assert database.scalar("SELECT COUNT(*) FROM calls") == 3
    assert database.scalar("SELECT COUNT(*) FROM calls WHERE started < :s", s=SECOND) == 1


def test_a_hold_keeps_its_window_of_epoch_text(
    sqlite_url: str, pbx_database: Callable[[str], PbxDatabase], open_store: StoreFactory
) -> None:
    database = pbx_database(sqlite_url)
    sqlite_cdr(database, [int64_text(-d * DAY) for d in range(1, 11)])
    store = open_store(sqlite_url)
    window = HoldScope(
        hold_id="HOLD-1",
        start=CUTOFF - timedelta(days=6, hours=12),
        end=CUTOFF - timedelta(days=3, hours=12),
    )
    holds = Holds(scopes=(window,))

    survey = store.survey(CUTOFF, holds)
    assert (survey.expired, survey.held) == (7, 3)
    for batch in store.batches(CUTOFF, holds):
        store.apply(batch, CUTOFF)
    assert remaining(database) == [int64_text(-d * DAY) for d in (4, 5, 6)]


SERVER_COLUMNS = {
    "mariadb": ["BIGINT", "INT", "DOUBLE", "DECIMAL(16,6)"],
    "postgresql": ["bigint", "integer", "double precision", "numeric(16,6)", "numeric"],
}


@pytest.mark.parametrize(
    ("database", "declared"),
    [
        pytest.param(
            backend.values[0], declared, marks=backend.marks, id=f"{backend.values[0]}-{declared}"
        )
        for backend in ALL_BACKENDS[:2]
        for declared in SERVER_COLUMNS[backend.values[0]]
    ],
    indirect=["database"],
)
def test_epoch_columns_of_every_numeric_type_are_purged_at_the_cutoff(
    database: PbxDatabase, open_store: StoreFactory, declared: str
) -> None:
    database.execute(f"CREATE TABLE calls (id INTEGER PRIMARY KEY, started {declared} NOT NULL)")
    fraction = "INT" not in declared.upper()
    values: list[float] = [SECOND - 365 * DAY, SECOND - 1, SECOND, SECOND + DAY, 42]
    if fraction:
        values += [SECOND - 0.5, SECOND + 0.25]
    database.insert("calls", [{"id": i, "started": v} for i, v in enumerate(values)])
    store = open_store(database.url, "calls", "started")

    expired = 3 if fraction else 2
    survey = store.survey(CUTOFF)
    assert (survey.expired, survey.skipped) == (expired, {UNDATED: 1})  # 42: a duration
    assert survey.oldest == CUTOFF - timedelta(days=365)
    assert sum(result.deleted for result in purge(store)) == expired
    assert database.scalar("SELECT COUNT(*) FROM calls") == len(values) - expired
    assert database.scalar("SELECT COUNT(*) FROM calls WHERE started = 42") == 1
    assert database.scalar("SELECT COUNT(*) FROM calls WHERE started < :s", s=SECOND) == 1


@pytest.mark.parametrize(
    ("side", "instant", "bound"),
    [
        ("from", datetime(2024, 3, 1, 12, 0, 0, 500000, tzinfo=UTC), "1709294400"),
        ("to", datetime(2024, 3, 1, 12, 0, 0, 500000, tzinfo=UTC), "1709294401"),
        ("from", datetime(1990, 1, 1, tzinfo=UTC), "1000000000"),  # before every dated value
        ("to", datetime(1990, 1, 1, tzinfo=UTC), "1000000000"),
        ("to", datetime(2300, 1, 1, tzinfo=UTC), "99999999999"),  # past every dated value
    ],
)
def test_hold_edges_of_epoch_text_round_outwards_and_sort_as_text(
    side: Any, instant: datetime, bound: str
) -> None:
    assert hold_bound("epoch_text", "sqlite", instant, UTC, side) == bound
    stored = ["1000000000", "1709294400.999999", "9999999999.5"]
    # text order of the bound among stored values is their numeric order
    assert [s < bound for s in stored] == [float(s) < float(bound) for s in stored]
