"""The config contract: strict, all errors at once with file:line and key path; calendar periods."""

from __future__ import annotations

from pathlib import Path

import pytest

from retentiond.config import load_config, parse_config, parse_duration
from retentiond.config.model import FilesStoreConfig, SqlStoreConfig
from retentiond.errors import ConfigError

EXAMPLE = Path(__file__).parent.parent / "config" / "example.yaml"

MINIMAL = """\
version: 1
audit:
  path: /var/lib/retentiond/audit.jsonl
connections:
  cdrdb:
    url: sqlite:////var/log/asterisk/master.db
rules:
  - name: call-records
    keep: 3 months
    stores:
      - type: sql
        connection: cdrdb
        table: cdr
        time_column: calldate
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "retentiond.yaml")
    return [str(p) for p in caught.value.problems]


def test_example_config_is_valid() -> None:
    loaded = load_config(EXAMPLE)
    config = loaded.config
    assert [r.name for r in config.rules] == ["call-records", "call-recordings"]
    cdr = config.rules[0].stores[0]
    assert isinstance(cdr, SqlStoreConfig)
    assert (cdr.table, cdr.time_column, cdr.batch_size, cdr.pause) == (
        "cdr",
        "calldate",
        1000,
        0.05,
    )
    recordings = config.rules[1].stores[0]
    assert isinstance(recordings, FilesStoreConfig)
    assert recordings.age_from == "path_date"
    assert len(loaded.sha256) == 64


def test_minimal_config_gets_safe_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.safety.max_delete_fraction == 0.5
    assert config.connections["cdrdb"].password_file is None
    assert config.rules[0].action == "delete"


def test_every_error_is_reported_at_once_with_line_and_path() -> None:
    text = MINIMAL.replace("keep: 3 months", "keep: 3 monthz\n    colour: blue").replace(
        "table: cdr", "table: cdr\n        batch_size: lots"
    )
    found = problems(text)
    assert "retentiond.yaml:9: rules.0.keep: '3 monthz' is not a period" in found[0]
    assert found[1].startswith("retentiond.yaml:10: rules.0: an unknown key on this line")
    assert found[2].startswith("retentiond.yaml:15: rules.0.stores.0.batch_size:")
    assert len(found) == 3


def test_batch_size_and_batch_time_are_one_or_the_other() -> None:
    adaptive = parse_config(MINIMAL.replace("table: cdr", "table: cdr\n        batch_time: 0.05"))
    assert adaptive.rules[0].stores[0].batch_time == 0.05
    both = MINIMAL.replace(
        "table: cdr", "table: cdr\n        batch_size: 500\n        batch_time: 0.1"
    )
    (found,) = problems(both)
    assert "set one of the two" in found
    (found,) = problems(MINIMAL.replace("table: cdr", "table: cdr\n        batch_time: 0"))
    assert "batch_time" in found


def test_duplicate_key_is_an_error_not_a_silent_override() -> None:
    text = MINIMAL.replace("keep: 3 months", "keep: 3 months\n    keep: 10 years")
    (found,) = problems(text)
    assert found.startswith("retentiond.yaml:10:")
    assert "duplicate key 'keep'" in found


def test_wrong_types_are_errors() -> None:
    text = MINIMAL.replace("version: 1", "version: '1'").replace("table: cdr", "table: [cdr]")
    found = problems(text)
    assert any(f.startswith("retentiond.yaml:1: version:") for f in found)
    assert any("rules.0.stores.0.table" in f for f in found)


def test_unknown_connection_and_duplicate_rule_names_are_named() -> None:
    text = MINIMAL.replace("connection: cdrdb", "connection: cdr-db") + MINIMAL.split("rules:\n")[1]
    found = problems(text)
    assert any("connection 'cdr-db' is not defined" in f and "(defined: cdrdb)" in f for f in found)
    assert any("rule name 'call-records' is used twice" in f for f in found)


def test_unknown_store_type_says_which_types_exist() -> None:
    text = MINIMAL.replace("type: sql", "type: voicemail")
    found = problems(text)
    assert any("'voicemail' does not exist" in f and "asterisk_voicemail, csv" in f for f in found)


def test_relative_paths_and_bad_zones_are_refused() -> None:
    text = MINIMAL.replace("/var/lib/retentiond/audit.jsonl", "audit.jsonl").replace(
        "version: 1", "version: 1\ntimezone: Europe/Berlinn"
    )
    found = problems(text)
    assert any("timezone: 'Europe/Berlinn' is not a time zone" in f for f in found)
    assert any("audit.path: 'audit.jsonl' is not absolute" in f for f in found)


def test_yaml_syntax_error_has_a_line() -> None:
    (found,) = problems(MINIMAL.replace("keep: 3 months", "keep: [3 months"))
    assert found.startswith("retentiond.yaml:") and "YAML syntax" in found


def test_schedules_accept_documented_forms_and_refuse_numeric_weekdays() -> None:
    for schedule in ("daily 03:15", "weekly sun 04:00", "hourly", "15 3 * * mon-fri"):
        parse_config(MINIMAL.replace("keep: 3 months", f"keep: 3 months\n    schedule: {schedule}"))
    found = problems(MINIMAL.replace("keep: 3 months", "keep: 3 months\n    schedule: 15 3 * * 0"))
    assert any("weekday field takes names" in f for f in found)


def test_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.yaml")
    assert "pass -c FILE or set RETENTIOND_CONFIG" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "months", "days"),
    [
        ("3 months", 3, 0),
        ("3m", 3, 0),
        ("P3M", 3, 0),
        ("1y", 12, 0),
        ("P1Y6M", 18, 0),
        ("90d", 0, 90),
        ("12w", 0, 84),
        ("P2W", 0, 14),
    ],
)
def test_durations_are_calendar_periods(text: str, months: int, days: int) -> None:
    duration = parse_duration(text)
    assert duration.years * 12 + duration.months == months
    assert duration.weeks * 7 + duration.days == days


@pytest.mark.parametrize("text", ["3", "three months", "3 minutes", "P", "PT3H", "-3m", "3.5m"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a period"):
        parse_duration(text)


def test_a_bare_number_asks_for_a_unit() -> None:
    found = problems(MINIMAL.replace("keep: 3 months", "keep: 90"))
    assert any("90 has no unit" in f for f in found)
