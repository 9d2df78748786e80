"""The Debian package: `make deb`, what the .deb holds, and lintian.

- The package is built by `make deb` outside the tree and cached by the hash of the tree's
  files (tests/debpackage.py, in the temp folder): tests/test_nspawn_systemd.py uses the same
  build, so a session builds it once, and a second run of the module costs seconds.
- `dpkg-deb` reads its name, control fields, conffiles and files; the venv inside is extracted
  and run (`--help`, the demo, WeasyPrint's import).
- Installing, upgrading, removing and purging it (the maintainer scripts) is
  tests/test_nspawn_systemd.py's, under a real systemd on a booted Debian 12.

Without the tools (dpkg-dev, debhelper, dh-virtualenv, lintian) these tests skip and say what is
missing; with CI set, they fail: .ci/run installs them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import debpackage
import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"
UNITS = ("retentiond.service", "retentiond-once.service", "retentiond-once.timer")
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
PDF_LIBRARIES = {"libpango-1.0-0", "libpangoft2-1.0-0", "libharfbuzz-subset0", "fonts-dejavu-core"}
CONFFILES = {
    "/etc/retentiond/retentiond.yaml.example",
    "/etc/retentiond/dropins/asterisk.conf",
    "/etc/retentiond/dropins/3cx.conf",
}


def _missing(what: str) -> None:
    message = f"{what}; .ci/run installs it"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _need(*tools: tuple[str, str]) -> None:
    for tool, package in tools:
        if shutil.which(tool) is None:
            _missing(f"{tool} is not installed (Debian package {package})")


def _run(
    *command: str | Path, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command; unless check=False, fail the test with its output when it fails.
    A make started here must not inherit the variables of a `make test` around the tests."""
    env = dict(kwargs.pop("env", os.environ))
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
        env.pop(name, None)
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, check=False, env=env, **kwargs
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, command))} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-6000:]}\nstderr:\n{result.stderr[-6000:]}"
        )
    return result


def _architecture() -> str:
    return _run("dpkg", "--print-architecture").stdout.strip()


@pytest.fixture(scope="module")
def deb() -> Path:
    """retentiond_<version>_<arch>.deb by `make deb`, built once per tree (tests/debpackage.py)."""
    missing = debpackage.missing_tools()
    if missing:
        _missing(f"make deb needs {', '.join(missing)}")
    return debpackage.start_build()()


def _field(deb: Path, name: str) -> str:
    return _run("dpkg-deb", "-f", deb, name).stdout.strip()


def _names(relations: str) -> set[str]:
    """Package names of a Depends/Recommends field, alternatives and versions dropped."""
    return {re.split(r"[\s(:]", part.strip())[0] for part in re.split(r"[,|]", relations)}


@pytest.fixture(scope="module")
def contents(deb: Path) -> dict[str, str]:
    """Path -> `dpkg-deb -c` line (a symlink's line ends with `-> target`)."""
    listing: dict[str, str] = {}
    for line in _run("dpkg-deb", "-c", deb).stdout.splitlines():
        name = line.split(None, 5)[5].split(" -> ")[0]
        listing[name.removeprefix(".").rstrip("/") or "/"] = line
    return listing


@pytest.fixture(scope="module")
def extracted(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("extracted")
    _run("dpkg-deb", "-x", deb, root)
    return root


# -- what the package is ------------------------------------------------------------------------


def test_name_version_and_architecture(deb: Path) -> None:
    architecture = _architecture()
    assert deb.name == f"retentiond_{VERSION}_{architecture}.deb"
    assert _field(deb, "Package") == "retentiond"
    assert _field(deb, "Version") == VERSION
    assert _field(deb, "Architecture") == architecture
    changelog = (REPO / "debian/changelog").read_text().splitlines()[0]
    assert changelog.startswith(f"retentiond ({VERSION}) ")


def test_depends_only_on_debian_packages(deb: Path) -> None:
    depends = _field(deb, "Depends")
    print(f"Depends: {depends}\nRecommends: {_field(deb, 'Recommends')}")
    # the venv's libraries are built for the system's Python of this minor version
    assert "python3 (>= 3.11)" in depends
    assert re.search(r"python3 \(<< 3\.\d+\)", depends)
    # what the units and maintainer scripts call: /bin/kill (ExecReload=), systemd-sysusers and
    # systemd-tmpfiles; the PBX's time zone from /usr/share/zoneinfo
    assert {"python3", "procps", "systemd", "tzdata"} <= _names(depends)
    # every name is a Debian package apt knows (this machine is Debian 12)
    if shutil.which("apt-cache"):
        names = sorted(_names(depends) | _names(_field(deb, "Recommends")))
        shown = _run("apt-cache", "show", "--no-all-versions", *names, check=False)
        known = set(re.findall(r"^Package: (\S+)$", shown.stdout, re.MULTILINE))
        assert set(names) <= known, f"no Debian packages: {set(names) - known}; {shown.stderr}"
    # WeasyPrint is in the venv; its system libraries are recommended, not required
    assert _names(_field(deb, "Recommends")) == PDF_LIBRARIES
    assert not PDF_LIBRARIES & _names(depends)


def test_conffiles_are_the_examples_and_dropins(deb: Path, tmp_path: Path) -> None:
    _run("dpkg-deb", "-e", deb, tmp_path / "control")
    conffiles = set((tmp_path / "control/conffiles").read_text().split())
    # never the admin's retentiond.yaml: `retentiond init` writes it, no package file is there
    assert conffiles == CONFFILES


def test_files_in_their_debian_places(contents: dict[str, str], extracted: Path) -> None:
    assert not [name for name in contents if name.startswith("/usr/local")]
    assert contents["/usr/bin/retentiond"].endswith("-> /opt/retentiond/bin/retentiond")
    for unit in UNITS:
        shipped = (extracted / "lib/systemd/system" / unit).read_text()
        source = (SYSTEMD / unit).read_text()
        assert shipped == source.replace("/usr/local/share/doc", "/usr/share/doc"), unit
        assert "/usr/local" not in shipped
    for service in UNITS[:2]:
        text = (extracted / "lib/systemd/system" / service).read_text()
        assert "\nConditionPathExists=/etc/retentiond/retentiond.yaml\n" in text
    sysusers = extracted / "usr/lib/sysusers.d/retentiond.conf"
    tmpfiles = extracted / "usr/lib/tmpfiles.d/retentiond.conf"
    assert sysusers.read_text() == (SYSTEMD / "retentiond.sysusers").read_text()
    assert tmpfiles.read_text() == (SYSTEMD / "retentiond.tmpfiles").read_text()
    docs = extracted / "usr/share/doc/retentiond"
    # uncompressed: the units' Documentation= names install.md
    assert (docs / "install.md").read_text() == (REPO / "docs/install.md").read_text()
    assert "AGPL-3.0-or-later" in (docs / "copyright").read_text()
    assert (docs / "changelog.gz").is_file()
    example = extracted / "etc/retentiond/retentiond.yaml.example"
    assert example.read_text() == (REPO / "config/example.yaml").read_text()
    assert not (extracted / "etc/retentiond/retentiond.yaml").exists()


@pytest.mark.parametrize("service", UNITS[:2])
def test_shipped_units_keep_their_sandbox_score(extracted: Path, service: str) -> None:
    _need(("systemd-analyze", "systemd"))
    analyze = ("systemd-analyze", "security", "--offline=true", "--no-pager")
    result = _run(*analyze, f"--root={extracted}", service)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    print(match.group(0))
    assert float(match.group(1)) <= 1.4, match.group(0)  # today's score (tests/test_systemd.py)


def test_man_page_from_the_help_texts(contents: dict[str, str], extracted: Path) -> None:
    assert "/usr/share/man/man1/retentiond.1.gz" in contents
    page = _run("zcat", extracted / "usr/share/man/man1/retentiond.1.gz").stdout
    assert page.startswith(".TH RETENTIOND 1 ")
    assert f'"retentiond {VERSION}"' in page.splitlines()[0]
    for command in ("check", "init", "plan", "run", "status", "report", "audit verify", "demo"):
        assert f"\n.SS retentiond {command}\n" in page, command
    assert "Dry run: what each rule would delete now." in page  # plan's --help, word for word


def test_venv_uses_the_system_python(contents: dict[str, str], extracted: Path) -> None:
    venv = extracted / "opt/retentiond"
    assert contents["/opt/retentiond/bin/python3"].endswith("-> /usr/bin/python3")
    config = (venv / "pyvenv.cfg").read_text()
    assert "home = /usr/bin" in config
    assert "include-system-site-packages = false" in config
    assert "/build" not in config and str(REPO) not in config
    for script in ("retentiond", "pip"):
        first = (venv / "bin" / script).read_text().splitlines()[0]
        assert first == "#!/opt/retentiond/bin/python", script
    # bytecode is made by postinst on the target, never shipped
    assert not [name for name in contents if "__pycache__" in name or name.endswith(".pyc")]


def test_packaged_venv_runs(extracted: Path, tmp_path: Path) -> None:
    python = extracted / "opt/retentiond/bin/python3"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    helped = _run(python, "-m", "retentiond", "--help", env=env)
    assert "Enforce retention rules" in helped.stdout
    demo = _run(python, "-m", "retentiond", "demo", tmp_path / "demo", env=env, timeout=300)
    assert "deleted" in demo.stdout
    # WeasyPrint is in the venv; its libraries come from the system (Recommends)
    pdf = _run(python, "-c", "import weasyprint; print(weasyprint.__version__)", env=env)
    print(f"weasyprint {pdf.stdout.strip()}")


@pytest.fixture(scope="module", autouse=True)
def lintian(deb: Path) -> Iterator[subprocess.Popen[str] | None]:
    """lintian on the package, started at once: it reads the package while the other tests run."""
    if shutil.which("lintian") is None:
        yield None
        return
    checking = subprocess.Popen(
        ["lintian", "--no-tag-display-limit", str(deb)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield checking
    if checking.poll() is None:
        checking.kill()
    if checking.stdout is not None and not checking.stdout.closed:  # the test did not read it
        checking.communicate()


def test_lintian_finds_no_errors(lintian: subprocess.Popen[str] | None) -> None:
    if lintian is None:
        _missing("lintian is not installed (Debian package lintian)")
    assert lintian is not None
    stdout, stderr = lintian.communicate(timeout=600)
    result = subprocess.CompletedProcess(lintian.args, lintian.returncode, stdout, stderr)
    tags = sorted({line.split()[2] for line in result.stdout.splitlines() if line[:2] == "W:"})
    print(f"lintian warnings: {', '.join(tags) or 'none'}")
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert errors == []
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
