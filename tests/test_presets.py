"""Presets as an administrator uses them: three lines of YAML, or `init` to see the expansion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from retentiond.config import parse_config, pbxfiles
from retentiond.config.init import render
from retentiond.config.model import (
    CsvStoreConfig,
    FilesStoreConfig,
    SqlStoreConfig,
    ThreeCxCallsStoreConfig,
    VoicemailStoreConfig,
)
from retentiond.config.pbxfiles import PbxSettingsError, password_from, read_freepbx_conf
from retentiond.config.presets import threecx
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
    assert "/celdb?charset=utf8mb4&unix_socket=" in config.connections["celdb"].url
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


def test_3cx_preset_reads_its_config_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The older layout 3CX-Tools reads (adroste/3cx-tools 3cx-tools-server/path.prod.json)."""
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setattr(threecx, "THREECX_CREDENTIALS", tmp_path / "no-credentials")
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


# -- FreePBX as installed: '' means the default, localhost the socket ----------------------------

# FreePBX's installer defines these with value '' (framework installlib/installer.class.php,
# category 'Remote CDR Database'; FreePBX/cel release/17.0 install.php for CELDB*).
INSTALLED_EMPTY = (
    "CDRDBHOST",
    "CDRDBNAME",
    "CDRDBPASS",
    "CDRDBPORT",
    "CDRDBTABLENAME",
    "CDRDBTYPE",
    "CDRDBUSER",
    "CELDBNAME",
    "CELDBTABLENAME",
)


def test_empty_freepbx_settings_mean_freepbx_defaults(freepbx_conf: Path) -> None:
    empty = "".join(f"  {key}: ''\n" for key in INSTALLED_EMPTY)
    text = freepbx_yaml(freepbx_conf).replace(
        "  ASTLOGDIR: /srv/log\n", f"  ASTLOGDIR: /srv/log\n{empty}"
    )
    config = parse_config(text)
    tables = [s.table for s in config.rules[0].stores if isinstance(s, SqlStoreConfig)]
    assert tables == ["cdr", "cel", "transient_cdr", "queuelog"]
    recordings = config.rules[2].stores[0]
    assert isinstance(recordings, FilesStoreConfig) and recordings.references is not None
    assert recordings.references.table == "cdr"
    assert list(config.connections) == ["cdrdb"]  # CELDBNAME '' is CDRDBNAME's database
    url = config.connections["cdrdb"].url
    assert url.startswith("mariadb+pymysql://freepbxuser@localhost/asteriskcdrdb?charset=utf8mb4")
    assert config.connections["cdrdb"].password_from == freepbx_conf  # CDRDBPASS '': AMPDBPASS


def write_conf(tmp_path: Path, **amp: str) -> Path:
    path = tmp_path / "freepbx.conf"
    lines = [f"$amp_conf['{key}'] = '{value}';" for key, value in amp.items()]
    path.write_text("<?php\n" + "\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("amp", "url"),
    [
        (
            {"AMPDBHOST": "localhost", "AMPDBPORT": "3306"},
            "@localhost/asteriskcdrdb?charset=utf8mb4&unix_socket=/run/mysqld/mysqld.sock",
        ),
        (
            {"AMPDBHOST": ""},
            "@localhost/asteriskcdrdb?charset=utf8mb4&unix_socket=/run/mysqld/mysqld.sock",
        ),
        (
            {"AMPDBSOCK": "/srv/db/mysql.sock", "AMPDBHOST": "localhost"},
            "@localhost/asteriskcdrdb?charset=utf8mb4&unix_socket=/srv/db/mysql.sock",
        ),
        (
            {"AMPDBHOST": "db.example", "AMPDBPORT": "3306"},
            "@db.example:3306/asteriskcdrdb?charset=utf8mb4",
        ),
        ({"AMPDBHOST": "db.example", "AMPDBPORT": ""}, "@db.example/asteriskcdrdb?charset=utf8mb4"),
    ],
    ids=["localhost", "no-host", "AMPDBSOCK", "tcp", "tcp-default-port"],
)
def test_freepbx_database_address_is_read_as_php_connects(
    amp: dict[str, str], url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pbxfiles, "MARIADB_OPTION_FILES", ())  # the compiled-in default socket
    monkeypatch.delenv("MYSQL_UNIX_PORT", raising=False)
    conf = write_conf(tmp_path, AMPDBUSER="freepbxuser", AMPDBPASS="pw", **amp)
    config = parse_config(freepbx_yaml(conf))
    assert config.connections["cdrdb"].url == "mariadb+pymysql://freepbxuser" + url


def test_a_cdr_host_of_its_own_is_used_with_freepbx_users_fallback(tmp_path: Path) -> None:
    conf = write_conf(tmp_path, AMPDBUSER="freepbxuser", AMPDBPASS="pw", AMPDBHOST="localhost")
    text = freepbx_yaml(conf).replace(
        "  ASTLOGDIR: /srv/log\n",
        "  ASTLOGDIR: /srv/log\n  CDRDBHOST: cdr.example\n  CDRDBPORT: '3307'\n",
    )
    connection = parse_config(text).connections["cdrdb"]
    assert (
        connection.url
        == "mariadb+pymysql://freepbxuser@cdr.example:3307/asteriskcdrdb?charset=utf8mb4"
    )
    assert connection.password_from == conf  # CDRDBUSER, CDRDBPASS '': AMPDBUSER, AMPDBPASS


def test_mariadb_socket_is_found_as_its_client_finds_it(tmp_path: Path) -> None:
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    main = tmp_path / "my.cnf"
    main.write_text(
        "[client-server]\nsocket = /run/first.sock\n[mysqld]\nsocket = /run/server-only.sock\n"
        f"!includedir {conf_d}\n"
    )
    (conf_d / "50-client.cnf").write_text("[client]\n# a comment\nsocket=/run/client.sock\n")
    (conf_d / "60-server.cnf").write_text("[mysqld]\nsocket=/run/ignored.sock\n")
    (conf_d / "README").write_text("[client]\nsocket=/run/not-a-cnf.sock\n")
    assert pbxfiles.mariadb_socket([main], environ={}) == "/run/client.sock"
    (conf_d / "70-mariadb.cnf").write_text("[client-mariadb]\nsocket = '/run/last.sock'\n")
    assert pbxfiles.mariadb_socket([main], environ={}) == "/run/last.sock"
    nothing = [tmp_path / "absent.cnf"]
    assert pbxfiles.mariadb_socket(nothing, {"MYSQL_UNIX_PORT": "/env.sock"}) == "/env.sock"
    assert pbxfiles.mariadb_socket(nothing, environ={}) == "/run/mysqld/mysqld.sock"


@pytest.mark.mariadb
def test_the_socket_found_on_this_machine_is_the_servers(mariadb_server: Any) -> None:
    """As root over the socket, like `mariadb -u root`: the server answers and names it."""
    socket = pbxfiles.mariadb_socket()
    with mariadb_server.connect() as connection:
        assert connection.execute(text("SELECT @@socket")).scalar() == socket
    via_socket = create_engine(f"mariadb+pymysql://root@localhost/?unix_socket={socket}")
    try:
        with via_socket.connect() as connection:
            assert connection.execute(text("SELECT @@socket")).scalar() == socket
    finally:
        via_socket.dispose()


# -- 3CX: 3CXPhoneSystem.ini ----------------------------------------------------------------------

# The sections and keys public code reads from 3CX's 3CXPhoneSystem.ini, written `Key = Value`:
# [CfgServerProfile] DBHost, DBPort, MasterDBUser, MasterDBPassword, [QMDatabase] DBName and the
# read-only [DbAdminREADONLY] User, Password (AhmetKalenderr/3CXCallReporterLast,
# 3CXCallReporterLast/Helpers/ConnectionString.cs, commit 5c917d55); scripts read the master
# account with `sed -n 's/MasterDBPassword = \(.*\)/\1/p' /var/lib/3cxpbx/Bin/3CXPhoneSystem.ini`.
# Values are made up; 5480 is the port older 3CX versions used.
THREECX_INI = """\
[CfgServerProfile]
DBHost = 127.0.0.1
DBPort = 5480
MasterDBUser = phonesystem
MasterDBPassword = Pass%word;1

[QMDatabase]
DBHost = 127.0.0.1
DBPort = 5480
DBName = database_single

[DbAdminREADONLY]
User = logsreader_single
Password = read-only-pw
"""


def threecx_yaml(settings: str) -> str:
    return f"""\
version: 1
preset: 3cx
preset_settings: {settings}
keep: {{call-records: 6 months, call-recordings: 30d, voicemail: 30d}}
"""


def test_3cx_preset_reads_3cxphonesystem_ini(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setattr(threecx, "THREECX_CREDENTIALS", tmp_path / "no-credentials")
    ini = tmp_path / "3CXPhoneSystem.ini"
    ini.write_text(THREECX_INI)
    config = parse_config(threecx_yaml(f"{{ini: {ini}, data_dir: /srv/3cx/Data}}"))
    connection = config.connections["3cx"]
    assert connection.url == "postgresql+psycopg://phonesystem@127.0.0.1:5480/database_single"
    assert connection.password_from == ini  # 3CX's master account, read at each connect
    assert password_from(ini) == "Pass%word;1"
    assert "Pass" not in connection.url


def test_3cx_settings_are_found_in_bin_or_instance1_bin(tmp_path: Path) -> None:
    bin_ini = tmp_path / "Bin" / "3CXPhoneSystem.ini"
    instance_ini = tmp_path / "Instance1" / "Bin" / "3CXPhoneSystem.ini"
    candidates = [bin_ini, instance_ini, tmp_path / "Bin" / "config.json"]
    with pytest.raises(PbxSettingsError, match=r"no 3CX settings file found .*\{ini: "):
        pbxfiles.find_3cx_settings(candidates)
    instance_ini.parent.mkdir(parents=True)
    instance_ini.write_text(THREECX_INI)
    assert pbxfiles.find_3cx_settings(candidates) == instance_ini
    bin_ini.parent.mkdir(parents=True)
    bin_ini.write_text(THREECX_INI)
    assert pbxfiles.find_3cx_settings(candidates) == bin_ini


def test_3cx_preset_connects_as_retentiond_where_its_credential_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ini = tmp_path / "3CXPhoneSystem.ini"
    ini.write_text(THREECX_INI)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "3cx").write_text("the role's password\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    connection = parse_config(threecx_yaml(f"{{ini: {ini}}}")).connections["3cx"]
    assert connection.url == "postgresql+psycopg://retentiond@127.0.0.1:5480/database_single"
    assert connection.password_from is None and connection.password_file is None


def test_an_ini_without_the_master_account_is_named(tmp_path: Path) -> None:
    ini = tmp_path / "3CXPhoneSystem.ini"
    ini.write_text("[QMDatabase]\nDBName = database_single\n")
    with pytest.raises(PbxSettingsError, match=r"no MasterDBUser in \[CfgServerProfile\]"):
        parse_config(threecx_yaml(f"{{ini: {ini}}}"))
    ini.write_text("DBName = database_single\n")
    with pytest.raises(PbxSettingsError, match="is not an ini file"):
        parse_config(threecx_yaml(f"{{ini: {ini}}}"))
    # the parser quotes the offending line: its words never reach the terminal or the journal
    ini.write_text("MasterDBPassword = Secr3tPw\n[CfgServerProfile]\n")
    with pytest.raises(PbxSettingsError, match=r"is not an ini file \(line 1\)") as caught:
        parse_config(threecx_yaml(f"{{ini: {ini}}}"))
    assert "Secr3tPw" not in str(caught.value)
