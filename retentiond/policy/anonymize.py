"""Field transforms for `action: anonymize`. Pure logic: a value in, its anonymized form out.

Every transform is idempotent: applied to its own output it returns that output unchanged, so a
rerun finds nothing to rewrite and a store can skip rows whose values would not change.
Hashing is deliberately absent: a hash of a phone number is a pseudonym anyone can reverse by
hashing every number, not an anonymization.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

MASK = "x"


class Transform(ABC):
    """One field's anonymization. `apply` must be idempotent."""

    name: str

    @abstractmethod
    def apply(self, value: Any) -> Any:
        """The anonymized form of `value`; applied to its own result, it changes nothing."""

    @abstractmethod
    def describe(self) -> str:
        """How the report's method statement names it."""

    # A transform that turns every value into one of a few (blank, constant, map, bucket,
    # coarsened time) may be a grouping key for the k-anonymity check; truncated numbers too.
    groups: bool = True


@dataclass(frozen=True)
class TruncateDigits(Transform):
    """Keep all but the last `digits` digits, which become `x`: `030123456` → `030123xxx`."""

    digits: int = 3
    name: str = "truncate_digits"

    def apply(self, value: Any) -> Any:
        if value is None:
            return None
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        if text.endswith(MASK * self.digits) or not text:
            return text
        chars = list(text)
        left = self.digits
        for index in range(len(chars) - 1, -1, -1):
            if left == 0:
                break
            if chars[index].isdigit():
                chars[index] = MASK
                left -= 1
        masked = "".join(chars)
        # A value with fewer digits than `digits` keeps no digit at all
        return masked if left == 0 else "".join(MASK if c.isdigit() else c for c in masked)

    def describe(self) -> str:
        return f"last {self.digits} digits replaced by x"


@dataclass(frozen=True)
class Blank(Transform):
    """The empty string (NULL where the store says the field takes no text)."""

    name: str = "blank"

    def apply(self, value: Any) -> Any:
        return None if value is None else ""

    def describe(self) -> str:
        return "blanked"


@dataclass(frozen=True)
class Constant(Transform):
    value: str | int = ""
    name: str = "constant"

    def apply(self, value: Any) -> Any:
        return self.value

    def describe(self) -> str:
        return f"replaced by the constant {self.value!r}"


@dataclass(frozen=True)
class CoarsenTime(Transform):
    """A time cut down to its hour or its day (local wall time as stored)."""

    unit: str = "hour"  # hour | day
    name: str = "coarsen_time"

    def apply(self, value: Any) -> Any:
        if isinstance(value, datetime):
            value = value.replace(minute=0, second=0, microsecond=0)
            return value.replace(hour=0) if self.unit == "day" else value
        if isinstance(value, str) and len(value) >= 13:  # "YYYY-MM-DD HH:MM:SS" as text
            if self.unit == "day":
                return value[:10] + " 00:00:00" if len(value) >= 19 else value[:10]
            return value[:13] + ":00:00" if len(value) >= 19 else value
        return value  # a date or NULL is as coarse as it gets

    def describe(self) -> str:
        return f"time cut down to the {self.unit}"


@dataclass(frozen=True)
class Bucket(Transform):
    """A number replaced by the lower bound of its bucket: [0, 60, 300]: 45 → 0, 200 → 60."""

    bounds: tuple[int, ...] = (0, 60, 300)
    name: str = "bucket"

    def apply(self, value: Any) -> Any:
        if value is None:
            return None
        try:
            number = Decimal(str(value))
        except ArithmeticError:
            return value
        chosen = self.bounds[0]
        for bound in self.bounds:
            if number >= bound:
                chosen = bound
        if isinstance(value, str):
            return str(chosen)
        return chosen

    def describe(self) -> str:
        return "put into buckets " + ", ".join(map(str, self.bounds))


@dataclass(frozen=True)
class MapValues(Transform):
    """Values replaced by groups (`{1001: sales}`); anything else becomes `default`."""

    mapping: tuple[tuple[str, str], ...] = ()
    default: str = ""
    name: str = "map"

    def apply(self, value: Any) -> Any:
        if value is None:
            return None
        text = str(value).strip()
        table = dict(self.mapping)
        if text in table:
            return table[text]
        if text in table.values() or text == self.default:
            return text  # already mapped
        return self.default

    def describe(self) -> str:
        groups = sorted(set(dict(self.mapping).values()))
        return f"mapped to {len(groups)} groups, others to {self.default!r}"


TRANSFORM_NAMES = ("truncate_digits", "blank", "constant", "coarsen_time", "bucket", "map")


def parse_transform(value: Any) -> Transform:
    """A transform from YAML: `blank`, `truncate_digits`, or a one-key mapping with its setting.

    `map` takes its table and a `default:` beside it: `{map: {"1001": sales}, default: other}`.
    Raises ValueError with what to write instead.
    """
    if isinstance(value, Transform):
        return value
    if isinstance(value, str):
        if value == "blank":
            return Blank()
        if value == "truncate_digits":
            return TruncateDigits()
        raise ValueError(
            f"{value!r} is not a transform; use blank, truncate_digits, or one of "
            "{truncate_digits: N}, {constant: V}, {coarsen_time: hour|day}, "
            "{bucket: [0, 60, 300]}, {map: {...}, default: V}"
        )
    if not isinstance(value, Mapping) or not value:
        raise ValueError("expected a transform such as blank or {truncate_digits: 3}")
    keys = set(value)
    if "map" in keys:
        return _map(value)
    if len(keys) != 1:
        raise ValueError(f"one transform per field, got {', '.join(sorted(map(str, keys)))}")
    ((kind, setting),) = value.items()
    if kind == "truncate_digits":
        if not isinstance(setting, int) or isinstance(setting, bool) or not 1 <= setting <= 15:
            raise ValueError("truncate_digits takes a whole number of digits from 1 to 15")
        return TruncateDigits(setting)
    if kind == "constant":
        if not isinstance(setting, str | int) or isinstance(setting, bool):
            raise ValueError("constant takes a text or a whole number")
        return Constant(setting)
    if kind == "coarsen_time":
        if setting not in ("hour", "day"):
            raise ValueError("coarsen_time takes hour or day")
        return CoarsenTime(str(setting))
    if kind == "bucket":
        return _bucket(setting)
    if kind == "blank":
        raise ValueError("write blank on its own, without a value")
    raise ValueError(f"{kind!r} is not a transform; use one of {', '.join(TRANSFORM_NAMES)}")


def _bucket(setting: Any) -> Bucket:
    if (
        not isinstance(setting, list)
        or not setting
        or not all(isinstance(b, int) and not isinstance(b, bool) for b in setting)
    ):
        raise ValueError("bucket takes a list of whole numbers, e.g. [0, 60, 300, 900]")
    if sorted(set(setting)) != setting:
        raise ValueError("bucket bounds must rise strictly, e.g. [0, 60, 300, 900]")
    return Bucket(tuple(setting))


def _map(value: Mapping[str, Any]) -> MapValues:
    extra = set(value) - {"map", "default"}
    if extra:
        raise ValueError(f"map takes only map: and default:, not {', '.join(sorted(extra))}")
    table = value["map"]
    if not isinstance(table, Mapping) or not table:
        raise ValueError("map takes a table of value: group, e.g. {'1001': sales}")
    if "default" not in value:
        raise ValueError(
            "map needs a default: for values not in the table; without one they would stay"
        )
    pairs = tuple((str(k).strip(), str(v)) for k, v in table.items())
    return MapValues(pairs, str(value["default"]))


def anonymize_row(transforms: Mapping[str, Transform], row: Mapping[str, Any]) -> dict[str, Any]:
    """The new values of the fields that change; empty when the row is already anonymized."""
    changes: dict[str, Any] = {}
    for field, transform in transforms.items():
        old = row.get(field)
        new = transform.apply(old)
        if not _same(old, new):
            changes[field] = new
    return changes


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, bytes) and isinstance(new, str):
        return old.decode("utf-8", "replace") == new
    if isinstance(old, date | datetime) or isinstance(new, date | datetime):
        return bool(old == new)
    if isinstance(old, int | float | Decimal) and isinstance(new, int | float | Decimal):
        return bool(old == new)
    return old == new if type(old) is type(new) else str(old) == str(new)
