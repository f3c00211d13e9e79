"""``dataflow schedule``: run every enabled dataflow on its trigger until SIGTERM/SIGINT.

APScheduler 3.x with ``coalesce=True`` (missed runs become one), ``max_instances=1`` (never two
runs of one dataflow at once) and a generous ``misfire_grace_time`` (the 1 s default silently
drops runs missed while the process was busy or down). Job ids are the dataflow names.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler

from dataflow.config import Dataflow, load_dataflow
from dataflow.errors import ConfigError
from dataflow.report import EXIT_CODES

log = logging.getLogger(__name__)

MISFIRE_GRACE_SECONDS = 6 * 3600


def discover(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.y*ml") if p.suffix in (".yaml", ".yml"))
        else:
            found.append(path)
    return found


def load_all(paths: list[Path]) -> list[Dataflow]:
    dataflows: dict[str, Dataflow] = {}
    for path in discover(paths):
        try:
            dataflow = load_dataflow(path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("%s", problem)
            log.error("%s: not scheduled (invalid)", path)
            continue
        if dataflow.name in dataflows:
            log.error(
                "%s: not scheduled: dataflow name %r is already used by %s",
                path,
                dataflow.name,
                dataflows[dataflow.name].path,
            )
            continue
        dataflows[dataflow.name] = dataflow
    return list(dataflows.values())


def _job(path: Path) -> None:
    from dataflow.runner import run

    try:
        dataflow = load_dataflow(path)  # pick up secrets rotated since start
    except ConfigError as exc:
        log.error("%s: not run, the file became invalid:\n%s", path, exc)
        return
    report = run(dataflow)
    log.info(
        "%s: run %s finished: %s (exit code %d)",
        dataflow.name,
        report.run_id,
        report.status,
        EXIT_CODES[report.status],
    )


def serve(paths: list[Path]) -> int:
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping after the running jobs", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    scheduler = BackgroundScheduler(
        job_defaults={
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": MISFIRE_GRACE_SECONDS,
        }
    )
    for dataflow in load_all(paths):
        if not dataflow.model.enabled or dataflow.model.trigger is None:
            log.info(
                "%s: not scheduled (%s)",
                dataflow.name,
                "disabled" if not dataflow.model.enabled else "no trigger",
            )
            continue
        scheduler.add_job(
            _job,
            dataflow.model.trigger.build(),
            args=[dataflow.path],
            id=dataflow.name,
            name=dataflow.name,
            replace_existing=True,
        )
    scheduler.start()
    for job in scheduler.get_jobs():
        log.info("%s: next run at %s", job.id, job.next_run_time)
    stop.wait()
    scheduler.shutdown(wait=True)
    log.info("scheduler stopped")
    return 0
