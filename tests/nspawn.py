"""A Debian 12 machine with a real systemd as PID 1, booted with systemd-nspawn for a test.

The tree is made once with debootstrap (minbase, plus systemd and what the package depends on)
and cached in /var/cache/retentiond-nspawn/bookworm (RETENTIOND_NSPAWN_CACHE moves the cache);
a lock file keeps two test sessions from building it at once. Every boot runs on a throwaway
overlay of it (`--volatile=overlay`): the cache itself is never changed by a test.

The test host need not run systemd itself: the container is started without machined
(`--register=no --keep-unit`), and commands run inside it with `nsenter` into the namespaces
of its PID 1, found as the nspawn process's child. The host's network is shared (no
--private-network), so the host's MariaDB and PostgreSQL answer on 127.0.0.1 inside too.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CACHE = Path(os.environ.get("RETENTIOND_NSPAWN_CACHE", "/var/cache/retentiond-nspawn"))
SUITE = "bookworm"
MIRROR = os.environ.get("RETENTIOND_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# systemd as PID 1 and the system bus: what a booted Debian 12 server has.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus")
INSIDE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}


class Unavailable(Exception):
    """This host cannot build or boot the machine; the message says why."""


def run(
    command: Sequence[str | Path], *, check: bool = True, timeout: float = 600, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(c) for c in command],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        **kwargs,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, command))} exited {result.returncode}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def debian_tree() -> Path:
    """The cached Debian 12 tree (minbase, systemd, its package lists), built when missing.

    Nothing else is installed into it: a test installs the package with apt inside a booted
    machine, so what the package forgets to depend on is missing there as on a fresh server.
    """
    for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            package = {"nsenter": "util-linux", "systemd-nspawn": "systemd-container"}
            raise Unavailable(f"{tool} is not installed (Debian package {package.get(tool, tool)})")
    tree = CACHE / SUITE
    with _locked(CACHE / f"{SUITE}.lock"):
        if not (tree / "usr/lib/systemd/systemd").exists():
            building = CACHE / f"{SUITE}.building"
            shutil.rmtree(building, ignore_errors=True)
            include = ",".join(BASE_PACKAGES)
            run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={include}",
                    SUITE,
                    building,
                    MIRROR,
                ]
            )
            if tree.exists():
                shutil.rmtree(tree)
            building.rename(tree)
        if not list((tree / "var/lib/apt/lists").glob("*_Packages")):
            # debootstrap leaves no package lists; apt inside the machines needs them
            command = [*_COMMAND_CONTAINER, f"--directory={tree}", "apt-get", "-q", "update"]
            run(command, stdin=subprocess.DEVNULL)
        for deb in (tree / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
    (CACHE / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    return tree


def archives(name: str = "archives") -> Path:
    """Downloaded .deb files, kept between test sessions (bound into each machine). Machines
    that run apt at the same time need a folder each (`name`): apt locks the folder."""
    folder = CACHE / name
    (folder / "partial").mkdir(parents=True, exist_ok=True)
    return folder


# systemd-nspawn running one command in a tree, without machined or a scope of its own.
_COMMAND_CONTAINER = ["systemd-nspawn", "-q", "--register=no", "--keep-unit", "--pipe"]


class Machine:
    """One booted container: commands inside, its files from the host, a clean power-off."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], console: Path) -> None:
        self.name = name
        self.process = process
        self.console = console
        self.leader = 0
        self.exit_code: int | None = None  # systemd-nspawn's, once powered off

    @property
    def root(self) -> Path:
        """The container's file system as the host sees it (through its PID 1)."""
        return Path(f"/proc/{self.leader}/root")

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def run(
        self, *command: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A command inside, as root, in every namespace of the container's PID 1."""
        env = [f"{k}={v}" for k, v in INSIDE_ENV.items()]
        enter = ["nsenter", "-t", str(self.leader), "-a", "--", "env", "-i", *env]
        return run([*enter, *command], check=check, timeout=timeout, input=input)

    def apt_install(self, *packages: str) -> str:
        """apt-get install inside, downloading only what the shared archive lacks; its output."""
        apt = ["apt-get", "-q", "-y", "-o", "Dpkg::Use-Pty=0", "--no-install-recommends"]
        command = ["env", "DEBIAN_FRONTEND=noninteractive", *apt, "install", *packages]
        first = self.run(*command, check=False, timeout=600)
        if first.returncode != 0:  # the cached lists may name versions the mirror dropped
            self.run(*apt, "update", timeout=300)
            return self.run(*command, timeout=600).stdout
        return first.stdout

    def sh(self, script: str, check: bool = True, timeout: float = 120) -> str:
        return self.run("sh", "-euc", script, check=check, timeout=timeout).stdout

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args, check=check)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.systemctl("show", unit, "-p", ",".join(properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def _find_leader(self) -> int:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            found = children.read_text().split()
            # nspawn's first child forks the container's init and exits: wait for systemd
            if found and Path(f"/proc/{found[0]}/comm").read_text().strip() == "systemd":
                return int(found[0])
        except OSError:
            pass
        return 0

    def wait_booted(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Unavailable(
                    f"systemd-nspawn exited {self.process.returncode} while booting: "
                    + self.console.read_text(errors="replace")[-2000:]
                )
            self.leader = self.leader or self._find_leader()
            if self.leader and Path(f"/proc/{self.leader}/root/run/systemd/system").exists():
                result = self.run(
                    "systemctl", "is-system-running", "--wait", check=False, timeout=timeout
                )
                if result.stdout.strip() in ("running", "degraded"):
                    return
                if "Failed to connect to bus" in result.stderr:  # not listening yet
                    time.sleep(0.1)
                    continue
                raise Unavailable(
                    f"the container's systemd is {result.stdout.strip()!r} ({result.stderr}); "
                    f"failed units: {self.failed_units()}"
                )
            time.sleep(0.1)
        raise Unavailable(f"the container did not boot within {timeout} s")

    def failed_units(self) -> str:
        return self.systemctl("--failed", "--plain", "--no-legend", check=False).stdout

    def poweroff(self, timeout: float = 60) -> int:
        """A clean power-off (SIGRTMIN+4 to PID 1, as `systemctl poweroff` does); the exit code
        of systemd-nspawn, or a kill after `timeout` seconds."""
        if self.process.poll() is None and self.leader:
            os.kill(self.leader, signal.SIGRTMIN + 4)
        try:
            self.exit_code = self.process.wait(timeout=timeout)
            return self.exit_code
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            # nspawn leaves this folder where /run is not a tmpfs (it refuses to remove it).
            shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}", ignore_errors=True)


@dataclass(frozen=True)
class Boot:
    """What one machine of `booted_together` is booted with."""

    name: str
    console: Path
    binds: Sequence[tuple[Path | str, str]] = ()
    binds_ro: Sequence[tuple[Path | str, str]] = ()


def _start(tree: Path, boot: Boot) -> Machine:
    command = [
        "systemd-nspawn",
        "--quiet",
        "--boot",
        "--register=no",
        "--keep-unit",
        "--volatile=overlay",
        f"--directory={tree}",
        f"--machine={boot.name}",
        *(f"--bind={host}:{inside}" for host, inside in boot.binds),
        *(f"--bind-ro={host}:{inside}" for host, inside in boot.binds_ro),
    ]
    with boot.console.open("wb") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    return Machine(boot.name, process, boot.console)


@contextmanager
def booted_together(tree: Path, boots: Sequence[Boot]) -> Iterator[list[Machine]]:
    """Boot several machines on throwaway overlays of `tree` at once (each boots while the
    others do); power them all off when done."""
    machines: list[Machine] = []
    try:
        for boot in boots:
            machines.append(_start(tree, boot))
        for machine in machines:
            machine.wait_booted()
        yield machines
    finally:
        stuck = []
        for machine in machines:
            try:
                machine.poweroff()
            except subprocess.TimeoutExpired as error:  # killed; power the others off first
                stuck.append(error)
        if stuck:
            raise stuck[0]


@contextmanager
def booted(
    tree: Path,
    name: str,
    console: Path,
    binds: Sequence[tuple[Path | str, str]] = (),
    binds_ro: Sequence[tuple[Path | str, str]] = (),
) -> Iterator[Machine]:
    """Boot `tree` on a throwaway overlay; power it off when done."""
    with booted_together(tree, [Boot(name, console, binds, binds_ro)]) as (machine,):
        yield machine
