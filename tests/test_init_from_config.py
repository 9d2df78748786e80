"""`retentiond init --from-config`: the config in force, its preset expanded from the PBX's files
and its holds.d inline, written so that another machine (the provider's controller, for the fleet
report) reads the same rules without the PBX's files."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

from asterisk_cdr import SAMPLE_23, enabled, write_conf
from test_asterisk_preset import ADVANCED_FIELDS, preset_config
from test_cli import retentiond

from retentiond import demo
from retentiond.config.loader import load_config
from retentiond.evidence import log as audit
from retentiond.evidence.report import fleet

NOW = datetime(2026, 6, 15, 10, 0, tzinfo=UTC)


def test_a_demo_config_with_holds_reads_back_the_same(tmp_path: Path) -> None:
    config = demo.build(tmp_path / "pbx", now=NOW, days=30, hold=True)
    assert any((config.parent / "holds.d").glob("*.yaml"))  # the hold lives in holds.d
    text = config.read_text().replace(
        "connections:\n",
        "connections:\n  other:\n    url: mariadb+pymysql://retentiond:s3cret-Pw@db.example/cdr\n",
        1,
    )
    config.write_text(text)
    out = tmp_path / "elsewhere" / "retentiond.yaml"
    out.parent.mkdir()
    written = retentiond("-c", config, "init", "--from-config", "-o", out)
    assert written.returncode == 0, written.stderr
    expanded = out.read_text()
    assert "s3cret-Pw" not in expanded and "retentiond:***@db.example" in expanded
    assert "holds_dir" not in expanded and "DEMO-HOLD-1" in expanded
    original, copy = load_config(config).config, load_config(out).config
    assert copy.holds == original.holds and copy.rules == original.rules
    assert copy.model_dump(exclude={"connections", "holds_dir"}) == original.model_dump(
        exclude={"connections", "holds_dir"}
    )
    # an existing file is never overwritten
    again = retentiond("-c", config, "init", "--from-config", "-o", out)
    assert again.returncode == 2 and "exists" in again.stderr


def test_a_preset_config_is_read_on_a_machine_without_the_pbx(tmp_path: Path) -> None:
    """The three-line preset config needs the PBX's files; its expansion does not. The fleet
    report reads the host's expansion with its log and key."""
    host = tmp_path / "host"
    fields = ADVANCED_FIELDS.format(start="start(float)")
    write_conf(host / "etc", enabled(SAMPLE_23, "cdr_advanced", fields=fields, table="calls"))
    config = preset_config(host)
    private, public, _ = audit.generate_key_pair(host / "keys")
    collected = tmp_path / "collected" / "pbx-asterisk"
    collected.mkdir(parents=True)
    written = retentiond("-c", config, "init", "--from-config", "-o", collected / "retentiond.yaml")
    assert written.returncode == 0, written.stderr
    on_host = load_config(config).config.rules
    assert "table: calls" in (collected / "retentiond.yaml").read_text()
    shutil.rmtree(host / "etc")  # the controller has no PBX files: the preset expands otherwise
    assert load_config(config).config.rules != on_host
    assert load_config(collected / "retentiond.yaml").config.rules == on_host
    rules = [rule.name for rule in on_host]
    with audit.AuditLog(host / "audit.jsonl", clock=lambda: NOW) as log:
        log.append("run_started", run_id="r1", rule=rules[0], stores=[])
        log.append("run_finished", run_id="r1", rule=rules[0], status="done")
        log.checkpoint(audit.Signer.from_file(private))
    shutil.copy(host / "audit.jsonl", collected / "audit.jsonl")
    shutil.copy(public, collected / "retentiond.pub")
    built = fleet.build_fleet(collected.parent, NOW.date(), NOW.date(), NOW)
    (system,) = built.systems
    assert system.problem is None and system.log_verified, system.reason


def test_from_config_takes_no_preset_options(tmp_path: Path) -> None:
    config = demo.build(tmp_path / "pbx", now=NOW, days=30)
    result = retentiond("-c", config, "init", "--from-config", "--preset", "asterisk")
    assert result.returncode == 2 and "--from-config writes the config given with -c" in (
        result.stderr
    )
