"""The transform's expressive power on the block itself: SQL filters and expressions (and
their sandbox), value maps, in-file duplicates and the reject threshold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from dataflow.block import RunContext
from dataflow.config import load_dataflow
from dataflow.errors import ConfigError, FileRejected
from dataflow.templates import EARN_BADGES_BULK, EARNED_BADGES, Template, to_json_value
from dataflow_blocks import _sql
from dataflow_blocks.field_mapping import FieldMapping, FieldMappingConfig

EVENT = "2026-11-16T10:00:00Z"
LATER = "1830000000"
HEADER = "b,c,e,x,status,amount,module"
MAPPING: dict[str, Any] = {
    "badgeMetaId": "b",
    "customerId": "c",
    "earnEventDate": {"column": "e", "date_format": "iso8601"},
    "earnExpiresOn": {"column": "x", "date_format": "epoch"},
}


def row(
    c: int, status: str = "paid", amount: str = "12", module: str = "loyalty", b: str = "B"
) -> str:
    return f"{b},{c},{EVENT},{LATER},{status},{amount},{module}"


def transform(
    tmp_path: Path, lines: list[str], template: Template = EARNED_BADGES, **config: Any
) -> tuple[dict[int, dict[str, Any]], dict[int, str], int]:
    """The block over a file: accepted records by line, rejected messages, filtered count."""
    path = tmp_path / "in.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    base = MAPPING if template is EARNED_BADGES else {}
    mapping = {**base, **config.pop("mapping", {})}
    cfg = FieldMappingConfig.model_validate(
        {"name": "t", "type": "field_mapping", "mapping": mapping, **config}
    )
    assert cfg.check(template) == []
    stream = FieldMapping(cfg, RunContext("t", template, tmp_path, tmp_path)).read(path)
    accepted: dict[int, dict[str, Any]] = {}
    rejected: dict[int, str] = {}
    filtered = 0
    try:
        for chunk in stream:
            for line, record in chunk.records.iterrows():
                accepted[int(line)] = dict(record)
            rejected.update({e.line_no: e.message for e in chunk.errors})
            filtered += chunk.filtered
            assert chunk.total == len(chunk.records) + len(chunk.errors) + chunk.filtered
    finally:
        stream.close()
    return accepted, rejected, filtered


# --- filter ----------------------------------------------------------------------------------


def test_rows_where_the_filter_is_not_true_are_filtered_exactly(tmp_path: Path) -> None:
    lines = [row(1), row(2, status="free"), row(3, amount="5"), row(4, status=""), row(5)]
    accepted, rejected, filtered = transform(
        tmp_path, lines, filter="status = 'paid' AND CAST(NULLIF(amount, '') AS INT) > 10"
    )
    assert sorted(accepted) == [2, 6]
    assert rejected == {}
    assert filtered == 3  # false (free), false (5), and a row whose status is '' (false)


def test_a_null_filter_is_not_true(tmp_path: Path) -> None:
    lines = [row(1, amount=""), row(2, amount="20")]
    accepted, rejected, filtered = transform(
        tmp_path, lines, filter="CAST(NULLIF(amount, '') AS INT) > 10"
    )
    assert sorted(accepted) == [3] and rejected == {} and filtered == 1


def test_a_filter_that_fails_on_a_row_rejects_that_row_naming_the_error(tmp_path: Path) -> None:
    lines = [row(1), row(2, amount="abc"), row(3, amount="1"), row(4, amount="n/a")]
    accepted, rejected, filtered = transform(tmp_path, lines, filter="CAST(amount AS DOUBLE) > 10")
    assert sorted(accepted) == [2]
    assert filtered == 1
    assert rejected == {
        3: "filter: the condition failed on this row: Conversion Error: Could not convert "
        "string 'abc' to DOUBLE",
        5: "filter: the condition failed on this row: Conversion Error: Could not convert "
        "string 'n/a' to DOUBLE",
    }


def test_filtered_rows_are_not_mapped_nor_rejected(tmp_path: Path) -> None:
    lines = [row(0, status="test"), row(1)]  # customerId 0 would be rejected if mapped
    accepted, rejected, filtered = transform(tmp_path, lines, filter="status <> 'test'")
    assert sorted(accepted) == [3] and rejected == {} and filtered == 1


def test_columns_are_trimmed_text_and_case_insensitive_names(tmp_path: Path) -> None:
    lines = [row(1, status=" paid "), row(2, status="PAID")]
    accepted, _, filtered = transform(tmp_path, lines, filter="STATUS = 'paid'")
    assert sorted(accepted) == [2] and filtered == 1


# --- expressions -----------------------------------------------------------------------------


def test_an_expression_makes_a_field(tmp_path: Path) -> None:
    lines = [row(1, module=" journeys "), row(2, b="X")]
    accepted, rejected, _ = transform(
        tmp_path, lines, mapping={"badgeMetaId": {"expr": "b || '-' || upper(trim(module))"}}
    )
    assert rejected == {}
    assert [accepted[n]["badgeMetaId"] for n in (2, 3)] == ["B-JOURNEYS", "X-LOYALTY"]


def test_an_expression_that_fails_rejects_the_row_naming_field_and_error(tmp_path: Path) -> None:
    lines = [row(1, amount="7"), row(2, amount="seven"), row(3, amount="")]
    accepted, rejected, _ = transform(
        tmp_path,
        lines,
        mapping={"customerId": {"expr": "CAST(CAST(amount AS INT) + 100 AS VARCHAR)"}},
    )
    assert [accepted[2]["customerId"]] == [107] and sorted(accepted) == [2]
    assert rejected == {
        3: "customerId: the expression failed on this row: Conversion Error: Could not "
        "convert string 'seven' to INT32",
        4: "customerId: the expression failed on this row: Conversion Error: Could not "
        "convert string '' to INT32",
    }


def test_an_expression_giving_null_is_an_empty_value(tmp_path: Path) -> None:
    accepted, rejected, _ = transform(
        tmp_path, [row(1, module="")], mapping={"badgeMetaId": {"expr": "NULLIF(module, '')"}}
    )
    assert accepted == {} and rejected == {2: "badgeMetaId: empty (expr)"}


def test_an_expression_result_is_converted_like_a_column(tmp_path: Path) -> None:
    accepted, rejected, _ = transform(
        tmp_path,
        [row(1, amount="1794801600"), row(2, amount="x")],
        mapping={"earnEventDate": {"expr": "amount", "date_format": "epoch"}},
    )
    assert to_json_value(pd.Series([accepted[2]["earnEventDate"]]), "epoch_s") == [1794801600]
    assert rejected == {3: "earnEventDate: 'x' does not match date_format 'epoch'"}


# --- the sandbox -----------------------------------------------------------------------------

HOSTILE = [
    ("read_csv('/etc/passwd')", "function read_csv() is not allowed"),
    ("read_text('/etc/passwd')", "function read_text() is not allowed"),
    ("read_blob('/etc/passwd')", "function read_blob() is not allowed"),
    ("(SELECT content FROM read_text('/etc/passwd'))", "a subquery is not allowed"),
    ("b FROM read_csv('/etc/passwd')", "syntax error"),
    ("b; COPY (SELECT 1) TO '/tmp/x.csv'", "write one expression, not several statements"),
    ("b; ATTACH '/tmp/x.db'", "write one expression, not several statements"),
    ("b; INSTALL httpfs", "write one expression, not several statements"),
    ("b; LOAD httpfs", "write one expression, not several statements"),
    ("b; SET enable_external_access = true", "write one expression, not several statements"),
    ("getenv('HOME')", "function getenv() is not allowed"),
    ("current_setting('threads')", "function current_setting() is not allowed"),
    ("query('SELECT 1')", "function query() is not allowed"),
    ("now()", "function now() is not allowed"),
    ("random()", "is not allowed"),
    ("list_transform([1], x -> x + 1)", "is not allowed"),
    ("t.b", "write the column name alone"),
    ("*", "'*' is not allowed"),
    ("$1", "parameters ($1, ?) are not allowed"),
    ("b = ", "syntax error"),
    ("", "the expression is empty"),
]


@pytest.mark.parametrize(("expression", "message"), HOSTILE)
def test_hostile_expressions_are_refused_at_validate_time(expression: str, message: str) -> None:
    cfg = FieldMappingConfig.model_validate(
        {
            "name": "t",
            "type": "field_mapping",
            "mapping": {**MAPPING, "badgeMetaId": {"expr": expression}},
        }
    )
    problems = cfg.check(EARNED_BADGES)
    assert len(problems) == 1, problems
    where, text = problems[0]
    assert where == ("mapping", "badgeMetaId", "expr")
    assert message in text


ENGINE_WALL = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT content FROM read_text('/etc/passwd')",
    "COPY (SELECT 1) TO '/tmp/dataflow-sandbox-copy.csv'",
    "ATTACH '/tmp/dataflow-sandbox.db'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SELECT * FROM 'https://example.com/x.csv'",
    "SET enable_external_access = true",
    "SET autoload_known_extensions = true",
    "RESET enable_external_access",
]


@pytest.mark.parametrize("statement", ENGINE_WALL)
def test_the_engine_itself_refuses_files_network_and_reconfiguration(statement: str) -> None:
    """The second wall: even SQL that bypassed the parser cannot reach outside."""
    engine = _sql.Engine()
    try:
        with pytest.raises(Exception) as caught:
            engine._con.execute(statement).fetchall()
        assert type(caught.value).__module__.startswith(("duckdb", "_duckdb"))
        # and the lock held: external access is still off
        with pytest.raises(Exception, match="disabled"):
            engine._con.execute("SELECT * FROM read_csv('/etc/passwd')").fetchall()
    finally:
        engine.close()
    assert not Path("/tmp/dataflow-sandbox-copy.csv").exists()
    assert not Path("/tmp/dataflow-sandbox.db").exists()


def test_what_runs_is_the_checked_tree_not_the_text() -> None:
    parsed = _sql.parse("b /* ; read_text('/etc/passwd') */ || '-'")
    sql = _sql.compile_sql(parsed, {"b": 3})
    assert sql == "\"c3\" || '-'"
    engine = _sql.Engine()
    try:
        out = engine.run(sql, pa.table({"c3": pa.array(["x"])}))
    finally:
        engine.close()
    assert out.values.to_pylist() == ["x-"] and out.failed == {}


def test_a_filter_must_be_a_condition() -> None:
    with pytest.raises(_sql.ExpressionError, match="a filter must be a condition"):
        _sql.parse("status", predicate=True)
    _sql.parse("COALESCE(status = 'x', false)", predicate=True)


# --- validate time ---------------------------------------------------------------------------


def write_flow(tmp_path: Path, transform: str) -> Path:
    path = tmp_path / "flow.yaml"
    path.write_text(
        f"""version: 1
name: sql-check
template: earned_badges
blocks:
  - {{name: src, type: sftp_read, hostname: h, username: u, password: p,
     source_directory: /in, filename_pattern: 'x.*', processed_directory: /p,
     error_directory: /e}}
{transform}
  - {{name: api, type: http_write, base_url: "https://api.example",
     auth: {{type: basic, username: u, password: p}}}}
"""
    )
    return path


def test_validate_reports_syntax_and_unknown_columns_at_their_line(tmp_path: Path) -> None:
    path = write_flow(
        tmp_path,
        """  - name: transform
    type: field_mapping
    headerless: true
    headers: [b, c, e, x, status]
    filter: "statuz = 'paid'"
    mapping:
      badgeMetaId: {expr: "b ||"}
      customerId: c
      earnEventDate: e
      earnExpiresOn: {column: x, date_format: epoch}""",
    )
    with pytest.raises(ConfigError) as caught:
        load_dataflow(path)
    text = str(caught.value)
    assert "flow.yaml:12: blocks[1].filter: column 'statuz' is not in headers" in text
    assert "did you mean 'status'?" in text
    assert (
        "flow.yaml:14: blocks[1].mapping.badgeMetaId.expr: syntax error at column 4: "
        "Required keyword: 'expression' missing for DPipe"
    ) in text


def test_validate_does_not_load_the_engine(tmp_path: Path) -> None:
    path = write_flow(
        tmp_path,
        """  - name: transform
    type: field_mapping
    filter: "status = 'paid'"
    mapping:
      badgeMetaId: {expr: "upper(b)"}
      customerId: c
      earnEventDate: e
      earnExpiresOn: {column: x, date_format: epoch}""",
    )
    code = (
        "import sys; from dataflow.config import load_dataflow; "
        f"load_dataflow({str(path)!r}); "
        "print(sorted(m for m in ('duckdb', 'polars', 'pyarrow.csv') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_importing_the_block_does_not_import_the_engine_nor_the_csv_reader() -> None:
    code = (
        "import sys; import dataflow_blocks.field_mapping; "
        "print(sorted(m for m in ('duckdb', 'sqlglot', 'dataflow.csvchunks') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- value maps ------------------------------------------------------------------------------


def bulk_row(c: int, module: str) -> str:
    return f"B,{c},{EVENT},{LATER},paid,1,{module}"


BULK = {
    "badgeMetaId": "b",
    "customerId": "c",
    "earnEventDate": {"column": "e", "date_format": "iso8601"},
    "referenceId": {"expr": "'ref-' || amount"},
}


def test_a_value_map_with_and_without_default(tmp_path: Path) -> None:
    owner = {"column": "module", "map": {"loyalty": "Loyalty", "journeys": "Journeys"}}
    lines = [
        bulk_row(1, "loyalty"),
        bulk_row(2, "journeys"),
        bulk_row(3, "Loyalty"),
        bulk_row(4, "x"),
    ]
    accepted, rejected, _ = transform(
        tmp_path, lines, EARN_BADGES_BULK, mapping={**BULK, "ownerType": owner}
    )
    assert {n: r["ownerType"] for n, r in accepted.items()} == {2: "Loyalty", 3: "Journeys"}
    assert rejected == {
        4: "ownerType: value 'Loyalty' of column 'module' is not in the map ('loyalty', "
        "'journeys') and no default is given",
        5: "ownerType: value 'x' of column 'module' is not in the map ('loyalty', "
        "'journeys') and no default is given",
    }
    accepted, rejected, _ = transform(
        tmp_path,
        lines,
        EARN_BADGES_BULK,
        mapping={**BULK, "ownerType": {**owner, "default": "Milestones"}},
    )
    assert rejected == {}
    assert [accepted[n]["ownerType"] for n in (4, 5)] == ["Milestones", "Milestones"]


def test_a_value_map_ignoring_case(tmp_path: Path) -> None:
    owner = {"column": "module", "map": {"Loyalty": "Loyalty"}, "ignore_case": True}
    lines = [bulk_row(1, "LOYALTY"), bulk_row(2, "loyalty"), bulk_row(3, "journeys")]
    accepted, rejected, _ = transform(
        tmp_path, lines, EARN_BADGES_BULK, mapping={**BULK, "ownerType": owner}
    )
    assert sorted(accepted) == [2, 3]
    assert rejected == {
        4: "ownerType: value 'journeys' of column 'module' is not in the map (ignoring case) "
        "('Loyalty') and no default is given"
    }


def test_a_map_into_owner_type_is_checked_at_validate_time() -> None:
    cfg = FieldMappingConfig.model_validate(
        {
            "name": "t",
            "type": "field_mapping",
            "mapping": {
                **BULK,
                "ownerType": {"column": "m", "map": {"a": "Loyalty", "b": "Nope"}, "default": "X"},
            },
        }
    )
    assert [w for w, _ in cfg.check(EARN_BADGES_BULK)] == [
        ("mapping", "ownerType", "map", "b"),
        ("mapping", "ownerType", "default"),
    ]


def test_map_keys_are_text_and_clashing_case_keys_are_refused() -> None:
    spec = {"column": "m", "map": {1: "Loyalty"}}
    cfg = FieldMappingConfig.model_validate(
        {"name": "t", "type": "field_mapping", "mapping": {**BULK, "ownerType": spec}}
    )
    assert cfg.specs["ownerType"].map == {"1": "Loyalty"}
    with pytest.raises(ValueError, match="the same ignoring case"):
        FieldMappingConfig.model_validate(
            {
                "name": "t",
                "type": "field_mapping",
                "mapping": {
                    **BULK,
                    "ownerType": {
                        "column": "m",
                        "map": {"a": "Loyalty", "A": "Journeys"},
                        "ignore_case": True,
                    },
                },
            }
        )


# --- duplicates ------------------------------------------------------------------------------


def test_duplicates_are_rejected_naming_the_first_line_across_chunks(tmp_path: Path) -> None:
    lines = [row(i % 7 + 1) for i in range(60)]  # customers 1..7 repeating
    lines[3] = row(4, amount="999")  # same key, other columns differ: still a duplicate
    lines.append(f"B,1,16/11/2026 10:00,{LATER},paid,1,loyalty")  # same instant, other spelling
    accepted, rejected, _ = transform(
        tmp_path,
        lines,
        duplicates="reject",
        chunk_bytes=1024,
        mapping={"earnEventDate": {"column": "e", "date_format": ["iso8601", "%d/%m/%Y %H:%M"]}},
    )
    assert sorted(accepted) == list(range(2, 9))
    assert len(rejected) == 54
    fields = "badgeMetaId, customerId, earnEventDate"
    assert rejected[9] == f"duplicate of line 2 (the same {fields}); duplicates: reject"
    assert rejected[62] == f"duplicate of line 2 (the same {fields}); duplicates: reject"
    assert all(m.startswith("duplicate of line ") for m in rejected.values())


def test_duplicates_are_kept_by_default(tmp_path: Path) -> None:
    accepted, rejected, _ = transform(tmp_path, [row(1), row(1)])
    assert sorted(accepted) == [2, 3] and rejected == {}


def test_an_invalid_row_is_not_a_first_occurrence(tmp_path: Path) -> None:
    lines = [f"B,1,never,{LATER},paid,1,l", row(1), row(1)]
    _, rejected, _ = transform(tmp_path, lines, duplicates="reject")
    assert rejected[4] == (
        "duplicate of line 3 (the same badgeMetaId, customerId, earnEventDate); duplicates: reject"
    )


def test_the_bulk_key_includes_owner_type_and_reference(tmp_path: Path) -> None:
    lines = [bulk_row(1, "Loyalty"), bulk_row(1, "Journeys"), bulk_row(1, "Loyalty")]
    accepted, rejected, _ = transform(
        tmp_path,
        lines,
        EARN_BADGES_BULK,
        duplicates="reject",
        mapping={**BULK, "ownerType": "module"},
    )
    assert sorted(accepted) == [2, 3]
    assert rejected == {
        4: "duplicate of line 2 (the same badgeMetaId, customerId, earnEventDate, ownerType, "
        "referenceId); duplicates: reject"
    }


# --- the reject threshold --------------------------------------------------------------------


def test_above_max_rejected_percent_the_file_fails_before_any_chunk(tmp_path: Path) -> None:
    lines = [row(1), row(0), row(0), row(2), row(3, status="free")]  # 2 of 4 kept rejected
    with pytest.raises(FileRejected) as caught:
        transform(tmp_path, lines, filter="status = 'paid'", max_rejected_percent=49.9)
    assert str(caught.value) == (
        "2 of 4 rows rejected (50.0 %), above max_rejected_percent 49.9; nothing was sent"
    )
    accepted, rejected, filtered = transform(
        tmp_path, lines, filter="status = 'paid'", max_rejected_percent=50
    )
    assert (sorted(accepted), sorted(rejected), filtered) == ([2, 5], [3, 4], 1)


def test_the_threshold_pass_is_made_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[Path] = []
    original = FieldMapping._open

    def counting(self: FieldMapping, path: Path) -> Any:
        opened.append(path)
        return original(self, path)

    monkeypatch.setattr(FieldMapping, "_open", counting)
    transform(tmp_path, [row(1)])
    assert len(opened) == 1
    transform(tmp_path, [row(1)], max_rejected_percent=10)
    assert len(opened) == 3


def test_a_shown_percentage_is_never_equal_to_the_limit_it_exceeds(tmp_path: Path) -> None:
    lines = [row(i + 1) for i in range(9999)] + [row(0)] * 2  # 2 of 10001: 0.019998 %
    with pytest.raises(FileRejected, match=r"\(0\.02 %\), above max_rejected_percent 0\.0199"):
        transform(tmp_path, lines, max_rejected_percent=0.0199)


@pytest.mark.parametrize("max_run", [64, 1 << 20])
def test_seen_keys_agree_with_a_dictionary(max_run: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    import numpy as np

    from dataflow_blocks import _keys

    monkeypatch.setattr(_keys, "MAX_RUN", max_run)
    rng = random.Random(7)
    seen, first_line = _keys.SeenKeys(), dict[int, int]()
    line = 2
    for _ in range(60):
        values = [rng.randint(0, 3000) for _ in range(rng.randint(0, 300))]
        # little-endian: many digests end in zero bytes (numpy "S" strips trailing NULs)
        keys = np.array([v.to_bytes(16, "little") for v in values], dtype="S16")
        lines = np.arange(line, line + len(values))
        expected = []
        for value, n in zip(values, lines, strict=True):
            expected.append(first_line.get(value, 0))
            first_line.setdefault(value, int(n))
        assert list(seen.check(keys, lines)) == expected
        line += len(values)
    assert seen.size == len(first_line)
