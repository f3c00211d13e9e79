"""What a person at a terminal sees: the progress of ``dataflow run`` and the ``runs`` table.

The pipeline reports progress to the current `Listener` (a no-op unless ``dataflow run`` is on
a terminal, see `progress`): a file started, its bytes downloaded, rows read (and rejected by
the transform), rows answered by the API. `TerminalProgress` draws them with rich on stderr;
log lines still appear, above the bar (`dataflow.logs.StderrHandler` follows rich's
redirection of ``sys.stderr``). Off a terminal there is no bar, only the log lines.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from dataflow.rows import RecordResult, Request

    OnResult = Callable[[Request, Sequence[RecordResult]], None]


def parse_address(text: str) -> tuple[str, int]:
    """``--http``: ``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (every interface)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:8080)")
    return host.strip("[]") or "0.0.0.0", int(port)


def date_bound(text: str, *, end: bool = False) -> str:
    """``--since``/``--until``: an ISO date or date-time as the ledger's UTC ISO text; a bare
    date as ``--until`` means the end of that day."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            moment += timedelta(days=1) if end else timedelta(0)
        else:
            moment = datetime.fromisoformat(text)
            moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO date (2026-11-16) or date-time (2026-11-16T09:30+05:30)"
        ) from exc
    return moment.astimezone(UTC).isoformat(timespec="seconds")


class Listener:
    """Progress of a run; every method does nothing here."""

    def file_started(self, name: str, size: int) -> None:
        pass

    def downloaded(self, nbytes: int) -> None:
        pass

    def rows_read(self, read: int, rejected: int, resolved: int) -> None:
        """`read` rows taken from the file: `rejected` by the transform, `resolved` earlier."""

    def rows_answered(self, n: int) -> None:
        pass


_current: Listener = Listener()


def listener() -> Listener:
    return _current


def counting(on_result: OnResult) -> OnResult:
    """`on_result`, also telling the listener how many rows were answered."""

    def wrapped(request: Request, results: Sequence[RecordResult]) -> None:
        on_result(request, results)
        _current.rows_answered(len(results))

    return wrapped


@contextmanager
def progress(enabled: bool) -> Iterator[None]:
    """Draw a progress bar on stderr while inside, if `enabled` (stderr is a terminal)."""
    global _current
    if not enabled:
        yield
        return
    bar = TerminalProgress()
    previous, _current = _current, bar
    try:
        with bar.live:
            yield
    finally:
        _current = previous


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


class TerminalProgress(Listener):
    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._lock = threading.Lock()
        self.live: Progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[rows]}"),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr),
            transient=False,
        )
        self._task: TaskID | None = None
        self._read = self._sent = self._rejected = self._answered = 0

    def file_started(self, name: str, size: int) -> None:
        with self._lock:
            self._read = self._sent = self._rejected = self._answered = 0
            self._task = self.live.add_task(f"{name}", total=size or None, rows="downloading")

    def downloaded(self, nbytes: int) -> None:
        self._update(completed=nbytes, total=nbytes)

    def rows_read(self, read: int, rejected: int, resolved: int) -> None:
        with self._lock:
            self._read += read
            self._rejected += rejected
            self._answered += resolved
            self._sent += read - rejected
        self._update()

    def rows_answered(self, n: int) -> None:
        with self._lock:
            self._answered += n
        self._update()

    def _update(self, **kwargs: Any) -> None:
        with self._lock:
            if self._task is None:
                return
            rows = (
                f"rows: {self._read} read, {self._answered} of {self._sent} sent answered, "
                f"{self._rejected} rejected"
            )
            self.live.update(self._task, rows=rows, **kwargs)


COLUMNS = (
    "started",
    "dataflow",
    "status",
    "file",
    "total",
    "filtered",
    "rejected",
    "sent",
    "ok",
    "failed",
    "accuracy",
    "error file",
)


def runs_table(history: list[dict[str, Any]], errors: dict[tuple[str, str], list[Any]]) -> None:
    """Print the run history as rich tables on stdout; `errors` by (run_id, lineage_id)."""
    from rich.console import Console
    from rich.table import Table

    out = Console()
    table = Table(title="dataflow runs")
    for column in COLUMNS:
        numeric = column in ("total", "filtered", "rejected", "sent", "ok", "failed", "accuracy")
        table.add_column(column, overflow="fold", justify="right" if numeric else "left")
    for run in history:
        status = (run["status"] or "running") + (" (dry run)" if run["dry_run"] else "")
        head = [run["started_at"], run["dataflow"], status]
        if not run["files"]:
            table.add_row(*head, run.get("reason") or "-", *[""] * 9)
        for i, f in enumerate(run["files"]):
            table.add_row(*(head if i == 0 else ["", "", ""]), *_file_cells(f))
    out.print(table)
    if errors:
        out.print(_errors_table(history, errors))


def _errors_table(history: list[dict[str, Any]], errors: dict[tuple[str, str], list[Any]]) -> Any:
    from rich.table import Table

    table = Table(title="error summary (rows by stage, code and message)")
    for column in ("started", "dataflow", "file", "stage", "code", "message", "rows"):
        table.add_column(column, overflow="fold", justify="right" if column == "rows" else "left")
    for run in history:
        for f in run["files"]:
            for stage, code, message, count in errors.get((run["run_id"], f["lineage_id"]), []):
                where = (run["started_at"], run["dataflow"], f["name"])
                table.add_row(*where, stage, code or "-", message, str(count))
    return table


def _file_cells(f: dict[str, Any]) -> list[str]:
    total = f["rows_total"] or 0
    accuracy = f"{100 * (f['rows_succeeded'] or 0) / total:.1f}%" if total else "-"
    counts = ("rows_total", "rows_filtered", "rows_rejected", "rows_sent")
    return [
        f"{f['name']} {f['status']}",
        *(str(f[k] if f[k] is not None else "-") for k in counts),
        str(f["rows_succeeded"]),
        str(f["rows_failed"]),
        accuracy,
        f["error_file"] or "",
    ]
