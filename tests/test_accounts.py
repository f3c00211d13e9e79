"""The accounts of a file being sent: counters, error file rows, what is checkpointed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from dataflow.accounts import Accounts
from dataflow.checkpoint import SCHEMA, Checkpoints
from dataflow.errorfile import ErrorFile
from dataflow.errors import FatalError
from dataflow.report import FileReport
from dataflow.rows import Chunk, RecordResult, Request, RowError

SHA = "f" * 64


def setup(tmp_path: Path) -> tuple[Accounts, Checkpoints, Chunk]:
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    checkpoints = Checkpoints(db, "flow")
    progress = checkpoints.open(SHA, "f.csv")
    report = FileReport(name="f.csv", lineage_id=progress.lineage_id, sha256=SHA)
    errors = ErrorFile(tmp_path / "errors.csv", ["customer"])
    source = pd.DataFrame({"customer": [str(c) for c in range(101, 108)]}, index=range(2, 9))
    records = source.iloc[:6]  # line 8 was rejected
    chunk = Chunk(source, records, [RowError(8, "transform", "bad")], filtered=1)
    accounts = Accounts(report, errors, progress, checkpoints)
    accounts.take_chunk(chunk, records.iloc[0:0])
    return accounts, checkpoints, chunk


def request(chunk: Chunk, lines: tuple[int, ...], rid: str | None = None) -> Request:
    return Request(lines, b"[]", chunk.source, request_id=rid)


def acked_lines(checkpoints: Checkpoints) -> list[int]:
    progress = checkpoints.open(SHA, "f.csv")
    return [int(n) for n in progress.acked.nonzero()[0]]


def test_only_verdicts_are_checkpointed_and_the_rest_fails_when_the_file_finishes(
    tmp_path: Path,
) -> None:
    accounts, checkpoints, chunk = setup(tmp_path)
    accounts.on_result(
        request(chunk, (2, 3)), [RecordResult(2, True), RecordResult(3, False, "1054", "x")]
    )
    unanswered = request(chunk, (4, 5))
    accounts.on_result(unanswered, unanswered.fail("503", "HTTP 503 after 4 attempts", final=False))
    mixed = request(chunk, (6, 7))
    accounts.on_result(
        mixed, [RecordResult(6, True), RecordResult(7, False, "200", "?", final=False)]
    )
    assert acked_lines(checkpoints) == [2, 3, 6]  # the import API: per row
    report = accounts.report
    assert (report.rows_succeeded, report.rows_failed, accounts.errors.rows) == (2, 1, 2)

    accounts.settle()
    accounts.errors.close()
    assert (report.rows_total, report.rows_filtered, report.rows_rejected) == (8, 1, 1)
    assert report.rows_sent == report.rows_succeeded + report.rows_failed == 6
    assert accounts.errors.rows == report.rows_rejected + report.rows_failed == 5
    lines = (tmp_path / "errors.csv").read_text().splitlines()[1:]
    assert [line.split(",")[1] for line in lines] == ["8", "3", "4", "5", "7"]


def test_a_bulk_request_is_checkpointed_whole_or_not_at_all(tmp_path: Path) -> None:
    accounts, checkpoints, chunk = setup(tmp_path)
    partial = request(chunk, (2, 3), rid="r1")
    accounts.on_result(
        partial, [RecordResult(2, True), RecordResult(3, False, "200", "?", final=False)]
    )
    whole = request(chunk, (4, 5), rid="r2")
    accounts.on_result(whole, [RecordResult(4, True), RecordResult(5, False, "810", "claim")])
    # r1 is sent again whole, with the same rows and requestId, if the file is kept
    assert acked_lines(checkpoints) == [4, 5]


def test_a_file_with_no_verdict_at_all_is_kept(tmp_path: Path) -> None:
    accounts, checkpoints, chunk = setup(tmp_path)
    for lines in ((2, 3, 4), (5, 6, 7)):
        sent = request(chunk, lines)
        accounts.on_result(sent, sent.fail("503", "HTTP 503 after 4 attempts: down", final=False))
    with pytest.raises(FatalError, match=r"the API confirmed nothing for f\.csv: none of the 2 "):
        accounts.require_a_verdict("block 'connect_to_destination'")
    assert acked_lines(checkpoints) == []


def test_one_verdict_is_enough_to_finish_the_file(tmp_path: Path) -> None:
    accounts, _, chunk = setup(tmp_path)
    sent = request(chunk, (2, 3, 4))
    accounts.on_result(sent, sent.fail("503", "HTTP 503 after 4 attempts", final=False))
    accounts.on_result(request(chunk, (5,)), [RecordResult(5, False, "1054", "unknown badge")])
    accounts.require_a_verdict("block 'connect_to_destination'")  # does not raise


def test_rows_awaiting_a_verdict_are_spooled_to_disk_and_read_back(tmp_path: Path) -> None:
    from dataflow.accounts import Spool
    from dataflow.rows import RowError

    spool = Spool(tmp_path / "unconfirmed.jsonl")
    assert not spool and list(spool) == []
    rows = [
        (RowError(2, "destination", "ReadTimeout after 4 attempt(s)", ""), ["B", "1", None]),
        (RowError(9, "destination", 'HTTP 503: "down", é', "503"), ["=X", "a,b\nc", "ü"]),
        (RowError(12, "destination", "no answer", "502"), None),
    ]
    for item in rows:
        spool.append(item)
    assert spool.count == 3 and (tmp_path / "unconfirmed.jsonl").is_file()
    assert list(spool) == rows  # flushed and read back, in order, unchanged
    assert list(spool) == rows  # readable again (settle reads it twice)
    spool.clear()
    assert not spool and not (tmp_path / "unconfirmed.jsonl").exists()
