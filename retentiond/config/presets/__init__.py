"""Presets: a known PBX's stores, found from its own settings, from three lines of YAML.

    version: 1
    preset: freepbx
    keep: {call-records: 3 months, voicemail: 60d, call-recordings: 30d}
    anonymize: {call-records: 2 years}   # optional: anonymize after keep, delete after 2 years

`anonymize:` turns a rule of call records into `action: anonymize` with the preset's transforms
for every table of the rule (`never` instead of a period keeps the anonymized records). Stores
also name the columns that hold numbers (`subject_columns`), so holds by number and
`erase`/`find` work without more configuration.

`expand()` turns that into the full config (connections and rules) before validation, so a
preset config is checked exactly like a hand-written one, and `retentiond init` prints the
same expansion for review. Stores a PBX has only in some installs are marked optional: `check`
and `plan` say which were found and which were not.

A module per PBX (`freepbx`, `asterisk`, `threecx`) turns its settings into connections and rule
templates (`templates`); what names a party and how each field is anonymized is data
(`transforms`). A new PBX is one module and one entry in EXPANDERS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from retentiond.config.model import parse_keep
from retentiond.config.presets import asterisk, freepbx, threecx
from retentiond.config.presets.templates import TRANSFORMS, RuleTemplate, required

PRESETS = ("freepbx", "asterisk", "3cx")
OFF = "off"  # `keep: {voicemail: off}` leaves a preset rule out, visibly
NEVER = "never"  # `anonymize: {call-records: never}`: keep the anonymized records


@dataclass(frozen=True)
class PresetProblem:
    path: tuple[str | int, ...]
    message: str


class PresetError(Exception):
    def __init__(self, problems: list[PresetProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(p.message for p in problems))


EXPANDERS: dict[
    str, Callable[[dict[str, Any]], tuple[dict[str, Any], list[RuleTemplate], str | None]]
] = {"freepbx": freepbx.expand, "asterisk": asterisk.expand, "3cx": threecx.expand}


def expand(data: dict[str, Any]) -> dict[str, Any]:
    """The config with its preset expanded into connections and rules; unchanged without one."""
    preset = data.get("preset")
    if preset is None:
        return data
    if not isinstance(preset, str) or preset not in EXPANDERS:
        raise PresetError(
            [
                PresetProblem(
                    ("preset",), f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}"
                )
            ]
        )
    settings = data.get("preset_settings") or {}
    if not isinstance(settings, dict):
        raise PresetError([PresetProblem(("preset_settings",), "expected a mapping of settings")])
    problems = [
        PresetProblem((key,), f"{message}; with a preset it adds to the preset's {key}")
        for key, kind, message in (
            ("connections", dict, "expected a mapping of connection names"),
            ("rules", list, "expected a list of rules"),
        )
        if data.get(key) is not None and not isinstance(data[key], kind)
    ]
    if problems:
        raise PresetError(problems)
    connections, templates, timezone = EXPANDERS[preset](settings)
    keep = data.get("keep")
    problems = _keep_problems(preset, keep, templates)
    if problems:
        raise PresetError(problems)
    assert isinstance(keep, dict)  # checked above
    anonymize = data.get("anonymize") or {}
    problems = _anonymize_problems(anonymize, templates)
    if problems:
        raise PresetError(problems)
    rules = [
        _rule(t, keep[t.name], anonymize.get(t.name))
        for t in templates
        if t.name in keep and keep[t.name] != OFF
    ]
    dropped = ("preset", "preset_settings", "keep", "anonymize")
    expanded = {k: v for k, v in data.items() if k not in dropped}
    user_connections = expanded.get("connections") or {}
    expanded["connections"] = {**connections, **user_connections}
    expanded["rules"] = rules + list(expanded.get("rules") or [])
    if timezone and "timezone" not in expanded:
        expanded["timezone"] = timezone
    return expanded


def _keep_problems(preset: str, keep: Any, templates: list[RuleTemplate]) -> list[PresetProblem]:
    names = [t.name for t in templates]
    if not isinstance(keep, dict):
        wanted = ", ".join(f"{n}: 3 months" for n in names if required(n, templates))
        return [PresetProblem(("keep",), f"preset {preset} needs keep: {{{wanted}}}")]
    problems = [
        PresetProblem(
            ("keep", key), f"preset {preset} has no rule {key!r} (rules: {', '.join(names)})"
        )
        for key in keep
        if key not in names
    ]
    for key, value in keep.items():
        if key in names and value != OFF:
            try:
                parse_keep(value)
            except ValueError as error:
                problems.append(PresetProblem(("keep", key), str(error)))
    problems += [
        PresetProblem(
            ("keep",),
            f"keep has no period for {name!r}; give one, or write `{name}: off` to leave it out",
        )
        for name in names
        if name not in keep and required(name, templates)
    ]
    return problems


def _rule(template: RuleTemplate, keep: Any, anonymize: Any) -> dict[str, Any]:
    """One rule from its template: the transforms go in only when the rule anonymizes."""
    stores = []
    for store in template.stores:
        transforms = store.get(TRANSFORMS)
        store = {k: v for k, v in store.items() if k != TRANSFORMS}
        if anonymize is not None and transforms:
            store["anonymize"] = dict(transforms)
        stores.append(store)
    rule: dict[str, Any] = {
        "name": template.name,
        "description": template.description,
        "purpose": template.purpose,
        "keep": keep,
    }
    if anonymize is not None:
        rule["action"] = "anonymize"
        if anonymize != NEVER:
            rule["then_delete_after"] = anonymize
    return rule | {"schedule": template.schedule, "stores": stores}


def _anonymize_problems(anonymize: Any, templates: list[RuleTemplate]) -> list[PresetProblem]:
    if not isinstance(anonymize, dict):
        return [
            PresetProblem(
                ("anonymize",), "expected a mapping such as {call-records: 2 years} (or never)"
            )
        ]
    problems = []
    for name, after in anonymize.items():
        template = next((t for t in templates if t.name == name), None)
        if template is None or not all(TRANSFORMS in store for store in template.stores):
            can = [t.name for t in templates if all(TRANSFORMS in s for s in t.stores)]
            problems.append(
                PresetProblem(
                    ("anonymize", name),
                    f"{name!r} cannot be anonymized with this preset (only: {', '.join(can)}); "
                    "voice recordings and voicemail are deleted",
                )
            )
            continue
        if after != NEVER:
            try:
                parse_keep(after)
            except ValueError as error:
                problems.append(
                    PresetProblem(("anonymize", name), f"{error}, or never to keep them")
                )
    return problems
