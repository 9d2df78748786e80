"""Holds, anonymization and guard settings in the config: what is accepted, what is refused."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from retentiond.config import load_config, parse_config
from retentiond.errors import ConfigError
from retentiond.policy.rules import holds_for, review_overdue

BERLIN = ZoneInfo("Europe/Berlin")

BASE = """\
version: 1
timezone: Europe/Berlin
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
        subject_columns: [src, dst]
  - name: call-recordings
    keep: 30d
    stores:
      - type: files
        root: /var/spool/asterisk/monitor
"""

HOLD = """\
holds:
  - id: HOLD-2026-07
    reason: Litigation 3 O 123/26
    approved_by: DPO
    review_by: 2027-01-31
    rules: [call-records]
    from: 2026-05-01
    to: 2026-06-30
    numbers: ["+49 30 123456"]
"""


def problems(text: str, name: str = "retentiond.yaml") -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, name)
    return [str(p) for p in caught.value.problems]


def test_a_hold_becomes_a_window_of_instants_for_the_rules_it_names() -> None:
    config = parse_config(BASE + HOLD)
    now = datetime(2026, 11, 26, 12, tzinfo=UTC)
    holds = holds_for(config.holds, "call-records", now, BERLIN)
    (scope,) = holds.scopes
    assert scope.hold_id == "HOLD-2026-07"
    assert scope.start == datetime(2026, 4, 30, 22, tzinfo=UTC)  # midnight in Berlin, summer
    assert scope.end == datetime(2026, 6, 30, 22, tzinfo=UTC)  # end of 30 June
    assert scope.subject is not None and "030123456" in scope.subject.values
    assert not holds_for(config.holds, "call-recordings", now, BERLIN)


def test_a_hold_ends_after_its_until_day_and_keeps_holding_past_its_review() -> None:
    config = parse_config(BASE + HOLD + "    until: 2026-12-31\n")
    hold = config.holds[0]
    assert holds_for(
        config.holds, "call-records", datetime(2026, 12, 31, 22, 59, tzinfo=UTC), BERLIN
    )
    assert not holds_for(
        config.holds, "call-records", datetime(2026, 12, 31, 23, tzinfo=UTC), BERLIN
    )
    late = datetime(2027, 2, 5, tzinfo=UTC)
    assert review_overdue(hold, late, BERLIN)
    assert not review_overdue(hold, datetime(2027, 1, 31, 12, tzinfo=UTC), BERLIN)


def test_hold_mistakes_are_named_with_their_line() -> None:
    text = BASE + HOLD.replace("    review_by: 2027-01-31\n", "").replace(
        '["+49 30 123456"]', '["+1 555"]'
    ).replace("[call-records]", "[call-record]")
    found = problems(text)
    assert any(
        "retentiond.yaml:23: holds.0.review_by: required key is missing" in f for f in found
    ), found
    assert any("holds.0.numbers.0" in f and "wrong length" in f for f in found)
    # the number itself never appears in an error (errors go to the journal)
    assert not any("+1 555" in f or "1555" in f for f in found)


def test_unknown_rules_and_duplicate_ids_in_holds_are_refused() -> None:
    found = problems(BASE + HOLD.replace("[call-records]", "[call-record]"))
    assert any("names rules that do not exist: call-record" in f for f in found)
    twice = BASE + HOLD + HOLD.split("holds:\n")[1]
    assert any("'HOLD-2026-07' is used twice" in f for f in problems(twice))


def test_anonymize_needs_transforms_and_a_store_that_can_be_anonymized() -> None:
    text = BASE.replace("    keep: 3 months\n", "    keep: 3 months\n    action: anonymize\n")
    assert any("has no anonymize: transforms" in f for f in problems(text))
    files = BASE.replace("    keep: 30d\n", "    keep: 30d\n    action: anonymize\n")
    assert any("cannot be anonymized" in f for f in problems(files))


def test_two_stage_rules_delete_later_than_they_anonymize() -> None:
    text = BASE.replace(
        "    keep: 3 months\n",
        "    keep: 3 months\n    action: anonymize\n    then_delete_after: 2 months\n",
    ).replace(
        "subject_columns: [src, dst]\n",
        "subject_columns: [src, dst]\n        anonymize: {src: truncate_digits}\n",
    )
    assert any("then_delete_after must be longer than keep" in f for f in problems(text))
    good = parse_config(text.replace("then_delete_after: 2 months", "then_delete_after: 2y"))
    assert str(good.rules[0].then_delete_after) == "2y"


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        ("hash", "is not a transform"),
        ("{truncate_digits: 0}", "from 1 to 15"),
        ("{bucket: [60, 0]}", "rise strictly"),
        ("{map: {'1001': sales}}", "needs a default"),
        ("{coarsen_time: minute}", "hour or day"),
    ],
)
def test_bad_transforms_say_what_to_write(transform: str, message: str) -> None:
    text = BASE.replace(
        "    keep: 3 months\n", "    keep: 3 months\n    action: anonymize\n"
    ).replace(
        "subject_columns: [src, dst]\n",
        f"subject_columns: [src]\n        anonymize: {{src: {transform}}}\n",
    )
    found = problems(text)
    assert any("anonymize" in f and message in f for f in found), found


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "retentiond.yaml"
    path.write_text(text)
    return path


def test_holds_folder_beside_the_config_adds_one_hold_per_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, BASE + HOLD)
    folder = tmp_path / "holds.d"
    folder.mkdir()
    (folder / "t-77.yaml").write_text(
        "id: T-77\nreason: Authority request\napproved_by: DPO\nreview_by: 2027-03-01\n"
        "extensions: ['1001']\n"
    )
    (folder / ".t-77.yaml.swp").write_text("garbage: [")
    (folder / "README").write_text("not a hold")
    loaded = load_config(config)
    assert [h.id for h in loaded.config.holds] == ["HOLD-2026-07", "T-77"]
    assert loaded.holds_dir == folder and loaded.holds_sha256
    assert loaded.config.holds[1].review_by == date(2027, 3, 1)
    before = loaded.holds_sha256
    (folder / "t-77.yaml").write_text(
        "id: T-77\nreason: Authority request\napproved_by: DPO\nreview_by: 2027-04-01\n"
    )
    assert load_config(config).holds_sha256 != before


def test_a_bad_hold_file_is_named_with_its_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, BASE)
    folder = tmp_path / "holds.d"
    folder.mkdir()
    (folder / "bad.yaml").write_text("id: T-1\nreason: x\napproved_by: DPO\nreview_by: next week\n")
    (folder / "twice.yml").write_text(
        "id: T-1\nreason: x\napproved_by: DPO\nreview_by: 2027-01-01\nrules: [nope]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    found = [str(p) for p in caught.value.problems]
    assert any(
        f.startswith(f"{folder}/bad.yaml:4: review_by:") and "YYYY-MM-DD" in f for f in found
    )


def test_a_configured_holds_folder_must_exist(tmp_path: Path) -> None:
    config = write_config(tmp_path, BASE + f"holds_dir: {tmp_path}/missing\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert "does not exist" in str(caught.value.problems[0])


# --- a hold that would hold nothing is refused (issue 16 item 2) ------------------------------

NUMBER = "+49301234567890"


@pytest.mark.parametrize(
    ("written", "message"),
    [
        (f"numbers: [{NUMBER}]", "must be quoted text like '+4930123456': YAML read it"),
        (f"numbers: [00{NUMBER[1:]}]", "must be quoted text like '+4930123456': YAML read it"),
        (f"numbers: [{NUMBER[:10]}e4]", "must be quoted text like '+4930123456': YAML read it"),
        (f"extensions: [{NUMBER}]", "must be quoted text like '1001': YAML read it"),
        (f"extensions: ['{NUMBER}']", "an external number goes under numbers:"),
        ("numbers: ['+4930 Xyloph']", "has letters or other signs"),
        ("numbers: ['+49 30 1234#567']", "has letters or other signs"),
    ],
)
def test_a_hold_number_that_would_match_nothing_is_a_config_error_at_its_line(
    tmp_path: Path, written: str, message: str
) -> None:
    key = written.split(":")[0]
    found = problems(BASE + HOLD.replace('numbers: ["+49 30 123456"]', written))
    assert any(f"retentiond.yaml:30: holds.0.{key}.0: " in f and message in f for f in found)
    main = write_config(tmp_path, BASE)
    folder = tmp_path / "holds.d"
    folder.mkdir()
    (folder / "unquoted.yaml").write_text(
        f"id: T-2\nreason: Authority request\napproved_by: DPO\nreview_by: 2027-03-01\n{written}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(main)
    found += [str(p) for p in caught.value.problems]
    assert any(f"{folder}/unquoted.yaml:5: {key}.0: " in f and message in f for f in found), found
    # never the number itself: config errors reach the journal
    for shown in ("49301234567890", "301234567890", "Xyloph", "1234#567"):
        assert not any(shown in f for f in found), found


def test_an_unquoted_hold_number_stops_the_daemon_from_starting(tmp_path: Path) -> None:
    main = write_config(tmp_path, BASE + HOLD.replace('["+49 30 123456"]', f"[{NUMBER}]"))
    result = subprocess.run(
        [sys.executable, "-m", "retentiond", "-c", str(main), "check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "holds.0.numbers.0: must be quoted text" in result.stderr
    assert "49301234567890" not in result.stdout + result.stderr


def test_quoted_numbers_and_extensions_are_accepted_in_every_written_form() -> None:
    text = (
        BASE
        + HOLD.replace('["+49 30 123456"]', '["+49 30 1234-567890", "0049 (30) 1234567890"]')
        + "    extensions: ['1001', 'sales']\n"
    )
    (hold,) = parse_config(text).holds
    subject = hold.subject()
    assert subject is not None
    assert {"+49301234567890", "0301234567890", "0049301234567890"} <= subject.numbers
    assert subject.extensions == {"1001", "sales"}


# --- a reason that carries the number it protects is refused (issue 16 item 5) -----------------


@pytest.mark.parametrize(
    "reason",
    [
        f"Litigation about {NUMBER}",  # E.164
        "Calls from 0049301234567890",  # 00-prefix
        "Calls from 0301234567890",  # national
        "Caller 301234567890",  # national significant number
        "Caller 030 1234-567890",  # digits with separators
        "Caller +49 (0)30 1234567890",
        "Caller of sales",  # an extension with letters, as a word
    ],
)
def test_a_hold_reason_carrying_its_number_is_refused_at_its_line(
    tmp_path: Path, reason: str
) -> None:
    hold = HOLD.replace("Litigation 3 O 123/26", reason).replace(
        '["+49 30 123456"]', f'["{NUMBER}"]\n    extensions: [sales]'
    )
    found = problems(BASE + hold)
    main = write_config(tmp_path, BASE)
    folder = tmp_path / "holds.d"
    folder.mkdir()
    (folder / "t-2.yaml").write_text(
        f"id: T-2\nreason: {reason}\napproved_by: DPO\nreview_by: 2027-03-01\n"
        f"numbers: ['{NUMBER}']\nextensions: [sales]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(main)
    found += [str(p) for p in caught.value.problems]
    assert any(
        f.startswith("retentiond.yaml:24: holds.0.reason: contains one of the hold's numbers")
        for f in found
    ), found
    assert any(
        f.startswith(f"{folder}/t-2.yaml:2: reason: contains one of the hold's numbers")
        for f in found
    ), found
    assert not any("1234" in f or "sales" in f for f in found), found


def test_a_hold_reason_with_a_case_number_is_accepted() -> None:
    hold = HOLD.replace('["+49 30 123456"]', f'["{NUMBER}"]\n    extensions: [sales, "1001"]')
    (parsed,) = parse_config(BASE + hold.replace("3 O 123/26", "3 O 1001/26, wholesale")).holds
    assert parsed.reason == "Litigation 3 O 1001/26, wholesale"
