"""`retentiond init --preset NAME`: the expanded config of a preset, commented, for review.
`retentiond init` alone: the same, for the preset and settings the probe found on the host, with
the evidence in a comment at the top. `retentiond init --from-config`: the config in force,
expanded (its preset and holds.d made explicit), for review elsewhere and the fleet report."""

from __future__ import annotations

import io
import shlex
from datetime import date
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from sqlalchemy.engine import make_url

from retentiond.config.loader import LoadedConfig, parse_config
from retentiond.config.pbxfiles import is_3cx_settings
from retentiond.config.presets import EXPANDERS, PresetError, expand
from retentiond.config.probe import Detection, describe
from retentiond.errors import ConfigError, ConfigProblem

DEFAULT_KEEP = {
    "call-records": "3 months",
    "voicemail": "60d",
    "call-recordings": "30d",
    "chats": "6 months",
}
SOURCES = {
    "freepbx": "/etc/freepbx.conf and the freepbx_settings table",
    "asterisk": "/etc/asterisk/cdr_sqlite3_custom.conf and the standard Asterisk paths",
    "3cx": "3CX's 3CXPhoneSystem.ini (/var/lib/3cxpbx/Bin or Instance1/Bin)",
}

# Who the DPO's documents are for and their language, for the reviewer to fill in
ORGANISATION = (
    "# The DPO's documents: report, rule catalogue, report mail, verifier page",
    "# organisation:",
    "#   controller: Beispiel GmbH, Musterstraße 1, 12345 Musterstadt",
    "#   dpo_contact: datenschutz@example.com",
    "#   language: de  # en (default) | de: words, dates and numbers of every document",
    '# reports:        # the report by itself each month (README, "Reports by mail")',
    "#   folder: /srv/dpo/retentiond",
    "#   language: de  # en | de; default: organisation.language",
)


def render(preset: str, settings: dict[str, Any], keep: dict[str, str]) -> str:
    """The expanded config as YAML text; validated before it is returned."""
    _, templates, _ = EXPANDERS[preset](settings)
    periods = {t.name: DEFAULT_KEEP.get(t.name, "3 months") for t in templates} | keep
    data = {"version": 1, "preset": preset, "preset_settings": settings, "keep": periods}
    try:
        expanded = expand(data)
    except PresetError as error:
        raise ConfigError(
            [
                ConfigProblem("init", None, ".".join(map(str, p.path)), p.message)
                for p in error.problems
            ]
        ) from None
    text = _document(preset, settings, expanded)
    parse_config(text, "<init>")  # what init writes must load as it is
    return text


def render_detected(detection: Detection, given: dict[str, Any], keep: dict[str, str]) -> str:
    """The config for the PBX the probe found: `render` of its preset with the settings it
    derived (those `given` win), headed by the evidence."""
    chosen = detection.chosen
    assert chosen is not None and chosen.usable  # the caller says why not
    offline = given.get("read_database") is False and chosen.offline
    settings = (chosen.offline if offline else chosen.settings) | given
    derived = " ".join(f"--set {shlex.quote(f'{k}={_setting(v)}')}" for k, v in settings.items())
    header = [
        "# `retentiond init` looked at this host (`retentiond init --detect` shows it again).",
        *(f"# {line}" if line else "#" for line in describe(detection)),
        f"# The same config: retentiond init --preset {chosen.preset} {derived}",
        "#",
    ]
    return "\n".join(header) + "\n" + render(chosen.preset, settings, keep)


def _setting(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _document(preset: str, settings: dict[str, Any], expanded: dict[str, Any]) -> str:
    # The settings are not written (they are expanded below), so the comment names them itself.
    given = ", ".join(f"--set {key}" for key in settings)
    source = f"the settings given to init ({given})" if settings else SOURCES[preset]
    lines = [
        f"# retentiond config for {preset}, written by `retentiond init --preset {preset}` "
        f"on {date.today().isoformat()}.",
        f"# Stores and paths were found from {source}.",
        "# Review every `keep` against your record of processing, then run:",
        "#   retentiond -c THIS_FILE check   # connects, lists the stores found and not found",
        "#   retentiond -c THIS_FILE plan    # what would be deleted now; changes nothing",
        "version: 1",
    ]
    if "timezone" in expanded:
        lines.append(f"timezone: {expanded['timezone']}  # the PBX writes UTC (CDRUSEGMT)")
    else:
        lines.append("# timezone: Europe/Berlin  # zone of the PBX's timestamps; default: host's")
    lines += ["audit:", "  path: /var/lib/retentiond/audit.jsonl  # the deletion log"]
    lines.append("connections:")
    for name, connection in expanded["connections"].items():
        lines.append(f"  {name}:")
        lines += _indent(_dump(connection), 4)
        if "password_from" in connection:
            lines.append("    # the password is read from the PBX's own file at each connect")
            if is_3cx_settings(Path(connection["password_from"])):
                lines.append(
                    "    # 3CX's master account: better a role of its own, docs/install.md 3.1"
                )
        if "unix_socket=" in connection["url"]:
            lines.append("    # localhost: over MariaDB's local socket, as FreePBX's PHP connects")
    lines.append("rules:")
    for rule in expanded["rules"]:
        lines += _dump([rule]).splitlines()
    optional = any(s.get("optional") for r in expanded["rules"] for s in r["stores"])
    if optional:
        lines.append("# optional: true marks places only some installs have; check reports them")
    lines += [
        "safety:",
        "  max_delete_fraction: 0.5  # the first run on years of data needs more, once",
        *ORGANISATION,
        "",
    ]
    return "\n".join(lines)


def render_in_force(loaded: LoadedConfig, host: str) -> str:
    """The config in force, as retentiond reads it: the preset expanded from the PBX's files as
    they are now, the holds of holds.d inline, every default written out; a password in a
    connection URL hidden. It parses to the same rules, so the fleet report can read a host's
    config on the provider's controller, where the PBX's files are not."""
    data = loaded.config.model_dump(mode="json", by_alias=True, exclude_none=True)
    data.pop("holds_dir", None)  # the holds are inline
    for connection in data.get("connections", {}).values():
        url = connection.get("url")
        if isinstance(url, str):
            connection["url"] = make_url(url).render_as_string(hide_password=True)
    header = [
        f"# The config in force of {loaded.path} on {host} (sha256 {loaded.sha256}),",
        "# written by `retentiond init --from-config`: its preset expanded from the PBX's files",
        "# and its holds.d inline, every setting written out, a password in a URL hidden (***).",
        "# For review and for `retentiond report --fleet` on another machine; the host runs its",
        "# own file. Rewrite it after the config, the holds or the PBX's settings change.",
    ]
    return "\n".join(header) + "\n" + _dump(data)


def _dump(value: Any) -> str:
    yaml = YAML()  # round-trip dumper: keeps the order the preset wrote
    yaml.default_flow_style = False
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096  # a URL (with its socket) stays on one line
    out = io.StringIO()
    yaml.dump(value, out)
    return out.getvalue()


def _indent(text: str, spaces: int) -> list[str]:
    return [" " * spaces + line for line in text.splitlines()]
