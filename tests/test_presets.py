"""Presets as an administrator uses them: three lines of YAML, or `init` to see the expansion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retentiond.config import parse_config
from retentiond.config.init import render
from retentiond.config.model import (
    CsvStoreConfig,
    FilesStoreConfig,
    SqlStoreConfig,
    ThreeCxCallsStoreConfig,
    VoicemailStoreConfig,
)
from retentiond.config.pbxfiles import PbxSettingsError, password_from, read_freepbx_conf
from retentiond.errors import ConfigError

FREEPBX_CONF = """<?php
$amp_conf['AMPDBUSER'] = 'freepbxuser';
$amp_conf['AMPDBPASS'] = 'It\\'s-s3cret';
$amp_conf['AMPDBHOST'] = 'localhost';
$amp_conf['AMPDBNAME'] = 'asterisk';
$amp_conf['AMPDBENGINE'] = 'mysql';
$amp_conf['datasource'] = '';
require_once('/var/www/html/admin/bootstrap.php');
"""


@pytest.fixture
def freepbx_conf(tmp_path: Path) -> Path:
    path = tmp_path / "freepbx.conf"
    path.write_text(FREEPBX_CONF)
    return path


def freepbx_yaml(conf: Path, extra: str = "", keep: str | None = None) -> str:
    periods = keep or "{call-records: 3 months, voicemail: 60d, call-recordings: 30d}"
    return f"""\
version: 1
preset: freepbx
preset_settings:
  freepbx_conf: {conf}
  read_database: false
  ASTSPOOLDIR: /srv/spool
  ASTLOGDIR: /srv/log
keep: {periods}
{extra}"""


def test_freepbx_conf_is_read_like_php_does(freepbx_conf: Path) -> None:
    values = read_freepbx_conf(freepbx_conf)
    assert values["AMPDBUSER"] == "freepbxuser" and values["AMPDBNAME"] == "asterisk"
    assert password_from(freepbx_conf) == "It's-s3cret"


def test_three_lines_of_yaml_cover_every_freepbx_store(freepbx_conf: Path) -> None:
    config = parse_config(freepbx_yaml(freepbx_conf))
    assert [r.name for r in config.rules] == ["call-records", "voicemail", "call-recordings"]
    calls, voicemail, recordings = config.rules
    tables = [(s.table, s.optional) for s in calls.stores if isinstance(s, SqlStoreConfig)]
    assert tables == [("cdr", False), ("cel", True), ("transient_cdr", True), ("queuelog", True)]
    (csv,) = [s for s in calls.stores if isinstance(s, CsvStoreConfig)]
    assert str(csv.root) == "/srv/log/cdr-csv" and csv.optional
    (spool,) = voicemail.stores
    assert isinstance(spool, VoicemailStoreConfig) and str(spool.root) == "/srv/spool/voicemail"
    (monitor,) = recordings.stores
    assert isinstance(monitor, FilesStoreConfig)
    assert str(monitor.root) == "/srv/spool/monitor" and monitor.age_from == "path_date"
    assert monitor.group_siblings and monitor.references is not None
    assert monitor.references.column == "recordingfile"
    connection = config.connections["cdrdb"]
    assert connection.url.startswith("mariadb+pymysql://freepbxuser@localhost/asteriskcdrdb")
    assert connection.password_from == freepbx_conf
    assert "s3cret" not in connection.url
    assert str(config.rules[0].keep) == "3 months"


def test_freepbx_settings_override_paths_tables_and_zone(freepbx_conf: Path) -> None:
    text = freepbx_yaml(freepbx_conf).replace(
        "  ASTLOGDIR: /srv/log\n",
        "  ASTLOGDIR: /srv/log\n  MIXMON_DIR: /recordings\n  CDRUSEGMT: '1'\n"
        "  CELDBNAME: celdb\n  CELDBTABLENAME: cel_events\n",
    )
    config = parse_config(text)
    assert str(config.timezone) == "UTC"  # CDRUSEGMT: the PBX writes UTC
    cel = config.rules[0].stores[1]
    assert isinstance(cel, SqlStoreConfig)
    assert (cel.connection, cel.table) == ("celdb", "cel_events")
    assert config.connections["celdb"].url.endswith("/celdb?charset=utf8mb4")
    recordings = config.rules[2].stores[0]
    assert isinstance(recordings, FilesStoreConfig) and str(recordings.root) == "/recordings"


def test_keep_mistakes_are_named_with_their_line(freepbx_conf: Path) -> None:
    text = freepbx_yaml(
        freepbx_conf, keep="\n  call-records: 3 monthz\n  voicemails: 60d\n  call-recordings: 30d"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "r.yaml")
    found = [str(p) for p in caught.value.problems]
    assert any(f.startswith("r.yaml:9: keep.call-records: '3 monthz'") for f in found)
    assert any(
        "r.yaml:10: keep.voicemails: preset freepbx has no rule 'voicemails'" in f for f in found
    )
    assert any("keep has no period for 'voicemail'" in f and "voicemail: off" in f for f in found)


def test_a_rule_can_be_left_out_visibly(freepbx_conf: Path) -> None:
    config = parse_config(
        freepbx_yaml(freepbx_conf, keep="{call-records: 3m, voicemail: off, call-recordings: 30d}")
    )
    assert [r.name for r in config.rules] == ["call-records", "call-recordings"]


def test_missing_freepbx_conf_says_how_to_point_at_it(tmp_path: Path) -> None:
    with pytest.raises(PbxSettingsError, match="preset_settings"):
        parse_config(freepbx_yaml(tmp_path / "nope.conf"))


def test_3cx_preset_reads_its_config_json(tmp_path: Path) -> None:
    config_json = tmp_path / "config.json"
    config_json.write_text(
        json.dumps(
            {
                "DbHost": "127.0.0.1",
                "DbPort": 5480,
                "DbUser": "phonesystem",
                "DbPassword": "pw",
                "DbName": "database_single",
            }
        )
    )
    text = f"""\
version: 1
preset: 3cx
preset_settings: {{config_json: {config_json}, data_dir: /srv/3cx/Data}}
keep: {{call-records: 6 months, call-recordings: 30d, voicemail: 30d, chats: 1y}}
"""
    config = parse_config(text)
    connection = config.connections["3cx"]
    assert connection.url == "postgresql+psycopg://phonesystem@127.0.0.1:5480/database_single"
    assert password_from(config_json) == "pw"
    assert isinstance(config.rules[1].stores[0], ThreeCxCallsStoreConfig)
    recordings = config.rules[0].stores[0]
    assert isinstance(recordings, SqlStoreConfig)
    assert recordings.file_column == "recording_url"
    assert str(recordings.file_root) == "/srv/3cx/Data/Recordings"
    assert [r.name for r in config.rules] == [
        "call-recordings",  # before the calls its rows name (a foreign key may say so)
        "call-records",
        "voicemail",
        "chats",
    ]


def test_init_writes_a_config_that_loads_and_keeps_passwords_out(freepbx_conf: Path) -> None:
    text = render(
        "freepbx",
        {"freepbx_conf": str(freepbx_conf), "read_database": False},
        {"voicemail": "30d"},
    )
    assert "s3cret" not in text
    assert "password_from: " + str(freepbx_conf) in text
    config = parse_config(text)
    assert [str(r.keep) for r in config.rules] == ["3 months", "30d", "30d"]
    assert "preset" not in text.split("version: 1")[1].split("rules:")[0]
