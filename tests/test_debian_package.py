"""The Debian package: `make deb`, what the .deb holds, lintian, and dpkg's install, upgrade,
remove and purge in a throwaway copy of this machine.

- The package is built once per session by `make deb` outside the tree and cached by the hash
  of the tree's files (in the temp folder), so a second run of the module costs seconds.
- `dpkg-deb` reads its name, control fields, conffiles and files; the venv inside is extracted
  and run (`--help`, the demo, WeasyPrint's import).
- dpkg installs it into an overlay of this machine's root (`unshare --mount`, `chroot`): the
  maintainer scripts run as on a real host, writes land in a tmpfs that vanishes with the mount
  namespace, and the host itself is never changed. No systemd runs there (its snippets skip);
  the package under a real systemd is tests/test_nspawn_systemd.py's.

Without the tools (dpkg-dev, debhelper, dh-virtualenv, lintian; root for the overlay) these tests
skip and say what is missing; with CI set, they fail: .ci/run installs them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"
UNITS = ("retentiond.service", "retentiond-once.service", "retentiond-once.timer")
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
# What `make deb` leaves out of its copy of the tree (Makefile, deb:), and so out of the hash
NOT_BUILT = {".git", ".venv", ".venv-lint", "build", "dist", "demo-pbx", "__pycache__"}
NOT_BUILT_SUFFIXES = ("_cache", ".hypothesis", ".egg-info")
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


def _tree_hash() -> str:
    """SHA-256 of every file `make deb` copies: the same tree builds the same package."""
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = sorted(
            d for d in dirs if d not in NOT_BUILT and not d.endswith(NOT_BUILT_SUFFIXES)
        )
        for name in sorted(files):
            path = Path(folder) / name
            digest.update(str(path.relative_to(REPO)).encode() + b"\0")
            if path.is_symlink():
                digest.update(str(path.readlink()).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _architecture() -> str:
    return _run("dpkg", "--print-architecture").stdout.strip()


@pytest.fixture(scope="module")
def deb() -> Path:
    """dist/retentiond_<version>_<arch>.deb by `make deb`, built once per tree (cached)."""
    _need(
        ("make", "make"),
        ("dpkg-buildpackage", "dpkg-dev"),
        ("dh", "debhelper"),
        ("dh_virtualenv", "dh-virtualenv"),
    )
    cache = Path(tempfile.gettempdir()) / "retentiond-deb" / _tree_hash()
    cache.mkdir(parents=True, exist_ok=True)
    package = cache / f"retentiond_{VERSION}_{_architecture()}.deb"
    with (cache / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session building the same tree: wait for it
        if not package.exists():
            build = cache / "build"
            result = _run(
                "make", "-C", REPO, "deb", f"DEB_DIST={cache}", f"DEB_BUILD={build}", timeout=900
            )
            print(result.stdout[-1500:])
            shutil.rmtree(build, ignore_errors=True)
    assert package.exists(), sorted(p.name for p in cache.iterdir())
    return package


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
        for name in _names(depends) | _names(_field(deb, "Recommends")):
            known = _run("apt-cache", "show", "--no-all-versions", name, check=False)
            assert known.returncode == 0, f"{name} is no Debian package: {known.stderr}"
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


def test_lintian_finds_no_errors(deb: Path) -> None:
    _need(("lintian", "lintian"))
    result = _run("lintian", "--no-tag-display-limit", deb, check=False, timeout=600)
    tags = sorted({line.split()[2] for line in result.stdout.splitlines() if line[:2] == "W:"})
    print(f"lintian warnings: {', '.join(tags) or 'none'}")
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert errors == []
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


# -- dpkg install, upgrade, remove, purge in an overlay of this machine --------------------------

LIFE = r"""
set -eu
top=$1 deb=$2
mount -t tmpfs retentiond-deb-test "$top"
mkdir "$top/upper" "$top/work" "$top/root"
mount -t overlay overlay -o lowerdir=/,upperdir="$top/upper",workdir="$top/work" "$top/root"
root=$top/root
mount -t proc proc "$root/proc"
# /dev of the overlay is the root file system's, without devices: the few the scripts use
for node in null:1:3 zero:1:5 urandom:1:9; do
    name=${node%%:*} numbers=${node#*:}
    rm -f "$root/dev/$name"; mknod -m 0666 "$root/dev/$name" c ${numbers%:*} ${numbers#*:}
done
mkdir -p "$root/tmp/package"
cp "$deb" "$root/tmp/package/retentiond.deb"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
state() {
    echo "== $1"
    in_root sh -c 'for p in /opt /opt/retentiond /usr/bin/retentiond \
        /lib/systemd/system/retentiond.service /etc/retentiond \
        /etc/retentiond/retentiond.yaml /etc/retentiond/credentials \
        /etc/retentiond/credentials/cdrdb /etc/retentiond/credentials/signing-key \
        /etc/retentiond/dropins/asterisk.conf /var/lib/retentiond \
        /var/lib/retentiond/audit.jsonl; do
            if [ -e "$p" ] || [ -L "$p" ]; then stat -c "path %n %a %U %G" "$p"; fi
        done
        getent passwd retentiond | sed "s/^/user /" || true
        dpkg-statoverride --list /etc/retentiond | sed "s/^/override /" || true
        echo "pyc $(find /opt/retentiond -name "*.pyc" 2>/dev/null | wc -l)"
        echo "log $(wc -l < /var/lib/retentiond/audit.jsonl 2>/dev/null || echo none)"
        grep -h edited /etc/retentiond/dropins/asterisk.conf 2>/dev/null \
            | sed "s/^/dropin /" || true'
}
echo "== install-output"
in_root dpkg -i /tmp/package/retentiond.deb </dev/null 2>&1
in_root /usr/bin/retentiond --version
state installed
# what an admin adds: the config, a database password, the signing key, an edited drop-in,
# and the log's entries
in_root sh -c 'set -e
    echo "version: 1  # the admin" > /etc/retentiond/retentiond.yaml
    (umask 077; echo secret > /etc/retentiond/credentials/cdrdb)
    retentiond audit keygen --out-dir /root/keys >/dev/null
    install -m 0600 /root/keys/retentiond.key /etc/retentiond/credentials/signing-key
    echo "# edited by the admin" >> /etc/retentiond/dropins/asterisk.conf
    echo "{\"seq\":1}" >> /var/lib/retentiond/audit.jsonl'
echo "== upgrade-output"
in_root dpkg -i /tmp/package/retentiond.deb </dev/null 2>&1
state upgraded
echo "== remove-output"
in_root dpkg --remove retentiond </dev/null 2>&1
state removed
echo "== purge-output"
in_root dpkg --purge retentiond </dev/null 2>&1
state purged
"""


def _stages(output: str) -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in output.splitlines():
        if line.startswith("== "):
            current = stages.setdefault(line[3:], [])
        else:
            current.append(line)
    return stages


def _paths(lines: list[str]) -> dict[str, str]:
    """`path NAME MODE USER GROUP` lines -> {NAME: "MODE USER GROUP"}."""
    return {
        line.split()[1]: " ".join(line.split()[2:]) for line in lines if line.startswith("path ")
    }


@pytest.fixture(scope="module")
def life(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Install, upgrade, remove and purge with dpkg in an overlay of / (see the docstring)."""
    _need(("unshare", "util-linux"), ("chroot", "coreutils"))
    if os.geteuid() != 0:
        _missing("installing the package into an overlay of / needs root")
    top = tmp_path_factory.mktemp("overlay")
    script = top.parent / "life.sh"
    script.write_text(LIFE)
    # A mount namespace of its own: every mount is gone when the script ends, however it ends.
    result = _run(
        "unshare", "--mount", "--propagation", "private", "sh", script, top, deb,
        check=False, timeout=600,
    )  # fmt: skip
    if "overlay" in result.stderr and result.returncode != 0 and not result.stdout:
        _missing(f"this machine cannot mount an overlay of /: {result.stderr.strip()}")
    print(result.stdout[-4000:])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert not any(top.iterdir()), "the overlay's files leaked out of its mount namespace"
    return _stages(result.stdout)


def test_install_creates_user_folders_and_no_running_service(life: dict[str, list[str]]) -> None:
    installed = life["installed"]
    paths = _paths(installed)
    user = next(line for line in installed if line.startswith("user "))
    assert user.endswith(":/var/lib/retentiond:/usr/sbin/nologin")
    assert int(user.split(":")[2]) < 1000  # a system user (sysusers)
    assert paths["/etc/retentiond"] == "750 root retentiond"
    assert paths["/etc/retentiond/credentials"] == "700 root root"
    assert paths["/var/lib/retentiond"] == "750 retentiond retentiond"
    assert paths["/var/lib/retentiond/audit.jsonl"] == "640 retentiond retentiond"
    assert "/etc/retentiond/retentiond.yaml" not in paths
    assert "override root retentiond 750 /etc/retentiond" in installed
    pyc = int(next(line for line in installed if line.startswith("pyc ")).split()[1])
    assert pyc > 1000  # postinst compiled the venv
    output = "\n".join(life["install-output"])
    assert "retentiond, version" in output
    assert "not configured" in output and "retentiond init" in output


def test_upgrade_keeps_the_admins_files(life: dict[str, list[str]]) -> None:
    upgraded = _paths(life["upgraded"])
    assert upgraded["/etc/retentiond/retentiond.yaml"].endswith("root root")
    assert "dropin # edited by the admin" in life["upgraded"]
    assert "log 1" in life["upgraded"]
    assert upgraded["/etc/retentiond"] == "750 root retentiond"


def test_remove_stops_at_the_program(life: dict[str, list[str]]) -> None:
    removed = _paths(life["removed"])
    units = "/lib/systemd/system/retentiond.service"
    for gone in ("/opt/retentiond", "/usr/bin/retentiond", units):
        assert gone not in removed, gone
    assert "/opt" in removed  # dpkg took /opt with the venv; postrm gives it back (FHS)
    for kept in (
        "/etc/retentiond/retentiond.yaml",
        "/etc/retentiond/credentials/cdrdb",
        "/etc/retentiond/credentials/signing-key",
        "/etc/retentiond/dropins/asterisk.conf",
        "/var/lib/retentiond/audit.jsonl",
    ):
        assert kept in removed, kept
    assert "log 1" in life["removed"]


def test_purge_deletes_the_config_never_the_log_or_the_signing_key(
    life: dict[str, list[str]],
) -> None:
    purged = _paths(life["purged"])
    for gone in (
        "/etc/retentiond/retentiond.yaml",
        "/etc/retentiond/credentials/cdrdb",
        "/etc/retentiond/dropins/asterisk.conf",
    ):
        assert gone not in purged, gone
    assert purged["/etc/retentiond/credentials/signing-key"] == "600 root root"
    assert purged["/var/lib/retentiond/audit.jsonl"] == "640 retentiond retentiond"
    assert "log 1" in life["purged"]
    assert any(line.startswith("user retentiond:") for line in life["purged"])
    assert not any(line.startswith("override ") for line in life["purged"])
    note = "\n".join(life["purge-output"])
    assert "/var/lib/retentiond: the deletion log" in note
    assert "/etc/retentiond/credentials/signing-key" in note
