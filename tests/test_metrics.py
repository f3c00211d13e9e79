"""/metrics: derived from the ledger (true after a restart), live counts of this process added;
and `dataflow schedule --http` serving the page, metrics and health beside the scheduler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dataflow import metrics
from dataflow.ledger import Ledger
from dataflow.report import FileReport, RunReport

from .conftest import Bed, wait_until
from .test_web import CLEAN, clean_csv, get, parse_dom, serving


def scrape(state: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render(metrics.registry(lambda: Ledger(state))).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counts_of_this_process_are_live_then_kept_by_the_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAFLOW_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(metrics, "_pending", metrics.Counter())
    key = ("dataflow_api_requests_total", (("dataflow", "acme"), ("status_code", "200")))
    for _ in range(3):
        metrics.api_request("acme", 200)
    metrics.api_request("acme", 503)
    assert scrape(tmp_path)[key] == 3  # not flushed yet: from memory
    ledger = Ledger(tmp_path)
    metrics.flush(ledger)
    metrics.flush(ledger)  # nothing left to add
    ledger.close()
    metrics.api_request("acme", 200)
    assert scrape(tmp_path)[key] == 4  # 3 from the ledger, 1 from memory; none twice

    metrics._pending.clear()  # a restart: only the ledger remains
    metrics.alert_delivery_failed("acme", "webhook")  # recorded at once
    metrics._pending.clear()
    after = scrape(tmp_path)
    assert after[key] == 3
    assert after[("dataflow_api_requests_total", (("dataflow", "acme"), ("status_code", "503")))]
    alert = (
        "dataflow_alert_delivery_failures_total",
        (("channel", "webhook"), ("dataflow", "acme")),
    )
    assert after[alert] == 1


def test_rows_of_a_file_stopped_by_a_fatal_error_are_counted_once(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    first = RunReport("acme", "run-1", "2026-11-16T00:00:00+00:00")
    ledger.start_run(first)
    stopped = FileReport("f.csv", "lin", "failure", rows_total=4, rows_sent=4, rows_succeeded=4)
    ledger.record_file(first, stopped)  # the API went down: kept for the next run
    first.finished_at, first.status = "2026-11-16T00:00:09+00:00", "failure"
    ledger.finish_run(first)
    second = RunReport("acme", "run-2", "2026-11-16T01:00:00+00:00")
    ledger.start_run(second)
    done = FileReport("f.csv", "lin", "success", rows_total=6, rows_sent=6, rows_succeeded=6)
    ledger.finish_file(second, done)
    second.finished_at, second.status = "2026-11-16T01:00:30+00:00", "success"
    ledger.finish_run(second)
    ledger.close()
    samples = scrape(tmp_path)
    succeeded = ("dataflow_rows_total", (("dataflow", "acme"), ("outcome", "succeeded")))
    assert samples[succeeded] == 6
    assert samples[("dataflow_files_total", (("dataflow", "acme"), ("status", "failure")))] == 1
    assert samples[("dataflow_files_total", (("dataflow", "acme"), ("status", "success")))] == 1
    durations = ("dataflow_run_duration_seconds_sum", (("dataflow", "acme"),))
    assert samples[durations] == 39
    bucket = ("dataflow_run_duration_seconds_bucket", (("dataflow", "acme"), ("le", "15.0")))
    assert samples[bucket] == 1
    last = ("dataflow_last_success_timestamp_seconds", (("dataflow", "acme"),))
    assert samples[last] == 1794790830  # 2026-11-16T01:00:30Z


def test_schedule_serves_page_metrics_and_health(bed: Bed) -> None:
    bed.sftp.put(f"inbox/{CLEAN}", bed.keys.encrypt(clean_csv()))
    config = bed.config()
    code, report, stderr = bed.run_json(config)
    assert code == 0, stderr
    with serving(bed, "schedule", str(config)) as base:
        assert get(base + "/healthz")[::2] == (200, "ok\n")
        wait_until(lambda: "not scheduled" not in get(base + "/")[2], timeout=30)  # jobs synced
        _, _, page = get(base + "/")
        _, _, text = get(base + "/metrics")
        history = json.loads(bed.run("runs", "--json").stdout)
    dom = parse_dom(page)
    (row,) = dom.by_class("dataflow")
    (next_run,) = dom.by_class("next")
    assert row[0]["data-name"] == "acme-earned-badges"
    assert next_run[1].endswith(" 00:30 UTC")  # the scheduler's job: MON 06:00 Asia/Kolkata
    (f,) = report["files"]
    assert dom.cell("rows_succeeded", f["lineage_id"]) == "3"
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    ok = ("dataflow_rows_total", (("dataflow", "acme-earned-badges"), ("outcome", "succeeded")))
    assert values[ok] == f["rows_succeeded"] == 3
    assert history[0]["run_id"] == report["run_id"]
