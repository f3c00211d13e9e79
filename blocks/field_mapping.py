"""field_mapping: parse the vendor's delimited file in chunks and map it to API fields.

Example::

    - name: transform
      type: field_mapping
      delimiter: ","
      encoding: utf-8                 # a UTF-8 BOM is always tolerated
      headerless: false
      headers: []                     # column names when headerless
      mapping:                        # API field -> source column, or a spec
        badgeMetaId: badge_id
        customerId: customer_id
        earnEventDate: {column: event_date, date_format: "%d/%m/%Y %H:%M", timezone: Asia/Kolkata}
        earnExpiresOn: {column: expires_at, date_format: epoch}
        # {const: VALUE}; date_format may be a list tried in order;
        # keywords: epoch (seconds), epoch_ms, iso8601

Every value is read as text and trimmed. Each template field is converted to the kind the
template declares (see `dataflow.templates`); a date without ``date_format`` is read as
ISO-8601, and a date without an offset is taken in ``timezone`` (default UTC). A row that
breaks a rule is rejected with a reason naming the field; a malformed line (wrong number of
fields, broken quotes) is rejected with its text; blank lines are counted as filtered.

Dates are held at millisecond resolution (no pandas nanosecond limit of 1677..2262); the API
takes integer epoch seconds and ISO-8601 with four-digit years, so a date must fall within
1970-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z (UTC): ``31/12/9999`` ("never expires") is
sent, a year-1 or pre-1970 date, or an epoch value out of that range, is a rejected row saying
so. ``epoch``/``epoch_ms`` take a plain decimal number (no exponent, no hex). A local time
skipped by a DST change is rejected as not existing in the timezone; a repeated autumn time
is taken as its first occurrence (the earlier instant). A mapped value holding a C0 or C1
control character (U+0000-U+001F, U+007F-U+009F) other than tab, after trimming, rejects
the row naming the field and the character's code point.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from dataflow.block import BlockConfig, CheckProblem, RowStream, Transform
from dataflow.csvchunks import CsvChunks
from dataflow.errors import FileRejected
from dataflow.rows import STAGE_TRANSFORM, Chunk, RowError
from dataflow.templates import DATE_KINDS, OWNER_TYPES, Template
from dataflow.trigger import Timezone

DATE_KEYWORDS = ("epoch", "epoch_ms", "iso8601")
_MAX_CUSTOMER_ID = 2**63 - 1
DATE_RANGE = "1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z"
_DATE_DTYPE = "datetime64[ms, UTC]"  # milliseconds: no nanosecond limit (1677..2262)
_DATE_MIN = pd.Timestamp("1970-01-01T00:00:00Z").as_unit("ms")
_DATE_MAX = pd.Timestamp("9999-12-31T23:59:59.999Z").as_unit("ms")
_DATE_MAX_MS = 253402300799999
_ISO_OFFSET = r"(?:Z|[+-]\d\d(?::?\d\d)?)$"
# C0 and C1 control characters (and DEL), except tab
_CONTROL = "[\x00-\x08\x0a-\x1f\x7f-\x9f]"


def _delimiter_schema(schema: dict[str, Any]) -> None:
    """The schema describes what a user writes: one character, or `tab` / `\\t`."""
    schema.pop("maxLength", None)
    schema["pattern"] = r"^(.|tab|\\t)$"


class FieldSpec(BaseModel):
    """How one API field is made: from a column or a constant, maybe parsed as a date."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str | None = None
    const: str | int | None = None
    date_format: str | list[str] | None = None
    timezone: Timezone = "UTC"

    @model_validator(mode="after")
    def _one_source(self) -> FieldSpec:
        if (self.column is None) == (self.const is None):
            raise ValueError("give exactly one of column or const")
        return self

    @field_validator("date_format")
    @classmethod
    def _formats(cls, value: str | list[str] | None) -> str | list[str] | None:
        formats = [value] if isinstance(value, str) else (value or [])
        if isinstance(value, list) and not value:
            raise ValueError("date_format list is empty")
        for fmt in formats:
            if fmt not in DATE_KEYWORDS and "%" not in fmt:
                raise ValueError(
                    f"date_format {fmt!r} is neither a strftime pattern (like '%d/%m/%Y') "
                    f"nor one of {', '.join(DATE_KEYWORDS)}"
                )
        return value

    @property
    def formats(self) -> list[str]:
        if self.date_format is None:
            return ["iso8601"]
        return [self.date_format] if isinstance(self.date_format, str) else self.date_format

    @property
    def described(self) -> str:
        return f"column '{self.column}'" if self.column is not None else "const"


MappingValue = Annotated[
    Annotated[str, Tag("column")] | Annotated[FieldSpec, Tag("spec")],
    Discriminator(lambda v: "column" if isinstance(v, str) else "spec"),
]


class FieldMappingConfig(BlockConfig):
    type: Literal["field_mapping"] = "field_mapping"
    delimiter: str = Field(
        default=",",
        min_length=1,
        max_length=1,
        description="one character; `tab` or `\\t` for tab-separated files",
        json_schema_extra=_delimiter_schema,
    )
    encoding: str = "utf-8"
    headerless: bool = False
    headers: list[str] = Field(default_factory=list)
    mapping: dict[str, MappingValue]
    chunk_bytes: int = Field(default=4 << 20, ge=1 << 10, le=256 << 20)

    @field_validator("delimiter", mode="before")
    @classmethod
    def _tab(cls, value: Any) -> Any:
        return "\t" if value in ("\\t", "tab") else value

    @field_validator("encoding")
    @classmethod
    def _codec(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r} (e.g. utf-8, latin-1, cp1252)") from None
        return value

    @model_validator(mode="after")
    def _headers(self) -> FieldMappingConfig:
        if self.headerless and not self.headers:
            raise ValueError("headerless: true needs headers (the column names, in order)")
        if self.headers and not self.headerless:
            raise ValueError("headers is only used with headerless: true")
        if len(set(self.headers)) != len(self.headers):
            raise ValueError("headers names a column twice")
        return self

    @property
    def specs(self) -> dict[str, FieldSpec]:
        return {
            field: spec if isinstance(spec, FieldSpec) else FieldSpec(column=spec)
            for field, spec in self.mapping.items()
        }

    def check(self, template: Template) -> list[CheckProblem]:
        problems: list[CheckProblem] = []
        kinds = template.all_fields
        for field in template.fields:
            if field not in self.mapping:
                problems.append(
                    (
                        ("mapping",),
                        f"mandatory field '{field}' of template {template.name} is not mapped",
                    )
                )
        for field, spec in self.specs.items():
            where = ("mapping", field)
            if field not in kinds:
                import difflib

                close = difflib.get_close_matches(field, list(kinds), n=1, cutoff=0.6)
                hint = (
                    f"; did you mean '{close[0]}'?"
                    if close
                    else (f"; its fields are: {', '.join(kinds)}")
                )
                problems.append(
                    (where, f"'{field}' is not a field of template {template.name}{hint}")
                )
                continue
            if spec.date_format is not None and kinds[field] not in DATE_KINDS:
                problems.append((where, f"date_format given, but '{field}' is not a date"))
            if self.headerless and spec.column is not None and spec.column not in self.headers:
                problems.append((where, f"column '{spec.column}' is not in headers"))
        return problems


class FieldMapping(Transform):
    Config = FieldMappingConfig
    config: FieldMappingConfig

    def read(self, path: Path) -> RowStream:
        c = self.config
        chunks = CsvChunks(
            path,
            delimiter=c.delimiter,
            encoding=c.encoding,
            headers=list(c.headers) if c.headerless else None,
            block_chars=c.chunk_bytes,
        )
        missing = [
            s.column
            for s in c.specs.values()
            if s.column is not None and s.column not in chunks.columns
        ]
        if missing:
            chunks.close()
            raise FileRejected(
                f"mapped column(s) {', '.join(repr(m) for m in missing)} missing from the "
                f"header ({', '.join(chunks.columns)}); fix the mapping or ask the vendor"
            )
        try:
            chunks.check_decodable()
        except FileRejected:
            chunks.close()
            raise
        return _MappedStream(chunks, c.specs, self.context.template)


class _MappedStream(RowStream):
    def __init__(self, chunks: CsvChunks, specs: dict[str, FieldSpec], template: Template):
        self._chunks = chunks
        self.columns = chunks.columns
        self._specs = specs
        self._template = template

    def close(self) -> None:
        self._chunks.close()

    def __iter__(self) -> Iterator[Chunk]:
        for block in self._chunks:
            errors = [
                RowError(n, STAGE_TRANSFORM, f"malformed line: {reason}", raw=raw)
                for n, raw, reason in block.malformed
            ]
            records, rejected = map_rows(block.rows, self._specs, self._template)
            errors.extend(rejected)
            errors.sort(key=lambda e: e.line_no)
            yield Chunk(source=block.rows, records=records, errors=errors, filtered=block.blank)


def map_rows(
    source: pd.DataFrame, specs: dict[str, FieldSpec], template: Template
) -> tuple[pd.DataFrame, list[RowError]]:
    """Map and check one chunk. Returns the valid records and the rejected rows."""
    kinds = template.all_fields
    problems = pd.Series("", index=source.index, dtype="str")
    out: dict[str, Any] = {}
    for field, spec in specs.items():
        kind = kinds[field]
        if spec.column is not None:
            values = source[spec.column].str.strip()
        else:
            values = pd.Series(str(spec.const), index=source.index, dtype="str")
        empty = values == ""
        if field in template.fields:
            _note(problems, empty, f"{field}: empty ({spec.described})")
        control = values.str.contains(_CONTROL, regex=True)
        if control.any():
            found = values[control].str.extract(f"({_CONTROL})", expand=False)
            codes = found.map(lambda c: f"U+{ord(c):04X}")
            message = field + ": contains the control character " + codes
            _note(problems, control, message + f" ({spec.described})")
        converted, why = _convert(values, kind, spec)
        bad = (why != "") & ~empty & ~control
        if bad.any():
            shown = values[bad].str.slice(0, 60)
            _note(problems, bad, field + ": '" + shown + "' " + why[bad])
        out[field] = converted
    records = pd.DataFrame(out, index=source.index)
    ok = problems == ""
    if template.row_rule is not None and ok.any():
        rule = template.row_rule(records[ok])
        problems.loc[rule.index] = rule
        ok = problems == ""
    rejected = [
        RowError(int(n), STAGE_TRANSFORM, str(msg))  # type: ignore[call-overload]
        for n, msg in problems[~ok].items()
    ]
    return records[ok], rejected


def _note(problems: pd.Series[Any], mask: pd.Series[Any], message: Any) -> None:
    if not mask.any():
        return
    msg = (
        message[mask]
        if isinstance(message, pd.Series)
        else pd.Series(message, index=mask.index)[mask]
    )
    current = problems[mask]
    problems.loc[mask] = current.where(current == "", current + "; ") + msg


def _why(kind: str) -> str:
    if kind == "customer_id":
        return "is not a positive integer"
    if kind == "owner_type":
        return "is not an ownerType (" + ", ".join(OWNER_TYPES) + ")"
    return "is invalid"


def _convert(values: pd.Series[Any], kind: str, spec: FieldSpec) -> tuple[Any, pd.Series[Any]]:
    """Typed values and, per value, why it could not be converted ("" where it could)."""
    if kind in DATE_KINDS:
        return parse_dates(values, spec.formats, spec.timezone)
    if kind == "customer_id":
        digits = values.str.fullmatch(r"\+?[0-9]{1,19}")  # ASCII digits only
        numbers = pd.to_numeric(values.where(digits, "0").str.lstrip("+"), errors="coerce")
        bad = ~digits | numbers.isna() | (numbers <= 0) | (numbers > _MAX_CUSTOMER_ID)
        converted: Any = numbers.where(~bad, 0).astype("int64")
    elif kind == "owner_type":
        converted, bad = values, ~values.isin(OWNER_TYPES)
    else:
        converted, bad = values, pd.Series(False, index=values.index)
    return converted, bad.map({True: _why(kind), False: ""}).astype("str")


# --- dates ------------------------------------------------------------------------------------

_OK, _NO_MATCH, _GAP, _RANGE = 0, 1, 2, 3  # a value's outcome; the highest failure is told


def parse_dates(
    values: pd.Series[Any], formats: list[str], timezone: str
) -> tuple[pd.Series[Any], pd.Series[Any]]:
    """Parse with each format in turn: millisecond UTC timestamps (NaT where none fits) and,
    per value, why it did not parse ("" where it did, and for empty values)."""
    result = pd.Series(pd.NaT, index=values.index, dtype=_DATE_DTYPE)
    outcome = pd.Series(_NO_MATCH, index=values.index, dtype="int8")
    for fmt in formats:
        todo = result.isna() & (values != "")
        if not todo.any():
            break
        parsed, codes = _parse_one(values[todo], fmt, timezone)
        result.loc[parsed.index] = parsed
        outcome.loc[codes.index] = outcome[codes.index].where(outcome[codes.index] >= codes, codes)
    outcome[result.notna() | (values == "")] = _OK
    shown = " or ".join(f"'{f}'" for f in formats)
    reasons = {
        _OK: "",
        _NO_MATCH: f"does not match date_format {shown}",
        _GAP: f"does not exist in timezone {timezone} (a local time skipped when the clocks "
        "go forward)",
        _RANGE: f"is outside the dates the API takes ({DATE_RANGE})",
    }
    return result, outcome.map(reasons).astype("str")


def _parse_one(values: Any, fmt: str, timezone: str) -> tuple[Any, Any]:
    """One format: the parsed instants (NaT where not) and each value's outcome code."""
    if fmt in ("epoch", "epoch_ms"):
        return _parse_epoch(values, 1000 if fmt == "epoch" else 1)
    naive, aware = _parse_text(values, fmt)
    local = _localize(naive, timezone)
    instant = aware.where(aware.notna(), local)
    codes = pd.Series(_NO_MATCH, index=values.index, dtype="int8")
    codes[naive.notna() & local.isna()] = _GAP
    in_range = (instant >= _DATE_MIN) & (instant <= _DATE_MAX)
    codes[instant.notna() & ~in_range] = _RANGE
    codes[in_range] = _OK
    return instant.where(in_range), codes


def _parse_epoch(values: Any, ms_per_unit: int) -> tuple[Any, Any]:
    number = values.str.fullmatch(r"\+?-?[0-9]{1,30}(?:\.[0-9]*)?")
    ms = pd.to_numeric(values.where(number), errors="coerce") * ms_per_unit
    in_range = number & (ms >= 0) & (ms <= _DATE_MAX_MS)
    whole = ms.where(in_range, 0).round().astype("int64").to_numpy()
    instant = pd.Series(whole.astype("datetime64[ms]"), index=values.index)
    instant = instant.dt.tz_localize("UTC").where(in_range)
    codes = pd.Series(_NO_MATCH, index=values.index, dtype="int8")
    codes[number & ~in_range] = _RANGE
    codes[in_range] = _OK
    return instant, codes


def _parse_text(values: Any, fmt: str) -> tuple[Any, Any]:
    """(naive, aware): values without an offset as local wall times, values with one in UTC.

    pandas parses in bulk; where it cannot (nanosecond range, mixed offsets), Python's
    datetime parses value by value, so a far date is a date, not a crash.
    """
    try:
        naive, aware, nanosecond = _parse_text_pandas(values, fmt)
    except (ValueError, OverflowError):  # OutOfBoundsDatetime is a ValueError
        return _parse_text_python(values, fmt)
    missed = naive.isna() & aware.isna()
    if nanosecond and missed.any():  # pandas may have dropped a far date as out of range
        slow_naive, slow_aware = _parse_text_python(values[missed], fmt)
        naive.loc[missed] = slow_naive
        aware.loc[missed] = slow_aware
    return naive, aware


def _parse_text_pandas(values: Any, fmt: str) -> tuple[Any, Any, bool]:
    if fmt == "iso8601":
        has_offset = values.str.contains(_ISO_OFFSET, regex=True)
        aware = pd.to_datetime(
            values.where(has_offset), format="ISO8601", utc=True, errors="coerce"
        )
        naive = pd.to_datetime(values.where(~has_offset), format="ISO8601", errors="coerce")
    else:
        parsed = pd.to_datetime(values, format=fmt, errors="coerce", utc="%z" in fmt)
        if getattr(parsed.dt, "tz", None) is not None:
            aware, naive = parsed, pd.Series(pd.NaT, index=values.index, dtype="datetime64[ms]")
        else:
            naive, aware = parsed, pd.Series(pd.NaT, index=values.index, dtype=_DATE_DTYPE)
    nanosecond = "ns" in (naive.dt.unit, aware.dt.unit)
    return (
        naive.astype("datetime64[ms]"),
        aware.dt.tz_convert("UTC").astype(_DATE_DTYPE),
        nanosecond,
    )


def _parse_text_python(values: Any, fmt: str) -> tuple[Any, Any]:
    naive: dict[Any, datetime] = {}
    aware: dict[Any, datetime] = {}
    for key, text in values.items():
        try:
            when = (
                datetime.fromisoformat(text) if fmt == "iso8601" else datetime.strptime(text, fmt)
            )
        except (ValueError, OverflowError, TypeError):
            continue
        if when.tzinfo is None:
            naive[key] = when
            continue
        try:
            aware[key] = when.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:  # an offset past year 1 or 9999
            continue
    return _series(naive, values.index), _series(aware, values.index).dt.tz_localize("UTC")


def _series(found: dict[Any, datetime], index: pd.Index[Any]) -> pd.Series[Any]:
    out = pd.Series(pd.NaT, index=index, dtype="datetime64[ms]")
    if found:
        out.loc[list(found)] = pd.Series(list(found.values()), dtype="datetime64[ms]").to_numpy()
    return out


def _localize(naive: Any, timezone: str) -> Any:
    """Local wall times to UTC. A time skipped by a DST change is NaT; a repeated one (the
    autumn hour that happens twice) is its first occurrence, the earlier instant."""
    if not naive.notna().any():
        return pd.Series(pd.NaT, index=naive.index, dtype=_DATE_DTYPE)
    n = len(naive)
    first = naive.dt.tz_localize(timezone, ambiguous=np.ones(n, bool), nonexistent="NaT")
    second = naive.dt.tz_localize(timezone, ambiguous=np.zeros(n, bool), nonexistent="NaT")
    local = first.where(~(second < first), second)
    return local.dt.tz_convert("UTC").astype(_DATE_DTYPE)
