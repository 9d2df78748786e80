"""Config mistakes that used to surface only at run time, without a usable location, or with
personal data in the message: each is refused when the config is loaded, exit 2, at the file
and line to change, by every command."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from test_cli import retentiond

COMMANDS = (["check"], ["plan"], ["run", "--once"])


def write_config(folder: Path, rule_lines: str = "", extra: str = "") -> Path:
    database = folder / "master.db"
    database.touch()
    cdr_csv = folder / "cdr-csv"
    cdr_csv.mkdir(exist_ok=True)
    config = folder / "retentiond.yaml"
    config.write_text(
        f"""\
version: 1
timezone: Europe/Berlin
audit: {{path: {folder / "audit.jsonl"}}}
connections:
  cdrdb:
    url: "sqlite:///{database}"
rules:
  - name: call-records
    keep: 90d
{rule_lines}    stores:
      - type: sql
        connection: cdrdb
        table: cdr
        time_column: calldate
      - type: csv
        root: {cdr_csv}
{extra}"""
    )
    return config


def assert_refused_at(config: Path, where: str, says: str) -> None:
    for command in COMMANDS:
        result = retentiond("-c", config, *command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert where in result.stderr and says in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert not (config.parent / "audit.jsonl").exists()


def test_a_csv_match_naming_a_subfolder_is_a_config_error(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    text = config.read_text().replace(
        f"root: {tmp_path / 'cdr-csv'}\n",
        f"root: {tmp_path / 'cdr-csv'}\n        match: ['2025/*.csv']\n",
    )
    config.write_text(text)
    assert_refused_at(
        config, f"{config}:17: rules.0.stores.1.match:", "names a subfolder; a csv store reads"
    )


def test_a_hold_file_naming_a_missing_rule_is_an_error_of_that_file_and_line(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    holds = tmp_path / "holds.d"
    holds.mkdir()
    (holds / "good.yaml").write_text(
        "id: H-1\nreason: Claim\napproved_by: DPO\nreview_by: 2099-01-01\n"
    )
    hold = holds / "typo.yaml"
    hold.write_text(
        "id: H-2\nreason: Claim\napproved_by: DPO\nreview_by: 2099-01-01\n"
        "rules: [call-records, call-recordings]\n"
    )
    assert_refused_at(config, f"{hold}:5: rules:", "names rules that do not exist: call-recordings")


def test_a_hold_in_the_config_naming_a_missing_rule_is_an_error_at_its_line(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path,
        extra="holds:\n  - id: H-3\n    reason: Claim\n    approved_by: DPO\n"
        "    review_by: 2099-01-01\n    rules: [call-recrods]\n",
    )
    assert_refused_at(
        config, f"{config}:22: holds.0.rules:", "names rules that do not exist: call-recrods"
    )


def test_an_unknown_key_is_located_but_never_echoed(tmp_path: Path) -> None:
    number = "4930123456789"
    config = write_config(tmp_path, rule_lines=f"    {number}: Erika Mustermann\n")
    assert_refused_at(config, f"{config}:10: rules.0:", "an unknown key on this line")
    for command in COMMANDS:
        result = retentiond("-c", config, *command)
        assert number not in result.stdout + result.stderr
        assert "Mustermann" not in result.stdout + result.stderr


def test_a_misplaced_setting_is_still_named(tmp_path: Path) -> None:
    config = write_config(tmp_path, rule_lines="    time_column: calldate\n")
    assert_refused_at(config, f"{config}:10: rules.0.time_column:", "unknown key")


def test_a_fifo_as_the_config_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "retentiond.yaml"
    os.mkfifo(fifo)
    for command in COMMANDS:
        started = time.monotonic()
        result = retentiond("-c", fifo, *command)
        assert result.returncode == 2, result.stderr
        assert f"{fifo}: is a FIFO (named pipe), not a file" in result.stderr
        assert time.monotonic() - started < 30


def test_a_fifo_in_the_holds_folder_is_refused_at_once(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    (tmp_path / "holds.d").mkdir()
    os.mkfifo(tmp_path / "holds.d" / "h.yaml")
    assert_refused_at(config, f"{tmp_path / 'holds.d' / 'h.yaml'}: is a FIFO", "not a file")


@pytest.mark.parametrize(
    ("mode", "fix"),
    [(0o602, "chmod go-w"), (0o620, "chmod go-w"), (0o604, "chmod o-rwx"), (0o622, "chmod go-w")],
)
def test_a_password_file_others_may_change_or_read_is_refused_with_the_chmod(
    tmp_path: Path, mode: int, fix: str
) -> None:
    password = tmp_path / "cdrdb.password"
    password.write_text("s3cret\n")
    password.chmod(mode)
    config = write_config(tmp_path)
    text = config.read_text().replace(
        '    url: "sqlite', f'    password_file: {password}\n    url: "sqlite'
    )
    config.write_text(text)
    assert_refused_at(config, f"{config}:6: connections.cdrdb.password_file:", f"{fix} {password}")


def test_a_duplicate_key_that_is_no_setting_is_located_but_never_echoed(tmp_path: Path) -> None:
    number = "4930123456789"
    config = write_config(tmp_path, rule_lines=f"    {number}: a\n    {number}: b\n")
    assert_refused_at(config, f"{config}:11:", "duplicate key (not shown")
    result = retentiond("-c", config, "check")
    assert number not in result.stdout + result.stderr
