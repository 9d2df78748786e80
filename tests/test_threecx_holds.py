"""Holds, Art. 15 find and Art. 17 erase on 3CX call history, against a real PostgreSQL.

The tables are 3CX's own (tests/threecx_schema.py). A person is named by their number in
international form, as a hold or an erasure request gives it; 3CX stores it as the trunk
delivered it (+49..., 0049..., 030..., sometimes with blanks). Every test compares what is in the
tables before and after, call by call. The cutoff is 2024-03-01 12:00 UTC.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pbxdata import PbxDatabase
from sqlalchemy import Connection, text
from structlog.testing import capture_logs
from test_threecx import BERLIN, CUTOFF, after_cutoff, as_set, before_cutoff, column, table_rows
from threecx_schema import (
    ClHistory,
    cdrbilling_rows,
    cdroutput_rows,
    cl_history,
    create_cdroutput_schema,
    create_cl_schema,
)

from retentiond.policy.rules import NO_HOLDS, Holds, HoldScope
from retentiond.policy.subjects import Subject
from retentiond.stores.base import Batch, BatchResult
from retentiond.stores.threecx.store import ThreeCxCallsStore

pytestmark = pytest.mark.postgres

StoreFactory = Callable[..., ThreeCxCallsStore]
NOW = CUTOFF + timedelta(days=90)


@pytest.fixture
def database(postgres_url: str, pbx_database: Callable[[str], PbxDatabase]) -> PbxDatabase:
    return pbx_database(postgres_url)


@pytest.fixture
def open_store(open_3cx_store: StoreFactory) -> StoreFactory:
    def factory(url: str, *, batch_size: int = 500) -> ThreeCxCallsStore:
        return open_3cx_store(url, batch_size=batch_size)

    return factory


def purge(
    store: ThreeCxCallsStore, holds: Holds = NO_HOLDS, cutoff: datetime = CUTOFF
) -> list[BatchResult]:
    return [store.apply(batch, cutoff) for batch in store.batches(cutoff, holds)]


def erase(store: ThreeCxCallsStore, subject: Subject, holds: Holds = NO_HOLDS) -> list[Batch]:
    """What `retentiond erase` does: plan the subject's batches, apply each at `now`."""
    batches = []
    for batch in store.subject_batches(subject, holds):
        batches.append(batch)
        store.apply(batch, NOW)
    return batches


def outside_party(history: ClHistory, call_id: int) -> dict[str, Any]:
    """The outside caller's cl_party_info row of a call (one of its own per call)."""
    parties = {party["id"]: party for party in history.rows["cl_party_info"]}
    for participant in history.rows["cl_participants"]:
        party = parties[participant["info_id"]]
        if participant["call_id"] == call_id and party["dn_type"] == 1:
            return party
    raise AssertionError(f"call {call_id} has no outside party")


def store_number_as(history: ClHistory, call_id: int, stored: str) -> None:
    """3CX stored this call's outside number as `stored`: in its party row and quality report."""
    outside_party(history, call_id)["caller_number"] = stored
    for quality in history.rows["cl_quality"]:
        if quality["call_id"] == call_id:
            quality["a_caller"] = quality["a_number"] = stored


def extension_of(history: ClHistory, call_id: int) -> str:
    parties = {party["id"]: party for party in history.rows["cl_party_info"]}
    for participant in history.rows["cl_participants"]:
        party = parties[participant["info_id"]]
        if participant["call_id"] == call_id and party["dn_type"] == 0:
            return str(party["dn"])
    raise AssertionError(f"call {call_id} has no extension")


def calls_with_extension(history: ClHistory, extension: str) -> set[int]:
    parties = {party["id"]: party for party in history.rows["cl_party_info"]}
    return {
        participant["call_id"]
        for participant in history.rows["cl_participants"]
        if parties[participant["info_id"]]["dn"] == extension
    }


def rows_of_calls(database: PbxDatabase, calls: set[int]) -> dict[str, Any]:
    """Every row that belongs to these calls, table by table, as stored."""
    participants = [
        row for row in table_rows(database, "cl_participants") if row["call_id"] in calls
    ]
    info_ids = {row["info_id"] for row in participants}
    return {
        "cl_calls": as_set([r for r in table_rows(database, "cl_calls") if r["id"] in calls]),
        "cl_participants": as_set(participants),
        "cl_segments": as_set(
            [r for r in table_rows(database, "cl_segments") if r["call_id"] in calls]
        ),
        "cl_quality": as_set(
            [r for r in table_rows(database, "cl_quality") if r["call_id"] in calls]
        ),
        "cl_party_info": as_set(
            [r for r in table_rows(database, "cl_party_info") if r["id"] in info_ids]
        ),
    }


def national(number: str) -> str:
    """+4989... as dialled in Germany: 089..."""
    assert number.startswith("+49")
    return "0" + number[3:]


# -- holds -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("foreign_keys", [False, True], ids=["as_3cx", "with_foreign_keys"])
def test_held_calls_survive_expiry_with_all_their_rows(
    database: PbxDatabase, open_store: StoreFactory, foreign_keys: bool
) -> None:
    starts = sorted(before_cutoff(30)) + after_cutoff(5)  # call ids oldest first
    history = cl_history(starts, seed=5)
    number = outside_party(history, 3)["caller_number"]
    store_number_as(history, 3, national(number))  # the same person, stored two ways
    store_number_as(history, 20, number)
    store_number_as(history, 5, number + "1")  # longer numbers that contain theirs
    store_number_as(history, 6, "0049" + number[3:] + "9")
    create_cl_schema(database, foreign_keys=foreign_keys)
    history.insert(database)
    extension = extension_of(history, 22)
    by_extension = calls_with_extension(history, extension) & set(range(21, 27))
    assert calls_with_extension(history, extension) - by_extension - {3, 10, 11, 12, 20}, (
        "the extension takes part in expired calls outside the window too"
    )
    holds = Holds(
        (
            HoldScope("HOLD-WINDOW", starts[9], starts[12]),  # calls 10, 11 and 12
            HoldScope("HOLD-PERSON", subject=Subject.parse([number])),
            HoldScope("HOLD-EXT", starts[20], starts[26], Subject.parse(extensions=[extension])),
        )
    )
    held = {10, 11, 12, 3, 20} | by_extension
    young = set(range(31, 36))
    before = rows_of_calls(database, held | young)
    store = open_store(database.url, batch_size=7)

    survey = store.survey(CUTOFF, holds)
    assert (survey.total, survey.expired, survey.held) == (35, 30 - len(held), len(held))
    assert survey.held_by == {"HOLD-WINDOW": 3, "HOLD-PERSON": 2, "HOLD-EXT": len(by_extension)}
    results = purge(store, holds)

    assert sum(result.deleted for result in results) == 30 - len(held)
    assert column(database, "cl_calls", "id") == held | young
    assert rows_of_calls(database, held | young) == before
    assert store.survey(CUTOFF, holds).expired == 0
    assert store.survey(CUTOFF).expired == len(held), "without the holds they are due"


def give_number(connection: Connection, number: str, call: int) -> None:
    """The call's outside party (dn_type 1) now has `number`: as a PBX correcting it would."""
    connection.execute(
        text(
            "UPDATE cl_party_info SET caller_number = :number WHERE id IN (SELECT info_id "
            "FROM cl_participants WHERE call_id = :call) AND dn_type = 1"
        ),
        {"number": number, "call": call},
    )


def test_apply_keeps_to_the_calls_and_holds_it_was_planned_with(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    starts = sorted(before_cutoff(6))
    history = cl_history(starts, seed=8)
    number = outside_party(history, 1)["caller_number"]
    create_cl_schema(database)
    history.insert(database)
    holds = Holds((HoldScope("HOLD-PERSON", subject=Subject.parse([number])),))
    store = open_store(database.url)

    (batch,) = list(store.batches(CUTOFF, holds))[:1]
    assert batch.planned == 5
    # After planning: the person's number shows up in call 2, and a call older still arrives.
    with database.engine.begin() as connection:
        give_number(connection, national(number), call=2)
    late = cl_history([CUTOFF - timedelta(days=400)], seed=9)
    late.rows["cl_calls"][0]["id"] = 99
    database.insert("cl_calls", late.rows["cl_calls"])
    result = store.apply(batch, CUTOFF)

    assert result.deleted == 4
    assert column(database, "cl_calls", "id") == {1, 2, 99}
    assert column(database, "cl_participants", "call_id") == {1, 2}


@pytest.mark.parametrize("foreign_keys", [False, True], ids=["as_3cx", "with_foreign_keys"])
def test_planned_calls_held_or_no_longer_due_at_apply_keep_every_row_and_shared_party(
    database: PbxDatabase, open_store: StoreFactory, foreign_keys: bool
) -> None:
    """Only the calls still due and unheld when the batch is applied lose their rows: a call
    that became held and one no longer due keep their segments, quality report, participants
    and party rows, the extension rows they share with deleted calls among them."""
    starts = sorted(before_cutoff(10))
    history = cl_history(starts, seed=8)
    number = outside_party(history, 1)["caller_number"]
    rated = {row["call_id"] for row in history.rows["cl_quality"]}
    segmented = {row["call_id"] for row in history.rows["cl_segments"]}
    held, moved = sorted((rated & segmented) - {1})[:2]
    create_cl_schema(database, foreign_keys=foreign_keys)
    history.insert(database)
    holds = Holds((HoldScope("HOLD-PERSON", subject=Subject.parse([number])),))
    store = open_store(database.url)

    (batch,) = list(store.batches(CUTOFF, holds))[:1]
    assert batch.planned == 9
    # After planning: the person's number shows up in one planned call, another moves past
    # the cutoff (its start corrected)
    with database.engine.begin() as connection:
        give_number(connection, national(number), call=held)
        connection.execute(
            text("UPDATE cl_calls SET start_time = :start WHERE id = :call"),
            {"start": CUTOFF + timedelta(days=1), "call": moved},
        )
    kept = {1, held, moved}
    gone = history.call_ids() - kept
    shared = history.party_ids_of({held, moved}) & history.party_ids_of(gone)
    assert shared, "the kept calls share party rows with deleted ones"
    before = rows_of_calls(database, kept)
    result = store.apply(batch, CUTOFF)

    assert result.deleted == 7
    assert rows_of_calls(database, kept) == before
    assert all(before[table] for table in before), "each table keeps rows of these calls"
    assert column(database, "cl_calls", "id") == kept
    for table in ("cl_segments", "cl_quality", "cl_participants"):
        had = {row["call_id"] for row in history.rows[table]}
        assert column(database, table, "call_id") == had & kept, table
    assert column(database, "cl_party_info", "id") == history.party_ids_of(kept)


def test_held_cdroutput_call_keeps_every_segment_and_its_billing(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    create_cdroutput_schema(database)
    cdrs = cdroutput_rows(sorted(before_cutoff(8)))  # rows 0 and 1 are one call, 2 and 3 ...
    number = cdrs[2]["source_participant_phone_number"]
    cdrs[3]["source_participant_phone_number"] = "+4940111222"  # a transfer: a colleague
    cdrs[6]["source_participant_phone_number"] = national(number)
    billing = cdrbilling_rows(cdrs)
    database.insert("cdroutput", cdrs)
    database.insert("cdrbilling", billing)
    held_ids = {cdrs[i]["cdr_id"] for i in (2, 3, 6, 7)}
    holds = Holds((HoldScope("HOLD-PERSON", subject=Subject.parse([number])),))
    kept_billing = as_set(
        [r for r in table_rows(database, "cdrbilling") if r["cdr_id"] in held_ids]
    )
    store = open_store(database.url)

    survey = store.survey(CUTOFF, holds)
    assert (survey.expired, survey.held, survey.held_by) == (4, 4, {"HOLD-PERSON": 4})
    purge(store, holds)

    assert column(database, "cdroutput", "cdr_id") == held_ids
    assert as_set(table_rows(database, "cdrbilling")) == kept_billing


# -- find and erase --------------------------------------------------------------------------------


def subject_history() -> tuple[ClHistory, str, list[datetime]]:
    """Twelve calls; the person calls in 2, 5, 8 (each stored differently) and 11 (young)."""
    starts = sorted(before_cutoff(10)) + after_cutoff(2)
    history = cl_history(starts, seed=21)
    number = outside_party(history, 2)["caller_number"]
    store_number_as(history, 5, national(number))
    store_number_as(history, 8, "0049" + number[3:])
    store_number_as(history, 11, f"0{number[3:5]} {number[5:8]}-{number[8:]}")  # with blanks
    store_number_as(history, 9, number[3:])  # without country code or 0: someone else's
    store_number_as(history, 10, number + "7")
    return history, number, starts


def test_find_finds_exactly_the_subjects_calls_however_3cx_stored_the_number(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    history, number, starts = subject_history()
    create_cl_schema(database)
    history.insert(database)
    holds = Holds((HoldScope("HOLD-1", starts[4], starts[5]),))  # call 5
    store = open_store(database.url, batch_size=2)

    found = sorted(store.find(Subject.parse([number]), holds), key=lambda f: f.when or NOW)

    assert [f.when for f in found] == [starts[i - 1] for i in (2, 5, 8, 11)]
    assert [f.held for f in found] == [False, True, False, False]
    assert {f.where for f in found} == {"call"}
    reported = quality = 0
    for call, f in zip((2, 5, 8, 11), found, strict=True):
        stored = outside_party(history, call)["caller_number"]
        reported += f.fields["cl_party_info.caller_number"] == stored
        if call in column(database, "cl_quality", "call_id"):
            quality += f.fields["cl_quality.a_number"] == stored
    assert (reported, quality) == (
        4,
        len({2, 5, 8, 11} & column(database, "cl_quality", "call_id")),
    )
    assert quality > 0
    assert found[0].fields["cl_calls.start_time"] == starts[1].astimezone(BERLIN).isoformat(
        sep=" ", timespec="seconds"
    )
    subject = Subject.parse([number])
    shown = [v for f in found for k, v in f.fields.items() if k != "cl_calls.start_time"]
    assert shown and all(v.replace(" ", "").replace("-", "") in subject.values for v in shown)
    by_extension = list(store.find(Subject.parse(extensions=["1003"])))
    assert len(by_extension) == len(calls_with_extension(history, "1003")) > 0
    assert store.subject_fields() == [
        "cl_party_info.dn",
        "cl_party_info.caller_number",
        "cl_party_info.did_number",
        "cl_quality.a_caller",
        "cl_quality.b_caller",
        "cl_quality.a_number",
        "cl_quality.b_number",
    ]


def test_erase_removes_the_subjects_calls_with_their_rows_but_not_held_ones(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    history, number, starts = subject_history()
    create_cl_schema(database, foreign_keys=True)
    history.insert(database)
    holds = Holds((HoldScope("HOLD-1", starts[4], starts[5], Subject.parse([number])),))
    others = set(range(1, 13)) - {2, 5, 8, 11}
    before = rows_of_calls(database, others | {5})
    subjects_parties = {outside_party(history, call)["id"] for call in (2, 8, 11)}
    store = open_store(database.url, batch_size=2)

    with capture_logs() as logs:
        batches = erase(store, Subject.parse([number]), holds)

    assert [batch.planned for batch in batches] == [2, 1]
    assert column(database, "cl_calls", "id") == others | {5}
    assert rows_of_calls(database, others | {5}) == before
    assert not subjects_parties & column(database, "cl_party_info", "id")
    assert column(database, "cl_participants", "call_id") == others | {5}
    assert column(database, "cl_segments", "call_id") <= others | {5}
    assert column(database, "cl_quality", "call_id") <= others | {5}
    remaining = list(store.find(Subject.parse([number]), holds))
    assert [(f.when, f.held) for f in remaining] == [(starts[4], True)]
    shown = repr(logs) + repr(batches) + str(batches)
    assert number[3:] not in shown and number[5:] not in shown


def test_erase_in_cdroutput_takes_every_segment_of_the_subjects_calls(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    create_cdroutput_schema(database)
    cdrs = cdroutput_rows(sorted(before_cutoff(6)) + after_cutoff(2))
    number = cdrs[0]["source_participant_phone_number"]
    cdrs[1]["source_participant_phone_number"] = "+4940111222"  # the same call, transferred
    cdrs[6]["destination_participant_phone_number"] = national(number)  # a young call back
    database.insert("cdroutput", cdrs)
    database.insert("cdrbilling", cdrbilling_rows(cdrs))
    theirs = {cdrs[i]["cdr_id"] for i in (0, 1, 6, 7)}
    kept = as_set([r for r in table_rows(database, "cdroutput") if r["cdr_id"] not in theirs])
    kept_billing = as_set(
        [r for r in table_rows(database, "cdrbilling") if r["cdr_id"] not in theirs]
    )
    store = open_store(database.url)

    found = list(store.find(Subject.parse([number])))
    erase(store, Subject.parse([number]))

    assert sorted(f.when for f in found if f.when) == sorted(
        cdrs[i]["cdr_started_at"] for i in (0, 1, 6, 7)
    )
    assert found[0].fields["cdroutput.source_participant_phone_number"] == number
    assert as_set(table_rows(database, "cdroutput")) == kept
    assert as_set(table_rows(database, "cdrbilling")) == kept_billing


def test_hold_window_is_in_instants_not_the_servers_wall_clock(
    database: PbxDatabase, open_store: StoreFactory
) -> None:
    create_cl_schema(database)
    midnight = datetime(2024, 2, 1, 23, 0, tzinfo=UTC)  # 2 February, 00:00 in Berlin
    history = cl_history([midnight - timedelta(seconds=1), midnight, midnight + timedelta(days=1)])
    history.insert(database)
    holds = Holds((HoldScope("HOLD-DAY", midnight, midnight + timedelta(days=1)),))
    store = open_store(database.url)

    purge(store, holds)

    assert column(database, "cl_calls", "id") == {2}
