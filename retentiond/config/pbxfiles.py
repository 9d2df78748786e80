"""The PBX's own settings files: FreePBX `/etc/freepbx.conf` and 3CX `config.json`.

Their passwords are read where the PBX keeps them, at each connect, so they are never copied
into retentiond's config.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
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


# -- Asterisk cdr_sqlite3_custom.conf ---------------------------------------------------------

_CDR_VALUE = re.compile(r"\$\{CDR\(\s*(\w+)", re.IGNORECASE)
_CATEGORY = re.compile(r"^\[([^\]]+)\]\s*(?:\(([^)]*)\))?")


@dataclass(frozen=True)
class SqliteCdrMapping:
    """One category of cdr_sqlite3_custom.conf: a database file and the table written there.

    `fields` names the CDR field each column receives (`start`, `clid`, ...), None for a
    literal, a user variable or an expression it does not know.
    """

    category: str
    table: str
    columns: tuple[str, ...]
    fields: tuple[str | None, ...]

    def column_of(self, field: str) -> str | None:
        return next((c for c, f in zip(self.columns, self.fields, strict=True) if f == field), None)


def read_cdr_sqlite3_custom(path: Path) -> list[SqliteCdrMapping]:
    """The mappings Asterisk's cdr_sqlite3_custom.conf makes; [] when the file does not exist.

    As res/cdrel_custom/config.c (Asterisk 20.19, 22.9, 23.3 and later) reads it: every
    category is a database file, its `table` (default cdr), its `columns` and the `values`
    (legacy, `'${CDR(start)}'`) or `fields` (advanced, `start(int64)`) written into them. A
    category without columns, or without values and fields, is skipped there as here, so the
    sample as shipped, all commented out, has none. Earlier releases read `[master]` alone.
    """
    if not path.exists():
        return []
    categories = _asterisk_categories(_with_includes(path, path.parent))
    mappings = []
    for name, variables in categories.items():
        columns = [c.strip().strip("'\"").strip() for c in variables.get("columns", "").split(",")]
        columns = [c for c in columns if c]
        if "values" in variables:
            fields = [_legacy_field(v) for v in _split_outside_quotes(variables["values"], "'")]
        elif "fields" in variables:
            fields = [_advanced_field(v) for v in _split_outside_quotes(variables["fields"], '"')]
        else:
            continue
        if not columns:
            continue
        if len(fields) != len(columns):  # Asterisk refuses the category: no file is written
            raise PbxSettingsError(
                f"{path}: [{name}] has {len(columns)} columns but {len(fields)} values; "
                "Asterisk does not load it either. Correct the file"
            )
        table = variables.get("table", "").strip() or "cdr"
        mappings.append(SqliteCdrMapping(name, table, tuple(columns), tuple(fields)))
    return mappings


def _asterisk_categories(text: str) -> dict[str, dict[str, str]]:
    """Categories and their variables of an Asterisk .conf file (templates applied)."""
    categories: dict[str, dict[str, str]] = {}
    templates: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in _without_comments(text).splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # #exec: a program's output, not read here
            continue
        header = _CATEGORY.match(line)
        if header:
            name = header.group(1).strip()
            options = [o.strip() for o in (header.group(2) or "").split(",") if o.strip()]
            current = {}
            for option in options:
                current.update(templates.get(option, categories.get(option, {})))
            if "+" in options and name in categories:
                current = categories[name]
            elif "!" in options:
                templates[name] = current
            else:
                categories[name] = current
            continue
        key, separator, value = line.partition("=")
        if separator and current is not None:
            current[key.strip().lower()] = value.removeprefix(">").strip()
    return categories


def _with_includes(path: Path, etc_dir: Path, depth: int = 0) -> str:
    """The file's text with each `#include`d file's in its place, as Asterisk reads them
    (relative names in its config folder, wildcards allowed; `#tryinclude` may find none)."""
    lines = []
    for line in _read(path, "Asterisk config").splitlines():
        include = re.match(r"\s*#(try)?include\s+[\"<]?([^\">]+?)[\">]?\s*$", line)
        if not include:
            lines.append(line)
            continue
        pattern = include.group(2)
        absolute = pattern.startswith("/")
        folder = Path("/") if absolute else etc_dir
        name = pattern.lstrip("/")
        found = sorted(folder.glob(name)) if name else []
        if not found and not include.group(1):
            raise PbxSettingsError(f"{path} includes {pattern}, which does not exist")
        if depth >= 8:
            raise PbxSettingsError(f"{path}: #include nested more than 8 deep")
        lines += [_with_includes(included, etc_dir, depth + 1) for included in found]
    return "\n".join(lines)


def _without_comments(text: str) -> str:
    """The text without `;` comments and `;-- ... --;` blocks; `\\;` is a literal semicolon."""
    text = re.sub(r";--.*?--;", "", text, flags=re.DOTALL)
    lines = []
    for line in text.splitlines():
        cut = re.search(r"(?<!\\);", line)
        lines.append((line[: cut.start()] if cut else line).replace("\\;", ";"))
    return "\n".join(lines)


def _split_outside_quotes(text: str, quote: str) -> list[str]:
    parts, current, quoted = [], "", False
    for char in text:
        if char == quote:
            quoted = not quoted
        if char == "," and not quoted:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [*parts, current.strip()]


def _legacy_field(value: str) -> str | None:
    """`'${CDR(start)}'` is start; a value naming several fields or none is no one field."""
    names = {m.group(1).lower() for m in _CDR_VALUE.finditer(value)}
    return names.pop() if len(names) == 1 else None


def _advanced_field(value: str) -> str | None:
    """`start(int64^noquote)` is start; a `"literal"` or a `name(uservar)` is no CDR field."""
    name, _, qualifiers = value.strip().partition("(")
    if not name or name.startswith('"') or "uservar" in qualifiers.lower():
        return None
    return name.strip().lower()
