"""The house plan holds (README, Code map): the layout's rules are checked, and the checks bite.

`make lint` runs `lint-imports` (the contracts in pyproject.toml) and tools/check_house.py on the
source tree. These tests run both on the tree as it is, and on small planted trees that break one
rule each, so a check that stopped seeing its rule would fail here.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_house", ROOT / "tools" / "check_house.py")
assert _spec and _spec.loader
check_house = importlib.util.module_from_spec(_spec)
sys.modules["check_house"] = check_house  # dataclasses look their module up there
_spec.loader.exec_module(check_house)
# import-linter has a venv of its own (Makefile, LINT_VENV): its rich would load into retentiond.
LINT_IMPORTS = ROOT / ".venv-lint" / "bin" / "lint-imports"


def test_the_source_tree_keeps_the_house_rules() -> None:
    findings = check_house.check(ROOT)
    assert [str(finding) for finding in findings] == []


def test_every_named_ceiling_is_still_needed() -> None:
    """A ceiling only goes down: one a module has shrunk below is removed, not kept as slack."""
    for relative, ceiling in check_house.CEILINGS.items():
        lines = (ROOT / relative).read_text(encoding="utf-8").count("\n")
        assert check_house.MAX_LINES < lines <= ceiling, relative


def _plant(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in path.relative_to(root).parents:
        if parent != Path():
            (root / parent / "__init__.py").touch()
    path.write_text(text, encoding="utf-8")


def _rules(root: Path) -> list[tuple[str, str]]:
    return [(finding.path, finding.rule) for finding in check_house.check(root)]


def test_a_module_over_the_limit_is_found(tmp_path: Path) -> None:
    _plant(tmp_path, "retentiond/engine/long.py", "x = 1\n" * (check_house.MAX_LINES + 1))
    _plant(tmp_path, "retentiond/engine/short.py", "x = 1\n" * check_house.MAX_LINES)
    assert _rules(tmp_path) == [("retentiond/engine/long.py", "size")]


@pytest.mark.parametrize(
    "branch",
    [
        'if family == "mysql":\n    pass\n',
        'ok = "postgresql" != name\n',
        'ok = dialect.name in ("sqlite", "mysql")\n',
        'match family:\n    case "mariadb" | "mysql":\n        pass\n',
    ],
)
def test_a_dialect_branch_outside_the_dialects_is_found(tmp_path: Path, branch: str) -> None:
    _plant(tmp_path, "retentiond/stores/sql/store.py", branch)
    _plant(tmp_path, "retentiond/stores/db/dialects/mysql.py", branch)
    assert _rules(tmp_path) == [("retentiond/stores/sql/store.py", "dialect")]


@pytest.mark.parametrize(
    "source",
    [
        "from retentiond.stores.sql.store import _GAVE_UP\n",
        "from retentiond.stores.sql import store\nstore._GAVE_UP\n",
        "import retentiond.stores.sql.store as sql\nsql._read_rows()\n",
    ],
)
def test_another_modules_private_name_is_found(tmp_path: Path, source: str) -> None:
    _plant(tmp_path, "retentiond/stores/files/store.py", source)
    assert _rules(tmp_path) == [("retentiond/stores/files/store.py", "private")]


def test_public_and_dunder_names_pass(tmp_path: Path) -> None:
    _plant(
        tmp_path,
        "retentiond/engine/run.py",
        "from retentiond import __version__\nfrom retentiond.engine.plan import RulePlan\n",
    )
    assert _rules(tmp_path) == []


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        missing = f"{LINT_IMPORTS} is missing: `make lint` (or `make pytest`) installs it"
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    shutil.copytree(
        ROOT / "retentiond", tmp_path / "retentiond", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_import_contracts_are_kept() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]


@pytest.mark.parametrize(
    ("module", "imported", "contract"),
    [
        # a layer importing upwards: the stores reaching for the engine
        ("retentiond.stores.base", "retentiond.engine", "Layers import downwards only"),
        # config reaching for a store kind (presets are data, not code that imports stores)
        ("retentiond.config.loader", "retentiond.stores", "Layers import downwards only"),
        # policy reaching for the config, even for typing only
        ("retentiond.policy.rules", "retentiond.config", "Layers import downwards only"),
        # one store kind borrowing another's internals
        (
            "retentiond.stores.voicemail",
            "retentiond.stores.files",
            "Store kinds never import each other",
        ),
    ],
)
def test_the_import_contracts_bite(
    tree_copy: Path, module: str, imported: str, contract: str
) -> None:
    path = tree_copy / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    path.write_text(
        path.read_text(encoding="utf-8") + f"\nimport {imported}  # planted\n", encoding="utf-8"
    )
    result = _lint_imports(tree_copy)
    assert result.returncode == 1
    broken = result.stdout.split(f"{contract}\n", 1)[-1]
    assert f"{contract} BROKEN" in result.stdout
    assert f"- {module} -> {imported} (l." in broken
