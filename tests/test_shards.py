"""Big files sent in shards by several `dataflow worker` processes (dataflow.shards), on a real
PostgreSQL (tests/pgkit.py), redis-server and the sftp/api fixtures: every row once, one error
file with exactly the invalid lines, the original moved once, the file once in the history
with its true counts; a worker killed mid-shard and its shard resumed by another."""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import sys
from pathlib import Path

import sqlalchemy as sa

from dataflow import celery_app, db
from dataflow.ledger import Ledger
from dataflow.shards import (
    STALLED_AFTER,
    _without_header,
    active,
    plan,
    record_stop,
    stalled_reason,
)

from .conftest import Bed, bulk_mapping, wait_until
from .pgkit import pg_url, postgres
from .test_cluster import Proc, redis_url

__all__ = ["pg_url", "postgres", "redis_url"]  # fixtures

ROWS = 3000
BAD = {250 * k + 7 for k in range(12)}  # data rows (0-based) whose date cannot be read


def test_plan_splits_chunk_ranges_and_keeps_small_files_whole() -> None:
    assert plan(rows=999, size=10 << 20, chunk_bytes=1 << 20, threshold=1000, limit=1000) == []
    size = (10 << 20) + (1 << 16)  # the parser's first chunk holds the header's read-ahead
    ranges = plan(rows=2500, size=size, chunk_bytes=1 << 20, threshold=1000, limit=1000)
    assert [(r.start, r.stop) for r in ranges] == [(0, 3), (3, 7), (7, sys.maxsize)]
    # balanced: 7 chunks in 3 shards are 2, 2 and 3 (not 3, 3 and 1)
    seven = plan(
        rows=3000, size=(6 << 20) + (1 << 16), chunk_bytes=1 << 20, threshold=1000, limit=1000
    )
    assert [(r.start, r.stop) for r in seven] == [(0, 2), (2, 4), (4, sys.maxsize)]
    # never more shards than the rate limit can share (each sends at limit / shards)
    assert len(plan(rows=10**6, size=10**8, chunk_bytes=1 << 20, threshold=1000, limit=2)) == 2
    assert plan(rows=10**6, size=100, chunk_bytes=1 << 20, threshold=10, limit=100) == []


def test_error_file_header_is_dropped_even_over_several_lines() -> None:
    text = 'a,"b\nc",LINE_NO\n1,2,3\n4,5,6\n'
    assert _without_header(text, ",") == "1,2,3\n4,5,6\n"


def csv_rows(bulk: bool) -> bytes:
    lines = []
    for i in range(ROWS):
        date = "not a date" if i in BAD else "16/11/2026 09:30"
        if bulk:
            lines.append(f"BADGE-GOLD,{20000 + i},{date},Loyalty,ref-0\n")
        else:
            lines.append(f"BADGE-GOLD,{20000 + i},{date},1798761600\n")
    header = (
        "badge_id,customer_id,event_date,owner_type,reference_id\n"
        if bulk
        else ("badge_id,customer_id,event_date,expires_at\n")
    )
    return (header + "".join(lines)).encode()


def shard_env(pg_url: str, redis_url: str) -> dict[str, str]:
    return {
        "DATAFLOW_STATE_URL": pg_url,
        "DATAFLOW_BROKER_URL": redis_url,
        "DATAFLOW_SHARD_ROWS": "1500",  # 3000 rows: two shards
        "DATAFLOW_LEASE_SECONDS": "2",
    }


def shard_lines(proc: Proc) -> list[str]:
    return [line for line in proc.text().splitlines() if "of 2 (chunks" in line]


def rows_sent(procs: list[Proc]) -> dict[int, int]:
    """Rows each shard sent, as its worker logged them (a resumed shard: both runs)."""
    sent: dict[int, int] = {}
    for proc in procs:
        for found in re.finditer(r"shard (\d+) sent (\d+) rows", proc.text()):
            sent[int(found[1])] = sent.get(int(found[1]), 0) + int(found[2])
    return sent


def check_outcome(bed: Bed, env: dict[str, str], applied: list[int]) -> None:
    valid = [20000 + i for i in range(ROWS) if i not in BAD]
    assert sorted(applied) == valid  # every valid row applied once
    assert bed.sftp.files("processed") == ["badges_big.csv.gpg"]  # moved once
    assert bed.sftp.files("inbox") == []
    (error_name,) = bed.sftp.files("errors")  # one error file
    text = (bed.sftp.root / "errors" / error_name).read_text()
    header, *rows = csv.reader(io.StringIO(text, newline=""))
    lines = [int(row[header.index("LINE_NO")]) for row in rows]
    assert lines == sorted(i + 2 for i in BAD)  # exactly the invalid lines, in line order
    runs = bed.run("runs", "flow-big", "--json", env=env)
    assert runs.returncode == 0, runs.stderr
    history = json.loads(runs.stdout)
    history = history if isinstance(history, list) else history["runs"]
    files = [f for r in history for f in r["files"]]
    assert len(files) == 1, files  # the file once, with its true counts
    (f,) = files
    assert f["status"] == "partial"
    assert (f["rows_total"], f["rows_rejected"], f["rows_succeeded"], f["rows_failed"]) == (
        ROWS,
        len(BAD),
        ROWS - len(BAD),
        0,
    )
    assert [r["status"] for r in history if r["files"]] == ["partial"]


def test_a_big_file_is_sent_in_shards_by_two_workers(bed: Bed, pg_url: str, redis_url: str) -> None:
    env = shard_env(pg_url, redis_url)
    config = bed.config(name="flow-big", transform={"chunk_bytes": 1024}, sink={"batch_size": 20})
    bed.sftp.put("inbox/badges_big.csv.gpg", bed.keys.encrypt(csv_rows(bulk=False)))
    bed.api.configure(latency_ms=150)
    workers = [Proc(bed, ["worker", "--concurrency", "1"], env) for _ in range(2)]
    try:
        celery_app.enqueue(celery_app.make_app(redis_url), str(config))
        wait_until(lambda: bed.sftp.files("processed") == ["badges_big.csv.gpg"], 60)
        wait_until(lambda: any("finished from 2 shards" in w.text() for w in workers), 30)
    finally:
        for worker in workers:
            assert worker.stop() == 0
    assert all(shard_lines(w) for w in workers), [w.text() for w in workers]  # both sent
    sent = rows_sent(workers)
    assert sorted(sent) == [0, 1] and min(sent.values()) > 0, sent
    check_outcome(bed, env, [r["customerId"] for r in bed.api.received()])


def test_a_worker_killed_mid_shard_is_resumed_by_another_without_bulk_duplicates(
    bed: Bed, pg_url: str, redis_url: str
) -> None:
    env = shard_env(pg_url, redis_url)
    bed.api.configure(badge_metas=["BADGE-GOLD"], latency_ms=300)
    config = bed.config(
        name="flow-big",
        template="earn_badges_bulk",
        transform={**bulk_mapping(), "chunk_bytes": 1024},
        sink={"batch_size": 20, "concurrency": 2},
    )
    content = bed.keys.encrypt(csv_rows(bulk=True))
    bed.sftp.put("inbox/badges_big.csv.gpg", content)
    app = celery_app.make_app(redis_url)
    first = Proc(bed, ["worker", "--concurrency", "1"], env)
    second: Proc | None = None
    try:
        celery_app.enqueue(app, str(config))
        first.wait_for("of 2 (chunks", timeout=60)  # the coordinator, then a shard
        wait_until(lambda: len(bed.api.earned()) >= 200, 60)
        first.stop(signal.SIGKILL)  # mid-shard, requests in flight
        sent_by_first = len(bed.api.earned())
        assert sent_by_first < ROWS - len(BAD)
        second = Proc(bed, ["worker", "--concurrency", "1"], env)
        bed.api.configure(latency_ms=20)
        celery_app.enqueue(app, str(config))  # the next fire: the orphan shard is enqueued
        second.wait_for("enqueued again", timeout=30)
        wait_until(lambda: bed.sftp.files("processed") == ["badges_big.csv.gpg"], 60)
        second.wait_for("finished from 2 shards", timeout=30)
    finally:
        first.stop(signal.SIGKILL)
        if second is not None:
            assert second.stop() == 0
    assert shard_lines(second)  # the other worker resumed
    check_outcome(bed, env, [r["customerId"] for r in bed.api.earned()])

    # the shards' requestIds are those one machine sends for this content: `dataflow run` of
    # the same file (state in SQLite, no sharding) is answered 809 for every request
    applied = len(bed.api.earned())
    bed.sftp.put("inbox/badges_big.csv.gpg", content)  # the same bytes: the same send key
    alone = bed.run("run", str(config), "--json", env={"DATAFLOW_STATE_URL": ""})
    (f,) = json.loads(alone.stdout)["files"]
    assert f["rows_succeeded"] == ROWS - len(BAD), alone.stderr
    assert len(bed.api.earned()) == applied  # nothing applied a second time


def test_db_upgrade_adds_the_shard_tables_to_a_schema_1_database(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:  # as `db upgrade` of the previous version left it
        conn.execute(sa.text("DROP TABLE shards, shard_sets"))
        conn.execute(sa.text("UPDATE schema_version SET version = 1"))
    assert db.upgrade(pg_url) == (1, db.SCHEMA_VERSION)
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT COUNT(*) FROM shards")).scalar()
    engine.dispose()
    assert count == 0


def test_db_upgrade_adds_the_stop_columns_to_a_schema_3_database(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:  # as `db upgrade` of schema 3 left it
        conn.execute(sa.text("ALTER TABLE shards DROP COLUMN stops, DROP COLUMN stopped"))
        conn.execute(sa.text("UPDATE schema_version SET version = 3"))
    assert db.upgrade(pg_url) == (3, db.SCHEMA_VERSION)
    with engine.connect() as conn:
        columns = conn.execute(
            sa.text(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'shards'"
            )
        ).scalars()
        assert {"stops", "stopped"} <= set(columns)
    engine.dispose()


def test_stops_count_against_the_shard_sending_or_the_finish_and_nothing_else(
    tmp_path: Path,
) -> None:
    ledger = Ledger(tmp_path)
    try:
        ledger.store.execute(
            "INSERT INTO shard_sets (dataflow, send_key, name, path, sha256, send_no, run_id, "
            "lineage_id, config_path, shards, state) VALUES ('f', 'k', 'big.csv', '/inbox/big.csv',"
            " 'ab', 0, 'r1', 'l1', 'f.yaml', 3, 'running')"
        )
        for number, state in ((0, "pending"), (1, "done"), (2, "pending")):
            ledger.store.execute(
                "INSERT INTO shards (dataflow, send_key, shard_no, chunk_from, state) "
                "VALUES ('f', 'k', ?, ?, ?)",
                (number, number, state),
            )
        for _ in range(STALLED_AFTER):  # a sent shard delivered again: not the set's problem
            record_stop(ledger, "f", "k", 1, "the SFTP server is down")
        (one,) = active(ledger, "f")
        assert one["pending"] == [0, 2] and one["stalled"] == []
        for _ in range(STALLED_AFTER):
            record_stop(ledger, "f", "k", 2, "/inbox/big.csv changed while it was sent")
        (one,) = active(ledger, "f")
        assert [r["shard_no"] for r in one["stalled"]] == [2]
        assert "shard 2 of 3 stopped 3 times, last: /inbox/big.csv changed" in stalled_reason(one)
        ledger.store.execute("UPDATE shards SET state = 'done', stops = NULL")  # all sent
        for _ in range(STALLED_AFTER):  # now a delivery that stops is finishing the file
            record_stop(ledger, "f", "k", 1, "the processed directory cannot be written")
        (one,) = active(ledger, "f")
        assert [(r["shard_no"], r["stops"]) for r in one["stalled"]] == [(0, STALLED_AFTER)]
        assert "finishing the file stopped 3 times" in stalled_reason(one)
    finally:
        ledger.close()
