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
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson
import pandas as pd

from dataflow.checkpoint import Checkpoints, Progress
from dataflow.errorfile import ErrorFile, local_write_error
from dataflow.errors import ApiDown
from dataflow.faults import crash_point
from dataflow.report import FileReport
from dataflow.rows import STAGE_DESTINATION, Chunk, RecordResult, Request, RowError


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

    def take_chunk(self, chunk: Chunk, done: pd.DataFrame) -> None:
        """Count a chunk's rows; its rejected rows and those resolved earlier are written."""
        report = self.report
        report.rows_total += chunk.total
        report.rows_filtered += chunk.filtered
        report.rows_rejected += len(chunk.errors)
        report.rows_sent += len(chunk.records)
        for error in chunk.errors:
            self.errors.add(error, values(chunk.source, error.line_no, error.raw))
        for line_no in done.index:  # acknowledged before an interruption
            failure = self.progress.failures.get(int(line_no))
            if failure is None:
                report.rows_succeeded += 1
                # its id came in an answer of the interrupted run: not kept, so left empty
                self.errors.add_accepted(int(line_no), "", values(chunk.source, int(line_no), None))
                continue
            code, message = failure
            self._failed(RowError(int(line_no), STAGE_DESTINATION, message, code), chunk.source)

    def on_result(self, request: Request, results: list[RecordResult]) -> None:
        """One request's results: verdicts are checkpointed and counted, the rest kept."""
        self.answered += 1
        verdicts = [r for r in results if r.final]
        self.confirmed = self.confirmed or bool(verdicts)
        whole = len(verdicts) == len(results)
        if verdicts and (whole or request.request_id is None):
            self._checkpoint(verdicts)
        for result in results:
            if result.ok:
                self.report.rows_succeeded += 1
                if self.errors.all_rows:
                    row = values(request.source, result.line_no, None)
                    self.errors.add_accepted(result.line_no, result.api_id, row)
                continue
            error = RowError(result.line_no, STAGE_DESTINATION, result.message, result.status_code)
            if result.final:
                self._failed(error, request.source)
            else:
                # the why, without the row-level advice (the rows will be sent again)
                self.last_unconfirmed = result.message.partition(": the outcome is unknown")[0]
                self.unconfirmed.append((error, values(request.source, result.line_no, None)))

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

    @property
    def acknowledged(self) -> int:
        return self.report.rows_succeeded + self.report.rows_failed

    def _checkpoint(self, verdicts: list[RecordResult]) -> None:
        if self.checkpoints is not None and self.progress.key:
            self.checkpoints.ack(self.progress.key, verdicts)
            crash_point("acked")

    def _failed(self, error: RowError, source: pd.DataFrame) -> None:
        self.report.rows_failed += 1
        self.progress.failed[error.line_no] = (error.status_code, error.message)
        self.errors.add(error, values(source, error.line_no, error.raw))


SETTLE_BATCH = 1000  # rows per checkpoint transaction when unconfirmed rows are settled


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


def values(source: pd.DataFrame, line_no: int, raw: str | None) -> list[object] | None:
    """A row's source values for the error file (none for a malformed line)."""
    if raw is not None:
        return None
    try:
        return list(source.loc[line_no])
    except KeyError:
        return None
