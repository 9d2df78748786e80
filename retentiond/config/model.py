"""The configuration schema (version 1): one source of truth for validation, `check` and docs."""

from __future__ import annotations

import re
from datetime import tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
)

from retentiond.config.durations import Duration, parse_duration
from retentiond.config.schedule import Schedule, parse_schedule

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
IDENTIFIER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_$]{0,63}$"


def _duration(value: Any) -> Duration:
    if isinstance(value, Duration):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"{value} has no unit: write e.g. '{value}d' or '{value} months'")
    if not isinstance(value, str):
        raise ValueError("expected a period such as '90d' or '3 months'")
    duration = parse_duration(value)
    if duration.is_zero():
        raise ValueError("a retention period must be longer than zero")
    return duration


def _schedule(value: Any) -> Schedule:
    if isinstance(value, Schedule):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a schedule such as 'daily 03:15'")
    return parse_schedule(value)


def _absolute_path(value: Any) -> Path:
    if isinstance(value, Path):
        path = value
    elif isinstance(value, str) and value.strip():
        path = Path(value)
    else:
        raise ValueError("expected a path")
    if not path.is_absolute():
        raise ValueError(f"{str(path)!r} is not absolute; write the full path starting with /")
    return path


def _zone(value: Any) -> ZoneInfo:
    if isinstance(value, ZoneInfo):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a time zone name such as 'Europe/Berlin'")
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{value!r} is not a time zone; use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None


def _not_yet(feature: str) -> Any:
    def check(value: Any) -> Any:
        if value is not None:
            raise ValueError(
                f"{feature} is not available in this version of retentiond; remove this key. "
                "retentiond refuses to start rather than ignore it"
            )
        return value

    return check


DurationField = Annotated[Duration, BeforeValidator(_duration), PlainSerializer(str)]
ScheduleField = Annotated[Schedule, BeforeValidator(_schedule), PlainSerializer(lambda s: s.text)]
AbsolutePath = Annotated[Path, BeforeValidator(_absolute_path)]
Seconds = Annotated[float, Field(ge=0, le=3600)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AuditConfig(Strict):
    path: AbsolutePath
    signing_key: Annotated[
        Any, AfterValidator(_not_yet("audit.signing_key (signed checkpoints)"))
    ] = None


class ConnectionConfig(Strict):
    url: Annotated[str, Field(min_length=1)]
    password_file: AbsolutePath | None = None
    lock_timeout: Annotated[float, Field(gt=0, le=600)] = 5
    statement_timeout: Annotated[float, Field(gt=0, le=86400)] = 300
    connect_timeout: Annotated[float, Field(gt=0, le=600)] = 10
    retries: Annotated[int, Field(ge=0, le=20)] = 5


class SqlStoreConfig(Strict):
    type: Literal["sql"]
    connection: Annotated[str, Field(min_length=1)]
    table: Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]
    schema_name: Annotated[str | None, Field(alias="schema", pattern=IDENTIFIER_PATTERN)] = None
    time_column: Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 1000
    pause: Annotated[float, Field(ge=0, le=60)] = 0

    @property
    def label(self) -> str:
        table = f"{self.schema_name}.{self.table}" if self.schema_name else self.table
        return f"{self.connection}/{table}"


class FilesStoreConfig(Strict):
    type: Literal["files"]
    root: AbsolutePath
    match: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] = ["**/*"]
    age_from: Literal["path_date", "filename_date", "mtime"] = "mtime"
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 500
    pause: Annotated[float, Field(ge=0, le=60)] = 0

    @property
    def label(self) -> str:
        return str(self.root)


StoreConfig = Annotated[SqlStoreConfig | FilesStoreConfig, Field(discriminator="type")]


class Rule(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: str | None = None
    purpose: str | None = None
    legal_basis: str | None = None
    keep: DurationField
    action: Literal["delete"] = "delete"
    schedule: ScheduleField | None = None
    stores: Annotated[list[StoreConfig], Field(min_length=1)]


class Safety(Strict):
    max_delete_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5
    max_clock_skew: Annotated[float, Field(gt=0, le=86400)] = 300


class Config(Strict):
    version: Literal[1]
    timezone: Annotated[
        ZoneInfo | None, BeforeValidator(lambda v: None if v is None else _zone(v))
    ] = None
    audit: AuditConfig
    connections: dict[Annotated[str, Field(pattern=NAME_PATTERN)], ConnectionConfig] = {}
    rules: Annotated[list[Rule], Field(min_length=1)]
    safety: Safety = Safety()
    holds: Annotated[Any, AfterValidator(_not_yet("holds (legal holds)"))] = None
    preset: Annotated[Any, AfterValidator(_not_yet("preset"))] = None
    organisation: Annotated[Any, AfterValidator(_not_yet("organisation"))] = None

    def zone(self) -> tzinfo:
        """The zone of naive PBX timestamps: the configured one, else the host's."""
        if self.timezone is not None:
            return self.timezone
        return host_zone()

    def rule(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)


def host_zone() -> tzinfo:
    """The host's zone from /etc/localtime or $TZ, as a ZoneInfo when it can be named."""
    import os

    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    localtime = Path("/etc/localtime")
    try:
        target = str(localtime.resolve())
        match = re.search(r"zoneinfo/(.+)$", target)
        if match:
            return ZoneInfo(match.group(1))
        with localtime.open("rb") as handle:
            return ZoneInfo.from_file(handle)
    except (OSError, ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")
