"""Load a YAML config strictly; report every problem at once, each with file:line and key path."""

from __future__ import annotations

import hashlib
import os
import stat
import warnings
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.composer import MaxDepthExceededError
from ruamel.yaml.constructor import ConstructorError, DuplicateKeyError, RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from retentiond.config.model import HOLD_RULE_NAMES, STORE_TYPES, Config, HoldConfig, key_names
from retentiond.config.presets import PresetError, PresetProblem, expand
from retentiond.credentials import secret_file_problem
from retentiond.errors import ConfigError, ConfigProblem
from retentiond.i18n import LANGUAGES

DEFAULT_CONFIG_PATH = Path("/etc/retentiond/retentiond.yaml")


HOLDS_DIR_NAME = "holds.d"

# Bounds against hostile or mistaken files (a config pointed at /dev/zero, an alias bomb):
# a real config is a few kilobytes, a few hundred values, nested less than ten deep.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_VALUES = 100_000
MAX_DEPTH = 64


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config with where it came from and its hash (recorded in every audit entry).

    `config.holds` holds the config's own holds and those of the holds folder; `holds_sha256`
    is the hash of the folder's files (None without a folder), so a reload sees hold changes.
    """

    config: Config
    path: Path
    sha256: str
    holds_dir: Path | None = None
    holds_sha256: str | None = None


def config_path(option: str | None) -> Path:
    """-c/--config, else $RETENTIOND_CONFIG, else /etc/retentiond/retentiond.yaml."""
    if option:
        return Path(option)
    env = os.environ.get("RETENTIOND_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(path: Path) -> LoadedConfig:
    name = str(path)
    try:
        raw = _read_bounded(path)
    except FileNotFoundError:
        raise ConfigError(
            [ConfigProblem(name, None, "", "no such file; pass -c FILE or set RETENTIOND_CONFIG")]
        ) from None
    except (OSError, ValueError) as error:  # ValueError: a NUL in the path
        raise ConfigError(
            [ConfigProblem(name, None, "", f"cannot read: {_reason(error)}")]
        ) from None
    config = parse_config(raw, name)
    folder = config.holds_dir or path.parent / HOLDS_DIR_NAME
    if config.holds_dir is None and not folder.is_dir():
        return LoadedConfig(config, path, hashlib.sha256(raw).hexdigest())
    holds, digest = load_holds_dir(folder, [rule.name for rule in config.rules])
    config = _with_holds(config, holds, name, folder)
    return LoadedConfig(config, path, hashlib.sha256(raw).hexdigest(), folder, digest)


def _read_bounded(path: Path) -> bytes:
    """The file's bytes; ConfigError for one too large to be a config, or no regular file.

    Opened without blocking and checked before reading: a FIFO, a device (`/dev/zero`) or a
    socket would hang or never end, so only a regular file (or a symlink to one) is read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        kind = _file_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise ConfigError(
                [ConfigProblem(str(path), None, "", f"is {kind}, not a file; pass -c FILE")]
            )
        raw = handle.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            [
                ConfigProblem(
                    str(path),
                    None,
                    "",
                    f"larger than {MAX_CONFIG_BYTES // 1024} KiB; is this the config file?",
                )
            ]
        )
    return raw


def _file_kind(mode: int) -> str | None:
    """What a path is when it is no regular file (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "no regular file"


def _reason(error: OSError | ValueError) -> str:
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return "the path is not usable (it contains a NUL character?)"


def hold_files(folder: Path) -> list[Path]:
    """The hold files of a folder, in name order; editor backups and hidden files left out."""
    return sorted(
        entry
        for entry in folder.iterdir()
        if entry.suffix in (".yaml", ".yml") and not entry.name.startswith(".")
    )


def load_holds_dir(
    folder: Path, rule_names: list[str] | None = None
) -> tuple[list[HoldConfig], str]:
    """One hold per YAML file. Every problem of every file at once, each with file:line.

    With `rule_names`, a hold naming another rule is a problem of its own file and line.
    """
    try:
        files = hold_files(folder)
    except FileNotFoundError:
        raise ConfigError(
            [ConfigProblem(str(folder), None, "", "the holds folder does not exist; create it")]
        ) from None
    except (OSError, ValueError) as error:
        raise ConfigError(
            [ConfigProblem(str(folder), None, "", f"cannot read: {_reason(error)}")]
        ) from None
    digest = hashlib.sha256()
    holds: list[HoldConfig] = []
    problems: list[ConfigProblem] = []
    for file in files:
        try:
            raw = _read_bounded(file)
        except OSError as error:
            problems.append(ConfigProblem(str(file), None, "", f"cannot read: {_reason(error)}"))
            continue
        except ConfigError as error:
            problems += error.problems
            continue
        digest.update(file.name.encode() + b"\0" + hashlib.sha256(raw).digest())
        try:
            holds.append(_parse_hold(raw, str(file), rule_names))
        except ConfigError as error:
            problems += error.problems
    if problems:
        raise ConfigError(problems)
    return holds, digest.hexdigest()


def _parse_hold(raw: bytes, name: str, rule_names: list[str] | None = None) -> HoldConfig:
    tree = _read_yaml(raw, name)
    if not isinstance(tree, CommentedMap):
        raise ConfigError(
            [ConfigProblem(name, 1, "", "a hold file is one YAML mapping: id, reason, ...")]
        )
    try:
        hold = HoldConfig.model_validate(_plain(tree, name), context=_rules_context(rule_names))
    except ValidationError as error:
        raise ConfigError([_problem(name, tree, detail) for detail in error.errors()]) from None
    problems = _reason_problems(name, tree, [hold], ())
    if problems:
        raise ConfigError(problems)
    return hold


REASON_NAMES_SUBJECT = (
    "contains one of the hold's numbers or extensions (in a form a PBX stores it); the reason "
    "goes into the audit log, which never holds a number: write the case or request reference "
    "instead, e.g. Litigation 3 O 123/26"
)


def _reason_problems(
    name: str, tree: CommentedMap, holds: list[HoldConfig], where: tuple[Any, ...]
) -> list[ConfigProblem]:
    """A reason that carries the number it protects is refused, not logged (safety rule 6)."""
    problems = []
    for index, hold in enumerate(holds):
        if hold.reason_names_subject():
            loc = (*where, index, "reason") if where else ("reason",)
            path, line = _locate(tree, loc)
            key = ".".join(str(p) for p in path)
            problems.append(ConfigProblem(name, line, key, REASON_NAMES_SUBJECT))
    return problems


def _with_holds(config: Config, holds: list[HoldConfig], name: str, folder: Path) -> Config:
    """The config with the folder's holds added; ids unique, rules existing."""
    merged = config.model_copy(update={"holds": [*config.holds, *holds]})
    try:
        merged.check_holds()
    except ValueError as error:
        raise ConfigError([ConfigProblem(str(folder), None, "holds", str(error))]) from None
    return merged


def parse_config(raw: bytes | str, name: str = "<config>") -> Config:
    tree = _read_yaml(raw, name)
    if not isinstance(tree, CommentedMap):
        raise ConfigError([ConfigProblem(name, 1, "", "the config must be a YAML mapping of keys")])
    data = _plain(tree, name)
    try:
        data = expand(data)
    except PresetError as error:
        problems = [_preset_problem(name, tree, p) for p in error.problems]
        raise ConfigError(sorted(problems, key=lambda p: (p.line or 0, p.path))) from None
    problems = _reference_problems(name, tree)
    try:
        config = Config.model_validate(data, context=_rules_context(_rule_names(data)))
    except ValidationError as error:
        problems += [_problem(name, tree, detail) for detail in error.errors()]
    else:
        problems += _reason_problems(name, tree, config.holds, ("holds",))
        problems += _secret_problems(name, tree, config)
    if problems:
        raise ConfigError(sorted(problems, key=lambda p: (p.line or 0, p.path)))
    return config


def _secret_problems(name: str, tree: CommentedMap, config: Config) -> list[ConfigProblem]:
    """Password files others may read or change, said when the config is loaded, at their line
    (reading them at a run's first connect says it again, for a file changed since)."""
    problems = []
    for connection, settings in config.connections.items():
        if settings.password_file is None:
            continue
        problem = secret_file_problem(settings.password_file, "the password file")
        if problem is not None:
            loc = ("connections", connection, "password_file")
            path, line = _locate(tree, loc)
            problems.append(ConfigProblem(name, line, ".".join(map(str, path)), problem))
    mail = config.reports.mail if config.reports else None
    if mail is not None and mail.password_file is not None:
        problem = secret_file_problem(mail.password_file, "the SMTP password file")
        if problem is not None:
            path, line = _locate(tree, ("reports", "mail", "password_file"))
            problems.append(ConfigProblem(name, line, ".".join(map(str, path)), problem))
    return problems


def _rule_names(data: Any) -> list[str] | None:
    """The rule names of a config (after its preset is expanded), None when rules are unusable."""
    rules = data.get("rules") if isinstance(data, dict) else None
    if not isinstance(rules, list):
        return None
    return [str(rule["name"]) for rule in rules if isinstance(rule, dict) and "name" in rule]


def _rules_context(rule_names: list[str] | None) -> dict[str, Any] | None:
    return None if rule_names is None else {HOLD_RULE_NAMES: frozenset(rule_names)}


def _preset_problem(name: str, tree: CommentedMap, problem: PresetProblem) -> ConfigProblem:
    path, line = _locate(tree, problem.path)
    return ConfigProblem(name, line, ".".join(str(p) for p in path), problem.message)


def _reference_problems(name: str, tree: CommentedMap) -> list[ConfigProblem]:
    """Checks across sections: unique rule names, and connections that exist."""
    problems: list[ConfigProblem] = []
    connections = tree.get("connections")
    known = set(connections) if isinstance(connections, CommentedMap) else set()
    rules = tree.get("rules")
    if not isinstance(rules, CommentedSeq):
        return problems
    seen: set[str] = set()
    for index, rule in enumerate(rules):
        if not isinstance(rule, CommentedMap):
            continue
        rule_name = rule.get("name")
        if isinstance(rule_name, str) and rule_name in seen:
            problems.append(
                ConfigProblem(
                    name,
                    _key_line(rule, "name"),
                    f"rules.{index}.name",
                    f"rule name {rule_name!r} is used twice; give each rule its own name",
                )
            )
        seen.add(str(rule_name))
        stores = rule.get("stores")
        if not isinstance(stores, CommentedSeq):
            continue
        for position, store in enumerate(stores):
            if not isinstance(store, CommentedMap):
                continue
            where = f"rules.{index}.stores.{position}"
            problems += _unknown_connection(name, store, known, where)
            for key in ("references", "named_by"):
                if isinstance(store.get(key), CommentedMap):
                    problems += _unknown_connection(name, store[key], known, f"{where}.{key}")
    return problems


def _unknown_connection(
    name: str, holder: CommentedMap, known: set[Any], where: str
) -> list[ConfigProblem]:
    connection = holder.get("connection")
    if not isinstance(connection, str) or connection in known:
        return []
    defined = ", ".join(sorted(map(str, known))) or "none defined"
    return [
        ConfigProblem(
            name,
            _key_line(holder, "connection"),
            f"{where}.connection",
            f"connection {connection!r} is not defined under connections: (defined: {defined})",
        )
    ]


class _Constructor(RoundTripConstructor):
    """ruamel's round-trip constructor, but a value it cannot build (`2027-13-45`, `!!int x`,
    `!!set` on a scalar) is a YAML error at that value's line rather than a bare exception."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (YAMLError, RecursionError):
            raise
        except Exception as error:  # ruamel's own slips too: `!!int` alone is an IndexError
            raise ConstructorError(
                problem=f"cannot read the value {_shape(node)}: {error}",
                problem_mark=node.start_mark,
            ) from None

    def check_mapping_key(
        self, node: Any, key_node: Any, mapping: Any, key: Any, value: Any
    ) -> Any:
        # `? - :` or `? {a: b}: c`: ruamel builds a list or mapping as a key, then fails to hash it
        try:
            hash(key)
        except TypeError:
            raise ConstructorError(
                problem="a key must be a name, not a list or a mapping",
                problem_mark=key_node.start_mark,
            ) from None
        return super().check_mapping_key(node, key_node, mapping, key, value)


def _shape(node: Any) -> str:
    value = getattr(node, "value", None)
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    return f"tagged {node.tag}" if getattr(node, "tag", None) else "here"


def _read_yaml(raw: bytes | str, name: str) -> Any:
    yaml = YAML(typ="rt")
    yaml.Constructor = _Constructor
    yaml.allow_duplicate_keys = False
    yaml.max_depth = MAX_DEPTH
    try:
        with warnings.catch_warnings():
            # ruamel warns (reused anchors, YAML 1.1 floats) on stderr; the config is judged here
            warnings.simplefilter("ignore")
            return yaml.load(raw)
    except DuplicateKeyError as error:
        line = error.problem_mark.line + 1 if error.problem_mark else None
        key = str(error.problem).split('"')[1] if '"' in str(error.problem) else ""
        message = f"duplicate key{_shown(key)}: a second value would silently replace the first"
        raise ConfigError([ConfigProblem(name, line, "", message)]) from None
    except MaxDepthExceededError as error:
        line = error.problem_mark.line + 1 if error.problem_mark else None
        message = f"nested more than {MAX_DEPTH} levels deep"
        raise ConfigError([ConfigProblem(name, line, "", message)]) from None
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else None
        problem = error.problem or error.context or "invalid YAML"
        raise ConfigError([ConfigProblem(name, line, "", f"YAML syntax: {problem}")]) from None
    except ReaderError as error:
        before = raw[: error.position]
        line = (before.count(b"\n") if isinstance(before, bytes) else before.count("\n")) + 1
        if "special characters" in str(error.reason):
            what = f"has a control character (#x{error.character:04x}) that YAML does not allow"
        else:
            what = "is not UTF-8 text"
        raise ConfigError([ConfigProblem(name, line, "", f"the file {what}")]) from None
    except RecursionError:
        raise ConfigError(
            [ConfigProblem(name, None, "", f"nested more than {MAX_DEPTH} levels deep")]
        ) from None
    except YAMLError as error:
        raise ConfigError([ConfigProblem(name, None, "", f"YAML: {error}")]) from None


def _shown(key: str) -> str:
    """A key for a message, when it is a setting's name; any other key may be personal data
    (a number typed as a key), and its line must do."""
    return f" {key!r}" if key in key_names() else " (not shown: it is no setting's name)"


def _key_line(node: CommentedMap, key: Any) -> int:
    """The line of a key; for one that came in by a merge (`<<: *base`), the mapping's own line."""
    if key in (node.lc.data or {}):
        return int(node.lc.key(key)[0]) + 1
    return int(node.lc.line or 0) + 1


def _item_line(node: CommentedSeq, index: int) -> int:
    if index in (node.lc.data or {}):
        return int(node.lc.item(index)[0]) + 1
    return int(node.lc.line or 0) + 1


def _plain(tree: Any, name: str) -> Any:
    """ruamel's round-trip types to plain Python, so strict validation sees ordinary values.

    Aliases are expanded here, so this is where an alias bomb (aliases of aliases of lists)
    or an alias that contains itself is stopped: at most MAX_VALUES values, MAX_DEPTH deep.
    Keys that differ only in their type (`1:` and `'1':`) are duplicates once made text.
    """
    count = 0
    active: set[int] = set()

    def problem(node: Any, message: str) -> ConfigError:
        line = int(node.lc.line) + 1 if hasattr(node, "lc") and node.lc.line is not None else None
        return ConfigError([ConfigProblem(name, line, "", message)])

    def plain(node: Any, depth: int) -> Any:
        nonlocal count
        count += 1
        if count > MAX_VALUES:
            raise problem(
                node, f"the config expands to more than {MAX_VALUES} values (aliases of aliases?)"
            )
        if isinstance(node, dict | list):
            if id(node) in active:
                raise problem(node, "an alias refers to the collection that contains it")
            if depth >= MAX_DEPTH:
                raise problem(node, f"nested more than {MAX_DEPTH} levels deep")
            active.add(id(node))
            try:
                if isinstance(node, list):
                    for index, value in enumerate(node):
                        if not _is_text(value):
                            line = (
                                _item_line(node, index) if isinstance(node, CommentedSeq) else None
                            )
                            raise ConfigError([_surrogate(name, line)])
                    return [plain(v, depth + 1) for v in node]
                result: dict[str, Any] = {}
                for key, value in node.items():
                    text = str(key)
                    if not (_is_text(text) and _is_text(value)):
                        line = _key_line(node, key) if isinstance(node, CommentedMap) else None
                        raise ConfigError([_surrogate(name, line)])
                    if text in result:
                        line = _key_line(node, key) if isinstance(node, CommentedMap) else None
                        raise ConfigError(
                            [
                                ConfigProblem(
                                    name,
                                    line,
                                    "",
                                    f"duplicate key{_shown(text)} (written once as text, "
                                    "once as a number or other value): quote keys the same way",
                                )
                            ]
                        )
                    result[text] = plain(value, depth + 1)
                return result
            finally:
                active.discard(id(node))
        return _scalar(node)

    return plain(tree, 0)


def _is_text(value: Any) -> bool:
    """False for a string holding a lone surrogate (YAML's "\\ud800"): no character at all."""
    if not isinstance(value, str):
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _surrogate(name: str, line: int | None) -> ConfigProblem:
    return ConfigProblem(
        name,
        line,
        "",
        "an escaped surrogate (\\ud800 to \\udfff) is no character; write the character "
        "itself, or \\U and its eight hex digits",
    )


def _scalar(node: Any) -> Any:
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, datetime):
        return datetime.fromisoformat(node.isoformat())
    if isinstance(node, date):
        return date(node.year, node.month, node.day)
    return node


def _problem(name: str, tree: CommentedMap, detail: Any) -> ConfigProblem:
    loc = tuple(detail["loc"])
    path, line = _locate(tree, loc)
    message = _message(detail, path)
    if detail["type"] == "extra_forbidden" and path and str(path[-1]) not in key_names():
        # A key that is no config word may be personal data (a number typed as a key): the
        # terminal and the journal get its line, never its text.
        path = path[:-1]
        message = (
            "an unknown key on this line (not shown: it is no setting's name); check its "
            "spelling and indentation against the documentation"
        )
    return ConfigProblem(name, line, ".".join(str(p) for p in path), message)


def _locate(tree: CommentedMap, loc: tuple[Any, ...]) -> tuple[list[Any], int | None]:
    """Follow a pydantic error location through the YAML tree: the key path and its line."""
    node: Any = tree
    path: list[Any] = []
    line: int | None = 1
    for part in loc:
        if isinstance(node, CommentedMap) and not isinstance(part, int) and part not in node:
            # A key YAML read as a number or date: validation saw it as text (see _plain).
            part = next((key for key in node if str(key) == part), part)
        if isinstance(node, CommentedMap) and part in node:
            line = _key_line(node, part)
            node = node[part]
            path.append(part)
        elif isinstance(node, CommentedMap) and part == "schema_name" and "schema" in node:
            line = _key_line(node, "schema")
            node = node["schema"]
            path.append("schema")
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            line = _item_line(node, part)
            node = node[part]
            path.append(part)
        elif isinstance(part, str) and part in (*STORE_TYPES, "[key]"):
            continue  # union tags and validator names that pydantic puts into locations
        elif isinstance(part, str) and part.startswith(("function-", "lax-", "json-")):
            continue
        else:
            path.append(part)  # a missing key: report it at its parent's line
            node = None
    return path, line


def _message(detail: Any, path: list[Any]) -> str:
    kind = detail["type"]
    message = str(detail["msg"])
    if kind == "extra_forbidden":
        return "unknown key; check its spelling and indentation against the documentation"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        tag = detail.get("input", {}).get("type") if isinstance(detail.get("input"), dict) else None
        return (
            f"store type {tag!r} does not exist; use one of {', '.join(STORE_TYPES)}"
            if tag
            else f"unknown store type; use one of {', '.join(STORE_TYPES)}"
        )
    if kind == "union_tag_not_found":
        return f"every store needs a 'type:' ({', '.join(STORE_TYPES)})"
    if kind == "literal_error" and path and path[-1] == "action":
        return "action is delete or anonymize"
    if kind == "literal_error" and path and path[-1] == "language":
        written = detail.get("input")
        return f"{written!r} is not a language retentiond writes; write {' or '.join(LANGUAGES)}"
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return message
