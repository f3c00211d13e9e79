"""The run ledger: runs, files and their outcome, in SQLite under the state directory or in
PostgreSQL (``DATAFLOW_STATE_URL``, see `dataflow.db`).

``$DATAFLOW_STATE_DIR`` (default ``~/.local/state/dataflow``) holds ``ledger.db``. The ledger
answers "did this dataflow already complete a file with this content?" (duplicates), keeps
the checkpoints of files in progress (`dataflow.checkpoint`), and feeds ``dataflow runs``.
A lock file per dataflow (``locks/<name>.lock``, an flock released by the kernel even on
``kill -9``) keeps two processes from working on one dataflow at the same time; on
PostgreSQL it is a session advisory lock, freed by the server when the holder's connection
ends (or its host vanishes: keepalives of a few seconds).

A state directory that cannot be used (read-only, full, not a directory) raises `StateError`
(a FatalError) naming the directory and what to do, from whichever call found it; no sqlite
or OS exception leaves this module. A PostgreSQL state that cannot be reached, or whose schema
``dataflow db upgrade`` did not create, raises a StateError naming the URL (never its
password).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from dataflow import lease as leases
from dataflow.checkpoint import COLUMNS as CHECKPOINT_COLUMNS
from dataflow.checkpoint import SCHEMA as CHECKPOINT_SCHEMA
from dataflow.checkpoint import Checkpoints, send_key
from dataflow.db import (
    LEASE_SCHEMA,
    SCHEMA_VERSION,
    SHARD_SCHEMA,
    Store,
    database_error,
    postgres_engine,
    schema_version,
    shown,
    state_url,
)
from dataflow.errors import DataflowError, StateError
from dataflow.lease import Lease
from dataflow.report import IN_PROGRESS, FileReport, RunReport

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
    send_no INTEGER NOT NULL DEFAULT 0,  -- 0: the content's first send; n: its n-th again
    retry_of TEXT,  -- the lineage a `dataflow retry` sent again
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
CREATE TABLE IF NOT EXISTS line_failures (  -- rows the API failed, per finished lineage (retry)
    dataflow TEXT NOT NULL,
    lineage_id TEXT NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    lines BLOB NOT NULL,  -- int64 line numbers (header = 1) that failed with this code, message
    PRIMARY KEY (dataflow, lineage_id, code, message)
);
CREATE TABLE IF NOT EXISTS counters (  -- counts kept outside the files table (dataflow.metrics)
    name TEXT NOT NULL,
    dataflow TEXT NOT NULL,
    label TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (name, dataflow, label)
);
"""
# columns added after the first release, added to an older ledger.db when it is opened
COLUMNS = (
    ("files", "send_no", "INTEGER NOT NULL DEFAULT 0"),  # 0: first send; n: n-th send again
    ("files", "retry_of", "TEXT"),  # the lineage a `dataflow retry` sent again
    ("shard_sets", "chunk_bytes", "BIGINT"),  # the parse chunk the shards were planned with
    ("shard_sets", "parse", "TEXT"),  # JSON: the parse settings the chunks depend on
    ("shards", "stops", "BIGINT"),  # deliveries of a shard that stopped on an error
    ("shards", "stopped", "TEXT"),  # the last such error
    *CHECKPOINT_COLUMNS,
)
FILE_COLUMNS = (
    "run_id, dataflow, name, size, sha256, lineage_id, status, rows_total, rows_filtered, "
    "rows_rejected, rows_sent, rows_succeeded, rows_failed, processed_path, error_file, reason, "
    "send_no, retry_of"
)
MESSAGE_CHARS = 500  # a failure's message as kept for a retry (the error file has it whole)


class RetryRefused(DataflowError):
    """`dataflow retry` cannot send this lineage again (unknown, unfinished, already retried)."""


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


def _sqlite_error(directory: Path) -> Any:
    def on_error(exc: BaseException) -> StateError:
        return state_error(directory, exc)  # the sqlite3 error (`Store.open_sqlite`)

    return on_error


def _lock_key(name: str) -> int:
    """The advisory lock number of a dataflow's lock (64 bits, signed as PostgreSQL's)."""
    digest = hashlib.blake2b(f"dataflow-lock:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Ledger:
    def __init__(self, directory: Path | None = None, *, url: str | None = None) -> None:
        """The ledger in PostgreSQL when `url` (or DATAFLOW_STATE_URL) is set, else in
        ``ledger.db`` in `directory` (default: the state directory)."""
        self.url = url if url is not None else state_url()
        self._checkpoints: dict[str, Checkpoints] = {}
        self._leases: dict[str, Lease] = {}  # dataflow -> the lease of its file in progress
        self._in_tx = False
        if self.url:
            self._open_postgres(self.url)
        else:
            self._open_sqlite(directory or state_dir())

    def _open_sqlite(self, directory: Path) -> None:
        self.path = directory / "ledger.db"
        self.directory = self.path.parent
        self.where = str(self.path)
        self.postgres = False
        path = self.path
        self._db = Store.open_sqlite(
            lambda: sqlite3.connect(path, timeout=30, isolation_level=None),
            _sqlite_error(self.directory),
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash
            self._db.script(SCHEMA + CHECKPOINT_SCHEMA + LEASE_SCHEMA + SHARD_SCHEMA)
            self._migrate()
        except StateError:
            self._db.close()
            raise

    def _open_postgres(self, url: str) -> None:
        self.directory = state_dir_path()
        self.path = self.directory / "ledger.db"  # not used: the state is in PostgreSQL
        self.where = shown(url)
        self.postgres = True
        self._db = Store(postgres_engine(url), lambda exc: database_error(url, exc))
        try:
            version = schema_version(self._db)
        except StateError:
            self._db.close()
            raise
        if version != SCHEMA_VERSION:
            self._db.close()
            state = "has no dataflow schema" if version == 0 else f"has schema {version}"
            raise StateError(
                f"the state database {self.where} (DATAFLOW_STATE_URL) {state}, this version "
                f"of dataflow needs schema {SCHEMA_VERSION}: run `dataflow db upgrade` once"
            )

    def _migrate(self) -> None:
        """Add the columns a state directory of an earlier version lacks."""
        for table, column, declaration in COLUMNS:
            names = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in names:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    @property
    def store(self) -> Store:
        """The ledger's connection (`dataflow.lease` works on it)."""
        return self._db

    @property
    def _order(self) -> str:
        """The column of insertion order: SQLite's rowid, PostgreSQL's seq."""
        return "seq" if self.postgres else "rowid"

    def checkpoints(self, dataflow: str) -> Checkpoints:
        if dataflow not in self._checkpoints:
            self._checkpoints[dataflow] = Checkpoints(
                self._db,
                dataflow,
                guard=lambda: self._fenced(dataflow),
                lease=lambda: self._leases.get(dataflow),
            )
        return self._checkpoints[dataflow]

    @contextmanager
    def lock(self, dataflow: str) -> Iterator[bool]:
        """Yield True when this process holds the dataflow's lock, False if another does."""
        if self.postgres:
            with self._advisory_lock(dataflow) as held:
                yield held
            return
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

    @contextmanager
    def _advisory_lock(self, dataflow: str) -> Iterator[bool]:
        key = _lock_key(dataflow)
        (held,) = self._db.execute("SELECT pg_try_advisory_lock(?)", (key,)).fetchone() or (0,)
        if not held:
            yield False
            return
        try:
            yield True
        finally:
            with suppress(StateError):  # a lost connection has freed it already
                self._db.execute("SELECT pg_advisory_unlock(?)", (key,))

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self, dataflow: str | None = None) -> Iterator[Store]:
        """A transaction (re-entrant); with `dataflow`, refused with LeaseLost when this
        ledger holds a lease of that dataflow's file and another worker took it over."""
        held = self._leases.get(dataflow) if dataflow is not None else None
        if self._in_tx:
            if held is not None:
                leases.check(self._db, held)
            yield self._db
            return
        self._db.begin()
        self._in_tx = True
        try:
            if held is not None:
                leases.check(self._db, held)
            yield self._db
        except BaseException:
            with suppress(StateError):  # a failed statement may have rolled back already
                self._db.execute("ROLLBACK")
            raise
        else:
            try:
                self._db.execute("COMMIT")
            except StateError:  # e.g. the disk filled at commit: leave no transaction open
                with suppress(StateError):
                    self._db.execute("ROLLBACK")
                raise
        finally:
            self._in_tx = False

    def transaction(self, dataflow: str) -> AbstractContextManager[Store]:
        """A transaction on the state, fenced by this ledger's lease of `dataflow`'s file if
        it holds one (`dataflow.shards` records its shards in it)."""
        return self._tx(dataflow)

    def refresh_run(self, run_id: str, finished_at: str | None = None) -> str | None:
        """Derive a run's status again from its recorded files, in a transaction with the run's
        row locked (the last shard of a big file finishing, and the run that split it
        recording its end, one after the other in either order). With `finished_at`, a run
        that is no longer in progress ends then (when its last file finished), unless it
        recorded a later end. Its status, None for an unknown run."""
        with self._tx():
            lock = " FOR UPDATE" if self.postgres else ""
            row = self._db.execute(
                f"SELECT reason, dry_run, finished_at FROM runs WHERE run_id = ?{lock}", (run_id,)
            ).fetchone()
            if row is None:
                return None
            report = RunReport("", run_id, "", reason=row[0], dry_run=bool(row[1]))
            statuses = self._db.execute("SELECT status FROM files WHERE run_id = ?", (run_id,))
            report.files = [FileReport("", "", str(status)) for (status,) in statuses]
            report.settle()
            end = row[2]
            if finished_at and report.status != IN_PROGRESS and (end or "") < finished_at:
                end = finished_at
            self._db.execute(
                "UPDATE runs SET status = ?, finished_at = ? WHERE run_id = ?",
                (report.status, end, run_id),
            )
            return report.status

    def run_report(self, run_id: str) -> RunReport | None:
        """A recorded run and its files, as a report (the alerts of a run whose last file
        was finished by a shard)."""
        rows = self.select("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        if not rows:
            return None
        run = rows[0]
        report = RunReport(
            str(run["dataflow"]),
            run_id,
            str(run["started_at"]),
            finished_at=str(run["finished_at"] or ""),
            status=str(run["status"] or ""),
            dry_run=bool(run["dry_run"]),
            reason=run["reason"],
        )
        names = [f.name for f in fields(FileReport)]
        query = f"SELECT * FROM files WHERE run_id = ? ORDER BY {self._order}"
        for f in self.select(query, (run_id,)):
            values = {n: f[n] for n in names if n in f}
            values["size"] = int(values.get("size") or 0)
            values["send_no"] = int(values.get("send_no") or 0)
            report.files.append(FileReport(**values))
        return report

    @contextmanager
    def _fenced(self, dataflow: str) -> Iterator[None]:
        """Around a checkpoint write: a fenced transaction while a lease is held, else the
        statement on its own, as on one machine."""
        if dataflow not in self._leases:
            yield
            return
        with self._tx(dataflow):
            yield

    # file leases (dataflow.lease): one worker at a time on a file, across machines
    def claim_file(
        self, dataflow: str, name: str, owner: str, ttl: float, *, steal: bool = False
    ) -> Lease | None:
        """Claim the file `name` of `dataflow` for `ttl` seconds; None while another worker
        holds it (unless `steal`: its holder is known to be gone). While held, this ledger's
        writes of that dataflow's files carry its fence."""
        with self._tx() as db:
            lease = leases.claim(db, dataflow, name, owner, ttl, steal)
        if lease is not None:
            self._leases[dataflow] = lease
        return lease

    def heartbeat(self, lease: Lease, ttl: float) -> None:
        """Renew the lease for `ttl` seconds; LeaseLost if another worker took it over."""
        leases.heartbeat(self._db, lease, ttl)

    def release(self, lease: Lease) -> None:
        """Give the file up; this ledger's writes are no longer fenced by it."""
        if self._leases.get(lease.dataflow) == lease:
            del self._leases[lease.dataflow]
        leases.release(self._db, lease)

    def start_run(self, run: RunReport) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs (run_id, dataflow, started_at, dry_run) VALUES (?, ?, ?, ?)",
                (run.run_id, run.dataflow, run.started_at, int(run.dry_run)),
            )

    def finish_run(self, run: RunReport) -> None:
        """Record the run's end. A run with a file sent in shards takes its status from its
        recorded files (`refresh_run`): the last shard may have finished that file already."""
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET finished_at = ?, status = ?, reason = ? WHERE run_id = ?",
                (run.finished_at, run.status, run.reason, run.run_id),
            )
            if run.status == IN_PROGRESS:
                self.refresh_run(run.run_id)

    def finish_file(
        self,
        run: RunReport,
        f: FileReport,
        errors: Sequence[tuple[str, str, str, int]] = (),
        failed: Mapping[int, tuple[str, str]] | None = None,
        *,
        failed_lines: Mapping[tuple[str, str], np.ndarray] | None = None,
    ) -> None:
        """Record a finished file, its error summary ((stage, code, message, count) rows),
        the lines the API failed (line -> (code, message), or `failed_lines`: (code, message)
        -> int64 lines, for `dataflow retry`) and drop its checkpoint, in one transaction."""
        with self._tx(run.dataflow) as db:
            self._insert_file(db, run, f)
            for stage, code, message, count in errors:
                db.execute(
                    "INSERT INTO error_summary VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, "
                    "lineage_id, stage, code, message) DO UPDATE SET count = excluded.count",
                    (run.run_id, f.lineage_id, stage, code, message, count),
                )
            self._insert_failures(db, run.dataflow, f.lineage_id, failed or {}, failed_lines)
            if f.sha256:
                self.checkpoints(run.dataflow).forget(send_key(f.sha256, f.send_no))

    def _insert_failures(
        self,
        db: Store,
        dataflow: str,
        lineage_id: str,
        failed: Mapping[int, tuple[str, str]],
        failed_lines: Mapping[tuple[str, str], np.ndarray] | None = None,
    ) -> None:
        singles: dict[tuple[str, str], list[int]] = {}
        for line, (code, message) in failed.items():
            singles.setdefault((str(code), message[:MESSAGE_CHARS]), []).append(line)
        by_error = {key: [np.array(lines, np.int64)] for key, lines in singles.items()}
        for (code, message), array in (failed_lines or {}).items():
            by_error.setdefault((str(code), message[:MESSAGE_CHARS]), []).append(array)
        for (code, message), arrays in by_error.items():
            lines = np.unique(np.concatenate(arrays).astype(np.int64))
            db.execute(
                "INSERT INTO line_failures VALUES (?, ?, ?, ?, ?) ON CONFLICT (dataflow, "
                "lineage_id, code, message) DO UPDATE SET lines = excluded.lines",
                (dataflow, lineage_id, code, message, lines.tobytes()),
            )

    def record_file(self, run: RunReport, f: FileReport) -> None:
        with self._tx(run.dataflow) as db:
            self._insert_file(db, run, f)

    def _insert_file(self, db: Store, run: RunReport, f: FileReport) -> None:
        verb = "INSERT OR REPLACE"
        if self.postgres:  # as SQLite's REPLACE: the row goes last in insertion order
            verb = "INSERT"
            db.execute(
                "DELETE FROM files WHERE run_id = ? AND lineage_id = ?", (run.run_id, f.lineage_id)
            )
        db.execute(
            f"{verb} INTO files ({FILE_COLUMNS}) VALUES ({', '.join('?' * 18)})",
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
                f.send_no,
                f.retry_of,
            ),
        )

    def claim_fire(self, dataflow: str, local_minute: str) -> bool:
        """True the first time a scheduled fire claims this local wall-clock minute."""
        cursor = self._db.execute(
            "INSERT INTO fires (dataflow, local_minute) VALUES (?, ?) ON CONFLICT DO NOTHING",
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

    def next_send(self, dataflow: str, sha256: str) -> int:
        """The number of a new send of this content again (1 + the highest so far)."""
        row = self._db.execute(
            "SELECT MAX(send_no) FROM files WHERE dataflow = ? AND sha256 = ?", (dataflow, sha256)
        ).fetchone()
        done = int(row[0] or 0)
        return 1 + max(done, self.checkpoints(dataflow).highest_send(sha256))

    def retry_source(self, dataflow: str, lineage_id: str) -> dict[str, Any]:
        """The finished file of `lineage_id` that `dataflow retry` sends again: its row of
        the files table plus ``failed_lines`` (the line numbers the API failed, sorted).
        Raises RetryRefused saying why it cannot be retried."""
        rows = self.select(
            "SELECT files.*, runs.dry_run AS dry_run FROM files JOIN runs USING (run_id) "
            f"WHERE lineage_id = ? ORDER BY files.{self._order} DESC",
            (lineage_id,),
        )
        if not rows:
            raise RetryRefused(
                f"no file with lineage {lineage_id} is recorded in {self.where}; `dataflow runs "
                f"{dataflow} --json` lists the lineage_id of every file"
            )
        if rows[0]["dataflow"] != dataflow:
            raise RetryRefused(
                f"lineage {lineage_id} is a file of dataflow {rows[0]['dataflow']!r}, not of "
                f"{dataflow!r}; give that dataflow's file"
            )
        done = [r for r in rows if r["status"] in ("success", "partial") and not r["dry_run"]]
        if not done:
            raise RetryRefused(
                f"lineage {lineage_id} ({rows[0]['name']}) was not processed to the end (status "
                f"{rows[0]['status']}); only a processed file can be retried (`dataflow run` "
                "resumes or processes the others)"
            )
        source = done[0]
        again = self.select(
            "SELECT lineage_id FROM files WHERE dataflow = ? AND retry_of = ? AND status IN "
            "('success', 'partial')",
            (dataflow, lineage_id),
        )
        if again:
            raise RetryRefused(
                f"lineage {lineage_id} was already retried as lineage {again[0]['lineage_id']}; "
                "retry that one to send again what still fails"
            )
        source.pop("seq", None)
        source["failed_lines"] = self._failed_lines(source)
        return source

    def _failed_lines(self, source: dict[str, Any]) -> np.ndarray:
        blobs = self._db.execute(
            "SELECT lines FROM line_failures WHERE dataflow = ? AND lineage_id = ?",
            (source["dataflow"], source["lineage_id"]),
        ).fetchall()
        lines = np.unique(
            np.concatenate(
                [np.zeros(0, np.int64)] + [np.frombuffer(blob, dtype=np.int64) for (blob,) in blobs]
            )
        )
        if len(lines) < (source["rows_failed"] or 0):
            raise RetryRefused(
                f"the failed rows of lineage {source['lineage_id']} ({source['name']}) are not "
                "recorded (it was processed by an earlier version of dataflow); `dataflow run "
                "--force` on the file sends all its rows again"
            )
        return lines

    def previous_outcome(self, dataflow: str, run_id: str) -> tuple[str, str | None] | None:
        """(status, reason) of the last finished run before `run_id` (dry runs, and runs whose
        files are still sent in shards, left out)."""
        row = self._db.execute(
            "SELECT status, reason FROM runs WHERE dataflow = ? AND run_id != ? AND dry_run = 0 "
            f"AND finished_at IS NOT NULL AND status != ? AND {self._order} < COALESCE((SELECT "
            f"{self._order} FROM runs WHERE run_id = ?), 1e18) ORDER BY {self._order} DESC LIMIT 1",
            (dataflow, run_id, IN_PROGRESS, run_id),
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
        query += f" ORDER BY started_at DESC, {self._order} DESC LIMIT ?"
        runs = self.select(query, (*args, limit))
        for run in runs:
            run.pop("seq", None)
            run["files"] = self.select(
                f"SELECT * FROM files WHERE run_id = ? ORDER BY {self._order}", (run["run_id"],)
            )
            for f in run["files"]:
                f.pop("run_id", None)
                f.pop("dataflow", None)
                f.pop("seq", None)
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
                    "DO UPDATE SET value = counters.value + excluded.value",
                    (name, dataflow, label, value),
                )
