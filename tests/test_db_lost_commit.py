"""A batch whose COMMIT reply never arrives: the connection is cut after the server received the
COMMIT (and applied it) or before (never applied), and the client cannot tell which. The run
must find out before it retries, so that the deletion log counts what the batch deleted.

Every test runs `retentiond run --once` against a real server through tests/faultproxy.py,
which picks one COMMIT and loses it (`FaultProxy.lose_commit`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from faultproxy import FaultProxy, _is_commit
from pbxdata import PbxDatabase, cdr_rows, cel_rows
from sqlalchemy import bindparam, make_url, text
from structlog.testing import capture_logs
from test_db_faults import BATCH, EXPIRED, KEPT, Pbx, finish, log_events, moments, proxy_to
from test_sql_anonymize import CUTOFF, FREEPBX_TRANSFORMS, YOUNGER, create_freepbx_cdr
from test_sql_anonymize import EXPIRED as ANONYMIZABLE
from threecx_schema import CL_DEPENDENTS, cl_history, create_cl_schema

from retentiond.config.model import ConnectionConfig, SqlStoreConfig, ThreeCxCallsStoreConfig
from retentiond.evidence import log as audit
from retentiond.stores.sql.store import SqlStore
from retentiond.stores.threecx.store import ThreeCxCallsStore

# every test runs retentiond against a MariaDB or PostgreSQL server
pytestmark = pytest.mark.server_clock


def checked(stderr: str) -> list[dict[str, Any]]:
    return [e for e in log_events(stderr) if e["event"] == "sql store checked a lost commit"]


def batches(pbx: Pbx) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Each batch's intent and result, in order."""
    entries = pbx.entries()
    intents = {(e["store"], e["batch"]): e for e in entries if e["type"] == "batch_intent"}
    return [(intents[e["store"], e["batch"]], e) for e in entries if e["type"] == "batch_done"]


def deleted_in_database(pbx: Pbx) -> int:
    return EXPIRED + KEPT - len(pbx.uniqueids())


def build(folder: Path, url: str, table: str, proxy: FaultProxy, ties: bool) -> Pbx:
    """The PBX of test_db_faults, or with `ties` the expired calls in groups of 2 * BATCH that
    share one time, so that a batch is n of the rows at one time."""
    database = PbxDatabase.connect(url)
    database.create(table)
    old, young = moments()
    if ties:
        group = 2 * BATCH
        old = [old[(i // group) * group] for i in range(EXPIRED)]
    if table == "cdr":
        rows = cdr_rows(old + young, seed=8)
    else:
        rows = cel_rows(young[: KEPT // 2] + old + young[KEPT // 2 :], seed=8)
    database.insert(table, rows)
    column = "calldate" if table == "cdr" else "eventtime"
    kept = {row["uniqueid"] for row in rows if row[column] in young}
    folder.mkdir(exist_ok=True)
    pbx = Pbx(folder, database, proxy, table, kept)
    pbx.write_config(retries=3, pause=0)
    return pbx


@pytest.fixture
def pbx_on(tmp_path: Path) -> Iterator[Callable[..., Pbx]]:
    made: list[Pbx] = []

    def factory(url: str, table: str, ties: bool = False) -> Pbx:
        pbx = build(tmp_path / f"pbx{len(made)}", url, table, proxy_to(url), ties)
        made.append(pbx)
        return pbx

    yield factory
    for pbx in made:
        pbx.proxy.close()
        pbx.database.close()


# How each strategy names a batch's rows: by a time range, a key range, or n rows at one time
# (keyless on MariaDB: DELETE ... LIMIT; PostgreSQL: ctid).
CASES = [
    pytest.param("mariadb_url", "cdr", False, marks=pytest.mark.mariadb, id="mariadb-range"),
    pytest.param("mariadb_url", "cel", False, marks=pytest.mark.mariadb, id="mariadb-walk"),
    pytest.param("mariadb_url", "cdr", True, marks=pytest.mark.mariadb, id="mariadb-ties"),
    pytest.param("postgres_url", "cdr", False, marks=pytest.mark.postgres, id="postgres-range"),
    pytest.param("postgres_url", "cel", False, marks=pytest.mark.postgres, id="postgres-walk"),
    pytest.param("postgres_url", "cdr", True, marks=pytest.mark.postgres, id="postgres-ties"),
]


@pytest.mark.parametrize(("url_fixture", "table", "ties"), CASES)
@pytest.mark.parametrize("applied", [True, False], ids=["commit-applied", "commit-not-applied"])
def test_a_batch_whose_commit_reply_was_lost_is_counted_once_and_exactly(
    request: pytest.FixtureRequest,
    pbx_on: Callable[..., Pbx],
    url_fixture: str,
    table: str,
    ties: bool,
    applied: bool,
) -> None:
    pbx = pbx_on(request.getfixturevalue(url_fixture), table, ties)
    # the third batch's commit; with ties, the first, which takes n of 2n rows at one time
    pbx.proxy.lose_commit(skip=0 if ties else 2, applied=applied)
    code, stderr = finish(pbx.run_once())

    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert pbx.proxy.cuts == 1
    # every batch, the one whose commit was lost too, counts the rows it planned and deleted
    done = batches(pbx)
    assert [result["deleted"] for _, result in done] == [intent["planned"] for intent, _ in done]
    assert not [result for _, result in done if result.get("counts")]
    assert pbx.recorded_deletions() == deleted_in_database(pbx) == EXPIRED
    (finished,) = [e for e in pbx.entries() if e["type"] == "run_finished"]
    assert finished["status"] == "done"
    assert finished["deleted"] == EXPIRED
    # and the daemon's log says what became of the commit
    lost = [e for e in log_events(stderr) if e.get("while_committing")]
    assert len(lost) == 1, stderr
    (check,) = checked(stderr)
    assert check["commit"] == ("went through" if applied else "did not go through")
    assert check["deleted"] == BATCH
    pbx.assert_purged()


@pytest.mark.parametrize(
    ("url_fixture", "table"),
    [
        pytest.param("mariadb_url", "cdr", marks=pytest.mark.mariadb, id="mariadb"),
        pytest.param("postgres_url", "cdr", marks=pytest.mark.postgres, id="postgres"),
    ],
)
def test_rows_someone_else_deleted_meanwhile_leave_the_lost_commit_unconfirmed(
    request: pytest.FixtureRequest, pbx_on: Callable[..., Pbx], url_fixture: str, table: str
) -> None:
    pbx = pbx_on(request.getfixturevalue(url_fixture), table)
    taken = 10

    def someone_else_deletes() -> None:
        # the batch's first rows, once the server has rolled the cut transaction back
        oldest = text(f"SELECT uniqueid FROM {table} ORDER BY calldate LIMIT {taken}")
        delete = text(f"DELETE FROM {table} WHERE uniqueid IN :ids").bindparams(
            bindparam("ids", expanding=True)
        )
        with pbx.database.engine.begin() as connection:
            ids = list(connection.execute(oldest).scalars())
            connection.execute(delete, {"ids": ids})

    pbx.proxy.lose_commit(skip=2, applied=False, then=someone_else_deletes)
    code, stderr = finish(pbx.run_once())

    assert code == 0, stderr
    (check,) = checked(stderr)
    assert check["commit"] == "unknown"
    assert check["deleted"] == BATCH - taken
    assert check["unconfirmed_deleted_max"] == BATCH
    intent, result = batches(pbx)[2]
    # what the batch surely deleted, and at most how many more its lost commit took
    assert result["deleted"] == BATCH - taken
    assert result["counts"] == {"unconfirmed_deleted_max": BATCH}
    assert intent["planned"] == BATCH
    assert pbx.recorded_deletions() == deleted_in_database(pbx) - taken == EXPIRED - taken
    (finished,) = [e for e in pbx.entries() if e["type"] == "run_finished"]
    assert finished["status"] == "done"
    assert audit.verify(pbx.log).ok
    assert pbx.uniqueids() == pbx.kept


# -- the 3CX store: a batch is a set of calls and their rows, in one transaction ----------------

CX_BATCH = 7
CX_EXPIRED = 40
CX_KEPT = 15


@pytest.fixture
def threecx(
    postgres_url: str, pbx_database: Callable[[str], PbxDatabase]
) -> Iterator[tuple[PbxDatabase, FaultProxy, ThreeCxCallsStore]]:
    """A 3CX cl_* call history, and a store reaching it through the proxy."""
    database = pbx_database(postgres_url)
    starts = [CUTOFF - timedelta(hours=1 + 5 * i) for i in range(CX_EXPIRED)]
    starts += [CUTOFF + timedelta(minutes=30 + 97 * i) for i in range(CX_KEPT)]
    create_cl_schema(database)
    cl_history(starts).insert(database)
    proxy = proxy_to(postgres_url)
    url = make_url(postgres_url).set(host="127.0.0.1", port=proxy.port)
    config = ThreeCxCallsStoreConfig.model_validate(
        {"type": "3cx_call_history", "connection": "threecx", "batch_size": CX_BATCH}
    )
    connection = ConnectionConfig.model_validate(
        {"url": url.render_as_string(hide_password=False), "retries": 3}
    )
    store = ThreeCxCallsStore(config, connection, ZoneInfo("Europe/Berlin"))
    store.open()
    yield database, proxy, store
    store.close()
    proxy.close()


def cx_rows(database: PbxDatabase, table: str) -> int:
    with database.engine.connect() as connection:
        return int(connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar() or 0)


def cx_checked(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "3cx store checked a lost commit"]


def orphans(database: PbxDatabase) -> int:
    """Rows of a call that is gone: a batch deletes a call's rows with it, or none of them."""
    with database.engine.connect() as connection:
        return sum(
            int(
                connection.execute(
                    text(
                        f"SELECT COUNT(*) FROM {table} AS t WHERE NOT EXISTS "
                        "(SELECT 1 FROM cl_calls AS c WHERE c.id = t.call_id)"
                    )
                ).scalar()
                or 0
            )
            for table in CL_DEPENDENTS
        )


@pytest.mark.postgres
@pytest.mark.parametrize("applied", [True, False], ids=["commit-applied", "commit-not-applied"])
def test_a_3cx_batch_whose_commit_reply_was_lost_is_counted_once_and_exactly(
    threecx: tuple[PbxDatabase, FaultProxy, ThreeCxCallsStore], applied: bool
) -> None:
    database, proxy, store = threecx
    proxy.lose_commit(skip=1, applied=applied)  # the second batch's
    with capture_logs() as logs:
        results = [store.apply(batch, CUTOFF) for batch in store.batches(CUTOFF)]

    assert proxy.cuts == 1
    assert [e for e in logs if e.get("while_committing")]
    # every batch counts the calls it deleted, the one whose commit was lost too
    assert [result.deleted for result in results] == [7, 7, 7, 7, 7, 5]
    assert not [result.counts for result in results if result.counts]
    assert sum(result.deleted for result in results) == CX_EXPIRED
    assert cx_rows(database, "cl_calls") == CX_KEPT
    assert orphans(database) == 0
    (check,) = cx_checked(logs)
    assert check["commit"] == ("went through" if applied else "did not go through")
    assert (check["batch"], check["deleted"]) == (2, CX_BATCH)


@pytest.mark.postgres
def test_3cx_calls_someone_else_deleted_meanwhile_leave_the_lost_commit_unconfirmed(
    threecx: tuple[PbxDatabase, FaultProxy, ThreeCxCallsStore],
) -> None:
    database, proxy, store = threecx
    taken = 3

    def someone_else_deletes() -> None:
        # the first calls of the second batch, once the server has rolled the cut one back
        with database.engine.begin() as connection:
            connection.execute(
                text(
                    "DELETE FROM cl_calls WHERE id IN (SELECT id FROM cl_calls "
                    f"ORDER BY start_time LIMIT {taken})"
                )
            )

    proxy.lose_commit(skip=1, applied=False, then=someone_else_deletes)
    with capture_logs() as logs:
        results = [store.apply(batch, CUTOFF) for batch in store.batches(CUTOFF)]

    (check,) = cx_checked(logs)
    assert check["commit"] == "unknown"
    assert check["deleted"] == CX_BATCH - taken
    assert check["unconfirmed_deleted_max"] == CX_BATCH
    # what the batch surely deleted, and at most how many more its lost commit took
    assert results[1].deleted == CX_BATCH - taken
    assert results[1].counts == {"unconfirmed_deleted_max": CX_BATCH}
    assert sum(result.deleted for result in results) == CX_EXPIRED - taken
    assert cx_rows(database, "cl_calls") == CX_KEPT


@pytest.mark.postgres
@pytest.mark.parametrize("applied", [True, False], ids=["commit-applied", "commit-not-applied"])
def test_a_lost_3cx_commit_is_judged_by_the_calls_it_locked_not_all_it_planned(
    threecx: tuple[PbxDatabase, FaultProxy, ThreeCxCallsStore], applied: bool
) -> None:
    """A planned call no longer due when its batch runs is not locked: the check of a lost
    commit looks for the calls the batch locked (the batch answers with them only when they
    are fewer than it planned), so the call left behind does not make it look undone."""
    database, proxy, store = threecx
    proxy.lose_commit(skip=0, applied=applied)  # the first batch's
    results = []
    with capture_logs() as logs:
        for batch in store.batches(CUTOFF):
            if batch.number == 1:
                # the oldest call, planned in this batch, is no longer due when it is applied
                with database.engine.begin() as connection:
                    connection.execute(
                        text(
                            "UPDATE cl_calls SET start_time = :later WHERE id = "
                            "(SELECT id FROM cl_calls ORDER BY start_time LIMIT 1)"
                        ),
                        {"later": CUTOFF + timedelta(days=1)},
                    )
            results.append(store.apply(batch, CUTOFF))

    (check,) = cx_checked(logs)
    assert check["commit"] == ("went through" if applied else "did not go through")
    assert (check["batch"], check["deleted"]) == (1, CX_BATCH - 1)
    assert results[0].deleted == CX_BATCH - 1
    assert not [result.counts for result in results if result.counts]
    assert sum(result.deleted for result in results) == CX_EXPIRED - 1
    assert cx_rows(database, "cl_calls") == CX_KEPT + 1
    assert orphans(database) == 0


# -- the SQL anonymize stage: a batch rewrites rows that still hold the values read ------------


@pytest.mark.parametrize(
    "url_fixture",
    [
        pytest.param("mariadb_url", marks=pytest.mark.mariadb, id="mariadb-keyless"),
        pytest.param("postgres_url", marks=pytest.mark.postgres, id="postgres-ctid"),
    ],
)
@pytest.mark.parametrize("applied", [True, False], ids=["commit-applied", "commit-not-applied"])
def test_an_anonymize_batch_whose_commit_reply_was_lost_counts_the_rows_it_rewrote(
    request: pytest.FixtureRequest,
    pbx_database: Callable[[str], PbxDatabase],
    url_fixture: str,
    applied: bool,
) -> None:
    url = request.getfixturevalue(url_fixture)
    database = pbx_database(url)
    originals = create_freepbx_cdr(database, ANONYMIZABLE + YOUNGER)
    proxy = proxy_to(url)
    config = SqlStoreConfig.model_validate(
        {
            "type": "sql",
            "connection": "cdrdb",
            "table": "cdr",
            "time_column": "calldate",
            "batch_size": 7,
            "anonymize": FREEPBX_TRANSFORMS,
        }
    )
    through = make_url(url).set(host="127.0.0.1", port=proxy.port)
    connection = ConnectionConfig.model_validate(
        {"url": through.render_as_string(hide_password=False), "retries": 3}
    )
    store = SqlStore(config, connection, ZoneInfo("Europe/Berlin"))
    try:
        store.open()
        proxy.lose_commit(skip=1, applied=applied)  # the second batch's
        with capture_logs() as logs:
            batches = store.anonymize_batches(CUTOFF)
            results = [store.apply(batch, CUTOFF) for batch in batches]
        cuts = proxy.cuts
    finally:
        store.close()
        proxy.close()

    assert cuts == 1
    with database.engine.connect() as reading:
        rewritten = reading.execute(text("SELECT COUNT(*) FROM cdr WHERE src LIKE '%xxx'"))
        in_database = int(rewritten.scalar() or 0)
    expired = [row for row in originals if row["calldate"] in ANONYMIZABLE]
    assert in_database == len(expired)
    # every batch counts the rows it rewrote, the one whose commit was lost too
    assert sum(result.anonymized for result in results) == len(expired)
    assert not [result.skipped for result in results if result.skipped]
    (check,) = [e for e in logs if e["event"] == "sql store checked a lost commit"]
    assert check["commit"] == ("went through" if applied else "did not go through")
    assert check["anonymized"] == 7


def test_the_proxy_loses_commits_and_nothing_else() -> None:
    assert _is_commit(b"\x07\x00\x00\x00\x03COMMIT")  # MySQL COM_QUERY
    assert _is_commit(b"Q\x00\x00\x00\x0bCOMMIT\x00")  # PostgreSQL simple Query
    assert not _is_commit(b"\x09\x00\x00\x00\x03ROLLBACK")
    assert not _is_commit(b"Q\x00\x00\x00\x0dROLLBACK\x00")
    assert not _is_commit(b"\x30\x00\x00\x00\x03DELETE FROM cdr WHERE calldate < '2026-01-01'")
