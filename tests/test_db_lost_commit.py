"""A batch whose COMMIT reply never arrives: the connection is cut after the server received the
COMMIT (and applied it) or before (never applied), and the client cannot tell which. The run
must find out before it retries, so that the deletion log counts what the batch deleted.

Every test runs `retentiond run --once` against a real server through tests/faultproxy.py,
which picks one COMMIT and loses it (`FaultProxy.lose_commit`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy, _is_commit
from pbxdata import PbxDatabase, cdr_rows, cel_rows
from sqlalchemy import bindparam, text
from test_db_faults import BATCH, EXPIRED, KEPT, Pbx, finish, log_events, moments, proxy_to

from retentiond import audit


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


def test_the_proxy_loses_commits_and_nothing_else() -> None:
    assert _is_commit(b"\x07\x00\x00\x00\x03COMMIT")  # MySQL COM_QUERY
    assert _is_commit(b"Q\x00\x00\x00\x0bCOMMIT\x00")  # PostgreSQL simple Query
    assert not _is_commit(b"\x09\x00\x00\x00\x03ROLLBACK")
    assert not _is_commit(b"Q\x00\x00\x00\x0dROLLBACK\x00")
    assert not _is_commit(b"\x30\x00\x00\x00\x03DELETE FROM cdr WHERE calldate < '2026-01-01'")
