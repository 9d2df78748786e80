"""The systemd units and `make install`, checked with systemd's own tools.

- `systemd-analyze verify` loads the units (and each PBX drop-in) as systemd would;
- `systemd-analyze security --offline=true` scores their sandbox: it must stay "OK" or better.
  systemd's scale, from its source (analyze-security.c): the exposure is 0.0-10.0 and named by
  the first row it reaches: 10.0 DANGEROUS, 9.0 UNSAFE, 7.5 EXPOSED, 5.0 MEDIUM, 1.0 OK,
  0.1 SAFE, 0.0 PERFECT. So "OK or better" means below 5.0;
- `make install DESTDIR=...` builds the venv and puts every file in place (one venv build for
  the module, 10-60 s); systemd-sysusers and systemd-tmpfiles then run against that staged root;
- the installed program runs inside the unit's system call filter (@system-service without
  @resources, errors as EPERM), NoNewPrivileges and MemoryDenyWriteExecute, emulated with
  seccomp and PR_SET_MDWE because no systemd runs here to start the unit itself.

Without the tools (systemd-analyze from Debian's `systemd`, the system Python with venv and
seccomp) these tests skip and say what is missing; with CI set, they fail: .ci/run installs them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"
UNITS = ("retentiond.service", "retentiond-once.service", "retentiond-once.timer")
SERVICES = UNITS[:2]
DROPINS = ("asterisk.conf", "3cx.conf")
BINARY = "/opt/retentiond/bin/retentiond"
INSTALL_PYTHON = "/usr/bin/python3"
GOOD_ENOUGH = ("OK", "SAFE", "PERFECT")


def _missing(what: str) -> None:
    message = f"{what}; .ci/run installs it"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        _missing(f"{name} is not installed (Debian package systemd)")
    assert path is not None
    return path


def _run(
    *command: str | Path, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command; unless check=False, fail the test with its output when it fails.

    A make started here must not inherit the variables of a `make test` around the tests.
    """
    env = dict(kwargs.pop("env", os.environ))
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
        env.pop(name, None)
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, check=False, env=env, **kwargs
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, command))} exited {result.returncode}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def _units_in(folder: Path, dropin: str | None = None) -> dict[str, Path]:
    """Copies of the units whose ExecStart names an executable that exists (verify checks it),
    with a PBX drop-in beside each service when asked."""
    program = folder / "retentiond"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    copies = {}
    for unit in UNITS:
        text = (SYSTEMD / unit).read_text().replace(BINARY, str(program))
        (folder / unit).write_text(text)
        copies[unit] = folder / unit
        if dropin and unit.endswith(".service"):
            (folder / f"{unit}.d").mkdir()
            shutil.copy(SYSTEMD / dropin, folder / f"{unit}.d" / "pbx.conf")
    return copies


def _settings(path: Path, section: str = "Service") -> list[tuple[str, str]]:
    """Key=value lines of one section, in order, without comments."""
    settings: list[tuple[str, str]] = []
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        if current == section:
            key, _, value = line.partition("=")
            settings.append((key, value))
    return settings


# -- the unit files themselves ------------------------------------------------------------------


def test_daemon_unit_contract() -> None:
    service = dict(_settings(SYSTEMD / "retentiond.service"))
    assert service["Type"] == "notify"
    assert service["ExecStart"] == f"{BINARY} -c /etc/retentiond/retentiond.yaml run"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["WatchdogSec"] == "120"
    assert service["Restart"] == "on-failure"
    assert service["User"] == service["Group"] == "retentiond"
    assert service["StateDirectory"] == "retentiond"
    assert service["StateDirectoryMode"] == "0750"
    assert service["UMask"] == "0027"
    assert service["LoadCredential"] == "cdrdb:/etc/retentiond/credentials/cdrdb"
    unit = dict(_settings(SYSTEMD / "retentiond.service", "Unit"))
    assert set(unit["Conflicts"].split()) == {"retentiond-once.service", "retentiond-once.timer"}


def test_timer_unit_contract() -> None:
    once = dict(_settings(SYSTEMD / "retentiond-once.service"))
    assert once["Type"] == "oneshot"
    assert once["ExecStart"] == f"{BINARY} -c /etc/retentiond/retentiond.yaml run --once"
    timer = dict(_settings(SYSTEMD / "retentiond-once.timer", "Timer"))
    assert timer == {
        "OnCalendar": "*-*-* 03:15",
        "Persistent": "true",
        "RandomizedDelaySec": "10m",
        "Unit": "retentiond-once.service",
    }
    for unit in ("retentiond-once.service", "retentiond-once.timer"):
        conflicts = dict(_settings(SYSTEMD / unit, "Unit"))["Conflicts"]
        assert conflicts == "retentiond.service"


def test_daemon_and_oneshot_share_user_credentials_and_sandbox() -> None:
    # Everything after User= (identity, credentials, state, sandbox) is the same in both.
    def tail(unit: str) -> list[tuple[str, str]]:
        settings = _settings(SYSTEMD / unit)
        keys = [key for key, _ in settings]
        return settings[keys.index("User") :]

    assert tail("retentiond.service") == tail("retentiond-once.service")
    sandbox = dict(tail("retentiond.service"))
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "PrivateDevices": "yes",
        "MemoryDenyWriteExecute": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
    }.items():
        assert sandbox[key] == value, key
    read_write = sandbox["ReadWritePaths"].split()
    assert read_write == ["/var/lib/retentiond", "-/var/spool/asterisk", "-/var/log/asterisk"]


@pytest.mark.parametrize("dropin", [None, *DROPINS])
def test_systemd_analyze_verify(tmp_path: Path, dropin: str | None) -> None:
    analyze = _tool("systemd-analyze")
    units = _units_in(tmp_path, dropin)
    result = _run(analyze, "verify", *units.values(), check=False, cwd=tmp_path)
    # verify also loads the machine's other units; only lines about ours matter
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "retentiond" in line or str(tmp_path) in line
    ]
    assert result.returncode == 0, result.stderr
    assert ours == []


@pytest.mark.parametrize("dropin", [None, *DROPINS])
@pytest.mark.parametrize("unit", SERVICES)
def test_security_exposure_is_ok_or_better(tmp_path: Path, unit: str, dropin: str | None) -> None:
    analyze = _tool("systemd-analyze")
    units = _units_in(tmp_path, dropin)
    result = _run(analyze, "security", "--offline=true", "--no-pager", units[unit], check=False)
    if "--offline" in result.stderr and result.returncode != 0:
        _missing(f"systemd-analyze here cannot score a unit offline: {result.stderr.strip()}")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    line = match.group(0)
    print(f"{line}  (drop-in: {dropin or 'none'})")
    score, label = float(match.group(1)), match.group(2)
    assert label in GOOD_ENOUGH, line
    assert score < 5.0, line


# -- make install ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`make install DESTDIR=... PBX=freepbx` once for the module: builds the venv."""
    if shutil.which("make") is None:
        _missing("make is not installed")
    if not Path(INSTALL_PYTHON).exists():
        _missing(f"{INSTALL_PYTHON} does not exist (Debian package python3)")
    probe = subprocess.run([INSTALL_PYTHON, "-c", "import ensurepip, venv"], check=False)
    if probe.returncode != 0:
        _missing(f"{INSTALL_PYTHON} cannot create a venv (Debian package python3-venv)")
    root = tmp_path_factory.mktemp("stage")
    # An admin's config and deletion log from an earlier install: never overwritten.
    (root / "etc/retentiond").mkdir(parents=True)
    (root / "etc/retentiond").chmod(0o750)
    (root / "etc/retentiond/retentiond.yaml").write_text("version: 1  # the admin's\n")
    result = _run("make", "-C", REPO, "install", f"DESTDIR={root}", "PBX=freepbx", timeout=900)
    print(result.stdout[-2000:])
    yield root


def test_make_install_puts_everything_in_place(staged: Path) -> None:
    venv = staged / "opt/retentiond"
    assert (venv / "pyvenv.cfg").is_file()
    assert "home = /usr/bin" in (venv / "pyvenv.cfg").read_text()
    # not editable: the package lies in the venv, not in this source tree
    packages = list(venv.glob("lib/python3*/site-packages/retentiond/cli/main.py"))
    assert len(packages) == 1
    assert not list(venv.glob("lib/python3*/site-packages/*retentiond*.pth"))
    # the scripts name the final path, not the staging folder
    assert (venv / "bin/retentiond").read_text().splitlines()[0] == "#!/opt/retentiond/bin/python"
    for script in (venv / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            assert str(staged) not in script.read_text(errors="replace"), script
    assert (staged / "usr/local/bin/retentiond").readlink() == Path(BINARY)

    units = staged / "usr/local/lib/systemd/system"
    for unit in UNITS:
        assert (units / unit).read_text() == (SYSTEMD / unit).read_text()
    for service in SERVICES:
        dropin = units / f"{service}.d/pbx.conf"
        assert dropin.read_text() == (SYSTEMD / "asterisk.conf").read_text()
    sysusers = staged / "etc/sysusers.d/retentiond.conf"
    tmpfiles = staged / "etc/tmpfiles.d/retentiond.conf"
    assert sysusers.read_text() == (SYSTEMD / "retentiond.sysusers").read_text()
    assert tmpfiles.read_text() == (SYSTEMD / "retentiond.tmpfiles").read_text()
    assert (staged / "usr/local/share/doc/retentiond/install.md").is_file()

    config = staged / "etc/retentiond"
    assert (config / "retentiond.yaml").read_text() == "version: 1  # the admin's\n"
    assert oct((config / "credentials").stat().st_mode & 0o777) == "0o700"


def test_installed_retentiond_runs(staged: Path) -> None:
    venv = staged / "opt/retentiond"
    # The staged venv runs from where it lies; its scripts' #! names /opt/retentiond.
    result = _run(venv / "bin/python", venv / "bin/retentiond", "--version")
    assert result.stdout.startswith("retentiond, version ")
    print(result.stdout.strip())


def test_sysusers_and_tmpfiles_create_the_user_and_state_folder(staged: Path) -> None:
    sysusers, tmpfiles = _tool("systemd-sysusers"), _tool("systemd-tmpfiles")
    _run(sysusers, f"--root={staged}")
    passwd = (staged / "etc/passwd").read_text()
    entry = next(line for line in passwd.splitlines() if line.startswith("retentiond:"))
    _, _, uid, gid, _, home, shell = entry.split(":")
    assert (home, shell) == ("/var/lib/retentiond", "/usr/sbin/nologin")
    assert int(uid) < 1000  # a system user

    _run(tmpfiles, "--create", f"--root={staged}", "retentiond.conf")
    state = staged / "var/lib/retentiond"
    assert (state.stat().st_uid, state.stat().st_gid) == (int(uid), int(gid))
    assert oct(state.stat().st_mode & 0o777) == "0o750"
    log = state / "audit.jsonl"
    assert log.stat().st_size == 0
    assert (log.stat().st_uid, oct(log.stat().st_mode & 0o777)) == (int(uid), "0o640")


SANDBOX = r'''
"""Exec a command under retentiond.service's system call filter, NoNewPrivileges and
MemoryDenyWriteExecute (the kernel's PR_SET_MDWE is the same rule systemd enforces)."""
import ctypes, errno, os, subprocess, sys

import seccomp


def members(group, seen):
    listing = subprocess.run(
        ["systemd-analyze", "syscall-filter", group], capture_output=True, text=True, check=True
    ).stdout
    calls = set()
    for line in listing.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if item.startswith("@"):
            if item not in seen:
                seen.add(item)
                calls |= members(item, seen)
        else:
            calls.add(item)
    return calls


# SystemCallFilter=@system-service, SystemCallFilter=~@resources, SystemCallErrorNumber=EPERM
allowed = members("@system-service", set()) - members("@resources", set())
scfilter = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
for name in sorted(allowed):
    try:
        scfilter.add_rule(seccomp.ALLOW, name)
    except (RuntimeError, ValueError):  # a name this kernel or libseccomp does not know
        pass
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
    sys.exit("PR_SET_NO_NEW_PRIVS failed")
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux 6.3)
    sys.exit("MDWE: this kernel has no PR_SET_MDWE")
scfilter.load()
os.execv(sys.argv[1], sys.argv[1:])
'''

PROBE = """
import mmap, os
from sqlalchemy import create_engine, text
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)
    raise SystemExit("writable executable memory was allowed: MDWE is not in force")
except PermissionError:
    pass
try:
    os.nice(1)
    raise SystemExit("nice() was allowed: the system call filter is not in force")
except PermissionError:
    pass
try:  # the daemon watches its config folder with inotify (the watchdog package)
    import tempfile, time
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer
except ImportError:
    pass
else:
    seen = []
    class Handler(FileSystemEventHandler):
        def on_any_event(self, event):
            seen.append(event.event_type)
    with tempfile.TemporaryDirectory() as folder:
        observer = Observer()
        observer.schedule(Handler(), folder)
        observer.start()
        with open(os.path.join(folder, "retentiond.yaml"), "w") as handle:
            handle.write("version: 1")
        deadline = time.monotonic() + 5
        while "closed" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        observer.stop()
        observer.join()
    print(type(observer).__name__, "saw", "closed" in seen)
for url in os.environ["PROBE_URLS"].split():
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as connection:
            print(url.split(":")[0], connection.execute(text("SELECT 1")).scalar())
    except Exception as error:
        print(url.split(":")[0], "not reachable:", type(error).__name__)
    engine.dispose()
"""


def _sandbox(staged: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The script that runs a command under the unit's sandbox (SANDBOX), and the installed
    Python to run; skips (fails under CI) where this machine cannot emulate the sandbox."""
    _tool("systemd-analyze")
    seccomp = subprocess.run([INSTALL_PYTHON, "-c", "import seccomp"], check=False)
    if seccomp.returncode != 0:
        _missing(f"{INSTALL_PYTHON} has no seccomp module (Debian package python3-seccomp)")
    sandbox = tmp_path / "sandbox.py"
    sandbox.write_text(SANDBOX)
    python = staged / "opt/retentiond/bin/python"
    probe = _run(INSTALL_PYTHON, sandbox, python, "-c", "pass", check=False)
    if "MDWE" in probe.stdout + probe.stderr:
        _missing("this kernel has no PR_SET_MDWE (Linux 6.3 or newer) to emulate it")
    return sandbox, python


def test_installed_retentiond_runs_in_the_units_sandbox(staged: Path, tmp_path: Path) -> None:
    sandbox, python = _sandbox(staged, tmp_path)

    # The demo: SQLite, the files, voicemail and CSV stores, the audit log, end to end.
    demo = _run(INSTALL_PYTHON, sandbox, python, "-m", "retentiond", "demo", tmp_path / "demo")
    assert "deleted" in demo.stdout
    verify = _run(
        INSTALL_PYTHON, sandbox, python, "-m", "retentiond", "audit", "verify",
        tmp_path / "demo/audit.jsonl",
    )  # fmt: skip
    assert "intact" in verify.stdout

    # The database drivers (pymysql, psycopg with its libpq) under the same rules.
    env = dict(os.environ)
    env["PROBE_URLS"] = " ".join(
        [
            os.environ.get("RETENTIOND_TEST_MARIADB", "mariadb+pymysql://root@127.0.0.1:3306"),
            os.environ.get(
                "RETENTIOND_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
            ),
        ]
    )
    probe = _run(INSTALL_PYTHON, sandbox, python, "-c", PROBE, env=env)
    print(probe.stdout.strip())
    if "Observer" in probe.stdout:
        assert "InotifyObserver saw True" in probe.stdout
    if os.environ.get("CI"):
        assert "not reachable" not in probe.stdout


def test_the_installed_daemon_starts_its_run_processes_in_the_units_sandbox(
    staged: Path, tmp_path: Path
) -> None:
    """The daemon runs each rule in a child process (retentiond/runner.py): starting it, and
    the pipes between them, must work under the unit's system call filter too."""
    sandbox, python = _sandbox(staged, tmp_path)
    # A PBX never enforced: every rule is overdue, so the daemon runs each at once.
    build = (
        "import sys, pathlib; from retentiond import demo; demo.build(pathlib.Path(sys.argv[1]))"
    )
    _run(python, "-c", build, tmp_path / "pbx")
    config = tmp_path / "pbx/retentiond.yaml"
    log = tmp_path / "pbx/audit.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    with (tmp_path / "daemon.log").open("wb") as stderr:
        daemon = subprocess.Popen(
            [
                INSTALL_PYTHON,
                str(sandbox),
                str(python),
                "-m",
                "retentiond",
                "-c",
                str(config),
                "run",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while daemon.poll() is None and (
            not log.exists() or log.read_text().count('"type":"run_finished"') < 3
        ):
            assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.2)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0, (tmp_path / "daemon.log").read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    ends = [json.loads(line) for line in log.read_text().splitlines() if "run_finished" in line]
    assert [e["status"] for e in ends] == ["done", "done", "done"]
    verify = _run(python, "-m", "retentiond", "audit", "verify", log)
    assert "intact" in verify.stdout


def test_make_uninstall_keeps_config_credentials_and_log(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        _missing("make is not installed")
    # what `make install` leaves, without building a venv for it
    kept = [
        "etc/retentiond/retentiond.yaml",
        "etc/retentiond/credentials/cdrdb",
        "var/lib/retentiond/audit.jsonl",
    ]
    removed = [
        "opt/retentiond/bin/python",
        "opt/retentiond/pyvenv.cfg",
        "usr/local/bin/retentiond",
        *(f"usr/local/lib/systemd/system/{unit}" for unit in UNITS),
        "usr/local/lib/systemd/system/retentiond.service.d/pbx.conf",
        "etc/sysusers.d/retentiond.conf",
        "etc/tmpfiles.d/retentiond.conf",
        "usr/local/share/doc/retentiond/install.md",
    ]
    for name in kept + removed:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    _run("make", "-C", REPO, "uninstall", f"DESTDIR={tmp_path}")
    assert [name for name in kept if not (tmp_path / name).exists()] == []
    assert [name for name in removed if (tmp_path / name).exists()] == []
    assert not (tmp_path / "opt/retentiond").exists()
    assert not (tmp_path / "usr/local/lib/systemd/system/retentiond.service.d").exists()


def test_make_install_rejects_an_unknown_pbx(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        _missing("make is not installed")
    result = _run("make", "-C", REPO, "install", f"DESTDIR={tmp_path}", "PBX=starface", check=False)
    assert result.returncode != 0
    assert "PBX must be freepbx, asterisk or 3cx" in result.stderr
    assert not (tmp_path / "opt").exists()
