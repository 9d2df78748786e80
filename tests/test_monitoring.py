"""What a provider imports for its fleet: the Prometheus alert rules and the Grafana dashboard in
deploy/, checked with the real promtool against the metrics a real retentiond writes.

promtool comes from Debian's prometheus package (.ci/run takes it out of the package); without
it these tests skip, except under CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from ruamel.yaml import YAML

from retentiond.config.loader import parse_config
from retentiond.engine.outcome import RunOutcome, StoreOutcome
from retentiond.service.metrics import Metrics, write_fleet_textfile

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "retentiond.rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "retentiond.rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "retentiond.json"
RETENTIOND = Path(sys.executable).parent / "retentiond"
METRIC_NAME = re.compile(r"\bretentiond_[a-z_]+")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool not installed (.ci/run installs it from Debian's prometheus package)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_promtool(*args: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def exposed_names(tmp: Path) -> set[str]:
    """Every sample name a real Metrics exposes once each kind of series exists, and those of
    the fleet report's textfile."""
    config = parse_config(
        "version: 1\nrules:\n  - name: calls\n    keep: 30d\n    schedule: daily 03:15\n"
        "    stores:\n      - {type: files, root: /srv/x}\n"
    )
    metrics = Metrics(config.rules, config.safety.deadline_grace)
    store = StoreOutcome("files:/srv/x", "files", deleted=3, bytes=10, remaining=0)
    metrics.run_finished(config.rules[0], RunOutcome("calls", "r1", None, "done", stores=[store]))
    metrics.report_result(None, 0)
    text = generate_latest(metrics.registry).decode()
    fleet = tmp / "fleet.prom"
    write_fleet_textfile(fleet, [("pbx-a", True)], time.time())
    text += fleet.read_text()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def dashboard_expressions() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    found = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    found += [v["definition"] for v in board["templating"]["list"]]
    return found


def test_the_alert_rules_check_and_pass_their_unit_tests() -> None:
    assert "SUCCESS: 9 rules found" in run_promtool("check", "rules", RULES)
    assert "SUCCESS" in run_promtool("test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)


def test_every_alert_is_tested_firing_and_quiet() -> None:
    tests = load_yaml(RULES_TEST)["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for rule in alert_rules():
        name = rule["alert"]
        fired = [c for c in cases if c["alertname"] == name and c.get("exp_alerts")]
        quiet = [c for c in cases if c["alertname"] == name and not c.get("exp_alerts")]
        assert fired and quiet, f"{name}: needs a case where it fires and one where it does not"
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert {"summary", "description"} <= set(rule["annotations"])


def test_rules_and_dashboard_name_only_metrics_retentiond_exposes(tmp_path: Path) -> None:
    """A renamed metric breaks this test, not a provider's alerting months later."""
    exposed = exposed_names(tmp_path)
    used = set(METRIC_NAME.findall(RULES.read_text()))
    used |= {n for e in dashboard_expressions() for n in METRIC_NAME.findall(e)}
    assert used - exposed == set()
    # the rules cover the failure signals, the dashboard shows the rest
    assert {
        "retentiond_success_due_timestamp_seconds",
        "retentiond_run_due_timestamp_seconds",
        "retentiond_last_run_status",
        "retentiond_expired_remaining",
        "retentiond_report_failures",
        "retentiond_fleet_log_verified",
    } <= used


def test_the_dashboard_imports_and_its_queries_parse(tmp_path: Path) -> None:
    board = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
    # every query as promtool parses it, with the dashboard's variables filled in
    records = []
    for number, expr in enumerate(dashboard_expressions()):
        expr = expr.replace("$instance", ".*").replace("$rule", ".*")
        if expr.startswith("label_values("):
            expr = expr.removeprefix("label_values(").rsplit(",", 1)[0]
        records.append({"record": f"dashboard:query_{number}", "expr": expr})
    rules = tmp_path / "dashboard.rules.yml"
    with rules.open("w") as handle:
        YAML().dump({"groups": [{"name": "dashboard", "rules": records}]}, handle)
    assert f"SUCCESS: {len(records)} rules found" in run_promtool("check", "rules", rules)


# -- the rules against what a real `run --once` wrote -------------------------------------------


def textfile_series(path: Path, base: float) -> list[dict[str, str]]:
    """The textfile's samples as promtool input series, constant for ten days from time 0; the
    timestamps are moved so that `base` (when the run ended) is time 0."""
    series = []
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            value = sample.value
            if sample.name.endswith("_timestamp_seconds"):
                value -= base
            labels = {"job": "node", "instance": "pbx-b:9100", **sample.labels}
            text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            series.append({"series": f"{sample.name}{{{text}}}", "values": f"{value:.3f}x2900"})
    return series


def firing(
    series: list[dict[str, str]], at: str, alert: str, tmp_path: Path, label: str = "rule"
) -> list[str]:
    """The `label` values (rules, by default) for which `alert` fires at `at`: promtool tests
    that it fires for none, and its message lists the ones that do.

    The rules are evaluated at time 0 and at `at` only: for an alert without `for:` (checked)
    only the evaluation at `at` decides, and one every 5 minutes up to 192 h took promtool
    seconds per call."""
    (rule,) = [
        r for g in YAML().load(RULES)["groups"] for r in g["rules"] if r.get("alert") == alert
    ]
    assert "for" not in rule and "keep_firing_for" not in rule, f"{alert} needs every evaluation"
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": at,
        "tests": [
            {
                "interval": "5m",
                "input_series": series,
                "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": []}],
            }
        ],
    }
    path = tmp_path / "fleet.test.yml"
    with path.open("w") as handle:
        YAML().dump(test, handle)
    result = subprocess.run(
        [promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    if result.returncode == 0:
        return []
    got = result.stdout + result.stderr
    assert "got:[" in got, got
    return sorted(set(re.findall(rf'\b{label}="([A-Za-z-]+)"', got.split("got:[", 1)[1])))


def test_the_rules_fire_on_what_a_real_run_wrote(tmp_path: Path) -> None:
    """`run --once` on a PBX with a refused rule (too much to delete) and a failed one (its folder
    gone), then again as the refusal says: the alerts fire for the right rules at the right time."""
    recordings = tmp_path / "monitor"
    recordings.mkdir()
    now = time.time()
    for name, age_days in (("in-old-1.wav", 400), ("in-old-2.wav", 400), ("in-new.wav", 1)):
        (recordings / name).write_bytes(b"RIFF")
        os.utime(recordings / name, (now - age_days * 86400, now - age_days * 86400))
    textfile = tmp_path / "retentiond.prom"
    config = tmp_path / "retentiond.yaml"
    config.write_text(
        f"version: 1\ntimezone: Europe/Berlin\naudit:\n  path: {tmp_path / 'audit.jsonl'}\n"
        f"monitoring:\n  metrics_textfile: {textfile}\n"
        "rules:\n"
        "  - name: recordings\n    keep: 30d\n    schedule: daily 03:30\n    stores:\n"
        f"      - {{type: files, root: {recordings}, match: ['**/*.wav']}}\n"
        "  - name: voicemail\n    keep: 60d\n    schedule: weekly sun 04:00\n    stores:\n"
        f"      - {{type: files, root: {tmp_path / 'gone'}, match: ['**/*.wav']}}\n"
    )
    run = [str(RETENTIOND), "-c", str(config), "run", "--once"]
    first = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert first.returncode != 0  # refused and failed
    series = textfile_series(textfile, time.time())
    assert firing(series, "5m", "RetentiondRunFailed", tmp_path) == ["recordings", "voicemail"]
    assert firing(series, "5m", "RetentiondRuleOverdue", tmp_path) == []

    # as the refusal says: raise max_delete_fraction for this run
    config.write_text(config.read_text() + "safety:\n  max_delete_fraction: 0.9\n")
    second = subprocess.run([*run, "--rule", "recordings"], capture_output=True)
    assert second.returncode == 0, second.stderr
    ended = time.time()
    series = textfile_series(textfile, ended)
    assert not (recordings / "in-old-1.wav").exists()
    assert firing(series, "5m", "RetentiondRunFailed", tmp_path) == ["voicemail"]
    # recordings: daily, so no run is missing for a day and an hour, then it is
    assert firing(series, "24h50m", "RetentiondNoRun", tmp_path) == []
    assert firing(series, "25h10m", "RetentiondNoRun", tmp_path) == ["recordings"]
    # overdue after a day of schedule and a day of grace since the success; voicemail never
    # succeeded: counted from the deletion log's first entry, a week and a day
    assert firing(series, "47h50m", "RetentiondRuleOverdue", tmp_path) == []
    assert firing(series, "48h10m", "RetentiondRuleOverdue", tmp_path) == ["recordings"]
    assert firing(series, "192h10m", "RetentiondRuleOverdue", tmp_path) == [
        "recordings",
        "voicemail",
    ]
