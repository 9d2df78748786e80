"""Holds, anonymization and the new guards through the engine, on the demo PBX (SQLite, files,
voicemail): what a hold keeps survives, what it does not goes, and the log says so without a
number."""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from privacy import leaked

from retentiond import demo
from retentiond.config.loader import LoadedConfig, load_config
from retentiond.config.model import HoldConfig
from retentiond.engine.engine import Engine
from retentiond.engine.outcome import RunOutcome
from retentiond.evidence import log as audit

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
WINDOW = (date(2026, 7, 1), date(2026, 7, 14))  # expired for all three demo rules


@pytest.fixture
def pbx(tmp_path: Path) -> Path:
    return demo.build(tmp_path / "pbx", now=NOW, days=200)


def database(config_file: Path) -> Path:
    return config_file.parent / "pbx" / "master.db"


def rows(config_file: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(database(config_file)) as db:
        found = list(db.execute(sql))
    db.close()
    return found


def recordings(config_file: Path) -> set[str]:
    return {p.name for p in (config_file.parent / "pbx" / "monitor").rglob("*.wav")}


def add_hold(config_file: Path, text: str, name: str = "hold.yaml") -> None:
    folder = config_file.parent / "holds.d"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)


def window_hold(**extra: str) -> str:
    fields = {
        "id": "LIT-1",
        "reason": "Litigation 3 O 1/26",
        "approved_by": "DPO",
        "review_by": "2027-01-31",
        "from": f"{WINDOW[0]}",
        "to": f"{WINDOW[1]}",
    } | extra
    return "".join(f"{key}: {value}\n" for key, value in fields.items())


def run(config: LoadedConfig, rule: str, **engine_args: object) -> RunOutcome:
    engine = Engine(config, now=lambda: NOW, **engine_args)  # type: ignore[arg-type]
    with audit.AuditLog(config.config.audit.path, clock=lambda: NOW) as log:
        return engine.run(config.config.rule(rule), log)


def in_window(calldate: object) -> bool:
    return f"{WINDOW[0]}" <= str(calldate)[:10] <= f"{WINDOW[1]}"


def test_a_window_hold_keeps_its_calls_and_recordings_and_nothing_else(pbx: Path) -> None:
    add_hold(pbx, window_hold(rules="[call-records, call-recordings]"))
    config = load_config(pbx)
    held_calls = [r for r in rows(pbx, "SELECT calldate FROM cdr") if in_window(r[0])]
    monitor = pbx.parent / "pbx" / "monitor"
    held_files = {
        p.name
        for p in monitor.rglob("*.wav")
        if in_window("-".join(p.relative_to(monitor).parts[:3]))
    }
    assert held_calls and held_files

    calls = run(config, "call-records")
    files = run(config, "call-recordings")

    assert calls.status == files.status == "done"
    left = [r[0] for r in rows(pbx, "SELECT calldate FROM cdr WHERE calldate < '2026-08-26'")]
    assert sorted(left) == sorted(r[0] for r in held_calls)  # only held rows stay expired
    assert held_files <= recordings(pbx)
    assert calls.stores[0].held == len(held_calls)
    assert calls.stores[0].held_by == {"LIT-1": len(held_calls)}
    entries = list(audit.read_entries(config.config.audit.path))
    added = [e for e in entries if e.type == "hold_added"]
    assert len(added) == 1 and added[0].fields["covers"] == {calls.stores[0].label: len(held_calls)}
    started = next(e for e in entries if e.type == "run_started")
    assert started.fields["stores"][0]["held_by"] == {"LIT-1": len(held_calls)}


def test_a_hold_by_number_keeps_only_that_persons_calls_in_its_window(pbx: Path) -> None:
    (number,) = rows(
        pbx,
        f"SELECT src FROM cdr WHERE src LIKE '+49%' AND calldate >= '{WINDOW[0]}' "
        f"AND calldate < '{WINDOW[1]}' ORDER BY calldate LIMIT 1",
    )[0]
    add_hold(pbx, window_hold(rules="[call-records]", numbers=f"['{number}']"))
    config = load_config(pbx)
    theirs = rows(pbx, f"SELECT calldate FROM cdr WHERE (src = '{number}' OR dst = '{number}')")
    outcome = run(config, "call-records")
    assert outcome.status == "done"
    left = rows(pbx, "SELECT calldate, src, dst FROM cdr WHERE calldate < '2026-08-26'")
    assert left and all(number in (src, dst) and in_window(when) for when, src, dst in left)
    assert len(left) == len([r for r in theirs if in_window(r[0])])
    log_text = config.config.audit.path.read_text()
    assert not leaked([str(number), str(number)[3:]], jsonl=[log_text])


def test_an_ended_hold_releases_its_objects_to_the_next_run(pbx: Path) -> None:
    add_hold(pbx, window_hold(rules="[call-records]"))
    config = load_config(pbx)
    run(config, "call-records")
    assert rows(pbx, f"SELECT COUNT(*) FROM cdr WHERE calldate < '{WINDOW[1]}'")[0][0] > 0
    (pbx.parent / "holds.d" / "hold.yaml").unlink()
    config = load_config(pbx)
    assert run(config, "call-records").status == "refused"  # removed is not ended
    outcome = run(config, "call-records", end_holds=["LIT-1"])
    assert outcome.status == "done" and outcome.deleted > 0
    assert rows(pbx, "SELECT COUNT(*) FROM cdr WHERE calldate < '2026-08-26'")[0][0] == 0
    ended = [e for e in audit.read_entries(config.config.audit.path) if e.type == "hold_ended"]
    assert [e.fields["hold"] for e in ended] == ["LIT-1"]


def test_a_hold_added_during_a_run_takes_effect_before_the_next_batch(pbx: Path) -> None:
    config = load_config(pbx)
    holds: list[HoldConfig] = []
    batches: list[int] = []

    def progress(label: str, done: int, expected: int) -> None:
        batches.append(done)
        if len(batches) == 1:  # after the first batch, as a reload would
            holds.append(
                HoldConfig.model_validate(
                    {
                        "id": "LATE-1",
                        "reason": "Authority request",
                        "approved_by": "DPO",
                        "review_by": date(2027, 1, 1),
                        "from": WINDOW[0],
                        "to": WINDOW[1],
                    }
                )
            )

    expired_in_window = [r for r in rows(pbx, "SELECT calldate FROM cdr") if in_window(r[0])]
    # small batches, so the window is still ahead after the first one
    text = pbx.read_text().replace("batch_size: 500", "batch_size: 50")
    pbx.write_text(text)
    config = load_config(pbx)
    outcome = run(config, "call-records", holds=lambda: holds, progress=progress)
    assert outcome.status == "done" and len(batches) > 2
    kept = [r for r in rows(pbx, "SELECT calldate FROM cdr") if in_window(r[0])]
    assert kept == expired_in_window
    entries = list(audit.read_entries(config.config.audit.path))
    types = [e.type for e in entries]
    first_done = types.index("batch_done")
    assert types.index("hold_added") > first_done  # recorded when it arrived, mid-run
    assert entries[types.index("hold_added")].fields["hold"] == "LATE-1"


def test_holds_in_the_plan_and_in_status(pbx: Path) -> None:
    from retentiond.cli.status import status_text
    from retentiond.engine.status import compute

    add_hold(pbx, window_hold(rules="[call-records]", review_by="2026-11-01"))
    config = load_config(pbx)
    run(config, "call-records")
    status = compute(config, now=NOW + timedelta(minutes=5))
    rule = next(r for r in status.rules if r.rule.name == "call-records")
    (hold,) = rule.holds
    assert hold.id == "LIT-1" and hold.review_overdue and hold.held > 0
    assert rule.verdict == "amber"
    text = status_text(status)
    assert "hold LIT-1:" in text and "OVERDUE" in text
    # the oldest call left is a held one: neither overdue nor red
    assert "held: every expired object of this store is under a hold" in text


ANONYMIZED_BEFORE = "2026-08-26 13:00:00"
ANONYMIZE = """\
    action: anonymize
    then_delete_after: 6 months
"""
TRANSFORMS = """\
        anonymize:
          src: truncate_digits
          dst: truncate_digits
          clid: blank
          channel: blank
          dstchannel: blank
          lastdata: blank
          uniqueid: blank
          recordingfile: blank
          billsec: {bucket: [0, 60, 300, 900]}
"""


def anonymizing(config_file: Path) -> LoadedConfig:
    text = config_file.read_text()
    text = text.replace("    keep: 3 months\n", "    keep: 3 months\n" + ANONYMIZE, 1)
    text = text.replace(
        "        subject_columns: [src, dst]",
        "        subject_columns: [src, dst]\n" + TRANSFORMS.rstrip("\n"),
        1,
    )
    config_file.write_text(text)
    return load_config(config_file)


def test_two_stage_anonymization_leaves_no_full_number_and_reruns_change_nothing(
    pbx: Path,
) -> None:
    before = rows(pbx, "SELECT calldate, src, dst, clid, uniqueid, recordingfile FROM cdr")
    config = anonymizing(pbx)
    first = run(config, "call-records")
    assert first.status == "done", first.message
    after = rows(pbx, "SELECT calldate, src, dst, clid, uniqueid, recordingfile FROM cdr")
    # now is 13:00 in Berlin: 6 months and 3 months before it, on the wall clock
    assert min(r[0] for r in after) >= "2026-05-26 13:00:00"  # older: deleted
    old = [r for r in after if r[0] < ANONYMIZED_BEFORE]
    young = [r for r in after if r[0] >= ANONYMIZED_BEFORE]
    assert old and young
    assert all(r[3] == "" and r[4] == "" and r[5] == "" for r in old)
    assert all(str(r[1]).endswith("xxx") and str(r[2]).endswith("xxx") for r in old)
    assert young == [r for r in before if r[0] >= ANONYMIZED_BEFORE]  # unexpired: untouched
    assert first.anonymized == len(old)
    personal = {str(v) for r in before if r[0] < ANONYMIZED_BEFORE for v in r[1:] if v}
    assert not leaked(personal, texts=[repr(old)], jsonl=[config.config.audit.path.read_text()])

    second = run(config, "call-records")
    assert second.status == "done" and second.anonymized == 0 and second.deleted == 0
    assert rows(pbx, "SELECT calldate, src, dst, clid, uniqueid, recordingfile FROM cdr") == after
    finished = [e for e in audit.read_entries(config.config.audit.path) if e.type == "run_finished"]
    assert finished[-1].fields["anonymized"] == 0
    assert finished[0].fields["stores"][-1]["smallest_group"] is not None


def test_a_keep_below_min_keep_is_refused_unless_forced_and_the_force_is_logged(
    pbx: Path,
) -> None:
    text = pbx.read_text().replace(
        "    keep: 3 months\n", "    keep: 3d\n    min_keep: 1 month\n", 1
    )
    pbx.write_text(text.replace("max_delete_fraction: 0.95", "max_delete_fraction: 1.0"))
    config = load_config(pbx)
    count = rows(pbx, "SELECT COUNT(*) FROM cdr")[0][0]
    refused = run(config, "call-records")
    assert refused.status == "refused" and "min_keep" in (refused.message or "")
    assert rows(pbx, "SELECT COUNT(*) FROM cdr")[0][0] == count
    forced = run(config, "call-records", force=True)
    assert forced.status == "done" and forced.deleted > 0
    started = [e for e in audit.read_entries(config.config.audit.path) if e.type == "run_started"]
    assert "min_keep" in started[-1].fields["forced"][0]


def run_at(config: LoadedConfig, moment: datetime, rule: str = "call-records") -> RunOutcome:
    engine = Engine(config, now=lambda: moment)
    with audit.AuditLog(config.config.audit.path, clock=lambda: moment) as log:
        return engine.run(config.config.rule(rule), log)


def test_a_sudden_jump_against_the_previous_run_is_refused(pbx: Path) -> None:
    text = pbx.read_text().replace(
        "max_delete_fraction: 0.95",
        "max_delete_fraction: 0.95\n  max_increase: 5\n  max_increase_floor: 50",
    )
    pbx.write_text(text)
    config = load_config(pbx)
    assert run_at(config, NOW).status == "done"  # the backlog
    day = run_at(config, NOW + timedelta(days=1))  # a day's calls
    assert day.status == "done" and day.deleted < 50
    # keep shrinks from 3 months to ten days: months of calls would go at once
    pbx.write_text(pbx.read_text().replace("    keep: 3 months\n", "    keep: 10d\n", 1))
    config = load_config(pbx)
    count = rows(pbx, "SELECT COUNT(*) FROM cdr")[0][0]
    refused = run_at(config, NOW + timedelta(days=2))
    assert refused.status == "refused" and "max_increase" in (refused.message or "")
    assert rows(pbx, "SELECT COUNT(*) FROM cdr")[0][0] == count


COARSE = """\
        anonymize:
          src: {constant: external}
          dst: {constant: external}
          clid: blank
          channel: blank
          dstchannel: blank
          lastdata: blank
          uniqueid: blank
          recordingfile: blank
          billsec: {bucket: [0, 100000]}
      - type: csv
        root: /nonexistent/cdr-csv
        optional: true
        anonymize: {"1": truncate_digits, "2": truncate_digits, "4": blank}
"""


def test_anonymized_means_every_group_reaches_k_and_an_absent_optional_store_does_not_count(
    pbx: Path,
) -> None:
    from retentiond.evidence.report import build
    from retentiond.evidence.report.values import Period

    text = pbx.read_text().replace("    keep: 3 months\n", "    keep: 3 months\n" + ANONYMIZE, 1)
    text = text.replace(
        "        subject_columns: [src, dst]",
        "        subject_columns: [src, dst]\n" + COARSE.rstrip("\n"),
        1,
    )
    pbx.write_text(text)
    config = load_config(pbx)
    outcome = run(config, "call-records")
    assert outcome.status == "done", outcome.message
    groups = {s.label: s.smallest_group for s in outcome.stores if s.stage == "anonymize"}
    assert groups["cdrdb/cdr"] is not None and groups["cdrdb/cdr"] >= 5
    finished = [e for e in audit.read_entries(config.config.audit.path) if e.type == "run_finished"]
    absent = [s for s in finished[-1].fields["stores"] if s["store"] == "/nonexistent/cdr-csv"]
    assert absent and all(s.get("absent") and "smallest_group" not in s for s in absent)
    period = Period(date(2026, 11, 1), date(2026, 11, 30), config.config.zone())
    report = build.build_report(config, [config.config.audit.path], period, generated_at=NOW)
    (rule,) = report.anonymization
    assert rule.wording == "anonymized"
    # one call with a value of its own makes a group of one: pseudonymized, with the figure
    with sqlite3.connect(database(pbx)) as db:
        db.execute(
            "UPDATE cdr SET billsec = 200000 WHERE AcctId = (SELECT AcctId FROM cdr "
            "WHERE calldate < '2026-07-26' ORDER BY calldate DESC LIMIT 1)"
        )
    db.close()
    run_next_day = Engine(config, now=lambda: NOW + timedelta(days=1), force=True)
    with audit.AuditLog(config.config.audit.path, clock=lambda: NOW + timedelta(days=1)) as log:
        assert run_next_day.run(config.config.rule("call-records"), log).status == "done"
    report = build.build_report(config, [config.config.audit.path], period, generated_at=NOW)
    (rule,) = report.anonymization
    assert rule.wording == "pseudonymized (smallest group 1 < 5)"
