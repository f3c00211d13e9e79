"""The run report (``dataflow run --json``), per the contract."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

IN_PROGRESS = "in_progress"  # a big file that workers send in shards (dataflow.shards), and its run


@dataclass
class FileReport:
    name: str
    lineage_id: str
    status: str = "failure"
    rows_total: int = 0
    rows_filtered: int = 0
    rows_rejected: int = 0
    rows_sent: int = 0
    rows_succeeded: int = 0
    rows_failed: int = 0
    processed_path: str | None = None
    error_file: str | None = None
    reason: str | None = None
    size: int = 0
    sha256: str | None = None
    send_no: int = 0  # 0: the content's first send; n: its n-th send again (--force, retry)
    retry_of: str | None = None  # `dataflow retry`: the lineage whose failed rows this sends

    @property
    def accuracy(self) -> float | None:
        return self.rows_succeeded / self.rows_total if self.rows_total else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("size")
        out.pop("sha256")
        for key in ("send_no", "retry_of"):  # shown only for a send again
            if not out[key]:
                out.pop(key)
        return out


@dataclass
class RunReport:
    dataflow: str
    run_id: str
    started_at: str
    finished_at: str = ""
    status: str = "no_files"
    files: list[FileReport] = field(default_factory=list)
    dry_run: bool = False
    reason: str | None = None
    skipped: bool = False  # another process held the dataflow's lock
    stop_cause: str | None = None  # why a FatalError stopped it: FatalError.cause ("api_down", ...)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dataflow": self.dataflow,
            "run_id": self.run_id,
            "status": self.status,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "files": [f.to_dict() for f in self.files],
        }
        if self.dry_run:
            out["dry_run"] = True
        if self.reason:
            out["reason"] = self.reason
        return out

    def settle(self) -> None:
        """Derive the run's status from its files (a fatal reason makes it a failure); a run
        with a file still sent in shards is `in_progress` until its last shard finishes."""
        statuses = {f.status for f in self.files}
        if self.skipped:
            self.status = "no_files"
        elif IN_PROGRESS in statuses:
            self.status = IN_PROGRESS
        elif self.reason or "failure" in statuses:
            self.status = "failure"
        elif "partial" in statuses:
            self.status = "partial"
        elif self.files:
            self.status = "success"
        else:
            self.status = "no_files"


EXIT_CODES = {"success": 0, "no_files": 0, "partial": 3, "failure": 1, IN_PROGRESS: 0}
