"""A run: one poll of a dataflow's source, every matching file processed in turn.

A run never raises for a run-time problem: a FatalError (ours: credentials, a full disk, an
unusable state directory, a lost server) stops it and keeps the current file; a file the
source will not let us read (`FileSkipped`) is reported as a failure, left where it is, and
the next files go on. An unexpected exception is reported in one line (its traceback goes to
the debug log), never as a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dataflow import logs, metrics
from dataflow.alerts import alert_run
from dataflow.block import Block, FileStep, RemoteFile, RunContext, Sink, Source, Transform
from dataflow.config import Dataflow
from dataflow.errorfile import local_write_error
from dataflow.errors import FatalError, FileSkipped, StateError
from dataflow.ledger import Ledger
from dataflow.pipeline import Chain, process_file
from dataflow.redact import redact
from dataflow.report import FileReport, RunReport

log = logging.getLogger(__name__)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def run(dataflow: Dataflow, *, dry_run: bool = False, ledger: Ledger | None = None) -> RunReport:
    """Process every matching file now. Never raises for a run-time problem: see the report."""
    report = RunReport(
        dataflow=dataflow.name, run_id=str(uuid.uuid4()), started_at=now_iso(), dry_run=dry_run
    )
    with logs.context(dataflow=dataflow.name, run_id=report.run_id):  # on every log line
        return _run_logged(dataflow, report, dry_run, ledger)


def _run_logged(
    dataflow: Dataflow, report: RunReport, dry_run: bool, ledger: Ledger | None
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
            _run_locked(dataflow, report, ledger, dry_run)
        alert_run(dataflow, report, ledger)  # outside the lock: a slow receiver holds up no run
    except StateError as exc:
        if not report.finished_at:
            return _stopped_before_start(report, exc)
    finally:
        if own_ledger:
            with contextlib.suppress(StateError):
                ledger.close()
    return report


def _stopped_before_start(report: RunReport, exc: FatalError) -> RunReport:
    report.reason = f"{redact(str(exc))}; nothing was done, every file stays where it is"
    report.stop_cause = exc.cause
    log.error("run not started: %s", report.reason)
    report.finished_at = now_iso()
    report.settle()
    return report


def _run_locked(dataflow: Dataflow, report: RunReport, ledger: Ledger, dry_run: bool) -> None:
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
            asyncio.run(_run(dataflow, report, workdir, ledger, dry_run))
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


async def _run(
    dataflow: Dataflow, report: RunReport, workdir: Path, ledger: Ledger, dry_run: bool
) -> None:
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
        files = await asyncio.to_thread(source.list_files)
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
            batch_size=getattr(_one(blocks, Sink).config, "batch_size", 100),
            delimiter=getattr(_one(blocks, Transform).config, "delimiter", ","),
            dry_run=dry_run,
        )
        for file in files:
            current = FileReport(name=file.name, lineage_id=str(uuid.uuid4()), size=file.size)
            try:
                await _process_one(chain, file, workdir, ledger, report, current)
            except FileSkipped as exc:
                current.status = "failure"
                current.reason = f"skipped: {redact(str(exc))}"
                log.warning("%s: %s; going on with the next file", file.name, current.reason)
                report.files.append(current)
                _record(ledger, report, current, dry_run)
                continue
            except FatalError as exc:
                current.status = "failure"
                current.reason = f"{redact(str(exc))} (the file was left in place for the next run)"
                report.files.append(current)
                if not isinstance(exc, StateError):
                    _record(ledger, report, current, dry_run)
                raise
            report.files.append(current)  # the pipeline recorded it in the ledger
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
    finally:
        for block in reversed(opened):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(block.close)


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
