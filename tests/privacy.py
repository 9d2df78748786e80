"""Checks that personal data from a fixture does not show up in logs, output or the audit log."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

# Long values (numbers, names, uniqueids, file names) are searched anywhere. Short ones
# (extensions like 1002) only as whole words inside texts: a count of 1002 is not an extension.
SHORT = 6


def leaked(
    personal: Iterable[str],
    *,
    texts: Iterable[str] = (),
    jsonl: Iterable[str] = (),
    documents: Iterable[str] = (),
) -> list[str]:
    """The personal values found in plain `texts`, in JSON-lines texts (`jsonl`, e.g. the audit
    log or the daemon's log, with or without a syslog prefix) or in whole JSON `documents`."""
    values = {v for v in personal if v}
    strings: list[str] = []
    for document in documents:
        strings += _strings(json.loads(document))
    for document in jsonl:
        for line in document.splitlines():
            line = line.strip()
            if line.startswith("<") and ">" in line[:4]:
                line = line[line.index(">") + 1 :]  # syslog priority prefix
            if line:
                strings += _strings(json.loads(line))
    haystack = "\n".join([*texts, *strings])
    words = {w for s in strings for w in re.findall(r"[\w+.@-]+", s)}
    return sorted(v for v in values if (v in haystack if len(v) >= SHORT else v in words))


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in [str(k), *_strings(v)]]
    if isinstance(value, list):
        return [t for v in value for t in _strings(v)]
    return []
