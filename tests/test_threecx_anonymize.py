"""`action: anonymize` on 3CX call history, with the transforms the 3cx preset uses.

Against a real PostgreSQL with 3CX's own tables (tests/threecx_schema.py). Each test keeps the
fixture's original numbers and names and looks for them afterwards in every row of every
anonymized call; young and held calls must come out byte for byte as they went in. The cutoff is
2024-03-01 12:00 UTC.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import pytest
from pbxdata import PbxDatabase
from structlog.testing import capture_logs
from test_threecx import CUTOFF, after_cutoff, as_set, before_cutoff, shuffled, table_rows
from test_threecx_holds import outside_party, rows_of_calls
from threecx_schema import (
    CL_DEPENDENTS,
    ClHistory,
    cdrbilling_rows,
    cdroutput_rows,
    cl_history,
    create_cdroutput_schema,
    create_cl_schema,
)

from retentiond.config.presets.transforms import THREECX_ANONYMIZE as DEFAULT_ANONYMIZE
from retentiond.errors import StoreError
from retentiond.policy.rules import NO_HOLDS, Holds, HoldScope
from retentiond.policy.subjects import Subject
from retentiond.stores.base import BatchResult
from retentiond.stores.threecx.store import ThreeCxCallsStore

pytestmark = pytest.mark.postgres

StoreFactory = Callable[..., ThreeCxCallsStore]
TABLES = ("cl_calls", "cl_party_info", *CL_DEPENDENTS)
CDR_PERSONAL = (
    "source_dn_number",
    "source_dn_name",
    "source_participant_name",
    "source_participant_phone_number",
    "destination_dn_number",
    "destination_dn_name",
    "destination_participant_name",
    "destination_participant_phone_number",
)


@pytest.fixture
def database(postgres_url: str, pbx_database: Callable[[str], PbxDatabase]) -> PbxDatabase:
    return pbx_database(postgres_url)


@pytest.fixture
def open_store(open_3cx_store: StoreFactory) -> StoreFactory:
    def factory(
        url: str, *, anonymize: Mapping[str, Any] = DEFAULT_ANONYMIZE, batch_size: int = 500
    ) -> ThreeCxCallsStore:
        return open_3cx_store(url, batch_size=batch_size, anonymize=dict(anonymize))

    return factory


def anonymize(
    store: ThreeCxCallsStore, holds: Holds = NO_HOLDS, since: datetime | None = None
) -> list[BatchResult]:
    """What the engine does for `action: anonymize`: plan a batch, apply it, plan the next."""
    return [store.apply(batch, CUTOFF) for batch in store.anonymize_batches(CUTOFF, holds, since)]


def insert(database: PbxDatabase, history: ClHistory, *, foreign_keys: bool = False) -> None:
    """3CX's tables with the history in them; the ids were chosen here, so the sequences that
    hand out new ones (3CX's, and the anonymized copies of party rows) move past them."""
    create_cl_schema(database, foreign_keys=foreign_keys)
    history.insert(database)
    database.execute(
        *(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
            for table in ("cl_calls", "cl_party_info", "cl_participants", "cl_segments")
        )
    )


def everything(database: PbxDatabase, tables: tuple[str, ...] = TABLES) -> dict[str, Any]:
    return {table: as_set(table_rows(database, table)) for table in tables}


def personal_values(history: ClHistory, call_id: int) -> set[str]:
    """Every number, name, extension and file name the fixture wrote for one call."""
    parties = {party["id"]: party for party in history.rows["cl_party_info"]}
    values: set[str] = set()
    for participant in history.rows["cl_participants"]:
        if participant["call_id"] != call_id:
            continue
        party = parties[participant["info_id"]]
        values |= {
            party[name]
            for name in ("dn", "caller_number", "display_name", "firstlastname", "did_number")
        }
        values.add(participant["recording_url"])
    for quality in history.rows["cl_quality"]:
        if quality["call_id"] == call_id:
            values |= {
                quality[f"{side}_{name}"] for side in "ab" for name in ("caller", "number", "name")
            }
    return {value for value in values if value}


def stored_text(database: PbxDatabase, call_id: int) -> list[str]:
    """Every text value now stored in a row of the call, its party rows included."""
    participants = [r for r in table_rows(database, "cl_participants") if r["call_id"] == call_id]
    info_ids = {row["info_id"] for row in participants}
    rows = participants + [r for r in table_rows(database, "cl_party_info") if r["id"] in info_ids]
    rows += [r for r in table_rows(database, "cl_quality") if r["call_id"] == call_id]
    return [value for row in rows for value in row.values() if isinstance(value, str)]


def leaks(values: set[str], stored: list[str]) -> set[str]:
    """Originals still stored: a short one (an extension) as a whole value, longer ones anywhere."""
    return {
        value
        for value in values
        if any(value == text or (len(value) >= 6 and value in text) for text in stored)
    }


@pytest.mark.parametrize("foreign_keys", [False, True], ids=["as_3cx", "with_foreign_keys"])
def test_expired_calls_keep_no_full_number_or_name_and_young_calls_are_untouched(
    database: PbxDatabase, open_store: StoreFactory, foreign_keys: bool
) -> None:
    starts = shuffled(before_cutoff(25), after_cutoff(8))
    history = cl_history(starts, seed=31)
    insert(database, history, foreign_keys=foreign_keys)
    expired = history.call_ids(starts_before=CUTOFF)
    young = history.call_ids() - expired
    originals = {call: personal_values(history, call) for call in expired}
    outside_numbers = {outside_party(history, call)["caller_number"] for call in expired}
    before_young = rows_of_calls(database, young)
    calls_before = as_set(table_rows(database, "cl_calls"))
    store = open_store(database.url, batch_size=6)

    survey = store.anonymize_survey(CUTOFF)
    with capture_logs() as logs:
        results = anonymize(store)

    assert (survey.total, survey.expired, survey.held) == (33, 25, 0)
    assert sum(result.anonymized for result in results) == 25
    assert all(result.deleted == 0 for result in results)
    assert {
        call: leaks(values, stored_text(database, call)) for call, values in originals.items()
    } == {call: set() for call in expired}
    everywhere = [
        value
        for table in ("cl_party_info", "cl_quality", "cl_participants")
        for row in table_rows(database, table)
        for value in row.values()
        if isinstance(value, str)
    ]
    assert not [number for number in outside_numbers if any(number in text for text in everywhere)]
    assert rows_of_calls(database, young) == before_young
    assert as_set(table_rows(database, "cl_calls")) == calls_before
    assert "+4930123xxx" in everywhere, "numbers keep all but their last three digits"
    shown = repr(logs) + repr(results)
    assert not [
        value
        for values in originals.values()
        for value in values
        if len(value) > 4 and value in shown
    ]


def test_second_run_changes_nothing(database: PbxDatabase, open_store: StoreFactory) -> None:
    history = cl_history(shuffled(before_cutoff(15), after_cutoff(3)), seed=32)
    insert(database, history)
    store = open_store(database.url, batch_size=4)
    first = anonymize(store)
    after_first = everything(database)

    second = anonymize(store)

    assert sum(result.anonymized for result in first) == 15
    assert sum(result.anonymized for result in second) == 0
    assert sum(result.counts["unchanged"] for result in second) == 15
    assert everything(database) == after_first


def test_held_calls_and_calls_before_since_are_not_anonymized(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    starts = sorted(before_cutoff(12))  # call ids oldest first
    history = cl_history(starts, seed=33)
    number = outside_party(history, 9)["caller_number"]
    insert(database, history)
    since = starts[4]  # calls 1 to 4 were anonymized by the previous run
    holds = Holds((HoldScope("HOLD-PERSON", subject=Subject.parse([number])),))
    untouched = {1, 2, 3, 4, 9}
    before = rows_of_calls(database, untouched)
    store = open_store(database.url, batch_size=3)

    survey = store.anonymize_survey(CUTOFF, holds, since)
    results = anonymize(store, holds, since)

    assert (survey.expired, survey.held, dict(survey.held_by)) == (7, 1, {"HOLD-PERSON": 1})
    assert sum(result.anonymized for result in results) == 7
    assert rows_of_calls(database, untouched) == before
    for call in set(range(5, 13)) - untouched:
        assert not leaks(personal_values(history, call), stored_text(database, call)), call


def test_cdroutput_rows_are_anonymized_and_the_cl_fields_ignored(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    create_cdroutput_schema(database)
    cdrs = cdroutput_rows(shuffled(before_cutoff(14), after_cutoff(5)), seed=34)
    database.insert("cdroutput", cdrs)
    database.insert("cdrbilling", cdrbilling_rows(cdrs))
    young = [row for row in table_rows(database, "cdroutput") if row["cdr_started_at"] >= CUTOFF]
    billing = as_set(table_rows(database, "cdrbilling"))
    store = open_store(database.url, batch_size=5)

    results = anonymize(store)
    after_first = everything(database, ("cdroutput", "cdrbilling"))
    second = anonymize(store)

    assert sum(result.anonymized for result in results) == 14
    rows = {row["cdr_id"]: row for row in table_rows(database, "cdroutput")}
    for original in cdrs:
        row = rows[original["cdr_id"]]
        if original["cdr_started_at"] >= CUTOFF:
            continue
        for name in CDR_PERSONAL:
            value = original[name]
            assert value != row[name] and (len(value) < 6 or value not in row[name]), name
    assert as_set([rows[row["cdr_id"]] for row in young]) == as_set(young)
    assert as_set(table_rows(database, "cdrbilling")) == billing
    assert sum(result.anonymized for result in second) == 0
    assert everything(database, ("cdroutput", "cdrbilling")) == after_first
    assert any(
        "anonymize: fields of cl_participants, cl_party_info, cl_quality ignored" in line
        for line in store.describe()
    )


@pytest.mark.parametrize(
    ("transforms", "message"),
    [
        (
            {"cl_party_info.phone": "truncate_digits"},
            "anonymize: cl_party_info.phone names no column of cl_party_info (its columns: id, "
            "dn_type, dn, caller_number, display_name, dn_class, firstlastname, did_number); "
            "correct the name or remove it",
        ),
        (
            {"caller_number": "blank"},
            "anonymize: 'caller_number' is not table.column; write the table and the column, "
            "e.g. cl_party_info.caller_number",
        ),
        (
            {"cl_users.name": "blank"},
            "anonymize: cl_users.name names table cl_users, which is not part of 3CX's call "
            "history; use one of cl_calls, cl_participants, cl_party_info, cl_segments, "
            "cl_quality, cdroutput, cdrbilling",
        ),
        (
            {"cl_participants.call_id": {"constant": 0}},
            "anonymize: cl_participants.call_id links the rows of a call; it cannot be "
            "anonymized, remove it",
        ),
        (
            {"cl_calls.start_time": "blank"},
            "anonymize: cl_calls.start_time is TIMESTAMP, not text, and blank writes text; "
            "remove it or use another transform",
        ),
        (
            {"cdroutput.source_dn_name": "blank"},
            "anonymize: no field names a table of the cl_* layout, so its calls would keep every "
            "number and name; add fields of cl_calls, cl_participants, cl_party_info, "
            "cl_quality, cl_segments (the 3cx preset lists them all)",
        ),
    ],
    ids=["no_such_column", "no_table", "no_such_table", "link", "not_text", "other_layout_only"],
)
def test_transforms_that_do_not_fit_the_tables_are_refused_at_open(
    database: PbxDatabase, open_store: StoreFactory, transforms: dict[str, Any], message: str
) -> None:
    create_cl_schema(database)

    with pytest.raises(StoreError) as raised:
        open_store(database.url, anonymize=transforms)

    assert str(raised.value) == f"threecx/3cx-call-history: {message}"


def test_young_call_sharing_an_extension_keeps_its_name(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    old, new = CUTOFF - timedelta(days=3), CUTOFF + timedelta(hours=2)
    history = cl_history([old, new], seed=35)
    parties = {p["id"]: p for p in history.rows["cl_party_info"]}
    shared = [p for p in history.rows["cl_participants"] if parties[p["info_id"]]["dn_type"] == 0]
    shared[1]["info_id"] = shared[0]["info_id"]  # both calls with the same extension
    insert(database, history, foreign_keys=True)
    name = parties[shared[0]["info_id"]]["display_name"]
    store = open_store(database.url)

    anonymize(store)

    assert name not in stored_text(database, 1)
    assert name in stored_text(database, 2)
    assert rows_of_calls(database, {2})["cl_party_info"] >= {
        tuple(sorted(parties[shared[0]["info_id"]].items()))
    }
