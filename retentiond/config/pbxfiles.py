"""The PBX's own settings files: FreePBX `/etc/freepbx.conf` and 3CX `config.json`.

Their passwords are read where the PBX keeps them, at each connect, so they are never copied
into retentiond's config.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from retentiond.errors import RetentiondError

_AMP_CONF = re.compile(r"""\$amp_conf\[\s*(['"])(\w+)\1\s*\]\s*=\s*(['"])(.*?)(?<!\\)\3\s*;""")


class PbxSettingsError(RetentiondError):
    """A PBX settings file is missing or unreadable; says which and what to set instead."""


def read_freepbx_conf(path: Path) -> dict[str, str]:
    """The `$amp_conf['KEY'] = 'value';` lines of FreePBX's bootstrap file (AMPDBUSER, ...)."""
    text = _read(path, "FreePBX config")
    values = {m.group(2): _unescape(m.group(4)) for m in _AMP_CONF.finditer(text)}
    if "AMPDBUSER" not in values:
        raise PbxSettingsError(
            f"{path} has no $amp_conf['AMPDBUSER'] line; is it FreePBX's freepbx.conf?"
        )
    return values


def read_3cx_config(path: Path) -> dict[str, str]:
    """DbHost, DbPort, DbUser, DbPassword and DbName from 3CX's config.json."""
    text = _read(path, "3CX config")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise PbxSettingsError(f"{path} is not valid JSON (line {error.lineno})") from None
    if not isinstance(data, dict) or "DbUser" not in data:
        raise PbxSettingsError(f"{path} has no DbUser key; is it 3CX's Bin/config.json?")
    return {str(k): str(v) for k, v in data.items() if isinstance(v, str | int)}


def password_from(path: Path) -> str:
    """The database password in a FreePBX freepbx.conf or a 3CX config.json."""
    if path.suffix == ".json":
        password = read_3cx_config(path).get("DbPassword")
        key = "DbPassword"
    else:
        password = read_freepbx_conf(path).get("AMPDBPASS")
        key = "$amp_conf['AMPDBPASS']"
    if password is None:
        raise PbxSettingsError(f"{path} has no {key}")
    return password


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PbxSettingsError(
            f"{what} {path} does not exist; point the preset at it with preset_settings"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise PbxSettingsError(f"cannot read {what} {path}: {reason}") from None


def _unescape(value: str) -> str:
    return value.replace("\\'", "'").replace('\\"', '"').replace("\\\\", "\\")
