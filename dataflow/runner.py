"""A run: one poll of a dataflow's source, every matching file processed in turn.

A run never raises for a run-time problem: a FatalError (ours: credentials, a full disk, an
unusable state directory, a lost server) stops it and keeps the current file; a file the
source will not let us read (`FileSkipped`) is reported as a failure, left where it is, and
the next files go on. An unexpected exception is reported in one line (its traceback goes to
the debug log), never as a traceback.

Each file is claimed as a lease (`dataflow.lease`) and renewed while it is processed; a file
another worker holds is skipped, a file whose lease was taken over stops (`LeaseLost`) and the
run goes on. On a worker (`shards=`), a big file is split into shards sent by the workers
(`dataflow.shards`); the run then ends `in_progress` and raises no alert: the last shard
derives its status again and raises its alerts. While a dataflow's shards run, its runs are
skipped (the shards have its rate limit).

`run(..., force=True)` also sends files whose content was already completed (a new send, see
`dataflow.pipeline`); `retry` sends again the rows the API failed in one processed lineage,
taking the original from where that run moved it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from dataflow import logs, metrics, shards
from dataflow.alerts import alert_run
from dataflow.block import Block, FileStep, RemoteFile, RunContext, Sink, Source, Transform
from dataflow.config import Dataflow
from dataflow.errorfile import local_write_error
from dataflow.errors import FatalError, FileSkipped, StateError
from dataflow.lease import Lease, LeaseLost, lease_seconds, worker_name
from dataflow.ledger import Ledger, RetryRefused
from dataflow.pipeline import IN_PROGRESS, Chain, Retry, Sharder, leased, process_file
from dataflow.redact import redact
from dataflow.report import FileReport, RunReport

log = logging.getLogger(__name__)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Mode:
    """How a run takes its files."""

    dry_run: bool = False
    force: bool = False  # also files whose content was already completed (a new send)
    retry_of: str | None = None  # only the processed file of this lineage, its failed rows
    shards: Sharder | None = None  # on a worker: big files are sent in shards (dataflow.shards)


class NothingToRetry(RetryRefused):
    """The lineage has no row that failed at the destination: nothing is sent."""


def run(
    dataflow: Dataflow,
    *,
    dry_run: bool = False,
    force: bool = False,
    ledger: Ledger | None = None,
    shards: Sharder | None = None,
) -> RunReport:
    """Process every matching file now. Never raises for a run-time problem: see the report.
    With `shards` (a worker's), a file above its threshold is split into shards."""
    return _start(dataflow, Mode(dry_run=dry_run, force=force, shards=shards), ledger)


def retry(dataflow: Dataflow, lineage_id: str, *, ledger: Ledger | None = None) -> RunReport:
    """Send again the rows the API failed in `lineage_id`, a file this dataflow processed,
    as a new lineage linked to it (``retry_of``). Raises RetryRefused (before anything is
    done) when that lineage cannot be retried, NothingToRetry when it has no failed row;
    otherwise never raises for a run-time problem: see the report."""
    return _start(dataflow, Mode(retry_of=lineage_id), ledger)


def _start(dataflow: Dataflow, mode: Mode, ledger: Ledger | None) -> RunReport:
    report = RunReport(
        dataflow=dataflow.name,
        run_id=str(uuid.uuid4()),
        started_at=now_iso(),
        dry_run=mode.dry_run,
    )
    with logs.context(dataflow=dataflow.name, run_id=report.run_id):  # on every log line
        return _run_logged(dataflow, report, mode, ledger)


def _run_logged(
    dataflow: Dataflow, report: RunReport, mode: Mode, ledger: Ledger | None
) -> RunReport:
    own_ledger = ledger is None
    try:
        ledger = ledger or Ledger()
    except StateError as exc:
        return _stopped_before_start(report, exc)
    try:
        with ledger.lock(dataflow.name) as held:
            if not held:
                report.skipped = True
                report.reason = f"another run of {dataflow.name} is in progress; nothing done"
                log.warning("%s", report.reason)
                report.finished_at = now_iso()
                report.settle()
                return report
            if _sharded_elsewhere(dataflow, report, ledger, mode):
                if report.skipped:
                    return report
            else:
                _run_locked(dataflow, report, ledger, mode)
        alert_run(dataflow, report, ledger)  # outside the lock: a slow receiver holds up no run
    except StateError as exc:
        if not report.finished_at:
            return _stopped_before_start(report, exc)
    finally:
        if own_ledger:
            with contextlib.suppress(StateError):
                ledger.close()
    return report


def _sharded_elsewhere(dataflow: Dataflow, report: RunReport, ledger: Ledger, mode: Mode) -> bool:
    """While workers send a big file of this dataflow in shards they have its rate limit:
    the run is skipped (on a worker, the shards nobody is sending are enqueued again). When
    a shard has stopped on an error `shards.STALLED_AFTER` times, the run is a failure
    instead, recorded and alerted, whose reason names the shard, its error and what to do."""
    if mode.dry_run:
        return False
    sets = shards.active(ledger, dataflow.name)
    if not sets:
        return False
    stalled = [one for one in sets if one["stalled"]]
    if not stalled:
        names = ", ".join(
            f"{one['name']} ({len(one['pending'])} of {one['shards']} shards left)" for one in sets
        )
        report.skipped = True
        report.reason = (
            f"workers are sending {names} in shards with this dataflow's rate limit; nothing "
            "done, the other files wait for the next run after it"
        )
        log.warning("%s", report.reason)
    else:  # the run fails, is recorded and alerts: someone must act
        ledger.start_run(report)
        report.reason = "; ".join(shards.stalled_reason(one) for one in stalled)
        log.error("%s", report.reason)
    if isinstance(mode.shards, shards.Sharder):
        try:
            shards.enqueue_orphans(ledger, dataflow.name, sets, mode.shards)
        except StateError:
            raise
        except Exception as exc:  # the broker down, say: said, and the run is recorded
            why = f"the shards nobody sends could not be enqueued again: {redact(str(exc))}"
            log.error("%s", why)
            if stalled:
                report.reason = f"{report.reason}; {why}"
    report.finished_at = now_iso()
    report.settle()
    if stalled:
        ledger.finish_run(report)
    return True


def _stopped_before_start(report: RunReport, exc: FatalError) -> RunReport:
    report.reason = f"{redact(str(exc))}; nothing was done, every file stays where it is"
    report.stop_cause = exc.cause
    log.error("run not started: %s", report.reason)
    report.finished_at = now_iso()
    report.settle()
    return report


def _run_locked(dataflow: Dataflow, report: RunReport, ledger: Ledger, mode: Mode) -> None:
    target = None if mode.retry_of is None else _retry_target(dataflow, ledger, mode.retry_of)
    ledger.start_run(report)
    remove_stale_workdirs()
    for cls in {spec.cls for spec in dataflow.blocks}:
        cls.remove_leftovers()
    try:
        workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))  # mode 700
    except OSError as exc:
        report.reason = str(local_write_error(Path(tempfile.gettempdir()) / "x", exc, "a work dir"))
        log.error("run not started: %s", report.reason)
        workdir = None
    try:
        if workdir is not None:
            asyncio.run(_run(dataflow, report, workdir, ledger, mode, target))
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        report.finished_at = now_iso()
        report.settle()
        metrics.flush(ledger)  # the API request counts of this run
        try:
            ledger.finish_run(report)
        except StateError as exc:
            log.error("the run's outcome could not be recorded: %s", exc)
            report.reason = report.reason or redact(str(exc))
            report.settle()


WORKDIR_PREFIX = "dataflow-"
TTL = lease_seconds  # the file lease's time to live (DATAFLOW_LEASE_SECONDS, default 60 s)


def remove_stale_workdirs() -> None:
    """Private temp dirs of runs that were killed (their process is gone) are removed."""
    for path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*-*"):
        pid = path.name[len(WORKDIR_PREFIX) :].split("-", 1)[0]
        if path.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            log.info("removing %s, left by a run that was killed", path)
            shutil.rmtree(path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class _Target:
    """The processed file a retry takes, and what it sends of it."""

    file: RemoteFile
    retry: Retry


def _retry_target(dataflow: Dataflow, ledger: Ledger, lineage_id: str) -> _Target:
    row = ledger.retry_source(dataflow.name, lineage_id)
    lines: np.ndarray = row["failed_lines"]
    if not len(lines):
        raise NothingToRetry(
            f"lineage {lineage_id} ({row['name']}) has no row that failed at the destination "
            f"({row['rows_rejected'] or 0} rejected by the transform are not retried: they "
            "would be rejected again); nothing to send"
        )
    if not row["processed_path"] or not row["sha256"]:
        raise RetryRefused(f"lineage {lineage_id} ({row['name']}) has no processed original")
    path = str(row["processed_path"])
    file = RemoteFile(path, str(row["name"]), int(row["size"] or 0), 0)
    log.info("retrying %d failed row(s) of %s (lineage %s)", len(lines), path, lineage_id)
    return _Target(file, Retry(lineage_id, str(row["sha256"]), lines))


async def _run(
    dataflow: Dataflow,
    report: RunReport,
    workdir: Path,
    ledger: Ledger,
    mode: Mode,
    target: _Target | None,
) -> None:
    dry_run = mode.dry_run
    context = RunContext(
        dataflow=dataflow.name,
        template=dataflow.template,
        workdir=workdir,
        base_dir=dataflow.path.resolve().parent,
        dry_run=dry_run,
    )
    blocks: list[Block] = [spec.cls(spec.config, context) for spec in dataflow.blocks]
    opened: list[Block] = []
    try:
        source = _one(blocks, Source)
        opened.append(source)  # close() is safe after a failed open()
        await asyncio.to_thread(source.open)
        if target is None:
            files = await asyncio.to_thread(source.list_files)
        else:  # a retry: the original, where the run that processed it moved it
            files = [target.file]
        log.info("%s: %d file(s) to process", dataflow.name, len(files))
        if not files:
            return
        for block in blocks:
            if block is not source and not (dry_run and isinstance(block, Sink)):
                opened.append(block)
                await asyncio.to_thread(block.open)
        chain = Chain(
            dataflow=dataflow.name,
            template=dataflow.template,
            source=source,
            steps=[b for b in blocks if isinstance(b, FileStep)],
            transform=_one(blocks, Transform),
            sink=_one(blocks, Sink),
            dry_run=dry_run,
            force=mode.force,
            retry=None if target is None else target.retry,
            shards=mode.shards,
        )
        owner = worker_name(report.run_id)
        for number, file in enumerate(files):
            current = FileReport(name=file.name, lineage_id=str(uuid.uuid4()), size=file.size)
            current.retry_of = mode.retry_of
            lease = None if dry_run else _claim(ledger, chain.dataflow, file.name, owner)
            if lease is None and not dry_run:
                log.warning(
                    "%s: skipped in this run: another worker holds its lease and is processing "
                    "it (not an error; it finishes the file)",
                    file.name,
                )
                continue
            try:
                work = _process_one(chain, file, workdir, ledger, report, current)
                await _under_lease(ledger, lease, work)
            except FileSkipped as exc:
                current.status = "failure"
                current.reason = f"skipped: {redact(str(exc))}"
                log.warning("%s: %s; going on with the next file", file.name, current.reason)
                report.files.append(current)
                _record(ledger, report, current, dry_run)
                continue
            except LeaseLost as exc:  # another worker has the file: nothing more written
                current.status = "failure"
                current.reason = redact(str(exc))
                log.error("%s: %s", file.name, current.reason)
                report.files.append(current)
                continue
            except FatalError as exc:
                current.status = "failure"
                current.reason = _kept(redact(str(exc)))
                report.files.append(current)
                if not isinstance(exc, StateError):
                    _record(ledger, report, current, dry_run)
                raise
            finally:
                if lease is not None:
                    with contextlib.suppress(StateError):
                        ledger.release(lease)  # finished or handed back: free at once
            report.files.append(current)  # the pipeline recorded it in the ledger
            if current.status == IN_PROGRESS and number + 1 < len(files):
                log.info(
                    "%s: sent in shards by the workers; the %d other file(s) wait for the next "
                    "run (the shards have the dataflow's rate limit)",
                    file.name,
                    len(files) - number - 1,
                )
                break
            log.info(
                "%s: %s (%d rows: %d accepted, %d rejected, %d failed)",
                file.name,
                current.status,
                current.rows_total,
                current.rows_succeeded,
                current.rows_rejected,
                current.rows_failed,
            )
    except FatalError as exc:
        report.reason = redact(str(exc))
        report.stop_cause = exc.cause
        log.error("run stopped: %s", report.reason)
    except Exception as exc:  # a block's open/list failed in a way it did not foresee
        log.debug("unexpected error in %s", dataflow.name, exc_info=True)
        report.reason = redact(
            f"unexpected error: {type(exc).__name__}: {exc}; every file stays where it is "
            "(run with -v for details)"
        )
        report.stop_cause = "fatal"
        log.error("run stopped: %s", report.reason)
    finally:
        for block in reversed(opened):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(block.close)


def _claim(ledger: Ledger, dataflow: str, name: str, owner: str) -> Lease | None:
    """The file's lease. On SQLite (one machine) this run holds the dataflow's flock, which
    the kernel frees only when its holder is gone: a lease left live by a killed run is taken
    over at once. On PostgreSQL a live lease of another worker means it may still be working
    (a lost connection frees the advisory lock of a worker that is only cut off)."""
    return ledger.claim_file(dataflow, name, owner, TTL(), steal=not ledger.postgres)


async def _under_lease(
    ledger: Ledger, lease: Lease | None, work: Coroutine[Any, Any, None]
) -> None:
    """`work` while the file's lease is renewed (none in a dry run)."""
    if lease is None:
        await work
        return
    await leased(ledger, lease, TTL(), work)


async def _process_one(
    chain: Chain,
    file: RemoteFile,
    workdir: Path,
    ledger: Ledger,
    run: RunReport,
    current: FileReport,
) -> None:
    """process_file, with local I/O failures and anything unexpected made FatalErrors."""
    try:
        await process_file(chain, file, workdir, ledger, run, current)
    except (FatalError, FileSkipped):
        raise
    except OSError as exc:
        where = Path(exc.filename) if isinstance(exc.filename, str) else workdir / "x"
        raise local_write_error(where, exc, f"local data of {file.name}") from exc
    except Exception as exc:
        log.debug("unexpected error processing %s", file.name, exc_info=True)
        raise FatalError(
            f"unexpected error processing {file.name}: {type(exc).__name__}: {exc}"
        ) from exc


def _record(ledger: Ledger, run: RunReport, current: FileReport, dry_run: bool) -> None:
    if dry_run:
        return
    try:
        ledger.record_file(run, current)
    except StateError as exc:
        log.error("%s: its outcome could not be recorded: %s", current.name, exc)


def _one(blocks: list[Block], kind: type[Any]) -> Any:
    return next(b for b in blocks if isinstance(b, kind))


_SAYS_KEPT = ("kept for the next run", "the file is kept", "left in place")


def _kept(reason: str) -> str:
    """A stopped file's reason, saying once that the file stays for the next run."""
    if any(words in reason for words in _SAYS_KEPT):
        return reason
    return f"{reason} (the file was left in place for the next run)"
