"""What the tests that boot Debian machines (tests/nspawn.py) share: skipping where no machine
can boot (failing under CI), and the Debian package of this tree to install in them.

Used by tests/test_nspawn_systemd.py (one machine, the units) and tests/test_ansible_fleet.py
(two machines, deployed by the Ansible role).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import debpackage
import pytest
from nspawn import Unavailable, debian_tree


def unavailable(message: str) -> NoReturn:
    """Skip with `message` where machines cannot boot; fail under CI, which installs the tools."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def build_package() -> Callable[[], Path]:
    """Start building the Debian package (tests/debpackage.py); the returned call waits for it.
    RETENTIOND_DEB names a package built before instead."""
    given = os.environ.get("RETENTIOND_DEB")
    if given:
        return lambda: Path(given).resolve()
    missing = debpackage.missing_tools()
    if missing:
        unavailable(f"make deb needs {', '.join(missing)}; .ci/run installs them")
    return debpackage.start_build()


def tree_and_package() -> tuple[Path, Path]:
    """The cached Debian 12 tree (built when missing) and this tree's package, built meanwhile;
    skips (fails under CI) where either cannot be had."""
    package_built = build_package()
    try:
        tree = debian_tree()
    except Unavailable as error:
        unavailable(str(error))
    except RuntimeError as error:  # debootstrap or apt-get failed: no mirror, no space
        unavailable(f"the Debian 12 tree could not be built: {error}")
    finally:
        package = package_built()
    return tree, package
