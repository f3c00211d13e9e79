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

A second task, ``dataflow.shard``, sends one shard of a big file (`dataflow.shards`): the run
that split the file enqueues one per shard and returns at once. A shard task that stops on an
error is acknowledged: the next run of the dataflow enqueues again its pending shards, or the
set's finish when every shard is done and nobody finishes it.

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
SHARD_TASK = "dataflow.shard"  # one shard of a big file (dataflow.shards)
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
    app.task(name=SHARD_TASK, bind=False)(shard_task)
    _APPS.append(app)
    return app


_APPS: list[Celery] = []  # the apps made in this process: a worker's tasks enqueue with its own


def run_task(path: str) -> str:
    """Run one dataflow file now (on a worker): its run's status."""
    from dataflow.config import load_dataflow
    from dataflow.errors import FatalError
    from dataflow.runner import run
    from dataflow.shards import Sharder, shard_rows

    try:
        dataflow = load_dataflow(path)  # read again on the worker: rotated secrets are used
    except ConfigError as exc:
        log.error("%s: not run, the file is invalid:\n%s", path, exc)
        return "invalid"
    try:
        threshold = shard_rows()
    except FatalError as exc:
        log.error("%s: not run: %s", path, exc)
        return "invalid"
    app = _APPS[0] if _APPS else make_app()
    sharder = Sharder(lambda *args: enqueue_shard(app, *args), path, threshold)
    report = run(dataflow, shards=sharder)
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


def shard_task(path: str, dataflow: str, key: str, number: int) -> str:
    """Send one shard of a big file (on a worker); the last one finishes the file."""
    from dataflow.config import load_dataflow
    from dataflow.errors import FatalError, Stopped
    from dataflow.shards import run_shard

    try:
        load_dataflow(path)
    except ConfigError as exc:
        log.error("%s: shard %d not sent, the file is invalid:\n%s", path, number, exc)
        return "invalid"
    try:
        outcome = run_shard(path, dataflow, key, number)
    except Stopped as exc:  # SIGTERM: checkpointed; another worker resumes it
        log.info("%s: shard %d stopped by SIGTERM, handed back to the queue", dataflow, number)
        raise Reject("stopped by SIGTERM: handed back to the queue", requeue=True) from exc
    except FatalError as exc:  # kept: the shard resumes when it is delivered again
        log.error("%s: shard %d stopped: %s", dataflow, number, exc)
        return "stopped"
    except Exception as exc:  # unforeseen: one line; the next run enqueues the shard again
        log.debug("shard %d of %s", number, dataflow, exc_info=True)
        log.error("%s: shard %d stopped: %s: %s", dataflow, number, type(exc).__name__, exc)
        return "failed"
    log.info("%s: shard %d on %s: %s", dataflow, number, socket.gethostname(), outcome)
    return outcome


def enqueue_shard(app: Celery, path: str, dataflow: str, key: str, number: int) -> None:
    """Put one shard of a big file on the queue (the run that split it, on a worker)."""
    app.send_task(SHARD_TASK, args=[path, dataflow, key, number], queue=QUEUE)


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
