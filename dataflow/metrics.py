"""Prometheus metrics at ``/metrics``, derived from the ledger at scrape time.

One approach for ``dataflow schedule --http`` and ``dataflow ui --http``: every scrape reads
the ledger (`LedgerCollector`), so the numbers are true after a restart, are the same in both
commands, and count the runs of every process sharing the state directory (``dataflow run``
from cron included). What the ledger does not hold per file, the API requests by status code
and the alert delivery failures, is counted in memory by the process that makes them
(`api_request`, `alert_delivery_failed`) and added to the ledger's ``counters`` table when its
run ends (`flush`; an alert failure at once); a scrape of that same process adds what is not
flushed yet, so the scheduler's numbers move during a run. Counts not flushed when a process
is killed are lost; the row and file counts are not (they are the ledger's).

Metrics (dry runs are not counted):

- ``dataflow_rows_total{dataflow,outcome}`` counter; outcome ``succeeded``, ``rejected``,
  ``failed``, ``filtered``: the rows of finished files (success or partial), counted once,
  when the file finishes (a file stopped by a fatal error counts when a later run finishes it).
- ``dataflow_files_total{dataflow,status}`` counter: files recorded per status (``success``,
  ``partial``, ``failure``, ``duplicate``).
- ``dataflow_runs_total{dataflow,status}`` counter: finished runs per status.
- ``dataflow_api_requests_total{dataflow,status_code}`` counter: HTTP answers of the API.
- ``dataflow_alert_delivery_failures_total{dataflow,channel}`` counter.
- ``dataflow_last_success_timestamp_seconds{dataflow}`` gauge: end of the last ``success`` run.
- ``dataflow_run_duration_seconds{dataflow}`` histogram of finished runs.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import suppress
from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from dataflow.errors import StateError
from dataflow.ledger import Ledger

log = logging.getLogger(__name__)

API_REQUESTS = "api_requests"
ALERT_FAILURES = "alert_delivery_failures"
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_lock = threading.Lock()
_pending: Counter[tuple[str, str, str]] = Counter()  # (counter, dataflow, label) -> not flushed


def api_request(dataflow: str, status_code: int | str) -> None:
    """Count one HTTP answer of the API (called by http_write)."""
    with _lock:
        _pending[(API_REQUESTS, dataflow, str(status_code))] += 1


def alert_delivery_failed(dataflow: str, channel: str) -> None:
    """Count an alert that could not be delivered, and record it in the ledger now."""
    with _lock:
        _pending[(ALERT_FAILURES, dataflow, channel)] += 1
    try:
        ledger = Ledger()
    except StateError as exc:
        log.warning("the alert delivery failure is counted in memory only: %s", exc)
        return
    try:
        flush(ledger)
    finally:
        with suppress(StateError):
            ledger.close()


def flush(ledger: Ledger) -> None:
    """Add the in-memory counts to the ledger's counters (at the end of a run)."""
    with _lock:
        if not _pending:
            return
        try:
            ledger.add_counters(dict(_pending))
        except StateError as exc:
            log.warning("request counts kept in memory, not recorded: %s", exc)
            return
        _pending.clear()


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class LedgerCollector:
    """Reads the ledger on every scrape (see the module docstring)."""

    def __init__(self, open_ledger: Callable[[], Ledger]) -> None:
        self.open_ledger = open_ledger

    def collect(self) -> Iterator[Metric]:
        ledger = self.open_ledger()
        try:
            yield from _rows(ledger)
            yield from _files(ledger)
            yield from _runs(ledger)
            yield from _counters(ledger)
        finally:
            ledger.close()


def _rows(ledger: Ledger) -> Iterator[Metric]:
    rows = CounterMetricFamily(
        "dataflow_rows", "Rows of finished files by outcome", labels=["dataflow", "outcome"]
    )
    for r in ledger.select(
        "SELECT files.dataflow AS dataflow, SUM(rows_succeeded) AS succeeded, "
        "SUM(rows_rejected) AS rejected, SUM(rows_failed) AS failed, "
        "SUM(rows_filtered) AS filtered FROM files JOIN runs USING (run_id) "
        "WHERE dry_run = 0 AND files.status IN ('success', 'partial') GROUP BY files.dataflow"
    ):
        for outcome in ("succeeded", "rejected", "failed", "filtered"):
            rows.add_metric([r["dataflow"], outcome], r[outcome] or 0)
    yield rows


def _files(ledger: Ledger) -> Iterator[Metric]:
    files = CounterMetricFamily(
        "dataflow_files", "Files recorded by status", labels=["dataflow", "status"]
    )
    for r in ledger.select(
        "SELECT files.dataflow AS dataflow, files.status AS status, COUNT(*) AS n FROM files "
        "JOIN runs USING (run_id) WHERE dry_run = 0 GROUP BY files.dataflow, files.status"
    ):
        files.add_metric([r["dataflow"], r["status"]], r["n"])
    yield files


def _runs(ledger: Ledger) -> Iterator[Metric]:
    finished = ledger.select(
        "SELECT dataflow, status, started_at, finished_at FROM runs "
        "WHERE dry_run = 0 AND finished_at IS NOT NULL AND status IS NOT NULL"
    )
    runs = CounterMetricFamily(
        "dataflow_runs", "Finished runs by status", labels=["dataflow", "status"]
    )
    per_status = Counter((r["dataflow"], r["status"]) for r in finished)
    for (name, status), n in sorted(per_status.items()):
        runs.add_metric([name, status], n)
    yield runs
    last = GaugeMetricFamily(
        "dataflow_last_success_timestamp_seconds",
        "Unix time the last successful run finished",
        labels=["dataflow"],
    )
    latest: dict[str, float] = {}
    durations: dict[str, list[float]] = {}
    for r in finished:
        end = _epoch(r["finished_at"])
        durations.setdefault(r["dataflow"], []).append(max(0.0, end - _epoch(r["started_at"])))
        if r["status"] == "success":
            latest[r["dataflow"]] = max(end, latest.get(r["dataflow"], 0.0))
    for name, end in sorted(latest.items()):
        last.add_metric([name], end)
    yield last
    yield _histogram(durations)


def _histogram(durations: dict[str, list[float]]) -> Metric:
    histogram = HistogramMetricFamily(
        "dataflow_run_duration_seconds", "Duration of finished runs", labels=["dataflow"]
    )
    for name, values in sorted(durations.items()):
        buckets = [
            (str(bound), float(sum(v <= bound for v in values))) for bound in DURATION_BUCKETS
        ]
        buckets.append(("+Inf", float(len(values))))
        histogram.add_metric([name], buckets, sum_value=sum(values))
    return histogram


def _counters(ledger: Ledger) -> Iterator[Metric]:
    families = {
        API_REQUESTS: CounterMetricFamily(
            "dataflow_api_requests",
            "HTTP answers of the API by status code",
            labels=["dataflow", "status_code"],
        ),
        ALERT_FAILURES: CounterMetricFamily(
            "dataflow_alert_delivery_failures",
            "Alerts that could not be delivered, by channel",
            labels=["dataflow", "channel"],
        ),
    }
    with _lock:  # a flush moves counts from memory to the ledger under the same lock
        totals = Counter(
            {
                (r["name"], r["dataflow"], r["label"]): r["value"]
                for r in ledger.select("SELECT name, dataflow, label, value FROM counters")
            }
        )
        totals.update(_pending)
    for (name, dataflow, label), value in sorted(totals.items()):
        if name in families:
            families[name].add_metric([dataflow, label], value)
    yield from families.values()


def registry(open_ledger: Callable[[], Ledger]) -> CollectorRegistry:
    out = CollectorRegistry(auto_describe=False)
    out.register(LedgerCollector(open_ledger))
    return out


def render(reg: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of `reg`."""
    return generate_latest(reg)
