"""The command line as an administrator uses it: real processes, real files, exit codes, output."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from privacy import leaked

from retentiond import demo


def retentiond(
    *args: str | Path, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the command as a user would, without RETENTIOND_CONFIG from this environment."""
    env = {k: v for k, v in os.environ.items() if k != "RETENTIOND_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "retentiond", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def pbx(tmp_path: Path) -> Path:
    return demo.build(tmp_path / "pbx")


def personal_data(config_file: Path) -> set[str]:
    """Every number, name, uniqueid and file name in the demo PBX."""
    with sqlite3.connect(config_file.parent / "pbx" / "master.db") as db:
        rows = db.execute("SELECT src, dst, clid, uniqueid, recordingfile FROM cdr").fetchall()
    db.close()
    values = {v for row in rows for v in row if v}
    values |= {p.name for p in (config_file.parent / "pbx" / "monitor").rglob("*.wav")}
    return values


def test_plan_then_run_then_verify(pbx: Path) -> None:
    personal = personal_data(pbx)
    plan = retentiond("-c", pbx, "plan")
    assert plan.returncode == 0, plan.stderr
    assert "rule call-records: keep 3 months" in plan.stdout
    assert "would delete" in plan.stdout

    run = retentiond("-c", pbx, "run", "--once")
    assert run.returncode == 0, run.stderr
    assert "rule call-records: done" in run.stdout
    assert "verified: none expired remain" in run.stdout

    verify = retentiond("audit", "verify", pbx.parent / "audit.jsonl")
    assert verify.returncode == 0
    assert "intact" in verify.stdout

    assert len(personal) > 1000  # the check has something to find
    found = leaked(
        personal,
        texts=[plan.stdout, run.stdout],
        jsonl=[plan.stderr, run.stderr, (pbx.parent / "audit.jsonl").read_text()],
    )
    assert not found, found[:5]


def test_json_output_is_machine_readable(pbx: Path) -> None:
    plan = retentiond("-c", pbx, "plan", "--json")
    assert plan.returncode == 0
    (calls, voicemail, files) = json.loads(plan.stdout)
    assert voicemail["stores"][0]["unit"] == "messages"
    assert calls["rule"] == "call-records" and calls["stores"][0]["would_delete"] > 0
    assert files["stores"][0]["unit"] == "files"

    run = retentiond("-c", pbx, "run", "--once", "--json", "--rule", "call-records")
    assert run.returncode == 0
    result = json.loads(run.stdout)
    (only,) = result["runs"]
    assert only["status"] == "done"
    assert only["deleted"] == calls["stores"][0]["would_delete"]
    assert result["audit_head"][0] > 2


def test_logs_without_a_terminal_are_json_lines_with_a_priority(pbx: Path) -> None:
    run = retentiond("-c", pbx, "run", "--once")
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines
    for line in lines:
        assert line.startswith("<6>") or line.startswith("<4>")
        json.loads(line[3:])


def test_config_errors_exit_2_with_file_and_line(pbx: Path) -> None:
    text = pbx.read_text().replace("keep: 30d", "keep: 30 dayz\n    colour: red")
    pbx.write_text(text)
    for command in (["check"], ["plan"], ["run", "--once"]):
        result = retentiond("-c", pbx, *command)
        assert result.returncode == 2
        assert f"{pbx}:" in result.stderr
        assert (
            "rules.2.keep" in result.stderr
            and "rules.2: an unknown key on this line" in result.stderr
        )
        assert "colour" not in result.stderr
        assert "Traceback" not in result.stderr
    assert not (pbx.parent / "audit.jsonl").exists()


def test_check_names_a_missing_table_and_exits_1(pbx: Path) -> None:
    ok = retentiond("-c", pbx, "check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "sql cdrdb/cdr: ok" in ok.stdout
    pbx.write_text(pbx.read_text().replace("time_column: calldate", "time_column: start"))
    broken = retentiond("-c", pbx, "check")
    assert broken.returncode == 1
    assert "start" in broken.stdout and "FAILED" in broken.stdout
    assert "Traceback" not in broken.stderr


def test_check_config_only_validates_without_touching_a_store(pbx: Path) -> None:
    """What a deployment tool validates a config with: the config and its holds, not the stores
    (a table that is not there passes) and not the deletion log (never created)."""
    pbx.write_text(pbx.read_text().replace("time_column: calldate", "time_column: start"))
    (pbx.parent / "pbx" / "master.db").unlink()
    valid = retentiond("-c", pbx, "check", "--config-only")
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert valid.stdout.startswith(f"config {pbx}: valid (3 rules")
    assert "sql" not in valid.stdout and "audit log" not in valid.stdout
    assert not (pbx.parent / "audit.jsonl").exists()
    holds = pbx.parent / "holds.d"
    holds.mkdir()
    (holds / "h.yaml").write_text(
        "id: H-1\nreason: Case 1\napproved_by: DPO\nreview_by: 2030-01-01\nrules: [no-such]\n"
    )
    invalid = retentiond("-c", pbx, "check", "--config-only")
    assert invalid.returncode == 2, invalid.stdout + invalid.stderr
    assert "no-such" in invalid.stderr and "Traceback" not in invalid.stderr


def test_refused_run_exits_3_and_deletes_nothing(pbx: Path) -> None:
    pbx.write_text(pbx.read_text().replace("max_delete_fraction: 0.95", "max_delete_fraction: 0.1"))
    files = sorted((pbx.parent / "pbx" / "monitor").rglob("*.wav"))
    result = retentiond("-c", pbx, "run", "--once")
    assert result.returncode == 3
    assert "REFUSED" in result.stdout or "max_delete_fraction" in result.stdout
    assert sorted((pbx.parent / "pbx" / "monitor").rglob("*.wav")) == files


def test_tampered_log_is_detected_at_the_changed_entry(pbx: Path) -> None:
    assert retentiond("-c", pbx, "run", "--once").returncode == 0
    log = pbx.parent / "audit.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    entry = json.loads(lines[2])
    assert entry["type"] == "batch_done"
    lines[2] = lines[2].replace(
        f'"deleted":{entry["deleted"]}', f'"deleted":{entry["deleted"] - 1}'
    )
    log.write_text("".join(lines))
    result = retentiond("audit", "verify", log)
    assert result.returncode == 1
    assert "BROKEN: audit.jsonl:3: chain broken (entry 3): hash mismatch" in result.stdout


def test_command_line_mistakes_exit_2(pbx: Path) -> None:
    daemon = retentiond("-c", pbx, "run", "--json")  # --json and --rule go with --once
    assert daemon.returncode == 2 and "--once" in daemon.stderr
    unknown = retentiond("-c", pbx, "run", "--once", "--rule", "fax")
    assert unknown.returncode == 2 and "call-records" in unknown.stderr
    assert not (pbx.parent / "audit.jsonl").exists()


def test_demo_command_runs_end_to_end(tmp_path: Path) -> None:
    result = retentiond("demo", tmp_path / "demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rule call-records: done" in result.stdout
    assert "intact" in result.stdout
    assert "rule call-records: GREEN" in result.stdout
    report = (tmp_path / "demo" / "report.html").read_text()
    assert "<svg" in report and "call-records" in report
    again = retentiond("demo", tmp_path / "demo")  # an earlier demo is replaced
    assert again.returncode == 0
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    refused = retentiond("demo", tmp_path / "mine")
    assert refused.returncode == 1 and "not an earlier demo" in refused.stderr
    assert (tmp_path / "mine" / "keep.txt").exists()


def test_sigterm_finishes_the_batch_then_stops_and_the_next_run_completes(pbx: Path) -> None:
    pbx.write_text(
        pbx.read_text().replace("batch_size: 500", "batch_size: 500\n        pause: 0.5")
    )
    log = pbx.parent / "audit.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "RETENTIOND_CONFIG"}
    process = subprocess.Popen(
        [sys.executable, "-m", "retentiond", "-c", str(pbx), "run", "--once"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 30
    while '"batch_done"' not in (log.read_text() if log.exists() else ""):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "rule call-records: interrupted" in stdout
    assert "not verified (the run stopped first)" in stdout and "None" not in stdout
    assert "call-recordings" not in stdout  # no new rule starts after a stop request
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert entries[-1]["type"] == "run_finished" and entries[-1]["status"] == "interrupted"
    assert entries[-2]["type"] == "batch_done"  # the batch in flight was finished and recorded

    again = retentiond("-c", pbx, "run", "--once")
    assert again.returncode == 0
    assert retentiond("audit", "verify", log).returncode == 0


def test_run_once_writes_the_node_exporter_textfile(pbx: Path) -> None:
    textfile = pbx.parent / "retentiond.prom"
    pbx.write_text(pbx.read_text() + f"monitoring:\n  metrics_textfile: {textfile}\n")
    assert retentiond("-c", pbx, "run", "--once", "--rule", "voicemail").returncode == 0
    text = textfile.read_text()
    assert 'retentiond_runs_total{rule="voicemail",status="done"} 1.0' in text
    assert 'retentiond_last_success_timestamp_seconds{rule="voicemail"}' in text
    assert 'retentiond_last_success_timestamp_seconds{rule="call-records"}' not in text
