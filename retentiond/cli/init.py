"""`retentiond init`: write the expanded, commented config of a preset for review."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from retentiond.cli.output import fail
from retentiond.config.init import render


@click.command()
@click.option(
    "--preset",
    required=True,
    type=click.Choice(["freepbx", "asterisk", "3cx"]),
    help="The PBX to write a config for.",
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="A preset setting, e.g. --set freepbx_conf=/etc/freepbx.conf (repeatable).",
)
@click.option(
    "--keep", "periods", multiple=True, metavar="RULE=PERIOD", help="e.g. --keep voicemail=30d"
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write here instead of standard output; an existing file is never overwritten.",
)
def init(
    preset: str, assignments: tuple[str, ...], periods: tuple[str, ...], output: Path | None
) -> None:
    """Write the expanded, commented config of a preset for review."""
    settings: dict[str, Any] = dict(_pairs(assignments, "--set"))
    for key, value in settings.items():
        if value.lower() in ("true", "false"):
            settings[key] = value.lower() == "true"
    text = render(preset, settings, dict(_pairs(periods, "--keep")))
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with output.open("x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        fail(f"{output} exists; choose another file or remove it first", 2)
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror}", 1)
    click.echo(f"wrote {output}; review it, then: retentiond -c {output} check", err=True)


def _pairs(items: tuple[str, ...], option: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        pairs.append((key.strip(), value.strip()))
    return pairs
