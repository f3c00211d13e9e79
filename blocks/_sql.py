"""SQL expressions for field_mapping: `filter:` and `{expr: ...}`, parsed, sandboxed, vectorised.

Two walls keep an expression from reaching anything but the row's values:

1. **Parsing** (`parse`, pure Python, sqlglot; used by ``dataflow validate``): the text must be
   one SQL *expression* (no statement, no subquery, no table function, no ``*``), built only
   from allow-listed node types and deterministic scalar functions (`_FUNCTIONS`). Column
   references must be plain names. What runs is the SQL regenerated from that checked tree
   (comments dropped, columns renamed to ``c0``, ``c1``...), never the user's text.
2. **The engine** (`Engine`): an in-memory DuckDB connection with external access disabled
   (no files, no network: ``read_csv``, ``COPY``, ``ATTACH``, httpfs all fail), extension
   auto-install/auto-load off, one thread and a memory limit, configuration locked so that
   no statement can turn any of it back on.

Why DuckDB over the chunk's Arrow table (measured here, 2 cores, 1 M rows of text, a filter
plus two expressions, 50 k-row chunks): DuckDB 0.39 s (2 threads; 0.50 s with 1), Polars
``sql_expr`` 0.33 s. Comparable speed; DuckDB wins on the rest: its ``TRY()`` finds exactly
the rows on which an expression fails in one vectorised query (Polars has no row-level
error capture), its SQL dialect is the fuller one engineers know, and it can be locked down
by configuration as a second wall. Import: sqlglot 77 ms (validate), duckdb 70 ms (run only).

Semantics: every source column is text (trimmed; an empty field is ``''``, not NULL), so
compare text with text, and cast for numbers: ``CAST(amount AS DOUBLE) > 10``. A strict
evaluation runs first, over the whole chunk; only when it raises does a second query with
``TRY`` tell, row by row and still vectorised, which rows failed (``TRY((e) IS NULL) IS
NULL`` is true exactly where evaluating ``e`` raises), and those rows are rejected naming
the error. A NULL result that is not an error is NULL: for the filter "not true"
(filtered), for a mapping an empty value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

MAX_LENGTH = 4000  # characters of one expression
_ENGINE_CONFIG: dict[str, Any] = {
    "enable_external_access": False,  # no files, no network (read_csv, COPY, ATTACH, httpfs)
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
    "threads": 1,
    "memory_limit": "512MB",
    "max_expression_depth": 200,
}

# node types whose value is a boolean (a filter must be one); allowed in any expression
_PREDICATES = (
    "EQ",
    "NEQ",
    "NullSafeEQ",
    "NullSafeNEQ",
    "GT",
    "GTE",
    "LT",
    "LTE",
    "Is",
    "In",
    "Between",
    "Like",
    "ILike",
    "Glob",
    "SimilarTo",
    "And",
    "Or",
    "Xor",
    "Not",
    "Boolean",
    "RegexpLike",
    "Contains",
    "StartsWith",
    "EndsWith",
)
# other node types an expression may contain (sqlglot class names)
_STRUCTURE = (
    "Column",
    "Identifier",
    "Literal",
    "Null",
    "Paren",
    "Neg",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Mod",
    "IntDiv",
    "DPipe",
    "Case",
    "If",
    "Cast",
    "TryCast",
    "Try",
    "DataType",
    "DataTypeParam",
    "Coalesce",
    "Nullif",
)
# deterministic scalar functions (sqlglot class names); no clock, no randomness, no I/O
_FUNCTIONS = (
    "Upper",
    "Lower",
    "Trim",
    "Substring",
    "Length",
    "Concat",
    "ConcatWs",
    "Replace",
    "RegexpLike",
    "RegexpReplace",
    "RegexpExtract",
    "Pad",
    "Left",
    "Right",
    "SplitPart",
    "StrPosition",
    "Contains",
    "StartsWith",
    "EndsWith",
    "Reverse",
    "Abs",
    "Round",
    "Floor",
    "Ceil",
    "Greatest",
    "Least",
    "Sign",
    "StrToTime",
    "TimeToStr",
    "UnixToTime",
    "TimeToUnix",
    "DateFromParts",
    "MD5",
    "SHA2",
)
# DuckDB functions sqlglot does not model (parsed as Anonymous): by lower-case name
_ANONYMOUS = frozenset(("strip_accents", "try_strptime", "printf", "lpad", "rpad", "ltrim"))


class ExpressionError(ValueError):
    """The expression cannot be used: a syntax error or something outside the sandbox."""


@dataclass(frozen=True)
class Parsed:
    """A checked expression: the column names it reads and its tree (sqlglot)."""

    text: str
    columns: tuple[str, ...]
    tree: Any


def parse(text: str, *, predicate: bool = False) -> Parsed:
    """Check one expression; raise ExpressionError saying what is wrong and where."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ParseError, TokenError

    if not text.strip():
        raise ExpressionError("the expression is empty")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"the expression is longer than {MAX_LENGTH} characters")
    try:
        trees = sqlglot.parse(text, read="duckdb")
    except ParseError as exc:
        raise ExpressionError(_parse_error(exc)) from None
    except (TokenError, RecursionError) as exc:
        raise ExpressionError(f"syntax error: {_first_line(str(exc))}") from None
    trees = [t for t in trees if t is not None]
    if len(trees) != 1:
        raise ExpressionError("write one expression, not several statements (no ';')")
    tree: Any = trees[0]
    allowed = {
        getattr(exp, name)
        for name in (*_PREDICATES, *_STRUCTURE, *_FUNCTIONS)
        if hasattr(exp, name)
    }
    columns: list[str] = []
    for node in tree.walk():
        if isinstance(node, exp.Anonymous) and node.name.lower() in _ANONYMOUS:
            continue
        if type(node) not in allowed:
            raise ExpressionError(_not_allowed(node, exp))
        if isinstance(node, exp.Column):
            if node.table or node.args.get("db") or node.args.get("catalog"):
                raise ExpressionError(
                    f"write the column name alone: {node.sql(dialect='duckdb')!r} names a table"
                )
            if node.name not in columns:
                columns.append(node.name)
    if predicate and not _is_predicate(tree, exp):
        raise ExpressionError(
            "a filter must be a condition (true or false), such as status = 'paid'; "
            f"{tree.sql(dialect='duckdb', comments=False)!r} is a value"
        )
    return Parsed(text, tuple(columns), tree)


def _is_predicate(node: Any, exp: Any) -> bool:
    if isinstance(node, exp.Paren):
        return _is_predicate(node.this, exp)
    if isinstance(node, (exp.Cast, exp.TryCast)):
        return bool(node.to.is_type("boolean"))
    if isinstance(node, exp.Coalesce):
        args = [node.this, *(node.args.get("expressions") or [])]
        return all(_is_predicate(a, exp) for a in args)
    if isinstance(node, exp.Case):
        branches = [i.args.get("true") for i in node.args.get("ifs") or []]
        default = node.args.get("default")
        branches += [default] if default is not None else []
        return all(_is_predicate(b, exp) for b in branches)
    return any(isinstance(node, getattr(exp, n)) for n in _PREDICATES if hasattr(exp, n))


def _not_allowed(node: Any, exp: Any) -> str:
    if isinstance(node, (exp.Select, exp.Subquery, exp.Query)):
        return "a subquery is not allowed: write an expression over the row's columns"
    if isinstance(node, exp.Star):
        return "'*' is not allowed: name the columns"
    if isinstance(node, exp.Placeholder):
        return "parameters ($1, ?) are not allowed"
    if isinstance(node, exp.Func):
        name = node.name if isinstance(node, exp.Anonymous) else node.sql_name()
        return (
            f"function {name.lower()}() is not allowed in an expression (only deterministic "
            "text, number and date functions are; see docs/transform.md)"
        )
    return f"{type(node).__name__} is not allowed in an expression (see docs/transform.md)"


def _parse_error(exc: Any) -> str:
    errors = getattr(exc, "errors", None) or []
    if errors:
        first = errors[0]
        where = f" at column {first.get('col')}" if first.get("col") else ""
        what = re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", first.get("description") or "")
        return f"syntax error{where}: {what or 'invalid SQL'}"
    return f"syntax error: {_first_line(str(exc))}"


def _first_line(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text).strip().splitlines()[0] if text.strip() else ""


def resolve(parsed: Parsed, header: list[str]) -> dict[str, int] | str:
    """Each column name the expression reads -> its position in `header`, or the message
    naming the first unknown one. Exact names first, then a unique case-insensitive match
    (SQL identifiers are case-insensitive unless quoted)."""
    found: dict[str, int] = {}
    for name in parsed.columns:
        if name in header:
            found[name] = header.index(name)
            continue
        folded = [i for i, h in enumerate(header) if h.casefold() == name.casefold()]
        if len(folded) != 1:
            import difflib

            close = difflib.get_close_matches(name, header, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return f"column {name!r} is not in the file's columns ({', '.join(header)}){hint}"
        found[name] = folded[0]
    return found


def compile_sql(parsed: Parsed, positions: dict[str, int]) -> str:
    """The checked tree as DuckDB SQL, columns renamed to c<position>, comments dropped."""
    from sqlglot import exp

    def rename(node: Any) -> Any:
        if isinstance(node, exp.Column):
            return exp.column(f"c{positions[node.name]}", quoted=True)
        return node

    tree = parsed.tree.copy().transform(rename)
    return str(tree.sql(dialect="duckdb", comments=False))


@dataclass(frozen=True)
class Outcome:
    """One expression over a chunk: its values, and the rows on which it failed."""

    values: pa.Array
    failed: dict[int, str]  # row position -> the engine's error


class Engine:
    """A locked-down DuckDB connection evaluating expressions over Arrow tables."""

    def __init__(self) -> None:
        import duckdb

        self._duckdb = duckdb
        self._con = duckdb.connect(":memory:", config=dict(_ENGINE_CONFIG))
        self._con.execute("SET lock_configuration = true")

    def close(self) -> None:
        self._con.close()

    def run(self, sql: str, table: pa.Table, *, as_text: bool = False) -> Outcome:
        """Evaluate `sql` over `table` (columns c0, c1, ...): strict, then, only if that
        raises, the rows on which it fails (vectorised, with TRY)."""
        value = f"CAST(({sql}) AS VARCHAR)" if as_text else f"({sql})"
        try:
            return Outcome(self._column(f"SELECT {value} AS v FROM chunk", table), {})
        except self._duckdb.Error as exc:
            first_error = _engine_message(exc)
        values = self._column(f"SELECT TRY({value}) AS v FROM chunk", table)
        flags = self._column(f"SELECT TRY(({sql}) IS NULL) IS NULL AS v FROM chunk", table)
        failed_rows = [i for i, bad in enumerate(flags.to_pylist()) if bad]
        return Outcome(values, self._messages(value, table, failed_rows, first_error))

    def _column(self, query: str, table: pa.Table) -> pa.Array:
        self._con.register("chunk", table)
        try:
            result = self._con.sql(query).to_arrow_table()
        finally:
            self._con.unregister("chunk")
        return result.column(0).combine_chunks()

    def _messages(
        self, value: str, table: pa.Table, rows: list[int], first_error: str, budget: int = 16
    ) -> dict[int, str]:
        """The engine's own message for each failed row: asked once per distinct input (at
        most `budget` per chunk); other rows get the message of the first failure."""
        messages: dict[int, str] = {}
        asked: dict[tuple[Any, ...], str] = {}
        for row in rows:
            key = tuple(column[row].as_py() for column in table.columns)
            if key not in asked and len(asked) < budget:
                try:
                    self._column(f"SELECT {value} AS v FROM chunk", table.slice(row, 1))
                    asked[key] = first_error
                except self._duckdb.Error as exc:
                    asked[key] = _engine_message(exc)
            messages[row] = asked.get(key, first_error)
        return messages


def _engine_message(exc: Exception) -> str:
    """The engine's error, first line only, without our internal column names."""
    text = _first_line(str(exc))
    return re.sub(r" when casting from source column \S+", "", text)
