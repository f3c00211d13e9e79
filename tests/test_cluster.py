"""Several processes as on several machines: the state in a real PostgreSQL (tests/pgkit.py),
a real redis-server as the Celery broker, `dataflow schedule --executor celery` (one active,
one standby) and a `dataflow worker` that runs what the scheduler enqueues."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from dataflow import celery_app
from dataflow.sandbox import free_port

from .conftest import Bed, wait_until
from .pgkit import pg_url, postgres

__all__ = ["pg_url", "postgres"]  # fixtures


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    directory = Path(tempfile.mkdtemp(prefix="dataflow-redis-"))
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: _pong(port), timeout=20)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def _pong(port: int) -> bool:
    result = subprocess.run(
        ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() == "PONG"


class Proc:
    """A `dataflow` command in the background, its log in a file."""

    def __init__(self, bed: Bed, args: list[str], env: dict[str, str]) -> None:
        self.log = bed.dir / f"{args[0]}-{time.monotonic_ns()}.log"
        self.fh = self.log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dataflow", *args],
            env={**os.environ, **bed.env, **env},
            stdout=self.fh,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.text():
                return
            assert self.proc.poll() is None, self.text()
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not logged:\n{self.text()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(60)
        self.fh.close()
        return code


def make_due(url: str, job_id: str) -> None:
    """Move a job's next run time in the PostgreSQL job store an hour into the past."""
    parsed = sa.make_url(url)
    with psycopg.connect(
        host=parsed.host, port=parsed.port, user=parsed.username, password=parsed.password,
        dbname=parsed.database,
    ) as db:  # fmt: skip
        (state,) = db.execute(
            "SELECT job_state FROM apscheduler_jobs WHERE id = %s", (job_id,)
        ).fetchone() or (None,)
        assert state is not None, f"job {job_id} is not in the PostgreSQL job store"
        job = pickle.loads(state)
        past = datetime.now(UTC) - timedelta(hours=1)
        job["next_run_time"] = past
        db.execute(
            "UPDATE apscheduler_jobs SET job_state = %s, next_run_time = %s WHERE id = %s",
            (pickle.dumps(job), past.timestamp(), job_id),
        )


def test_a_standby_scheduler_takes_over_and_a_worker_runs_what_it_enqueues(
    bed: Bed, pg_url: str, redis_url: str
) -> None:
    env = {"DATAFLOW_STATE_URL": pg_url, "DATAFLOW_BROKER_URL": redis_url}
    flows = bed.dir / "flows"
    flows.mkdir()
    bed.config(name="flow-one", file="flows/one.yaml")
    schedule = ["schedule", str(flows), "--executor", "celery"]

    active = Proc(bed, schedule, env)
    active.wait_for("flow-one: next run at")
    standby = Proc(bed, schedule, env)
    standby.wait_for("standby: another dataflow scheduler is active")
    assert "next run at" not in standby.text()
    active.stop(signal.SIGKILL)  # its host is gone: its advisory lock goes with its connection
    standby.wait_for("this one takes over", timeout=15)
    standby.wait_for("flow-one: next run at")
    assert standby.stop() == 0

    make_due(pg_url, "flow-one")  # as if the schedulers were down over its fire time
    bed.sftp.put(
        "inbox/badges_cluster.csv.gpg",
        bed.keys.encrypt(
            b"badge_id,customer_id,event_date,expires_at\n"
            b"BADGE-GOLD,7001,16/11/2026 09:30,1798761600\n"
            b"BADGE-GOLD,7002,16/11/2026 09:30,1798761600\n"
        ),
    )
    worker = Proc(bed, ["worker", "--concurrency", "1"], env)
    scheduler = Proc(bed, schedule, env)
    try:
        scheduler.wait_for("flow-one: enqueued for a worker")
        worker.wait_for("flow-one: run ", timeout=90)
        wait_until(lambda: bed.sftp.files("processed") == ["badges_cluster.csv.gpg"], 60)
        worker.wait_for("finished: success", timeout=30)
    finally:
        assert scheduler.stop() == 0
        assert worker.stop() == 0  # SIGTERM: Celery's warm shutdown
    assert "flow-one: run " not in scheduler.text()  # the scheduler only enqueued
    assert sorted(r["customerId"] for r in bed.api.received()) == [7001, 7002]
    runs = bed.run("runs", "flow-one", "--json", env=env)
    assert runs.returncode == 0, runs.stderr
    assert runs.stdout.count('"run_id"') == 1
    assert not (bed.dir / "state" / "ledger.db").exists()  # everything in PostgreSQL


def test_worker_and_celery_scheduler_need_a_broker(bed: Bed) -> None:
    env = {"DATAFLOW_BROKER_URL": ""}
    for args in (["worker"], ["schedule", str(bed.dir), "--executor", "celery"]):
        result = bed.run(*args, env=env, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "DATAFLOW_BROKER_URL is not set" in result.stderr
        assert "Traceback" not in result.stderr


def test_sigterm_on_a_worker_checkpoints_and_hands_the_file_to_another(
    bed: Bed, pg_url: str, redis_url: str
) -> None:
    env = {"DATAFLOW_STATE_URL": pg_url, "DATAFLOW_BROKER_URL": redis_url}
    config = bed.config(name="flow-long")
    rows = "".join(f"BADGE-GOLD,{8001 + i},16/11/2026 09:30,1798761600\n" for i in range(30))
    bed.sftp.put(
        "inbox/badges_long.csv.gpg",
        bed.keys.encrypt(("badge_id,customer_id,event_date,expires_at\n" + rows).encode()),
    )
    bed.api.configure(latency_ms=300)
    first = Proc(bed, ["worker"], env)
    try:
        app = celery_app.make_app(redis_url)
        celery_app.enqueue(app, str(config))
        wait_until(lambda: len(bed.api.requests()) >= 2, 90)
        assert first.stop() == 0  # in-flight requests finished, the rest checkpointed
        assert "handed back to the queue" in first.text()
        assert bed.sftp.files("inbox") == ["badges_long.csv.gpg"]
        sent = len(bed.api.received())
        assert 0 < sent < 30
        bed.api.configure(latency_ms=0)
        second = Proc(bed, ["worker"], env)  # another host: takes the requeued task
        try:
            second.wait_for("flow-long: run ", timeout=90)
            assert "finished: success" in second.text()
        finally:
            assert second.stop() == 0
    finally:
        first.stop()
    assert bed.sftp.files("processed") == ["badges_long.csv.gpg"]
    customers = [r["customerId"] for r in bed.api.received()]
    assert sorted(customers) == [8001 + i for i in range(30)]  # each row once
