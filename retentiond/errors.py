"""Errors a user can cause. Each message says what to change; tracebacks are for bugs only."""

from __future__ import annotations

from dataclasses import dataclass


class RetentiondError(Exception):
    """Base for every error the user can fix. `exit_code` follows DESIGN.md's command table."""

    exit_code = 1


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the config: where it is and what to change."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(RetentiondError):
    """The config cannot be used. Carries every problem found, not only the first."""

    exit_code = 2

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class StoreError(RetentiondError):
    """A store cannot be reached, is not what the config says, or failed during a run."""


class StoreAbsent(StoreError):
    """The store's table, file or folder does not exist (as opposed to existing but unusable).
    For a store marked `optional`, the engine reports this and carries on without it."""


class AuditError(RetentiondError):
    """The audit log cannot be written or read; nothing may be deleted without it."""
