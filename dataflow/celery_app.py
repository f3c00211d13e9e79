"""Celery: the queue between one scheduler and any number of workers (``DATAFLOW_BROKER_URL``).

The broker is a doorbell, not a guarantee: every Celery broker delivers at least once (a task
longer than Redis's ``visibility_timeout`` is handed to a second worker while the first still
runs; a killed worker's task comes back). Exactly-once comes from the state in PostgreSQL: a
run takes the dataflow's advisory lock (a second delivery finds it held and does nothing),
finished files are in the ledger (a late redelivery finds nothing new to do), and a file left
by a killed worker is resumed from its checkpoints by the next delivery.

Settings: ``task_acks_late`` (a task is acknowledged when it ends, so a killed worker's task
is delivered again), ``task_reject_on_worker_lost`` (a pool child killed mid-task is not
acknowledged), ``worker_prefetch_multiplier = 1`` (a worker holds one task beyond those it
runs) and a Redis ``visibility_timeout`` longer than the longest run
(``DATAFLOW_VISIBILITY_TIMEOUT`` seconds, default 12 hours).

The worker runs dataflows in threads (the work is I/O: SFTP, gpg, the API; scale out with more
worker processes or hosts). SIGTERM stops it as it stops ``dataflow schedule``: the running
runs finish their requests in flight and checkpoint the rest, then their tasks are rejected
back to the queue (``requeue``), so another worker resumes the files at once.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import Celery
from celery.exceptions import Reject
from celery.signals import worker_shutting_down

from dataflow.errors import ConfigError, DataflowError

log = logging.getLogger(__name__)

BROKER_ENV = "DATAFLOW_BROKER_URL"
VISIBILITY_ENV = "DATAFLOW_VISIBILITY_TIMEOUT"
VISIBILITY_DEFAULT = 12 * 3600
TASK = "dataflow.run"
QUEUE = "dataflow"


class BrokerSettingError(DataflowError):
    """DATAFLOW_BROKER_URL or DATAFLOW_VISIBILITY_TIMEOUT is missing or wrong (exit 2)."""


def broker_url() -> str:
    """The broker's URL; BrokerSettingError when DATAFLOW_BROKER_URL is not set."""
    url = os.environ.get(BROKER_ENV)
    if not url:
        raise BrokerSettingError(
            f"{BROKER_ENV} is not set: give the Celery broker, for example "
            "redis://redis-host:6379/0 or amqp://user:password@rabbit-host//"
        )
    return url


def visibility_timeout() -> int:
    text = os.environ.get(VISIBILITY_ENV, "")
    try:
        value = int(text) if text else VISIBILITY_DEFAULT
    except ValueError as exc:
        raise BrokerSettingError(
            f"{VISIBILITY_ENV} must be a number of seconds, not {text!r}"
        ) from exc
    if value < 60:
        raise BrokerSettingError(f"{VISIBILITY_ENV} must be at least 60 seconds, not {value}")
    return value


def make_app(url: str | None = None) -> Celery:
    """The Celery app of dataflow, with the one task that runs a dataflow file."""
    app = Celery("dataflow", broker=url or broker_url(), set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": visibility_timeout()},
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=QUEUE,
        worker_hijack_root_logger=False,  # dataflow's own log lines (and their redaction)
        worker_redirect_stdouts=False,
    )
    app.task(name=TASK, bind=False)(run_task)
    return app


def run_task(path: str) -> str:
    """Run one dataflow file now (on a worker): its run's status."""
    from dataflow.config import load_dataflow
    from dataflow.runner import run

    try:
        dataflow = load_dataflow(path)  # read again on the worker: rotated secrets are used
    except ConfigError as exc:
        log.error("%s: not run, the file is invalid:\n%s", path, exc)
        return "invalid"
    report = run(dataflow)
    if report.stop_cause == "stopped":  # SIGTERM: checkpointed; another worker resumes it
        log.info("%s: stopped by SIGTERM, handed back to the queue", dataflow.name)
        raise Reject("stopped by SIGTERM: handed back to the queue", requeue=True)
    log.info(
        "%s: run %s on %s finished: %s",
        dataflow.name,
        report.run_id,
        socket.gethostname(),
        report.status,
    )
    return str(report.status)


def enqueue(app: Celery, path: str) -> Any:
    """Put a run of the dataflow file on the queue (the scheduler's side)."""
    return app.send_task(TASK, args=[path], queue=QUEUE)


def serve_worker(concurrency: int, verbose: bool = False) -> int:
    """``dataflow worker``: run queued dataflows until SIGTERM (the running runs checkpoint,
    stop and go back to the queue)."""
    from dataflow.shutdown import STOP

    def stop_runs(**_: Any) -> None:
        STOP.set()  # the runs in progress checkpoint and stop between requests

    worker_shutting_down.connect(stop_runs, weak=False)
    app = make_app()
    argv = [
        "worker",
        "--pool=threads",
        f"--concurrency={concurrency}",
        f"--loglevel={'DEBUG' if verbose else 'INFO'}",
        f"--hostname=dataflow-{socket.gethostname()}-{os.getpid()}@%h",
        f"--queues={QUEUE}",
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)
    return 0
