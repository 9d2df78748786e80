"""k-anonymity as the csv and 3CX stores measure it: the smallest group of expired records that
are alike in every transformed field, which decides whether the report may say "anonymized".

Each fixture is crafted so the answer is known: numbers that truncate to the same prefix form one
group, young records and fields that are blanked or made constant never split or join a group.
The csv store reads real files; the 3CX store runs against a real PostgreSQL with 3CX's tables.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pbxdata import PbxDatabase
from test_csv_holds import cdr_line
from threecx_schema import cdroutput_rows, create_cdroutput_schema, create_cl_schema

from retentiond.config.presets.transforms import THREECX_ANONYMIZE as DEFAULT_ANONYMIZE
from retentiond.stores.csv.store import CsvStore
from retentiond.stores.threecx.store import ThreeCxCallsStore

CUTOFF = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
# Three numbers of one exchange (030123xxx once truncated) and two of another (040555xxx).
EXCHANGE_A = ("030123451", "030123452", "030123453")
EXCHANGE_B = ("040555111", "040555112")
LONER = "089777123"

# src truncated, clid blanked, dcontext made constant: only src tells lines apart.
CSV_ANONYMIZE = {"1": "truncate_digits", "4": "blank", "3": {"constant": "ctx"}}


def old(hours: float) -> datetime:
    return CUTOFF - timedelta(hours=hours)


def young(hours: float) -> datetime:
    return CUTOFF + timedelta(hours=hours)


# -- csv -------------------------------------------------------------------------------------------


@pytest.fixture
def open_csv(open_csv_store: Callable[..., CsvStore]) -> Callable[..., CsvStore]:
    return open_csv_store


def write_csv(path: Path, calls: Sequence[tuple[datetime, str]], *, clid: str = "") -> None:
    """One line per (start, src); each line has a caller id and context of its own unless given."""
    path.write_bytes(
        b"".join(
            cdr_line(
                start.replace(tzinfo=None),
                src,
                "1001",
                clid or f'"Caller {i}" <{src}>',
                uniqueid=f"17000000{i:02d}.{i}",
            ).replace(b'"from-internal"', f'"context-{i}"'.encode())
            for i, (start, src) in enumerate(calls)
        )
    )


def anonymize_csv(store: CsvStore) -> None:
    for batch in store.anonymize_batches(CUTOFF):
        store.apply(batch, CUTOFF)


def test_csv_lines_alike_after_truncation_form_one_group_across_files(
    tmp_path: Path, open_csv: Callable[..., CsvStore]
) -> None:
    write_csv(tmp_path / "Master.csv", [(old(1 + i), n) for i, n in enumerate(EXCHANGE_A)])
    write_csv(tmp_path / "acme.csv", [(old(9 + i), n) for i, n in enumerate(EXCHANGE_B)])
    store = open_csv(tmp_path, anonymize=CSV_ANONYMIZE)

    before = store.smallest_group(CUTOFF)
    anonymize_csv(store)
    after = store.smallest_group(CUTOFF)
    write_csv(tmp_path / "late.csv", [(old(20), "040555xxx")])
    with_third = store.smallest_group(CUTOFF)

    assert before == 1, "full numbers: every line is alone"
    assert after == 2, "030123xxx three times, 040555xxx twice"
    assert with_third == 3, "a line in another file joins its group"


def test_csv_only_lines_older_than_the_cutoff_count(
    tmp_path: Path, open_csv: Callable[..., CsvStore]
) -> None:
    write_csv(
        tmp_path / "Master.csv",
        [(old(1), "030123xxx"), (old(2), "030123xxx"), (young(1), "089777xxx")],
    )
    with (tmp_path / "Master.csv").open("ab") as master:
        master.write(b'"1001","089777xxx","1001","ctx","","","","","","not a time"\n')
        master.write(b'"1001","089777xxx" broken "\n')
    store = open_csv(tmp_path, anonymize=CSV_ANONYMIZE)

    assert store.smallest_group(CUTOFF) == 2
    assert store.smallest_group(young(2)) == 1, "the young line's group, once it has expired"
    assert store.smallest_group(old(1.5)) == 1
    assert store.smallest_group(old(3)) is None, "no line older than this cutoff"


def test_csv_blanked_and_constant_fields_do_not_split_groups(
    tmp_path: Path, open_csv: Callable[..., CsvStore]
) -> None:
    # Stored as they are: truncated numbers, but each line's caller id and context its own.
    write_csv(tmp_path / "Master.csv", [(old(1 + i), "030123xxx") for i in range(4)])
    anonymized = open_csv(tmp_path, anonymize=CSV_ANONYMIZE)
    nothing_groups = open_csv(tmp_path, anonymize={"4": "blank"})
    clid_kept = open_csv(tmp_path, anonymize={"1": "truncate_digits", "4": "truncate_digits"})

    assert anonymized.smallest_group(CUTOFF) == 4
    assert nothing_groups.smallest_group(CUTOFF) == 4, "no grouping field: one group of all"
    assert clid_kept.smallest_group(CUTOFF) == 1, "a field kept in grouping tells lines apart"


def test_csv_without_expired_lines_or_transforms_cannot_tell(
    tmp_path: Path, open_csv: Callable[..., CsvStore]
) -> None:
    empty = open_csv(tmp_path, anonymize=CSV_ANONYMIZE)
    empty_answer = empty.smallest_group(CUTOFF)
    write_csv(tmp_path / "Master.csv", [(old(1), "030123xxx"), (old(2), "030123xxx")])
    plain = open_csv(tmp_path)

    assert empty_answer is None
    assert plain.smallest_group(CUTOFF) is None, "a store that does not anonymize"
    assert empty.smallest_group(CUTOFF) == 2


# -- 3CX -------------------------------------------------------------------------------------------


StoreFactory = Callable[..., ThreeCxCallsStore]


@pytest.fixture
def database(postgres_url: str, pbx_database: Callable[[str], PbxDatabase]) -> PbxDatabase:
    return pbx_database(postgres_url)


@pytest.fixture
def open_3cx(open_3cx_store: StoreFactory) -> StoreFactory:
    def factory(
        url: str, anonymize: Mapping[str, Any] | None = DEFAULT_ANONYMIZE
    ) -> ThreeCxCallsStore:
        options: dict[str, Any] = {}
        if anonymize is not None:
            options["anonymize"] = dict(anonymize)
        return open_3cx_store(url, **options)

    return factory


def anonymize_3cx(store: ThreeCxCallsStore) -> None:
    for batch in store.anonymize_batches(CUTOFF):
        store.apply(batch, CUTOFF)


def insert_cl_calls(database: PbxDatabase, calls: Sequence[tuple[datetime, str]]) -> None:
    """One call per (start, outside number) to extension 1001, whose party row all share.

    Each outside party has a name of its own; the sequences move past the ids chosen here.
    """
    parties: list[dict[str, Any]] = [
        {
            "id": 1,
            "dn_type": 0,
            "dn": "1001",
            "caller_number": "1001",
            "display_name": "Erika",
            "firstlastname": "Erika Mustermann",
        }
    ]
    rows: dict[str, list[dict[str, Any]]] = {"cl_calls": [], "cl_participants": []}
    for call_id, (start, number) in enumerate(calls, start=1):
        parties.append(
            {
                "id": call_id + 1,
                "dn_type": 1,
                "dn": "10000",
                "caller_number": number,
                "display_name": f"Caller {call_id}",
                "firstlastname": f"Caller {call_id}",
            }
        )
        rows["cl_calls"].append(
            {
                "id": call_id,
                "start_time": start,
                "end_time": start + timedelta(minutes=3),
                "is_answered": True,
                "ringing_dur": timedelta(seconds=5),
                "talking_dur": timedelta(minutes=3),
                "q_wait_dur": timedelta(0),
            }
        )
        # The order of a call's rows is no part of it: here it alternates.
        for info_id in (call_id + 1, 1) if call_id % 2 else (1, call_id + 1):
            rows["cl_participants"].append(
                {
                    "id": len(rows["cl_participants"]) + 1,
                    "call_id": call_id,
                    "info_id": info_id,
                }
            )
    database.insert("cl_party_info", parties)
    database.insert("cl_calls", rows["cl_calls"])
    database.insert("cl_participants", rows["cl_participants"])
    database.execute(
        *(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
            for table in ("cl_calls", "cl_party_info", "cl_participants")
        )
    )


pg = pytest.mark.postgres


@pg
def test_3cx_calls_alike_after_truncation_form_groups_and_young_calls_do_not_count(
    database: PbxDatabase, open_3cx: StoreFactory
) -> None:
    create_cl_schema(database)
    insert_cl_calls(
        database,
        [(old(10 + i), number) for i, number in enumerate(EXCHANGE_A)]
        + [(old(1 + i), number) for i, number in enumerate(EXCHANGE_B)]
        + [(young(1), LONER)],
    )
    store = open_3cx(database.url)

    before = store.smallest_group(CUTOFF)
    anonymize_3cx(store)
    after = store.smallest_group(CUTOFF)

    assert before == 1, "full numbers: every call is alone"
    assert after == 2, "030123xxx three times, 040555xxx twice; the young call left out"
    assert store.smallest_group(old(5)) == 3, "only the 030123xxx calls are older"
    assert store.smallest_group(young(2)) == 1, "the young call, once expired, stands alone"
    assert store.smallest_group(old(50)) is None, "no call older than this cutoff"


@pg
def test_3cx_blanked_and_constant_fields_do_not_split_calls(
    database: PbxDatabase, open_3cx: StoreFactory
) -> None:
    create_cl_schema(database)
    # Stored truncated already; each outside party has a name of its own, in two columns.
    insert_cl_calls(database, [(old(1 + i), "030123xxx") for i in range(4)])
    transforms = {
        "cl_party_info.caller_number": "truncate_digits",
        "cl_party_info.display_name": "blank",
        "cl_party_info.firstlastname": {"constant": "x"},
    }
    # Kept in grouping, the names (stored as they are) tell every call apart.
    names_kept = {**transforms, "cl_party_info.display_name": "truncate_digits"}

    assert open_3cx(database.url, transforms).smallest_group(CUTOFF) == 4
    assert open_3cx(database.url, names_kept).smallest_group(CUTOFF) == 1


@pg
def test_3cx_cdroutput_groups_calls_by_their_expired_segments(
    database: PbxDatabase, open_3cx: StoreFactory
) -> None:
    create_cdroutput_schema(database)
    # Four calls of two segments each, all from 030123xxx numbers, one segment to extension
    # 1001 and one to 2002, in either order; the first call has a third, young segment from
    # another number, not yet anonymized.
    starts = [old(1 + i) for i in range(8)] + [young(1)]
    cdrs = cdroutput_rows(starts, seed=7)
    calls = [uuid.UUID(int=n + 1) for n in range(4)]
    for index, cdr in enumerate(cdrs[:8]):
        cdr["call_history_id"] = calls[index // 2]
        cdr["source_participant_phone_number"] = f"03012345{index}"
        to_1001 = index % 2 == (0 if index < 4 else 1)
        extension = "1001" if to_1001 else "2002"
        cdr["destination_dn_number"] = cdr["destination_participant_phone_number"] = extension
    cdrs[8]["call_history_id"] = calls[0]
    cdrs[8]["source_participant_phone_number"] = LONER
    database.insert("cdroutput", cdrs)
    store = open_3cx(database.url)

    anonymize_3cx(store)
    four_calls = store.smallest_group(CUTOFF)
    lone = cdroutput_rows([old(30)], seed=8)[0]
    lone["destination_dn_number"] = lone["destination_participant_phone_number"] = "1001"
    lone["source_participant_phone_number"] = "030123459"
    database.insert("cdroutput", [lone])
    anonymize_3cx(store)

    assert four_calls == 4, "four calls alike (eight segments), the young segment left out"
    assert store.smallest_group(CUTOFF) == 1, "a call of one segment is unlike those of two"


@pg
def test_3cx_without_expired_calls_or_transforms_cannot_tell(
    database: PbxDatabase, open_3cx: StoreFactory
) -> None:
    create_cl_schema(database)
    empty = open_3cx(database.url).smallest_group(CUTOFF)
    insert_cl_calls(database, [(old(1), "030123xxx"), (young(1), "030123xxx")])

    assert empty is None
    assert open_3cx(database.url).smallest_group(old(2)) is None
    assert open_3cx(database.url).smallest_group(CUTOFF) == 1
    assert open_3cx(database.url, anonymize=None).smallest_group(CUTOFF) is None
