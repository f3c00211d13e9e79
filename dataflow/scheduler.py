"""``dataflow schedule``: run every enabled dataflow on its trigger until SIGTERM/SIGINT.

APScheduler 3.x with its job store in SQLite (``schedule.db`` in the state directory): job ids
are the dataflow names, so a restart finds its jobs again, and runs missed while the
scheduler was down are coalesced into one catch-up run at start (``coalesce=True`` and a
six-hour ``misfire_grace_time``: the 1 s default silently drops them). ``max_instances=1`` and
the ledger's per-dataflow lock keep two runs of one dataflow apart, even across processes;
a second scheduler on the same state directory refuses to start (two would run jobs twice).
A cron that names a wall-clock time repeated on a DST fall-back day runs once: each fire
claims its local minute in the ledger.

With ``--executor celery`` the scheduler runs nothing itself: each due dataflow is put on the
Celery queue (`dataflow.celery_app`) for the workers, after its fire is claimed in the ledger.
With the state in PostgreSQL (``DATAFLOW_STATE_URL``) the job store is there too and the
single-scheduler lock is an advisory lock: a second ``dataflow schedule`` waits as a standby
and takes over, with the same jobs and their missed runs, when the active one stops or its
host vanishes (keepalives: seconds); the claimed fires keep a handover from firing twice.

SIGHUP reloads the files: new and changed dataflows are (re)scheduled, removed ones
unscheduled; an invalid file is reported and its previous schedule, if any, is kept.
SIGTERM/SIGINT stop cleanly: a running dataflow finishes its requests in flight and
checkpoints the rest (the next run resumes it), then the process exits 0.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from dataflow import registry
from dataflow.alerts import check_no_file, is_defaults_file
from dataflow.block import Trigger
from dataflow.config import Dataflow, load_dataflow
from dataflow.errors import ConfigError, StateError
from dataflow.ledger import Ledger, state_dir
from dataflow.report import EXIT_CODES
from dataflow.shutdown import STOP
from dataflow.trigger import When

log = logging.getLogger(__name__)

MISFIRE_GRACE_SECONDS = 6 * 3600
JOB_FUNC = "dataflow.scheduler:run_job"
ENQUEUE_FUNC = "dataflow.scheduler:enqueue_job"  # --executor celery
EXECUTORS = ("local", "celery")
STANDBY_POLL_SECONDS = 1.0
_job_func = JOB_FUNC  # the function of the dataflow jobs, set by `serve` for its executor
_celery: Any = None  # the Celery app of an `--executor celery` scheduler
NO_FILE_FUNC = "dataflow.scheduler:no_file_job"
NO_FILE_SUFFIX = ":no_file"  # job id of a dataflow's expect_file deadline (':' is not in names)


def discover(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(
                p
                for p in path.rglob("*")
                if p.suffix in (".yaml", ".yml") and not is_defaults_file(p)
            )
        else:
            found.append(path)
    return [p.resolve() for p in found]


def load_all(paths: list[Path]) -> tuple[list[Dataflow], set[Path]]:
    """Valid dataflows, and the files that are invalid (reported here)."""
    dataflows: dict[str, Dataflow] = {}
    invalid: set[Path] = set()
    for path in discover(paths):
        try:
            dataflow = load_dataflow(path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("%s", problem)
            log.error("%s: invalid; its schedule (if any) is left as it was", path)
            invalid.add(path)
            continue
        if dataflow.name in dataflows:
            log.error(
                "%s: dataflow name %r is already used by %s; not scheduled",
                path,
                dataflow.name,
                dataflows[dataflow.name].path,
            )
            invalid.add(path)
            continue
        dataflows[dataflow.name] = dataflow
    return list(dataflows.values()), invalid


class BlockTrigger(BaseTrigger):  # type: ignore[misc]
    """Adapts a dataflow `Trigger` block to APScheduler. It is pickled into the job store as
    (block type, config), so a restarted scheduler rebuilds the block from its own config."""

    def __init__(self, type_name: str, config: dict[str, Any]) -> None:
        self.type_name = type_name
        self.config = config
        self.block = _build_trigger(type_name, config)

    @classmethod
    def of(cls, trigger: Trigger) -> BlockTrigger:
        config = trigger.config.model_dump(mode="json")
        return cls(str(config["type"]), config)

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        return self.block.next_fire(previous_fire_time, now)

    def __getstate__(self) -> dict[str, Any]:
        return {"version": 1, "type": self.type_name, "config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["type"], state["config"])  # type: ignore[misc]

    def __str__(self) -> str:
        return self.block.describe()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockTrigger) and self.__getstate__() == other.__getstate__()

    __hash__ = None  # type: ignore[assignment]


def _build_trigger(type_name: str, config: dict[str, Any]) -> Trigger:
    cls = registry.resolve(type_name)
    if cls is None or not issubclass(cls, Trigger):
        raise LookupError(f"trigger block type {type_name!r} is not installed")
    return cls(cls.Config.model_validate(config))


def run_job(path: str) -> None:
    """One scheduled run (the job function stored by reference in the job store)."""
    from dataflow.runner import run

    try:
        dataflow = load_dataflow(path)  # read again: rotated secrets are picked up
    except ConfigError as exc:
        log.error("%s: not run, the file is invalid:\n%s", path, exc)
        return
    trigger = dataflow.trigger
    ledger = Ledger()
    try:
        key = trigger.fire_key(datetime.now(UTC)) if trigger is not None else None
        if key is not None and not ledger.claim_fire(dataflow.name, key):
            log.warning(
                "%s: already ran at %s local time (a DST fall-back repeat); skipping",
                dataflow.name,
                key,
            )
            return
        report = run(dataflow, ledger=ledger)
    finally:
        ledger.close()
    log.info(
        "%s: run %s finished: %s (exit code %d)",
        dataflow.name,
        report.run_id,
        report.status,
        EXIT_CODES[report.status],
    )


def enqueue_job(path: str) -> None:
    """One scheduled fire of ``--executor celery``: claimed in the ledger, then queued."""
    from dataflow import celery_app

    try:
        dataflow = load_dataflow(path)
    except ConfigError as exc:
        log.error("%s: not queued, the file is invalid:\n%s", path, exc)
        return
    trigger = dataflow.trigger
    try:
        ledger = Ledger()
        try:
            key = trigger.fire_key(datetime.now(UTC)) if trigger is not None else None
            if key is not None and not ledger.claim_fire(dataflow.name, key):
                log.warning("%s: already fired at %s local time; skipping", dataflow.name, key)
                return
        finally:
            ledger.close()
    except StateError as exc:
        log.error("%s: not queued: %s", dataflow.name, exc)
        return
    global _celery
    if _celery is None:
        _celery = celery_app.make_app()
    try:
        celery_app.enqueue(_celery, path)
    except Exception as exc:  # the broker's client raises its own errors (kombu, redis)
        log.error("%s: not queued, the broker cannot be reached: %s", dataflow.name, exc)
        return
    log.info("%s: enqueued for a worker", dataflow.name)


def sync_jobs(scheduler: BackgroundScheduler, paths: list[Path]) -> None:
    """Make the job store match the files: add, replace, keep or remove jobs."""
    dataflows, invalid = load_all(paths)
    wanted: dict[str, tuple[str, BaseTrigger, list[str]]] = {}  # job id -> func, trigger, args
    for dataflow in dataflows:
        args = [str(dataflow.path.resolve())]
        if not dataflow.model.enabled:
            log.info("%s: not scheduled (disabled)", dataflow.name)
            continue
        if dataflow.trigger is None:
            log.info("%s: not scheduled (no trigger)", dataflow.name)
        else:
            wanted[dataflow.name] = (_job_func, BlockTrigger.of(dataflow.trigger), args)
        deadline = _expect_file(dataflow)
        if deadline is not None:
            wanted[dataflow.name + NO_FILE_SUFFIX] = (NO_FILE_FUNC, WhenTrigger(deadline), args)
    for job in scheduler.get_jobs():
        kept_invalid = job.args and Path(job.args[0]) in invalid
        if job.id not in wanted and not kept_invalid:
            log.info("%s: unscheduled (its file is gone, disabled or without trigger)", job.id)
            scheduler.remove_job(job.id)
    for job_id, (func, trigger, args) in wanted.items():
        job = scheduler.get_job(job_id)
        same = job is not None and job.func_ref == func and job.trigger == trigger
        if job is not None and same and list(job.args) == args:
            continue  # unchanged: keep its next run time (and any missed run)
        scheduler.add_job(func, trigger, args=args, id=job_id, name=job_id, replace_existing=True)
        log.info("%s: scheduled (%s)", job_id, trigger)


def _expect_file(dataflow: Dataflow) -> When | None:
    alerts = dataflow.model.alerts
    if alerts is None or alerts.expect_file is None or "no_file" not in alerts.events:
        return None
    return alerts.expect_file


class WhenTrigger(BaseTrigger):  # type: ignore[misc]
    """An ``expect_file`` deadline (a `When`) for APScheduler, pickled as its config."""

    def __init__(self, when: When) -> None:
        self.when = when

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        return self.when.next_fire(previous_fire_time, now)

    def __getstate__(self) -> dict[str, Any]:
        return {"version": 1, "when": self.when.model_dump(mode="json", exclude_none=True)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.when = When.model_validate(state["when"])

    def __str__(self) -> str:
        return f"expect_file deadline {self.when.describe()}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WhenTrigger) and self.__getstate__() == other.__getstate__()

    __hash__ = None  # type: ignore[assignment]


def no_file_job(path: str) -> None:
    """At a dataflow's expect_file deadline: a ``no_file`` alert if nothing was picked up."""
    try:
        dataflow = load_dataflow(path)
    except ConfigError as exc:
        log.error("%s: deadline not checked, the file is invalid:\n%s", path, exc)
        return
    try:
        ledger = Ledger()
    except StateError as exc:
        log.error("%s: deadline not checked: %s", dataflow.name, exc)
        return
    try:
        check_no_file(dataflow, ledger)
    except StateError as exc:
        log.error("%s: deadline not checked: %s", dataflow.name, exc)
    finally:
        ledger.close()


def serve(paths: list[Path], http: tuple[str, int] | None = None, executor: str = "local") -> int:
    global _job_func
    if executor == "celery":
        from dataflow import celery_app

        celery_app.broker_url()  # ConfigError now, not at the first fire
    _job_func = ENQUEUE_FUNC if executor == "celery" else JOB_FUNC
    directory = state_dir()
    ledger = Ledger(directory)
    waiting = False
    while True:
        with ledger.lock(".scheduler") as held:  # not a valid dataflow name: no clash
            if held:
                if waiting:
                    log.info("the active scheduler is gone: this one takes over")
                return _serve(paths, directory, http, _job_store(ledger, directory))
            if not ledger.postgres:
                log.error(
                    "another dataflow scheduler is running on %s; two would run jobs twice",
                    directory,
                )
                ledger.close()
                return 1
            if not waiting:
                log.info(
                    "standby: another dataflow scheduler is active on %s; this one takes over "
                    "when it stops",
                    ledger.where,
                )
                waiting = True
        if _standby_wait():
            ledger.close()
            log.info("standby scheduler stopped")
            return 0


def _standby_wait() -> bool:
    """Wait a moment as a standby; True when SIGTERM/SIGINT asked to stop."""
    stop = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    return stop.wait(STANDBY_POLL_SECONDS)


def _job_store(ledger: Ledger, directory: Path) -> SQLAlchemyJobStore:
    """The jobs in PostgreSQL with the rest of the state (a standby takes them over), else in
    ``schedule.db`` in the state directory."""
    if ledger.postgres and ledger.url:
        from dataflow.db import postgres_engine

        return SQLAlchemyJobStore(engine=postgres_engine(ledger.url))
    return SQLAlchemyJobStore(url=f"sqlite:///{directory / 'schedule.db'}")


def _serve(
    paths: list[Path],
    directory: Path,
    http: tuple[str, int] | None,
    store: SQLAlchemyJobStore,
) -> int:
    stop = threading.Event()
    reload = threading.Event()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping after the running jobs", signal.Signals(signum).name)
        STOP.set()
        stop.set()

    def on_hup(signum: int, frame: FrameType | None) -> None:
        reload.set()
        stop.set()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    scheduler = BackgroundScheduler(
        jobstores={"default": store},
        job_defaults={
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": MISFIRE_GRACE_SECONDS,
        },
        timezone=UTC,
    )
    server = _serve_http(http, directory, scheduler) if http else None  # before any job runs
    scheduler.start(paused=True)
    sync_jobs(scheduler, paths)
    scheduler.resume()
    _log_next(scheduler)
    while True:
        stop.wait()
        if reload.is_set() and not STOP.is_set():
            reload.clear()
            stop.clear()
            log.info("SIGHUP: reloading %s", ", ".join(str(p) for p in paths))
            sync_jobs(scheduler, paths)
            _log_next(scheduler)
            continue
        break
    scheduler.shutdown(wait=True)
    if server is not None:
        server.shutdown()
    log.info("scheduler stopped")
    return 0


def _serve_http(http: tuple[str, int], directory: Path, scheduler: BackgroundScheduler) -> Any:
    """The run-history page, /metrics and /healthz from a daemon thread (`dataflow.web`)."""
    from dataflow import web

    def next_runs() -> dict[str, datetime | None]:
        return {job.id: job.next_run_time for job in scheduler.get_jobs()}

    return web.start(http, web.Site(directory, next_runs))


def _log_next(scheduler: BackgroundScheduler) -> None:
    for job in scheduler.get_jobs():
        log.info("%s: next run at %s", job.id, job.next_run_time)
    if not scheduler.get_jobs():
        log.warning("no dataflow is scheduled")
