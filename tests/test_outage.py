"""An API that is down, or answers a maintenance page, never writes rows off.

A row is final only on a verdict from the API about that row. Rows whose requests used up
their retries during an outage are not checkpointed: the kept file is resumed and they are
sent again. A file none of whose requests got a verdict is kept whole for the next run.
All over real parts: sshd, gpg, the emulator over TCP, the CLI as a subprocess.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

from .conftest import Bed, counts, wait_until

NAME = "badges_outage.csv.gpg"
HEADER = "badge_id,customer_id,event_date,expires_at\n"
SINK = {"batch_size": 3, "concurrency": 2, "max_retries": 1, "max_consecutive_failures": 3}
MAINTENANCE = (
    "<!DOCTYPE html><html><head><title>Scheduled maintenance</title></head>"
    "<body><h1>We'll be back soon</h1><p>The service is down for maintenance.</p></body></html>"
)


def put(bed: Bed, customers: list[int]) -> None:
    rows = "".join(f"BADGE-GOLD,{c},16/11/2026 09:30,1798761600\n" for c in customers)
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt((HEADER + rows).encode()))


def config(bed: Bed) -> Path:
    return bed.config(sink=SINK)


def assert_kept(bed: Bed) -> None:
    assert bed.sftp.files("inbox") == [NAME]
    assert bed.sftp.files("processed") == [] and bed.sftp.files("errors") == []


def assert_all_accepted_once(bed: Bed, customers: list[int]) -> None:
    code, report, stderr = bed.run_json(config(bed))
    assert code == 0, stderr
    (f,) = report["files"]
    n = len(customers)
    assert (f["status"], *counts(f)) == ("success", n, 0, n, n, 0)
    assert f["error_file"] is None and bed.sftp.files("errors") == []
    assert Counter(r["customerId"] for r in bed.api.received()) == Counter(customers)
    assert bed.sftp.files("inbox") == [] and bed.sftp.files("processed") == [NAME]


def test_rows_failed_during_an_outage_are_sent_again_when_the_file_resumes(bed: Bed) -> None:
    customers = [7001 + i for i in range(60)]  # 20 requests
    put(bed, customers)
    bed.api.configure(latency_ms=120)
    proc = bed.spawn("run", str(config(bed)), "--json", stderr=subprocess.PIPE)
    wait_until(lambda: len(bed.api.requests()) >= 4)
    bed.api.configure(error_rate=1.0)  # the API goes down mid-file: every request 503
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    report = json.loads(out)
    assert "looks down" in report["reason"]
    assert_kept(bed)
    accepted = len(bed.api.received())
    assert 0 < accepted < len(customers)  # part of the file went through before the outage

    bed.api.configure(error_rate=0.0, latency_ms=0)  # healed
    assert_all_accepted_once(bed, customers)


def test_a_small_file_is_kept_when_the_api_is_down(bed: Bed) -> None:
    customers = [7101 + i for i in range(6)]  # 2 requests: fewer than max_consecutive_failures
    put(bed, customers)
    bed.api.configure(error_rate=1.0)
    code, report, stderr = bed.run_json(config(bed))
    assert code == 1, stderr
    assert "the API confirmed nothing" in report["reason"]
    assert "check that the API is up" in report["reason"]
    assert "the file is kept" in report["reason"]
    assert "Traceback" not in stderr
    assert_kept(bed)
    assert bed.api.received() == []

    bed.api.configure(error_rate=0.0)
    assert_all_accepted_once(bed, customers)


def test_a_maintenance_page_answered_with_http_200_does_not_consume_the_file(bed: Bed) -> None:
    customers = [7201 + i for i in range(6)]
    put(bed, customers)
    page = {"status": 200, "text": MAINTENANCE, "content_type": "text/html"}
    bed.api.configure(answer_next=[page] * 10)  # more than the run will send
    code, report, stderr = bed.run_json(config(bed))
    assert code == 1, stderr
    assert "the API confirmed nothing" in report["reason"]
    assert "HTTP 200, but the body is not JSON ('<!DOCTYPE html>" in report["reason"]
    assert_kept(bed)
    (f,) = report["files"]
    assert f["status"] == "failure" and f["processed_path"] is None

    bed.api.configure(answer_next=[])
    assert_all_accepted_once(bed, customers)


def test_rows_without_a_verdict_in_a_finished_file_are_failed_once(bed: Bed) -> None:
    """The file finishes (the API answered most requests): the unconfirmed rows are failed,
    in the error file once each, and the counters add up."""
    customers = [7301 + i for i in range(12)]  # 4 requests
    put(bed, customers)
    bed.api.configure(fail_next=[503, 503])  # the first request uses up its 2 attempts
    code, report, stderr = bed.run_json(bed.config(sink={**SINK, "concurrency": 1}))
    assert code == 3, stderr
    (f,) = report["files"]
    assert counts(f) == (12, 0, 12, 9, 3)
    lines = (bed.sftp.root / f["error_file"].lstrip("/")).read_text().splitlines()
    assert [line.split(",")[4:7] for line in lines[1:]] == [
        [str(n), "destination", "503"] for n in (2, 3, 4)
    ]
    assert sorted(r["customerId"] for r in bed.api.received()) == customers[3:]
