"""Checkpoints: what the API already acknowledged for a file, so a crashed run resumes.

A file in progress is known by its content (SHA-256). Every request's verdicts are
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
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass, field

import numpy as np

from dataflow.rows import RecordResult

SCHEMA = """
CREATE TABLE IF NOT EXISTS progress (
    dataflow TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    name TEXT NOT NULL,
    lineage_id TEXT NOT NULL,
    error_name TEXT,
    error_path TEXT,
    PRIMARY KEY (dataflow, sha256)
);
CREATE TABLE IF NOT EXISTS acks (
    dataflow TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    lines BLOB NOT NULL,
    failures TEXT
);
CREATE INDEX IF NOT EXISTS acks_by_file ON acks (dataflow, sha256);
"""


@dataclass
class Progress:
    """What is known of one file from earlier, interrupted runs."""

    lineage_id: str
    resumed: bool = False
    acked: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    failures: dict[int, tuple[str, str]] = field(default_factory=dict)
    error_name: str | None = None
    error_path: str | None = None

    def acked_mask(self, lines: np.ndarray) -> np.ndarray:
        """True for each line number already acknowledged by the API."""
        inside = lines < len(self.acked)
        mask = np.zeros(len(lines), dtype=bool)
        mask[inside] = self.acked[lines[inside]]
        return mask


class Checkpoints:
    def __init__(self, db: sqlite3.Connection, dataflow: str) -> None:
        self.db = db  # the ledger's connection; the ledger created SCHEMA
        self.dataflow = dataflow

    def open(self, sha256: str, name: str) -> Progress:
        row = self.db.execute(
            "SELECT lineage_id, error_name, error_path FROM progress "
            "WHERE dataflow = ? AND sha256 = ?",
            (self.dataflow, sha256),
        ).fetchone()
        if row is None:
            lineage = str(uuid.uuid4())
            self.db.execute(
                "INSERT INTO progress (dataflow, sha256, name, lineage_id) VALUES (?, ?, ?, ?)",
                (self.dataflow, sha256, name, lineage),
            )
            return Progress(lineage)
        progress = Progress(row[0], True, error_name=row[1], error_path=row[2])
        chunks = []
        for blob, failures in self.db.execute(
            "SELECT lines, failures FROM acks WHERE dataflow = ? AND sha256 = ?",
            (self.dataflow, sha256),
        ):
            chunks.append(np.frombuffer(blob, dtype=np.int64))
            for line, code, message in json.loads(failures or "[]"):
                progress.failures[int(line)] = (code, message)
        if chunks:
            lines = np.concatenate(chunks)
            progress.acked = np.zeros(int(lines.max()) + 1, dtype=bool)
            progress.acked[lines] = True
        return progress

    def ack(self, sha256: str, results: list[RecordResult]) -> None:
        """Commit one request's results (one transaction, before anything else happens)."""
        lines = np.array([r.line_no for r in results], dtype=np.int64)
        failures = [[r.line_no, r.status_code, r.message] for r in results if not r.ok]
        self.db.execute(
            "INSERT INTO acks (dataflow, sha256, lines, failures) VALUES (?, ?, ?, ?)",
            (self.dataflow, sha256, lines.tobytes(), json.dumps(failures) if failures else None),
        )

    def error_file(self, sha256: str, *, name: str | None = None, path: str | None = None) -> None:
        column, value = ("error_name", name) if name is not None else ("error_path", path)
        self.db.execute(
            f"UPDATE progress SET {column} = ? WHERE dataflow = ? AND sha256 = ?",
            (value, self.dataflow, sha256),
        )

    def forget(self, sha256: str) -> None:
        """The file is finished: its checkpoint is no longer needed."""
        for table in ("acks", "progress"):
            self.db.execute(
                f"DELETE FROM {table} WHERE dataflow = ? AND sha256 = ?", (self.dataflow, sha256)
            )
