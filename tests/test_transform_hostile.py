"""Hostile input to the transform: each a clean rejection naming the field, or a file-level
FileRejected with a plain reason; never a traceback, never a crash that blocks the inbox."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from dataflow.block import RunContext
from dataflow.csvchunks import CsvChunks
from dataflow.errors import FileRejected
from dataflow.templates import EARNED_BADGES, to_json_value
from dataflow_blocks.field_mapping import FieldMapping, FieldMappingConfig, FieldSpec

from .conftest import EVENT_DATE, Bed
from .test_field_mapping import run  # map rows with the earned-badges base mapping

EVENT = "2026-11-16T10:00:00Z"
LATER = "1830000000"
GOOD = f"B,1,{EVENT},{LATER}"
RANGE = "is outside the dates the API takes (1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z)"
MAPPING: dict[str, Any] = {
    "badgeMetaId": "b",
    "customerId": "c",
    "earnEventDate": {"column": "e", "date_format": "iso8601"},
    "earnExpiresOn": {"column": "x", "date_format": "epoch"},
}


def transform(path: Path, **config: Any) -> tuple[list[int], dict[int, str], int]:
    """The field_mapping block over a file: accepted lines, rejected lines, filtered."""
    cfg = FieldMappingConfig.model_validate(
        {"name": "t", "type": "field_mapping", "mapping": MAPPING, **config}
    )
    context = RunContext("t", EARNED_BADGES, path.parent, path.parent)
    stream = FieldMapping(cfg, context).read(path)
    accepted: list[int] = []
    rejected: dict[int, str] = {}
    filtered = 0
    try:
        for chunk in stream:
            accepted += [int(i) for i in chunk.records.index]
            rejected.update({e.line_no: e.message for e in chunk.errors})
            filtered += chunk.filtered
    finally:
        stream.close()
    return accepted, rejected, filtered


# --- far dates -------------------------------------------------------------------------------


def test_a_never_expires_date_is_sent_and_a_year_one_date_is_rejected() -> None:
    expiry = ["31/12/9999", "31/12/9999 23:59", "01/01/0001", "31/12/1969", "29/02/2026"]
    n = len(expiry)
    spec = FieldSpec(column="x", date_format=["%d/%m/%Y", "%d/%m/%Y %H:%M"])
    records, rejected = run(
        {"b": ["B"] * n, "c": ["1"] * n, "e": [EVENT] * n, "x": expiry}, earnExpiresOn=spec
    )
    assert list(records.index) == [2, 3]
    assert to_json_value(records["earnExpiresOn"], "epoch_s") == [253402214400, 253402300740]
    assert to_json_value(records["earnExpiresOn"], "iso_ms") == [
        "9999-12-31T00:00:00.000Z",
        "9999-12-31T23:59:00.000Z",
    ]
    assert rejected == {
        4: f"earnExpiresOn: '01/01/0001' {RANGE}",
        5: f"earnExpiresOn: '31/12/1969' {RANGE}",
        6: "earnExpiresOn: '29/02/2026' does not match date_format '%d/%m/%Y' or '%d/%m/%Y %H:%M'",
    }


def test_far_iso_dates_and_nanosecond_neighbours() -> None:
    # a nanosecond value in the same chunk makes pandas parse at ns and drop 9999 silently
    events = ["2026-11-16T10:00:00.123456789Z", "0001-01-01T00:00:00", "10000-01-01"]
    expiry = ["9999-12-31T00:00:00Z", "9999-12-31", "9999-12-31T23:00:00-05:00"]
    records, rejected = run(
        {"b": ["B"] * 3, "c": ["1"] * 3, "e": events, "x": expiry},
        earnExpiresOn=FieldSpec(column="x", date_format="iso8601"),
    )
    assert to_json_value(records["earnExpiresOn"], "epoch_s") == [253402214400]
    assert rejected == {
        3: f"earnEventDate: '0001-01-01T00:00:00' {RANGE}",
        # 23:00 at -05:00 is in year 10000 in UTC; a five-digit year matches no ISO date
        4: "earnEventDate: '10000-01-01' does not match date_format 'iso8601'; "
        f"earnExpiresOn: '9999-12-31T23:00:00-05:00' {RANGE}",
    }


@pytest.mark.parametrize(
    ("fmt", "value", "ok"),
    [
        ("epoch", "253402300799", True),  # 9999-12-31T23:59:59Z
        ("epoch", "253402300800", False),
        ("epoch", "99999999999999999999", False),
        ("epoch", "9" * 30, False),
        ("epoch", "-1", False),
        ("epoch_ms", "253402300799999", True),
        ("epoch_ms", "253402300800000", False),
        ("epoch_ms", "-9223372036854775809", False),
    ],
)
def test_epoch_values_far_out_of_range_are_rejected(fmt: str, value: str, ok: bool) -> None:
    records, rejected = run(
        {"b": ["B"], "c": ["1"], "e": [EVENT], "x": [value]},
        earnExpiresOn=FieldSpec(column="x", date_format=fmt),
    )
    if ok:
        assert rejected == {} and to_json_value(records["earnExpiresOn"], "epoch_s") == [
            253402300799
        ]
    else:
        assert rejected == {2: f"earnExpiresOn: '{value[:60]}' {RANGE}"}


# --- daylight saving --------------------------------------------------------------------------


def test_a_time_in_the_spring_gap_does_not_exist_and_an_autumn_time_is_its_first() -> None:
    events = ["2026-03-29 02:30", "2026-10-25 02:30", "2026-10-25 03:30"]
    records, rejected = run(
        {"b": ["B"] * 3, "c": ["1"] * 3, "e": events, "x": [LATER] * 3},
        earnEventDate=FieldSpec(column="e", date_format="%Y-%m-%d %H:%M", timezone="Europe/Berlin"),
    )
    assert rejected == {
        2: "earnEventDate: '2026-03-29 02:30' does not exist in timezone Europe/Berlin "
        "(a local time skipped when the clocks go forward)"
    }
    # 02:30 happens twice on 25 Oct: the first (CEST, +2) is 00:30 UTC; 03:30 is CET (+1)
    assert to_json_value(records["earnEventDate"], "epoch_s") == [1792888200, 1792895400]


# --- control characters -----------------------------------------------------------------------


def test_control_characters_in_a_mapped_value_reject_the_row_naming_the_field() -> None:
    ids = ["B\x00X", "B\tX", "B\x1bX", "B\x85X", "B\x7fX", "B\nX", "\x00\x00", "B X"]
    n = len(ids)
    records, rejected = run(
        {"b": ids, "c": ["1"] * n, "e": [EVENT] * n, "x": [LATER] * n},
    )
    assert list(records["badgeMetaId"]) == ["B\tX", "B X"]  # a tab is data
    assert rejected == {
        2: "badgeMetaId: contains the control character U+0000 (column 'b')",
        4: "badgeMetaId: contains the control character U+001B (column 'b')",
        5: "badgeMetaId: contains the control character U+0085 (column 'b')",
        6: "badgeMetaId: contains the control character U+007F (column 'b')",
        7: "badgeMetaId: contains the control character U+000A (column 'b')",
        8: "badgeMetaId: contains the control character U+0000 (column 'b')",
    }
    records, rejected = run({"b": ["B"], "c": ["1\x00"], "e": [EVENT + "\x00"], "x": [LATER]})
    assert rejected == {
        2: "customerId: contains the control character U+0000 (column 'c'); "
        "earnEventDate: contains the control character U+0000 (column 'e')"
    }


# --- customer ids -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (" 12 ", 12),
        ("+5", 5),
        ("9223372036854775807", 2**63 - 1),
        ("1e3", None),
        ("0x10", None),
        ("١٢٣", None),  # Arabic-Indic digits
        ("\uff11\uff12", None),  # fullwidth digits
        ("9223372036854775808", None),  # 2**63
        ("18446744073709551616", None),  # 2**64
        ("1_000", None),
        ("12.0", None),
        ("++5", None),
        ("nan", None),
    ],
)
def test_customer_ids(value: str, expected: int | None) -> None:
    records, rejected = run({"b": ["B"], "c": [value], "e": [EVENT], "x": [LATER]})
    if expected is None:
        assert rejected == {2: f"customerId: '{value.strip()}' is not a positive integer"}
    else:
        assert rejected == {} and to_json_value(records["customerId"], "customer_id") == [expected]


# --- whole files ------------------------------------------------------------------------------

HEADER = "b,c,e,x"
HOSTILE_FILES: list[tuple[str, bytes, Any]] = [
    # (case, file, (accepted lines, rejected lines, filtered) or a FileRejected pattern)
    (
        "duplicate column",
        b"b,c,e,x,c\n" + GOOD.encode() + b",1\n",
        r"'c' twice \(columns 2 and 5\)",
    ),
    ("two empty header cells", b"b,,c,,e,x\n", r"names column '' twice \(columns 2 and 4\)"),
    ("one empty header cell", b"b,,c,e,x\nB,z,1," + f"{EVENT},{LATER}\n".encode(), ([2], [], 0)),
    ("header only", HEADER.encode() + b"\n", ([], [], 0)),
    ("header only, no newline", HEADER.encode(), ([], [], 0)),
    ("only blank lines", b"\n\n\n", "the file is empty or its first line"),
    ("empty file", b"", "the file is empty"),
    ("header broken quote", b'b,"c,e,x\n' + GOOD.encode() + b"\n", "line 1: the header is not"),
    ("mapped column missing", b"b,c,e\n", "mapped column.*'x' missing"),
    ("BOM in the middle", f"{HEADER}\n\ufeff{GOOD}\n{GOOD}\n".encode(), ([2, 3], [], 0)),
    (
        "mixed line endings",
        f"{HEADER}\r\n{GOOD}\r{GOOD}\n{GOOD}\r\n\r{GOOD}".encode(),
        ([2, 3, 4, 6], [], 1),
    ),
    ("blank lines of delimiters", f'{HEADER}\n, ,\n"",""\n,,,,,\n{GOOD}\n'.encode(), ([5], [], 3)),
    ("CR only", f"{HEADER}\r{GOOD}\rB,x,{EVENT},{LATER}\r".encode(), ([2], [3], 0)),
    (
        "form feed, U+2028 and NEL are data, not line ends",
        f'{HEADER}\n"B\x0cX",1,{EVENT},{LATER}\n"B\u2028X",1,{EVENT},{LATER}\n{GOOD}\n'.encode(),
        ([3, 4], [2], 0),
    ),
    (
        "an extremely long line",
        f"{HEADER}\nB,{'9' * 3_000_000},{EVENT},{LATER}\n{GOOD}\n".encode(),
        ([3], [2], 0),
    ),
    (
        "a quoted value that crosses the block and a 64 KiB read",
        f'{HEADER}\n"\n{"x" * 70_000}",1,{EVENT},{LATER}\n{GOOD}\n'.encode(),
        ([2, 4], [], 0),  # one record on lines 2-3 (was: two malformed lines, 2 and 3)
    ),
    ("UTF-16", f"{HEADER}\n{GOOD}\n".encode("utf-16"), r"not valid utf-8 \(byte 0xff.*line 1\)"),
    (
        "truncated character",
        f"{HEADER}\n{GOOD}é".encode()[:-1],
        "ends inside a character, on line 2",
    ),
]


@pytest.mark.parametrize(
    ("case", "data", "expected"), HOSTILE_FILES, ids=[c[0] for c in HOSTILE_FILES]
)
def test_hostile_files(tmp_path: Path, case: str, data: bytes, expected: Any) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    if isinstance(expected, str):
        with pytest.raises(FileRejected, match=expected):
            transform(path)
        return
    accepted, rejected, filtered = transform(path, chunk_bytes=1024)
    assert (accepted, sorted(rejected), filtered) == expected


# --- bad bytes --------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252", "ascii"])
def test_a_bad_byte_names_its_exact_line(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(b"a,b\n1,2\n3,4\n5,\x81x\n6,7\n")
    with pytest.raises(
        FileRejected, match=rf"not valid {encoding} \(byte 0x81 at offset 14, on line 4\)"
    ):
        CsvChunks(path, encoding=encoding).check_decodable()
    with pytest.raises(FileRejected, match=r"byte 0x81 at offset 14, on line 4\)"):
        transform(path, encoding=encoding)


def test_a_bad_byte_deep_in_the_file_after_cr_only_lines(tmp_path: Path) -> None:
    # past the first read (64 KiB) and the first decode block (1 MiB), lines ended by CR
    lines = [HEADER] + [GOOD] * 40_000
    data = "\r".join(lines).encode() + b"\rB,\xe9,x,y\r"
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    with pytest.raises(FileRejected, match=r"on line 40002\)"):
        transform(path)


def test_a_character_split_across_decode_blocks_is_not_an_error(tmp_path: Path) -> None:
    head = f"{HEADER}\n".encode()
    pad = (1 << 20) - len(head) - 2  # "\xc3" is the last byte of the first 1 MiB read
    data = head + b"B" * pad + b",\xc3\xa9" + f",{EVENT},{LATER}\n5,\xff".encode("latin-1")
    assert data[(1 << 20) - 1] == 0xC3
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    where = data.index(b"\xff")
    with pytest.raises(FileRejected, match=rf"byte 0xff at offset {where}, on line 3\)"):
        CsvChunks(path).check_decodable()


def test_a_bad_byte_after_a_whole_block_of_ascii(tmp_path: Path) -> None:
    # the first 1 MiB is ASCII (passed without decoding): the offset and line still count it
    head = f"{HEADER}\n".encode()
    line = f"B,1,{EVENT},{LATER}\n".encode()
    body = head + line * ((1 << 20) // len(line) + 1)
    data = body + b"B,\x81,x,y\n"
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    where, line = len(body) + 2, body.count(b"\n") + 1
    with pytest.raises(FileRejected, match=rf"byte 0x81 at offset {where}, on line {line}\)"):
        CsvChunks(path).check_decodable()


def test_a_character_cut_by_the_block_and_followed_by_ascii_is_an_error(tmp_path: Path) -> None:
    head = f"{HEADER}\n".encode()
    data = head + b"B" * ((1 << 20) - len(head) - 1) + b"\xc3" + b",1,x,y\n" * 10
    assert data[(1 << 20) - 1] == 0xC3  # the next block is all ASCII: it must still be decoded
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    with pytest.raises(FileRejected, match=rf"byte 0xc3 at offset {(1 << 20) - 1}, on line 2\)"):
        CsvChunks(path).check_decodable()


# --- end to end -------------------------------------------------------------------------------


def test_far_dates_end_to_end(bed: Bed) -> None:
    """31/12/9999 is sent, year 1 is a rejected row; the run reports and the file moves on."""
    rows = [
        ["badge_id", "customer_id", "event_date", "expires_at"],
        ["BADGE-GOLD", "1001", "16/11/2026 09:30", "31/12/9999"],
        ["BADGE-GOLD", "1002", "16/11/2026 09:30", "01/01/0001"],
        ["BADGE-GOLD", "1003", "01/01/0001 00:00", "31/12/9999"],
    ]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    name = "badges_2026-11-16.csv.gpg"
    bed.sftp.put(f"inbox/{name}", bed.keys.encrypt(out.getvalue().encode()))
    mapping = {
        "badgeMetaId": "badge_id",
        "customerId": "customer_id",
        "earnEventDate": EVENT_DATE,
        "earnExpiresOn": {"column": "expires_at", "date_format": "%d/%m/%Y"},
    }
    code, report, stderr = bed.run_json(bed.config(transform={"mapping": mapping}))
    assert code == 3, stderr
    assert "Traceback" not in stderr
    (f,) = report["files"]
    assert (f["rows_total"], f["rows_rejected"], f["rows_succeeded"]) == (3, 2, 1)
    assert bed.sftp.files("inbox") == []
    assert bed.sftp.files("processed") == [name]
    assert bed.api.received() == [
        {
            "badgeMetaId": "BADGE-GOLD",
            "customerId": 1001,
            "earnEventDate": 1794801600,
            "earnExpiresOn": 253402214400,
        }
    ]
    error_name = f["error_file"].rsplit("/", 1)[1]
    errors = list(csv.reader(io.StringIO((bed.sftp.root / "errors" / error_name).read_text())))
    by_line = {int(r[4]): r[7] for r in errors[1:]}
    assert by_line == {
        3: f"earnExpiresOn: '01/01/0001' {RANGE}",
        # Asia/Kolkata in year 1 is LMT +05:53:28, before 1970 either way
        4: f"earnEventDate: '01/01/0001 00:00' {RANGE}",
    }
