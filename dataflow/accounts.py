"""The accounts of one file while it is sent: counters, error file rows and the checkpoint.

Every row is counted once, when its chunk is taken: ``rows_total = rows_filtered +
rows_rejected + rows_sent``. Every sent row is then resolved once: ``rows_sent =
rows_succeeded + rows_failed``, and the error file holds ``rows_rejected + rows_failed`` rows.

A row is final only on a verdict from the API about that row (`RecordResult.final`). Only
verdicts are checkpointed; a row without one (retries used up, an answer that confirms
nothing) is kept in memory for this run: if the file finishes it goes to the error file as
failed (`settle`), if the file is kept (a stop, the API down) it is not recorded anywhere and
the next run sends it again. A bulk request (one with a `requestId`) is checkpointed whole or
not at all, so that a resumed run rebuilds it with the same rows and the same `requestId`,
which the server recognises (809) instead of issuing twice.
The lines the API failed are kept in `Progress.failed` for the ledger (`dataflow retry`).
A request whose rows were all accepted comes as `Accepted` (arrays): it is counted and
checkpointed whole, with no work per row unless a result file lists every row.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import orjson
import pandas as pd

from dataflow.checkpoint import Checkpoints, Progress
from dataflow.errorfile import ErrorFile, local_write_error
from dataflow.errors import ApiDown
from dataflow.faults import crash_point
from dataflow.report import FileReport
from dataflow.rows import STAGE_DESTINATION, Accepted, Chunk, RecordResult, Request, RowError


@dataclass
class Accounts:
    report: FileReport
    errors: ErrorFile
    progress: Progress
    checkpoints: Checkpoints | None  # None in a dry run
    answered: int = 0  # requests that came back (with or without a verdict) in this run
    unconfirmed: Spool = field(init=False)  # rows without a verdict, on disk (bounded memory)
    last_unconfirmed: str = ""
    confirmed: bool = False  # the API gave a verdict on at least one row of this file

    def __post_init__(self) -> None:
        self.unconfirmed = Spool(self.errors.path.with_name("unconfirmed.jsonl"))
        # rows acknowledged before an interruption were verdicts of the API
        self.confirmed = bool(self.progress.acked.any())
        self.earlier_ids: IdSpool | None = None  # their ids, for a result file
        if self.errors.all_rows and self.checkpoints is not None and self.confirmed:
            self.earlier_ids = IdSpool(self.errors.path.with_name("earlier_ids.sqlite"))
            # closed even when filling fails: its read (a transaction on PostgreSQL) ends here
            with contextlib.closing(self.checkpoints.acked_ids(self.progress.key)) as acked:
                self.earlier_ids.fill(acked)

    def take_chunk(self, chunk: Chunk, done: pd.DataFrame) -> None:
        """Count a chunk's rows; its rejected rows and those resolved earlier are written."""
        report = self.report
        report.rows_total += chunk.total
        report.rows_filtered += chunk.filtered
        report.rows_rejected += len(chunk.errors)
        report.rows_sent += len(chunk.records)
        rows = rows_of(chunk.source, _lines(e.line_no for e in chunk.errors))
        for error, row in zip(chunk.errors, rows, strict=True):
            self.errors.add(error, None if error.raw is not None else row)  # see `values`
        lines = done.index.to_numpy(dtype=np.int64).tolist()  # acknowledged before a stop
        failures = self.progress.failures
        failed = [n for n in lines if n in failures] if failures else []
        report.rows_succeeded += len(lines) - len(failed)
        written = lines if self.errors.all_rows else failed  # accepted rows: result file only
        ids = self.earlier_ids.of(written) if self.earlier_ids is not None and written else {}
        for line_no, row in zip(written, rows_of(chunk.source, _lines(written)), strict=True):
            failure = failures.get(line_no)
            if failure is None:  # its id came in an answer of the interrupted run
                self.errors.add_accepted(line_no, ids.get(line_no, ""), row)
                continue
            code, message = failure
            self._failed(RowError(line_no, STAGE_DESTINATION, message, code), row)

    def on_result(self, request: Request, results: Sequence[RecordResult]) -> None:
        """One request's results: verdicts are checkpointed and counted, the rest kept."""
        self.answered += 1
        if isinstance(results, Accepted):
            self._accepted(request, results)
            return
        verdicts = [r for r in results if r.final]
        self.confirmed = self.confirmed or bool(verdicts)
        whole = len(verdicts) == len(results)
        if verdicts and (whole or request.request_id is None):
            self._checkpoint(verdicts)
        rows: list[list[object] | None] = [None] * len(results)
        if self.errors.all_rows or not all(r.ok for r in results):  # rows to write
            rows = rows_of(request.source, _lines(r.line_no for r in results))
        for result, row in zip(results, rows, strict=True):
            if result.ok:
                self.report.rows_succeeded += 1
                if self.errors.all_rows:
                    self.errors.add_accepted(result.line_no, result.api_id, row)
                continue
            error = RowError(result.line_no, STAGE_DESTINATION, result.message, result.status_code)
            if result.final:
                self._failed(error, row)
            else:
                # the why, without the row-level advice (the rows will be sent again)
                self.last_unconfirmed = result.message.partition(": the outcome is unknown")[0]
                self.unconfirmed.append((error, row))

    def _accepted(self, request: Request, accepted: Accepted) -> None:
        """Every row of the request accepted: what the per-row path does, without it."""
        if not len(accepted):
            return
        self.confirmed = True
        self._checkpoint(accepted)
        self.report.rows_succeeded += len(accepted)
        if self.errors.all_rows:
            lines = accepted.lines.tolist()
            rows = rows_of(request.source, accepted.lines)
            for position, (line_no, row) in enumerate(zip(lines, rows, strict=True)):
                self.errors.add_accepted(line_no, accepted.api_id(position), row)

    def require_a_verdict(self, destination: str) -> None:
        """Stop, keeping the file, when requests came back but none with a verdict."""
        if not self.answered or self.confirmed:
            return
        raise ApiDown(
            f"the API confirmed nothing for {self.report.name}: none of the {self.answered} "
            f"request(s) sent by {destination} got a verdict on its rows (last answer: "
            f"{self.last_unconfirmed}); check that the API is up and that base_url and endpoint "
            "point at it (a maintenance page or a proxy may answer HTTP 200 without JSON); the "
            "file is kept and all its rows will be sent again by the next run"
        )

    def settle(self) -> None:
        """The file finishes: rows that never got a verdict are reported as failed, and that
        is checkpointed before the error file goes out, so a run resumed after the upload
        finds them settled instead of sending them again."""
        batch: list[RecordResult] = []
        for error, _ in self.unconfirmed:
            batch.append(RecordResult(error.line_no, False, error.status_code, error.message))
            if len(batch) >= SETTLE_BATCH:
                self._checkpoint(batch)
                batch = []
        if batch:
            self._checkpoint(batch)
        for error, row in self.unconfirmed:
            self.report.rows_failed += 1
            self.progress.failed[error.line_no] = (error.status_code, error.message)
            self.errors.add(error, row)
        self.unconfirmed.clear()

    def close(self) -> None:
        if self.earlier_ids is not None:
            self.earlier_ids.close()

    @property
    def acknowledged(self) -> int:
        return self.report.rows_succeeded + self.report.rows_failed

    def _checkpoint(self, verdicts: Sequence[RecordResult]) -> None:
        if self.checkpoints is not None and self.progress.key:
            self.checkpoints.ack(self.progress.key, verdicts, with_ids=self.errors.all_rows)
            crash_point("acked")

    def _failed(self, error: RowError, row: list[object] | None) -> None:
        """A final failure from the API; `row`: its source values (`values`)."""
        self.report.rows_failed += 1
        self.progress.failed[error.line_no] = (error.status_code, error.message)
        self.errors.add(error, row)


SETTLE_BATCH = 1000  # rows per checkpoint transaction when unconfirmed rows are settled


class IdSpool:
    """The API's ids of the lines acknowledged before an interruption (a result file lists
    them), in an SQLite file in the file's private directory: looked up chunk by chunk, never
    all in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode = OFF")
            self._db.execute("PRAGMA synchronous = OFF")  # a scratch file: rebuilt if lost
            self._db.execute("CREATE TABLE IF NOT EXISTS ids (line INTEGER PRIMARY KEY, id TEXT)")
        except sqlite3.Error as exc:
            raise local_write_error(path, OSError(str(exc)), "the earlier rows' ids") from exc

    def fill(self, acked: Iterable[tuple[list[int], list[str]]]) -> None:
        try:
            self._db.execute("BEGIN")
            for lines, ids in acked:
                self._db.executemany(
                    "INSERT OR REPLACE INTO ids VALUES (?, ?)", zip(lines, ids, strict=True)
                )
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise local_write_error(self.path, OSError(str(exc)), "the earlier rows' ids") from exc

    def of(self, lines: list[int]) -> dict[int, str]:
        """The ids of `lines` that have one (consecutive lines of a chunk: one range query)."""
        rows = self._db.execute(
            "SELECT line, id FROM ids WHERE line BETWEEN ? AND ?", (min(lines), max(lines))
        )
        return {int(line): str(value) for line, value in rows}

    def close(self) -> None:
        self._db.close()


class Spool:
    """Rows without a verdict, appended to a file in the file's private directory (an outage
    over a big file must not hold them all in memory), read back when the file finishes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._fh: IO[bytes] | None = None

    def append(self, item: tuple[RowError, list[object] | None]) -> None:
        error, row = item
        record = [error.line_no, error.stage, error.status_code, error.message, row]
        try:
            if self._fh is None:
                self._fh = self.path.open("ab")
            self._fh.write(orjson.dumps(record, default=str) + b"\n")
        except OSError as exc:
            raise local_write_error(self.path, exc, "the rows awaiting a verdict") from exc
        self.count += 1

    def __iter__(self) -> Iterator[tuple[RowError, list[object] | None]]:
        if not self.count:
            return
        if self._fh is not None:
            self._fh.flush()
        with self.path.open("rb") as fh:
            for line in fh:
                line_no, stage, code, message, row = orjson.loads(line)
                yield RowError(line_no, stage, message, code), row

    def __bool__(self) -> bool:
        return self.count > 0

    def clear(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        self.path.unlink(missing_ok=True)
        self.count = 0


def _lines(line_nos: Iterable[int]) -> np.ndarray:
    return np.fromiter(line_nos, dtype=np.int64)


def rows_of(source: pd.DataFrame, lines: np.ndarray) -> list[list[object] | None]:
    """`values` of many lines at once (none for a line not in `source`), in one lookup."""
    if not len(lines):
        return []
    positions = source.index.get_indexer(pd.Index(lines))
    found = positions >= 0
    block: list[list[object]] = source.iloc[positions[found]].to_numpy(object).tolist()
    if found.all():
        return [*block]
    taken = iter(block)
    return [next(taken) if inside else None for inside in found.tolist()]


def values(source: pd.DataFrame, line_no: int, raw: str | None) -> list[object] | None:
    """A row's source values for the error file (none for a malformed line)."""
    if raw is not None:
        return None
    try:
        return list(source.loc[line_no])
    except KeyError:
        return None
