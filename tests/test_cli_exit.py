"""How the `retentiond` process ends (`cli.main.leave`): as `sys.exit` would, less the
interpreter's teardown, which cost 0.3 s of CPU after every `run --once`.

Each test runs a real process: `leave` ends the process it runs in. The exit codes, the JSON
and the deletion log of real commands are in test_cli.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Registers what a normal exit would do (an atexit handler, a finalizer at teardown, a thread
# still writing), then runs the command with the given arguments.
SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from retentiond.cli.main import _main, leave, main

folder, mode = Path(sys.argv[1]), sys.argv[2]
atexit.register(lambda: (folder / "atexit").write_text("ran"))

class Teardown:
    def __del__(self):
        (folder / "teardown").write_text("ran")

kept = Teardown()
if mode == "thread":
    def late():
        time.sleep(0.3)
        (folder / "thread").write_text("ran")
    threading.Thread(target=late).start()
if mode == "message":
    leave("a message instead of a code")
sys.argv = ["retentiond", *sys.argv[3:]]
if mode == "normal":
    _main()  # the normal exit, teardown and all
    sys.exit(0)
main()
"""


def run(folder: Path, mode: str, *args: str) -> subprocess.CompletedProcess[str]:
    folder.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(folder), mode, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_output_and_the_atexit_handlers_survive_the_skipped_teardown(tmp_path: Path) -> None:
    done = run(tmp_path, "plain", "--help")
    assert done.returncode == 0, done.stderr
    # All of it, flushed into the pipe before the process ended, as with the normal exit
    assert done.stdout == run(tmp_path / "normal", "normal", "--help").stdout
    assert "Usage: retentiond" in done.stdout
    assert (tmp_path / "atexit").read_text() == "ran"
    # The interpreter did not free the modules' objects: no finalizer ran
    assert not (tmp_path / "teardown").exists()


def test_an_exit_code_is_kept(tmp_path: Path) -> None:
    done = run(tmp_path, "plain", "-c", str(tmp_path / "missing.yaml"), "run", "--once")
    assert done.returncode == 2
    assert "the config has errors; nothing was done" in done.stderr
    assert (tmp_path / "atexit").read_text() == "ran"


def test_a_message_is_printed_and_exits_1(tmp_path: Path) -> None:
    done = run(tmp_path, "message")
    assert done.returncode == 1
    assert done.stderr.strip() == "a message instead of a code"


def test_a_thread_still_running_is_waited_for(tmp_path: Path) -> None:
    done = run(tmp_path, "thread", "--version")
    assert done.returncode == 0, done.stderr
    assert "retentiond" in done.stdout
    assert (tmp_path / "thread").read_text() == "ran"
    # The normal exit, teardown and all
    assert (tmp_path / "teardown").read_text() == "ran"
