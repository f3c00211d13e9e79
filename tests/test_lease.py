"""File leases with fencing, on SQLite and on a real PostgreSQL (tests/pgkit.py): a worker
that lost its lease writes nothing, the one that took over goes on from the checkpoint."""

from __future__ import annotations

import threading
import time

import pytest

from dataflow.lease import LeaseLost
from dataflow.ledger import Ledger
from dataflow.report import FileReport, RunReport
from dataflow.rows import RecordResult

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
