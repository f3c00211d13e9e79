"""File leases with fencing, on SQLite and on a real PostgreSQL (tests/pgkit.py): a worker
that lost its lease writes nothing, the one that took over goes on from the checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from dataflow.lease import LeaseLost
from dataflow.ledger import Ledger
from dataflow.report import FileReport, RunReport
from dataflow.rows import RecordResult

from .conftest import Bed, wait_until
from .pgkit import Open, open_ledger, pg_url, postgres

__all__ = ["open_ledger", "pg_url", "postgres"]  # fixtures

SHA = "c" * 64
TTL = 0.6  # seconds: the stale worker pauses past it


def acked(ledger: Ledger) -> list[int]:
    progress = ledger.checkpoints("flow").open(SHA, "a.csv")
    return [int(n) for n in progress.acked.nonzero()[0]]


def test_a_worker_paused_past_its_lease_is_fenced_off(open_ledger: Open) -> None:
    first, second = open_ledger(), open_ledger()
    try:
        lease = first.claim_file("flow", "a.csv", "worker-1", TTL)
        assert lease is not None and lease.fence == 1
        assert second.claim_file("flow", "a.csv", "worker-2", TTL) is None  # held
        first.heartbeat(lease, TTL)
        checkpoints = first.checkpoints("flow")
        progress = checkpoints.open(SHA, "a.csv")
        checkpoints.ack(progress.key, [RecordResult(2, True), RecordResult(3, True)])

        time.sleep(TTL + 0.3)  # worker 1 pauses (GC, a stopped VM, a partition)
        taken = second.claim_file("flow", "a.csv", "worker-2", TTL)
        assert taken is not None and taken.fence == 2

        with pytest.raises(LeaseLost, match=r"a\.csv .*worker-1, fence 1"):
            checkpoints.ack(progress.key, [RecordResult(4, True)])  # the stale write
        with pytest.raises(LeaseLost):
            first.heartbeat(lease, TTL)
        with pytest.raises(LeaseLost):
            checkpoints.error_file(progress.key, name="stale.errors.csv")
        run = RunReport("flow", "run-1", "2026-11-16T06:00:00+00:00")
        first.start_run(run)
        done = FileReport("a.csv", progress.lineage_id, "success", sha256=SHA, rows_total=9)
        with pytest.raises(LeaseLost):
            first.finish_file(run, done)  # nor may it finish the file
        first.release(lease)  # a stale release frees nothing

        # the new holder resumes from what was acknowledged under the old fence, and only that
        resumed = second.checkpoints("flow").open(SHA, "a.csv")
        assert resumed.resumed and resumed.lineage_id == progress.lineage_id
        assert resumed.error_name is None
        assert acked(second) == [2, 3]
        second.checkpoints("flow").ack(resumed.key, [RecordResult(4, True)])
        assert acked(second) == [2, 3, 4]
        assert first.claim_file("flow", "a.csv", "worker-1", TTL) is None  # still held
        run2 = RunReport("flow", "run-2", "2026-11-16T06:00:05+00:00")
        second.start_run(run2)
        second.finish_file(run2, done)
        second.release(taken)
        assert [f["lineage_id"] for r in second.history("flow") for f in r["files"]] == [
            progress.lineage_id
        ]
        again = first.claim_file("flow", "a.csv", "worker-1", TTL)  # released: free at once
        assert again is not None and again.fence == 3
    finally:
        first.close()
        second.close()


def test_writes_without_a_lease_are_not_fenced(open_ledger: Open) -> None:
    """One machine, no lease: checkpoints are written as before."""
    ledger = open_ledger()
    try:
        checkpoints = ledger.checkpoints("flow")
        progress = checkpoints.open(SHA, "a.csv")
        checkpoints.ack(progress.key, [RecordResult(2, True)])
        assert acked(ledger) == [2]
    finally:
        ledger.close()


def test_one_of_many_concurrent_claimants_wins(open_ledger: Open) -> None:
    open_ledger().close()  # the schema exists before they race
    won: list[int] = []
    failed: list[BaseException] = []
    barrier = threading.Barrier(5)

    def claim(i: int) -> None:
        ledger = open_ledger()  # one connection per worker, in its own thread
        try:
            barrier.wait()
            if ledger.claim_file("flow", "a.csv", f"worker-{i}", 30) is not None:
                won.append(i)
        except BaseException as exc:
            failed.append(exc)
        finally:
            ledger.close()

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failed == [] and len(won) == 1


def test_a_run_paused_past_its_lease_loses_the_file_and_writes_nothing(
    bed: Bed, pg_url: str
) -> None:
    """A real `dataflow run` on PostgreSQL, stopped (SIGSTOP) past its lease while requests
    are in flight: another ledger takes the file over; the resumed run's late answers and
    heartbeat are refused, it records and moves nothing and says why."""
    config = bed.config(name="flow-paused", decrypt={"enabled": False}, sink={"concurrency": 1})
    rows = "".join(f"BADGE-GOLD,{9001 + i},16/11/2026 09:30,1798761600\n" for i in range(30))
    bed.sftp.put("inbox/badges_paused.csv", f"{HEADER}{rows}".encode())
    bed.api.configure(latency_ms=400)
    env = {"DATAFLOW_STATE_URL": pg_url, "DATAFLOW_LEASE_SECONDS": "1.5"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dataflow", "run", str(config), "--json"],
        env={**os.environ, **bed.env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    other = Ledger(url=pg_url)
    try:
        wait_until(lambda: len(bed.api.requests()) >= 2, 60)
        proc.send_signal(signal.SIGSTOP)  # paused with a request in flight
        time.sleep(2.5)  # past its lease
        taken = other.claim_file("flow-paused", "badges_paused.csv", "worker-2", 30)
        assert taken is not None and taken.fence == 2
        before = ack_rows(other)
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        bed.api.configure(latency_ms=0)
    report = json.loads(out)
    (file,) = report["files"]
    assert file["status"] == "failure", err
    assert "taken over by another worker" in file["reason"]
    assert "Traceback" not in err
    assert ack_rows(other) == before  # its late answers changed nothing
    assert other.select("SELECT * FROM files") == []  # nor recorded the file
    assert bed.sftp.files("inbox") == ["badges_paused.csv"]  # nor moved it
    other.heartbeat(taken, 30)  # the new holder's lease is intact
    other.close()


def ack_rows(ledger: Ledger) -> int:
    return int(ledger.select("SELECT COUNT(*) AS n FROM acks")[0]["n"])


HEADER = "badge_id,customer_id,event_date,expires_at\n"
