"""The run-history page, /metrics and /healthz of `dataflow ui`, after real runs of the CLI.

The page is loaded in a real headless browser (Debian's chromium): a screenshot is taken (and
copied into $DATAFLOW_SCREENSHOTS when that is set, for a person to look at) and the DOM it
built is checked.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from dataflow.config import load_dataflow
from dataflow.sandbox import SAMPLE_HEADER, SAMPLE_ROWS, sample_csv

from .conftest import Bed

PARTIAL = "badges_2026-11-16.csv.gpg"
CLEAN = "badges_2026-11-23.csv.gpg"
SCREENSHOTS = os.environ.get("DATAFLOW_SCREENSHOTS")  # a folder to keep the screenshot in
COUNTS = (
    "rows_total",
    "rows_filtered",
    "rows_rejected",
    "rows_sent",
    "rows_succeeded",
    "rows_failed",
)


def clean_csv() -> bytes:
    good = [SAMPLE_ROWS[0], SAMPLE_ROWS[1], SAMPLE_ROWS[2]]
    return ("\n".join([SAMPLE_HEADER, *good]) + "\n").encode()


@contextlib.contextmanager
def serving(bed: Bed, *args: str) -> Iterator[str]:
    """`dataflow <args> --http 127.0.0.1:0` in the background; yields its base URL."""
    process = bed.spawn(*args, "--http", "127.0.0.1:0", stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        for line in process.stderr:
            found = re.search(r"serving the run-history page on (http://\S+/)", line)
            if found:
                yield found.group(1).rstrip("/")
                break
        else:
            raise AssertionError(f"the server did not start (exit {process.wait()})")
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def chromium(*args: str, url: str) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed: run scripts/setup.sh"
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--window-size=1366,900",
                *args,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class Dom(HTMLParser):
    """Every element's attributes and text, with the lineage id of the file row it is in."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict[str, str], list[str], str]] = []
        self.elements: list[tuple[dict[str, str], str, str]] = []  # attrs, text, lineage id

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("meta", "input", "br", "link"):
            return
        values = {k: v or "" for k, v in attrs}
        lineage = values.get("data-lineage-id") or (self.stack[-1][3] if self.stack else "")
        self.stack.append((tag, values, [], lineage))

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            name, attrs, text, lineage = self.stack.pop()
            content = "".join(text)
            self.elements.append((attrs, content, lineage))
            if self.stack:
                self.stack[-1][2].append(content)
            if name == tag:
                return

    def handle_data(self, data: str) -> None:
        if self.stack:
            self.stack[-1][2].append(data)

    def by_class(self, cls: str, lineage: str | None = None) -> list[tuple[dict[str, str], str]]:
        return [
            (a, t)
            for a, t, in_file in self.elements
            if cls in a.get("class", "").split() and (lineage is None or in_file == lineage)
        ]

    def cell(self, cls: str, lineage: str) -> str:
        (found,) = self.by_class(cls, lineage)
        return found[1]

    def errors(self, lineage: str) -> list[tuple[str, str, str, int]]:
        columns = [
            [t for _, t in self.by_class(c, lineage)] for c in ("stage", "code", "message", "count")
        ]
        assert len({len(c) for c in columns}) == 1
        return [
            (stage, "" if code == "-" else code, message, int(count))
            for stage, code, message, count in zip(*columns, strict=True)
        ]


def parse_dom(text: str) -> Dom:
    dom = Dom()
    dom.feed(text)
    dom.close()
    return dom


def run_two_dataflows(bed: Bed) -> dict[str, dict[str, Any]]:
    """acme-clean: one success; acme-earned-badges: one partial with rejected rows."""
    reports = {}
    bed.sftp.put(f"inbox/{CLEAN}", bed.keys.encrypt(clean_csv()))
    clean = bed.config(name="acme-clean", file="clean.yaml")
    code, reports["acme-clean"], stderr = bed.run_json(clean)
    assert code == 0, stderr
    reports["acme-clean"]["api_requests"] = len(bed.api.requests())
    bed.sftp.put(f"inbox/{PARTIAL}", bed.keys.encrypt(sample_csv()))
    code, reports["acme-earned-badges"], stderr = bed.run_json(bed.config())
    assert code == 3, stderr
    requests = len(bed.api.requests()) - reports["acme-clean"]["api_requests"]
    reports["acme-earned-badges"]["api_requests"] = requests
    return reports


def test_page_in_a_browser_after_real_runs(bed: Bed, tmp_path: Path) -> None:
    reports = run_two_dataflows(bed)
    (partial,) = reports["acme-earned-badges"]["files"]
    (clean,) = reports["acme-clean"]["files"]
    assert partial["rows_rejected"] > 0 and partial["error_file"]
    screenshot = tmp_path / "run-history.png"

    with serving(bed, "ui", str(bed.dir)) as base:
        now = datetime.now(UTC)
        chromium(f"--screenshot={screenshot}", url=base + "/")
        dom_text = chromium("--dump-dom", url=base + "/")

    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if SCREENSHOTS:
        shutil.copy(screenshot, Path(SCREENSHOTS) / "run-history.png")

    dom = parse_dom(dom_text)
    # every dataflow, with its next run (from its trigger), last outcome and accuracy
    dataflows = {a["data-name"]: a for a, _ in dom.by_class("dataflow") if "data-name" in a}
    assert set(dataflows) == {"acme-clean", "acme-earned-badges"}
    trigger = load_dataflow(bed.dir / "flow.yaml", bed.env).trigger
    assert trigger is not None
    expected_next = trigger.next_fire(None, now)
    assert expected_next is not None
    assert expected_next.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") in [
        t for _, t in dom.by_class("next")
    ]
    outcomes = [t for _, t in dom.by_class("last-outcome")]
    assert sorted(outcomes) == ["partial", "success"]
    assert "40.0%" in [t for _, t in dom.by_class("accuracy")]

    # each run's files, counts, error file path and error summary
    for report, f in ((reports["acme-earned-badges"], partial), (reports["acme-clean"], clean)):
        assert f'data-run-id="{report["run_id"]}"' in dom_text
        lineage = f["lineage_id"]
        assert dom.cell("name", lineage) == f["name"]
        assert {k: int(dom.cell(k, lineage)) for k in COUNTS} == {k: f[k] for k in COUNTS}
        assert dom.cell("processed", lineage) == f["processed_path"]
    assert dom.cell("error-file", partial["lineage_id"]) == partial["error_file"]
    assert dom.cell("error-file", clean["lineage_id"]) == "-"

    summary = dom.errors(partial["lineage_id"])
    error_file = bed.sftp.root / "errors" / partial["error_file"].rsplit("/", 1)[1]
    written = list(csv.DictReader(io.StringIO(error_file.read_text())))
    assert (
        sum(n for *_, n in summary)
        == len(written)
        == (partial["rows_rejected"] + partial["rows_failed"])
    )
    assert {stage for stage, *_ in summary} == {"transform", "destination"}
    for stage, code, message, count in summary:
        same = [
            r
            for r in written
            if r["error_stage"] == stage
            and r["status_code"] == code
            and r["error_message"].startswith(message)
        ]
        assert len(same) == count, (stage, code, message)
    assert not dom.errors(clean["lineage_id"])


def test_metrics_equal_the_run_reports(bed: Bed) -> None:
    reports = run_two_dataflows(bed)
    with serving(bed, "ui") as base:
        status, content_type, text = get(base + "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    for name, report in reports.items():
        (f,) = report["files"]
        for outcome in ("succeeded", "rejected", "failed", "filtered"):
            assert (
                value("dataflow_rows_total", dataflow=name, outcome=outcome) == f[f"rows_{outcome}"]
            ), (name, outcome)
        assert value("dataflow_files_total", dataflow=name, status=f["status"]) == 1
        api = sum(
            v
            for (metric, labels), v in samples.items()
            if metric == "dataflow_api_requests_total" and ("dataflow", name) in labels
        )
        assert api == report["api_requests"] > 0
        assert value("dataflow_api_requests_total", dataflow=name, status_code="200") == api
        assert value("dataflow_run_duration_seconds_count", dataflow=name) == 1
        assert value("dataflow_run_duration_seconds_bucket", dataflow=name, le="+Inf") == 1
        assert value("dataflow_runs_total", dataflow=name, status=report["status"]) == 1
    finished = datetime.fromisoformat(reports["acme-clean"]["finished_at"]).timestamp()
    assert value("dataflow_last_success_timestamp_seconds", dataflow="acme-clean") == finished
    never = ("dataflow_last_success_timestamp_seconds", (("dataflow", "acme-earned-badges"),))
    assert never not in samples  # partial is not success


def test_healthz_ok_then_503_when_the_state_database_is_unreadable(bed: Bed) -> None:
    state = bed.dir / "state"
    with serving(bed, "ui") as base:
        assert get(base + "/healthz")[::2] == (200, "ok\n")
        for suffix in ("-wal", "-shm"):
            (state / f"ledger.db{suffix}").unlink(missing_ok=True)
        (state / "ledger.db").write_bytes(b"this is not a database" * 100)
        status, _, text = get(base + "/healthz")
        assert status == 503
        assert "state directory" in text and "Traceback" not in text
        assert get(base + "/")[0] == 503
        assert get(base + "/nowhere")[0] in (404, 503)


def test_page_escapes_values_and_filters_by_dataflow(bed: Bed) -> None:
    from dataflow.ledger import Ledger
    from dataflow.report import FileReport, RunReport

    state = bed.dir / "state"
    state.mkdir()
    ledger = Ledger(state)
    run = RunReport("hostile", "run-1", "2026-11-16T00:00:00+00:00")
    ledger.start_run(run)
    f = FileReport(name="<script>alert(1)</script>.csv", lineage_id="lin-1", status="partial")
    ledger.finish_file(run, f, [("transform", "", "<b>bad</b> & worse", 2)])
    run.finished_at, run.status = "2026-11-16T00:00:05+00:00", "partial"
    ledger.finish_run(run)
    other = RunReport("other", "run-2", "2026-11-16T00:00:00+00:00")
    ledger.start_run(other)
    ledger.close()
    with serving(bed, "ui") as base:
        _, _, page = get(base + "/")
        _, _, only = get(base + "/?dataflow=other")
    assert "<script>alert(1)</script>" not in page and "<b>bad</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.csv" in page
    assert "&lt;b&gt;bad&lt;/b&gt; &amp; worse" in page
    assert 'data-run-id="run-1"' in page and 'data-run-id="run-2"' in page
    assert 'data-run-id="run-1"' not in only and 'data-run-id="run-2"' in only


def test_runs_command_table_date_window_and_error_summary(bed: Bed) -> None:
    reports = run_two_dataflows(bed)
    (partial,) = reports["acme-earned-badges"]["files"]
    today = reports["acme-clean"]["started_at"][:10]

    table = bed.run("runs", "--table", "--errors", env={"COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    assert "dataflow runs" in table.stdout and "┃" in table.stdout  # a rich table
    assert "acme-clean" in table.stdout and "acme-earned-badges" in table.stdout
    assert "error summary" in table.stdout and table.stderr == ""
    row = next(line for line in table.stdout.splitlines() if "1054" in line)
    assert "destination" in row and "Badge meta BADGE-UNKNOWN not found" in row

    def runs_json(*args: str) -> list[dict[str, Any]]:
        result = bed.run("runs", "--json", *args)
        assert result.returncode == 0, result.stderr
        return list(json.loads(result.stdout))

    assert len(runs_json("--since", today, "--until", today)) == 2
    assert runs_json("--until", "2000-01-01") == [] == runs_json("--since", "2999-01-01")
    assert bed.run("runs", "--since", "yesterday").returncode == 2
    plain = runs_json()
    assert all("errors" not in f for run in plain for f in run["files"])  # as before
    with_errors = runs_json("acme-earned-badges", "--errors")
    (f,) = with_errors[0]["files"]
    assert sum(e["count"] for e in f["errors"]) == partial["rows_rejected"] + partial["rows_failed"]
    lines = bed.run("runs", "acme-earned-badges", "--errors").stdout.splitlines()
    assert lines[1].strip().startswith(f"{PARTIAL}: partial  total 10")  # piped: plain lines
    assert any(line.strip().startswith("1 x transform") for line in lines[2:])
