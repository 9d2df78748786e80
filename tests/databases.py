"""The database families the tests run on, as pytest parameters.

A test takes a family by name, indirectly: `@pytest.mark.parametrize("database", ALL_BACKENDS,
indirect=True)` gives it conftest's `database`, a fresh and empty PbxDatabase of that family,
dropped after the test. The server families carry the `mariadb` and `postgres` marks, so `-m`
selects them; a server that is not reachable skips them (fails them under CI), as conftest's
`mariadb_url` and `postgres_url` decide.
"""

from __future__ import annotations

import pytest

# The conftest fixture that makes a fresh database of each family and gives its URL.
URL_FIXTURES = {"mariadb": "mariadb_url", "postgresql": "postgres_url", "sqlite": "sqlite_url"}

ALL_BACKENDS = [
    pytest.param("mariadb", marks=pytest.mark.mariadb),
    pytest.param("postgresql", marks=pytest.mark.postgres),
    "sqlite",
]
SERVER_BACKENDS = ALL_BACKENDS[:2]


def database_url(request: pytest.FixtureRequest, family: str) -> str:
    """URL of a fresh, empty database of `family` ("mariadb", "postgresql", "sqlite"), dropped
    after the test."""
    return str(request.getfixturevalue(URL_FIXTURES[family]))
