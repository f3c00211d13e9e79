"""The run ledger: runs, files and their outcome, in SQLite under the state directory.

``$DATAFLOW_STATE_DIR`` (default ``~/.local/state/dataflow``) holds ``ledger.db``. The ledger
answers "did this dataflow already complete a file with this content?" (duplicates), keeps
the checkpoints of files in progress (`dataflow.checkpoint`), and feeds ``dataflow runs``.
A lock file per dataflow (``locks/<name>.lock``, an flock released by the kernel even on
``kill -9``) keeps two processes from working on one dataflow at the same time.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dataflow.checkpoint import SCHEMA as CHECKPOINT_SCHEMA
from dataflow.checkpoint import Checkpoints
from dataflow.report import FileReport, RunReport

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    dataflow TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT,
    dry_run INTEGER NOT NULL DEFAULT 0,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS files (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    dataflow TEXT NOT NULL,
    name TEXT NOT NULL,
    size INTEGER,
    sha256 TEXT,
    lineage_id TEXT NOT NULL,
    status TEXT NOT NULL,
    rows_total INTEGER, rows_filtered INTEGER, rows_rejected INTEGER,
    rows_sent INTEGER, rows_succeeded INTEGER, rows_failed INTEGER,
    processed_path TEXT, error_file TEXT, reason TEXT,
    PRIMARY KEY (run_id, lineage_id)
);
CREATE INDEX IF NOT EXISTS files_by_content ON files (dataflow, sha256, status);
CREATE TABLE IF NOT EXISTS fires (
    dataflow TEXT NOT NULL,
    local_minute TEXT NOT NULL,
    PRIMARY KEY (dataflow, local_minute)
);
"""


def state_dir() -> Path:
    configured = os.environ.get("DATAFLOW_STATE_DIR")
    path = Path(configured) if configured else Path.home() / ".local" / "state" / "dataflow"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


class Ledger:
    def __init__(self, directory: Path | None = None) -> None:
        self.path = (directory or state_dir()) / "ledger.db"
        self.directory = self.path.parent
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash
        self._db.executescript(SCHEMA + CHECKPOINT_SCHEMA)
        self._checkpoints: dict[str, Checkpoints] = {}

    def checkpoints(self, dataflow: str) -> Checkpoints:
        if dataflow not in self._checkpoints:
            self._checkpoints[dataflow] = Checkpoints(self._db, dataflow)
        return self._checkpoints[dataflow]

    @contextmanager
    def lock(self, dataflow: str) -> Iterator[bool]:
        """Yield True when this process holds the dataflow's lock, False if another does."""
        locks = self.directory / "locks"
        locks.mkdir(exist_ok=True, mode=0o700)
        fd = os.open(locks / f"{dataflow}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield True
        finally:
            os.close(fd)  # releases the lock

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def start_run(self, run: RunReport) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs (run_id, dataflow, started_at, dry_run) VALUES (?, ?, ?, ?)",
                (run.run_id, run.dataflow, run.started_at, int(run.dry_run)),
            )

    def finish_run(self, run: RunReport) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET finished_at = ?, status = ?, reason = ? WHERE run_id = ?",
                (run.finished_at, run.status, run.reason, run.run_id),
            )

    def finish_file(self, run: RunReport, f: FileReport) -> None:
        """Record a finished file and drop its checkpoint, in one transaction."""
        with self._tx() as db:
            self._insert_file(db, run, f)
            if f.sha256:
                self.checkpoints(run.dataflow).forget(f.sha256)

    def record_file(self, run: RunReport, f: FileReport) -> None:
        with self._tx() as db:
            self._insert_file(db, run, f)

    def _insert_file(self, db: sqlite3.Connection, run: RunReport, f: FileReport) -> None:
        db.execute(
            "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run.run_id,
                run.dataflow,
                f.name,
                f.size,
                f.sha256,
                f.lineage_id,
                f.status,
                f.rows_total,
                f.rows_filtered,
                f.rows_rejected,
                f.rows_sent,
                f.rows_succeeded,
                f.rows_failed,
                f.processed_path,
                f.error_file,
                f.reason,
            ),
        )

    def claim_fire(self, dataflow: str, local_minute: str) -> bool:
        """True the first time a scheduled fire claims this local wall-clock minute."""
        cursor = self._db.execute(
            "INSERT OR IGNORE INTO fires (dataflow, local_minute) VALUES (?, ?)",
            (dataflow, local_minute),
        )
        return cursor.rowcount == 1

    def completed(self, dataflow: str, sha256: str) -> bool:
        """True when this dataflow already finished a file with this content."""
        row = self._db.execute(
            "SELECT 1 FROM files JOIN runs USING (run_id) WHERE files.dataflow = ? AND "
            "sha256 = ? AND files.status IN ('success', 'partial') AND dry_run = 0 LIMIT 1",
            (dataflow, sha256),
        ).fetchone()
        return row is not None

    def history(self, dataflow: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        query = "SELECT * FROM runs"
        args: tuple[Any, ...] = ()
        if dataflow:
            query += " WHERE dataflow = ?"
            args = (dataflow,)
        query += " ORDER BY started_at DESC, rowid DESC LIMIT ?"
        self._db.row_factory = sqlite3.Row
        try:
            runs = [dict(r) for r in self._db.execute(query, (*args, limit))]
            for run in runs:
                run["files"] = [
                    dict(r)
                    for r in self._db.execute(
                        "SELECT * FROM files WHERE run_id = ? ORDER BY rowid", (run["run_id"],)
                    )
                ]
                for f in run["files"]:
                    f.pop("run_id", None)
                    f.pop("dataflow", None)
        finally:
            self._db.row_factory = None
        return runs
