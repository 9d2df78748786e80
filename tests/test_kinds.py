"""stores/kinds.py has one row per store kind, and only those: a store type the config accepts
without a row (or a row the config cannot name) fails here, before a user meets it."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, get_args

import pytest
from markupsafe import escape

from retentiond import demo
from retentiond.config.loader import load_config
from retentiond.config.model import STORE_TYPES, StoreConfig
from retentiond.evidence.report import build, render
from retentiond.evidence.report.values import Period
from retentiond.stores.base import Store
from retentiond.stores.kinds import KINDS


def store_config_classes() -> dict[str, Any]:
    """`type:` value -> config class, from the StoreConfig union the config is validated with."""
    union, *_ = get_args(StoreConfig)  # Annotated[A | B | ..., Field(discriminator="type")]
    classes: dict[str, Any] = {}
    for cls in get_args(union):
        (type_name,) = get_args(cls.model_fields["type"].annotation)
        assert type_name not in classes, f"two store config classes for type {type_name!r}"
        classes[type_name] = cls
    return classes


def test_every_store_type_of_the_config_has_exactly_one_row() -> None:
    rows = {name: kind.config for name, kind in KINDS.items()}
    assert rows == store_config_classes()
    assert set(STORE_TYPES) == set(KINDS)


@pytest.mark.parametrize("name", list(KINDS))
def test_each_kind_is_implemented_by_a_store(name: str) -> None:
    implementation = KINDS[name].store_class()
    assert issubclass(implementation, Store)


def test_the_report_states_how_every_kind_deletes(tmp_path: Path) -> None:
    loaded = load_config(demo.build(tmp_path / "pbx", days=10))
    loaded.config.audit.path.touch()  # an empty deletion log: no run yet
    zone = loaded.config.zone()
    today = datetime.now(zone).date()
    report = build.build_report(loaded, [], Period(today, today, zone))
    # every kind, as if the logs had named each (the demo config has three)
    report = replace(report, methods=build.methods(loaded.config, KINDS))

    page = render.html(report)
    rows = {(row["section"], row["item"], row["value"]) for row in render.csv_rows(report)}

    for name, kind in KINDS.items():
        assert kind.title and kind.deletes, name
        assert f"{escape(kind.title)} (<code>{name}</code>)" in page
        assert str(escape(kind.deletes)) in page
        assert ("method", name, kind.deletes) in rows


def test_the_table_imports_no_store_implementation() -> None:
    """The daemon reads the table between runs, when no SQLAlchemy may be loaded
    (service/runner.py); the implementations are imported when a store is built."""
    code = "import sys, retentiond.stores, retentiond.evidence.report.build; print(*sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(run.stdout.split())
    assert not any(module.startswith("sqlalchemy") for module in loaded)
    implementations = {kind.implementation.partition(":")[0] for kind in KINDS.values()}
    assert not implementations & loaded
