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
