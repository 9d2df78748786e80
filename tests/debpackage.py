"""The Debian package of this tree, built once by `make deb` and cached by the tree's hash.

The cache is the temp folder's retentiond-deb/<hash>, with a lock: tests/test_debian_package.py
and tests/test_nspawn_systemd.py both take the package from here, so a session builds it once
(and a second session of the same tree not at all). `start_build()` returns at once; the build
runs in a thread while the caller does other slow work. tests/conftest.py starts it when the
session's tests are collected, so it builds while the tests before those modules run.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import tomllib
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
# What `make deb` leaves out of its copy of the tree (Makefile, deb:), and so out of the hash
NOT_BUILT = {".git", ".venv", ".venv-lint", "build", "dist", "demo-pbx", "__pycache__"}
NOT_BUILT_SUFFIXES = ("_cache", ".hypothesis", ".egg-info")
TOOLS = {
    "make": "make",
    "dpkg-buildpackage": "dpkg-dev",
    "dh": "debhelper",
    "dh_virtualenv": "dh-virtualenv",
}


def missing_tools() -> list[str]:
    """`tool (Debian package)` for each build tool that is not installed."""
    return [f"{tool} ({package})" for tool, package in TOOLS.items() if not shutil.which(tool)]


def tree_hash() -> str:
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


@functools.cache  # one build per session, whoever starts it first
def start_build() -> Callable[[], Path]:
    """Build (or find) the package in a thread; the returned call waits and gives its path,
    or raises AssertionError with make's output."""
    architecture = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    cache = Path(tempfile.gettempdir()) / "retentiond-deb" / tree_hash()
    cache.mkdir(parents=True, exist_ok=True)
    package = cache / f"retentiond_{VERSION}_{architecture}.deb"
    failure: list[str] = []

    def build() -> None:
        with (cache / "lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another session building the same tree: wait
            if package.exists():
                return
            env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
            env.pop("MAKELEVEL", None)
            command = ["make", "-C", str(REPO), "deb", f"DEB_DIST={cache}"]
            command.append(f"DEB_BUILD={cache / 'build'}")
            result = subprocess.run(
                command, capture_output=True, text=True, env=env, check=False, timeout=900
            )
            shutil.rmtree(cache / "build", ignore_errors=True)
            if result.returncode != 0:
                failure.append(f"make deb exited {result.returncode}:\n{result.stdout[-3000:]}")
                failure.append(result.stderr[-3000:])

    thread = threading.Thread(target=build, name="make-deb", daemon=True)
    thread.start()

    def built() -> Path:
        thread.join(timeout=900)
        assert not thread.is_alive(), "make deb did not finish within 15 minutes"
        assert not failure, "\n".join(failure)
        assert package.exists(), sorted(p.name for p in cache.iterdir())
        return package

    return built
