"""One file through the chain: download, file steps, transform, send, finish.

Rows rejected by the transform and rows the API failed go to the error file as they come;
the counters always satisfy ``total = filtered + rejected + sent`` and
``sent = succeeded + failed``. The file is finished (error file uploaded, then the original
moved) only when every row is resolved. A `FileRejected` sends the original to the error
directory with a one-row error file; a `FatalError` leaves it where it is for the next run.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from dataflow.block import FileStep, RemoteFile, RowStream, Sink, Source, Transform
from dataflow.errorfile import ErrorFile, error_file_name
from dataflow.errors import FileRejected
from dataflow.ledger import Ledger
from dataflow.redact import redact
from dataflow.report import FileReport
from dataflow.rows import STAGE_DESTINATION, Chunk, RecordResult, Request, RowError
from dataflow.templates import Template

log = logging.getLogger(__name__)


@dataclass
class Chain:
    dataflow: str
    template: Template
    source: Source
    steps: list[FileStep]
    transform: Transform
    sink: Sink
    batch_size: int
    delimiter: str
    dry_run: bool = False


async def process_file(chain: Chain, file: RemoteFile, workdir: Path, ledger: Ledger) -> FileReport:
    report = FileReport(name=file.name, lineage_id=str(uuid.uuid4()), size=file.size)
    filedir = Path(tempfile.mkdtemp(prefix="file-", dir=workdir))
    try:
        await _process(chain, file, filedir, ledger, report)
    finally:
        shutil.rmtree(filedir, ignore_errors=True)
    return report


async def _process(
    chain: Chain, file: RemoteFile, filedir: Path, ledger: Ledger, report: FileReport
) -> None:
    source = chain.source
    log.info("%s: downloading", file.path)
    downloaded = filedir / "download"
    report.sha256 = await asyncio.to_thread(source.download, file, downloaded)
    if ledger.completed(chain.dataflow, report.sha256):
        report.status = "duplicate"
        report.reason = "this content was already processed by this dataflow"
        log.info("%s: duplicate of an earlier file; not sent again", file.name)
        if not chain.dry_run:
            report.processed_path = await asyncio.to_thread(source.move_original, file, False)
        return
    stage = "source"
    stream: RowStream | None = None
    try:
        path = downloaded
        for step in chain.steps:
            stage = step.config.name
            path = await asyncio.to_thread(step.apply, path, filedir)
        stage = source.config.name
        path = await asyncio.to_thread(source.prepare, path, filedir)
        stage = chain.transform.config.name
        stream = await asyncio.to_thread(chain.transform.read, path)
        errors = ErrorFile(filedir / "errors.csv", stream.columns, chain.delimiter)
        try:
            await _send_rows(chain, stream, errors, report)
        finally:
            errors.close()
    except FileRejected as exc:
        reason = redact(str(exc))
        log.error("%s: rejected at %s: %s", file.name, stage, reason)
        report.status, report.reason = "failure", reason
        report.rows_total = report.rows_filtered = report.rows_rejected = 0
        report.rows_sent = report.rows_succeeded = report.rows_failed = 0
        errors = ErrorFile(filedir / "errors.csv", [], chain.delimiter)
        errors.add(
            RowError(
                0,
                stage,
                f"{reason} (the file was moved to the error directory; nothing from it was sent)",
            ),
            None,
        )
        errors.close()
        await _finish(chain, file, errors, report, failed=True)
        return
    finally:
        if stream is not None:
            stream.close()
    problems = report.rows_rejected + report.rows_failed
    report.status = "partial" if problems else "success"
    await _finish(chain, file, errors, report, failed=False)


async def _send_rows(
    chain: Chain, stream: RowStream, errors: ErrorFile, report: FileReport
) -> None:
    chunks: Iterator[Chunk] = iter(stream)
    file_id = report.sha256 or report.lineage_id

    def next_chunk() -> tuple[Chunk, list[Request]] | None:
        chunk = next(chunks, None)
        if chunk is None:
            return None
        requests = list(
            chain.template.build_requests(
                chain.template, chunk.records, chunk.source, chain.batch_size, file_id
            )
        )
        return chunk, requests

    def take(chunk: Chunk) -> None:
        report.rows_total += chunk.total
        report.rows_filtered += chunk.filtered
        report.rows_rejected += len(chunk.errors)
        report.rows_sent += len(chunk.records)
        for error in chunk.errors:
            errors.add(error, _values(chunk.source, error.line_no, error.raw))

    async def requests() -> AsyncIterator[Request]:
        while (item := await asyncio.to_thread(next_chunk)) is not None:
            chunk, built = item
            take(chunk)
            for request in built:
                yield request

    def on_result(request: Request, results: list[RecordResult]) -> None:
        for result in results:
            if result.ok:
                report.rows_succeeded += 1
                continue
            report.rows_failed += 1
            errors.add(
                RowError(result.line_no, STAGE_DESTINATION, result.message, result.status_code),
                _values(request.source, result.line_no, None),
            )

    if chain.dry_run:
        async for _ in requests():
            pass
        return
    await chain.sink.send(requests(), on_result)
    log.info(
        "sent %d rows: %d accepted, %d failed",
        report.rows_sent,
        report.rows_succeeded,
        report.rows_failed,
    )


def _values(source: object, line_no: int, raw: str | None) -> list[object] | None:
    if raw is not None:
        return None
    try:
        return list(source.loc[line_no])  # type: ignore[attr-defined]
    except KeyError:
        return None


async def _finish(
    chain: Chain, file: RemoteFile, errors: ErrorFile, report: FileReport, failed: bool
) -> None:
    if chain.dry_run:
        return
    source = chain.source
    if errors.rows:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        name = error_file_name(file.name, stamp)
        report.error_file = await asyncio.to_thread(source.upload_error_file, errors.path, name)
        log.info("%s: %d row(s) reported in %s", file.name, errors.rows, report.error_file)
    report.processed_path = await asyncio.to_thread(source.move_original, file, failed)
    log.info("%s: moved to %s", file.name, report.processed_path)
