"""Holds in the audit log: each addition, change and end is recorded once, never a number."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from retentiond.audit import AuditLog, read_entries, verify
from retentiond.config.model import HoldConfig
from retentiond.history import fingerprints_path, read_history
from retentiond.holds import record_hold_changes

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
    assert record(path, []) == ["hold_ended"]
    assert record(path, []) == []
    entries = list(read_entries(path))
    added, changed, swapped, ended = entries
    assert added.fields["covers"] == {"cdrdb/cdr": 7}
    assert added.fields["numbers"] == 1 and added.fields["extensions"] == 1
    assert changed.fields["changed"] == ["review_by"]
    assert swapped.fields["changed"] == ["numbers or extensions"]
    assert (ended.fields["hold"], ended.fields["ended"]) == ("HOLD-1", "removed")
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


def test_without_the_fingerprint_file_a_change_is_still_seen_in_what_the_log_says(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    record(path, [hold()])
    fingerprints_path(path).unlink()
    assert record(path, [hold()]) == []
    assert record(path, [hold(extensions=[])]) == ["hold_changed"]
