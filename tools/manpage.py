"""Writes retentiond.1, the man page, from the commands' own --help texts.

The Debian package builds it at build time with the packaged venv's Python (debian/rules), so the
page always says what the installed program says; `retentiond COMMAND --help` stays the
reference. Run: `python tools/manpage.py OUT_FILE` (needs retentiond importable).
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from retentiond import __version__
from retentiond.cli.main import cli

PROGRAM = "retentiond"

DESCRIPTION = (
    "retentiond enforces GDPR retention rules on an on-premises phone system (Asterisk, FreePBX, "
    "3CX): call records, recordings and voicemail older than their retention period are deleted "
    "in small batches, and every deletion is written to a hash-chained deletion log that the "
    "data-protection officer can verify. It runs as the systemd service retentiond.service (a "
    "daemon that runs each rule on its schedule) or as retentiond-once.timer (every rule once a "
    "day). The sections below are the --help texts of the commands."
)

EXIT_STATUS = [
    ("0", "done; for check: every store usable; for status: every rule compliant"),
    ("1", "failed (a store, a connection, a broken deletion log for audit verify)"),
    ("2", "the config or the command line is invalid; nothing was done"),
    ("3", "refused by a safety guard (run --once); recorded in the deletion log"),
    ("4", "status: a rule is past its deadline"),
]

FILES = [
    ("/etc/retentiond/retentiond.yaml", "the config (written by the admin: retentiond init)"),
    ("/etc/retentiond/credentials/", "database passwords and the signing key, root only"),
    ("/var/lib/retentiond/audit.jsonl", "the deletion log"),
    ("/opt/retentiond/", "the program and its libraries (a Python venv)"),
]


def escape(text: str) -> str:
    """Text for a troff line: backslashes doubled, no line starting with a control character."""
    lines = []
    for line in text.replace("\\", "\\e").splitlines():
        lines.append(f"\\&{line}" if line.startswith((".", "'")) else line)
    return "\n".join(lines)


def commands(group: click.Group, ctx: click.Context) -> list[tuple[str, click.Context]]:
    """Every command under the group, depth first, each with a context named by its path."""
    found = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = click.Context(command, info_name=name, parent=ctx)
        found.append((sub.command_path, sub))
        if isinstance(command, click.Group):
            found.extend(commands(command, sub))
    return found


def page(built: datetime) -> str:
    # a fixed width: the page does not depend on the terminal that built it
    root = click.Context(
        cli, info_name=PROGRAM, terminal_width=78, max_content_width=78, **cli.context_settings
    )
    out = [
        f'.TH RETENTIOND 1 "{built:%Y-%m-%d}" "retentiond {__version__}" "User Commands"',
        ".SH NAME",
        f"{PROGRAM} \\- GDPR retention enforcement for phone systems, with a deletion log",
        ".SH SYNOPSIS",
        f".B {PROGRAM}",
        "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        escape(DESCRIPTION),
        ".SH OPTIONS",
        ".nf",
        escape(cli.get_help(root)),
        ".fi",
        ".SH COMMANDS",
    ]
    for path, ctx in commands(cli, root):
        out += [f".SS {escape(path)}", ".nf", escape(ctx.command.get_help(ctx)), ".fi"]
    out.append(".SH EXIT STATUS")
    for code, meaning in EXIT_STATUS:
        out += [".TP", code, escape(meaning)]
    out.append(".SH FILES")
    for path, meaning in FILES:
        out += [".TP", f".I {path}", escape(meaning)]
    out += [
        ".SH SEE ALSO",
        ".BR systemctl (1),",
        ".BR journalctl (1),",
        ".BR systemd.exec (5);",
        "/usr/share/doc/retentiond/install.md and the other pages in /usr/share/doc/retentiond/",
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python tools/manpage.py OUT_FILE", file=sys.stderr)
        return 2
    # SOURCE_DATE_EPOCH (set by dpkg-buildpackage from debian/changelog) keeps builds reproducible
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or None
    built = datetime.fromtimestamp(epoch, UTC) if epoch else datetime.now(UTC)
    Path(argv[1]).write_text(page(built), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
