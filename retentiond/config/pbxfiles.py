"""The PBX's own settings files: FreePBX `/etc/freepbx.conf`, 3CX `3CXPhoneSystem.ini` (or the
older `config.json`), and the MariaDB client's option files that say where its local socket is.

Their passwords are read where the PBX keeps them, at each connect, so they are never copied
into retentiond's config.
"""

from __future__ import annotations

import configparser
import json
import os
import re
from collections.abc import Iterable, Mapping
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


# 3CX on Linux (v18, v20): `3CXPhoneSystem.ini`, in Bin/ or, on some installs, Instance1/Bin/;
# 3CX-Tools (adroste/3cx-tools, tested on v18.0.2) reads `Bin/config.json` instead. First found.
THREECX_SETTINGS = (
    Path("/var/lib/3cxpbx/Bin/3CXPhoneSystem.ini"),
    Path("/var/lib/3cxpbx/Instance1/Bin/3CXPhoneSystem.ini"),
    Path("/var/lib/3cxpbx/Bin/config.json"),
)
# The sections and keys public code reads from 3CXPhoneSystem.ini: [CfgServerProfile] DBHost,
# DBPort, MasterDBUser, MasterDBPassword and [QMDatabase] DBName (AhmetKalenderr/
# 3CXCallReporterLast Helpers/ConnectionString.cs; webforward/whmcs-3cx-contacts-sync README).
_PROFILE, _QM = "cfgserverprofile", "qmdatabase"


@dataclass(frozen=True)
class ThreeCxDatabase:
    """Where 3CX's PostgreSQL database is, and the account 3CX itself uses (its master account)."""

    host: str
    port: str
    name: str
    master_user: str


def find_3cx_settings(candidates: Iterable[Path] = THREECX_SETTINGS) -> Path:
    """The first of 3CX's settings files that exists."""
    tried = list(candidates)
    for path in tried:
        if path.is_file():
            return path
    raise PbxSettingsError(
        f"no 3CX settings file found (looked for {', '.join(map(str, tried))}); point the preset "
        "at it with preset_settings: {ini: /path/3CXPhoneSystem.ini}"
    )


def read_3cx_settings(path: Path) -> ThreeCxDatabase:
    """The database address and master account from 3CXPhoneSystem.ini (or config.json)."""
    if path.suffix.lower() == ".json":
        data = read_3cx_config(path)
        return ThreeCxDatabase(
            host=data.get("DbHost") or "127.0.0.1",
            port=data.get("DbPort") or "5432",
            name=data.get("DbName") or "database_single",
            master_user=data["DbUser"],
        )
    sections = read_ini(path, "3CX settings")
    profile, qm = sections.get(_PROFILE, {}), sections.get(_QM, {})
    user = profile.get("masterdbuser")
    if not user:
        raise PbxSettingsError(
            f"{path} has no MasterDBUser in [CfgServerProfile]; is it 3CX's 3CXPhoneSystem.ini?"
        )
    return ThreeCxDatabase(
        host=profile.get("dbhost") or qm.get("dbhost") or "127.0.0.1",
        port=profile.get("dbport") or qm.get("dbport") or "5432",
        name=qm.get("dbname") or profile.get("dbname") or "database_single",
        master_user=user,
    )


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


THREECX_MASTER_ACCOUNT = (
    "connects as 3CX's master account (password_from), which may change or drop every table of "
    "3CX; create retentiond's own role and its credential 3cx (docs/install.md, 3.1): the 3cx "
    "preset then connects as it; in a written config set it in the url and delete password_from"
)


def is_3cx_settings(path: Path) -> bool:
    """Whether a password_from file is 3CX's: its password is 3CX's master account's."""
    return path.suffix.lower() in (".ini", ".json")


def password_from(path: Path) -> str:
    """The database password in a FreePBX freepbx.conf, a 3CX 3CXPhoneSystem.ini or config.json."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        password = read_3cx_config(path).get("DbPassword")
        key = "DbPassword"
    elif suffix == ".ini":
        password = read_ini(path, "3CX settings").get(_PROFILE, {}).get("masterdbpassword")
        key = "MasterDBPassword in [CfgServerProfile]"
    else:
        password = read_freepbx_conf(path).get("AMPDBPASS")
        key = "$amp_conf['AMPDBPASS']"
    if password is None:
        raise PbxSettingsError(f"{path} has no {key}")
    return password


def read_ini(path: Path, what: str) -> dict[str, dict[str, str]]:
    """Sections and keys of an ini file, both lower case (3CX writes `Key = Value`; unixODBC's
    odbc.ini is alike)."""
    parser = configparser.ConfigParser(
        interpolation=None, strict=False, allow_no_value=True, delimiters=("=",)
    )
    try:
        parser.read_string(_read(path, what).lstrip("\ufeff"), str(path))
    except configparser.Error as error:
        # never the parser's words: they quote the line, which may hold MasterDBPassword
        errors = getattr(error, "errors", None) or [(getattr(error, "lineno", None), "")]
        line = errors[0][0]
        where = f" (line {line})" if line else ""
        raise PbxSettingsError(
            f"{path} is not an ini file{where}: each line must be [Section] or Key = Value"
        ) from None
    return {
        section.lower(): {key: (value or "").strip() for key, value in parser.items(section)}
        for section in parser.sections()
    }


# -- MariaDB's local socket ------------------------------------------------------------------------

# The option files MariaDB's client library reads, in order (a later value wins), and the groups
# of them a client program reads; /run/mysqld/mysqld.sock is Debian's compiled-in default.
MARIADB_OPTION_FILES = (Path("/etc/my.cnf"), Path("/etc/mysql/my.cnf"), Path("~/.my.cnf"))
MARIADB_CLIENT_GROUPS = ("client", "client-server", "client-mariadb")
MARIADB_DEFAULT_SOCKET = "/run/mysqld/mysqld.sock"
_INCLUDE_DEPTH = 10  # as the client: an include loop ends here


def mariadb_socket(
    option_files: Iterable[Path] | None = None, environ: Mapping[str, str] | None = None
) -> str:
    """The local socket a MariaDB client connects to for `localhost`, found as the client does:
    `socket=` in its option files (with their !include and !includedir), else $MYSQL_UNIX_PORT,
    else the compiled-in default."""
    socket = ""
    for path in MARIADB_OPTION_FILES if option_files is None else option_files:
        socket = _option_file_socket(path.expanduser(), socket, 0)
    environ = os.environ if environ is None else environ
    return socket or environ.get("MYSQL_UNIX_PORT") or MARIADB_DEFAULT_SOCKET


def _option_file_socket(path: Path, socket: str, depth: int) -> str:
    """`socket` as the client groups of one option file (and its includes) leave it."""
    if depth > _INCLUDE_DEPTH:
        return socket
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:  # absent or unreadable: the client skips it too
        return socket
    in_client_group = False
    for raw in lines:
        line = raw.strip()
        if line.startswith("!includedir"):
            folder = Path(line.removeprefix("!includedir").strip())
            for included in sorted(folder.glob("*.cnf")) if folder.is_dir() else []:
                socket = _option_file_socket(included, socket, depth + 1)
        elif line.startswith("!include"):
            socket = _option_file_socket(
                Path(line.removeprefix("!include").strip()), socket, depth + 1
            )
        elif line.startswith("["):
            in_client_group = line.strip("[]").strip().lower() in MARIADB_CLIENT_GROUPS
        elif in_client_group and "=" in line and not line.startswith(("#", ";")):
            key, value = (part.strip() for part in line.split("=", 1))
            if key.lower() == "socket":
                socket = value.split(" #", 1)[0].strip().strip("'\"")
    return socket


# -- FreePBX /etc/amportal.conf ---------------------------------------------------------------


def read_amportal_conf(path: Path) -> dict[str, str]:
    """The `KEY=value` lines of /etc/amportal.conf: FreePBX writes its freepbx_settings there for
    legacy programs (framework BMO/Config.class.php amportal_generate, a space as `\\ `) and
    never reads it back, so it may be older than the database."""
    values = {}
    for raw in _read(path, "FreePBX amportal.conf").splitlines():
        line = raw.strip()
        key, sep, value = line.partition("=")
        if sep and not line.startswith(("#", ";")) and key.strip().isidentifier():
            values[key.strip()] = value.strip().replace("\\ ", " ")
    return values


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


def read_asterisk_conf(path: Path) -> dict[str, dict[str, str]]:
    """The categories of an Asterisk .conf file and their variables (names lower case), as
    Asterisk reads it: `#include`s in place, templates applied and not categories themselves."""
    return _asterisk_categories(_with_includes(path, path.parent))


ASTERISK_DIRECTORIES = {  # Asterisk's compiled-in defaults (main/options.c, Debian's build)
    "astetcdir": "/etc/asterisk",
    "astspooldir": "/var/spool/asterisk",
    "astlogdir": "/var/log/asterisk",
}


def asterisk_directories(path: Path) -> dict[str, str]:
    """Asterisk's folders from asterisk.conf's [directories]: a template (`[directories](!)`, as
    the sample ships) does not apply, and what it does not set is the compiled-in default."""
    directories = read_asterisk_conf(path).get("directories", {})
    return {key: directories.get(key) or default for key, default in ASTERISK_DIRECTORIES.items()}


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
