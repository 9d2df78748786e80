"""Anonymizing SQL tables in place, on real databases.

The FreePBX cdr layout on all three: no key on MariaDB (rows are identified by their values),
ctid on PostgreSQL, rowid on SQLite. The cutoff is 2024-03-01 12:00 UTC, 13:00 in Berlin.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from databases import ALL_BACKENDS
from pbxdata import POSTGRES_CDR, PbxDatabase, cdr_rows
from sqlalchemy import text

from retentiond.errors import StoreError
from retentiond.policy.rules import NO_HOLDS, Holds, HoldScope
from retentiond.stores.base import BatchResult
from retentiond.stores.sql.store import SqlStore

BERLIN = ZoneInfo("Europe/Berlin")
CUTOFF = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
CUTOFF_IN_BERLIN = datetime(2024, 3, 1, 13, 0)

NUMBERS = ["src", "dst", "cnum", "did", "outbound_cnum"]
BLANKED = ["clid", "cnam", "outbound_cnam", "dst_cnam", "uniqueid", "linkedid", "channel"]
BLANKED += ["dstchannel", "lastdata", "recordingfile", "userfield"]
FREEPBX_TRANSFORMS = {column: "truncate_digits" for column in NUMBERS} | {
    column: "blank" for column in BLANKED
}

StoreFactory = Callable[..., SqlStore]


@pytest.fixture
def open_store(open_sql_store: StoreFactory) -> StoreFactory:
    """Open a SqlStore on a URL with any store settings; closed after the test."""
    return open_sql_store


def create_freepbx_cdr(database: PbxDatabase, calldates: list[datetime]) -> list[dict[str, Any]]:
    """FreePBX's cdr in every dialect (SQLite takes the PostgreSQL DDL); the rows inserted."""
    if database.dialect == "sqlite":
        database.execute(*POSTGRES_CDR)
    else:
        database.create("cdr")
    rows = cdr_rows(calldates)
    if database.dialect == "sqlite":  # SQLite stores the times as text
        stored = [row | {"calldate": row["calldate"].strftime("%Y-%m-%d %H:%M:%S")} for row in rows]
    else:
        stored = rows
    database.insert("cdr", stored)
    return rows


def table_rows(database: PbxDatabase) -> dict[int, dict[str, Any]]:
    """Every row of cdr by its `sequence` (unique in the fixture, never transformed)."""
    with database.engine.connect() as connection:
        result = connection.execute(text("SELECT * FROM cdr")).mappings()
        return {row["sequence"]: dict(row) for row in result}


def anonymize(
    store: SqlStore, holds: Holds = NO_HOLDS, since: datetime | None = None
) -> list[BatchResult]:
    batches = store.anonymize_batches(CUTOFF, holds, since)
    return [store.apply(batch, CUTOFF) for batch in batches]


def naive(row: dict[str, Any]) -> datetime:
    calldate = row["calldate"]
    return datetime.fromisoformat(calldate) if isinstance(calldate, str) else calldate


EXPIRED = [CUTOFF_IN_BERLIN - timedelta(hours=1 + 5 * i) for i in range(60)]
YOUNGER = [CUTOFF_IN_BERLIN + timedelta(hours=2 * i) for i in range(5)]
WINDOW = HoldScope("HOLD-1", datetime(2024, 2, 22, tzinfo=UTC), datetime(2024, 2, 24, tzinfo=UTC))


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_freepbx_cdr_keeps_no_number_uniqueid_or_recording_and_a_rerun_changes_nothing(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    originals = create_freepbx_cdr(database, EXPIRED + YOUNGER)
    before = table_rows(database)
    store = open_store(database.url, batch_size=7, anonymize=FREEPBX_TRANSFORMS)
    holds = Holds((WINDOW,))
    held = {r["sequence"] for r in originals if WINDOW.in_window(naive(r).replace(tzinfo=BERLIN))}
    expired = {r["sequence"] for r in originals if naive(r) < CUTOFF_IN_BERLIN} - held
    assert held and expired

    survey = store.anonymize_survey(CUTOFF, holds)
    first = anonymize(store, holds)
    second = anonymize(store, holds)

    assert store.anonymizes
    assert (survey.expired, survey.held, survey.held_by) == (
        len(expired),
        len(held),
        {"HOLD-1": len(held)},
    )
    assert sum(result.anonymized for result in first) == len(expired)
    assert all(result.deleted == 0 for result in first)
    assert sum(result.anonymized for result in second) == 0
    assert sum(result.counts.get("unchanged", 0) for result in second) == len(expired)
    after = table_rows(database)
    assert len(after) == len(originals)
    anonymized_text = " ".join(str(after[n]) for n in expired)
    for row in originals:
        if row["sequence"] not in expired:
            assert after[row["sequence"]] == before[row["sequence"]]
            continue
        secrets_of_row = [row["uniqueid"], row["linkedid"], row["recordingfile"], row["cnam"]]
        secrets_of_row += [row[c] for c in NUMBERS if len(row[c]) >= 6]  # not extensions
        for secret in filter(None, secrets_of_row):
            assert secret not in anonymized_text
        assert after[row["sequence"]]["src"].endswith("xxx")
        assert after[row["sequence"]]["duration"] == row["duration"]


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_coarsening_the_time_column_visits_every_row_once(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    """Calls every 10 minutes: coarsened to the hour, six share a time; the walk must still
    read each row once and never pick a rewritten row up again."""
    calldates = [CUTOFF_IN_BERLIN - timedelta(minutes=5 + 10 * i) for i in range(40)]
    create_freepbx_cdr(database, calldates + YOUNGER)
    before = table_rows(database)
    store = open_store(
        database.url,
        batch_size=4,
        anonymize={"calldate": {"coarsen_time": "hour"}, "src": "truncate_digits"},
    )

    planned: list[int] = []
    for _ in range(2):
        batches = list(store.anonymize_batches(CUTOFF))
        planned.append(sum(batch.planned for batch in batches))
        results = [store.apply(batch, CUTOFF) for batch in batches]
    after = table_rows(database)

    assert planned == [40, 40]
    assert sum(result.anonymized for result in results) == 0
    coarse = [naive(row) for n, row in after.items() if naive(before[n]) < CUTOFF_IN_BERLIN]
    assert len(coarse) == 40
    assert all(moment.minute == moment.second == 0 for moment in coarse)
    assert {n for n in after if naive(after[n]) >= CUTOFF_IN_BERLIN} == {
        n for n in before if naive(before[n]) >= CUTOFF_IN_BERLIN
    }


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_since_leaves_what_the_previous_run_covered(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    originals = create_freepbx_cdr(database, EXPIRED)
    before = table_rows(database)
    store = open_store(database.url, anonymize={"src": "truncate_digits"})
    since = CUTOFF - timedelta(days=3)
    newer = {r["sequence"] for r in originals if naive(r) >= datetime(2024, 2, 27, 13)}

    survey = store.anonymize_survey(CUTOFF, since=since)
    anonymized = sum(result.anonymized for result in anonymize(store, since=since))

    after = table_rows(database)
    assert survey.expired == anonymized == len(newer) == 15
    changed = {n for n in after if after[n] != before[n]}
    assert changed == newer


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_a_row_changed_after_planning_is_not_overwritten(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    originals = create_freepbx_cdr(database, EXPIRED[:5])
    store = open_store(database.url, anonymize={"src": "truncate_digits", "clid": "blank"})
    (batch,) = store.anonymize_batches(CUTOFF)
    target = originals[2]["sequence"]
    database.execute("UPDATE cdr SET src = '+4930777666' WHERE sequence = :n", n=target)

    result = store.apply(batch, CUTOFF)

    assert (result.anonymized, result.skipped) == (4, {"changed": 1})
    after = table_rows(database)
    assert (after[target]["src"], after[target]["clid"]) == ("+4930777666", originals[2]["clid"])


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_blank_empties_a_nullable_number_and_refuses_a_not_null_one(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    time_type = {"mariadb": "DATETIME", "postgresql": "TIMESTAMP", "sqlite": "TEXT"}
    database.execute(
        f"CREATE TABLE calls (id INTEGER PRIMARY KEY, started {time_type[database.dialect]} "
        "NOT NULL, account INTEGER NULL, duration INTEGER NOT NULL)"
    )
    started: Any = datetime(2024, 2, 1, 10)
    if database.dialect == "sqlite":
        started = "2024-02-01 10:00:00"
    database.insert("calls", [{"id": 1, "started": started, "account": 4711, "duration": 30}])

    with pytest.raises(StoreError, match=r"column duration .* cannot be NULL.*constant: 0"):
        open_store(database.url, "calls", "started", anonymize={"duration": "blank"})
    with pytest.raises(StoreError, match=r"column account .*truncate_digits would write x"):
        open_store(database.url, "calls", "started", anonymize={"account": "truncate_digits"})
    store = open_store(database.url, "calls", "started", anonymize={"account": "blank"})
    assert sum(result.anonymized for result in anonymize(store)) == 1
    assert database.scalar("SELECT account FROM calls") is None


def test_smallest_group_is_the_rarest_combination_of_kept_values(
    sqlite_url: str, pbx_database: Callable[[str], PbxDatabase], open_store: StoreFactory
) -> None:
    database = pbx_database(sqlite_url)
    database.execute("CREATE TABLE calls (started TEXT, dcontext TEXT, src TEXT, clid TEXT)")
    rows = [("from-trunk", "+49301234xxx")] * 3 + [("from-internal", "2xx")] * 2
    rows += [("from-trunk", "2xx")] * 4
    database.insert(
        "calls",
        [
            {"started": "2024-02-01 10:00:00", "dcontext": c, "src": s, "clid": secrets.token_hex()}
            for c, s in rows
        ]
        + [{"started": "2024-03-05 10:00:00", "dcontext": "x", "src": "y", "clid": ""}],
    )
    store = open_store(
        sqlite_url,
        "calls",
        "started",
        anonymize={"src": "truncate_digits", "dcontext": {"constant": "c"}, "clid": "blank"},
    )

    assert store.smallest_group(CUTOFF) == 2  # clid is blanked: every row alike there
    assert store.smallest_group(datetime(2024, 1, 1, tzinfo=UTC)) is None


@pytest.mark.mariadb
def test_anonymizing_needs_update_on_the_transformed_columns_only(
    mariadb_server: Any, mariadb_url: str, pbx_database: Callable[[str], PbxDatabase],
    open_store: StoreFactory,
) -> None:  # fmt: skip
    pbx_database(mariadb_url).create("cdr")
    user, password = f"rtd_{secrets.token_hex(4)}", "least privilege"
    name = mariadb_url.rsplit("/", 1)[1]
    with mariadb_server.connect() as connection:
        connection.execute(text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
        connection.execute(
            text(f"GRANT SELECT, DELETE, UPDATE (src) ON {name}.cdr TO '{user}'@'%'")
        )
    try:
        url = mariadb_url.replace("root@", f"{user}:{password.replace(' ', '%20')}@")
        store = open_store(url, anonymize={"src": "truncate_digits", "clid": "blank"})
        missing, _ = store.privileges()
        plain = open_store(url)
        assert missing == ["missing privilege UPDATE(clid) on cdr"]
        assert plain.privileges()[0] == []
    finally:
        with mariadb_server.connect() as connection:
            connection.execute(text(f"DROP USER IF EXISTS '{user}'@'%'"))
