"""Hostile configs: thousands of generated YAML documents and values fed to the loader.

Whatever the text, `parse_config` and `load_config` return a Config or raise ConfigError whose
every problem says what is wrong (and where, when a line can be told); nothing else escapes.
A preset that cannot read its PBX's settings file raises PbxSettingsError, a RetentiondError the
command line also reports without a traceback (exit 1: the PBX, not the YAML, is missing).
The command line exits 2 with the problems on stderr and no traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from retentiond.config.loader import MAX_CONFIG_BYTES, load_config, parse_config
from retentiond.config.model import Config
from retentiond.config.pbxfiles import PbxSettingsError
from retentiond.demo import CONFIG as DEMO_CONFIG
from retentiond.errors import ConfigError
from retentiond.policy.durations import parse_duration
from retentiond.policy.schedule import parse_schedule

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = [
    ROOT / "config" / "example.yaml",
    *sorted((ROOT / "config" / "examples").glob("*.yaml")),
]
NAME = "fuzz.yaml"
ZONE = UTC

FAST = settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def demo_config() -> str:
    return DEMO_CONFIG.format(
        audit="/tmp/demo/audit.jsonl",
        database="/tmp/demo/master.db",
        monitor="/tmp/demo/monitor",
        root="/tmp/demo",
        spool="/tmp/demo/voicemail",
        voicemail="/tmp/demo/voicemail",
    )


def real_configs() -> list[str]:
    return [path.read_text() for path in EXAMPLES] + [demo_config()]


def check_outcome(raw: bytes | str) -> Config | ConfigError | PbxSettingsError:
    """The property: a Config, or a ConfigError whose problems each carry a message."""
    try:
        return parse_config(raw, NAME)
    except ConfigError as error:
        assert_clean(error)
        return error
    except PbxSettingsError as error:  # a preset whose PBX settings file is not there
        assert str(error).strip()
        return error


def assert_clean(error: ConfigError) -> None:
    assert error.problems, "a ConfigError without problems"
    for problem in error.problems:
        assert problem.file == NAME
        assert isinstance(problem.message, str) and problem.message.strip()
        assert problem.line is None or problem.line >= 1
        assert "Traceback" not in problem.message
    assert str(error)


# -- (a) arbitrary YAML text ---------------------------------------------------------------------

TOKENS = [
    "version: 1\n", "version: ", "rules:\n", "  - ", "name: r\n", "keep: 3m\n", "stores:\n",
    "type: sql\n", "type: files\n", "root: /x\n", "connection: c\n", "table: cdr\n", "holds:\n",
    "preset: freepbx\n", "preset: asterisk\n", "keep: {call-records: 3m}\n", "connections:\n",
    "&a ", "*a", "&b [", "*b", "<<: *a\n", "? ", ": ", "- ", "{", "}", "[", "]", ",", "\n",
    "    ", "  ", "\t", "#", "'", '"', "\\", "|\n", ">\n", "---\n", "...\n", "%YAML 1.1\n",
    "%TAG ! tag:x,2000:\n", "!!int ", "!!float ", "!!binary ", "!!timestamp ", "!!set ",
    "!!omap ", "!!python/object:os.system ", "!custom ", ".nan", ".inf", "-.inf", "1e999",
    "9" * 30, "0x1F", "0o17", "1_000", "2027-13-45", "2027-01-31", "2027-01-31 10:00:00",
    "0000-00-00", "~", "null", "yes", "no", "on", "\x00", "\x07", "\ufeff", "\u2028", "é",
    "\U0001f4de", "P3M", "1 months", "daily 03:15", "* * * * 7", "cdr; DROP TABLE x",
]  # fmt: skip


def bomb(width: int, depth: int) -> str:
    """A billion-laughs document: each level a list of `width` aliases of the level before."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, depth + 1):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "version: 1\n" + "\n".join(lines) + "\n"


yaml_soup = st.lists(st.sampled_from(TOKENS) | st.text(max_size=8), max_size=40).map("".join)


@FAST
@given(st.text(max_size=300) | yaml_soup)
def test_arbitrary_text_gives_a_config_or_a_clean_error(text: str) -> None:
    check_outcome(text)


@FAST
@given(st.binary(max_size=300) | yaml_soup.map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_arbitrary_bytes_give_a_config_or_a_clean_error(raw: bytes) -> None:
    check_outcome(raw)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12), st.integers(1, 9))
def test_alias_bombs_are_refused_not_expanded(width: int, depth: int) -> None:
    outcome = check_outcome(bomb(width, depth))
    assert isinstance(outcome, ConfigError)
    if width**depth > 200_000:
        assert any("values" in p.message for p in outcome.problems)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a: &a [*a]\nversion: 1\n", ""),
        ("[" * 3000 + "]" * 3000, "nested"),
        ("version: 1\nrules: " + "[" * 100 + "]" * 100 + "\n", "nested"),
        ("version: 1\nx: 2027-13-45\n", "month must be in 1..12"),
        # found by hypothesis: escaped surrogates (pydantic cannot even word its error for them)
        ('{"version": 1, "rules": [], "holds": [{"rules": ["\\ud800\\udc00"]}]}', "surrogate"),
        ('version: 1\n"\\udc00": 1\n', "surrogate"),
        ("? - :\n", "a key must be a name"),  # found by hypothesis: a list as a key
        ("? : :\n", "a key must be a name"),
        ("version: !!int abc\n", "cannot read the value"),
        ("version: 1\n\trules: []\n", "YAML syntax"),
        ("version: 1\nx: \x07\n", "control character"),
        (b"version: 1\nx: \xff\n", "not UTF-8"),
        ("1: a\n'1': b\nversion: 1\n", "duplicate key (not shown"),
        ("version: 1\nversion: 1\n", "duplicate key 'version'"),
        ("version: 1\npreset: [freepbx]\n", "unknown preset"),
        ("version: 1\npreset: asterisk\nkeep: {call-records: 3m}\nrules: 5\n", "list of rules"),
        ("version: 1\ntimezone: Europe\n", "not a time zone"),
        ('version: 1\nholds_dir: "/a\\0b"\n', "NUL"),
        ("version: 1\nsafety: {max_increase: .inf}\n", "finite"),
        ("version: 1\nsafety: {max_delete_fraction: .nan}\n", "finite"),
        ("version: 1\nrules: [{name: r, keep: 99999999999999999999999999d}]\n", "1000 years"),
    ],
)
def test_hostile_documents_are_named_problems(text: str | bytes, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, NAME)
    assert_clean(caught.value)
    assert expected in str(caught.value)


def test_an_alias_bomb_is_stopped_quickly() -> None:
    import time

    started = time.monotonic()
    with pytest.raises(ConfigError, match="more than 100000 values"):
        parse_config(bomb(10, 9), NAME)  # a billion strings once expanded
    assert time.monotonic() - started < 5


def test_keys_brought_in_by_a_merge_are_located_without_a_crash() -> None:
    text = (
        "version: 1\n"
        "base: &s {type: sql, connection: nope, table: cdr, time_column: calldate}\n"
        "rules:\n"
        "  - name: r\n"
        "    keep: 3m\n"
        "    stores: [{<<: *s}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, NAME)
    assert_clean(caught.value)
    assert "connection 'nope' is not defined" in str(caught.value)


# -- (b) structurally valid configs with random values -------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
anything = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def field(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly plausible values, sometimes anything at all."""
    return st.one_of(plausible, plausible, anything)


durations = st.builds(
    lambda n, unit, space: f"{n}{space}{unit}",
    st.integers(-5, 10**25),
    st.sampled_from(["d", "w", "m", "y", "months", "years", "days", "h", "", "mo"]),
    st.sampled_from(["", " ", "  "]),
) | st.sampled_from(["P3M", "P1Y6M", "P", "PT1H", "p1w", "0d", "never", "off", "3 monthz", "1e3d"])
schedules = st.sampled_from(
    ["hourly", "daily 03:15", "daily 24:00", "weekly sun 03:15", "weekly xyz 03:15",
     "15 3 * * mon-fri", "0 0 30 2 *", "*/0 * * * *", "1-99999999999999999999 * * * *",
     "0 3 * * 1", "61 * * * *", "0 3 1 * mon", "- - - - *", "", "* * * *", "@daily"]
) | st.builds(
    lambda parts: " ".join(parts),
    st.lists(st.sampled_from(["*", "*/5", "0", "1-3", "59", "60", "mon", "sun-mon", ",", "9" * 25]),
             min_size=5, max_size=5),
)  # fmt: skip
paths = st.sampled_from(
    ["/var/spool/asterisk/voicemail", "/x", "relative/path", "", "/", "/a\x00b", "//x",
     "/" + "a" * 5000, "/tmp/../etc", "/data/file.prom", "~/x", " /x"]
) | st.text(max_size=20)  # fmt: skip
identifiers = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_$]{0,70}\Z") | st.sampled_from(
    ["cdr; DROP TABLE x", "cdr\n", "cdr--", "`cdr`", '"cdr"', "cdr.cel", "", "1cdr", "cdr "]
)
names = st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{0,70}\Z") | st.text(max_size=10)
dates = st.dates().map(str) | st.sampled_from(["2027-02-30", "2027-13-01", "tomorrow", ""])
transforms = st.sampled_from(
    ["blank", "truncate_digits", "hash", {"truncate_digits": 3}, {"truncate_digits": 99},
     {"constant": "x"}, {"constant": [1]}, {"coarsen_time": "hour"}, {"coarsen_time": "year"},
     {"bucket": [0, 60, 300]}, {"bucket": []}, {"bucket": [300, 60]}, {"map": {"1": "a"}},
     {"map": {"1": "a"}, "default": "b"}, {"map": [1]}, {"a": 1, "b": 2}, {}]
)  # fmt: skip
transform_maps = st.dictionaries(
    st.sampled_from(["1", "2", "src", "dst", "17", "-1", "201"]) | st.text(max_size=4),
    field(transforms),
    max_size=4,
)
numbers = st.sampled_from(
    ["+4930123456", "004930123456", "+1", "+", "", "0301234567", "+49 30 123456",
     "+999999999999999"]
) | st.integers(-(10**20), 10**20) | st.text(max_size=15)  # fmt: skip
extensions = (
    st.sampled_from(["1001", "*97", "", "a" * 40, "10 01"]) | st.integers() | st.text(max_size=6)
)


def optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={key: field(value) for key, value in fields.items()})


def store_of(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    common = {
        "batch_size": st.integers(-10, 200_000),
        "pause": st.floats(allow_nan=True, allow_infinity=True),
        "optional": st.booleans(),
    }
    specific: dict[str, dict[str, st.SearchStrategy[Any]]] = {
        "sql": {
            "connection": st.sampled_from(["cdrdb", "other"]),
            "table": identifiers,
            "schema": identifiers,
            "time_column": identifiers,
            "file_column": identifiers,
            "file_root": paths,
            "subject_columns": st.lists(identifiers, max_size=3),
            "subject_in_file_name": st.booleans(),
            "anonymize": transform_maps,
        },
        "files": {
            "root": paths,
            "match": st.lists(st.sampled_from(["**/*.wav", "*", "", "[", "**/../x"]), max_size=3),
            "age_from": st.sampled_from(["path_date", "filename_date", "mtime", "atime"]),
            "group_siblings": st.booleans(),
            "subject_in_name": st.booleans(),
            "references": optional(
                connection=st.sampled_from(["cdrdb", "x"]), table=identifiers, column=identifiers
            ),
            "named_by": optional(
                connection=st.just("cdrdb"), table=identifiers, column=identifiers
            ),
        },
        "asterisk_voicemail": {
            "root": paths,
            "lock_mode": st.sampled_from(["lockfile", "flock", "none"]),
            "lock_wait": st.floats(allow_nan=True, allow_infinity=True),
            "ami": optional(
                host=st.text(max_size=8),
                port=st.integers(-1, 70000),
                username=st.text(max_size=8),
                secret_file=paths,
                timeout=st.floats(),
            ),
        },
        "csv": {
            "root": paths,
            "match": st.lists(st.text(max_size=6), max_size=3),
            "time_field": st.integers(-5, 300),
            "time_format": st.sampled_from(["%Y-%m-%d %H:%M:%S", "%", "%Q", "", "x"]),
            "subject_fields": st.lists(st.integers(-3, 300), max_size=4),
            "anonymize": transform_maps,
        },
        "3cx_call_history": {"connection": st.just("cdrdb"), "anonymize": transform_maps},
    }
    return st.fixed_dictionaries(
        {"type": st.just(kind)},
        optional={key: field(value) for key, value in {**common, **specific[kind]}.items()},
    )


stores = st.sampled_from(["sql", "files", "asterisk_voicemail", "csv", "3cx_call_history"]).flatmap(
    store_of
) | st.fixed_dictionaries({"type": anything})
rules = st.fixed_dictionaries(
    {"name": field(names), "keep": field(durations), "stores": field(st.lists(stores, max_size=3))},
    optional={
        key: field(value)
        for key, value in {
            "description": st.text(max_size=10),
            "action": st.sampled_from(["delete", "anonymize", "archive"]),
            "then_delete_after": durations,
            "min_keep": durations,
            "k_anonymity": st.integers(-1, 2000),
            "schedule": schedules,
            "start_event": st.sampled_from(["object time", "end of contract"]),
            "ping": st.sampled_from(["https://hc.example/abc", "ftp://x", ""])
            | optional(start=st.text(max_size=10), success=st.just("http://x")),
        }.items()
    },
)
holds = st.fixed_dictionaries(
    {},
    optional={
        key: field(value)
        for key, value in {
            "id": names,
            "reason": st.text(max_size=10),
            "approved_by": st.text(max_size=5),
            "review_by": dates,
            "until": dates,
            "rules": st.lists(names, max_size=2),
            "from": dates,
            "to": dates,
            "numbers": st.lists(numbers, max_size=3),
            "extensions": st.lists(extensions, max_size=3),
        }.items()
    },
)
configs = st.fixed_dictionaries(
    {"version": field(st.sampled_from([1, 2, "1", 1.0, True]))},
    optional={
        key: field(value)
        for key, value in {
            "timezone": st.sampled_from(
                ["Europe/Berlin", "UTC", "Europe", "", "../etc", "Mars/Base"]
            ),
            "audit": optional(
                path=paths,
                signing_key=paths,
                rotate_bytes=st.integers(-1, 10**20),
                rotate_yearly=st.booleans(),
                retention=durations,
            ),
            "connections": st.dictionaries(
                names,
                optional(
                    url=st.sampled_from(["sqlite:///x.db", "", "mariadb+pymysql://u@h/db", "x"]),
                    password_file=paths,
                    password_from=paths,
                    lock_timeout=st.floats(allow_nan=True, allow_infinity=True),
                    retries=st.integers(-1, 100),
                ),
                max_size=2,
            ),
            "rules": st.lists(rules, max_size=3),
            "holds": st.lists(holds, max_size=2),
            "holds_dir": paths,
            "safety": optional(
                max_delete_fraction=st.floats(allow_nan=True, allow_infinity=True),
                deadline_grace=durations,
                max_clock_skew=st.floats(allow_nan=True, allow_infinity=True),
                max_increase=st.floats(allow_nan=True, allow_infinity=True),
                max_increase_floor=st.integers(-5, 10**25),
            ),
            "monitoring": optional(
                metrics_listen=st.sampled_from(["127.0.0.1:9090", "x:99999", ":1", "a:0"]),
                metrics_textfile=paths,
                ping_timeout=st.floats(allow_nan=True, allow_infinity=True),
            ),
            "organisation": optional(controller=st.text(max_size=5), dpo_contact=st.text()),
            "preset": st.sampled_from(["asterisk", "freepbx", "3cx", "yeastar"]),
            "preset_settings": optional(
                astlogdir=paths,
                astspooldir=paths,
                cdr_url=st.just("sqlite:///x"),
                cdr_table=identifiers,
            ),
            "keep": optional(
                **{"call-records": durations, "voicemail": durations, "call-recordings": durations}
            ),
            "anonymize": optional(**{"call-records": durations, "voicemail": durations}),
        }.items()
    },
)


def as_yaml(document: Any) -> str:
    """JSON is YAML (flow style); block style from ruamel for the rest of the examples."""
    try:
        return json.dumps(document, allow_nan=True)
    except (TypeError, ValueError):  # pragma: no cover - every generated value is JSON
        return str(document)


def as_block_yaml(document: Any) -> str:
    import io

    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    return buffer.getvalue()


@FAST
@given(configs)
def test_configs_with_random_values_give_a_config_or_a_clean_error(document: Any) -> None:
    check_outcome(as_yaml(document))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs)
def test_block_style_configs_with_random_values_are_located(document: Any) -> None:
    try:
        text = as_block_yaml(document)
    except Exception:
        assume(False)
        raise
    outcome = check_outcome(text)
    if isinstance(outcome, ConfigError):
        # Block style puts every key on a line of its own: validation problems can be located.
        assert any(problem.line is not None for problem in outcome.problems)


# -- (c) mutated real configs ---------------------------------------------------------------------


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*prefix, index)
            yield from _paths(value, (*prefix, index))


def _load(text: str) -> Any:
    yaml = YAML(typ="safe")
    return yaml.load(text)


def _parent(document: Any, path: tuple[Any, ...]) -> Any:
    node = document
    for part in path[:-1]:
        node = node[part]
    return node


@st.composite
def mutated_documents(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(real_configs()))
    if draw(st.booleans()):
        # Text-level: delete, duplicate, indent or dedent lines; swap a character.
        lines = text.splitlines(keepends=True)
        for _ in range(draw(st.integers(1, 4))):
            if not lines:
                break
            index = draw(st.integers(0, len(lines) - 1))
            operation = draw(
                st.sampled_from(["delete", "duplicate", "indent", "dedent", "tab", "cut"])
            )
            line = lines[index]
            if operation == "delete":
                del lines[index]
            elif operation == "duplicate":
                lines.insert(index, line)
            elif operation == "indent":
                lines[index] = "  " + line
            elif operation == "dedent":
                lines[index] = line[2:] if line.startswith("  ") else line
            elif operation == "tab":
                lines[index] = "\t" + line.lstrip(" ")
            else:
                lines[index] = line[: draw(st.integers(0, len(line)))] + "\n"
        return "".join(lines)
    document = _load(text)
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(document))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _parent(document, path)
        operation = draw(st.sampled_from(["delete", "retype", "duplicate", "rename"]))
        if operation == "delete":
            del parent[path[-1]]
        elif operation == "retype":
            parent[path[-1]] = draw(anything)
        elif operation == "duplicate" and isinstance(parent, list):
            parent.append(parent[path[-1]])
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8)) or "x"] = parent.pop(path[-1])
    return as_yaml(document) if draw(st.booleans()) else as_block_yaml(document)


def test_the_real_configs_are_valid_or_need_their_pbx() -> None:
    for text in real_configs():
        outcome = check_outcome(text)
        assert isinstance(outcome, Config | PbxSettingsError), outcome


@FAST
@given(mutated_documents())
def test_mutated_real_configs_give_a_config_or_a_clean_error(text: str) -> None:
    check_outcome(text)


# -- single values --------------------------------------------------------------------------------


@settings(max_examples=1000, deadline=None)
@given(durations | st.text(max_size=30))
def test_any_period_text_is_a_period_or_a_value_error(text: str) -> None:
    try:
        duration = parse_duration(text)
    except ValueError as error:
        assert str(error)
        return
    from datetime import datetime

    duration.before(datetime(2026, 1, 31))  # computable: no overflow for any accepted period
    duration.after(datetime(2026, 1, 31))


@settings(max_examples=500, deadline=None)
@given(schedules | st.text(max_size=30))
def test_any_schedule_text_is_a_schedule_or_a_value_error(text: str) -> None:
    try:
        parse_schedule(text)
    except ValueError as error:
        assert str(error)


# -- files on disk and the command line -----------------------------------------------------------


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=200) | mutated_documents().map(str.encode))
def test_load_config_and_a_holds_folder_give_a_config_or_a_clean_error(
    scratch: Path, raw: bytes
) -> None:
    config = scratch / "retentiond.yaml"
    holds = scratch / "holds.d"
    holds.mkdir(exist_ok=True)
    config.write_text(
        "version: 1\nrules: [{name: call-records, keep: 3m, stores: [{type: files, root: /x}]}]\n"
    )
    (holds / "fuzz.yaml").write_bytes(raw)
    try:
        load_config(config)
    except ConfigError as error:
        assert error.problems and all(p.message.strip() for p in error.problems)
    config.write_bytes(raw)
    (holds / "fuzz.yaml").unlink()
    try:
        load_config(config)
    except ConfigError as error:
        assert error.problems and all(p.message.strip() for p in error.problems)
    except PbxSettingsError:
        pass


def test_a_config_path_that_never_ends_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a device, not a file"):
        load_config(Path("/dev/zero"))
    huge = tmp_path / "retentiond.yaml"
    huge.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(huge)
    assert MAX_CONFIG_BYTES >= 64 * 1024


BAD_FOR_THE_CLI: list[str | bytes] = [
    bomb(10, 8),
    "[" * 5000 + "]" * 5000,
    b"version: 1\nrules: \xff\xfe\n",
    "version: 1\nx: 2027-13-45\n",
    "version: 1\npreset: {a: 1}\n",
    "version: 1\ntimezone: Europe\nrules: []\n",
    "version: 1\nholds_dir: \"/a\\0b\"\n"
    "rules: [{name: r, keep: 3m, stores: [{type: files, root: /x}]}]\n",
    "version: 1\nrules: [{name: r, keep: 99999999999999999999999d, action: anonymize, "
    "then_delete_after: 99999999999999999999999y, "
    "stores: [{type: csv, root: /x, anonymize: {'1': blank}}]}]\n",
    "version: 1\ns: &s {type: sql, connection: nope, table: cdr, time_column: c}\n"
    "rules: [{name: r, keep: 3m, stores: [{<<: *s}]}]\n",
    "version: 1\nrules: [{name: r, keep: 3m, stores: [{type: sql, connection: c, "
    "table: 'cdr; DROP TABLE x', time_column: calldate}]}]\nconnections: {c: {url: 'sqlite:///x'}}\n",
]  # fmt: skip


def test_check_on_bad_configs_exits_2_with_the_problems_and_no_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RETENTIOND_CONFIG"}
    runs = []
    for number, content in enumerate(BAD_FOR_THE_CLI):
        config = tmp_path / f"bad-{number}.yaml"
        if isinstance(content, bytes):
            config.write_bytes(content)
        else:
            config.write_text(content)
        command = [sys.executable, "-m", "retentiond", "-c", str(config), "check"]
        process = subprocess.Popen(  # all at once: each pays the interpreter's start-up
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        runs.append((config, process))
    for config, process in runs:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 2, (config.name, stderr)
        assert "Traceback" not in stderr, (config.name, stderr)
        assert "the config has errors" in stderr and str(config) in stderr, (config.name, stderr)


# -- atheris, when it is installed ----------------------------------------------------------------


def test_atheris_harness_runs_when_atheris_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    harness = tmp_path / "harness.py"
    harness.write_text(ATHERIS_HARNESS)
    done = subprocess.run(
        [sys.executable, str(harness), "-runs=1500", "-max_len=512", "-seed=1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


ATHERIS_HARNESS = """\
import sys

import atheris

with atheris.instrument_imports(include=["retentiond", "ruamel"]):
    from retentiond.config.loader import parse_config
    from retentiond.config.pbxfiles import PbxSettingsError
    from retentiond.errors import ConfigError


def one(data: bytes) -> None:
    try:
        parse_config(data, "fuzz.yaml")
    except ConfigError as error:
        assert error.problems and all(p.message for p in error.problems)
    except PbxSettingsError:
        pass


atheris.Setup(sys.argv, one)
atheris.Fuzz()
"""


# -- no SQL is built from config text -------------------------------------------------------------

HOSTILE_NAMES = [
    "cdr; DROP TABLE x",
    "cdr;",
    'cdr"',
    "cdr'",
    "cdr`",
    "cdr--",
    "cdr/*",
    "cdr x",
    "cdr\n",
    "cdr.cel",
    "1cdr",
    "",
    "c" * 65,
]
SQL_NAME_KEYS = [
    ("table", "{name}"),
    ("schema", "{name}"),
    ("time_column", "{name}"),
    ("subject_columns", "[{name}]"),
    ("file_column", "{name}"),
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize(("key", "shape"), SQL_NAME_KEYS)
def test_table_and_column_names_that_are_no_identifiers_cannot_be_configured(
    key: str, shape: str, name: str
) -> None:
    store = {"type": "sql", "connection": "c", "table": "cdr", "time_column": "calldate"}
    if key == "file_column":
        store["file_root"] = "/x"
    value = json.dumps(name)
    store_yaml = ", ".join(f"{k}: {json.dumps(v)}" for k, v in store.items() if k != key)
    text = (
        "version: 1\nconnections: {c: {url: 'sqlite:///x.db'}}\nrules:\n  - name: r\n    keep: 3m\n"
        f"    stores:\n      - {{{store_yaml}, {key}: {shape.format(name=value)}}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, NAME)
    assert_clean(caught.value)
    assert any(key in p.path for p in caught.value.problems)
    assert all(p.line == 7 for p in caught.value.problems)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_references_table_that_is_no_identifier_cannot_be_configured(name: str) -> None:
    text = (
        "version: 1\nconnections: {c: {url: 'sqlite:///x.db'}}\nrules:\n  - name: r\n    keep: 3m\n"
        f"    stores:\n      - {{type: files, root: /x, references: {{connection: c, table: "
        f"{json.dumps(name)}}}}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, NAME)
    assert any(p.path.endswith("references.table") for p in caught.value.problems)


@pytest.fixture
def watched_sqlite(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A SQLite cdr database with a table `x` that must survive, and every statement any engine
    sends to a database while the test runs."""
    import sqlite3

    from sqlalchemy import Engine, event

    path = tmp_path / "master.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE x (id INTEGER PRIMARY KEY)")
        db.execute("INSERT INTO x VALUES (1)")
        db.execute('CREATE TABLE "order" (id INTEGER PRIMARY KEY, "group" TEXT, src TEXT)')
        db.execute("""INSERT INTO "order" ("group", src) VALUES ('2020-01-01 10:00:00', 'a')""")
        db.execute("""INSERT INTO "order" ("group", src) VALUES ('2999-01-01 10:00:00', 'b')""")
    db.close()
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    yield f"sqlite:///{path}", statements
    event.remove(Engine, "before_cursor_execute", record)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM x").fetchone() == (1,), "table x was touched"
    db.close()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"table": "nosuch"}, "table nosuch does not exist"),
        ({"table": "cdr$"}, "table cdr$ does not exist"),
        ({"table": "x_DROP_TABLE_x"}, "table x_DROP_TABLE_x does not exist"),
        ({"time_column": "nosuch"}, "column nosuch does not exist"),
        ({"subject_columns": ["src", "nosuch"]}, "names column nosuch, not in table"),
        ({"file_column": "nosuch", "file_root": "/tmp/rec"}, "column nosuch does not exist"),
        ({"schema": "nosuch"}, "nosuch"),
    ],
)
def test_names_that_do_not_exist_are_refused_at_reflection(
    watched_sqlite: tuple[str, list[str]], setting: dict[str, Any], message: str
) -> None:
    from retentiond.config.model import ConnectionConfig, SqlStoreConfig
    from retentiond.errors import StoreError
    from retentiond.stores.sql.store import SqlStore

    url, statements = watched_sqlite
    config = SqlStoreConfig.model_validate(
        {"type": "sql", "connection": "c", "table": "order", "time_column": "group", **setting}
    )
    store = SqlStore(config, ConnectionConfig.model_validate({"url": url}), ZONE)
    with pytest.raises(StoreError) as caught:
        store.open()
    store.close()
    assert message in str(caught.value)
    # Only the catalogue was read (PRAGMA table_xinfo and the like): nothing was changed, and
    # no statement used a name the catalogue did not have.
    assert statements
    for statement in statements:
        verb = statement.lstrip().split(None, 1)[0].upper()
        assert verb in ("PRAGMA", "SELECT"), statement
        if verb == "SELECT":
            assert "nosuch" not in statement, statement


def test_names_reach_sql_only_as_reflection_quotes_them(
    watched_sqlite: tuple[str, list[str]],
) -> None:
    """A table `order` with a time column `group` (both SQL keywords) works: the statements use
    the names reflection found, quoted by the dialect, never the config's text as written."""
    from retentiond.config.model import ConnectionConfig, SqlStoreConfig
    from retentiond.stores.sql.store import SqlStore

    url, statements = watched_sqlite
    config = SqlStoreConfig.model_validate(
        {"type": "sql", "connection": "c", "table": "order", "time_column": "group"}
    )
    store = SqlStore(config, ConnectionConfig.model_validate({"url": url}), ZONE)
    store.open()
    try:
        cutoff = datetime(2026, 1, 1, tzinfo=ZONE)
        assert store.survey(cutoff).expired == 1
        deleted = sum(store.apply(batch, cutoff).deleted for batch in store.batches(cutoff))
    finally:
        store.close()
    assert deleted == 1
    table_statements = [s for s in statements if "order" in s.lower() and "PRAGMA" not in s]
    assert table_statements
    for statement in table_statements:
        assert '"order"' in statement and " order " not in statement.replace("ORDER BY", "")
