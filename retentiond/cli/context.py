"""The context every command gets from the main group: the config, loaded when first asked for.

The group's `-c/--config` names the file; `loaded` reads and validates it once, when a command
first needs it (`init` and `demo` never do).
"""

from __future__ import annotations

import click

from retentiond.config.loader import LoadedConfig, config_path, load_config
from retentiond.config.model import Rule


class Context:
    """The group's context object (`pass_context`): the config file named, loaded once."""

    def __init__(self, config_option: str | None) -> None:
        self.config_option = config_option
        self._loaded: LoadedConfig | None = None

    @property
    def loaded(self) -> LoadedConfig:
        if self._loaded is None:
            self._loaded = load_config(config_path(self.config_option))
        return self._loaded


pass_context = click.make_pass_decorator(Context)


def rules_named(loaded: LoadedConfig, rule_name: str | None) -> list[Rule]:
    """The rule `--rule` names, or every rule without it."""
    rules = loaded.config.rules
    if rule_name is None:
        return list(rules)
    chosen = [r for r in rules if r.name == rule_name]
    if not chosen:
        names = ", ".join(r.name for r in rules)
        raise click.BadParameter(
            f"no rule named {rule_name!r} (rules: {names})", param_hint="--rule"
        )
    return chosen
