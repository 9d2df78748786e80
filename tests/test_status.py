"""`retentiond status`: compliance per rule against its deadline, on the demo PBX's real files.

The deadline arithmetic is tested on its own first; then status in-process at a fixed `now`
(exact figures against the engine's own surveys and the database), then the command line as an
administrator or a monitoring check runs it: a real process, its output and its exit code.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from privacy import leaked
from test_cli import retentiond

from retentiond import demo
from retentiond.cli.status import status_json, status_text
from retentiond.config.loader import LoadedConfig, load_config
from retentiond.engine.engine import Engine
from retentiond.engine.status import (
    EXIT_DEADLINE,
    EXIT_UNKNOWN,
    NO_HOLDS_LINE,
    RunHistory,
    RunRecord,
    StoreStatus,
    compute,
    judge,
    run_histories,
)
from retentiond.evidence import log as audit
from retentiond.policy.durations import parse_duration
from retentiond.policy.rules import cutoff, deadline, schedule_interval
from retentiond.policy.schedule import parse_schedule

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)  # 13:00 CET
ONE_DAY = parse_duration("1d")


def days(n: int) -> timedelta:
    return timedelta(days=n)


# --- the deadline: keep + the schedule's interval + grace ----------------------------------------


def test_three_months_daily_with_a_day_of_grace_is_three_months_two_days() -> None:
    rule_deadline = deadline(parse_duration("3 months"), parse_schedule("daily 03:15"), ONE_DAY)
    assert rule_deadline.interval == days(1) and rule_deadline.scheduled
    assert rule_deadline.period() == "3 months 2 days"
    assert rule_deadline.iso() == "P3M2D"
    # 26 Nov 13:00 CET less 2 days less 3 months: 24 Aug 13:00 CEST
    assert rule_deadline.instant(NOW, BERLIN) == datetime(2026, 8, 24, 11, 0, tzinfo=UTC)
    assert cutoff(NOW, parse_duration("3 months"), BERLIN) == datetime(2026, 8, 26, 11, tzinfo=UTC)


def test_a_weekly_schedule_adds_a_week() -> None:
    rule_deadline = deadline(
        parse_duration("3 months"), parse_schedule("weekly sun 03:15"), ONE_DAY
    )
    assert rule_deadline.interval == days(7)
    assert rule_deadline.period() == "3 months 8 days"
    assert rule_deadline.instant(NOW, BERLIN) == datetime(2026, 8, 18, 11, 0, tzinfo=UTC)


def test_without_a_schedule_a_daily_run_is_assumed() -> None:
    unscheduled = deadline(parse_duration("60d"), None, ONE_DAY)
    daily = deadline(parse_duration("60d"), parse_schedule("daily 03:20"), ONE_DAY)
    assert unscheduled.interval == days(1) and not unscheduled.scheduled
    assert unscheduled.period() == "62 days" and unscheduled.iso() == "P62D"
    assert unscheduled.instant(NOW, BERLIN) == daily.instant(NOW, BERLIN)


@pytest.mark.parametrize(
    ("schedule", "interval"),
    [
        ("hourly", timedelta(hours=1)),
        ("daily 02:30", days(1)),  # DST changes do not stretch the wall-clock interval
        ("15 3 * * mon-fri", days(3)),  # Friday to Monday
        ("0 3 1 * *", days(31)),
        ("0 4 29 2 *", days(4 * 365 + 1)),  # leap days only
    ],
)
def test_the_interval_is_the_longest_gap_between_scheduled_times(
    schedule: str, interval: timedelta
) -> None:
    assert schedule_interval(parse_schedule(schedule)) == interval


def test_grace_and_an_hourly_interval_show_in_the_period() -> None:
    rule_deadline = deadline(parse_duration("1y"), parse_schedule("hourly"), parse_duration("1w"))
    assert rule_deadline.period() == "1 year 7 days 1 hour"
    assert rule_deadline.iso() == "P1Y7DT1H"


def test_at_a_month_end_nothing_is_overdue_that_no_run_could_delete_yet() -> None:
    """31 May: three months back is 28 Feb, and so it was on 29 and 30 May. The daily runs of
    those days had cutoffs of 28 Feb 03:15, so a call of 28 Feb 10:00 is expired, not overdue."""
    keep = parse_duration("3 months")
    now = datetime(2026, 5, 31, 12, 0, tzinfo=UTC)
    instant = deadline(keep, parse_schedule("daily 03:15"), ONE_DAY).instant(now, BERLIN)
    call = datetime(2026, 2, 28, 10, 0, tzinfo=BERLIN)
    assert call < cutoff(now, keep, BERLIN)
    assert not call < instant
    assert instant == datetime(2026, 2, 28, 0, 0, tzinfo=BERLIN)


@settings(max_examples=150, deadline=None)
@given(
    now=st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31)),
    keep=st.sampled_from(["1 month", "3 months", "60d", "1y", "12w"]),
    schedule=st.sampled_from(["daily 03:15", "daily 02:30", "weekly sun 01:00", "hourly"]),
    grace=st.sampled_from(["1d", "2d", "1w"]),
)
def test_overdue_objects_were_past_the_cutoff_of_every_run_in_the_window(
    now: datetime, keep: str, schedule: str, grace: str
) -> None:
    """Whatever the calendar does, an object older than the deadline instant was older than the
    cutoff of each run the schedule made in the interval before the grace: a run should have
    deleted it. And the deadline is never later than the cutoff, nor much earlier than
    keep + interval + grace (a month end's clamp, at most 3 days, plus a day)."""
    moment = now.replace(tzinfo=UTC)
    period, parsed, slack = parse_duration(keep), parse_schedule(schedule), parse_duration(grace)
    rule_deadline = deadline(period, parsed, slack)
    instant = rule_deadline.instant(moment, BERLIN)
    rule_cutoff = cutoff(moment, period, BERLIN)
    assert instant <= rule_cutoff
    assert instant >= rule_cutoff - rule_deadline.interval - slack.delta() - days(4)
    latest = slack.before(moment.astimezone(BERLIN).replace(tzinfo=None))
    trigger = parsed.trigger(BERLIN)
    run = trigger.get_next_fire_time(None, (latest - rule_deadline.interval).replace(tzinfo=BERLIN))
    runs = 0
    while run is not None and run.replace(tzinfo=None) <= latest:
        assert instant <= cutoff(run, period, BERLIN)
        runs += 1
        run = trigger.get_next_fire_time(run, run)
    # A DST change can move the window's one run just out of it: that hour is the grace's.
    steady = BERLIN.utcoffset(latest - rule_deadline.interval) == BERLIN.utcoffset(
        latest + timedelta(hours=2)
    )
    assert runs >= 1 or not steady


# --- verdicts ------------------------------------------------------------------------------------


def store(**figures: Any) -> StoreStatus:
    return StoreStatus("cdrdb/cdr", "sql", "rows", **figures)


def run(status: str, seq: int = 7) -> RunRecord:
    return RunRecord(seq, NOW, status, "r1", 0, NOW - days(90))


DONE = RunHistory(run("done"), run("done"))


@pytest.mark.parametrize(
    ("stores", "history", "verdict", "code"),
    [
        ([store(total=10, expired=3)], DONE, "green", 0),  # expired since the run: next run's
        ([store(total=10, expired=3, left_behind=1)], DONE, "amber", 0),
        ([store(total=10, expired=3, overdue=2)], DONE, "red", EXIT_DEADLINE),
        ([store(total=10)], RunHistory(), "amber", 0),  # no successful run yet
        ([store(total=10, expired=1)], RunHistory(run("done"), run("failed", 9)), "red", 4),
        ([store(total=10)], RunHistory(run("done"), run("failed", 9)), "amber", 0),
        ([store(total=10, expired=1)], RunHistory(None, run("refused", 9)), "red", 4),
        ([store(total=10)], RunHistory(run("done"), run("incomplete", 9)), "amber", 0),
        ([store(total=10)], RunHistory(run("done"), run("interrupted", 9)), "amber", 0),
        ([store(total=10)], RunHistory(run("done"), run("unfinished", 9)), "amber", 0),
        ([store(error="no table cdr_archive"), store(total=4)], DONE, "red", EXIT_UNKNOWN),
        ([store(error="gone"), store(total=4, overdue=1, expired=1)], DONE, "red", 4),
        ([store(absent="optional, not found"), store(total=4)], DONE, "green", 0),
    ],
)
def test_verdict_rules(
    stores: list[StoreStatus], history: RunHistory, verdict: str, code: int
) -> None:
    reasons, exit_code = judge(stores, history)
    levels = {r.level for r in reasons}
    worst = "red" if "red" in levels else "amber" if "amber" in levels else "green"
    assert (worst, exit_code) == (verdict, code), reasons


# --- the run history from the deletion log -------------------------------------------------------


def test_last_runs_are_read_from_the_log(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with audit.AuditLog(path) as log:
        log.append("run_started", run_id="a1", rule="call-records", cutoff=NOW - days(92))
        log.append("batch_done", run_id="a1", store="cdrdb/cdr", batch=1, deleted=5)
        log.append("run_finished", run_id="a1", rule="call-records", status="done", deleted=5)
        log.append("run_refused", run_id="b1", rule="voicemail", reason="too much")
        log.append("run_started", run_id="a2", rule="call-records", cutoff=NOW - days(91))
        log.append("config_reloaded", old_sha256="a", new_sha256="b")  # not a run: passed over
    histories, problem = run_histories(path)
    assert problem is None
    calls = histories["call-records"]
    assert calls.last_success is not None and calls.last_run is not None
    assert (calls.last_success.seq, calls.last_success.deleted) == (3, 5)
    assert calls.last_success.cutoff == NOW - days(92)
    assert (calls.last_run.seq, calls.last_run.status) == (5, "unfinished")
    voicemail = histories["voicemail"]
    assert voicemail.last_success is None
    assert voicemail.last_run is not None and voicemail.last_run.status == "refused"


def test_a_missing_log_means_no_run_and_a_broken_one_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    assert run_histories(path) == ({}, None)
    with audit.AuditLog(path) as log:
        log.append("run_finished", run_id="a1", rule="call-records", status="done", deleted=1)
    with path.open("a") as handle:
        handle.write('{"seq": 2, "changed": true}\n')
    histories, problem = run_histories(path)
    assert problem is not None and "line 2" in problem
    success = histories["call-records"].last_success
    assert success is not None and success.seq == 1  # what was read before the break is used


# --- status in-process, at a fixed now, on the demo PBX ------------------------------------------


@pytest.fixture
def pbx(tmp_path: Path) -> Path:
    """The demo PBX built for NOW: 200 days of calls, voicemail and recordings."""
    return demo.build(tmp_path / "pbx", now=NOW, days=200)


def edit(config_file: Path, old: str, new: str) -> LoadedConfig:
    text = config_file.read_text()
    assert old in text
    config_file.write_text(text.replace(old, new))
    return load_config(config_file)


def enforce(config: LoadedConfig, **engine_args: Any) -> list[str]:
    engine = Engine(config, now=lambda: NOW, **engine_args)
    with audit.AuditLog(config.config.audit.path, clock=lambda: NOW) as log:
        return [engine.run(rule, log).status for rule in config.config.rules]


def add_call(config_file: Path, at: datetime) -> None:
    """A call row written late (a PBX that was offline, a restored backup) dated `at`."""
    with sqlite3.connect(config_file.parent / "pbx" / "master.db") as db:
        db.execute(
            "INSERT INTO cdr (calldate, src, dst, disposition, uniqueid) VALUES (?, '', '', "
            "'ANSWERED', '')",
            (at.astimezone(demo.ZONE).strftime("%Y-%m-%d %H:%M:%S"),),
        )
    db.close()


def count_calls_before(config_file: Path, instant: datetime) -> int:
    wall = instant.astimezone(demo.ZONE).strftime("%Y-%m-%d %H:%M:%S")
    with sqlite3.connect(config_file.parent / "pbx" / "master.db") as db:
        (count,) = db.execute("SELECT COUNT(*) FROM cdr WHERE calldate < ?", (wall,)).fetchone()
    db.close()
    return int(count)


def test_figures_equal_the_engines_surveys_and_the_database(pbx: Path) -> None:
    config = load_config(pbx)
    result = compute(config, now=NOW)
    engine = Engine(config, now=lambda: NOW)
    for rule, rule_status in zip(config.config.rules, result.rules, strict=True):
        with engine.open_stores(rule) as stores:
            plan = engine.plan(rule, stores)
        assert rule_status.cutoff == plan.cutoff
        for store_plan, store_status in zip(plan.stores, rule_status.stores, strict=True):
            assert store_status.label == store_plan.label
            assert store_status.total == store_plan.survey.total
            assert store_status.expired == store_plan.survey.expired
            assert store_status.oldest == store_plan.survey.oldest
    calls = result.rules[0]
    assert calls.stores[0].expired == count_calls_before(pbx, calls.cutoff)
    assert calls.stores[0].overdue == count_calls_before(pbx, calls.deadline_instant)
    assert 0 < calls.stores[0].overdue < calls.stores[0].expired


def test_a_year_of_data_before_any_run_is_red(pbx: Path) -> None:
    result = compute(load_config(pbx), now=NOW)
    assert [r.verdict for r in result.rules] == ["red", "red", "red"]
    assert all(r.total("overdue") > 0 for r in result.rules)
    assert result.exit_code == 4
    assert not (pbx.parent / "audit.jsonl").exists()  # status writes no log


def test_after_a_run_everything_is_green(pbx: Path) -> None:
    config = load_config(pbx)
    assert enforce(config) == ["done", "done", "done"]
    result = compute(config, now=NOW + timedelta(minutes=5))
    assert [r.verdict for r in result.rules] == ["green", "green", "green"], [
        r.reasons for r in result.rules
    ]
    assert result.exit_code == 0
    assert all(r.total("overdue") == 0 and r.total("expired") == 0 for r in result.rules)


def test_objects_expired_since_the_last_run_wait_for_the_next_one(pbx: Path) -> None:
    config = load_config(pbx)
    enforce(config)
    keep = config.config.rules[0].keep
    later = NOW + timedelta(hours=2)
    add_call(pbx, cutoff(later, keep, demo.ZONE) - timedelta(minutes=30))  # expired after NOW
    calls = compute(config, now=later).rules[0]
    assert calls.stores[0].expired >= 1
    assert calls.stores[0].left_behind == 0
    assert calls.verdict == "green"


def test_an_object_the_last_run_left_behind_is_amber(pbx: Path) -> None:
    config = load_config(pbx)
    enforce(config)
    keep = config.config.rules[0].keep
    add_call(pbx, cutoff(NOW, keep, demo.ZONE) - timedelta(hours=1))
    result = compute(config, now=NOW + timedelta(minutes=5))
    calls = result.rules[0]
    assert (calls.stores[0].left_behind, calls.stores[0].overdue) == (1, 0)
    assert calls.verdict == "amber" and result.exit_code == 0
    assert "already expired at the last successful run" in calls.reasons[0].text


def test_a_refused_run_with_expired_data_is_red(pbx: Path) -> None:
    config = edit(pbx, "max_delete_fraction: 0.95", "max_delete_fraction: 0.2")
    assert enforce(config) == ["refused"] * 3
    result = compute(config, now=NOW)
    texts = [reason.text for reason in result.rules[0].reasons]
    assert any("the last run was refused" in text for text in texts), texts
    assert result.rules[0].refusal is not None  # and the next run would be refused as well
    assert result.exit_code == 4


def test_an_interrupted_last_run_is_amber(pbx: Path) -> None:
    config = load_config(pbx)
    enforce(config)
    add_call(pbx, cutoff(NOW, config.config.rules[0].keep, demo.ZONE) - timedelta(hours=1))
    stop = threading.Event()

    def stop_after_first_batch(label: str, done: int, expected: int) -> None:
        stop.set()

    engine = Engine(config, now=lambda: NOW, stop=stop, progress=stop_after_first_batch)
    with audit.AuditLog(config.config.audit.path, clock=lambda: NOW) as log:
        assert engine.run(config.config.rules[0], log).status == "interrupted"
    calls = compute(config, now=NOW + timedelta(minutes=5)).rules[0]
    assert calls.history.last_run is not None
    assert calls.history.last_run.status == "interrupted"
    assert calls.verdict == "amber"


def test_an_absent_optional_store_stays_green(pbx: Path) -> None:
    config = load_config(pbx)
    enforce(config)
    config = edit(
        pbx,
        "these\n",
        "these\n      - type: csv\n"
        f"        root: {pbx.parent / 'cdr-csv'}\n        optional: true\n",
    )
    calls = compute(config, now=NOW + timedelta(minutes=5)).rules[0]
    assert calls.stores[1].absent is not None
    assert calls.verdict == "green"
    assert "not found (optional)" in status_text(compute(config, now=NOW))


def test_json_has_every_figure(pbx: Path) -> None:
    config = load_config(pbx)
    enforce(config)
    result = compute(config, now=NOW + timedelta(minutes=5))
    document = json.loads(json.dumps(status_json(result)))
    calls = document["rules"][0]
    assert calls["deadline"]["period"] == "3 months 2 days"
    assert calls["deadline"]["seconds"] > calls["keep_seconds"] > 0
    assert calls["holds"] == [] and calls["held"] == 0
    assert calls["interval_seconds"] == 86400 and calls["interval_assumed"] is False
    assert calls["oldest_age_seconds"] < calls["keep_seconds"]
    assert datetime.fromisoformat(calls["next_run"]) == datetime(2026, 11, 27, 2, 15, tzinfo=UTC)
    assert calls["last_success"]["status"] == "done"


# --- the command line ----------------------------------------------------------------------------


# Until cli.py registers `status`, the same main() runs with the command added in the process.
def status(config_file: Path, *options: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    result = retentiond("-c", config_file, "status", *options)
    assert "Traceback" not in result.stderr, result.stderr
    return result, json.loads(result.stdout) if "--json" in options else None


@pytest.fixture
def live(tmp_path: Path) -> Path:
    """The demo PBX built for the real now, as `retentiond demo` builds it."""
    return demo.build(tmp_path / "pbx")


def personal_data(config_file: Path) -> set[str]:
    """Every number, name, uniqueid and file name in the demo PBX."""
    with sqlite3.connect(config_file.parent / "pbx" / "master.db") as db:
        rows = db.execute("SELECT src, dst, clid, uniqueid, recordingfile FROM cdr").fetchall()
    db.close()
    values = {v for row in rows for v in row if v} | set(demo.NAMES)
    values |= {p.name for p in (config_file.parent / "pbx").rglob("*") if p.is_file()}
    return values - {"master.db"}


def test_status_is_registered_in_the_command_line() -> None:
    result = retentiond("status", "--help")
    assert "--json" in result.stdout


def test_before_any_run_status_is_red_and_exits_4(live: Path) -> None:
    text, _ = status(live)
    assert text.returncode == 4, text.stdout + text.stderr
    assert "rule call-records: RED" in text.stdout
    assert "past the deadline" in text.stdout
    assert "deadline 3 months 2 days: overdue if older than" in text.stdout
    assert "last successful run: none recorded" in text.stdout
    assert NO_HOLDS_LINE in text.stdout
    assert text.stdout.rstrip().endswith("overall: RED (exit 4)")
    machine, document = status(live, "--json")
    assert machine.returncode == 4
    assert document["verdict"] == "red" and document["exit_code"] == 4
    for rule in document["rules"]:
        assert rule["verdict"] == "red"
        assert rule["overdue"] > 0 and rule["overdue"] <= rule["expired"] <= rule["total"]
        assert rule["last_success"] is None and rule["holds"] == []
    assert not (live.parent / "audit.jsonl").exists()  # status changes nothing, writes nothing


def test_after_run_once_status_is_green_with_the_logged_run_and_the_next_time(live: Path) -> None:
    run_once = retentiond("-c", live, "run", "--once")
    assert run_once.returncode == 0, run_once.stdout + run_once.stderr
    text, _ = status(live)
    assert text.returncode == 0, text.stdout
    assert "rule call-records: GREEN" in text.stdout
    assert "overall: GREEN (exit 0)" in text.stdout
    machine, document = status(live, "--json")
    assert machine.returncode == 0 and document["verdict"] == "green"
    config = load_config(live).config
    finished = {
        e.fields["rule"]: e
        for e in audit.read_entries(config.audit.path)
        if e.type == "run_finished"
    }
    now = datetime.fromisoformat(document["now"])
    for rule, shown in zip(config.rules, document["rules"], strict=True):
        entry = finished[rule.name]
        success = shown["last_success"]
        assert success["seq"] == entry.seq and success["deleted"] == entry.fields["deleted"]
        assert datetime.fromisoformat(success["ts"]) == datetime.fromisoformat(entry.ts)
        assert shown["last_run"]["status"] == "done"
        assert rule.schedule is not None
        expected = rule.schedule.trigger(config.zone()).get_next_fire_time(None, now)
        assert datetime.fromisoformat(shown["next_run"]) == expected
        assert (shown["overdue"], shown["left_behind"]) == (0, 0)
        local = datetime.fromisoformat(entry.ts).astimezone(config.zone())
        assert f"{local:%Y-%m-%d %H:%M %Z}, done, deleted {entry.fields['deleted']}" in text.stdout


def test_a_row_the_run_left_behind_makes_the_rule_amber_and_exits_0(live: Path) -> None:
    assert retentiond("-c", live, "run", "--once").returncode == 0
    keep = load_config(live).config.rules[0].keep
    add_call(live, cutoff(datetime.now(UTC), keep, demo.ZONE) - timedelta(hours=1))
    text, _ = status(live)
    assert text.returncode == 0
    assert "rule call-records: AMBER" in text.stdout
    assert "rule voicemail: GREEN" in text.stdout
    _, document = status(live, "--json")
    calls = document["rules"][0]
    assert (calls["overdue"], calls["left_behind"]) == (0, 1) and calls["expired"] >= 1
    assert document["verdict"] == "amber" and document["exit_code"] == 0


def test_a_store_that_cannot_be_opened_is_red_with_its_message_and_exits_1(live: Path) -> None:
    assert retentiond("-c", live, "run", "--once").returncode == 0
    edit(live, "table: cdr", "table: cdr_archive")
    text, _ = status(live)
    assert text.returncode == 1, text.stdout
    assert "rule call-records: RED" in text.stdout
    assert "sql cdrdb/cdr_archive: FAILED:" in text.stdout
    assert "rule voicemail: GREEN" in text.stdout and "rule call-recordings: GREEN" in text.stdout
    _, document = status(live, "--json")
    (store_shown,) = document["rules"][0]["stores"]
    assert "cdr_archive" in store_shown["error"]
    assert document["exit_code"] == 1


def test_json_figures_match_plan(live: Path) -> None:
    before, first = status(live, "--json")
    plan = retentiond("-c", live, "plan", "--json")
    after, second = status(live, "--json")
    assert plan.returncode == 0 and before.returncode == after.returncode == 4
    for planned, earlier, later in zip(
        json.loads(plan.stdout), first["rules"], second["rules"], strict=True
    ):
        for p, e, s in zip(planned["stores"], earlier["stores"], later["stores"], strict=True):
            assert p["store"] == e["store"] and p["total"] == e["total"] == s["total"]
            # expired only grows with time: the plan ran between the two
            assert e["expired"] <= p["expired"] <= s["expired"]
            assert p["oldest"] == e["oldest"]
    recordings_plan = json.loads(plan.stdout)[2]["stores"][0]
    assert recordings_plan["expired"] == first["rules"][2]["stores"][0]["expired"]  # by day


def test_status_output_has_no_personal_data(live: Path) -> None:
    personal = personal_data(live)
    before_text, _ = status(live)
    before_json, _ = status(live, "--json")
    retentiond("-c", live, "run", "--once")
    after_text, _ = status(live)
    after_json, _ = status(live, "--json")
    assert len(personal) > 1000  # the check has something to find
    found = leaked(
        personal,
        texts=[before_text.stdout, after_text.stdout],
        documents=[before_json.stdout, after_json.stdout],
        jsonl=[r.stderr for r in (before_text, before_json, after_text, after_json)],
    )
    assert not found, found[:5]


def test_config_errors_exit_2(live: Path) -> None:
    edit_text = live.read_text().replace("keep: 30d", "keep: 30 dayz")
    live.write_text(edit_text)
    result = retentiond("-c", live, "status")
    assert result.returncode == 2
    assert f"{live}:" in result.stderr and "rules.2.keep" in result.stderr
