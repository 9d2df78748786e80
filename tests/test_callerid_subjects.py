"""A number inside a caller id (`"Alice Example" <+493077700010>`, Asterisk's `clid`) names its
person in SQL tables: `find` lists the row, `erase` removes it, a hold by number keeps it, in
every stored form of the number, on MariaDB, PostgreSQL and SQLite. A longer number that starts
with theirs (`<+4930777000100>`) is someone else's.

The tables are the vendors' own: FreePBX's `cdr` (framework `installlib/SQL/cdr.sql`, see
pbxdata.py) on MariaDB and PostgreSQL, and on SQLite the table Asterisk's cdr_sqlite3_custom
creates from its sample config, which has `clid` but no `src` or `dst`:
asterisk/asterisk `cdr/cdr_sqlite3_custom.c` (branch 20: `CREATE TABLE %q (AcctId INTEGER
PRIMARY KEY, %s)`) with the columns of `configs/samples/cdr_sqlite3_custom.conf.sample`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from databases import ALL_BACKENDS
from pbxdata import PbxDatabase, cdr_rows
from sqlalchemy import text

from retentiond.config import parse_config
from retentiond.config.model import SqlStoreConfig
from retentiond.policy.rules import Holds, HoldScope
from retentiond.policy.subjects import Subject
from retentiond.stores.sql.store import SqlStore

CUTOFF = datetime(2024, 6, 1, tzinfo=UTC)  # every call below is older
PERSON = "+493077700010"
ALICE = Subject.parse(numbers=[PERSON])
RECEPTION = Subject.parse(extensions=["1001"])

# cdr_sqlite3_custom.conf.sample `columns =>`, in the table the module creates from it.
SQLITE_CUSTOM_CDR = (
    "CREATE TABLE cdr (AcctId INTEGER PRIMARY KEY, calldate, clid, dcontext, channel, "
    "dstchannel, lastapp, lastdata, duration, billsec, disposition, amaflags, accountcode, "
    "uniqueid, userfield, test)"
)

# clid values as Asterisk writes them (ast_callerid_merge: `"name" <number>`, or the number
# alone when there is no name), and whether each names ALICE.
CALLER_IDS = [
    ('"Alice Example" <+493077700010>', True),  # from a SIP trunk, E.164
    ('"Alice Example" <03077700010>', True),  # as a German trunk sends it, national
    ('"" <00493077700010>', True),
    ('"Alice Example" <493077700010>', True),  # as some providers send it, without + or 00
    ("+493077700010", True),  # no name: the number alone
    ('"Alice Example" <+49 30 777000-10>', True),  # blanks and separators, as matches ignores
    ('"Alice Example" <+4930777000100>', False),  # one digit longer: someone else
    ('"Bob Example" <+493077700011>', False),
    ('"Bob Example" <4930777000101>', False),
    ('"Reception" <1001>', False),  # an extension: only RECEPTION's
    ('"Alice Example"', False),  # a name alone names no number
    ('"Alice Example" <+493077700010> ', True),
    ('"Alice <+493077700010>" <2001>', True),  # several <...>: each is looked at
    ('"Bob <2001>" <+4930777000100>', False),
]
HERS = sum(hers for _, hers in CALLER_IDS)


@pytest.fixture
def open_store(open_sql_store: Callable[..., SqlStore]) -> Callable[[str], SqlStore]:
    def factory(url: str) -> SqlStore:
        return open_sql_store(url, subject_columns=["clid"], batch_size=3)

    return factory


def insert_calls(database: PbxDatabase) -> list[str]:
    """One call per caller id, a day apart in January 2024; their uniqueids in that order."""
    calldates = [datetime(2024, 1, 2, 9) + timedelta(days=i) for i in range(len(CALLER_IDS))]
    rows = cdr_rows(calldates)
    for row, (clid, _) in zip(rows, CALLER_IDS, strict=True):
        row["clid"] = clid
        row["src"] = row["cnum"] = row["dst"] = "2001"  # the number is in clid only
    if database.dialect == "sqlite":
        database.execute(SQLITE_CUSTOM_CDR)
        columns = ("calldate", "clid", "dcontext", "channel", "dstchannel", "lastapp", "lastdata")
        rows = [
            {name: str(row[name]) for name in columns}
            | {"calldate": row["calldate"].strftime("%Y-%m-%d %H:%M:%S")}
            | {"uniqueid": row["uniqueid"], "disposition": "ANSWERED", "test": ""}
            for row in rows
        ]
    else:
        database.create("cdr")
    database.insert("cdr", rows)
    return [row["uniqueid"] for row in rows]


def alices(uniqueids: list[str]) -> set[str]:
    return {uid for uid, (_, theirs) in zip(uniqueids, CALLER_IDS, strict=True) if theirs}


def left(database: PbxDatabase) -> set[str]:
    with database.engine.connect() as connection:
        return set(connection.execute(text("SELECT uniqueid FROM cdr")).scalars())


def test_the_tables_match_caller_ids_as_master_csv_and_voicemail_do() -> None:
    assert [ALICE.matches_callerid(clid) for clid, _ in CALLER_IDS] == [h for _, h in CALLER_IDS]


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_find_lists_every_call_whose_caller_id_holds_the_number_in_any_form(
    database: PbxDatabase, open_store: Callable[[str], SqlStore]
) -> None:
    insert_calls(database)
    store = open_store(database.url)

    found = [item.fields["clid"] for item in store.find(ALICE)]

    assert found == [clid for clid, theirs in CALLER_IDS if theirs]
    assert [item.fields["clid"] for item in store.find(RECEPTION)] == ['"Reception" <1001>']


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_erase_removes_the_calls_naming_the_person_in_clid_and_no_longer_number(
    database: PbxDatabase, open_store: Callable[[str], SqlStore]
) -> None:
    uniqueids = insert_calls(database)
    store = open_store(database.url)

    deleted = sum(store.apply(b, CUTOFF).deleted for b in store.subject_batches(ALICE))

    assert deleted == len(alices(uniqueids)) == HERS
    assert left(database) == set(uniqueids) - alices(uniqueids)


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_a_hold_by_number_keeps_calls_whose_only_number_is_in_clid(
    database: PbxDatabase, open_store: Callable[[str], SqlStore]
) -> None:
    uniqueids = insert_calls(database)
    store = open_store(database.url)
    holds = Holds((HoldScope("HOLD-ALICE", subject=ALICE),))

    deleted = sum(store.apply(b, CUTOFF).deleted for b in store.batches(CUTOFF, holds))

    assert left(database) == alices(uniqueids), "her calls stay, everyone else's expire"
    assert deleted == len(uniqueids) - HERS
    survey = store.survey(CUTOFF, holds)
    assert survey.held == HERS and survey.expired == 0


@pytest.mark.parametrize("database", ALL_BACKENDS, indirect=True)
def test_an_erasure_under_a_hold_takes_nothing_of_the_held_caller_ids(
    database: PbxDatabase, open_store: Callable[[str], SqlStore]
) -> None:
    uniqueids = insert_calls(database)
    store = open_store(database.url)
    holds = Holds((HoldScope("HOLD-ALICE", subject=ALICE),))

    found = list(store.find(ALICE, holds))
    planned = list(store.subject_batches(ALICE, holds))

    assert len(found) == HERS and all(item.held for item in found)
    assert planned == []
    assert left(database) == set(uniqueids)


def test_the_presets_search_clid_in_every_cdr_table(tmp_path: Path) -> None:
    """FreePBX (installer's freepbx.conf, as test_presets writes it) and plain Asterisk."""
    conf = tmp_path / "freepbx.conf"
    conf.write_text(
        "<?php\n$amp_conf['AMPDBUSER'] = 'freepbxuser';\n$amp_conf['AMPDBPASS'] = 'secret';\n"
        "$amp_conf['AMPDBHOST'] = 'localhost';\n$amp_conf['AMPDBNAME'] = 'asterisk';\n"
        "$amp_conf['AMPDBENGINE'] = 'mysql';\n"
    )
    keep = "keep: {call-records: 3 months, voicemail: 60d, call-recordings: 30d}\n"
    freepbx = parse_config(
        "version: 1\npreset: freepbx\n"
        f"preset_settings: {{freepbx_conf: {conf}, read_database: false}}\n{keep}"
    )
    asterisk = parse_config(f"version: 1\npreset: asterisk\n{keep}")

    for config, tables in ((freepbx, {"cdr", "transient_cdr"}), (asterisk, {"cdr"})):
        stores = [s for r in config.rules for s in r.stores if isinstance(s, SqlStoreConfig)]
        cdr = [s for s in stores if s.table in tables]
        # asterisk without a cdr_sqlite3_custom.conf: master.db and cdr_master.db, each a cdr
        assert {s.table for s in cdr} == tables
        assert all("clid" in s.subject_columns for s in cdr)
