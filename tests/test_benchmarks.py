"""Every benchmark script runs once at a tiny size, so none of them can rot. The figures are not
judged here: benchmarks measure (benchmarks/README.md), tests check behaviour."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    # its own mariadbd on a port apart from a `make bench` that may be running
    "sql_mariadb": [
        *("--rows", "2000", "--scaling-rows", "1000", "--port", "3417", "--slow-log"),
        *("--floor-batch-sizes", "500,1000", "--retentiond-batch-sizes", "1000"),
    ],
    "sql_scale": ["--rows", "2000", "--small-rows", "1000", "--chunk", "500", "--port", "3418"],
    "pg_3cx": ["--calls", "300", "--baseline-seconds", "1", "--vacuum-wait", "1", "--port", "5437"],
    "pg_3cx_cdr": [
        *("--target", "cdr", "--calls", "300", "--baseline-seconds", "1"),
        *("--vacuum-wait", "1", "--port", "5438"),
    ],
    "files": ["--messages", "200", "--recordings", "200", "--warm"],
    "idle": ["--idle-seconds", "3", "--settle-seconds", "1", "--calls", "100"],
}
SCRIPT = {"pg_3cx_cdr": "pg_3cx"}  # another target of the same script
NEEDS = {
    "sql_mariadb": ["pt-archiver", "mariadbd", "mariadb-install-db"],
    "sql_scale": ["mariadbd", "mariadb-install-db"],
    "files": ["tmpreaper"],
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TINY))
def test_benchmark_runs_at_a_tiny_size(script: str, tmp_path: Path) -> None:
    if os.environ.get("FAKETIME"):  # `make test-clock`: the servers keep the real clock
        pytest.skip(
            "a benchmark runs against the real servers and times real work: not on a moved clock"
        )
    missing = [tool for tool in NEEDS.get(script, []) if not _found(tool)]
    if missing:
        message = f"{script}: {', '.join(missing)} not installed (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path / f"{script}.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / f"{SCRIPT.get(script, script)}.py"),
            *TINY[script],
            *("--out", out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads(out.read_text())
    assert document  # the figures are there, whatever they are
    assert "Traceback" not in result.stderr


def _found(tool: str) -> bool:
    return shutil.which(tool) is not None or Path("/usr/sbin", tool).exists()
