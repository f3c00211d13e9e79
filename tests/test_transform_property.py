"""Property-based: the transform over random CSV bytes.

Every source row is counted once (accepted + rejected + filtered), each at its exact line,
and nothing escapes but FileRejected for a file-level problem. The expected line numbers come
from Python's csv module over the decoded text, never from the code under test.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflow.block import RunContext
from dataflow.errors import FileRejected
from dataflow.templates import EARNED_BADGES
from dataflow_blocks.field_mapping import FieldMapping, FieldMappingConfig

FIELDS = ("badgeMetaId", "customerId", "earnEventDate", "earnExpiresOn")
SETTINGS = settings(
    max_examples=100,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def transform(
    data: bytes, ncols: int, delimiter: str, chunk_bytes: int
) -> tuple[list[int], dict[int, str], int]:
    columns = [f"c{i}" for i in range(ncols)]
    mapping: dict[str, Any] = {f: columns[i % ncols] for i, f in enumerate(FIELDS)}
    mapping["earnExpiresOn"] = {"column": columns[3 % ncols], "date_format": "epoch"}
    cfg = FieldMappingConfig.model_validate(
        {
            "name": "t",
            "type": "field_mapping",
            "delimiter": delimiter,
            "mapping": mapping,
            "chunk_bytes": chunk_bytes,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.csv"
        path.write_bytes(data)
        stream = FieldMapping(cfg, RunContext("t", EARNED_BADGES, path.parent, path.parent)).read(
            path
        )
        accepted: list[int] = []
        rejected: dict[int, str] = {}
        filtered = 0
        try:
            for chunk in stream:
                accepted += [int(i) for i in chunk.records.index]
                for error in chunk.errors:
                    assert error.line_no not in rejected, f"line {error.line_no} twice"
                    rejected[error.line_no] = error.message
                filtered += chunk.filtered
        finally:
            stream.close()
    return accepted, rejected, filtered


def expected(text: str, ncols: int, delimiter: str) -> tuple[list[int], list[int], int]:
    """(row lines, malformed lines, blank count) of the data after the header, by csv."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    next(reader)
    rows: list[int] = []
    malformed: list[int] = []
    blank = 0
    start = reader.line_num + 1
    for record in reader:
        if not "".join(record).strip():
            blank += 1
        elif len(record) != ncols:
            malformed.append(start)
        else:
            rows.append(start)
        start = reader.line_num + 1
    return rows, malformed, blank


CHARS = st.sampled_from(
    [*"ab9 -+:TZ", ",", ";", "\t", "|", '"', "\n", "\r", "é", "\x00", "\ufeff", "\x85"]
)
VALUES = st.one_of(
    st.text(CHARS, max_size=12),
    st.sampled_from(["B", "1", "2026-11-16T10:00:00Z", "1830000000", "31/12/9999", "  "]),
    st.integers(min_value=3_000, max_value=70_000).map(lambda n: "x" * n),  # huge field
)
ONE_LINE = st.text(st.sampled_from(list('ab9 ,;|\t"é')), min_size=1, max_size=8).filter(
    lambda v: v.strip() != ""
)
ENDINGS = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[str, int, str]:
    """A CSV file (text) with rows, ragged rows, blank lines, mixed line endings."""
    ncols = draw(st.integers(1, 4))
    delimiter = draw(st.sampled_from([",", ";", "\t", "|"]))
    out = io.StringIO()
    out.write(draw(st.sampled_from(["", "\ufeff"])))
    out.write(delimiter.join(f"c{i}" for i in range(ncols)) + draw(ENDINGS))
    records = draw(st.integers(0, 25))
    for n in range(records):
        kind = draw(st.sampled_from(["row"] * 6 + ["ragged", "blank", "spaces"]))
        ending = draw(ENDINGS) if n < records - 1 or draw(st.booleans()) else ""
        if kind == "blank":
            out.write(ending or "\n")
            continue
        if kind == "spaces":
            out.write(delimiter * draw(st.integers(0, ncols)) + " " + (ending or "\n"))
            continue
        if kind == "row":
            fields = draw(st.lists(VALUES, min_size=ncols, max_size=ncols))
        else:  # a wrong number of fields, each on one line (a multi-line one is a broken quote)
            count = draw(st.integers(1, ncols + 2).filter(lambda c: c != ncols))
            fields = draw(st.lists(ONE_LINE, min_size=count, max_size=count))
        # csv.writer leaves a CR or LF unquoted when it is not in lineterminator
        multiline = any("\r" in f or "\n" in f for f in fields)
        quoting = csv.QUOTE_ALL if multiline else csv.QUOTE_MINIMAL
        writer = csv.writer(out, delimiter=delimiter, lineterminator=ending, quoting=quoting)
        writer.writerow(fields)
    return out.getvalue(), ncols, delimiter


@SETTINGS
@given(file=csv_files(), chunk=st.sampled_from([1024, 4096, 1 << 20]), bad=st.integers(-1, 40))
def test_every_row_is_counted_once_at_its_exact_line(
    file: tuple[str, int, str], chunk: int, bad: int
) -> None:
    text, ncols, delimiter = file
    data = text.encode()
    if bad >= 0:  # an invalid UTF-8 byte at the start of some line: a file-level failure
        body = text.lstrip("\ufeff")
        lines = io.StringIO(body, newline="").readlines()
        if bad < len(lines):
            prefix = "\ufeff" * (len(text) - len(body)) + "".join(lines[:bad])
            data = prefix.encode() + b"\xff" + "".join(lines[bad:]).encode()
            try:
                transform(data, ncols, delimiter, chunk)
            except FileRejected as exc:
                assert f"on line {bad + 1})" in str(exc)
            else:
                raise AssertionError("an invalid byte was not a file-level failure")
            return
    rows, malformed, blank = expected(text.lstrip("\ufeff"), ncols, delimiter)
    accepted, rejected, filtered = transform(data, ncols, delimiter, chunk)
    assert sorted(accepted + list(rejected)) == sorted(rows + malformed)
    assert not set(accepted) & set(rejected)
    assert filtered == blank
    for line in malformed:
        assert rejected[line].startswith("malformed line"), (line, rejected[line])


@SETTINGS
@given(
    data=st.binary(max_size=400)
    | st.lists(st.sampled_from([b"a", b",", b'"', b"\n", b"\r", b"\xff", b"\xc3", b"1", b" "])).map(
        b"".join
    ),
    ncols=st.integers(1, 3),
    chunk=st.sampled_from([1024, 1 << 20]),
)
def test_random_bytes_never_escape_but_as_file_rejected(
    data: bytes, ncols: int, chunk: int
) -> None:
    header = ",".join(f"c{i}" for i in range(ncols)).encode() + b"\n"
    try:
        accepted, rejected, filtered = transform(header + data, ncols, ",", chunk)
    except FileRejected as exc:
        assert str(exc) and "Traceback" not in str(exc)
        return
    text = (header + data).decode()
    physical = 1 + text.count("\n") + text.count("\r") - text.count("\r\n")
    lines = accepted + list(rejected)
    assert len(set(lines)) == len(lines)
    assert all(2 <= n <= physical for n in lines)
    assert len(lines) + filtered <= physical - 1
