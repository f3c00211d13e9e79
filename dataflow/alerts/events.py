"""Which alerts a finished run (or a passed ``expect_file`` deadline) raises, and their facts.

- ``failure``: the run's status is failure (a file failed, or a fatal error stopped the run);
- ``api_down``: the run was stopped by `dataflow.errors.ApiDown` (``report.stop_cause``); it is
  sent instead of ``failure`` when both are wanted (one alert per run for one outage);
- ``partial``: the run is partial and its rejected + failed rows are at least
  ``partial_threshold_percent`` of its rows_total (summed over the run's files);
- ``recovered``: the run did not fail and the run before it (dry runs left out) did;
- ``no_file``: from the scheduler, when no file was picked up between the previous deadline
  and this one.

Dry runs and runs skipped because another process held the dataflow raise nothing. A run
with a file still sent in shards (status ``in_progress``) raises nothing yet: the last shard
to finish raises the run's alerts, once, with its true status (`dataflow.shards`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from dataflow.alerts.model import AlertsConfig, Event
from dataflow.redact import redact
from dataflow.report import IN_PROGRESS, RunReport
from dataflow.trigger import When


@dataclass(frozen=True)
class Alert:
    event: Event
    dataflow: str
    run_id: str | None
    at: str
    message: str
    reason: str | None = None
    files: list[dict[str, Any]] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        """The webhook body of contract §7, every text passed through `redact`."""
        body: dict[str, Any] = {
            "event": self.event,
            "dataflow": self.dataflow,
            "run_id": self.run_id,
            "at": self.at,
            "message": self.message,
            "files": self.files,
            "reason": self.reason,
        }
        cleaned: dict[str, Any] = _redacted(body)
        return cleaned


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def run_alerts(
    config: AlertsConfig, report: RunReport, previous: tuple[str, str | None] | None
) -> list[Alert]:
    """The alerts `report` raises; `previous` is the (status, reason) of the run before it."""
    if report.dry_run or report.skipped or report.status == IN_PROGRESS:
        return []  # an in-progress run's alerts come when its last shard finishes
    wanted = set(config.events)
    at = report.finished_at or now_iso()
    files = [f.to_dict() for f in report.files]

    def alert(event: Event, message: str, reason: str | None) -> Alert:
        return Alert(event, report.dataflow, report.run_id, at, message, reason, files)

    out: list[Alert] = []
    if report.status == "failure":
        if report.stop_cause == "api_down" and "api_down" in wanted:
            out.append(alert("api_down", _api_down_message(report), report.reason))
        elif "failure" in wanted:
            out.append(alert("failure", _failure_message(report), _failure_reason(report)))
    elif report.status == "partial" and "partial" in wanted:
        bad, total = _bad_rows(report)
        share = 100.0 * bad / total if total else 0.0
        if total and share >= config.partial_threshold_percent:
            out.append(
                alert(
                    "partial",
                    _partial_message(report, bad, total, share, config),
                    _error_files(report),
                )
            )
    if report.status != "failure" and "recovered" in wanted and previous is not None:
        status, reason = previous
        if status == "failure":
            message = f"{report.dataflow}: the run ended {report.status} after a failed run."
            out.append(alert("recovered", message, f"the previous run failed: {reason or '?'}"))
    return out


def _failure_message(report: RunReport) -> str:
    failed = [f.name for f in report.files if f.status == "failure"]
    if report.reason:
        return f"{report.dataflow}: the run failed: {report.reason}"
    names = ", ".join(failed[:5]) + (" and more" if len(failed) > 5 else "")
    return f"{report.dataflow}: {len(failed)} of {len(report.files)} file(s) failed: {names}."


def _failure_reason(report: RunReport) -> str | None:
    if report.reason:
        return report.reason
    return next((f.reason for f in report.files if f.status == "failure" and f.reason), None)


def _api_down_message(report: RunReport) -> str:
    return (
        f"{report.dataflow}: the run stopped because the API kept failing; the file is kept "
        "and will be taken up by the next run."
    )


def _bad_rows(report: RunReport) -> tuple[int, int]:
    bad = sum(f.rows_rejected + f.rows_failed for f in report.files)
    return bad, sum(f.rows_total for f in report.files)


def _partial_message(
    report: RunReport, bad: int, total: int, share: float, config: AlertsConfig
) -> str:
    return (
        f"{report.dataflow}: {bad} of {total} rows ({share:.1f}%) were rejected or failed, "
        f"at or above the {config.partial_threshold_percent:g}% threshold."
    )


def _error_files(report: RunReport) -> str | None:
    paths = [f.error_file for f in report.files if f.error_file]
    return f"the rows and their reasons are in {', '.join(paths)}" if paths else None


# -- no_file ------------------------------------------------------------------------------

_SEARCH_BACK = (
    timedelta(minutes=1),
    timedelta(hours=1),
    timedelta(days=1),
    timedelta(days=8),
    timedelta(days=32),
    timedelta(days=367),
    timedelta(days=4 * 366 + 1),
)


def latest_deadline(when: When, now: datetime) -> datetime | None:
    """The last deadline at or before `now` (None if there was none in four years)."""
    if when.every is not None:
        return now
    for back in _SEARCH_BACK:
        fire = when.next_fire(None, now - back)
        if fire <= now:
            while (following := when.next_fire(fire, fire)) <= now:
                fire = following
            return fire
    return None


def previous_deadline(when: When, deadline: datetime) -> datetime | None:
    """The deadline before `deadline`."""
    if when.every is not None:
        return deadline - when.every.interval
    return latest_deadline(when, deadline - timedelta(microseconds=1))


def no_file_alert(
    dataflow: str, when: When, deadline: datetime, since: datetime, picked_up: int
) -> Alert | None:
    """The ``no_file`` alert when nothing was picked up between `since` and `deadline`."""
    if picked_up:
        return None
    zone = ZoneInfo(when.timezone)
    start = since.astimezone(zone).strftime("%Y-%m-%d %H:%M")
    end = deadline.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")
    return Alert(
        "no_file",
        dataflow,
        None,
        now_iso(),
        f"{dataflow}: no file was picked up between {start} and the deadline {end}.",
        f"expect_file ({when.describe()}): no file was processed since the previous deadline",
    )


def utc_iso(when: datetime) -> str:
    """A time as the ledger records run starts (ISO-8601, UTC, seconds)."""
    return when.astimezone(UTC).isoformat(timespec="seconds")
