"""One file through the chain: download, file steps, transform, send, finish.

Rows rejected by the transform and rows the API failed go to the error file as they come;
rows without a verdict of the API go there as failed only if the file finishes (see
`dataflow.accounts`), and a file none of whose requests got a verdict is kept. The counters
always satisfy ``total = filtered + rejected + sent`` and ``sent = succeeded + failed``. The
file is finished (error file uploaded, then the original moved) only when every row is
resolved. A `FileRejected` sends the original to the error directory with a one-row error
file; a `FatalError` leaves it where it is for the next run.

A file whose content this dataflow already completed is a `duplicate`, unless the chain is
forced (``run --force``): then it is a new send of that content, numbered in the ledger before
its first request, whose bulk requestIds derive from ``<sha256>:send<n>``. A retry
(``dataflow retry``) is such a send of a processed file, restricted to the lines the API
failed in the lineage it retries; its original stays where it is (in processed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import itertools
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import pandas as pd

from dataflow import console, logs, overlap
from dataflow.accounts import Accounts
from dataflow.block import FileStep, RemoteFile, RowStream, Sink, Source, Transform
from dataflow.checkpoint import Progress
from dataflow.digest import sha256_of
from dataflow.errorfile import ErrorFile, error_file_name, timestamp
from dataflow.errors import FatalError, FileRejected, Stopped
from dataflow.faults import crash_point
from dataflow.gctune import fewer_collections
from dataflow.lease import Lease
from dataflow.ledger import Ledger
from dataflow.redact import redact
from dataflow.report import IN_PROGRESS as IN_PROGRESS  # re-exported: a file sent in shards
from dataflow.report import FileReport, RunReport
from dataflow.rows import Chunk, Request, RowError
from dataflow.shutdown import STOP
from dataflow.templates import Template

log = logging.getLogger(__name__)
T = TypeVar("T")


class Sharder(Protocol):
    """Splits a big file into shards sent by workers (`dataflow.shards`), on a worker only."""

    async def split(self, decrypted: Decrypted) -> bool:
        """True when the file (decrypted at `decrypted.path`) was split and its shards
        enqueued."""
        ...


@dataclass
class Chain:
    dataflow: str
    template: Template
    source: Source
    steps: list[FileStep]
    transform: Transform
    sink: Sink
    dry_run: bool = False
    force: bool = False  # send again files whose content was already completed
    retry: Retry | None = None  # send again only the failed lines of a processed file
    shards: Sharder | None = None  # on a worker: big files are split into shards
    chunks: range | None = None  # a shard: only these chunks (0-based, in file order)


@dataclass(frozen=True)
class Decrypted:
    """A file being processed, decrypted and prepared at `path`: what a `Sharder` splits."""

    chain: Chain
    file: RemoteFile
    path: Path
    report: FileReport
    progress: Progress
    ledger: Ledger
    run: RunReport


@dataclass(frozen=True)
class Retry:
    """What `dataflow retry` sends again: the lines the API failed in a processed lineage."""

    lineage_id: str
    sha256: str  # the content that lineage processed
    lines: np.ndarray  # int64 line numbers (header = 1), sorted


async def process_file(
    chain: Chain,
    file: RemoteFile,
    workdir: Path,
    ledger: Ledger,
    run: RunReport,
    report: FileReport,
) -> FileReport:
    """Process one file, filling `report` as it goes (also when a FatalError stops it)."""
    filedir = Path(tempfile.mkdtemp(prefix="file-", dir=workdir))
    console.listener().file_started(file.name, file.size)
    # the first file step decrypts the download as its bytes come (dataflow.overlap)
    early = overlap.start(chain.steps, filedir / "download", filedir)
    try:
        with logs.context(lineage_id=None):  # set once known (a resumed file keeps its own)
            await _process(chain, file, filedir, ledger, report, run, early)
    finally:
        if early is not None:
            await early.abandon()  # stopped and awaited before its directory goes
        shutil.rmtree(filedir, ignore_errors=True)
    return report


async def _process(
    chain: Chain,
    file: RemoteFile,
    filedir: Path,
    ledger: Ledger,
    report: FileReport,
    run: RunReport,
    early: overlap.EarlyStep | None,
) -> None:
    source = chain.source
    log.info("%s: downloading", file.path)
    downloaded = filedir / "download"
    try:
        sha = report.sha256 = await asyncio.to_thread(source.download, file, downloaded)
    finally:
        if early is not None:
            early.download_ended()
    console.listener().downloaded(file.size)
    crash_point("downloaded")
    if chain.retry is not None and sha != chain.retry.sha256:
        raise FatalError(
            f"{file.path} is not the content lineage {chain.retry.lineage_id} processed (its "
            "SHA-256 differs: it was replaced); nothing was sent"
        )
    completed = chain.retry is None and ledger.completed(chain.dataflow, sha)
    if completed and not (chain.force or _forced_before(chain, ledger, sha)):
        report.status = "duplicate"
        report.reason = "this content was already processed by this dataflow"
        log.info("%s: duplicate of an earlier file; not sent again", file.name)
        if not chain.dry_run:
            report.processed_path = await asyncio.to_thread(source.move_original, file, False)
            ledger.finish_file(run, report)
        return
    progress = _open_progress(chain, ledger, sha, file.name, report, again=completed)
    report.lineage_id, report.send_no = progress.lineage_id, progress.send_no
    report.retry_of = chain.retry.lineage_id if chain.retry is not None else None
    if progress.send_no and not progress.resumed:
        log.info("%s: sending this content again (send %d)", file.name, progress.send_no)
    logs.LINEAGE_ID.set(report.lineage_id)
    if progress.resumed:
        log.info(
            "%s: resuming: %d row(s) were acknowledged before an interruption",
            file.name,
            int(progress.acked.sum()),
        )
    stage = "source"
    stream: RowStream | None = None
    try:
        path = downloaded
        for index, step in enumerate(chain.steps):
            stage = step.config.name
            ready = await early.result(sha) if early is not None and index == 0 else None
            path = await asyncio.to_thread(step.apply, path, filedir) if ready is None else ready
        crash_point("decrypted")
        stage = source.config.name
        path = await asyncio.to_thread(source.prepare, path, filedir)
        stage = chain.transform.config.name
        stream = await asyncio.to_thread(chain.transform.read, path)  # header, encoding checked
        if await _split(Decrypted(chain, file, path, report, progress, ledger, run)):
            return  # the last shard to finish records it, moves it, writes its error file
        errors = await _send(chain, stream, filedir, report, progress, ledger)
    except FileRejected as exc:
        reason = redact(str(exc))
        log.error("%s: rejected at %s: %s", file.name, stage, reason)
        report.status, report.reason = "failure", reason
        report.rows_total = report.rows_filtered = report.rows_rejected = 0
        report.rows_sent = report.rows_succeeded = report.rows_failed = 0
        errors = ErrorFile(filedir / "errors.csv", [], chain.transform.delimiter)
        message = f"{reason} (the file was moved to the error directory; nothing from it was sent)"
        errors.add(RowError(0, stage, message), None)
        errors.close()
        await _finish(chain, file, errors, report, progress, ledger, run, failed=True)
        return
    finally:
        if stream is not None:
            stream.close()
    problems = report.rows_rejected + report.rows_failed
    report.status = "partial" if problems else "success"
    await _finish(chain, file, errors, report, progress, ledger, run, failed=False)


async def _split(decrypted: Decrypted) -> bool:
    """True when the chain's sharder (a worker's; not in a retry or a dry run) split it."""
    chain = decrypted.chain
    if chain.shards is None or chain.retry is not None or chain.dry_run:
        return False
    return await chain.shards.split(decrypted)


def _forced_before(chain: Chain, ledger: Ledger, sha: str) -> bool:
    """A forced send of this content was interrupted: any run resumes it."""
    return not chain.dry_run and ledger.checkpoints(chain.dataflow).interrupted_send(sha)


def _open_progress(
    chain: Chain, ledger: Ledger, sha: str, name: str, report: FileReport, again: bool
) -> Progress:
    """The send's checkpoint; a send again (forced, or a retry) gets a new send number, or
    resumes its interrupted self with the number it recorded before its first request."""
    if chain.dry_run:
        return Progress(report.lineage_id, key=sha)
    checkpoints = ledger.checkpoints(chain.dataflow)
    if chain.retry is not None:
        retry_of = chain.retry.lineage_id
        return checkpoints.open(sha, name, ledger.next_send(chain.dataflow, sha), retry_of)
    if again:
        return checkpoints.open(sha, name, ledger.next_send(chain.dataflow, sha))
    return checkpoints.open(sha, name)


async def _send(
    chain: Chain,
    stream: RowStream,
    filedir: Path,
    report: FileReport,
    progress: Progress,
    ledger: Ledger,
) -> ErrorFile:
    """Send the stream's rows; its error file (closed) is ``errors.csv`` in `filedir`."""
    source = chain.source
    errors = ErrorFile(
        filedir / "errors.csv",
        stream.columns,
        chain.transform.delimiter,
        neutralize_formulas=source.neutralize_formulas,
        all_rows=source.result_file == "all",
    )
    try:
        await _send_rows(chain, stream, errors, report, progress, ledger)
    finally:
        errors.close()
    return errors


async def _send_rows(
    chain: Chain,
    stream: RowStream,
    errors: ErrorFile,
    report: FileReport,
    progress: Progress,
    ledger: Ledger,
) -> None:
    checkpoints = None if chain.dry_run else ledger.checkpoints(chain.dataflow)
    accounts = Accounts(report, errors, progress, checkpoints)
    planned = _plan(chain, stream, progress, progress.key or report.sha256 or report.lineage_id)

    ahead: list[asyncio.Future[tuple[Chunk, pd.DataFrame, list[Request]] | None]] = []

    def map_next() -> asyncio.Future[tuple[Chunk, pd.DataFrame, list[Request]] | None]:
        """Map the next chunk in a thread; it is taken (counted) only when its turn comes."""
        ahead[:] = [asyncio.ensure_future(asyncio.to_thread(next, planned, None))]
        return ahead[0]

    async def requests() -> AsyncIterator[Request]:
        pending = map_next()
        # shielded: when the sink stops (a fatal error cancels its producer) the mapping
        # thread cannot be cancelled anyway; the finally below waits for it
        while not STOP.is_set() and (item := await asyncio.shield(pending)):
            pending = map_next()  # the next chunk is mapped while this one's requests are sent
            chunk, done, built = item
            accounts.take_chunk(chunk, done)
            console.listener().rows_read(chunk.total, len(chunk.errors), len(done))
            for request in built:
                if STOP.is_set():
                    return
                yield request

    try:
        if chain.dry_run:
            async for _ in requests():
                pass
        else:
            with fewer_collections():  # issue 11: see dataflow.gctune
                await chain.sink.send(requests(), console.counting(accounts.on_result))
    finally:  # a chunk mapped ahead and never reached: let its thread end, then drop it
        if ahead:
            await asyncio.wait(ahead)
            for future in ahead:
                if not future.cancelled():
                    future.exception()  # retrieved: its error (if any) is the file's, dropped
        accounts.close()
    if STOP.is_set():
        raise Stopped(
            f"stopped before the file was finished; {accounts.acknowledged} acknowledged row(s)"
            " are checkpointed and the next run resumes the file"
        )
    accounts.require_a_verdict(f"block {chain.sink.config.name!r}")
    accounts.settle()
    log.info(
        "sent %d rows: %d accepted, %d failed",
        report.rows_sent,
        report.rows_succeeded,
        report.rows_failed,
    )


def _plan(
    chain: Chain, stream: RowStream, progress: Progress, file_id: str
) -> Iterator[tuple[Chunk, pd.DataFrame, list[Request]]]:
    """Each chunk, its rows acknowledged before an interruption, and the requests for the rest."""
    for whole in _chunks(chain, stream):
        chunk = whole if chain.retry is None else only_lines(whole, chain.retry.lines)
        records = chunk.records
        done = records.iloc[0:0]
        if progress.resumed and len(records):
            acked = progress.acked_mask(records.index.to_numpy(dtype=np.int64))
            done, records = records[acked], records[~acked]
        requests = chain.sink.build_requests(records, chunk.source, file_id)
        yield chunk, done, list(requests)


def _chunks(chain: Chain, stream: RowStream) -> Iterator[Chunk]:
    """The stream's chunks, or a shard's (the others not transformed when the stream can)."""
    if chain.chunks is None or stream.select(chain.chunks):
        return iter(stream)
    return itertools.islice(stream, chain.chunks.start, chain.chunks.stop)


def only_lines(chunk: Chunk, lines: np.ndarray) -> Chunk:
    """The part of `chunk` on `lines` (a retry): its records and rejections there, and as
    filtered the lines there that are neither."""

    def on(numbers: object) -> np.ndarray:
        return np.isin(np.asarray(numbers, dtype=np.int64), lines)

    records = chunk.records[on(chunk.records.index)]
    errors = [
        e
        for e, keep in zip(chunk.errors, on([e.line_no for e in chunk.errors]), strict=True)
        if keep
    ]
    present = np.asarray(chunk.source.index, dtype=np.int64)
    resolved = np.asarray([*records.index, *(e.line_no for e in errors)], dtype=np.int64)
    filtered = len(np.setdiff1d(present[on(present)], resolved))
    return Chunk(chunk.source, records, errors, filtered)


async def _finish(
    chain: Chain,
    file: RemoteFile,
    errors: ErrorFile,
    report: FileReport,
    progress: Progress,
    ledger: Ledger,
    run: RunReport,
    failed: bool,
) -> None:
    """Upload the error file, then move the original; each step recorded, so a crash between
    them neither loses nor repeats anything."""
    if chain.dry_run:
        return
    source = chain.source
    if errors.rows:
        if await upload_error_file(chain, file, errors.path, report, progress, ledger):
            crash_point("error_uploaded")
        log.info("%s: %d row(s) reported in %s", file.name, errors.rows, report.error_file)
    if chain.retry is None:
        report.processed_path = await asyncio.to_thread(source.move_original, file, failed)
    else:  # a retry leaves the original where it is, in processed
        report.processed_path = file.path
    crash_point("moved")
    ledger.finish_file(run, report, errors.summary(), progress.failed)
    log.info("%s: moved to %s", file.name, report.processed_path)


async def upload_error_file(
    chain: Chain,
    file: RemoteFile,
    local: Path,
    report: FileReport,
    progress: Progress,
    ledger: Ledger,
    write: Callable[[], None] | None = None,
) -> bool:
    """Upload the error file `local` (made first by `write`, if given) into
    ``report.error_file``, its name and then its path checkpointed, so a crash neither loses
    it nor uploads it twice; False when it was uploaded before an interruption."""
    if progress.error_path:
        report.error_file = progress.error_path  # uploaded before an interruption
        return False
    checkpoints = ledger.checkpoints(chain.dataflow)
    name = progress.error_name or error_file_name(file.name, timestamp())
    if progress.error_name is None:
        checkpoints.error_file(progress.key, name=name)
    if write is not None:
        await asyncio.to_thread(write)
    plain = local
    local, name = await asyncio.to_thread(protect_output, chain, local, name)
    earlier: tuple[str, ...] = ()
    if local != plain:  # encrypted: other bytes at every attempt, recorded before the upload
        checkpoints.error_digest(progress, await asyncio.to_thread(sha256_of, local))
        earlier = tuple(progress.error_digests)
    upload = functools.partial(chain.source.upload_error_file, local, name)
    if earlier and _takes_earlier(chain.source):  # a source written before `earlier` existed
        upload = functools.partial(upload, earlier=earlier)  # uploads as it did (a crash
        # after its rename may then leave a second, suffixed copy of an encrypted file)
    report.error_file = await asyncio.to_thread(upload)
    checkpoints.error_file(progress.key, path=report.error_file)
    return True


def _takes_earlier(source: Source) -> bool:
    parameters = inspect.signature(source.upload_error_file).parameters.values()
    return any(p.name == "earlier" or p.kind is p.VAR_KEYWORD for p in parameters)


def protect_output(chain: Chain, local: Path, name: str) -> tuple[Path, str]:
    """What is uploaded for `local` (to be written back as `name`): each file step's
    `protect_output` in turn (pgp_decrypt's `encrypt_outputs_to`), in the file's private
    directory. Call it before every upload of a file written back to the server."""
    for step in chain.steps:
        local, name = step.protect_output(local, name, local.parent)
    return local, name


async def process_shard(
    chain: Chain,
    file: RemoteFile,
    filedir: Path,
    ledger: Ledger,
    report: FileReport,
    progress: Progress,
    plaintext_sha256: str | None = None,
) -> ErrorFile:
    """Send one shard of a big file (`chain.chunks`): download and decrypt it into `filedir`
    (private to this worker), check it is the content that was split (`report.sha256`, and
    the decrypted, unpacked text's `plaintext_sha256` when the split recorded it: the chunk
    ranges are ranges of that text), send the rows of its chunks. Its error file (closed) is
    the shard's part of the file's."""
    source = chain.source
    downloaded = filedir / "download"
    sha = await asyncio.to_thread(source.download, file, downloaded)
    if sha != report.sha256:
        raise FatalError(
            f"{file.path} changed while it was sent in shards (its SHA-256 differs from the "
            "content that was split); this shard sends nothing"
        )
    try:
        path = downloaded
        for step in chain.steps:
            path = await asyncio.to_thread(step.apply, path, filedir)
        path = await asyncio.to_thread(source.prepare, path, filedir)
        if plaintext_sha256 and await asyncio.to_thread(sha256_of, path) != plaintext_sha256:
            raise FatalError(
                f"{file.path}: its decrypted text differs from the one that was split into "
                "shards (a file step or source setting changed since); this shard sends nothing"
            )
        stream = await asyncio.to_thread(chain.transform.read, path)
    except FileRejected as exc:  # it was read when it was split: not the file's fault now
        raise FatalError(f"{file.path}: a shard could not read it again: {exc}") from exc
    try:
        return await _send(chain, stream, filedir, report, progress, ledger)
    finally:
        stream.close()


async def leased(ledger: Ledger, lease: Lease, ttl: float, work: Coroutine[Any, Any, T]) -> T:
    """Run `work` while renewing `lease` every third of `ttl`. When a renewal is refused
    (`LeaseLost`: another worker took the file over) or fails, `work` is cancelled (nothing
    more is written for the file here) and that error is raised."""
    task = asyncio.ensure_future(work)

    async def beat() -> None:
        while True:
            await asyncio.sleep(ttl / 3)
            ledger.heartbeat(lease, ttl)

    beating = asyncio.ensure_future(beat())
    try:
        await asyncio.wait({task, beating}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        beating.cancel()
        raise
    if task.done():
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    error = beating.exception()
    assert error is not None
    log.error("%s: stopped: %s", lease.name, error)
    raise error
