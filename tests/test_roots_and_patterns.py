"""What a files store may be pointed at (issue 16, items 7 and 10): `match` patterns that cannot
select a file below the root are config errors with file:line, braces are expanded, not matched
literally, and a store whose patterns match none of the root's files says so."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from test_cli import retentiond

from retentiond.config import parse_config
from retentiond.config.globs import expand_braces
from retentiond.errors import ConfigError

# Ages far from any day the tests run on: expired under `keep: 30d`, or young for decades.
LONG_AGO = datetime(2020, 1, 15, 10, 0, tzinfo=UTC)
FAR_AHEAD = datetime(2099, 1, 15, 10, 0, tzinfo=UTC)

CONFIG = """\
version: 1
audit: {{path: {audit}}}
rules:
  - name: call-recordings
    keep: 30d
    stores:
      - type: files
        root: {root}
        match:
          - "**/*.WAV"
          - {pattern}
safety: {{max_delete_fraction: 1.0}}
"""
PATTERN_LINE = 11


def config_text(pattern: str, root: str = "/var/spool/asterisk/monitor") -> str:
    return CONFIG.format(audit="/var/lib/retentiond/audit.jsonl", root=root, pattern=pattern)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "retentiond.yaml")
    return [str(p) for p in caught.value.problems]


def put(root: Path, relative: str, when: datetime) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF")
    os.utime(path, (when.timestamp(), when.timestamp()))
    return path


# -- patterns ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "hint"),
    [
        ('"../outside/*.wav"', "a store never leaves its root"),
        ('"2024/../../*.wav"', "a store never leaves its root"),
        ('"/var/spool/asterisk/monitor/**/*.wav"', "relative to the store's root"),
        ('"**//*.wav"', "empty folder name"),
        ('"2024/"', "empty folder name"),
        ('"./*.wav"', "'.' folder"),
        ('"**/*.{wav,mp3"', "{ without its }"),
        ('"**/*.wav}"', "{ without its }"),
        ('"**/*.{wav}"', "separated by commas"),
        ('"{..,2024}/*.wav"', "a store never leaves its root"),
        ('"**/[z-a].wav"', "check its [...] ranges"),
    ],
)
def test_patterns_that_cannot_match_are_config_errors_at_their_line(
    pattern: str, hint: str
) -> None:
    found = problems(config_text(pattern))

    assert len(found) == 1
    where = f"retentiond.yaml:{PATTERN_LINE}: rules.0.stores.0.match.1: "
    assert found[0].startswith(where), found
    assert hint in found[0]


def test_a_bad_pattern_stops_check_with_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "retentiond.yaml"
    config.write_text(config_text('"../*.wav"', root=str(tmp_path / "monitor")))

    check = retentiond("-c", config, "check")

    assert check.returncode == 2
    assert f"{config}:{PATTERN_LINE}: rules.0.stores.0.match.1:" in check.stderr
    assert "Traceback" not in check.stderr


@pytest.mark.parametrize(
    ("pattern", "expanded"),
    [
        ("**/*.{wav,mp3}", ["**/*.wav", "**/*.mp3"]),
        (
            "{2024,2025}/**/*.{wav,WAV}",
            ["2024/**/*.wav", "2024/**/*.WAV", "2025/**/*.wav", "2025/**/*.WAV"],
        ),
        ("**/{in,out-{1,2}}-*.wav", ["**/in-*.wav", "**/out-1-*.wav", "**/out-2-*.wav"]),
        ("**/x{,-old}.wav", ["**/x.wav", "**/x-old.wav"]),
        ("**/[{]*.wav", ["**/[{]*.wav"]),  # a brace in a [...] range is a character
        ("**/*.wav", ["**/*.wav"]),
    ],
)
def test_braces_expand_as_in_a_shell(pattern: str, expanded: list[str]) -> None:
    assert expand_braces(pattern) == expanded


def test_brace_globs_find_and_delete_expired_recordings(tmp_path: Path) -> None:
    monitor = tmp_path / "monitor"
    old = [
        put(monitor, f"2020/01/15/out-{n}.{ext}", LONG_AGO) for n, ext in enumerate(("wav", "mp3"))
    ]
    young = put(monitor, "2099/01/15/out-9.mp3", FAR_AHEAD)
    other = put(monitor, "2020/01/15/notes.txt", LONG_AGO)
    config = tmp_path / "retentiond.yaml"
    config.write_text(
        CONFIG.format(audit=tmp_path / "audit.jsonl", root=monitor, pattern='"**/*.{wav,mp3}"')
    )

    plan = retentiond("-c", config, "plan")
    run = retentiond("-c", config, "run", "--once")

    assert "3 files, expired 2," in plan.stdout, plan.stdout + plan.stderr
    assert run.returncode == 0, run.stdout + run.stderr
    assert "deleted 2 files" in run.stdout
    assert [path.exists() for path in old] == [False, False]
    assert young.exists() and other.exists()


# -- system folders as roots ---------------------------------------------------------------------

ROOT_LINE = 8


@pytest.mark.parametrize(
    ("root", "why"),
    [
        ("/", "/ is a system folder"),
        ("/etc", "/etc is a system folder"),
        ("/usr", "/usr is a system folder"),
        ("/var", "/var is a system folder"),
        ("/var/spool", "/var/spool is a system folder"),
        ("/var/lib", "/var/lib is a system folder"),
        ("/var/log/", "/var/log is a system folder"),
        (
            "/var/spool/asterisk/..",
            "/var/spool/asterisk/.. (that is /var/spool) is a system folder",
        ),
        ("/var/spool/../lib/./", "(that is /var/lib) is a system folder"),
        ("/etc/asterisk", "/etc/asterisk lies in /etc"),
        ("/usr/share/asterisk", "lies in /usr/share"),
    ],
)
def test_system_folders_are_refused_as_roots_at_their_line(root: str, why: str) -> None:
    found = problems(config_text('"**/*.wav"', root=root))

    assert len(found) == 1
    assert found[0].startswith(f"retentiond.yaml:{ROOT_LINE}: rules.0.stores.0.root: "), found
    assert why in found[0]
    assert "allow_system_root: true" in found[0]


@pytest.mark.parametrize(
    "root",
    [
        "/var/spool/asterisk/monitor",
        "/var/spool/asterisk/voicemail",
        "/var/lib/3cxpbx/Instance1/Data/Recordings",
        "/var/log/asterisk/cdr-csv",
        "/usr/local/freeswitch/recordings",
        "/home/pbx/recordings",
    ],
)
def test_pbx_folders_below_system_folders_are_roots(root: str) -> None:
    config = parse_config(config_text('"**/*.wav"', root=root))

    assert str(config.rules[0].stores[0].root) == root  # type: ignore[union-attr]


def test_a_root_reaching_a_system_folder_through_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pbx").symlink_to("/var")

    found = problems(config_text('"**/*.wav"', root=str(tmp_path / "pbx/spool")))

    assert f"{tmp_path}/pbx/spool (that is /var/spool) is a system folder" in found[0]


@pytest.mark.parametrize(
    ("store", "line"),
    [
        ("{type: asterisk_voicemail, root: /var/spool}", 6),
        ("{type: csv, root: /var/log}", 6),
        (
            "{type: sql, connection: cdrdb, table: recordings, time_column: start_time,\n"
            "         file_column: recording_url, file_root: /var/lib}",
            7,
        ),
    ],
)
def test_every_store_with_a_root_refuses_system_folders(store: str, line: int) -> None:
    text = f"""\
version: 1
connections: {{cdrdb: {{url: "sqlite:////var/lib/pbx/cdr.db"}}}}
rules:
  - name: records
    keep: 30d
    stores: [{store}]
"""
    found = problems(text)

    assert len(found) == 1
    assert found[0].startswith(f"retentiond.yaml:{line}: rules.0.stores.0."), found
    assert "is a system folder" in found[0]


def test_plan_on_etc_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "retentiond.yaml"
    config.write_text(CONFIG.format(audit=tmp_path / "audit.jsonl", root="/etc", pattern='"**"'))

    plan = retentiond("-c", config, "plan")

    assert plan.returncode == 2
    assert f"{config}:{ROOT_LINE}: rules.0.stores.0.root: /etc is a system folder" in plan.stderr
    assert "/etc" not in plan.stdout


def test_an_allowed_system_root_is_a_warning_in_check(tmp_path: Path) -> None:
    config = tmp_path / "retentiond.yaml"
    allowed = CONFIG.format(audit=tmp_path / "audit.jsonl", root="/etc", pattern='"**"')
    config.write_text(allowed.replace("root: /etc", "root: /etc\n        allow_system_root: true"))

    check = retentiond("-c", config, "check")

    assert check.returncode == 0, check.stdout + check.stderr
    assert (
        "warning: root /etc is a system folder; allowed by allow_system_root: true" in check.stdout
    )


# -- patterns that match none of the root's files ------------------------------------------------

SINGLE = """\
version: 1
audit: {{path: {audit}}}
rules:
  - name: call-recordings
    keep: 30d
    stores:
      - {{type: files, root: {root}, match: [{pattern}]}}
safety: {{max_delete_fraction: 1.0}}
"""


def test_patterns_matching_none_of_the_roots_files_are_a_warning(tmp_path: Path) -> None:
    monitor = tmp_path / "monitor"
    for number in range(5):
        put(monitor, f"2020/01/15/out-{number}.WAV", LONG_AGO)  # upper case: *.wav misses them
    config = tmp_path / "retentiond.yaml"
    config.write_text(
        SINGLE.format(audit=tmp_path / "audit.jsonl", root=monitor, pattern="'*.wav'")
    )
    warning = "warning: match selects no file, but the root has 5 files that no pattern matches"

    check = retentiond("-c", config, "check")
    plan = retentiond("-c", config, "plan")

    assert warning in check.stdout, check.stdout + check.stderr
    assert warning in plan.stdout, plan.stdout + plan.stderr
    assert len(list(monitor.rglob("*.WAV"))) == 5


def test_patterns_matching_some_files_give_no_such_warning(tmp_path: Path) -> None:
    monitor = tmp_path / "monitor"
    put(monitor, "2020/01/15/out-1.WAV", LONG_AGO)
    put(monitor, "2020/01/15/notes.txt", LONG_AGO)
    config = tmp_path / "retentiond.yaml"
    config.write_text(
        SINGLE.format(audit=tmp_path / "audit.jsonl", root=monitor, pattern="'**/*.{wav,WAV}'")
    )

    check = retentiond("-c", config, "check")
    plan = retentiond("-c", config, "plan")

    assert check.returncode == 0, check.stdout + check.stderr
    assert "selects no file" not in check.stdout + plan.stdout
    assert "1 files, expired 1," in plan.stdout
