"""The house rules `lint-imports` cannot check (README, Code map; DESIGN.md, Shape of the code).

- No module over `MAX_LINES` lines, except the few named in `CEILINGS`, each held to the size
  it had when it was named there: a ceiling only ever goes down.
- Dialect branches (`family == "mysql"`, `x in ("postgresql", ...)`, `dialect.name == ...`) only
  under `retentiond/stores/db/dialects/`, the one place that knows a database. `config/` is not
  checked: it reads PBX settings that name a database type (FreePBX's CDRDBTYPE) and URLs.
- No module imports another module's `_private` name, neither `from m import _x` nor `m._x`.

Run: `python tools/check_house.py [ROOT]`; exit 1 with one line per finding.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_LINES = 800
# Named exceptions: path -> its size when named. Empty is the goal; shrink, never grow.
CEILINGS: dict[str, int] = {}
DIALECT_WORDS = frozenset({"mysql", "mariadb", "postgresql", "postgres", "sqlite"})
DIALECT_HOME = "retentiond/stores/db/dialects/"
DIALECT_UNCHECKED = ("retentiond/config/",)
PACKAGE = "retentiond"


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.text}"


def check(root: Path) -> list[Finding]:
    findings: list[Finding] = []
    for path in sorted((root / PACKAGE).rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=relative)
        findings += size(relative, source)
        if not relative.startswith((DIALECT_HOME, *DIALECT_UNCHECKED)):
            findings += dialect_branches(relative, tree)
        findings += private_imports(relative, tree, module_name(relative))
    return findings


def module_name(relative: str) -> str:
    parts = relative.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def size(relative: str, source: str) -> Iterator[Finding]:
    lines = source.count("\n")
    ceiling = CEILINGS.get(relative, MAX_LINES)
    if lines > ceiling:
        named = "its named ceiling" if relative in CEILINGS else f"the {MAX_LINES}-line limit"
        yield Finding(relative, 1, "size", f"{lines} lines, over {named} ({ceiling}): split it")


def dialect_branches(relative: str, tree: ast.AST) -> Iterator[Finding]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(_names_dialect(n) for n in _operands(node)):
            yield Finding(
                relative,
                node.lineno,
                "dialect",
                f"a branch on the database family belongs under {DIALECT_HOME}",
            )
        elif isinstance(node, ast.match_case) and _names_dialect(node.pattern):
            yield Finding(
                relative,
                node.pattern.lineno,
                "dialect",
                f"a branch on the database family belongs under {DIALECT_HOME}",
            )


def _operands(node: ast.Compare) -> list[ast.AST]:
    if not all(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops):
        return []
    return [node.left, *node.comparators]


def _names_dialect(node: ast.AST) -> bool:
    """A string literal naming a database family, alone or in a tuple, list, set or pattern."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.lower() in DIALECT_WORDS
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_names_dialect(element) for element in node.elts)
    if isinstance(node, ast.MatchValue):
        return _names_dialect(node.value)
    if isinstance(node, ast.MatchOr):
        return any(_names_dialect(pattern) for pattern in node.patterns)
    return False


def private_imports(relative: str, tree: ast.AST, own: str) -> Iterator[Finding]:
    modules: set[str] = set()  # local names bound to a retentiond module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and _ours(node.module):
            for alias in node.names:
                if _private(alias.name) and node.module != own:
                    yield Finding(
                        relative,
                        node.lineno,
                        "private",
                        f"imports {node.module}.{alias.name}: make it public where it is "
                        "defined, or move it to the module both need",
                    )
                else:
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _ours(alias.name):
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
        ):
            yield Finding(
                relative,
                node.lineno,
                "private",
                f"reaches {node.value.id}.{node.attr}, another module's private name",
            )


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _ours(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    findings = check(root)
    for finding in findings:
        print(finding)
    if findings:
        print(f"{len(findings)} house-rule finding(s) (tools/check_house.py)", file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
