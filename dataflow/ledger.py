"""The run ledger: runs, files and their outcome, in SQLite under the state directory.

``$DATAFLOW_STATE_DIR`` (default ``~/.local/state/dataflow``) holds ``ledger.db``. The ledger
answers "did this dataflow already complete a file with this content?" (duplicates), keeps
the checkpoints of files in progress (`dataflow.checkpoint`), and feeds ``dataflow runs``.
A lock file per dataflow (``locks/<name>.lock``, an flock released by the kernel even on
``kill -9``) keeps two processes from working on one dataflow at the same time.

A state directory that cannot be used (read-only, full, not a directory) raises `StateError`
(a FatalError) naming the directory and what to do, from whichever call found it; no sqlite
or OS exception leaves this module.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from dataflow.checkpoint import SCHEMA as CHECKPOINT_SCHEMA
from dataflow.checkpoint import Checkpoints
from dataflow.errors import StateError
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
CREATE TABLE IF NOT EXISTS error_summary (  -- the commonest errors of a file (dataflow.web)
    run_id TEXT NOT NULL,
    lineage_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (run_id, lineage_id, stage, code, message)
);
CREATE TABLE IF NOT EXISTS counters (  -- counts kept outside the files table (dataflow.metrics)
    name TEXT NOT NULL,
    dataflow TEXT NOT NULL,
    label TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (name, dataflow, label)
);
"""


def state_dir_path() -> Path:
    configured = os.environ.get("DATAFLOW_STATE_DIR")
    return Path(configured) if configured else Path.home() / ".local" / "state" / "dataflow"


def state_dir() -> Path:
    path = state_dir_path()
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise state_error(path, exc) from exc
    return path


def state_error(directory: Path, exc: BaseException) -> StateError:
    """Say what is wrong with the state directory, where, and what to do."""
    text = str(exc).lower()
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror.lower()
    elif "readonly" in text or "read-only" in text:
        reason = "it is read-only"
    elif "disk is full" in text or "no space" in text:
        reason = "its disk is full"
    elif "unable to open" in text:
        reason = "the database in it cannot be opened (read-only, missing or not permitted)"
    else:
        reason = text or type(exc).__name__
    where = "DATAFLOW_STATE_DIR" if os.environ.get("DATAFLOW_STATE_DIR") else "the default"
    return StateError(
        f"the state directory {directory} ({where}) cannot be used: {reason}. Make it "
        "writable and free space there, or set DATAFLOW_STATE_DIR to a directory that is"
    )


class _Connection(sqlite3.Connection):
    """A connection whose failures are StateErrors naming the state directory."""

    directory: Path = Path()

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        try:
            return super().execute(sql, parameters)
        except sqlite3.Error as exc:
            raise state_error(self.directory, exc) from exc

    def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
        try:
            return super().executescript(sql_script)
        except sqlite3.Error as exc:
            raise state_error(self.directory, exc) from exc


class Ledger:
    def __init__(self, directory: Path | None = None) -> None:
        self.path = (directory or state_dir()) / "ledger.db"
        self.directory = self.path.parent
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, factory=_Connection)
        except sqlite3.Error as exc:
            raise state_error(self.directory, exc) from exc
        assert isinstance(db, _Connection)
        db.directory = self.directory
        self._db: sqlite3.Connection = db
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash
            self._db.executescript(SCHEMA + CHECKPOINT_SCHEMA)
        except StateError:
            self._db.close()
            raise
        self._checkpoints: dict[str, Checkpoints] = {}

    def checkpoints(self, dataflow: str) -> Checkpoints:
        if dataflow not in self._checkpoints:
            self._checkpoints[dataflow] = Checkpoints(self._db, dataflow)
        return self._checkpoints[dataflow]

    @contextmanager
    def lock(self, dataflow: str) -> Iterator[bool]:
        """Yield True when this process holds the dataflow's lock, False if another does."""
        locks = self.directory / "locks"
        try:
            locks.mkdir(exist_ok=True, mode=0o700)
            fd = os.open(locks / f"{dataflow}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise state_error(self.directory, exc) from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError as exc:
                raise state_error(self.directory, exc) from exc
            yield True
        finally:
            os.close(fd)  # releases the lock

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error as exc:
            raise state_error(self.directory, exc) from exc

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            with suppress(StateError):  # a failed statement may have rolled back already
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

    def finish_file(
        self, run: RunReport, f: FileReport, errors: Sequence[tuple[str, str, str, int]] = ()
    ) -> None:
        """Record a finished file, its error summary ((stage, code, message, count) rows)
        and drop its checkpoint, in one transaction."""
        with self._tx() as db:
            self._insert_file(db, run, f)
            for stage, code, message, count in errors:
                db.execute(
                    "INSERT OR REPLACE INTO error_summary VALUES (?, ?, ?, ?, ?, ?)",
                    (run.run_id, f.lineage_id, stage, code, message, count),
                )
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

    def previous_outcome(self, dataflow: str, run_id: str) -> tuple[str, str | None] | None:
        """(status, reason) of the last finished run before `run_id` (dry runs left out)."""
        row = self._db.execute(
            "SELECT status, reason FROM runs WHERE dataflow = ? AND run_id != ? AND dry_run = 0 "
            "AND finished_at IS NOT NULL AND rowid < COALESCE((SELECT rowid FROM runs WHERE "
            "run_id = ?), 1e18) ORDER BY rowid DESC LIMIT 1",
            (dataflow, run_id, run_id),
        ).fetchone()
        return (str(row[0]), row[1]) if row is not None else None

    def files_since(self, dataflow: str, since: str) -> int:
        """How many files this dataflow picked up in runs that started at or after `since`
        (an ISO-8601 UTC time as runs record it), dry runs left out."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM files JOIN runs USING (run_id) WHERE files.dataflow = ? AND "
            "runs.started_at >= ? AND dry_run = 0",
            (dataflow, since),
        ).fetchone()
        return int(row[0])

    def history(
        self,
        dataflow: str | None = None,
        limit: int = 50,
        since: str | None = None,
        until: str | None = None,
    ) -> list[dict[str, Any]]:
        """Runs, newest first, with their files; `since`/`until` bound started_at (ISO, UTC:
        since <= started_at < until)."""
        where = [
            (clause, value)
            for clause, value in (
                ("dataflow = ?", dataflow),
                ("started_at >= ?", since),
                ("started_at < ?", until),
            )
            if value
        ]
        query = "SELECT * FROM runs"
        if where:
            query += " WHERE " + " AND ".join(clause for clause, _ in where)
        args: tuple[Any, ...] = tuple(value for _, value in where)
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

    # read side of dataflow.web and dataflow.metrics; counters of dataflow.metrics
    def select(self, sql: str, args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """The rows of a read-only query, as dicts."""
        cursor = self._db.execute(sql, args)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def add_counters(self, counts: dict[tuple[str, str, str], int]) -> None:
        """Add to the counters (name, dataflow, label) -> value, in one transaction."""
        with self._tx() as db:
            for (name, dataflow, label), value in counts.items():
                db.execute(
                    "INSERT INTO counters VALUES (?, ?, ?, ?) ON CONFLICT (name, dataflow, label) "
                    "DO UPDATE SET value = value + excluded.value",
                    (name, dataflow, label, value),
                )
