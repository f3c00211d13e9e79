"""The ledger and the checkpoints behave the same on SQLite and on PostgreSQL (a real server,
tests/pgkit.py), and a run with DATAFLOW_STATE_URL reports as one with the SQLite state."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from dataflow import db
from dataflow.errors import StateError
from dataflow.ledger import Ledger, RetryRefused
from dataflow.report import FileReport, RunReport
from dataflow.rows import RecordResult
from dataflow.sandbox import sample_csv

from .conftest import Bed
from .pgkit import Open, Postgres, open_ledger, pg_url, postgres

__all__ = ["open_ledger", "pg_url", "postgres"]  # fixtures


def run_report(run_id: str, started: str, *, dry_run: bool = False) -> RunReport:
    return RunReport("flow", run_id, started, dry_run=dry_run)


def finish(ledger: Ledger, run: RunReport, status: str, reason: str | None = None) -> None:
    run.finished_at, run.status, run.reason = run.started_at, status, reason
    ledger.finish_run(run)


def test_runs_files_history_and_duplicates(open_ledger: Open) -> None:
    ledger = open_ledger()
    try:
        first = run_report("r1", "2026-11-16T06:00:00+00:00")
        ledger.start_run(first)
        kept = FileReport("a.csv", "l1", "failure", sha256="aa", rows_total=4, rows_sent=2)
        ledger.record_file(first, kept)
        ledger.record_file(first, FileReport("b.csv", "l2", "success", sha256="bb", size=9))
        done = FileReport("a.csv", "l1", "partial", sha256="aa", rows_total=4, rows_failed=1)
        ledger.finish_file(first, done, [("api", "1054", "bad", 1)], {3: ("1054", "bad")})
        finish(ledger, first, "partial")
        dry = run_report("r2", "2026-11-16T07:00:00+00:00", dry_run=True)
        ledger.start_run(dry)
        ledger.record_file(dry, FileReport("c.csv", "l3", "success", sha256="cc"))
        finish(ledger, dry, "success")

        assert ledger.completed("flow", "aa") and ledger.completed("flow", "bb")
        assert not ledger.completed("flow", "cc")  # a dry run completes nothing
        assert not ledger.completed("other", "aa")
        assert ledger.next_send("flow", "aa") == 1
        assert ledger.previous_outcome("flow", "r2") == ("partial", None)
        assert ledger.previous_outcome("flow", "r1") is None
        assert ledger.files_since("flow", "2026-11-16T00:00:00+00:00") == 2
        newest, oldest = ledger.history("flow")
        assert (newest["run_id"], newest["dry_run"], oldest["status"]) == ("r2", 1, "partial")
        # a file recorded again goes last, as SQLite's REPLACE puts it
        assert [f["name"] for f in oldest["files"]] == ["b.csv", "a.csv"]
        assert oldest["files"][0] == {
            "name": "b.csv",
            "size": 9,
            "sha256": "bb",
            "lineage_id": "l2",
            "status": "success",
            "rows_total": 0,
            "rows_filtered": 0,
            "rows_rejected": 0,
            "rows_sent": 0,
            "rows_succeeded": 0,
            "rows_failed": 0,
            "processed_path": None,
            "error_file": None,
            "reason": None,
            "send_no": 0,
            "retry_of": None,
        }
        assert set(newest) == {
            "run_id", "dataflow", "started_at", "finished_at", "status", "dry_run", "reason",
            "files",
        }  # fmt: skip
        assert [r["run_id"] for r in ledger.history(since="2026-11-16T06:30:00+00:00")] == ["r2"]
        assert [r["run_id"] for r in ledger.history(until="2026-11-16T06:30:00+00:00")] == ["r1"]
        assert ledger.history("flow", limit=1)[0]["run_id"] == "r2"

        source = ledger.retry_source("flow", "l1")
        assert (source["name"], list(source["failed_lines"]), source["dry_run"]) == (
            "a.csv",
            [3],
            0,
        )
        assert "seq" not in source
        summary = ledger.select("SELECT stage, code, message, count FROM error_summary")
        assert summary == [{"stage": "api", "code": "1054", "message": "bad", "count": 1}]
        with pytest.raises(RetryRefused, match="no file with lineage nope is recorded in"):
            ledger.retry_source("flow", "nope")
        with pytest.raises(RetryRefused, match="not of 'other'"):
            ledger.retry_source("other", "l1")
    finally:
        ledger.close()


def test_fires_and_counters(open_ledger: Open) -> None:
    ledger = open_ledger()
    try:
        assert [ledger.claim_fire("flow", m) for m in ("06:00", "06:00", "07:00")] == [
            True,
            False,
            True,
        ]
        ledger.add_counters({("requests", "flow", "200"): 3})
        ledger.add_counters({("requests", "flow", "200"): 2, ("requests", "flow", "503"): 1})
        rows = ledger.select("SELECT label, value FROM counters ORDER BY label")
        assert rows == [{"label": "200", "value": 5}, {"label": "503", "value": 1}]
    finally:
        ledger.close()
    again = open_ledger()  # a second process sees the same claims
    try:
        assert not again.claim_fire("flow", "07:00")
    finally:
        again.close()


def test_checkpoints_resume_and_are_forgotten_when_the_file_finishes(open_ledger: Open) -> None:
    ledger = open_ledger()
    try:
        checkpoints = ledger.checkpoints("flow")
        progress = checkpoints.open("aa", "a.csv")
        assert not progress.resumed and progress.key == "aa"
        checkpoints.ack("aa", [RecordResult(2, True), RecordResult(3, False, "1054", "bad")])
        checkpoints.ack("aa", [RecordResult(5, True)])
        checkpoints.error_file("aa", name="a.errors.csv")
        checkpoints.error_file("aa", path="/errors/a.errors.csv")
    finally:
        ledger.close()
    ledger = open_ledger()
    try:
        checkpoints = ledger.checkpoints("flow")
        resumed = checkpoints.open("aa", "a.csv")
        assert (resumed.resumed, resumed.lineage_id) == (True, progress.lineage_id)
        assert list(resumed.acked.nonzero()[0]) == [2, 3, 5]
        assert resumed.failures == {3: ("1054", "bad")}
        assert (resumed.error_name, resumed.error_path) == ("a.errors.csv", "/errors/a.errors.csv")
        forced = checkpoints.open("aa", "a.csv", send_no=ledger.next_send("flow", "aa"))
        assert (forced.key, forced.send_no) == ("aa:send1", 1)
        assert checkpoints.interrupted_send("aa") and checkpoints.highest_send("aa") == 1
        run = run_report("r1", "2026-11-16T06:00:00+00:00")
        ledger.start_run(run)
        ledger.finish_file(run, FileReport("a.csv", resumed.lineage_id, "success", sha256="aa"))
        assert not checkpoints.open("aa", "a.csv").resumed  # forgotten with the file
        assert checkpoints.interrupted_send("aa")  # the forced send is still in progress
    finally:
        ledger.close()


def test_ids_and_digests_are_kept_with_the_checkpoint_and_read_a_few_at_a_time(
    open_ledger: Open,
) -> None:
    ledger = open_ledger()
    try:
        checkpoints = ledger.checkpoints("flow")
        progress = checkpoints.open("cc", "c.csv")
        for request in range(250):  # more than one FETCH of the server-side cursor
            lines = range(2 + 3 * request, 5 + 3 * request)
            checkpoints.ack("cc", [RecordResult(n, True, api_id=f"id{n}") for n in lines], True)
        checkpoints.ack("cc", [RecordResult(900, True, api_id="x")])  # no result file: no ids
        checkpoints.error_digest(progress, "d" * 64)
        got = list(checkpoints.acked_ids("cc"))
        assert len(got) == 250 and all(len(lines) == len(ids) == 3 for lines, ids in got)
        assert {n: i for lines, ids in got for n, i in zip(lines, ids, strict=True)} == {
            n: f"id{n}" for n in range(2, 752)
        }
        partial = checkpoints.acked_ids("cc")
        next(partial)
        partial.close()  # abandoned half-way: its transaction ends, the ledger goes on
        assert ledger.store.execute("SELECT 1").fetchone() == (1,)
        assert checkpoints.open("cc", "c.csv").error_digests == ["d" * 64]
    finally:
        ledger.close()


def test_a_stream_inside_a_transaction_leaves_it_whole(open_ledger: Open) -> None:
    ledger = open_ledger()
    try:
        checkpoints = ledger.checkpoints("flow")
        checkpoints.open("dd", "d.csv")
        checkpoints.ack("dd", [RecordResult(2, True, api_id="a")], True)
        with pytest.raises(RuntimeError), ledger.transaction("flow") as db:
            db.execute("INSERT INTO counters VALUES ('n', 'flow', 'x', 1)")
            assert list(checkpoints.acked_ids("dd")) == [([2], ["a"])]
            db.execute("INSERT INTO counters VALUES ('n', 'flow', 'y', 1)")
            raise RuntimeError("the transaction fails after the read")
        # neither write stayed: the read did not commit the caller's transaction half-way
        assert ledger.select("SELECT * FROM counters WHERE dataflow = 'flow'") == []
    finally:
        ledger.close()


def test_a_failed_transaction_changes_nothing(open_ledger: Open) -> None:
    ledger = open_ledger()
    try:
        run = run_report("r1", "2026-11-16T06:00:00+00:00")
        ledger.start_run(run)
        with pytest.raises(StateError):
            ledger.start_run(run)  # the same run id twice: refused, named as a state error
        bad = FileReport("a.csv", "l1", "success", sha256="aa")
        with pytest.raises(StateError):
            ledger.finish_file(run, bad, [("api", "1", "x", 1), ("api", "1", "x", None)])  # type: ignore[list-item]
        assert ledger.history("flow")[0]["files"] == []
        assert ledger.completed("flow", "aa") is False
    finally:
        ledger.close()


def test_the_dataflow_lock_is_held_by_one_ledger_at_a_time(open_ledger: Open) -> None:
    first, second = open_ledger(), open_ledger()
    try:
        with first.lock("flow") as held:
            assert held
            with second.lock("flow") as other:
                assert not other
            with second.lock("another") as other:
                assert other
        with second.lock("flow") as held:
            assert held
    finally:
        first.close()
        second.close()


# PostgreSQL only: the schema, the connection settings, a vanished holder


def test_upgrade_is_idempotent_and_a_ledger_refuses_a_database_without_it(
    postgres: Postgres,
) -> None:
    url = postgres.database()
    with pytest.raises(StateError, match=r"has no dataflow schema.*run `dataflow db upgrade`"):
        Ledger(url=url)
    assert db.upgrade(url) == (0, db.SCHEMA_VERSION)
    assert db.upgrade(url) == (db.SCHEMA_VERSION, db.SCHEMA_VERSION)
    with psycopg.connect(postgres.dsn(url.rsplit("/", 1)[1])) as conn:
        listed = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = {r[0] for r in listed}
        assert tables == {t.name for t in db.METADATA.sorted_tables}
        version = conn.execute("SELECT version FROM schema_version").fetchall()
        assert version == [(db.SCHEMA_VERSION,)]
    Ledger(url=url).close()


def test_db_upgrade_command(postgres: Postgres, tmp_path: Path) -> None:
    url = postgres.database()
    env = {"DATAFLOW_STATE_URL": url, "DATAFLOW_STATE_DIR": str(tmp_path)}
    now = db.SCHEMA_VERSION
    for expected in (f"upgraded from 0 to schema {now}", f"already at schema {now}"):
        result = cli(["db", "upgrade"], env)
        assert result.returncode == 0, result.stderr
        assert expected in result.stderr and postgres.password not in result.stderr
    result = cli(["db", "upgrade"], {"DATAFLOW_STATE_DIR": str(tmp_path)})
    assert result.returncode == 2 and "DATAFLOW_STATE_URL is not set" in result.stderr


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    environ = {k: v for k, v in os.environ.items() if k != "DATAFLOW_STATE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "dataflow", *args],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_an_unreachable_database_is_a_state_error_without_the_password(
    postgres: Postgres,
) -> None:
    from dataflow.sandbox import free_port

    url = f"postgresql+psycopg://dataflow:s3cret-pw@127.0.0.1:{free_port()}/nowhere"
    with pytest.raises(StateError) as refused:
        Ledger(url=url)
    message = str(refused.value)
    assert message.startswith("the state database postgresql+psycopg://dataflow:***@127.0.0.1:"), (
        message
    )
    assert "(DATAFLOW_STATE_URL) cannot be used" in message and "s3cret-pw" not in message
    wrong = postgres.url("postgres").replace(postgres.password, "wrong-password")
    with pytest.raises(StateError, match="password authentication failed") as refused:
        Ledger(url=wrong)
    assert "wrong-password" not in str(refused.value)
    with pytest.raises(StateError, match="is not a PostgreSQL URL"):
        Ledger(url="mysql://u:p@h/d")


def test_connections_free_a_lost_holders_locks_in_seconds(pg_url: str) -> None:
    ledger, other = Ledger(url=pg_url), Ledger(url=pg_url)
    try:
        names = ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")
        shown = {n: ledger.select(f"SHOW {n}")[0][n] for n in names}
        assert shown == dict.fromkeys(names[:2], "2") | {names[1]: "1", names[2]: "2"}
        check = "client_connection_check_interval"
        assert ledger.select(f"SHOW {check}")[0][check] == "1s"
        with ledger.lock("flow") as held:
            assert held
            with other.lock("flow") as taken:
                assert not taken
            pid = ledger.select("SELECT pg_backend_pid() AS pid")[0]["pid"]
            other.select("SELECT pg_terminate_backend(?)", (pid,))  # the holder is gone
            deadline = time.monotonic() + 5
            while True:
                with other.lock("flow") as taken:
                    if taken:
                        break
                assert time.monotonic() < deadline, "the lock was not freed"
                time.sleep(0.1)
            with pytest.raises(StateError, match="DATAFLOW_STATE_URL"):
                ledger.select("SELECT 1")  # its connection is gone, said as a state error
    finally:
        ledger.close()
        other.close()


def test_concurrent_claims_of_a_fire_have_one_winner(pg_url: str) -> None:
    wins: list[bool] = []

    def claim() -> None:
        ledger = Ledger(url=pg_url)
        try:
            wins.append(ledger.claim_fire("flow", "2026-11-16 06:00"))
        finally:
            ledger.close()

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 5 + [True]


# end to end: the same run on both backends


def normalised(report: dict[str, Any]) -> dict[str, Any]:
    volatile = {"run_id", "started_at", "finished_at", "duration_s", "lineage_id", "elapsed_s"}

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in volatile}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, str):  # the error file's name has the time of the run
            return re.sub(r"result_\d{14}_", "result_<time>_", value)
        return value

    return dict(clean(report))


def run_once(
    bed: Bed, content: bytes, env: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    bed.sftp.put("inbox/badges_2026-11-16.csv.gpg", content)
    bed.api.reset()
    config = bed.config()
    result = bed.run("run", str(config), "--json", env=env)
    assert result.returncode == 3, result.stderr  # the sample has bad rows: partial
    again = bed.run("run", str(config), "--json", env=env)  # nothing new
    assert again.returncode == 0, again.stderr
    history = bed.run("runs", "--json", env=env)
    assert history.returncode == 0, history.stderr
    (error_file,) = (bed.sftp.root / "errors").iterdir()
    outputs = {"runs": json.loads(history.stdout), "error_file": error_file.read_text()}
    for directory in ("processed", "errors"):
        for path in (bed.sftp.root / directory).iterdir():
            path.unlink()
    return json.loads(result.stdout), outputs


def test_a_run_with_the_state_in_postgresql_reports_as_with_sqlite(bed: Bed, pg_url: str) -> None:
    content = bed.keys.encrypt(sample_csv())  # one content: the same sha256 in both
    sqlite_env = {"DATAFLOW_STATE_DIR": str(bed.dir / "sqlite")}
    sqlite_report, sqlite_runs = run_once(bed, content, sqlite_env)
    pg_env = {"DATAFLOW_STATE_URL": pg_url, "DATAFLOW_STATE_DIR": str(bed.dir / "pg-local")}
    pg_report, pg_runs = run_once(bed, content, pg_env)
    assert pg_report["files"][0]["rows_failed"] + pg_report["files"][0]["rows_rejected"] > 0
    assert normalised(pg_report) == normalised(sqlite_report)
    assert normalised(pg_runs) == normalised(sqlite_runs)
    assert not (bed.dir / "pg-local" / "ledger.db").exists()  # the state was in PostgreSQL
    url = sa.make_url(pg_url)
    with psycopg.connect(
        host="127.0.0.1", port=url.port, user=url.username, password=url.password,
        dbname=url.database,
    ) as conn:  # fmt: skip
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone() == (2,)
        assert conn.execute("SELECT COUNT(*) FROM progress").fetchone() == (0,)


def test_the_page_names_the_state_it_reads_without_the_password(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataflow import web

    monkeypatch.setenv("DATAFLOW_STATE_URL", pg_url)
    html = web.page(web.Site(tmp_path), None, 10)
    assert f"state database {db.shown(pg_url)}" in html
    assert str(tmp_path) not in html and "state directory" not in html
    password = sa.make_url(pg_url).password
    assert not password or password not in html
    monkeypatch.delenv("DATAFLOW_STATE_URL")
    assert f"state directory {tmp_path}" in web.page(web.Site(tmp_path), None, 10)
