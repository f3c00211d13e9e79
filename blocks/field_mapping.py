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
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

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
    delimiter: str = Field(default=",", min_length=1, max_length=1)
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
        converted, bad = _convert(values, kind, spec)
        bad &= ~empty
        if bad.any():
            shown = values[bad].str.slice(0, 60)
            _note(problems, bad, field + ": '" + shown + "' " + _why(kind, spec))
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


def _why(kind: str, spec: FieldSpec) -> str:
    if kind == "customer_id":
        return "is not a positive integer"
    if kind == "owner_type":
        return "is not an ownerType (" + ", ".join(OWNER_TYPES) + ")"
    if kind in DATE_KINDS:
        formats = " or ".join(f"'{f}'" for f in spec.formats)
        return f"does not match date_format {formats}"
    return "is invalid"


def _convert(values: pd.Series[Any], kind: str, spec: FieldSpec) -> tuple[Any, pd.Series[Any]]:
    """Typed values and a mask of the values that could not be converted."""
    if kind == "customer_id":
        digits = values.str.fullmatch(r"\+?[0-9]{1,19}")
        numbers = pd.to_numeric(values.where(digits, "0").str.lstrip("+"), errors="coerce")
        bad = ~digits | numbers.isna() | (numbers <= 0) | (numbers > _MAX_CUSTOMER_ID)
        return numbers.where(~bad, 0).astype("int64"), bad
    if kind in DATE_KINDS:
        parsed = parse_dates(values, spec.formats, spec.timezone)
        return parsed, parsed.isna()
    if kind == "owner_type":
        return values, ~values.isin(OWNER_TYPES)
    return values, pd.Series(False, index=values.index)


def parse_dates(values: pd.Series[Any], formats: list[str], timezone: str) -> pd.Series[Any]:
    """Parse with each format in turn; UTC timestamps, NaT where nothing matched."""
    result = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
    for fmt in formats:
        todo = result.isna() & (values != "")
        if not todo.any():
            break
        parsed = _parse_one(values[todo], fmt, timezone)
        result.loc[parsed.index] = parsed.where(parsed.notna(), result[parsed.index])
    return result


def _parse_one(values: Any, fmt: str, timezone: str) -> Any:
    if fmt in ("epoch", "epoch_ms"):
        numbers: Any = pd.to_numeric(values, errors="coerce")
        unit = "s" if fmt == "epoch" else "ms"
        limit = 253402300799 * (1 if unit == "s" else 1000)  # 9999-12-31
        numbers = numbers.where((numbers >= 0) & (numbers <= limit))
        return pd.to_datetime(numbers, unit=unit, utc=True, errors="coerce").astype(  # type: ignore[call-overload]
            "datetime64[us, UTC]"
        )
    if fmt == "iso8601":
        aware = values.str.contains(r"(?:Z|[+-]\d\d:?\d\d)$", regex=True)
        out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us, UTC]")
        if aware.any():
            out[aware] = pd.to_datetime(
                values[aware], format="ISO8601", utc=True, errors="coerce"
            ).astype("datetime64[us, UTC]")
        if (~aware).any():
            naive = pd.to_datetime(values[~aware], format="ISO8601", errors="coerce")
            out[~aware] = _localize(naive, timezone)
        return out
    parsed = pd.to_datetime(values, format=fmt, errors="coerce")
    if getattr(parsed.dt, "tz", None) is not None:
        return parsed.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    return _localize(parsed, timezone)


def _localize(naive: Any, timezone: str) -> Any:
    if getattr(naive.dt, "tz", None) is not None:
        return naive.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    local = naive.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
    return local.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
