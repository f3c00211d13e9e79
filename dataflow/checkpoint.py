"""Checkpoints: what the API already acknowledged for a file, so a crashed run resumes.

A file in progress is known by its send key: its content (SHA-256) for the first send, and
``<sha256>:send<n>`` for the n-th send of the same content again (``run --force``,
``retry``; see `send_key`). The send number is recorded here before the first request, so a
send resumed after a crash derives the same bulk requestIds. Every request's verdicts are
committed (their line numbers and the failures among them) before the next result is
processed, so after a crash, even ``kill -9``, the next run skips every acknowledged row and
re-sends at most the requests that were in flight (``concurrency`` requests of
``batch_size`` rows; for the bulk templates their requestIds make the server answer 809).
Only verdicts of the API about a row are committed (`RecordResult.final`): a row whose
request used up its retries, or whose answer confirmed nothing, is not, so a kept file sends
it again (see `dataflow.accounts`).
The finishing steps are recorded too: the error file's chosen name, then its uploaded path;
the original is moved last and the checkpoint deleted in the same transaction that records
the file as done.

On several machines a worker holds the file's lease (`dataflow.lease`): every write here goes
through the ledger's `guard`, which checks the lease's fence in the same transaction, so a
worker that lost its lease changes nothing (`LeaseLost`).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Generator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from dataflow.lease import Lease, lost
from dataflow.rows import Accepted, RecordResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS progress (
    dataflow TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    name TEXT NOT NULL,
    lineage_id TEXT NOT NULL,
    error_name TEXT,
    error_path TEXT,
    content TEXT,  -- the content's SHA-256 (NULL in older state: sha256 is the content)
    send_no INTEGER NOT NULL DEFAULT 0,
    retry_of TEXT,  -- a retry's original lineage
    error_digests TEXT,  -- JSON: SHA-256 of each protected (encrypted) error file uploaded
    PRIMARY KEY (dataflow, sha256)  -- sha256 holds the send key (see send_key)
);
CREATE TABLE IF NOT EXISTS acks (
    dataflow TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    lines BLOB NOT NULL,
    ids TEXT,  -- JSON: the API's id of each line, with `result_file: all` only (else NULL)
    failures TEXT
);
CREATE INDEX IF NOT EXISTS acks_by_file ON acks (dataflow, sha256);
"""
# columns added after the first release, added to older state: (table, column, declaration)
COLUMNS = (
    ("progress", "content", "TEXT"),  # the content's SHA-256 (NULL: sha256 is the content)
    ("progress", "send_no", "INTEGER NOT NULL DEFAULT 0"),
    ("progress", "retry_of", "TEXT"),  # a retry's original lineage
    ("progress", "error_digests", "TEXT"),  # JSON: the SHA-256 of each protected upload
    ("acks", "ids", "TEXT"),  # JSON: the API's ids of the lines (result_file: all)
)


def send_key(sha256: str, send_no: int) -> str:
    """The identity of one send of a content: its checkpoint key and the `file_id` its bulk
    requestIds derive from. The first send is the content hash itself (the ids of every earlier
    version); the n-th send again is ``<sha256>:send<n>``, so the API does not take its
    requests for the first send's (809) and a resumed send derives the same ids again."""
    return sha256 if send_no == 0 else f"{sha256}:send{send_no}"


@dataclass
class Progress:
    """What is known of one file from earlier, interrupted runs."""

    lineage_id: str
    key: str = ""  # the send key (`send_key`); the checkpoint's and the requestIds' identity
    send_no: int = 0
    resumed: bool = False
    acked: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    failures: dict[int, tuple[str, str]] = field(default_factory=dict)
    error_name: str | None = None
    error_path: str | None = None
    # the SHA-256 of each protected (encrypted) error file an attempt was about to upload:
    # gpg's output differs at every attempt, so a resumed upload recognises its earlier one
    # by these, not by its own bytes
    error_digests: list[str] = field(default_factory=list)
    # line -> (code, message) of every row the API failed in this send, kept by the ledger
    # when the file finishes so that `dataflow retry` can send them again
    failed: dict[int, tuple[str, str]] = field(default_factory=dict)

    def acked_mask(self, lines: np.ndarray) -> np.ndarray:
        """True for each line number already acknowledged by the API."""
        inside = lines < len(self.acked)
        mask = np.zeros(len(lines), dtype=bool)
        mask[inside] = self.acked[lines[inside]]
        return mask


class Executor(Protocol):
    """A connection that runs SQLite-style statements (``?`` parameters): a sqlite3
    connection, or the ledger's `dataflow.db.Store` (SQLite or PostgreSQL)."""

    def execute(self, sql: str, parameters: Any = (), /) -> Any: ...


class Checkpoints:
    def __init__(
        self,
        db: Executor,
        dataflow: str,
        guard: Callable[[], AbstractContextManager[Any]] = nullcontext,
        lease: Callable[[], Lease | None] = lambda: None,
    ) -> None:
        self.db = db  # the ledger's connection; the ledger created SCHEMA
        self.dataflow = dataflow
        # around every write: the ledger's check of the file's lease (dataflow.lease), if any
        self.guard = guard
        self.lease = lease  # the lease held on the file now (the ack carries its fence)

    def open(
        self, sha256: str, name: str, send_no: int = 0, retry_of: str | None = None
    ) -> Progress:
        """The checkpoint of a send of this content: for the first send (`send_no` 0) the one
        of the content; for a send again, an interrupted one of the same kind (a forced send,
        or a retry of `retry_of`) if there is one, else a new one numbered `send_no`."""
        row = self._find(sha256, send_no, retry_of)
        if row is None:
            lineage = str(uuid.uuid4())
            key = send_key(sha256, send_no)
            with self.guard():
                self.db.execute(
                    "INSERT INTO progress (dataflow, sha256, name, lineage_id, content, "
                    "send_no, retry_of) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (self.dataflow, key, name, lineage, sha256, send_no, retry_of),
                )
            return Progress(lineage, key, send_no)
        key, lineage, error_name, error_path, send_no, digests = row
        progress = Progress(lineage, key, send_no, True, error_name=error_name)
        progress.error_path = error_path
        progress.error_digests = list(json.loads(digests or "[]"))
        chunks = []
        for blob, failures in self.db.execute(
            "SELECT lines, failures FROM acks WHERE dataflow = ? AND sha256 = ?",
            (self.dataflow, key),
        ):
            chunks.append(np.frombuffer(blob, dtype=np.int64))
            for line, code, message in json.loads(failures or "[]"):
                progress.failures[int(line)] = (code, message)
        if chunks:
            lines = np.concatenate(chunks)
            progress.acked = np.zeros(int(lines.max()) + 1, dtype=bool)
            progress.acked[lines] = True
        return progress

    def _find(self, sha256: str, send_no: int, retry_of: str | None) -> Any:
        columns = (
            "SELECT sha256, lineage_id, error_name, error_path, send_no, error_digests "
            "FROM progress"
        )
        if send_no == 0:
            where, args = "sha256 = ?", (sha256,)
        elif retry_of is None:  # an interrupted forced send of this content
            where = "COALESCE(content, sha256) = ? AND send_no > 0 AND retry_of IS NULL"
            args = (sha256,)
        else:
            where, args = "retry_of = ?", (retry_of,)
        return self.db.execute(
            f"{columns} WHERE dataflow = ? AND {where} ORDER BY send_no DESC LIMIT 1",
            (self.dataflow, *args),
        ).fetchone()

    def interrupted_send(self, sha256: str) -> bool:
        """True when a forced send of this content was interrupted: it is resumed, by any run."""
        return self._find(sha256, 1, None) is not None

    def highest_send(self, sha256: str) -> int:
        """The highest send number of this content that has a checkpoint (0: none)."""
        row = self.db.execute(
            "SELECT MAX(send_no) FROM progress "
            "WHERE dataflow = ? AND COALESCE(content, sha256) = ?",
            (self.dataflow, sha256),
        ).fetchone()
        return int(row[0] or 0)

    def ack(self, key: str, results: Sequence[RecordResult], with_ids: bool = False) -> None:
        """Commit one request's results (one transaction, before anything else happens);
        `key` is the send's (`Progress.key`). `Accepted` (every row accepted) goes as is.
        `with_ids` (a result file lists every row) keeps the API's ids of the lines too, so
        that a resumed run can still write them (`acked_ids`)."""
        failures: list[list[Any]] = []
        if isinstance(results, Accepted):
            lines = np.asarray(results.lines, dtype=np.int64)
            ids = [results.api_id(position) for position in range(len(lines))] if with_ids else []
        else:
            lines = np.array([r.line_no for r in results], dtype=np.int64)
            failures = [[r.line_no, r.status_code, r.message] for r in results if not r.ok]
            ids = [r.api_id for r in results] if with_ids else []
        row = (
            self.dataflow, key, lines.tobytes(), json.dumps(failures) if failures else None,
            json.dumps(ids) if with_ids else None,
        )  # fmt: skip
        lease = self.lease()
        if lease is None:
            with self.guard():
                self.db.execute(
                    "INSERT INTO acks (dataflow, sha256, lines, failures, ids) "
                    "VALUES (?, ?, ?, ?, ?)",
                    row,
                )
            return
        # the fence checked by the insert itself: one statement, atomic on its own, instead of
        # a transaction around a check and the insert (four statements; issue 11)
        share = " FOR SHARE" if getattr(self.db, "postgres", False) else ""
        inserted = self.db.execute(
            "INSERT INTO acks (dataflow, sha256, lines, failures, ids) SELECT ?, ?, ?, ?, ? "
            "WHERE EXISTS "
            f"(SELECT 1 FROM leases WHERE dataflow = ? AND name = ? AND fence = ?{share})",
            (*row, lease.dataflow, lease.name, lease.fence),
        )
        if inserted.rowcount != 1:
            raise lost(lease)

    def acked_ids(self, key: str) -> Generator[tuple[list[int], list[str]], None, None]:
        """The lines acknowledged with their ids (`ack(with_ids=True)`), request by request,
        read a few requests at a time (a 5 M-row file holds about 100 MB of them)."""
        stream = getattr(self.db, "stream", None) or self.db.execute  # a bare sqlite3 one
        rows = stream(
            "SELECT lines, ids FROM acks WHERE dataflow = ? AND sha256 = ? AND ids IS NOT NULL",
            (self.dataflow, key),
        )
        with contextlib.closing(rows):  # a generator, or a bare sqlite3 cursor
            for blob, ids in rows:
                yield np.frombuffer(blob, dtype=np.int64).tolist(), json.loads(ids)

    def error_file(self, key: str, *, name: str | None = None, path: str | None = None) -> None:
        column, value = ("error_name", name) if name is not None else ("error_path", path)
        with self.guard():
            self.db.execute(
                f"UPDATE progress SET {column} = ? WHERE dataflow = ? AND sha256 = ?",
                (value, self.dataflow, key),
            )

    def error_digest(self, progress: Progress, digest: str) -> None:
        """Record, before its upload, the SHA-256 of a protected error file (see
        `Progress.error_digests`)."""
        if digest in progress.error_digests:
            return
        progress.error_digests.append(digest)
        with self.guard():
            self.db.execute(
                "UPDATE progress SET error_digests = ? WHERE dataflow = ? AND sha256 = ?",
                (json.dumps(progress.error_digests), self.dataflow, progress.key),
            )

    def forget(self, key: str) -> None:
        """The send is finished: its checkpoint is no longer needed."""
        with self.guard():
            for table in ("acks", "progress"):
                self.db.execute(
                    f"DELETE FROM {table} WHERE dataflow = ? AND sha256 = ?", (self.dataflow, key)
                )
