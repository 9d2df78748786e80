"""The wheel and the sdist (`python -m build`), for pip, pipx and packagers of other
distributions: the sdist carries the units, the example configs, the docs and the tests, and the
wheel built from it installs into a fresh venv with the `[pdf]` extra and runs.

`build` comes with the dev extra; the dependencies come from PyPI or the configured pip index.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _run(
    *command: str | Path, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, check=False, **kwargs
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, command))} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, the wheel built from the sdist (as `python -m build` does)."""
    if importlib.util.find_spec("build") is None:
        message = "the build module is missing: pip install -e '.[dev]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--outdir", out, REPO, timeout=300)
    return out


def test_sdist_has_units_examples_docs_and_tests(dist: Path) -> None:
    with tarfile.open(dist / f"retentiond-{VERSION}.tar.gz") as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for unit in ("retentiond.service", "retentiond-once.service", "retentiond-once.timer"):
        assert f"systemd/{unit}" in names
    for name in (
        "systemd/retentiond.sysusers",
        "systemd/retentiond.tmpfiles",
        "systemd/asterisk.conf",
        "systemd/3cx.conf",
        "config/example.yaml",
        "docs/install.md",
        "deploy/ansible/galaxy.yml",
        "README.md",
        "LICENSE",
        "Makefile",
        "debian/control",
        "debian/rules",
        "tests/test_systemd.py",
        "tools/check_house.py",
        "retentiond/locale/de/LC_MESSAGES/report.po",
    ):
        assert name in names, name
    assert sum(name.startswith("config/examples/") for name in names) >= 1
    assert not [name for name in names if name.startswith((".ci/", ".venv", "build/"))]


def test_wheel_carries_the_licence(dist: Path) -> None:
    """The AGPL's full text in the wheel's dist-info, named by the metadata (PEP 639)."""
    wheel = dist / f"retentiond-{VERSION}-py3-none-any.whl"
    info = f"retentiond-{VERSION}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        licence = archive.read(f"{info}/licenses/LICENSE")
        metadata = archive.read(f"{info}/METADATA").decode()
    assert licence == (REPO / "LICENSE").read_bytes()
    assert licence.startswith(b"                    GNU AFFERO GENERAL PUBLIC LICENSE\n")
    assert "License-Expression: AGPL-3.0-or-later\n" in metadata
    assert "License-File: LICENSE\n" in metadata


def test_wheel_installs_with_the_pdf_extra_and_runs(dist: Path, tmp_path: Path) -> None:
    wheel = dist / f"retentiond-{VERSION}-py3-none-any.whl"
    assert wheel.exists(), sorted(p.name for p in dist.iterdir())
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    pip = [venv / "bin/python", "-m", "pip", "--disable-pip-version-check"]
    _run(*pip, "install", "--quiet", f"{wheel}[pdf]", timeout=600)
    _run(*pip, "check")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    program = venv / "bin/retentiond"
    helped = _run(program, "--help", env=env, cwd=tmp_path)
    assert "Enforce retention rules" in helped.stdout
    assert VERSION in _run(program, "--version", env=env).stdout
    demo = _run(program, "demo", tmp_path / "demo", env=env, cwd=tmp_path, timeout=300)
    assert "deleted" in demo.stdout
    assert (tmp_path / "demo/audit.jsonl").stat().st_size > 0
    # installed from the wheel, not this source tree
    where = _run(
        venv / "bin/python", "-c", "import retentiond; print(retentiond.__file__)", cwd=tmp_path
    )
    assert where.stdout.startswith(str(venv)), where.stdout
    # the extra: WeasyPrint and its libraries (the system's Pango: Recommends of the .deb)
    _run(venv / "bin/python", "-c", "import weasyprint", env=env, cwd=tmp_path)
