"""Holds in the audit log: each addition, change and end is recorded once, never a number."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from retentiond import demo
from retentiond.config.loader import load_config
from retentiond.config.model import HoldConfig
from retentiond.engine.engine import Engine
from retentiond.engine.holds import record_hold_changes
from retentiond.evidence.fingerprints import fingerprints_path, key_path
from retentiond.evidence.history import read_history
from retentiond.evidence.log import AuditLog, read_entries, verify

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)
NUMBER = "+4930123456"


def hold(**changes: object) -> HoldConfig:
    fields: dict[str, object] = {
        "id": "HOLD-1",
        "reason": "Litigation 3 O 123/26",
        "approved_by": "DPO",
        "review_by": date(2027, 1, 31),
        "rules": ["call-records"],
        "from": date(2026, 5, 1),
        "to": date(2026, 6, 30),
        "numbers": [NUMBER],
        "extensions": ["1001"],
    }
    return HoldConfig.model_validate(fields | changes)


def record(path: Path, holds: list[HoldConfig], now: datetime = NOW, **kw: object) -> list[str]:
    with AuditLog(path, clock=lambda: now) as log:
        entries = record_hold_changes(log, holds, now, BERLIN, **kw)  # type: ignore[arg-type]
    return [e.type for e in entries]


def test_each_change_of_a_hold_is_one_entry(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    assert record(path, [hold()], covers={"HOLD-1": {"cdrdb/cdr": 7}}) == ["hold_added"]
    assert record(path, [hold()]) == []  # nothing changed: nothing recorded
    assert record(path, [hold(review_by=date(2027, 3, 31))]) == ["hold_changed"]
    # one number swapped for another: the count is the same, the fingerprint is not
    assert record(path, [hold(review_by=date(2027, 3, 31), numbers=["+4930999999"])]) == [
        "hold_changed"
    ]
    assert record(path, []) == []  # vanished from the config: ended only explicitly
    assert record(path, [], end={"HOLD-1": "--end-hold"}) == ["hold_ended"]
    assert record(path, []) == []
    entries = list(read_entries(path))
    added, changed, swapped, ended = entries
    assert added.fields["covers"] == {"cdrdb/cdr": 7}
    assert added.fields["numbers"] == 1 and added.fields["extensions"] == 1
    assert changed.fields["changed"] == ["review_by"]
    assert swapped.fields["changed"] == ["numbers or extensions"]
    assert (ended.fields["hold"], ended.fields["ended"]) == (
        "HOLD-1",
        "not found in the config; ended by --end-hold",
    )
    assert verify(path).ok
    text = path.read_text()
    for secret in (NUMBER, "30123456", "4930999999", "1001"):
        assert secret not in text
    assert oct(fingerprints_path(path).stat().st_mode & 0o777) == "0o600"


def test_a_hold_whose_until_passed_is_ended_once(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    limited = hold(until=date(2026, 12, 31))
    assert record(path, [limited]) == ["hold_added"]
    later = datetime(2027, 1, 2, tzinfo=UTC)
    assert record(path, [limited], later) == ["hold_ended"]
    assert record(path, [limited], later) == []
    (entry,) = [e for e in read_entries(path) if e.type == "hold_ended"]
    assert entry.fields["ended"] == "its until date has passed"
    assert read_history(path).holds == {}


def test_a_hold_that_vanished_after_its_until_day_has_ended_on_its_own(tmp_path: Path) -> None:
    # the until date written in the hold is the explicit end; its file may go afterwards
    path = tmp_path / "audit.jsonl"
    assert record(path, [hold(until=date(2026, 12, 31))]) == ["hold_added"]
    assert record(path, [], datetime(2026, 12, 31, 22, tzinfo=UTC)) == []
    assert record(path, [], datetime(2027, 1, 2, tzinfo=UTC)) == ["hold_ended"]
    assert read_history(path).holds == {}


def test_without_the_fingerprint_file_a_change_is_still_seen_in_what_the_log_says(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    record(path, [hold()])
    fingerprints_path(path).unlink()
    assert record(path, [hold()]) == []
    assert record(path, [hold(extensions=[])]) == ["hold_changed"]


# --- the fingerprints are keyed (issue 16, item 12) ----------------------------------------------


def plain_sha256(held: HoldConfig) -> str:
    """The fingerprint before the key: the definition's SHA-256, which anyone who has read
    the log (everything but the numbers) can brute-force."""
    return hashlib.sha256(
        json.dumps(held.definition(), sort_keys=True, default=str).encode()
    ).hexdigest()


def write_plain_fingerprints(path: Path, holds: list[HoldConfig]) -> None:
    """holds.json as retentiond wrote it before the key, and no key."""
    fingerprints_path(path).write_text(json.dumps({h.id: plain_sha256(h) for h in holds}))
    key_path(path).unlink(missing_ok=True)


def test_the_fingerprint_file_holds_no_plain_hash_of_a_hold_and_its_key_stays_private(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    record(path, [hold()])
    saved = fingerprints_path(path).read_text()
    assert plain_sha256(hold()) not in saved
    key = key_path(path).read_bytes()
    assert len(key) == 32
    assert oct(key_path(path).stat().st_mode & 0o777) == "0o600"
    assert oct(fingerprints_path(path).stat().st_mode & 0o777) == "0o600"
    keyed = hmac.new(key, json.dumps(hold().definition(), sort_keys=True).encode(), "sha256")
    assert json.loads(saved) == {"hash": "hmac-sha256", "holds": {"HOLD-1": keyed.hexdigest()}}
    log = path.read_bytes()
    assert key.hex().encode() not in log and key not in log
    assert b"holds.key" not in log


def test_an_upgrade_from_plain_fingerprints_records_no_change_and_rewrites_them_keyed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    assert record(path, [hold()]) == ["hold_added"]
    write_plain_fingerprints(path, [hold()])
    assert record(path, [hold()]) == []  # no spurious hold_changed, no hold_ended
    assert plain_sha256(hold()) not in fingerprints_path(path).read_text()
    assert json.loads(fingerprints_path(path).read_text())["hash"] == "hmac-sha256"
    # and the keyed file goes on seeing a swapped number
    swapped = hold(numbers=["+4930999999"])
    assert record(path, [swapped]) == ["hold_changed"]
    assert record(path, [swapped]) == []
    assert read_history(path).holds.keys() == {"HOLD-1"}


def test_an_upgrade_still_sees_a_number_swapped_just_before_it(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    record(path, [hold()])
    write_plain_fingerprints(path, [hold()])
    (entry,) = [e for e in read_entries(path) if e.type == "hold_added"]
    assert record(path, [hold(numbers=["+4930999999"])]) == ["hold_changed"]
    changed = list(read_entries(path))[-1]
    assert changed.fields["changed"] == ["numbers or extensions"]
    assert entry.fields["hold"] == changed.fields["hold"] == "HOLD-1"


def test_a_lost_key_costs_one_comparison_and_no_spurious_entry(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    record(path, [hold()])
    key_path(path).unlink()
    assert record(path, [hold()]) == []
    assert len(key_path(path).read_bytes()) == 32  # a new key, and prints made with it
    assert record(path, [hold(numbers=["+4930999999"])]) == ["hold_changed"]


def test_after_an_upgrade_the_next_run_keeps_what_the_hold_keeps_and_logs_no_change(
    tmp_path: Path,
) -> None:
    config_file = demo.build(tmp_path / "pbx", now=NOW, days=200, hold=True)
    loaded = load_config(config_file)
    path = loaded.config.audit.path
    (held,) = loaded.config.holds

    def run(now: datetime) -> None:
        with AuditLog(path, clock=lambda: now) as log:
            outcome = Engine(loaded, now=lambda: now).run(loaded.config.rule("call-records"), log)
        assert outcome.status == "done"

    kept = held_calls(config_file, held)
    assert kept > 0
    run(NOW)
    assert held_calls(config_file, held) == kept
    write_plain_fingerprints(path, [held])  # as the version before the key left it
    run(NOW + timedelta(days=1))
    assert held_calls(config_file, held) == kept
    types = [e.type for e in read_entries(path)]
    assert types.count("hold_added") == 1
    assert "hold_changed" not in types and "hold_ended" not in types
    assert plain_sha256(held) not in fingerprints_path(path).read_text()


def held_calls(config_file: Path, held: HoldConfig) -> int:
    """The demo's calls in the hold's window (its calldate is Berlin wall-clock time)."""
    with sqlite3.connect(config_file.parent / "pbx" / "master.db") as db:
        (count,) = db.execute(
            "SELECT count(*) FROM cdr WHERE date(calldate) BETWEEN ? AND ?",
            (str(held.from_), str(held.to)),
        ).fetchone()
    db.close()
    return int(count)
