"""retentiond vs `find -delete`, `tmpreaper` and `xargs rm` on a voicemail spool and recordings.

The trees are built once, as Asterisk and FreePBX write them, over two retention periods (about
half expired; nothing within 1.5 days of the cutoff, so every method removes the same files):

- voicemail: `<root>/default/<mailbox>/{INBOX,Old}/msgNNNN.{txt,wav,WAV}`, 100 messages a mailbox,
  msgNNNN.txt as app_voicemail writes it (tests/spool.py) with its origtime, files dated origtime;
  a greeting in every fourth mailbox (young, so `find` does not take it either);
- recordings: `<root>/YYYY/MM/DD/{in,out}-<dst>-<src>-<YYYYMMDD>-<HHMMSS>-<uniqueid>.wav`, dated
  by their call.

Each method gets its own tree, built alike before any purge (same seeds and clock: same names,
contents and mtimes), the caches are dropped before each purge (when run as root), and each
method's wall time, CPU time and peak RSS (GNU time) are measured.
retentiond runs both rules (asterisk_voicemail; files with age_from path_date) with its deletion
log on; `find ROOT -type f -mtime +KEEP -delete` and `tmpreaper --mtime` are what it replaces;
`xargs -0 rm -f` on the list of expired files, made beforehand and not timed, is the floor: the
unlinks alone, with no walking, no dating and no checking.

    .venv/bin/python benchmarks/files.py                               # 200,000 + 200,000
    .venv/bin/python benchmarks/files.py --messages 300 --recordings 300   # seconds, for CI

Targets (issues 7 and 20): retentiond <= 1.5x find's wall time and at least as fast as tmpreaper;
its peak RSS <= 80 MB. Exit 1 on an error (a method failing or leaving the wrong files), not on a
missed target.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _files_common as common

common.import_test_fixtures()
from pbxdata import phone_number  # noqa: E402
from spool import AUDIO, CALLERIDS, message_txt  # noqa: E402

NAME = "files"
ZONE = ZoneInfo("Europe/Berlin")
GAP = timedelta(days=1.5)  # nothing this close to the cutoff: every method agrees on what expired
PER_MAILBOX = 100  # Asterisk's default maxmsg
METHODS = ("retentiond", "find", "tmpreaper", "xargs-rm")
# Only when asked for (--methods): retentiond with one thread for the unlinks (issue 20's before).
SERIAL = "retentiond-1thread"
FLOOR = "xargs-rm"
TARGET_RATIO = 1.5
TARGET_RSS_MIB = 80.0  # MB despite the name (issue 20: a run process <= 80 MB at every size)


@dataclass
class Tree:
    """What was built: files in total, files expired, and the share of each root."""

    files: int = 0
    expired: int = 0
    messages: int = 0
    expired_messages: int = 0
    recordings: int = 0
    expired_recordings: int = 0
    seconds: float = 0.0


def ages(count: int, keep: timedelta, rng: random.Random) -> list[timedelta]:
    """Ages over two retention periods, none within GAP of `keep`."""
    span = (2 * keep).total_seconds()
    result: list[timedelta] = []
    while len(result) < count:
        age = timedelta(seconds=rng.uniform(3600, span))
        if abs(age - keep) > GAP:
            result.append(age)
    return result


def write_file(path: Path, content: bytes, epoch: float) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)
    os.utime(path, (epoch, epoch))


def build_spool(root: Path, messages: int, keep: timedelta, now: datetime, tree: Tree) -> None:
    rng = random.Random(1)
    mailboxes = max(1, math.ceil(messages / PER_MAILBOX))
    all_ages = ages(messages, keep, rng)
    sequence = 0
    for index in range(mailboxes):
        mailbox = root / "default" / str(2000 + index)
        share = sorted(all_ages[index * PER_MAILBOX : (index + 1) * PER_MAILBOX], reverse=True)
        old_count = len(share) * 2 // 5  # the older ones were listened to
        for folder, folder_ages in (("Old", share[:old_count]), ("INBOX", share[old_count:])):
            directory = mailbox / folder
            directory.mkdir(parents=True)
            for number, age in enumerate(folder_ages):
                sequence += 1
                origtime = (now - age).replace(microsecond=0)
                epoch = origtime.timestamp()
                stem = directory / f"msg{number:04d}"
                txt = message_txt(
                    origtime=origtime,
                    mailbox=mailbox.name,
                    callerid=CALLERIDS[sequence % len(CALLERIDS)],
                    sequence=sequence,
                    duration=rng.randrange(3, 120),
                )
                write_file(stem.with_suffix(".WAV"), AUDIO["WAV"], epoch)
                write_file(stem.with_suffix(".wav"), AUDIO["wav"], epoch)
                write_file(stem.with_suffix(".txt"), txt.encode(), epoch)
                tree.files += 3
                tree.messages += 1
                if age > keep:
                    tree.expired += 3
                    tree.expired_messages += 1
        (mailbox / "tmp").mkdir()
        if index % 4 == 0:
            young = (now - timedelta(days=10)).timestamp()
            write_file(mailbox / "unavail.wav", AUDIO["wav"], young)
            write_file(mailbox / "greet.wav", AUDIO["wav"], young)
            tree.files += 2


def build_recordings(root: Path, count: int, keep: timedelta, now: datetime, tree: Tree) -> None:
    rng = random.Random(2)
    made: set[Path] = set()
    for sequence, age in enumerate(sorted(ages(count, keep, rng), reverse=True)):
        moment = (now - age).astimezone(ZONE).replace(microsecond=0)
        folder = root / f"{moment:%Y/%m/%d}"
        if folder not in made:
            folder.mkdir(parents=True, exist_ok=True)
            made.add(folder)
        extension = str(rng.randrange(201, 240))
        outside = phone_number(rng).replace("+49", "0")
        inbound = rng.random() < 0.6
        kind, dst, src = ("in", extension, outside) if inbound else ("out", outside, extension)
        stamp = f"{moment:%Y%m%d-%H%M%S}"
        uniqueid = f"{int(moment.timestamp())}.{sequence}"
        name = f"{kind}-{dst}-{src}-{stamp}-{uniqueid}.wav"
        write_file(folder / name, AUDIO["wav"], moment.timestamp())
        tree.files += 1
        tree.recordings += 1
        if age > keep:
            tree.expired += 1
            tree.expired_recordings += 1


def census(roots: Sequence[Path], cutoff: float) -> dict[str, int]:
    """Files under the roots, and those among them dated before the cutoff."""
    files = old = 0
    for root in roots:
        stack = [root]
        while stack:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    else:
                        files += 1
                        if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            old += 1
    return {"files": files, "expired": old}


# -- the methods -----------------------------------------------------------------------------


def retentiond_command(
    copy: Path, workdir: Path, keep_days: int, unlink_threads: int | None = None
) -> list[str]:
    extra = {} if unlink_threads is None else {"unlink_threads": unlink_threads}
    config = {
        "version": 1,
        "timezone": str(ZONE),
        "audit": {"path": str(workdir / "audit.jsonl")},
        "rules": [
            {
                "name": "voicemail",
                "keep": f"{keep_days}d",
                "stores": [
                    {"type": "asterisk_voicemail", "root": str(copy / "voicemail"), **extra}
                ],
            },
            {
                "name": "call-recordings",
                "keep": f"{keep_days}d",
                "stores": [
                    {
                        "type": "files",
                        "root": str(copy / "monitor"),
                        "match": ["**/*.wav", "**/*.WAV", "**/*.mp3"],
                        "age_from": "path_date",
                        **extra,
                    }
                ],
            },
        ],
        "safety": {"max_delete_fraction": 1.0},
    }
    path = workdir / "retentiond.yaml"
    path.write_text(common.yaml_config(config))
    return [str(common.RETENTIOND), "-c", str(path), "run", "--once", "--json"]


def expired_list(roots: Sequence[Path], cutoff: float, path: Path) -> int:
    """Write the expired files under the roots, NUL-terminated, to `path`; how many there are.

    Made before the floor's purge and not timed: `xargs rm` then only unlinks.
    """
    count = 0
    with path.open("wb") as out:
        for root in roots:
            stack = [root]
            while stack:
                with os.scandir(stack.pop()) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(Path(entry.path))
                        elif entry.stat(follow_symlinks=False).st_mtime < cutoff:
                            out.write(os.fsencode(entry.path) + b"\0")
                            count += 1
    return count


def command_for(method: str, copy: Path, workdir: Path, keep_days: int, cutoff: float) -> list[str]:
    roots = [str(copy / "voicemail"), str(copy / "monitor")]
    if method == "retentiond":
        return retentiond_command(copy, workdir, keep_days)
    if method == SERIAL:
        return retentiond_command(copy, workdir, keep_days, unlink_threads=1)
    if method == FLOOR:
        listing = workdir / "expired.list"
        expired_list([copy / "voicemail", copy / "monitor"], cutoff, listing)
        return ["xargs", "-0", "-a", str(listing), "rm", "-f", "--"]
    if method == "find":
        # -mtime +N: at least N+1 whole days old; no file is within GAP of keep, so this is keep.
        return ["find", *roots, "-type", "f", "-mtime", f"+{keep_days}", "-delete"]
    return ["tmpreaper", "--mtime", "--runtime=0", f"{keep_days}d", *roots]


def run_method(
    method: str, copy: Path, args: argparse.Namespace, tree: Tree, cutoff: float
) -> dict[str, Any]:
    workdir = copy.parent / f"{method}-work"
    workdir.mkdir()
    roots = [copy / "voicemail", copy / "monitor"]
    command = command_for(method, copy, workdir, args.keep_days, cutoff)
    cold = False if args.warm else common.drop_caches()
    measured = common.measure(command, workdir=workdir)
    result: dict[str, Any] = {"method": method, "cold_cache": cold, **measured.brief()}
    result["load_average"] = common.load_average()  # at the end of the purge
    after = census(roots, cutoff)
    result["files_left"] = after["files"]
    result["files_deleted"] = tree.files - after["files"]
    result["expired_left"] = after["expired"]
    if method.startswith("retentiond"):
        audit = workdir / "audit.jsonl"
        result["audit"] = common.audit_figures(audit) if audit.exists() else None
        try:
            runs = json.loads(measured.stdout)["runs"]
            result["runs"] = [
                {
                    key: run[key]
                    for key in ("rule", "status", "deleted", "seconds", "stores", "message")
                }
                for run in runs
            ]
            del result["stdout"]
        except (ValueError, KeyError):
            pass
    problems = []
    if measured.returncode != 0:
        problems.append(f"exit code {measured.returncode}: {measured.stderr[-500:]}")
    if after["files"] != tree.files - tree.expired:
        problems.append(f"{after['files']:,} files left, {tree.files - tree.expired:,} expected")
    if after["expired"]:
        problems.append(f"{after['expired']:,} expired files left")
    result["problems"] = problems
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000, help="voicemail messages")
    parser.add_argument("--recordings", type=int, default=200_000)
    parser.add_argument("--keep-days", type=int, default=90)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--workdir", type=Path, help="where the trees go (default: a temp dir)")
    parser.add_argument("--warm", action="store_true", help="do not drop the caches before each")
    parser.add_argument("--keep-trees", action="store_true")
    parser.add_argument("--out", type=Path, default=common.RESULTS / f"{NAME}.json")
    args = parser.parse_args(argv)
    methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    if set(methods) - {*METHODS, SERIAL}:
        parser.error(f"methods are {', '.join(METHODS)} (and {SERIAL})")
    if "tmpreaper" in methods and shutil.which("tmpreaper") is None:
        parser.error("tmpreaper is not installed (Debian: apt-get install tmpreaper)")

    keep = timedelta(days=args.keep_days)
    now = datetime.now(ZONE)
    cutoff = (now - keep).timestamp()
    base = Path(tempfile.mkdtemp(prefix="retentiond-bench-files-", dir=args.workdir))
    info = common.machine(base)
    results: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    tree = Tree()
    build_seconds: dict[str, float] = {}
    try:
        print(
            f"building {args.messages:,} messages and {args.recordings:,} recordings per tree ..."
        )
        for method in methods:
            # Each method its own tree, built alike (same seeds, same `now`): faster than cp -a.
            started = time.perf_counter()
            built = Tree()
            build_spool(base / method / "tree" / "voicemail", args.messages, keep, now, built)
            build_recordings(base / method / "tree" / "monitor", args.recordings, keep, now, built)
            build_seconds[method] = round(time.perf_counter() - started, 1)
            tree = built
            tree.seconds = build_seconds[method]
        print(f"  {tree.files:,} files ({tree.expired:,} expired) per tree", flush=True)
        for method in methods:
            copy = base / method / "tree"
            print(f"{method}: built in {build_seconds[method]} s, purging ...", flush=True)
            results[method] = run_method(method, copy, args, tree, cutoff)
            errors.extend(f"{method}: {problem}" for problem in results[method]["problems"])
            if not args.keep_trees:
                shutil.rmtree(copy.parent)
    finally:
        if not args.keep_trees:
            shutil.rmtree(base, ignore_errors=True)

    find_s = results.get("find", {}).get("wall_s")
    walls = {method: result["wall_s"] for method, result in results.items()}
    for result in results.values():
        # Speed ratios (the other's wall time over this one's): above 1 is faster than it.
        result["ratios"] = {
            f"vs_{other}": walls[other] / result["wall_s"]
            for other in ("tmpreaper", "find", FLOOR)
            if other in walls and result["wall_s"] > 0
        }
    rows = []
    for method, result in results.items():
        ratios = result["ratios"]
        rows.append(
            [
                method,
                result["wall_s"],
                result["user_s"],
                result["sys_s"],
                ratios.get("vs_tmpreaper"),
                ratios.get("vs_find"),
                ratios.get(f"vs_{FLOOR}"),
                result["files_deleted"],
                result["files_left"],
                result["peak_rss_mib"],
                result["load_average"][0],
                "ok" if not result["problems"] else "ERROR",
            ]
        )
    print()
    print(
        f"files: {tree.messages:,} voicemail messages + {tree.recordings:,} recordings = "
        f"{tree.files:,} files, {tree.expired:,} expired (keep {args.keep_days}d), "
        f"{'warm' if args.warm else 'cold'} cache"
    )
    print(common.machine_line(info))
    print(
        "vs X: X's wall time over this method's (above 1: faster than X); "
        f"floor: {FLOOR}, the unlinks alone of a list made beforehand"
    )
    print(
        common.table(
            [
                "method",
                "wall s",
                "user s",
                "sys s",
                "vs tmpreaper",
                "vs find",
                "vs floor",
                "deleted",
                "left",
                "peak RSS MiB",
                "load 1m",
                "result",
            ],
            rows,
        )
    )
    targets: dict[str, bool] = {}
    if "retentiond" in results:
        mine = results["retentiond"]
        if find_s:
            targets["wall<=1.5x_find"] = mine["wall_s"] <= TARGET_RATIO * find_s
        if "vs_tmpreaper" in mine["ratios"]:
            targets["speed>=1.0x_tmpreaper"] = mine["ratios"]["vs_tmpreaper"] >= 1.0
        targets["peak_rss<=80MB"] = mine["peak_rss_mib"] * common.MIB <= TARGET_RSS_MIB * 1e6
        print(
            "targets (retentiond): "
            + ", ".join(f"{k}: {common.fmt(v)}" for k, v in targets.items())
        )
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    out = common.write_json(
        args.out,
        {
            "benchmark": NAME,
            "machine": info,
            "parameters": {
                "messages": args.messages,
                "recordings": args.recordings,
                "keep_days": args.keep_days,
                "cold_cache": not args.warm,
            },
            "tree": tree.__dict__,
            "build_seconds": build_seconds,
            "results": results,
            "targets": targets,
            "errors": errors,
        },
    )
    print(f"written {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
