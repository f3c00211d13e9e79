"""field_mapping: parse the vendor's delimited file in chunks and map it to API fields.

Example::

    - name: transform
      type: field_mapping
      delimiter: ","
      encoding: utf-8                 # a UTF-8 BOM is always tolerated
      headerless: false
      headers: []                     # column names when headerless
      filter: "status = 'paid' AND CAST(amount AS DOUBLE) > 10"   # SQL; not true: filtered
      mapping:                        # API field -> source column, or a spec
        badgeMetaId: badge_id
        customerId: customer_id
        earnEventDate: {column: event_date, date_format: "%d/%m/%Y %H:%M", timezone: Asia/Kolkata}
        earnExpiresOn: {column: expires_at, date_format: epoch}
        # {const: VALUE}; {expr: "SQL expression"}; {column, map: {from: to}, default, ignore_case}
        # date_format may be a list tried in order; keywords: epoch (seconds), epoch_ms, iso8601
      duplicates: keep                # or reject: a repeat of the template's key is rejected
      max_rejected_percent: 20        # above it: the whole file fails, nothing is sent

Every value is read as text and trimmed. Each template field is converted to the kind the
template declares (see `dataflow.templates`); a date without ``date_format`` is read as
ISO-8601, and a date without an offset is taken in ``timezone`` (default UTC). A row that
breaks a rule is rejected with a reason naming the field; a malformed line (wrong number of
fields, broken quotes) is rejected with its text; blank lines are counted as filtered.

``filter`` and ``expr`` are SQL over the row's source columns (all text), evaluated by a
sandboxed engine over each chunk at once (`dataflow_blocks._sql`); the docs are in
docs/transform.md. Rows where the filter is not true are counted as filtered; a row on which
an expression fails (a cast of 'abc' to a number) is rejected naming the field and the error.

Dates are held at millisecond resolution (no pandas nanosecond limit of 1677..2262); the API
takes integer epoch seconds and ISO-8601 with four-digit years, so a date must fall within
1970-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z (UTC): ``31/12/9999`` ("never expires") is
sent, a year-1 or pre-1970 date, or an epoch value out of that range, is a rejected row saying
so. ``epoch``/``epoch_ms`` take a plain decimal number (no exponent, no hex). A local time
skipped by a DST change is rejected as not existing in the timezone; a repeated autumn time
is taken as its first occurrence (the earlier instant). A mapped value holding a C0 or C1
control character (U+0000-U+001F, U+007F-U+009F) other than tab, after trimming, rejects
the row naming the field and the character's code point.

pandas, numpy and pyarrow are imported by the functions that run a file, not by this module:
``dataflow validate`` loads this config model without them.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from dataflow.block import BlockConfig, CheckProblem, RowStream, Template, Transform
from dataflow.errors import FileRejected
from dataflow.hints import did_you_mean
from dataflow.rows import STAGE_TRANSFORM, Chunk, RowError
from dataflow.templates import DATE_KINDS, OWNER_TYPES
from dataflow.trigger import Timezone
from dataflow_blocks import _sql
from dataflow_blocks._keys import SeenKeys, digests, key_fields

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from dataflow.csvchunks import CsvChunks

DATE_KEYWORDS = ("epoch", "epoch_ms", "iso8601")
_MAX_CUSTOMER_ID = 2**63 - 1
DATE_RANGE = "1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z"
_DATE_DTYPE = "datetime64[ms, UTC]"  # milliseconds: no nanosecond limit (1677..2262)
_DATE_MAX_MS = 253402300799999
_SHOWN_KEYS = 6  # map keys named in a message
_ISO_OFFSET = r"(?:Z|[+-]\d\d(?::?\d\d)?)$"
# C0 and C1 control characters (and DEL), except tab
_CONTROL = "[\x00-\x08\x0a-\x1f\x7f-\x9f]"


@cache
def _date_bounds() -> tuple[pd.Timestamp, pd.Timestamp]:
    import pandas as pd

    low = pd.Timestamp("1970-01-01T00:00:00Z").as_unit("ms")
    return low, pd.Timestamp("9999-12-31T23:59:59.999Z").as_unit("ms")


def _delimiter_schema(schema: dict[str, Any]) -> None:
    """The schema describes what a user writes: one character, or `tab` / `\\t`."""
    schema.pop("maxLength", None)
    schema["pattern"] = r"^(.|tab|\\t)$"


class FieldSpec(BaseModel):
    """How one API field is made: from a column, a constant or a SQL expression; maybe
    through a value map, maybe parsed as a date."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str | None = Field(default=None, description="the source column to read")
    const: str | int | None = Field(default=None, description="the same value for every row")
    expr: str | None = Field(
        default=None,
        description="a SQL expression over the row's source columns (all text), e.g. "
        "\"campaign || '-' || upper(region)\"; see docs/transform.md",
    )
    map: dict[str, str] | None = Field(
        default=None,
        description="with `column`: source value -> value sent; a value outside the map "
        "takes `default`, or rejects the row",
    )
    default: str | None = Field(
        default=None, description="with `map`: the value sent for a value outside the map"
    )
    ignore_case: bool = Field(
        default=False, description="with `map`: match the map's keys ignoring case"
    )
    date_format: str | list[str] | None = None
    timezone: Timezone = "UTC"

    @model_validator(mode="after")
    def _one_source(self) -> FieldSpec:
        given = [k for k in ("column", "const", "expr") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of column, const or expr")
        if self.map is None and (self.default is not None or self.ignore_case):
            raise ValueError("default and ignore_case go with map")
        if self.map is not None and self.column is None:
            raise ValueError("map goes with column (the column whose values it maps)")
        if self.map is not None and self.ignore_case:
            folded: dict[str, str] = {}
            for key in self.map:
                other = folded.setdefault(key.casefold(), key)
                if other != key and self.map[other] != self.map[key]:
                    raise ValueError(
                        f"map keys {other!r} and {key!r} are the same ignoring case but map "
                        "to different values"
                    )
        return self

    @field_validator("map", mode="before")
    @classmethod
    def _map_text(cls, value: Any) -> Any:
        """YAML reads `1: A` with a number key: every key and value is text here."""
        if not isinstance(value, dict):
            return value
        if not value:
            raise ValueError("map is empty")
        for item in (*value.keys(), *value.values()):
            if isinstance(item, bool) or item is None:
                raise ValueError(
                    f"map holds {item!r}, which YAML read as a boolean or null: quote it "
                    "(for example 'yes': Loyalty)"
                )
        return {_text(k): _text(v) for k, v in value.items()}

    @field_validator("default", mode="before")
    @classmethod
    def _default_text(cls, value: Any) -> Any:
        return (
            _text(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            else value
        )

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
        if self.column is not None:
            return f"column '{self.column}'"
        return "expr" if self.expr is not None else "const"

    def lookup(self) -> dict[str, str]:
        """The map as matched: keys folded when ignoring case."""
        assert self.map is not None
        if not self.ignore_case:
            return dict(self.map)
        return {key.casefold(): value for key, value in self.map.items()}


def _text(value: Any) -> Any:
    return str(value) if isinstance(value, (int, float)) else value


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
    filter: str | None = Field(
        default=None,
        description='a SQL condition over the source columns (all text), e.g. "status = '
        "'paid' AND CAST(amount AS DOUBLE) > 10\"; rows where it is not true (false or NULL) "
        "are counted as rows_filtered, never sent, never in the error file",
    )
    duplicates: Literal["keep", "reject"] = Field(
        default="keep",
        description="reject: a row whose template key (earned_badges: badgeMetaId, "
        "customerId, earnEventDate; bulk: the same with ownerType, referenceId) repeats an "
        "earlier row's is rejected, naming the first line",
    )
    max_rejected_percent: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description="more rejected rows than this percentage of the rows the filter keeps: "
        "the whole file fails (moved to the error directory) before any row is sent; costs "
        "one extra pass over the local file",
    )
    chunk_bytes: int | None = Field(
        default=None,
        ge=1 << 10,
        le=256 << 20,
        description="the size of a parse chunk; default 2 MiB (4 MiB for the bulk templates, "
        "whose requestIds depend on it: changing it changes their ids)",
    )

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
                hint = did_you_mean(field, list(kinds), listing="its fields are")
                problems.append(
                    (where, f"'{field}' is not a field of template {template.name}{hint}")
                )
                continue
            if spec.date_format is not None and kinds[field] not in DATE_KINDS:
                problems.append((where, f"date_format given, but '{field}' is not a date"))
            if self.headerless and spec.column is not None and spec.column not in self.headers:
                problems.append((where, f"column '{spec.column}' is not in headers"))
            if spec.expr is not None:
                problems += self._check_sql((*where, "expr"), spec.expr, predicate=False)
            problems += _check_map(where, spec, kinds[field])
        if self.filter is not None:
            problems += self._check_sql(("filter",), self.filter, predicate=True)
        return problems

    def _check_sql(
        self, where: tuple[str | int, ...], text: str, *, predicate: bool
    ) -> list[CheckProblem]:
        try:
            parsed = _sql.parse(text, predicate=predicate)
        except _sql.ExpressionError as exc:
            return [(where, str(exc))]
        if self.headerless:
            found = _sql.resolve(parsed, list(self.headers))
            if isinstance(found, str):
                return [(where, found.replace("the file's columns", "headers"))]
        return []

    def parsed(self) -> tuple[_sql.Parsed | None, dict[str, _sql.Parsed]]:
        """The filter and the expressions, parsed (check() has vouched for them)."""
        condition = _sql.parse(self.filter, predicate=True) if self.filter is not None else None
        expressions = {
            field: _sql.parse(spec.expr)
            for field, spec in self.specs.items()
            if spec.expr is not None
        }
        return condition, expressions


def _check_map(where: tuple[str | int, ...], spec: FieldSpec, kind: str) -> list[CheckProblem]:
    """A map into ownerType can only hold ownerTypes."""
    if spec.map is None or kind != "owner_type":
        return []
    problems: list[CheckProblem] = []
    for key, value in spec.map.items():
        if value not in OWNER_TYPES:
            problems.append(((*where, "map", key), f"{value!r} {_why(kind)}"))
    if spec.default is not None and spec.default not in OWNER_TYPES:
        problems.append(((*where, "default"), f"{spec.default!r} {_why(kind)}"))
    return problems


class FieldMapping(Transform):
    Config = FieldMappingConfig
    config: FieldMappingConfig

    @property
    def chunk_bytes(self) -> int:
        """The size of this file's parse chunks: `chunk_bytes`, or the template's default."""
        return self.config.chunk_bytes or default_chunk_bytes(self.context.template)

    def read(self, path: Path) -> RowStream:
        c = self.config
        chunks = self._open(path)
        engine: _Expressions | None = None
        try:
            missing = [
                s.column
                for s in c.specs.values()
                if s.column is not None and s.column not in chunks.columns
            ]
            if missing:
                raise FileRejected(
                    f"mapped column(s) {', '.join(repr(m) for m in missing)} missing from the "
                    f"header ({', '.join(chunks.columns)}); fix the mapping or ask the vendor"
                )
            chunks.check_decodable()
            engine = _Expressions.open(c, chunks.columns)
            if c.max_rejected_percent is not None:
                self._threshold(path, engine, c.max_rejected_percent)
        except BaseException:
            chunks.close()
            if engine is not None:
                engine.close()
            raise
        return _MappedStream(chunks, c, self.context.template, engine)

    def _open(self, path: Path) -> CsvChunks:
        from dataflow.csvchunks import CsvChunks

        c = self.config
        return CsvChunks(
            path,
            delimiter=c.delimiter,
            encoding=c.encoding,
            headers=list(c.headers) if c.headerless else None,
            block_chars=self.chunk_bytes,
        )

    def _threshold(self, path: Path, engine: _Expressions | None, limit: float) -> None:
        """The whole file's verdict before any row is sent: a first pass counting rejections
        (the file is local and decrypted), made only when `max_rejected_percent` is set."""
        first = _MappedStream(self._open(path), self.config, self.context.template, engine)
        total = filtered = rejected = 0
        try:
            for chunk in first:
                total += chunk.total
                filtered += chunk.filtered
                rejected += len(chunk.errors)
        finally:
            first.close(engine=False)
        kept = total - filtered
        percent = 100 * rejected / kept if kept else 0.0
        if percent > limit:
            raise FileRejected(
                f"{rejected} of {kept} rows rejected ({_percent(percent, limit)} %), above "
                f"max_rejected_percent {limit:g}; nothing was sent"
            )


CHUNK_BYTES = 2 << 20
GROUPED_CHUNK_BYTES = 4 << 20  # never change it: a bulk requestId depends on the chunks


def default_chunk_bytes(template: Template) -> int:
    """The parse chunk when `chunk_bytes` is not given. Smaller chunks hold less memory (each
    chunk's source rows, records and request bodies are alive until its last verdict); the
    bulk templates group rows within a chunk, so theirs stays what their ids were made with."""
    return GROUPED_CHUNK_BYTES if template.group_by else CHUNK_BYTES


def _percent(value: float, limit: float) -> str:
    """`value` rounded, but never shown as equal to the limit it exceeds."""
    for digits in (1, 2, 4, 8):
        shown = f"{value:.{digits}f}"
        if float(shown) > limit:
            return shown
    return repr(value)


class _Expressions:
    """The filter and `expr` fields of one file, compiled for its header, and the engine."""

    def __init__(
        self,
        engine: _sql.Engine,
        columns: list[str],
        condition: str | None,
        expressions: dict[str, str],
        used: list[int],
    ) -> None:
        self._engine = engine
        self._columns = columns
        self.condition = condition
        self.expressions = expressions
        self._used = used

    @classmethod
    def open(cls, config: FieldMappingConfig, columns: list[str]) -> _Expressions | None:
        """None when the mapping has no filter and no expression (nothing is imported)."""
        condition, expressions = config.parsed()
        if condition is None and not expressions:
            return None
        named = {"filter": condition} if condition is not None else {}
        named.update({f"mapping.{f}.expr": p for f, p in expressions.items()})
        positions: dict[str, int] = {}
        for where, parsed in named.items():
            found = _sql.resolve(parsed, columns)
            if isinstance(found, str):
                raise FileRejected(f"{where}: {found}; fix the expression or ask the vendor")
            positions.update(found)
        compiled = {where: _sql.compile_sql(p, positions) for where, p in named.items()}
        return cls(
            _sql.Engine(),
            columns,
            compiled.get("filter"),
            {f: compiled[f"mapping.{f}.expr"] for f in expressions},
            sorted(set(positions.values())),
        )

    def close(self) -> None:
        self._engine.close()

    def _table(self, rows: pd.DataFrame) -> pa.Table:
        import pyarrow as pa

        return pa.table(
            {
                f"c{i}": pa.array(rows[self._columns[i]].str.strip(), type=pa.string())
                for i in self._used
            }
        )

    def keep(self, rows: pd.DataFrame) -> tuple[np.ndarray[Any, Any], list[RowError]]:
        """Which rows the filter keeps (true), and the rows on which it failed."""
        import numpy as np
        import pyarrow.compute as pc

        assert self.condition is not None
        if not len(rows):
            return np.ones(0, dtype=bool), []
        outcome = self._engine.run(self.condition, self._table(rows))
        keep = pc.fill_null(pc.equal(outcome.values, True), False).to_numpy(zero_copy_only=False)
        keep = np.array(keep, dtype=bool)
        lines = rows.index.to_numpy()
        errors = []
        for position, message in outcome.failed.items():
            keep[position] = False
            errors.append(
                RowError(
                    int(lines[position]),
                    STAGE_TRANSFORM,
                    f"filter: the condition failed on this row: {message}",
                )
            )
        return keep, errors

    def values(self, rows: pd.DataFrame) -> dict[str, tuple[pd.Series[Any], dict[int, str]]]:
        """Each `expr` field: its values as text (trimmed; '' for NULL) and, by line, the
        error of the rows on which it failed."""
        import pandas as pd

        out: dict[str, tuple[pd.Series[Any], dict[int, str]]] = {}
        if not self.expressions:
            return out
        table = self._table(rows) if len(rows) else None
        lines = rows.index.to_numpy()
        for field, sql in self.expressions.items():
            if table is None:
                out[field] = (pd.Series([], index=rows.index, dtype="str"), {})
                continue
            outcome = self._engine.run(sql, table, as_text=True)
            text = pd.Series(outcome.values.to_pandas(), dtype="str").fillna("")
            text.index = rows.index
            failed = {int(lines[p]): m for p, m in outcome.failed.items()}
            out[field] = (text.str.strip(), failed)
        return out


class _MappedStream(RowStream):
    def __init__(
        self,
        chunks: CsvChunks,
        config: FieldMappingConfig,
        template: Template,
        engine: _Expressions | None,
    ):
        self._chunks = chunks
        self.columns = chunks.columns
        self._specs = config.specs
        self._template = template
        self._engine = engine
        self._seen = SeenKeys() if config.duplicates == "reject" else None
        self._key = key_fields(template)
        self._only: range | None = None  # a shard's chunks (dataflow.shards)

    def select(self, chunks: range) -> bool:
        self._only = chunks
        return True

    def close(self, engine: bool = True) -> None:
        self._chunks.close()
        if engine and self._engine is not None:
            self._engine.close()

    def __iter__(self) -> Iterator[Chunk]:
        for index, block in enumerate(self._chunks):
            if self._only is not None and index not in self._only:
                if index >= self._only.stop:
                    break
                continue  # another shard's chunk: parsed for its line numbers, not mapped
            errors = [
                RowError(n, STAGE_TRANSFORM, f"malformed line: {reason}", raw=raw)
                for n, raw, reason in block.malformed
            ]
            rows, filtered = block.rows, block.blank
            computed: dict[str, tuple[pd.Series[Any], dict[int, str]]] = {}
            if self._engine is not None:
                if self._engine.condition is not None:
                    keep, failed = self._engine.keep(rows)
                    errors.extend(failed)
                    filtered += len(rows) - int(keep.sum()) - len(failed)
                    rows = rows[keep]
                computed = self._engine.values(rows)
            records, rejected = map_rows(rows, self._specs, self._template, computed)
            errors.extend(rejected)
            if self._seen is not None:
                records, repeated = self._repeats(records)
                errors.extend(repeated)
            errors.sort(key=lambda e: e.line_no)
            yield Chunk(source=block.rows, records=records, errors=errors, filtered=filtered)

    def _repeats(self, records: pd.DataFrame) -> tuple[pd.DataFrame, list[RowError]]:
        """Rows repeating an earlier row's template key: rejected, naming its first line."""
        import numpy as np

        assert self._seen is not None
        if not len(records):
            return records, []
        lines = records.index.to_numpy(dtype=np.int64)
        first = self._seen.check(digests(records, self._key), lines)
        repeated = first != 0
        if not repeated.any():
            return records, []
        fields = ", ".join(self._key)
        errors = [
            RowError(
                int(line),
                STAGE_TRANSFORM,
                f"duplicate of line {int(earlier)} (the same {fields}); duplicates: reject",
            )
            for line, earlier in zip(lines[repeated], first[repeated], strict=True)
        ]
        return records[~repeated], errors


def map_rows(
    source: pd.DataFrame,
    specs: dict[str, FieldSpec],
    template: Template,
    computed: dict[str, tuple[pd.Series[Any], dict[int, str]]] | None = None,
) -> tuple[pd.DataFrame, list[RowError]]:
    """Map and check one chunk. Returns the valid records and the rejected rows.

    `computed` holds each `expr` field's values and failures (see `_Expressions.values`)."""
    import pandas as pd

    kinds = template.all_fields
    problems = pd.Series("", index=source.index, dtype="str")
    out: dict[str, Any] = {}
    for field, spec in specs.items():
        kind = kinds[field]
        skip = pd.Series(False, index=source.index)  # rows already told about this field
        if spec.expr is not None:
            if computed is None or field not in computed:
                raise ValueError(f"{field}: the expression was not evaluated")
            values, failures = computed[field]
            if failures:
                skip = pd.Series(source.index.isin(list(failures)), index=source.index)
                told = pd.Series(failures, dtype="str").reindex(source.index).fillna("")
                _note(problems, skip, field + ": the expression failed on this row: " + told)
        elif spec.column is not None:
            values = _stripped(source[spec.column])
        else:
            values = pd.Series(str(spec.const), index=source.index, dtype="str")
        if spec.map is not None:
            original = values
            values, unmapped = _apply_map(original, spec)
            if unmapped.any():
                shown = original.str.slice(0, 60)
                _note(problems, unmapped, _unmapped_message(field, spec, shown))
                skip = skip | unmapped
        empty = _empty(values) & ~skip
        if field in template.fields:
            _note(problems, empty, f"{field}: empty ({spec.described})")
        control = _controls(values) & ~skip
        if control.any():
            found = values[control].str.extract(f"({_CONTROL})", expand=False)
            codes = found.map(lambda c: f"U+{ord(c):04X}")
            message = field + ": contains the control character " + codes
            _note(problems, control, message + f" ({spec.described})")
        converted, failed, why = _convert(values, kind, spec)
        if failed.any():
            bad = ~empty & ~control & ~skip & failed
            if bad.any():
                shown = values[bad].str.slice(0, 60)
                _note(problems, bad, field + ": '" + shown + "' " + why[bad])
        out[field] = converted
    records = pd.DataFrame(out, index=source.index)
    ok = problems == ""
    if template.row_rule is not None and ok.any():
        rule = template.row_rule(records[ok])
        broken = (rule != "").to_numpy(dtype=bool, na_value=True)
        if broken.any():  # the other rows' problems stay ""
            problems.loc[rule.index[broken]] = rule[broken]
            ok = problems == ""
    rejected = [
        RowError(int(n), STAGE_TRANSFORM, str(msg))  # type: ignore[call-overload]
        for n, msg in problems[~ok].items()
    ]
    return records[ok], rejected


def _arrow_text(values: pd.Series[Any]) -> pa.LargeStringArray:
    """The values as one Arrow array of large strings (zero-copy for one-chunk text)."""
    import pyarrow as pa

    text = pa.array(values, type=pa.large_string())
    if isinstance(text, pa.ChunkedArray):
        text = text.chunk(0) if text.num_chunks == 1 else text.combine_chunks()
    return text


def _text_bytes(values: pd.Series[Any]) -> tuple[Any, Any] | None:
    """The values' UTF-8 bytes (uint8) and the offset of each value in them (int64, one more
    at the end), read from Arrow without a copy; None for values with a missing one or not
    text (the callers then ask pandas)."""
    import numpy as np
    import pyarrow as pa

    if not len(values):
        return None
    try:
        text = _arrow_text(values)
    except (pa.ArrowException, TypeError, ValueError):
        return None
    if text.null_count:
        return None
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)
    offsets = offsets[text.offset : text.offset + len(text) + 1]
    data = np.frombuffer(text.buffers()[2] or b"", dtype=np.uint8)
    return data, offsets


def _stripped(values: pd.Series[Any]) -> pd.Series[Any]:
    """``values.str.strip()``; the values themselves when none starts or ends with a byte
    that may be whitespace (ASCII space or control, or any non-ASCII byte)."""
    found = _text_bytes(values)
    if found is None:
        return values.str.strip()
    data, offsets = found
    sized = offsets[1:] > offsets[:-1]
    ends = (data[offsets[:-1][sized]], data[offsets[1:][sized] - 1])
    if any(((end <= 0x20) | (end >= 0x7F)).any() for end in ends):
        return values.str.strip()
    return values


def _empty(values: pd.Series[Any]) -> pd.Series[Any]:
    """``values == ""``, from the Arrow offsets where the values allow it."""
    import numpy as np
    import pandas as pd

    found = _text_bytes(values)
    if found is None:
        return values == ""
    return pd.Series(np.diff(found[1]) == 0, index=values.index)


def _digit_runs(values: Any, sign: bytes, most: int) -> Any:
    """Which values are 1 to `most` ASCII digits, after one optional leading character of
    `sign` (a bool array, what ``fullmatch(r"[+]?[0-9]{1,most}")`` says); None where the
    values are not plain text (missing ones): the callers use the regex then."""
    import numpy as np

    found = _text_bytes(values)
    if found is None:
        return None
    data, offsets = found
    starts, ends = offsets[:-1], offsets[1:]
    # the few bytes that are not digits, and the value each is in
    body = data[offsets[0] : offsets[-1]]
    other = np.flatnonzero((body < 48) | (body > 57)) + offsets[0]
    owner = np.searchsorted(ends, other, side="right")
    leading = (other == starts[owner]) & np.isin(data[other], np.frombuffer(sign, np.uint8))
    plain = np.ones(len(starts), dtype=bool)
    plain[owner[~leading]] = False
    signed = np.zeros(len(starts), dtype=np.int64)
    signed[owner[leading]] = 1
    digits = ends - starts - signed
    return plain & (digits >= 1) & (digits <= most)


def _controls(values: pd.Series[Any]) -> pd.Series[Any]:
    """Which values hold a control character (`_CONTROL`). The regex runs only when a byte
    scan of the values finds one that may start one: a byte below 0x20 other than tab, DEL,
    or 0xC2 (the first byte of U+0080..U+00BF in UTF-8)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    if not len(values):
        return pd.Series(False, index=values.index)
    try:
        text = _arrow_text(values)
    except (pa.ArrowException, TypeError, ValueError):
        text = None
    if text is not None and not text.null_count:
        offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)
        first, last = offsets[text.offset], offsets[text.offset + len(text)]
        data = np.frombuffer(text.buffers()[2] or b"", dtype=np.uint8)[first:last]
        if not np.any(((data < 0x20) & (data != 0x09)) | (data == 0x7F) | (data == 0xC2)):
            return pd.Series(False, index=values.index)
    return values.str.contains(_CONTROL, regex=True)


def _apply_map(values: pd.Series[Any], spec: FieldSpec) -> tuple[pd.Series[Any], pd.Series[Any]]:
    """The mapped values ('' where none) and the rows whose value is outside the map with
    no default (an empty value outside the map stays empty: reported as empty)."""
    table = spec.lookup()
    keys = values.str.casefold() if spec.ignore_case else values
    mapped = keys.map(table)
    missing = mapped.isna()
    if spec.default is not None:
        return mapped.where(~missing, spec.default).astype("str"), missing & False
    unmapped = missing & (values != "")
    return mapped.where(~missing, "").astype("str"), unmapped


def _unmapped_message(field: str, spec: FieldSpec, shown: pd.Series[Any]) -> Any:
    assert spec.map is not None
    keys = list(spec.map)
    listed = ", ".join(repr(k) for k in keys[:_SHOWN_KEYS])
    listed += ", ..." if len(keys) > _SHOWN_KEYS else ""
    case = " (ignoring case)" if spec.ignore_case else ""
    return (
        field
        + ": value '"
        + shown
        + f"' of column '{spec.column}' is not in the map{case} ({listed}) and no default is given"
    )


def _note(problems: pd.Series[Any], mask: pd.Series[Any], message: Any) -> None:
    import pandas as pd

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


def _convert(
    values: pd.Series[Any], kind: str, spec: FieldSpec
) -> tuple[Any, np.ndarray[Any, Any], Any]:
    """Typed values, which could not be converted, and why (a text per value, read only
    where it could not)."""
    import numpy as np
    import pandas as pd

    if kind in DATE_KINDS:
        dates, codes, reasons = _parse_dates(values, spec.formats, spec.timezone)
        failed = codes != _OK
        return dates, failed, _texts(codes, reasons, values.index) if failed.any() else None
    if kind == "customer_id":
        digits = _digit_runs(values, b"+", 19)
        if digits is None:
            digits = values.str.fullmatch(r"\+?[0-9]{1,19}").to_numpy(dtype=bool)  # ASCII
        numbers = _parse_numbers(values, digits, "+", "uint64")
        bad = ~digits | (numbers == 0) | (numbers > _MAX_CUSTOMER_ID)
        numbers[bad] = 0
        converted: Any = pd.Series(numbers.astype(np.int64), index=values.index)
    elif kind == "owner_type":
        converted, bad = values, ~values.isin(OWNER_TYPES).to_numpy(dtype=bool)
    else:
        converted, bad = values, np.zeros(len(values), dtype=bool)
    why = pd.Series(_why(kind), index=values.index, dtype="str") if bad.any() else None
    return converted, bad, why


def _texts(codes: np.ndarray[Any, Any], texts: list[str], index: pd.Index[Any]) -> Any:
    """A text Series: `texts[code]` for each code (Arrow decodes it, no Python per row)."""
    import pandas as pd
    import pyarrow as pa

    decoded = pa.DictionaryArray.from_arrays(
        pa.array(codes, type=pa.int8()), pa.array(texts, type=pa.large_string())
    ).cast(pa.large_string())
    return pd.Series(pd.array(decoded, dtype="str"), index=index)


# --- dates ------------------------------------------------------------------------------------

_OK, _NO_MATCH, _GAP, _RANGE = 0, 1, 2, 3  # a value's outcome; the highest failure is told


def parse_dates(
    values: pd.Series[Any], formats: list[str], timezone: str
) -> tuple[pd.Series[Any], pd.Series[Any]]:
    """Parse with each format in turn: millisecond UTC timestamps (NaT where none fits) and,
    per value, why it did not parse ("" where it did, and for empty values)."""
    dates, codes, reasons = _parse_dates(values, formats, timezone)
    return dates, _texts(codes, reasons, values.index)


def _parse_dates(
    values: pd.Series[Any], formats: list[str], timezone: str
) -> tuple[pd.Series[Any], np.ndarray[Any, Any], list[str]]:
    """`parse_dates` as the instants, an outcome code per value and the text of each code."""
    import numpy as np
    import pandas as pd

    result = np.full(len(values), np.datetime64("NaT", "ms"))
    outcome = np.full(len(values), _NO_MATCH, dtype=np.int8)
    given = (values != "").to_numpy(dtype=bool)
    for fmt in formats:
        todo = given & np.isnat(result)
        if not todo.any():
            break
        instants, codes = _parse_one(values if todo.all() else values[todo], fmt, timezone)
        result[todo] = instants
        outcome[todo] = np.maximum(outcome[todo], codes)
    outcome[~np.isnat(result) | ~given] = _OK
    shown = " or ".join(f"'{f}'" for f in formats)
    reasons = [
        "",
        f"does not match date_format {shown}",
        f"does not exist in timezone {timezone} (a local time skipped when the clocks go forward)",
        f"is outside the dates the API takes ({DATE_RANGE})",
    ]
    dates = pd.Series(result, index=values.index).dt.tz_localize("UTC")
    return dates, outcome, reasons


def _parse_one(values: Any, fmt: str, timezone: str) -> tuple[Any, Any]:
    """One format: the parsed instants (UTC, datetime64[ms], NaT where none) and each value's
    outcome code (int8), as arrays in the order of `values`."""
    import numpy as np

    if fmt in ("epoch", "epoch_ms"):
        return _parse_epoch(values, 1000 if fmt == "epoch" else 1)
    naive, aware = _parse_text(values, fmt)
    if timezone == "UTC":  # no clock change: the wall times are the instants
        local = naive.to_numpy(dtype="datetime64[ms]")
    else:
        local = _localize(naive, timezone).to_numpy(dtype="datetime64[ms]")
    aware = aware.to_numpy(dtype="datetime64[ms]")
    instant = np.where(np.isnat(aware), local, aware)
    codes = np.full(len(values), _NO_MATCH, dtype=np.int8)
    codes[~np.isnat(naive.to_numpy(dtype="datetime64[ms]")) & np.isnat(local)] = _GAP
    return _in_range(instant, codes)


def _in_range(instant: Any, codes: Any) -> tuple[Any, Any]:
    """The instants the API takes (NaT for the others, coded _RANGE)."""
    import numpy as np

    ms = instant.view(np.int64)
    known = ~np.isnat(instant)
    in_range = known & (ms >= 0) & (ms <= _DATE_MAX_MS)
    codes[known & ~in_range] = _RANGE
    codes[in_range] = _OK
    instant[~in_range] = np.datetime64("NaT", "ms")
    return instant, codes


def _parse_numbers(values: Any, chosen: Any, sign: str, dtype: str) -> np.ndarray[Any, Any]:
    """The `chosen` values (a mask of plain decimal numbers, maybe signed) as `dtype`
    (uint64: exact; float64: correctly rounded), parsed by Arrow; 0 elsewhere. `sign` is the
    leading sign characters Arrow does not take for that type and the value may have."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    out = np.zeros(len(values), dtype=dtype)
    where = np.flatnonzero(chosen)
    if len(where):
        part = values if len(where) == len(values) else values.iloc[where]
        text = pa.array(part, type=pa.large_string())
        if sign:
            text = pc.utf8_ltrim(text, sign)
        out[where] = pc.cast(text, pa.type_for_alias(dtype)).to_numpy(zero_copy_only=False)
    return out


# epoch values: the form taken, and its part Arrow parses ("+-5" is taken, but no number)
_EPOCH = r"\+?-?[0-9]{1,30}(?:\.[0-9]*)?"
_EPOCH_NUMBER = r"[+-]?[0-9]{1,30}(?:\.[0-9]*)?"


def _parse_epoch(values: Any, ms_per_unit: int) -> tuple[Any, Any]:
    """Epoch seconds or milliseconds; parsed as float64 (never as integers that a
    multiplication by 1000 could wrap around into the range)."""
    import numpy as np

    plain = _digit_runs(values, b"+-", 30)  # most epochs: a fullmatch of _EPOCH_NUMBER
    if plain is not None and plain.all():
        parsed = plain
    else:
        parsed = values.str.fullmatch(_EPOCH_NUMBER).to_numpy(dtype=bool)
    number = parsed.copy()
    if not parsed.all():
        number[~parsed] = values[~parsed].str.fullmatch(_EPOCH).to_numpy(dtype=bool)
    ms = _parse_numbers(values, parsed, "", "float64") * ms_per_unit
    in_range = parsed & (ms >= 0) & (ms <= _DATE_MAX_MS)
    instant = np.full(len(values), np.datetime64("NaT", "ms"))
    instant[in_range] = np.round(ms[in_range]).astype(np.int64).astype("datetime64[ms]")
    codes = np.full(len(values), _NO_MATCH, dtype=np.int8)
    codes[number & ~in_range] = _RANGE
    codes[in_range] = _OK
    return instant, codes


def _parse_text(values: Any, fmt: str) -> tuple[Any, Any]:
    """(naive, aware): values without an offset as local wall times, values with one in UTC.

    A format of fixed-width numeric fields (``%d/%m/%Y %H:%M:%S`` and the like) is parsed by
    slicing (`_parse_fixed`) where a value has exactly that shape and is a real date; the
    other values (and other formats) go to `_parse_text_general`, which decides for them.
    """
    import pandas as pd

    fixed = _parse_fixed(values, fmt)
    if fixed is None:
        return _parse_text_general(values, fmt)
    aware = pd.Series(pd.NaT, index=values.index, dtype=_DATE_DTYPE)
    rest = fixed.isna()
    if rest.any():
        slow_naive, slow_aware = _parse_text_general(values[rest], fmt)
        fixed.loc[rest] = slow_naive
        aware.loc[rest] = slow_aware
    return fixed, aware


_FIXED_FIELDS = {"%Y": 4, "%m": 2, "%d": 2, "%H": 2, "%M": 2, "%S": 2}


def _fixed_layout(fmt: str) -> tuple[int, dict[str, int], str] | None:
    """(width, start of each field, a regex of the whole value) for a format made only of
    fixed-width numeric fields (each at most once, %Y %m %d among them) and literal
    characters; None for any other format."""
    import re

    starts: dict[str, int] = {}
    pattern, width, i = "", 0, 0
    while i < len(fmt):
        if fmt[i] == "%":
            code = fmt[i : i + 2]
            if code not in _FIXED_FIELDS or code in starts:
                return None
            starts[code], width = width, width + _FIXED_FIELDS[code]
            pattern += f"[0-9]{{{_FIXED_FIELDS[code]}}}"
            i += 2
            continue
        if (fmt[i].isspace() and fmt[i] != " ") or not fmt[i].isascii():
            return None  # a space matches one space here (strptime also takes more)
        pattern, width, i = pattern + re.escape(fmt[i]), width + 1, i + 1
    if not {"%Y", "%m", "%d"} <= set(starts):
        return None
    return width, starts, f"^{pattern}$"


def _parse_fixed(values: Any, fmt: str) -> Any:
    """Naive wall times (datetime64[ms]) of the values that have exactly the fixed-width shape
    of `fmt` (every field zero-padded) and are a real date and time (year 1 to 9999, seconds
    below 60), NaT for every other value; None when `fmt` is not such a format."""
    import numpy as np
    import pandas as pd

    layout = _fixed_layout(fmt)
    if layout is None:
        return None
    width, starts, _ = layout
    out = np.full(len(values), np.datetime64("NaT"), dtype="datetime64[ms]")
    where, digits = _shaped(values, fmt, width)
    if len(where):

        def field(code: str) -> Any:
            if code not in starts:
                return np.zeros(len(where), dtype=np.int32)
            start = starts[code]
            number = digits[start].astype(np.int32)  # at most 9999: int32 is enough
            for k in range(1, _FIXED_FIELDS[code]):
                number = number * 10 + digits[start + k]
            return number

        year, month, day = field("%Y"), field("%m"), field("%d")
        hour, minute, second = field("%H"), field("%M"), field("%S")
        leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
        valid = (year >= 1) & (month >= 1) & (month <= 12) & (day >= 1)
        month_days = np.array(_MONTH_DAYS)[np.clip(month, 1, 12)]
        valid &= day <= month_days + (leap & (month == 2))
        valid &= (hour < 24) & (minute < 60) & (second < 60)
        days = _days_from_civil(year, month, day).astype(np.int64)
        ms = ((days * 24 + hour) * 60 + minute) * 60_000
        ms += second * 1000
        if len(where) == len(out) and valid.all():
            out = ms.astype("datetime64[ms]")
        else:
            out[where[valid]] = ms[valid].astype("datetime64[ms]")
    return pd.Series(out, index=values.index)


_MONTH_DAYS = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # by month, February 28


def _days_from_civil(year: Any, month: Any, day: Any) -> Any:
    """Days since 1970-01-01 of proleptic Gregorian dates (arrays; H. Hinnant's algorithm)."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * ((month + 9) % 12) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _shaped(values: Any, fmt: str, width: int) -> tuple[Any, Any]:
    """The positions of the values of exactly `width` ASCII characters with a digit at each
    field of `fmt` and its literal characters elsewhere, and their bytes minus ord("0"), by
    character position (`width` rows, one column per value)."""
    import numpy as np

    text = _arrow_text(values)
    if not len(text):
        return np.zeros(0, dtype=np.int64), np.zeros((width, 0), dtype=np.uint8)
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[
        text.offset : text.offset + len(text) + 1
    ]
    sized = np.diff(offsets) == width
    if text.null_count:
        sized &= text.is_valid().to_numpy(zero_copy_only=False)
    where = np.flatnonzero(sized)
    data = np.frombuffer(text.buffers()[2] or b"", dtype=np.uint8)
    if len(where) == len(text):  # all of that width: the bytes are one block
        rows = data[offsets[0] : offsets[0] + len(where) * width].reshape(len(where), width)
    else:
        rows = data[offsets[where][:, None] + np.arange(width)]
    columns = np.ascontiguousarray(rows.T) - np.uint8(48)  # wraps around below "0"
    shaped = np.ones(len(where), dtype=bool)
    i = position = 0
    while i < len(fmt):
        if fmt[i] == "%":
            for k in range(_FIXED_FIELDS[fmt[i : i + 2]]):
                shaped &= columns[position + k] <= 9
            position += _FIXED_FIELDS[fmt[i : i + 2]]
            i += 2
        else:
            shaped &= columns[position] == (ord(fmt[i]) - 48) % 256
            position, i = position + 1, i + 1
    if shaped.all():
        return where, columns
    return where[shaped], columns[:, shaped]


def _parse_text_general(values: Any, fmt: str) -> tuple[Any, Any]:
    """pandas parses in bulk; where it cannot (nanosecond range, mixed offsets), Python's
    datetime parses value by value, so a far date is a date, not a crash."""
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
    import pandas as pd

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
    import pandas as pd

    out = pd.Series(pd.NaT, index=index, dtype="datetime64[ms]")
    if found:
        out.loc[list(found)] = pd.Series(list(found.values()), dtype="datetime64[ms]").to_numpy()
    return out


def _localize(naive: Any, timezone: str) -> Any:
    """Local wall times to UTC. A time skipped by a DST change is NaT; a repeated one (the
    autumn hour that happens twice) is its first occurrence, the earlier instant."""
    import numpy as np
    import pandas as pd

    if not naive.notna().any():
        return pd.Series(pd.NaT, index=naive.index, dtype=_DATE_DTYPE)
    n = len(naive)
    first = naive.dt.tz_localize(timezone, ambiguous=np.ones(n, bool), nonexistent="NaT")
    second = naive.dt.tz_localize(timezone, ambiguous=np.zeros(n, bool), nonexistent="NaT")
    local = first.where(~(second < first), second)
    return local.dt.tz_convert("UTC").astype(_DATE_DTYPE)
