"""What a person reads: every command's text on a healthy PBX and on one whose stores fail or are
absent. Real processes on the demo PBX (SQLite, voicemail spool, recordings), a real MariaDB
server for the store that cannot be reached, real cdr_csv files. The demo PBX and the CSV lines
are built from the same clock the commands read, so no test depends on today's date."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from retentiond import demo
from retentiond.config import load_config
from retentiond.config.init import render
from retentiond.evidence.report import residual

NONE = re.compile(r"\bNone\b")
# The demo config's call-records store ends with this line: more stores go after it.
CDR_STORE_END = (
    "        subject_columns: [src, dst]      # holds by number, `find` and `erase` match these\n"
)
VENDOR = Path(__file__).parent / "vendor" / "asterisk"
# asterisk/asterisk tag 23.3.0 (commit 1be6e6f40ebdb708e9b53386eb636566bf227de7),
# configs/samples/asterisk.conf.sample, verbatim: [directories](!) is a template there.
ASTERISK_CONF_SAMPLE = VENDOR / "asterisk.conf.sample-23.3.0"


def retentiond(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RETENTIOND_CONFIG", "NOTIFY_SOCKET")}
    return subprocess.run(
        [sys.executable, "-m", "retentiond", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture
def pbx(tmp_path: Path) -> Path:
    return demo.build(tmp_path / "pbx")


def cdr_csv_line(start: datetime, number: int) -> str:
    """A record as Asterisk's cdr_csv writes it: start is the tenth field."""
    stamp = start.strftime("%Y-%m-%d %H:%M:%S")
    return (
        f'"1001","+4930777{number:04d}","0307770010","from-internal",'
        f'"""Erika"" <+4930777{number:04d}>",'
        f'"PJSIP/1001-0000{number:04x}","PJSIP/trunk-0001","Dial","PJSIP/0307770010@trunk",'
        f'"{stamp}","{stamp}","{stamp}",60,55,"ANSWERED","DOCUMENTATION",'
        f'"17{number:08d}.{number}",""\n'
    )


def add_stores_that_fail_or_are_absent(config: Path, mariadb_url: str) -> None:
    """Stores that cannot be opened (a database that does not exist on a real server) and
    optional stores that are not there (a table, a CSV folder, a voicemail spool)."""
    pbx = config.parent / "pbx"
    broken = mariadb_url.rsplit("/", 1)[0] + "/rtd_no_such_database"
    text = config.read_text()
    text = text.replace(
        "rules:\n",
        f"  broken:\n    url: {broken}\n    retries: 0\nrules:\n",
        1,
    )
    text = text.replace(
        CDR_STORE_END,
        CDR_STORE_END + "      - type: sql\n        connection: cdrdb\n        table: cel\n"
        "        time_column: eventtime\n        optional: true\n"
        "      - type: sql\n        connection: broken\n        table: cdr\n"
        "        time_column: calldate\n"
        f"      - type: csv\n        root: {pbx / 'cdr-csv'}\n        optional: true\n",
        1,
    )
    text = text.replace(
        f"        root: {pbx / 'voicemail'}\n",
        f"        root: {pbx / 'voicemail'}\n"
        f"      - type: asterisk_voicemail\n        root: {pbx / 'voicemail-2'}\n"
        "        optional: true\n",
        1,
    )
    assert text.count("optional: true") == 3
    config.write_text(text)


def every_text(config: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    """check, plan, run --once, status and the report of the PBX, as an administrator runs them."""
    today = datetime.now().date()
    period = ["--from", str(today - timedelta(days=7)), "--to", str(today)]
    outputs = {
        "check": retentiond("-c", config, "check"),
        "plan": retentiond("-c", config, "plan"),
        "run": retentiond("-c", config, "run", "--once"),
        "status": retentiond("-c", config, "status"),
    }
    for kind in ("html", "csv"):
        outputs[f"report {kind}"] = retentiond("-c", config, "report", *period, "--format", kind)
    outputs["report --rules"] = retentiond("-c", config, "report", "--rules")
    return outputs


def assert_no_none(outputs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    for name, result in outputs.items():
        for stream in (result.stdout, result.stderr):
            found = [line for line in stream.splitlines() if NONE.search(line)]
            assert not found, f"{name}: {found}"


# -- no None, wherever a person reads -------------------------------------------------------------


def test_no_none_in_any_text_of_the_demo_pbx(pbx: Path) -> None:
    outputs = every_text(pbx)

    assert outputs["check"].returncode == 0
    assert outputs["run"].returncode == 0
    assert "rule call-records: GREEN" in outputs["status"].stdout
    assert_no_none(outputs)


@pytest.mark.mariadb
def test_no_none_in_any_text_of_a_pbx_with_failing_and_absent_stores(
    pbx: Path, mariadb_url: str
) -> None:
    add_stores_that_fail_or_are_absent(pbx, mariadb_url)

    outputs = every_text(pbx)

    assert_no_none(outputs)
    assert outputs["check"].returncode == 1
    assert outputs["run"].returncode == 1
    assert "broken/cdr: deleted 0 rows in 0 batches, FAILED: cannot connect to broken" in (
        outputs["run"].stdout
    )


# -- one store's trouble is one store's trouble ---------------------------------------------------


@pytest.mark.mariadb
def test_plan_shows_every_rule_and_store_and_marks_the_one_that_cannot_open(
    pbx: Path, mariadb_url: str
) -> None:
    add_stores_that_fail_or_are_absent(pbx, mariadb_url)
    calls = demo_calls(pbx)

    plan = retentiond("-c", pbx, "plan")

    assert plan.returncode == 1
    lines = plan.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("rule ")] == [
        "rule call-records",
        "rule voicemail",
        "rule call-recordings",
    ]
    store_lines = {line.split(":")[0].strip(): line for line in lines if line.startswith("  ")}
    assert f"{calls} rows, expired" in store_lines["sql cdrdb/cdr"]
    assert store_lines["sql broken/cdr"].startswith(
        "  sql broken/cdr: FAILED: cannot connect to broken (127.0.0.1:3306)"
    )
    assert "not found (optional)" in store_lines["sql cdrdb/cel"]
    assert "would delete" in store_lines[f"asterisk_voicemail {pbx.parent / 'pbx' / 'voicemail'}"]
    assert "would delete" in store_lines[f"files {pbx.parent / 'pbx' / 'monitor'}"]
    assert "retentiond: 1 store(s) could not be planned; see above" in plan.stderr
    assert "Traceback" not in plan.stderr

    as_json = retentiond("-c", pbx, "plan", "--json")
    assert as_json.returncode == 1
    (records, voicemail, recordings) = json.loads(as_json.stdout)
    failed = {s["store"]: s["failed"] for s in records["stores"]}
    assert failed["broken/cdr"].startswith("cannot connect to broken")
    assert failed["cdrdb/cdr"] is None
    assert voicemail["stores"][0]["would_delete"] > 0 and recordings["stores"][0]["expired"] > 0


def demo_calls(config: Path) -> int:
    import sqlite3

    with sqlite3.connect(config.parent / "pbx" / "master.db") as db:
        (count,) = db.execute("SELECT count(*) FROM cdr").fetchone()
    db.close()
    return int(count)


# -- absent optional stores -----------------------------------------------------------------------


@pytest.mark.mariadb
def test_an_absent_optional_store_says_not_found_never_deleted_and_verified(
    pbx: Path, mariadb_url: str
) -> None:
    add_stores_that_fail_or_are_absent(pbx, mariadb_url)

    run = retentiond("-c", pbx, "run", "--once")
    status = retentiond("-c", pbx, "status")

    lines = run.stdout.splitlines()
    for label in ("cdrdb/cel", str(pbx.parent / "pbx" / "cdr-csv")):
        (line,) = [line for line in lines if line.startswith(f"  {label}:")]
        assert line == f"  {label}: not found (optional)"
    (voicemail,) = [line for line in lines if "voicemail-2" in line]
    assert voicemail.endswith("voicemail-2: not found (optional)")
    assert "not present" not in status.stdout
    assert f"csv {pbx.parent / 'pbx' / 'cdr-csv'}: not found (optional)" in status.stdout


# -- a refused plan ------------------------------------------------------------------------------


def test_a_refused_plan_shows_no_size_and_no_batches_for_nothing(pbx: Path) -> None:
    pbx.write_text(pbx.read_text().replace("max_delete_fraction: 0.95", "max_delete_fraction: 0.1"))

    plan = retentiond("-c", pbx, "plan")

    refused = [line for line in plan.stdout.splitlines() if "would delete 0" in line]
    assert len(refused) == 3  # every rule refused: the demo's first run removes most of it
    for line in refused:
        assert line.endswith("would delete 0"), line
    assert plan.stdout.count("REFUSED:") == 3


# -- the CSV store's batches ----------------------------------------------------------------------


def test_the_csv_plan_says_one_batch_per_file_as_the_run_makes(pbx: Path) -> None:
    folder = pbx.parent / "pbx" / "cdr-csv"
    folder.mkdir()
    now = datetime.now()
    old, young = now - timedelta(days=200), now - timedelta(days=2)
    files = {"Master.csv": (4, 2), "1001.csv": (3, 1), "acme.csv": (2, 0)}
    for name, (expired, kept) in files.items():
        lines = [cdr_csv_line(old + timedelta(hours=i), i) for i in range(expired)]
        lines += [cdr_csv_line(young + timedelta(hours=i), 100 + i) for i in range(kept)]
        (folder / name).write_text("".join(lines))
    pbx.write_text(
        pbx.read_text().replace(
            CDR_STORE_END, CDR_STORE_END + f"      - type: csv\n        root: {folder}\n"
        )
    )

    plan = retentiond("-c", pbx, "plan")
    as_json = json.loads(retentiond("-c", pbx, "plan", "--json").stdout)
    run = retentiond("-c", pbx, "run", "--once")

    assert plan.returncode == 0, plan.stderr
    (planned,) = [line for line in plan.stdout.splitlines() if line.startswith(f"  csv {folder}")]
    assert re.search(r"would delete 9 \([\d.]+ K?i?B\) in 3 batches$", planned), planned
    (csv_plan,) = [s for s in as_json[0]["stores"] if s["kind"] == "csv"]
    assert csv_plan["batches"] == 3
    assert run.returncode == 0, run.stdout + run.stderr
    (done,) = [line for line in run.stdout.splitlines() if line.startswith(f"  {folder}:")]
    assert re.search(r"deleted 9 lines \([\d.]+ K?i?B\) in 3 batches, verified", done), done
    assert (folder / "acme.csv").read_text() == ""


# -- init ----------------------------------------------------------------------------------------


def test_init_names_the_settings_it_was_given_not_a_key_it_left_out(tmp_path: Path) -> None:
    conf = tmp_path / "freepbx.conf"
    conf.write_text(
        "<?php\n$amp_conf['AMPDBUSER'] = 'freepbxuser';\n$amp_conf['AMPDBPASS'] = 'pw';\n"
        "$amp_conf['AMPDBHOST'] = 'localhost';\n$amp_conf['AMPDBNAME'] = 'asterisk';\n"
    )

    text = render("freepbx", {"freepbx_conf": str(conf), "read_database": False}, {})

    assert "preset_settings" not in text  # init expands them: no such key is written
    assert "found from the settings given to init (--set freepbx_conf, --set read_database)" in (
        text
    )
    assert str(conf) in text  # the password file, as password_from


# -- residual copies ------------------------------------------------------------------------------


def test_the_residual_check_looks_for_backups_in_the_spool_dir_asterisk_conf_sets(
    pbx: Path, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    backup = spool / "backup" / "2026"
    backup.mkdir(parents=True)
    (backup / "backup.tgz").write_bytes(b"backup")
    moment = time.time() - 400 * 86400
    os.utime(backup / "backup.tgz", (moment, moment))
    sample = ASTERISK_CONF_SAMPLE.read_text()
    assert "[directories](!)" in sample and "astspooldir => /var/spool/asterisk" in sample
    moved = sample.replace("astspooldir => /var/spool/asterisk", f"astspooldir => {spool}")
    enabled = tmp_path / "asterisk.conf"  # the (!) removed, as the sample's first lines say
    enabled.write_text(moved.replace("[directories](!)", "[directories]"))
    template = tmp_path / "template.conf"  # as shipped: Asterisk ignores a template
    template.write_text(moved)
    config = load_config(pbx).config

    def freepbx_backups(asterisk_conf: Path) -> residual.Finding:
        findings = residual.detect(
            config, voicemail_conf=tmp_path / "none.conf", asterisk_conf=asterisk_conf
        )
        (found,) = [f for f in findings if f.check == "FreePBX backups folder"]
        return found

    found = freepbx_backups(enabled)
    assert found.place == str(spool / "backup")
    assert found.state == "found" and found.attention
    assert found.detail.startswith("1 files; newest 400 days old")
    assert freepbx_backups(template).place == "/var/spool/asterisk/backup"
    assert freepbx_backups(tmp_path / "missing.conf").place == "/var/spool/asterisk/backup"
