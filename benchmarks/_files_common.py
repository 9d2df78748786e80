"""What benchmarks/files.py, pg_3cx.py and idle.py share: the machine, timed child processes,
percentiles, configs, the table and the JSON file.

Kept apart from `_common.py` (another benchmark family) so each family can change on its own.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
RETENTIOND = REPO / ".venv" / "bin" / "retentiond"
TESTS = REPO / "tests"
MIB = 1024 * 1024


def import_test_fixtures() -> None:
    """tests/threecx_schema.py and tests/spool.py import their siblings as top-level modules."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))


# -- the machine -----------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def filesystem_of(path: Path) -> str:
    """The type and source of the filesystem holding `path` (`ext4 /dev/vda`)."""
    try:
        out = subprocess.run(
            ["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return " ".join(out) if out else "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def retentiond_version(binary: Path) -> str:
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, check=True
        ).stdout
        return out.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(
    path: Path, *, binary: Path = RETENTIOND, postgres: str | None = None
) -> dict[str, Any]:
    memory = _memory_bytes()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(memory / 1024**3, 1) if memory else None,
        "filesystem": filesystem_of(path),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": postgres,
        "retentiond": retentiond_version(binary),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average": load_average(),
    }


def load_average() -> list[float]:
    """1, 5 and 15 minute load: the machine may be shared; a busy one skews every figure."""
    return [round(value, 2) for value in os.getloadavg()]


def machine_line(info: Mapping[str, Any]) -> str:
    parts = [
        f"{info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM",
        f"fs {info['filesystem']}",
        f"kernel {info['kernel']}",
    ]
    if info.get("postgresql"):
        parts.append(str(info["postgresql"]))
    parts.append(str(info["retentiond"]))
    parts.append("load " + " ".join(str(value) for value in info["load_average"]))
    return "; ".join(parts)


# -- child processes -------------------------------------------------------------------------


@dataclass
class Measured:
    """One child process: wall time, its own CPU time and peak RSS (from wait4), exit code."""

    command: str
    returncode: int
    wall_s: float
    user_s: float
    sys_s: float
    peak_rss_mib: float
    stdout: str
    stderr: str

    def brief(self) -> dict[str, Any]:
        data = asdict(self)
        data["stdout"] = self.stdout[-4000:]
        data["stderr"] = self.stderr[-4000:]
        return data


GNU_TIME = Path("/usr/bin/time")


def measure(
    command: Sequence[str], *, env: Mapping[str, str] | None = None, workdir: Path
) -> Measured:
    """Run `command` to its end, timed and with its own peak RSS.

    The peak RSS comes from GNU time, which forks the command from its own small process:
    a child forked from this (large) Python process would inherit its RSS into ru_maxrss,
    since Linux keeps the high-water mark across exec. Without /usr/bin/time it is wait4's,
    an upper bound. CPU time is wait4's (the command, and GNU time's negligible own).
    """
    out_path, err_path = workdir / "child.stdout", workdir / "child.stderr"
    rss_path = workdir / "child.maxrss"
    full = list(command)
    if GNU_TIME.exists():
        full = [str(GNU_TIME), "-q", "-f", "%M", "-o", str(rss_path), "--", *full]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        process = subprocess.Popen(full, stdout=out, stderr=err, env=dict(env) if env else None)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait for it again
    peak_kib = usage.ru_maxrss  # Linux: KiB
    if rss_path.exists():
        with suppress(ValueError, IndexError):
            peak_kib = int(rss_path.read_text().split()[-1])
        rss_path.unlink()
    result = Measured(
        command=" ".join(command),
        returncode=process.returncode,
        wall_s=wall,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        peak_rss_mib=peak_kib * 1024 / MIB,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
    )
    out_path.unlink()
    err_path.unlink()
    return result


def drop_caches() -> bool:
    """Flush dirty pages and drop the page, dentry and inode caches (root only); True if done."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def terminate(process: subprocess.Popen[Any], timeout: float = 30) -> int:
    """SIGTERM, then SIGKILL after `timeout`; the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


# -- /proc of a running process -------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (KiB), Threads and the voluntary/involuntary context switches of all threads."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            values[key] = int(value.split()[0])
    switches = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
        except OSError:
            continue  # a thread ended meanwhile
    values["ctxt_switches"] = switches
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process (all its threads) so far."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return ticks / os.sysconf("SC_CLK_TCK")


# -- figures and output ----------------------------------------------------------------------


def percentile(values: Sequence[float], share: float) -> float | None:
    """Nearest-rank percentile (`share` in 0..1) of the values; None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(share * len(ordered) + 0.5)))
    return ordered[rank - 1]


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, numbers right-aligned."""
    cells = [[fmt(cell) if not isinstance(cell, str) else cell for cell in row] for row in rows]
    widths = [
        max(len(headers[i]), *(len(row[i]) for row in cells)) if cells else len(headers[i])
        for i in range(len(headers))
    ]
    numeric = [
        all(not isinstance(row[i], str) or row[i] in ("-",) for row in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            value.rjust(widths[i]) if numeric[i] else value.ljust(widths[i])
            for i, value in enumerate(values)
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in cells)])


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def yaml_config(data: Mapping[str, Any]) -> str:
    """A retentiond config as YAML (JSON is YAML, and leaves no quoting to chance)."""
    return json.dumps(data, indent=2) + "\n"


def audit_figures(path: Path) -> dict[str, Any]:
    """Size and entries of a deletion log, with its rotated files."""
    files = sorted(path.parent.glob(path.name + "*"))
    size = sum(file.stat().st_size for file in files)
    entries = 0
    for file in files:
        with file.open("rb") as handle:
            entries += sum(1 for _ in handle)
    return {"bytes": size, "entries": entries}
