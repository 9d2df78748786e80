"""What a preset is made of: rule templates, whose stores are config entries with the columns
that name a party and the transforms the rule gets only when it anonymizes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TRANSFORMS = "_anonymize"  # a template store's transforms, used only when the rule anonymizes
# The audio files of a call recordings folder (FreePBX, Asterisk)
RECORDING_PATTERNS = ["**/*.wav", "**/*.WAV", "**/*.mp3", "**/*.gsm", "**/*.ogg", "**/*.opus"]


@dataclass(frozen=True)
class RuleTemplate:
    name: str
    description: str
    purpose: str
    schedule: str
    stores: list[dict[str, Any]]
    required: bool = True  # must the user give it a keep (or `off`)?


def people(subjects: list[str], transforms: dict[str, Any]) -> dict[str, Any]:
    return {"subject_columns": list(subjects), TRANSFORMS: transforms}


def required(name: str, templates: list[RuleTemplate]) -> bool:
    return any(t.name == name and t.required for t in templates)


def sql_store(
    connection: str, table: str, time_column: str, *, optional: bool = False
) -> dict[str, Any]:
    store: dict[str, Any] = {
        "type": "sql",
        "connection": connection,
        "table": table,
        "time_column": time_column,
    }
    if optional:
        store["optional"] = True
    return store
