"""Big files in shards (dataflow.shards), what the previous tests did not cover: every shard
parses with the chunk size the set was planned with (the configuration changed in between);
the run that split a file is `in_progress` in the history until its last shard finishes, and
its alerts come then, once, with the file's true outcome; the error file is assembled from
the shards' stored rows one part at a time (a shard of 1,000,000 failed rows).

Real parts: PostgreSQL (tests/pgkit.py), redis-server, `dataflow worker` processes, the
sftp/api fixtures and the alert receiver of tests/alertkit.py."""

from __future__ import annotations

import csv
import io
import json
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from dataflow import celery_app, runner
from dataflow.block import RemoteFile
from dataflow.config import load_dataflow
from dataflow.errors import FatalError
from dataflow.ledger import Ledger
from dataflow.report import FileReport, RunReport
from dataflow.shards import (
    PART_BYTES,
    STALLED_AFTER,
    Sharder,
    assemble_errors,
    lease_name,
    pack_failed,
    run_shard,
    store_errors,
    unpack_failed,
)
from dataflow_blocks.sftp_read import SftpRead

from . import alertkit
from .alertkit import Receiver, add_alerts
from .conftest import Bed, wait_until
from .pgkit import pg_url, postgres
from .test_cluster import Proc, redis_url
from .test_shards import BAD, ROWS, check_outcome, csv_rows, shard_env

__all__ = ["pg_url", "postgres", "redis_url"]  # fixtures
receiver = alertkit.receiver  # fixture


def set_chunk_bytes(config: Path, value: int | None) -> None:
    """Edit the dataflow file's field_mapping `chunk_bytes` (None: the template's default)."""
    doc = yaml.safe_load(config.read_text())
    (transform,) = [b for b in doc["blocks"] if b["type"] == "field_mapping"]
    transform.pop("chunk_bytes", None)
    if value is not None:
        transform["chunk_bytes"] = value
    config.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_every_shard_parses_with_the_chunk_size_the_set_was_planned_with(
    bed: Bed, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**bed.env, "DATAFLOW_STATE_URL": pg_url, "DATAFLOW_SHARD_ROWS": "1500"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = bed.config(name="flow-big", transform={"chunk_bytes": 1024}, sink={"batch_size": 20})
    bed.sftp.put("inbox/badges_big.csv.gpg", bed.keys.encrypt(csv_rows(bulk=False)))
    queued: list[tuple[str, str, str, int]] = []
    sharder = Sharder(lambda *task: queued.append(task), str(config), threshold=1500)
    report = runner.run(load_dataflow(config), shards=sharder)  # splits, planned at 1 KiB
    assert [(f.status, report.status) for f in report.files] == [("in_progress", "in_progress")]
    assert [task[3] for task in queued] == [0, 1]
    assert run_shard(*queued[0]) == "sent"
    # then the configuration changes: the default chunk (2 MiB) would put the whole file in
    # chunk 0 and leave shard 1 nothing; at 1 KiB the ranges cover every line once
    set_chunk_bytes(config, None)
    assert run_shard(*queued[1]) == "finished the file"
    check_outcome(bed, env, [r["customerId"] for r in bed.api.received()])


def history(bed: Bed, env: dict[str, str]) -> list[dict[str, Any]]:
    runs = bed.run("runs", "flow-big", "--json", env=env)
    assert runs.returncode == 0, runs.stderr
    found = json.loads(runs.stdout)
    return list(found if isinstance(found, list) else found["runs"])


def test_the_run_that_split_a_file_is_in_progress_until_its_last_shard_then_alerts_once(
    bed: Bed, pg_url: str, redis_url: str, receiver: Receiver
) -> None:
    env = shard_env(pg_url, redis_url)
    channel = {"type": "webhook", "url": receiver.url}
    events = ["failure", "partial", "recovered"]
    alerts = {"events": events, "partial_threshold_percent": 0, "channels": [channel]}
    config = add_alerts(
        bed.config(name="flow-big", transform={"chunk_bytes": 1024}, sink={"batch_size": 20}),
        alerts,
    )
    # a failed run first (a file without the mapped columns), on the same state
    bed.sftp.put("inbox/badges_bad.csv.gpg", bed.keys.encrypt(b"x,y\n1,2\n"))
    failed = bed.run("run", str(config), "--json", env=env)
    assert failed.returncode == 1, failed.stderr
    assert [p["event"] for p in receiver.accepted()] == ["failure"]

    bed.sftp.put("inbox/badges_big.csv.gpg", bed.keys.encrypt(csv_rows(bulk=False)))
    bed.api.configure(latency_ms=300)  # the shards take seconds: the split run is seen first
    workers = [Proc(bed, ["worker", "--concurrency", "1"], env) for _ in range(2)]
    try:
        celery_app.enqueue(celery_app.make_app(redis_url), str(config))
        wait_until(lambda: any("finished: in_progress" in w.text() for w in workers), 60)
        runs = history(bed, env)
        assert bed.sftp.files("processed") == []  # the history was read while in progress
        split = runs[0]
        assert split["status"] == "in_progress"
        assert [(f["name"], f["status"]) for f in split["files"]] == [
            ("badges_big.csv.gpg", "in_progress")
        ]
        assert [p["event"] for p in receiver.accepted()] == ["failure"]  # nothing early
        bed.api.configure(latency_ms=20)
        wait_until(lambda: bed.sftp.files("processed") == ["badges_big.csv.gpg"], 60)
        wait_until(lambda: len(receiver.accepted()) >= 3, 30)
    finally:
        for worker in workers:
            assert worker.stop() == 0
    posts = receiver.accepted()
    assert [p["event"] for p in posts] == ["failure", "partial", "recovered"], posts
    for post in posts[1:]:  # the split run's, once, with the file's true counts
        assert post["run_id"] == split["run_id"]
        (f,) = post["files"]
        assert (f["status"], f["rows_total"], f["rows_rejected"]) == ("partial", ROWS, len(BAD))
    (done,) = [r for r in history(bed, env) if r["run_id"] == split["run_id"]]
    assert done["status"] == "partial"
    assert done["finished_at"] >= split["finished_at"]
    (f,) = done["files"]
    assert (f["status"], f["rows_succeeded"], f["processed_path"]) == (
        "partial",
        ROWS - len(BAD),
        "/processed/badges_big.csv.gpg",
    )


HEADER = 'badge_id,customer_id,"event\ndate",LINE_NO,error_stage,status_code,error_message\n'


def error_file(path: Path, first: int, rows: int) -> bytes:
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write(HEADER)
        for i in range(first, first + rows):
            fh.write(f"BADGE-GOLD,{i},16/11/2026,{i + 2},api,500,the API failed this row\n")
    return path.read_bytes()[len(HEADER.encode()) :]


def test_the_error_file_is_assembled_one_stored_part_at_a_time(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    rows = 1_000_000  # one shard whose every row failed: about 60 MB of error rows
    big = error_file(tmp_path / "shard0.csv", 0, rows)
    small = error_file(tmp_path / "shard1.csv", rows, 2)
    assert len(big) > 50 * PART_BYTES
    try:
        tracemalloc.start()
        store_errors(ledger, "flow", "key", 0, tmp_path / "shard0.csv", rows)
        store_errors(ledger, "flow", "key", 1, tmp_path / "shard1.csv", 2)
        stored_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        with (tmp_path / "errors.csv").open("wb") as out:
            assemble_errors(ledger, "flow", "key", [0, 1], out)
        assembled_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        ledger.close()
    assert stored_peak < 8 * PART_BYTES and assembled_peak < 8 * PART_BYTES
    text = (tmp_path / "errors.csv").read_bytes()
    assert text == HEADER.encode() + big + small  # the header once, the rows in shard order
    header, *records = csv.reader(io.StringIO(text.decode(), newline=""))
    assert header[2] == "event\ndate" and len(records) == rows + 2


def test_failed_lines_are_stored_in_eight_bytes_a_line() -> None:
    failed = {line: ("500", "the API failed this row") for line in range(2, 1_000_002)}
    failed[7] = ("400", "another error")
    text = json.dumps(pack_failed(failed))
    assert len(text) < 11 * len(failed)  # base64 of int64 (one JSON list a line was ~40)
    merged: dict[tuple[str, str], Any] = {}
    unpack_failed(text, merged)
    unpack_failed(json.dumps([[3_000_000, "500", "the API failed this row"]]), merged)  # old
    assert sorted(merged) == [("400", "another error"), ("500", "the API failed this row")]
    assert list(merged[("400", "another error")]) == [7]
    assert len(merged[("500", "the API failed this row")]) == 1_000_000


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_last_shard_finishing_before_the_split_run_records_its_end_leaves_no_in_progress(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else ""
    ledger = Ledger(tmp_path, url=url)
    try:
        run = RunReport("flow-race", str(uuid.uuid4()), runner.now_iso())
        ledger.start_run(run)
        big = FileReport("big.csv", str(uuid.uuid4()), status="in_progress", sha256="ab" * 32)
        ledger.record_file(run, big)
        run.files = [big]
        # the last shard finishes the file first (a fast worker) ...
        done = FileReport(big.name, big.lineage_id, status="partial", rows_total=5)
        done.rows_rejected, done.sha256 = 1, big.sha256
        ledger.finish_file(RunReport(run.dataflow, run.run_id, ""), done)
        assert ledger.refresh_run(run.run_id, finished_at=runner.now_iso()) == "partial"
        # ... then the run that split it records its end, from what it knew
        run.finished_at = runner.now_iso()
        run.settle()
        assert run.status == "in_progress"
        ledger.finish_run(run)
        (recorded,) = ledger.history("flow-race")
        assert recorded["status"] == "partial"
        assert [f["status"] for f in recorded["files"]] == ["partial"]
        assert ledger.previous_outcome("flow-race", "later") == ("partial", None)
    finally:
        ledger.close()


def test_an_in_progress_run_is_not_the_run_before_for_recovered(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    try:
        for status in ("failure", "in_progress"):
            run = RunReport("flow-prev", str(uuid.uuid4()), runner.now_iso())
            ledger.start_run(run)
            run.files = [FileReport("f.csv", str(uuid.uuid4()), status=status)]
            ledger.record_file(run, run.files[0])
            run.finished_at = runner.now_iso()
            run.settle()
            ledger.finish_run(run)
        assert [r["status"] for r in ledger.history("flow-prev")] == ["in_progress", "failure"]
        assert ledger.previous_outcome("flow-prev", "later") == ("failure", None)
    finally:
        ledger.close()


def split_in_process(
    bed: Bed, pg_url: str, monkeypatch: pytest.MonkeyPatch, alerts: dict[str, Any] | None = None
) -> tuple[Path, Sharder, list[tuple[str, str, str, int]]]:
    """A big file split by a run in this process (the queue: a list), shard 0 sent."""
    env = {**bed.env, "DATAFLOW_STATE_URL": pg_url, "DATAFLOW_SHARD_ROWS": "1500"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = bed.config(name="flow-big", transform={"chunk_bytes": 1024}, sink={"batch_size": 20})
    if alerts is not None:
        config = add_alerts(config, alerts)
    bed.sftp.put("inbox/badges_big.csv.gpg", bed.keys.encrypt(csv_rows(bulk=False)))
    queued: list[tuple[str, str, str, int]] = []
    sharder = Sharder(lambda *task: queued.append(task), str(config), threshold=1500)
    report = runner.run(load_dataflow(config), shards=sharder)
    assert report.status == "in_progress" and [t[3] for t in queued] == [0, 1]
    assert run_shard(*queued[0]) == "sent"
    return config, sharder, queued


def test_a_failed_finish_is_enqueued_again_by_the_next_run_and_finishes_once(
    bed: Bed, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, sharder, queued = split_in_process(bed, pg_url, monkeypatch)
    moves: list[str] = []
    real_move = SftpRead.move_original

    def failing_move(self: SftpRead, file: RemoteFile, failed: bool) -> str:
        moves.append(file.name)
        if len(moves) == 1:
            raise FatalError("the processed directory cannot be written (injected)")
        return real_move(self, file, failed)

    monkeypatch.setattr(SftpRead, "move_original", failing_move)
    # the last shard's finish fails after the error file's upload: the task returns (acked)
    assert celery_app.shard_task(*queued[1]) == "stopped"
    assert bed.sftp.files("processed") == [] and len(bed.sftp.files("errors")) == 1
    env = {**bed.env, "DATAFLOW_STATE_URL": pg_url}
    assert [r["status"] for r in history(bed, env) if r["files"]] == ["in_progress"]
    # the next run is skipped (the set is running) and enqueues the finish nobody holds
    later = runner.run(load_dataflow(config), shards=sharder)
    assert later.skipped
    assert len(queued) == 3, queued
    assert run_shard(*queued[2]) == "finished the file"
    assert moves == ["badges_big.csv.gpg", "badges_big.csv.gpg"]
    check_outcome(bed, env, [r["customerId"] for r in bed.api.received()])  # one error file
    # finished: the next run enqueues nothing more and a late delivery does nothing
    runner.run(load_dataflow(config), shards=sharder)
    assert len(queued) == 3
    assert run_shard(*queued[2]) == "finished"


def test_two_finishers_of_one_set_finish_it_once(
    bed: Bed, pg_url: str, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    channel = {"type": "webhook", "url": receiver.url}
    alerts = {"events": ["partial"], "partial_threshold_percent": 0, "channels": [channel]}
    queued = split_in_process(bed, pg_url, monkeypatch, alerts)[2]
    finished: list[str] = []
    real_finish = Ledger.finish_file

    def counted_finish(self: Ledger, *args: Any, **kwargs: Any) -> None:
        finished.append(args[1].name)
        real_finish(self, *args, **kwargs)

    monkeypatch.setattr(Ledger, "finish_file", counted_finish)
    second: list[str] = []
    real_move = SftpRead.move_original

    def move_with_a_second_finisher(self: SftpRead, file: RemoteFile, failed: bool) -> str:
        if not second:  # the first finisher has uploaded the error file and not moved yet:
            # shard 0 delivered again finds every shard done and tries to finish too
            second.append(run_shard(*queued[0]))
        return real_move(self, file, failed)

    monkeypatch.setattr(SftpRead, "move_original", move_with_a_second_finisher)
    assert run_shard(*queued[1]) == "finished the file"
    assert second == ["finish held"]
    env = {**bed.env, "DATAFLOW_STATE_URL": pg_url}
    check_outcome(bed, env, [r["customerId"] for r in bed.api.received()])  # one error, one move
    assert finished == ["badges_big.csv.gpg"]
    wait_until(lambda: len(receiver.accepted()) >= 1, 30)
    time.sleep(0.5)
    assert [p["event"] for p in receiver.accepted()] == ["partial"]


def test_a_shard_that_keeps_stopping_fails_the_runs_until_its_file_is_put_back(
    bed: Bed, pg_url: str, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    channel = {"type": "webhook", "url": receiver.url}
    events = ["failure", "partial", "recovered"]
    alerts = {"events": events, "partial_threshold_percent": 0, "channels": [channel]}
    config, sharder, queued = split_in_process(bed, pg_url, monkeypatch, alerts)  # shard 0 sent
    original = (bed.sftp.root / "inbox" / "badges_big.csv.gpg").read_bytes()
    # the vendor replaces the file while shard 1 waits: the same rows, encrypted again
    bed.sftp.put("inbox/badges_big.csv.gpg", bed.keys.encrypt(csv_rows(bulk=False)))
    env = {**bed.env, "DATAFLOW_STATE_URL": pg_url}
    for stop in range(1, STALLED_AFTER + 1):
        assert celery_app.shard_task(*queued[-1]) == "stopped"  # its SHA-256 differs
        later = runner.run(load_dataflow(config), shards=sharder)
        assert queued[-1][3] == 1 and len(queued) == 2 + stop  # enqueued again each time
        if stop < STALLED_AFTER:  # waiting for the shards, as before: nothing recorded
            assert later.skipped and later.status == "no_files", later.reason
    assert not later.skipped and later.status == "failure"
    assert f"shard 1 of 2 stopped {STALLED_AFTER} times" in later.reason
    assert "changed while it was sent in shards" in later.reason
    assert "must be put back as it was" in later.reason
    wait_until(lambda: len(receiver.accepted()) >= 1, 30)
    (post,) = receiver.accepted()
    assert (post["event"], post["run_id"]) == ("failure", later.run_id)
    assert "cannot be finished" in post["reason"]
    (failed,) = [r for r in history(bed, env) if r["run_id"] == later.run_id]
    assert failed["status"] == "failure" and "cannot be finished" in failed["reason"]
    # while a worker holds the shard (sending it, say after the file came back): no failure
    ledger = Ledger()
    try:
        held = ledger.claim_file("flow-big", lease_name("badges_big.csv.gpg", 1), "w9", 60)
        assert held is not None
        waiting = runner.run(load_dataflow(config), shards=sharder)
        assert waiting.skipped and waiting.status == "no_files", waiting.reason
        ledger.release(held)
    finally:
        ledger.close()
    assert len(receiver.accepted()) == 1

    # the original put back: the shard is sent, the file finished once, the runs recover
    bed.sftp.put("inbox/badges_big.csv.gpg", original)
    assert run_shard(*queued[-1]) == "finished the file"
    check_outcome(bed, env, [r["customerId"] for r in bed.api.received()])
    after = runner.run(load_dataflow(config), shards=sharder)
    assert after.status == "no_files" and not after.skipped
    wait_until(lambda: len(receiver.accepted()) >= 3, 30)
    assert [p["event"] for p in receiver.accepted()] == ["failure", "partial", "recovered"]


def test_a_finish_that_keeps_stopping_fails_the_runs_with_its_reason(
    bed: Bed, pg_url: str, monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    channel = {"type": "webhook", "url": receiver.url}
    alerts = {"events": ["failure"], "channels": [channel]}
    config, sharder, queued = split_in_process(bed, pg_url, monkeypatch, alerts)

    def failing_move(self: SftpRead, file: RemoteFile, failed: bool) -> str:
        raise FatalError("the processed directory cannot be written (injected)")

    monkeypatch.setattr(SftpRead, "move_original", failing_move)
    assert celery_app.shard_task(*queued[1]) == "stopped"  # sent, then its finish stopped
    for _ in range(STALLED_AFTER - 1):
        later = runner.run(load_dataflow(config), shards=sharder)
        assert later.skipped, later.reason  # the finish enqueued again (shard 0's delivery)
        assert celery_app.shard_task(*queued[-1]) == "stopped"
    later = runner.run(load_dataflow(config), shards=sharder)
    assert later.status == "failure", later.reason
    assert f"finishing the file stopped {STALLED_AFTER} times" in later.reason
    assert "the processed directory cannot be written" in later.reason
    wait_until(lambda: len(receiver.accepted()) >= 1, 30)
    assert [p["event"] for p in receiver.accepted()] == ["failure"]
