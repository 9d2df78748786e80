"""Configuration: loading, validation with line numbers, durations, schedules."""

from retentiond.config.loader import LoadedConfig, config_path, load_config, parse_config
from retentiond.config.model import (
    AuditConfig,
    Config,
    ConnectionConfig,
    FilesStoreConfig,
    Rule,
    Safety,
    SqlStoreConfig,
    StoreConfig,
)
from retentiond.policy.durations import Duration, parse_duration

__all__ = [
    "AuditConfig",
    "Config",
    "ConnectionConfig",
    "Duration",
    "FilesStoreConfig",
    "LoadedConfig",
    "Rule",
    "Safety",
    "SqlStoreConfig",
    "StoreConfig",
    "config_path",
    "load_config",
    "parse_config",
    "parse_duration",
]
