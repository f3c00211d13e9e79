"""Verdicts as arrays: an all-success answer is checked in one pass and comes back as
`Accepted` (line numbers as an array, the API's ids as answered), which the accounts and the
checkpoint take whole. Every answer must get the same verdicts as the per-row path."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflow.accounts import Accounts, rows_of, values
from dataflow.checkpoint import SCHEMA, Checkpoints
from dataflow.errorfile import ErrorFile
from dataflow.report import FileReport
from dataflow.rows import Accepted, Chunk, RecordResult, Request, RowError
from dataflow.templates import (
    EARN_BADGES_BULK,
    EARNED_BADGES,
    _bulk_verdicts,
    _import_verdict,
    accept_import_answer,
)
from dataflow_blocks import http_write

SHA = "e" * 64
SOURCE = pd.DataFrame({"customer": [str(100 + n) for n in range(2, 12)]}, index=range(2, 12))

OK: dict[str, Any] = {"data": {"earnedBadgeId": 7}, "errors": None, "warnings": []}
IMPORT_ELEMENTS: list[Any] = [
    OK,
    {"data": {"earnedBadgeId": "E-1", "customerId": 5}, "errors": [], "warnings": None},
    {"data": {"earnedBadgeId": 0}},  # no errors key, a falsy but present id
    {"data": {"earnedBadgeId": ""}, "errors": None},
    {"data": {"earnedBadgeId": None}, "errors": None},
    {"data": {}, "errors": None},
    {"data": "yes"},
    {"data": None, "errors": [{"code": 816, "message": "window"}]},
    {"data": {"earnedBadgeId": 9}, "errors": [{"code": 1054}]},
    None,
    "ok",
    [OK],
]


def import_request(n: int) -> Request:
    return Request(tuple(range(2, 2 + n)), b"[]", SOURCE)


def per_row_import(request: Request, payload: list[Any]) -> list[RecordResult]:
    return [_import_verdict(n, 200, e) for n, e in zip(request.line_nos, payload, strict=True)]


def test_an_all_success_import_answer_is_accepted_whole() -> None:
    request = import_request(3)
    payload = [OK, {"data": {"earnedBadgeId": "x"}, "errors": []}, {"data": {"earnedBadgeId": 0}}]
    results = EARNED_BADGES.parse_response(request, 200, payload)
    assert isinstance(results, Accepted)
    assert results.lines.dtype == np.int64 and results.lines.tolist() == [2, 3, 4]
    assert results == per_row_import(request, payload)
    assert [r.api_id for r in results] == ["7", "x", "0"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(range(len(IMPORT_ELEMENTS))), min_size=1, max_size=8))
def test_import_answers_get_the_per_row_verdicts(choice: list[int]) -> None:
    payload = [IMPORT_ELEMENTS[i] for i in choice]
    request = import_request(len(payload))
    results = EARNED_BADGES.parse_response(request, 200, payload)
    assert list(results) == per_row_import(request, payload)
    assert isinstance(results, Accepted) == all(r.ok for r in results)


def bulk_request(customers: tuple[int, ...]) -> Request:
    lines = tuple(range(2, 2 + len(customers)))
    return Request(lines, b"{}", SOURCE, customers, "rid")


BULK_ITEMS: list[Any] = [
    {"customerId": 11, "issuedId": 5, "error": None},
    {"customerId": "12", "issuedId": "6"},  # an id spelt as a string
    {"customerId": 12, "issuedId": 8, "error": None},
    {"customerId": 13, "issuedId": "", "error": None},
    {"customerId": 11, "issuedId": None},
    {"customerId": 12, "issuedId": 3, "error": {"code": 810, "message": "claim"}},
    {"customerId": 14, "issuedId": 4},
    None,
]


def test_an_all_success_bulk_answer_is_accepted_whole() -> None:
    request = bulk_request((11, 12, 12))
    items = [BULK_ITEMS[0], BULK_ITEMS[1], BULK_ITEMS[2]]
    results = EARN_BADGES_BULK.parse_response(request, 200, {"data": {"issuedBadges": items}})
    assert isinstance(results, Accepted)
    assert results == _bulk_verdicts(request, 200, items, applied=False)
    assert [r.api_id for r in results] == ["5", "6", "8"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([11, 12, 13, 14]), min_size=1, max_size=5),
    st.lists(st.sampled_from(range(len(BULK_ITEMS))), max_size=6),
    st.booleans(),
)
def test_bulk_answers_get_the_per_row_verdicts(
    customers: list[int], choice: list[int], applied: bool
) -> None:
    request = bulk_request(tuple(customers))
    items = [BULK_ITEMS[i] for i in choice]
    payload: dict[str, Any] = {"data": {"issuedBadges": items}, "errors": None}
    if applied:
        payload["errors"] = [{"code": 809, "message": "already processed"}]
    results = EARN_BADGES_BULK.parse_response(request, 200, payload)
    assert list(results) == _bulk_verdicts(request, 200, items, applied)


def test_809_without_items_is_accepted_whole() -> None:
    request = bulk_request((11, 12))
    payload = {"data": None, "errors": [{"code": 809, "message": "already processed"}]}
    results = EARN_BADGES_BULK.parse_response(request, 400, payload)
    assert isinstance(results, Accepted)
    assert results == [RecordResult(2, True), RecordResult(3, True)]


def test_accepted_is_a_sequence_of_its_verdicts() -> None:
    accepted = Accepted(np.array([4, 9], dtype=np.int64), ["a", 5])
    assert len(accepted) == 2 and accepted[-1] == RecordResult(9, True, api_id="5")
    assert accepted[0:1] == [RecordResult(4, True, api_id="a")]
    assert Accepted(np.array([4], dtype=np.int64)) == [RecordResult(4, True)]
    with pytest.raises(IndexError):
        accepted[2]
    with pytest.raises(ValueError, match="1 api ids for 2 lines"):
        Accepted(np.array([4, 9], dtype=np.int64), ["a"])


# --- the accounts and the checkpoint take it whole --------------------------------------------


def books(tmp_path: Path, all_rows: bool) -> tuple[Accounts, Checkpoints]:
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    checkpoints = Checkpoints(db, "flow")
    progress = checkpoints.open(SHA, "f.csv")
    report = FileReport(name="f.csv", lineage_id=progress.lineage_id, sha256=SHA)
    errors = ErrorFile(tmp_path / "errors.csv", ["customer"], all_rows=all_rows)
    accounts = Accounts(report, errors, progress, checkpoints)
    accounts.take_chunk(Chunk(SOURCE, SOURCE, []), SOURCE.iloc[0:0])
    return accounts, checkpoints


def stored(checkpoints: Checkpoints) -> list[tuple[bytes, Any]]:
    rows = checkpoints.db.execute("SELECT lines, failures FROM acks ORDER BY rowid").fetchall()
    return [(bytes(blob), failures) for blob, failures in rows]


@pytest.mark.parametrize("all_rows", [False, True])
@pytest.mark.parametrize("rid", [None, "rid"])
def test_accepted_is_accounted_as_its_per_row_results(
    tmp_path: Path, all_rows: bool, rid: str | None
) -> None:
    outcome: list[tuple[Any, ...]] = []
    for kind in ("list", "accepted"):
        (tmp_path / kind).mkdir()
        accounts, checkpoints = books(tmp_path / kind, all_rows)
        for first in (2, 7):
            lines = tuple(range(first, first + 5))
            request = Request(lines, b"[]", SOURCE, request_id=rid)
            ids = [f"id{n}" for n in lines]
            accepted = Accepted(np.array(lines, dtype=np.int64), ids)
            accounts.on_result(request, list(accepted) if kind == "list" else accepted)
        accounts.errors.close()
        report = accounts.report
        text = accounts.errors.path.read_text() if accounts.errors.path.exists() else ""
        counts = (report.rows_succeeded, report.rows_failed, accounts.answered)
        outcome.append(
            (*counts, accounts.confirmed, stored(checkpoints), text, accounts.errors.rows)
        )
    assert outcome[0] == outcome[1]
    assert outcome[1][:4] == (10, 0, 2, True)
    if all_rows:
        assert "id9" in outcome[1][5] and outcome[1][6] == 10


def test_an_empty_accepted_confirms_nothing(tmp_path: Path) -> None:
    accounts, checkpoints = books(tmp_path, False)
    accounts.on_result(Request((), b"[]", SOURCE), Accepted(np.zeros(0, dtype=np.int64)))
    assert (accounts.answered, accounts.confirmed, stored(checkpoints)) == (1, False, [])


def test_the_checkpoint_of_accepted_is_the_one_of_its_results(tmp_path: Path) -> None:
    accounts, checkpoints = books(tmp_path, False)
    accepted = Accepted(np.array([3, 5, 8], dtype=np.int64))
    checkpoints.ack(accounts.progress.key, accepted)
    checkpoints.ack(accounts.progress.key, list(accepted))
    first, second = stored(checkpoints)
    assert first == second == (np.array([3, 5, 8], dtype=np.int64).tobytes(), None)
    assert checkpoints.open(SHA, "f.csv").acked.nonzero()[0].tolist() == [3, 5, 8]


@pytest.mark.parametrize("dtype", ["str", "object", "string[pyarrow]"])
def test_the_rows_of_a_result_file_are_looked_up_at_once(dtype: str) -> None:
    source = pd.DataFrame(
        {"a": ["x", None, "=1", "", "ü"], "b": ["1", "2", None, "4", "5"]},
        index=[2, 3, 5, 8, 9],
        dtype=dtype,
    )
    lines = np.array([3, 2, 9, 4, 5, 8], dtype=np.int64)  # 4 is not in the chunk
    expected = [values(source, int(n), None) for n in lines]
    got = rows_of(source, lines)
    assert [None if row is None else [str(v) for v in row] for row in got] == [
        None if row is None else [str(v) for v in row] for row in expected
    ]
    assert got[3] is None and rows_of(source, lines[:3]) == expected[:3]


@pytest.mark.parametrize("all_rows", [False, True])
def test_a_resumed_chunk_writes_its_rows_in_line_order(tmp_path: Path, all_rows: bool) -> None:
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    checkpoints = Checkpoints(db, "flow")
    first = checkpoints.open(SHA, "f.csv")
    checkpoints.ack(first.key, [RecordResult(3, True), RecordResult(4, False, "816", "window")])
    checkpoints.ack(first.key, Accepted(np.array([6, 9], dtype=np.int64)))
    progress = checkpoints.open(SHA, "f.csv")  # the resumed run
    report = FileReport(name="f.csv", lineage_id=progress.lineage_id, sha256=SHA)
    errors = ErrorFile(tmp_path / "e.csv", ["customer"], all_rows=all_rows)
    accounts = Accounts(report, errors, progress, checkpoints)
    records = SOURCE.drop(index=[5])  # line 5 rejected
    rejected = [RowError(5, "transform", "bad"), RowError(12, "transform", "malformed", raw="x,")]
    done = records.loc[[3, 4, 6, 9]]
    accounts.take_chunk(Chunk(SOURCE, records, rejected), done)
    errors.close()
    written = [line.split(",")[:3] for line in errors.path.read_text().splitlines()[1:]]
    expected = [["105", "5", "transform"], ["", "12", "transform"]]
    if all_rows:
        expected += [["103", "3", ""], ["104", "4", "destination"], ["106", "6", ""]]
        expected += [["109", "9", ""]]
    else:
        expected += [["104", "4", "destination"]]
    assert written == expected
    assert (report.rows_succeeded, report.rows_failed, report.rows_rejected) == (3, 1, 2)
    assert progress.failed == {4: ("816", "window")}


# --- an import answer's bytes: the struct decoder agrees with the parsed path ---------------

RAW_ELEMENTS: list[bytes] = [orjson.dumps(element) for element in IMPORT_ELEMENTS] + [
    b'{"data":{"earnedBadgeId":true}}',  # a boolean id: the parsed path accepts it as "True"
    b'{"data":{"earnedBadgeId":1.5},"errors":null}',
    b'{"data":{"earnedBadgeId":9223372036854775807}}',  # int64's top
    b'{"data":{"earnedBadgeId":9223372036854775808}}',  # beyond it: orjson's unsigned range
    b'{"data":{"earnedBadgeId":123456789012345678901234567890}}',  # orjson: a float
    b'{"data":{"earnedBadgeId":"x"},"errors":{}}',  # falsy errors of other kinds
    b'{"data":{"earnedBadgeId":"x"},"errors":0}',
    b'{"data":{"earnedBadgeId":"x"},"errors":""}',
    b'{"data":{"earnedBadgeId":"x"},"errors":[{}]}',
    b'{"data":{"earnedBadgeId":3},"data":null}',  # a repeated key: the last one counts
    b'{"data":null,"data":{"earnedBadgeId":3}}',
    b'{"data":{"earnedBadgeId":"\xc3\xa9t\xc3\xa9"},"warnings":["ok"]}',
    b'{"data":{"earnedBadgeId":4},"warnings":["\xff"]}',  # invalid UTF-8 in a skipped field
    b'{"data":{"earnedBadgeId":"\\ud800"}}',  # a lone surrogate
    b'{"data":{"earnedBadgeId":5},"extra":{"deep":[1,{"a":null}]}}',
    b'{"data":{"earnedBadgeId":NaN}}',
    b'{"data":{"earnedBadgeId":6},}',  # a trailing comma
    b'{"data":{"earnedBadgeId":7},"warnings":[1e400]}',  # infinity in a skipped field
    b'{"data":{"earnedBadgeId":8,"n":-1e309}}',
    b'{"data":{"earnedBadgeId":9},"deep":' + b"[" * 3000 + b"]" * 3000 + b"}",  # too deep
    b'{"data":{"earnedBadgeId":10},"warnings":[' + b"7" * 5000 + b"]}",  # past int()'s digits
    b'{"data":{"earnedBadgeId":11},"warnings":[NaN]}',  # not JSON, even where skipped
    b'{"data":{"earnedBadgeId":12},"warnings":[Infinity]}',
    b'{"data":{"earnedBadgeId":13},"warnings":["\\ud800"]}',  # a lone surrogate, skipped
    b'{"data":{"earnedBadgeId":14},"extra":{"a":1,}}',  # a trailing comma where skipped
    b'{"data":{"earnedBadgeId":15},"extra":[1.]}',  # a number cut short
    b'{"data":{"earnedBadgeId":16},"extra":"\x01"}',  # a control character in a text
    # beyond a double and deep: the parsed path reads it in a thread of its own, whose stack
    # leaves it at least the nesting budget the struct decoder had (a review's find)
    b'{"data":{"earnedBadgeId":17},"w":1e400,"x":' + b"[" * 990 + b"]" * 990 + b"}",
    b'{"data":{"earnedBadgeId":18},"w":1' + b"0" * 5000 + b',"x":' + b"[" * 990 + b"]" * 990 + b"}",
]


def parsed_path(request: Request, body: bytes) -> list[RecordResult] | None:
    """The verdicts without the struct decoder: what HttpWrite did before it (None: the
    body is not JSON, so no row is accepted)."""
    payload = http_write._json(body)
    if payload is http_write._NOT_JSON:
        return None
    return list(EARNED_BADGES.parse_response(request, 200, payload))


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from(range(len(RAW_ELEMENTS))), max_size=6),
    st.integers(min_value=-1, max_value=1),
    st.sampled_from([b"", b" ", b"\n", b" x", b"]"]),
)
def test_the_struct_decoder_accepts_exactly_what_the_parsed_path_accepts(
    choice: list[int], extra: int, tail: bytes
) -> None:
    body = b"[" + b",".join(RAW_ELEMENTS[i] for i in choice) + b"]" + tail
    request = import_request(max(len(choice) + extra, 0))
    expected = parsed_path(request, body)
    accepted = accept_import_answer(request, body)
    if accepted is None:  # the parsed path decides: it must not be an all-success answer of
        # the plain shape the decoder is for (ids of int64 or non-empty text)
        plain = [RAW_ELEMENTS.index(orjson.dumps(OK)), 1, 2]
        assert not (choice and all(i in plain for i in choice) and not extra and not tail.strip())
        return
    assert isinstance(accepted, Accepted)
    assert expected is not None and list(accepted) == expected
    assert [r.api_id for r in accepted] == [r.api_id for r in expected]


def test_the_struct_decoder_reads_a_thousand_record_answer() -> None:
    request = Request(np.arange(2, 1002, dtype=np.int64), b"[]", SOURCE)
    body = orjson.dumps([{"data": {"earnedBadgeId": n}, "errors": None} for n in range(1000)])
    accepted = accept_import_answer(request, body)
    assert isinstance(accepted, Accepted) and accepted.lines is request.line_nos
    assert accepted.api_id(999) == "999" and accepted[3] == RecordResult(5, True, api_id="3")
    assert accepted == parsed_path(request, body)
