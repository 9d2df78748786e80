"""The configuration schema (version 1): one source of truth for validation, `check` and docs."""

from __future__ import annotations

import re
from datetime import date, tzinfo
from functools import cache
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
    ValidationInfo,
    field_validator,
    model_validator,
)

from retentiond.config.dburl import check_database_url
from retentiond.config.globs import check_match
from retentiond.config.roots import refuse_system_root
from retentiond.i18n import DEFAULT, Language
from retentiond.policy.anonymize import Transform, parse_transform
from retentiond.policy.durations import Duration, parse_duration
from retentiond.policy.schedule import Schedule, parse_schedule
from retentiond.policy.subjects import (
    Subject,
    SubjectError,
    extension_form,
    named_in,
    number_forms,
)

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
HOLD_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
IDENTIFIER_PATTERN = r"^[A-Za-z_][A-Za-z0-9_$]{0,63}$"
# The validation context key under which the loader passes the config's rule names, so that a
# hold naming another rule is an error at its own `rules:` line (in the config or a hold file).
HOLD_RULE_NAMES = "rule_names"


def parse_keep(value: Any) -> Duration:
    """A retention period from YAML; ValueError says what to write instead."""
    return _duration(value)


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
    if "\0" in str(path):
        raise ValueError("a path cannot contain a NUL character")
    return path


def _store_root(value: Path, info: ValidationInfo) -> Path:
    # allow_system_root is declared before the roots, so it is validated first.
    return refuse_system_root(value, info.data.get("allow_system_root") is True)


def _zone(value: Any) -> ZoneInfo:
    if isinstance(value, ZoneInfo):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a time zone name such as 'Europe/Berlin'")
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder such as Europe
        raise ValueError(
            f"{value!r} is not a time zone; use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None


def _prom_file(value: Path | None) -> Path | None:
    if value is not None and value.suffix != ".prom":
        raise ValueError("node_exporter reads only files ending in .prom")
    return value


def _date(value: Any) -> date:
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError("expected a date as YYYY-MM-DD, e.g. 2027-01-31")


def _transforms(value: Any) -> Any:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise ValueError("expected a mapping of field: transform, e.g. {src: truncate_digits}")
    return {str(k): parse_transform(v) for k, v in value.items()}


def _number(value: Any) -> str:
    """A hold's phone number: quoted text in international form, matchable in the stores' forms.

    A hold is legal protection: a number YAML read as an integer (`+4930...` and `0049...`
    unquoted lose their + or 0) would hold nothing, so only text is accepted."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(_read_as_number("'+4930123456'"))
    if not isinstance(value, str):
        raise ValueError("write the number in quotes in international form, e.g. '+4930123456'")
    try:
        number_forms(value)
    except SubjectError as error:
        raise ValueError(str(error)) from None
    return value


def _extension(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(_read_as_number("'1001'"))
    if not isinstance(value, str):
        raise ValueError("write the extension in quotes, e.g. '1001'")
    if value.strip().startswith("+"):
        raise ValueError(
            "an extension does not start with +; an external number goes under numbers:, "
            "where it is matched in every form a PBX stores it"
        )
    try:
        return extension_form(value)
    except SubjectError as error:
        raise ValueError(str(error)) from None


def _read_as_number(example: str) -> str:
    # Never the value itself: config errors go to the journal, and this one is a phone number
    return (
        f"must be quoted text like {example}: YAML read it as a number, which drops a "
        "leading + or 0, so the hold would match nothing"
    )


DurationField = Annotated[Duration, BeforeValidator(_duration), PlainSerializer(str)]
ScheduleField = Annotated[Schedule, BeforeValidator(_schedule), PlainSerializer(lambda s: s.text)]
AbsolutePath = Annotated[Path, BeforeValidator(_absolute_path)]
# A folder a store deletes in: never a system folder unless the store says allow_system_root.
StoreRoot = Annotated[Path, BeforeValidator(_absolute_path), AfterValidator(_store_root)]
Seconds = Annotated[float, Field(ge=0, le=3600)]
DateField = Annotated[date, BeforeValidator(_date)]
Transforms = Annotated[dict[str, Transform] | None, BeforeValidator(_transforms)]
Identifier = Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]
# A files store's glob, relative to its root (`**/*.{wav,mp3}`); one that cannot match is refused.
MatchPattern = Annotated[str, Field(min_length=1), AfterValidator(check_match)]


class Strict(BaseModel):
    # allow_inf_nan: `.inf` and `.nan` are YAML floats, but no limit or timeout means either
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        arbitrary_types_allowed=True,
        allow_inf_nan=False,
    )


class AuditConfig(Strict):
    path: AbsolutePath
    # Ed25519 private key (`retentiond audit keygen`): every run ends with a signed checkpoint.
    signing_key: AbsolutePath | None = None
    # Start a new file (chained to the last head) when the log grows past this many bytes, or at
    # the turn of the year; rotated files are kept as `<path>.<n>` and verified in order.
    rotate_bytes: Annotated[int | None, Field(ge=1_000_000)] = None
    rotate_yearly: bool = False
    # How long the deletion log itself is kept (documented in the report; rotated files older
    # than this may be removed by the administrator once filed).
    retention: DurationField | None = None


class ConnectionConfig(Strict):
    url: Annotated[str, Field(min_length=1), AfterValidator(check_database_url)]
    password_file: AbsolutePath | None = None
    # A FreePBX freepbx.conf, a 3CX 3CXPhoneSystem.ini or config.json: the password is read from
    # the PBX's own file.
    password_from: AbsolutePath | None = None
    lock_timeout: Annotated[float, Field(gt=0, le=600)] = 5
    statement_timeout: Annotated[float, Field(gt=0, le=86400)] = 300
    connect_timeout: Annotated[float, Field(gt=0, le=600)] = 10
    retries: Annotated[int, Field(ge=0, le=20)] = 5


class StoreBase(Strict):
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 1000
    pause: Annotated[float, Field(ge=0, le=60)] = 0
    # An optional store that does not exist (table, file, folder) is reported and skipped;
    # presets mark the places a PBX has only in some installs (transient_cdr, Master.csv).
    optional: bool = False
    # The share of this store's objects that may have no readable date (never deleted) before
    # the store fails; default: safety.max_undated_fraction.
    max_undated_fraction: Annotated[float | None, Field(ge=0, le=1)] = None


class RootedStoreBase(StoreBase):
    # A root that is, contains or lies in a system folder (config/roots.py) is an error
    # unless this says it is meant; `check` then shows it as a warning. Declared before
    # `root`, so that it is validated first.
    allow_system_root: bool = False


class SqlStoreConfig(StoreBase):
    type: Literal["sql"]
    connection: Annotated[str, Field(min_length=1)]
    table: Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]
    schema_name: Annotated[str | None, Field(alias="schema", pattern=IDENTIFIER_PATTERN)] = None
    time_column: Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]
    # Rows that name a file (3CX `recordings.recording_url`): the file under `file_root` is
    # deleted together with its row.
    file_column: Annotated[str | None, Field(pattern=IDENTIFIER_PATTERN)] = None
    # As a files store's (RootedStoreBase), for file_root; declared before it.
    allow_system_root: bool = False
    file_root: StoreRoot | None = None
    # Columns that hold a person's number or extension (FreePBX cdr: src, dst, cnum, did), or a
    # caller id with it inside `<...>` (clid: `"Alice" <+4930123456>`): holds by number and
    # `erase`/`find` match them. Without any, a hold by number holds every row of its time
    # window, and `erase` cannot search this table.
    subject_columns: list[Identifier] = []
    # The file names in file_column carry the numbers of the call (3CX recording_url:
    # <ext>/[Name]_<ext>-<number>_<time>(<n>).wav): holds by number and `erase`/`find` also
    # match the parts of the file's name, as a files store's subject_in_name does.
    subject_in_file_name: bool = False
    # `action: anonymize`: the transform of each column (see docs/anonymization.md)
    anonymize: Transforms = None
    # Without batch_size, the rows per batch adapt so each batch's transaction takes about this
    # many seconds (default 0.2; 0.5 where batches walk the primary key of a row-locking table
    # without an index on the time column; 0.02 where a DELETE locks the table: MyISAM, Aria,
    # SQLite).
    batch_time: Annotated[float | None, Field(gt=0, le=10, allow_inf_nan=False)] = None

    @model_validator(mode="after")
    def _fixed_or_adaptive(self) -> SqlStoreConfig:
        if self.batch_time is not None and "batch_size" in self.model_fields_set:
            raise ValueError(
                "batch_size fixes the rows per batch and batch_time adapts them to a duration: "
                "set one of the two"
            )
        return self

    @model_validator(mode="after")
    def _files_need_both(self) -> SqlStoreConfig:
        if (self.file_column is None) != (self.file_root is None):
            raise ValueError("file_column and file_root go together: set both or neither")
        if self.allow_system_root and self.file_root is None:
            raise ValueError("allow_system_root goes with file_root: set file_root or leave it out")
        if self.subject_in_file_name and self.file_column is None:
            raise ValueError(
                "subject_in_file_name matches the file names of file_column: set file_column "
                "(and file_root) to the column naming each row's file, or leave it out"
            )
        return self

    @property
    def label(self) -> str:
        table = f"{self.schema_name}.{self.table}" if self.schema_name else self.table
        return f"{self.connection}/{table}"


class ReferencesConfig(Strict):
    """Rows that name a file by its base name (FreePBX `cdr.recordingfile`): cleared when the
    file is deleted before its row, so the PBX shows no broken links."""

    connection: Annotated[str, Field(min_length=1)]
    table: Annotated[str, Field(pattern=IDENTIFIER_PATTERN)] = "cdr"
    column: Annotated[str, Field(pattern=IDENTIFIER_PATTERN)] = "recordingfile"


class FilesStoreConfig(RootedStoreBase):
    type: Literal["files"]
    root: StoreRoot
    match: Annotated[list[MatchPattern], Field(min_length=1)] = ["**/*"]
    age_from: Literal["path_date", "filename_date", "mtime"] = "mtime"
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 500
    # Files checked and unlinked at once in a batch (fs/overlap.py): a cold disk's waits overlap.
    unlink_threads: Annotated[int, Field(ge=1, le=16)] = 4
    # Files that differ only in their extension (a .mp3 converted from a .wav) go together.
    group_siblings: bool = False
    references: ReferencesConfig | None = None
    # Rows that name files by their path relative to root (3CX `recordings.recording_url`):
    # the files they name belong to the store that purges those rows, so this store, sweeping
    # orphans, leaves them alone and counts them as `named_by_row`.
    named_by: ReferencesConfig | None = None
    # The file names carry the numbers of the call (FreePBX: out-<dst>-<src>-<date>-...):
    # holds by number and `erase`/`find` match the name's parts. Without it, a hold by number
    # holds every file of its time window.
    subject_in_name: bool = False

    @property
    def label(self) -> str:
        return str(self.root)


class AmiConfig(Strict):
    """Asterisk manager interface, used only to refresh message-waiting lamps after deletion."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 5038
    username: Annotated[str, Field(min_length=1)]
    secret_file: AbsolutePath | None = None  # else $CREDENTIALS_DIRECTORY/ami
    timeout: Annotated[float, Field(gt=0, le=60)] = 5


class VoicemailStoreConfig(RootedStoreBase):
    type: Literal["asterisk_voicemail"]
    root: StoreRoot  # /var/spool/asterisk/voicemail
    lock_mode: Literal["lockfile", "flock"] = "lockfile"  # asterisk.conf `lockmode`
    lock_wait: Annotated[float, Field(gt=0, le=5)] = 1.0  # seconds to wait for a folder lock
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 200  # messages
    # Messages of one folder checked and unlinked at once under its lock (fs/overlap.py).
    unlink_threads: Annotated[int, Field(ge=1, le=16)] = 4
    ami: AmiConfig | None = None

    @property
    def label(self) -> str:
        return str(self.root)


class CsvStoreConfig(RootedStoreBase):
    type: Literal["csv"]
    root: StoreRoot  # /var/log/asterisk/cdr-csv
    match: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] = ["*.csv"]
    time_field: Annotated[int, Field(ge=0, le=200)] = 9  # 0-based; cdr_csv writes `start` tenth
    time_format: Annotated[str, Field(min_length=2)] = "%Y-%m-%d %H:%M:%S"
    # 0-based fields that hold numbers or caller ids (cdr_csv: src, dst, clid)
    subject_fields: list[Annotated[int, Field(ge=0, le=200)]] = [1, 2, 4]
    # `action: anonymize`: the transform of each field, keyed by its 0-based position
    anonymize: Transforms = None

    @field_validator("match")
    @classmethod
    def _names_in_the_root(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if "/" in pattern.strip("/"):
                raise ValueError(
                    f"match pattern {pattern!r} names a subfolder; a csv store reads only the "
                    "files directly in its root, as cdr_csv writes them: give the file names "
                    "alone (e.g. Master.csv) and a store per folder"
                )
        return patterns

    @model_validator(mode="after")
    def _fields_are_positions(self) -> CsvStoreConfig:
        for key in self.anonymize or {}:
            if not key.isdigit():
                raise ValueError(
                    f"csv fields are named by their 0-based position, not {key!r} (src is 1)"
                )
        return self

    @property
    def label(self) -> str:
        return str(self.root)


class ThreeCxCallsStoreConfig(StoreBase):
    """3CX v18/v20 call history on PostgreSQL: `cl_*` tables or `cdroutput`, found at start."""

    type: Literal["3cx_call_history"]
    connection: Annotated[str, Field(min_length=1)]
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 500  # calls
    # `action: anonymize`: transforms keyed `table.column` (the 3cx preset fills them in)
    anonymize: Transforms = None

    @property
    def label(self) -> str:
        return f"{self.connection}/3cx-call-history"


STORE_TYPES = ("sql", "files", "asterisk_voicemail", "csv", "3cx_call_history")

StoreConfig = Annotated[
    SqlStoreConfig
    | FilesStoreConfig
    | VoicemailStoreConfig
    | CsvStoreConfig
    | ThreeCxCallsStoreConfig,
    Field(discriminator="type"),
]


def _http_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value


class PingConfig(Strict):
    """URLs called when a run starts, succeeds or fails (healthchecks.io style)."""

    start: Annotated[str | None, AfterValidator(_http_url)] = None
    success: Annotated[str | None, AfterValidator(_http_url)] = None
    failure: Annotated[str | None, AfterValidator(_http_url)] = None


def _ping(value: Any) -> Any:
    """A plain URL means healthchecks.io's scheme: URL/start, URL, URL/fail."""
    if isinstance(value, str):
        base = value.rstrip("/")
        return {"start": f"{base}/start", "success": base, "failure": f"{base}/fail"}
    return value


class Rule(Strict):
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    # what starts the period; version 1 knows the object's own business time only
    start_event: Literal["object time"] = "object time"
    description: str | None = None
    purpose: str | None = None
    legal_basis: str | None = None
    keep: DurationField
    action: Literal["delete", "anonymize"] = "delete"
    # Two stages: anonymize after `keep`, delete after this (counted from the object's time)
    then_delete_after: DurationField | None = None
    # A floor against typos (`keep: 3d` for `3m`): a shorter keep is refused unless forced
    min_keep: DurationField | None = None
    # Anonymized data is called anonymous in the report only if every group of equal
    # anonymized values holds at least this many records; else "pseudonymized".
    k_anonymity: Annotated[int, Field(ge=2, le=1000)] = 5
    schedule: ScheduleField | None = None
    stores: Annotated[list[StoreConfig], Field(min_length=1)]
    ping: Annotated[PingConfig | None, BeforeValidator(_ping)] = None

    @model_validator(mode="after")
    def _stages(self) -> Rule:
        if self.then_delete_after is not None:
            if self.action != "anonymize":
                raise ValueError("then_delete_after goes with action: anonymize")
            if not self.keep.shorter_than(self.then_delete_after):
                raise ValueError(
                    "then_delete_after must be longer than keep: records are anonymized "
                    "after keep and deleted after then_delete_after"
                )
        if self.action == "anonymize":
            for position, store in enumerate(self.stores):
                if not isinstance(store, SqlStoreConfig | CsvStoreConfig | ThreeCxCallsStoreConfig):
                    raise ValueError(
                        f"stores.{position} ({store.type}) cannot be anonymized: voicemail and "
                        "recordings are the voice itself. Put them in a rule with action: delete"
                    )
                if not store.anonymize:
                    raise ValueError(
                        f"stores.{position} ({store.label}) has no anonymize: transforms; "
                        "say how each personal field is anonymized (docs/anonymization.md)"
                    )
        return self


class HoldConfig(Strict):
    """A legal hold: what it covers, why, who approved it, when it is reviewed and ends."""

    id: Annotated[str, Field(pattern=HOLD_ID_PATTERN)]
    reason: Annotated[str, Field(min_length=1)]
    approved_by: Annotated[str, Field(min_length=1)]
    review_by: DateField
    until: DateField | None = None
    rules: Annotated[list[str] | None, Field(min_length=1)] = None  # None: every rule
    from_: Annotated[DateField | None, Field(alias="from")] = None
    to: DateField | None = None
    numbers: list[Annotated[str, BeforeValidator(_number)]] = []
    extensions: list[Annotated[str, BeforeValidator(_extension)]] = []

    # merged with Strict's: also accepted by the field's own name, not only its alias
    model_config = ConfigDict(populate_by_name=True)

    @field_validator("rules")
    @classmethod
    def _rules_exist(cls, rules: list[str] | None, info: ValidationInfo) -> list[str] | None:
        names: frozenset[str] | None = (info.context or {}).get(HOLD_RULE_NAMES)
        unknown = sorted(set(rules or ()) - names) if names is not None else []
        if unknown and names is not None:
            raise ValueError(
                f"names rules that do not exist: {', '.join(unknown)} "
                f"(rules: {', '.join(sorted(names))}); write each rule's name as under rules:"
            )
        return rules

    @model_validator(mode="after")
    def _window(self) -> HoldConfig:
        if self.from_ is not None and self.to is not None and self.to < self.from_:
            raise ValueError("to: is before from:; the window would be empty")
        return self

    def subject(self) -> Subject | None:
        """Whose objects the hold covers; None: everyone's in its window."""
        if not self.numbers and not self.extensions:
            return None
        return Subject.parse(self.numbers, self.extensions)

    def reason_names_subject(self) -> bool:
        """Whether the reason carries one of the hold's numbers or extensions, in any form a
        PBX stores it: the reason goes into the audit log, which never holds a number."""
        subject = self.subject()
        return subject is not None and named_in(self.reason, subject)

    def definition(self) -> dict[str, Any]:
        """What the hold says, for change detection (numbers included: never logged)."""
        return self.model_dump(mode="json", by_alias=True)

    def summary(self) -> dict[str, Any]:
        """What the audit log may say about the hold: no numbers, no extensions."""
        return {
            "hold": self.id,
            "reason": self.reason,
            "approved_by": self.approved_by,
            "review_by": self.review_by.isoformat(),
            "until": self.until.isoformat() if self.until else None,
            "rules": self.rules,
            "from": self.from_.isoformat() if self.from_ else None,
            "to": self.to.isoformat() if self.to else None,
            "numbers": len(self.numbers),
            "extensions": len(self.extensions),
        }


class OrganisationConfig(Strict):
    """Who the DPO report is for: the controller, the DPO, the record of processing."""

    controller: Annotated[str, Field(min_length=1)]
    dpo_contact: str | None = None
    processing_record: str | None = None  # reference in the Art. 30 record of processing
    system: str | None = None  # this PBX's name in reports covering several systems
    # The DPO's language: the report, the rule catalogue, the report mail, the verifier page
    language: Language = DEFAULT


def _listen(value: str | None) -> str | None:
    if value is not None and not 1 <= int(value.rsplit(":", 1)[1]) <= 65535:
        raise ValueError(f"{value!r}: a port is a number from 1 to 65535")
    return value


class MonitoringConfig(Strict):
    # host:port for Prometheus metrics served by the daemon; loopback unless you say otherwise
    metrics_listen: Annotated[
        str | None, Field(pattern=r"^[^\s:]+:\d{1,5}$"), AfterValidator(_listen)
    ] = None
    # node_exporter textfile written after `run --once` (must end in .prom)
    metrics_textfile: Annotated[AbsolutePath | None, AfterValidator(_prom_file)] = None
    ping_timeout: Annotated[float, Field(gt=0, le=120)] = 10


_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


def _clock_time(value: Any) -> str:
    if not isinstance(value, str) or not _HHMM.match(value.strip()):
        raise ValueError(f"{value!r} is not a time of day; write it as HH:MM, e.g. '06:00'")
    hour, minute = value.strip().split(":")
    return f"{int(hour):02d}:{minute}"


def _mail_address(value: str) -> str:
    # A plain addr-spec: no display names, no line breaks (they would end up in a header)
    if not re.fullmatch(r"[^\s@<>,;\"]+@[^\s@<>,;\"]+\.[^\s@<>,;\"]+", value):
        raise ValueError("is not a mail address such as dpo@example.com (no display name)")
    return value


MailAddress = Annotated[str, AfterValidator(_mail_address)]


class MailConfig(Strict):
    """Where the report is mailed: an SMTP server reached with STARTTLS or TLS only."""

    to: Annotated[list[MailAddress], Field(min_length=1)]
    from_: Annotated[MailAddress, Field(alias="from")]
    host: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9.:\[\]-]+$")]
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    security: Literal["starttls", "tls"] = "starttls"
    username: Annotated[str, Field(min_length=1)] | None = None
    # The password, in a file only retentiond may read (as the database passwords)
    password_file: AbsolutePath | None = None
    # CA certificates to trust for this server (a private CA); default: the system's
    ca_file: AbsolutePath | None = None
    timeout: Annotated[float, Field(gt=0, le=300)] = 30

    # merged with Strict's: also accepted by the field's own name, not only its alias
    model_config = ConfigDict(populate_by_name=True)

    @model_validator(mode="after")
    def _login_whole(self) -> MailConfig:
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together: give both or neither")
        return self


class ReportsConfig(Strict):
    """The DPO report the daemon makes by itself after each period, and where it goes."""

    period: Literal["monthly", "quarterly"] = "monthly"
    # When in the next period: this day of its first month, at this local time
    day: Annotated[int, Field(ge=1, le=28)] = 1
    at: Annotated[str, BeforeValidator(_clock_time)] = "06:00"
    formats: Annotated[
        list[Literal["html", "pdf", "csv", "json"]], Field(min_length=1, max_length=4)
    ] = ["pdf"]
    # The delivered report's and its mail's language; none: organisation.language
    language: Language | None = None
    folder: AbsolutePath | None = None
    mail: MailConfig | None = None
    ping: Annotated[PingConfig | None, BeforeValidator(_ping)] = None

    @field_validator("formats")
    @classmethod
    def _once_each(cls, formats: list[str]) -> list[str]:
        if len(set(formats)) != len(formats):
            raise ValueError("names a format twice; list each once")
        return formats

    @model_validator(mode="after")
    def _somewhere(self) -> ReportsConfig:
        if self.folder is None and self.mail is None:
            raise ValueError("say where the report goes: folder:, mail:, or both")
        return self


def document_language(config: Config) -> Language:
    """The language of the DPO's documents by the config: organisation.language, else English."""
    return config.organisation.language if config.organisation else DEFAULT


def reports_language(config: Config) -> Language:
    """The delivered report's language: reports.language, else the documents' language."""
    chosen = config.reports.language if config.reports else None
    return chosen or document_language(config)


class Safety(Strict):
    max_delete_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5
    # deadline = keep + the schedule's interval + this grace; status turns red past it
    deadline_grace: DurationField = Duration(days=1, text="1d")
    max_clock_skew: Annotated[float, Field(gt=0, le=86400)] = 300
    # Refuse a run that would remove more than this many times what the store's previous run
    # removed per day (and more than max_increase_floor objects): a sudden jump is a typo or a
    # clock problem more often than a real backlog. Override once with `run --once --force`.
    max_increase: Annotated[float, Field(ge=1)] = 10
    max_increase_floor: Annotated[int, Field(ge=0)] = 1000
    # Objects no date can be read from are never deleted: a store where more than this share of
    # them are undated fails check, plan, the run's verification and status. 0: none tolerated.
    max_undated_fraction: Annotated[float, Field(ge=0, le=1)] = 0.01


class Config(Strict):
    version: Literal[1]
    timezone: Annotated[
        ZoneInfo | None, BeforeValidator(lambda v: None if v is None else _zone(v))
    ] = None
    audit: AuditConfig = AuditConfig(path=Path("/var/lib/retentiond/audit.jsonl"))
    connections: dict[Annotated[str, Field(pattern=NAME_PATTERN)], ConnectionConfig] = {}
    rules: Annotated[list[Rule], Field(min_length=1)]
    safety: Safety = Safety()
    monitoring: MonitoringConfig = MonitoringConfig()
    holds: list[HoldConfig] = []
    # One YAML file per hold (the DPO adds one without touching this file); default: holds.d
    # beside the config file, when it exists
    holds_dir: AbsolutePath | None = None
    organisation: OrganisationConfig | None = None
    reports: ReportsConfig | None = None

    @model_validator(mode="after")
    def _holds_name_rules(self) -> Config:
        self.check_holds()
        return self

    def check_holds(self) -> None:
        """Hold ids are unique and name existing rules (also run for the holds folder)."""
        names = {rule.name for rule in self.rules}
        seen: set[str] = set()
        for hold in self.holds:
            if hold.id in seen:
                raise ValueError(f"hold id {hold.id!r} is used twice; give each hold its own id")
            seen.add(hold.id)
            unknown = sorted(set(hold.rules or ()) - names)
            if unknown:
                raise ValueError(
                    f"hold {hold.id!r} names rules that do not exist: {', '.join(unknown)} "
                    f"(rules: {', '.join(sorted(names))})"
                )

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


@cache
def key_names() -> frozenset[str]:
    """Every key the config schema has anywhere (and its aliases): the words an error message
    may repeat. Any other key may be personal data typed into the wrong place."""
    models = [v for v in globals().values() if isinstance(v, type) and issubclass(v, Strict)]
    return frozenset(
        name
        for model in models
        for field, info in model.model_fields.items()
        for name in (field, info.alias)
        if name
    )
