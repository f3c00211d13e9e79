"""kill -9 at every stage of a run, then run again: nothing lost, nothing sent twice.

Crash points are real SIGKILLs, placed by ``DATAFLOW_CRASH_AT`` (dataflow.faults); one test
kills the process from outside on a timer, with requests in flight.
"""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from .conftest import Bed, bulk_mapping, counts, wait_until

NAME = "badges_crash.csv.gpg"
GOOD = [f"BADGE-GOLD,{5001 + i},16/11/2026 09:30,1798761600" for i in range(40)]
ROWS = [
    *GOOD[:10],
    "BADGE-GOLD,abc,16/11/2026 09:30,1798761600",
    *GOOD[10:25],
    "BADGE-UNKNOWN,6001,16/11/2026 09:30,1798761600",
    *GOOD[25:],
    "short,line",
]
GOOD_IDS = [5001 + i for i in range(40)]
BATCH, CONCURRENCY = 3, 2


def put(bed: Bed) -> None:
    data = ("badge_id,customer_id,event_date,expires_at\n" + "\n".join(ROWS) + "\n").encode()
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(data))


def config(bed: Bed):  # type: ignore[no-untyped-def]
    return bed.config(sink={"batch_size": BATCH, "concurrency": CONCURRENCY})


def error_files(bed: Bed) -> list[str]:
    return [n for n in bed.sftp.files("errors") if n.startswith("result_")]


def assert_finished_exactly_once(bed: Bed, report: dict, max_resent: int = 0) -> None:
    (f,) = report["files"]
    assert counts(f) == (43, 2, 41, 40, 1)
    seen = Counter(r["customerId"] for r in bed.api.received())
    assert set(seen) == set(GOOD_IDS)
    assert sum(seen.values()) - len(GOOD_IDS) <= max_resent
    assert bed.sftp.files("inbox") == []
    assert bed.sftp.files("processed") == [NAME]
    (name,) = error_files(bed)
    assert [n for n in bed.sftp.files("errors") if n.startswith(".dataflow-")] == []
    rows = list(csv.reader(io.StringIO((bed.sftp.root / "errors" / name).read_text())))
    lines = [int(r[4]) for r in rows[1:]]
    assert sorted(lines) == [12, 28, 44]  # each rejected/failed row exactly once
    assert f["error_file"] == f"/errors/{name}"


def crash(bed: Bed, point: str) -> None:
    result = bed.run("run", str(config(bed)), "--json", env={"DATAFLOW_CRASH_AT": point})
    assert result.returncode == -signal.SIGKILL, result.stderr


def rerun(bed: Bed) -> dict:
    code, report, stderr = bed.run_json(config(bed))
    assert code == 3, stderr
    return report


@pytest.mark.parametrize("point", ["downloading:2", "downloaded", "decrypted"])
def test_crash_before_sending(bed: Bed, point: str) -> None:
    put(bed)
    crash(bed, point)
    assert bed.sftp.files("inbox") == [NAME]
    assert bed.sftp.files("errors") == [] and bed.api.requests() == []
    assert_finished_exactly_once(bed, rerun(bed))


def test_kill_9_during_decryption_leaves_no_plaintext_behind(bed: Bed) -> None:
    big = "".join(f"BADGE-GOLD,{100000 + i},16/11/2026 09:30,1798761600\n" for i in range(150000))
    data = ("badge_id,customer_id,event_date,expires_at\n" + big).encode()
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(data))
    proc = bed.spawn("run", str(config(bed)))
    pattern = f"dataflow-{proc.pid}-*/file-*/decrypted"
    wait_until(lambda: list(Path(tempfile.gettempdir()).glob(pattern)))
    (plaintext,) = Path(tempfile.gettempdir()).glob(pattern)  # gpg is writing it now
    proc.kill()
    proc.wait()
    homes = list(Path("/tmp").glob(f"dfg{proc.pid}-*"))
    assert homes  # the killed run could not clean up after itself...
    idle = bed.config(source={"filename_pattern": "nothing-matches"}, file="idle.yaml")
    code, _, stderr = bed.run_json(idle)
    assert code == 0, stderr
    # ...the next run removed its temp dir (with the partial plaintext) and its GnuPG home
    assert not plaintext.exists()
    assert not any(h.exists() for h in homes)
    assert bed.sftp.files("inbox") == [NAME]


def test_crash_mid_send_resends_at_most_the_requests_in_flight(bed: Bed) -> None:
    put(bed)
    crash(bed, "acked:4")
    acknowledged = len(bed.api.received())
    assert acknowledged >= 4 * BATCH - BATCH  # the fourth may hold the unknown-badge row
    assert bed.sftp.files("inbox") == [NAME] and error_files(bed) == []
    before = len(bed.api.requests())
    report = rerun(bed)
    # rows acknowledged before the crash are not sent again: only the in-flight ones may be
    assert_finished_exactly_once(bed, report, max_resent=CONCURRENCY * BATCH)
    resent_requests = len(bed.api.requests()) - before
    assert resent_requests <= -(-(41 - 4 * BATCH) // BATCH) + CONCURRENCY


def test_crash_with_the_error_file_under_its_temporary_name(bed: Bed) -> None:
    put(bed)
    crash(bed, "error_temp")
    assert error_files(bed) == []  # a half-done upload is never visible under its final name
    assert [n for n in bed.sftp.files("errors") if n.startswith(".dataflow-")] != []
    sent = len(bed.api.requests())
    assert_finished_exactly_once(bed, rerun(bed))
    assert len(bed.api.requests()) == sent  # everything was acknowledged: nothing re-sent


def test_crash_after_the_error_file_before_the_move(bed: Bed) -> None:
    put(bed)
    crash(bed, "error_uploaded")
    assert len(error_files(bed)) == 1 and bed.sftp.files("inbox") == [NAME]
    sent = len(bed.api.requests())
    assert_finished_exactly_once(bed, rerun(bed))  # still exactly one error file
    assert len(bed.api.requests()) == sent


def test_crash_after_the_move(bed: Bed) -> None:
    put(bed)
    crash(bed, "moved")
    assert bed.sftp.files("processed") == [NAME] and bed.sftp.files("inbox") == []
    code, report, _ = bed.run_json(config(bed))
    assert (code, report["files"]) == (0, [])
    assert Counter(r["customerId"] for r in bed.api.received()) == Counter(GOOD_IDS)


def test_kill_9_from_outside_with_requests_in_flight(bed: Bed) -> None:
    put(bed)
    bed.api.configure(latency_ms=150)
    proc = bed.spawn("run", str(config(bed)))
    wait_until(lambda: len(bed.api.requests()) >= 5)
    proc.kill()
    proc.wait()
    bed.api.configure(latency_ms=0)
    assert bed.sftp.files("inbox") == [NAME]
    assert_finished_exactly_once(bed, rerun(bed), max_resent=CONCURRENCY * BATCH)


def test_sigterm_finishes_in_flight_requests_then_resumes_without_duplicates(bed: Bed) -> None:
    put(bed)
    bed.api.configure(latency_ms=150)
    proc = bed.spawn("run", str(config(bed)), "--json", stderr=subprocess.PIPE)
    wait_until(lambda: len(bed.api.requests()) >= 4)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    report = json.loads(out)
    assert "stopped before the file was finished" in report["reason"]
    assert bed.sftp.files("inbox") == [NAME]
    bed.api.configure(latency_ms=0)
    resumed = rerun(bed)
    assert_finished_exactly_once(bed, resumed)  # in-flight requests were acknowledged
    # one lineage for the file across the interrupted run and the one that finished it
    assert resumed["files"][0]["lineage_id"] == report["files"][0]["lineage_id"]


def test_two_runs_of_one_dataflow_never_overlap(bed: Bed) -> None:
    put(bed)
    bed.api.configure(latency_ms=500)  # the first run lasts several seconds
    first = bed.spawn("run", str(config(bed)), "--json")
    wait_until(lambda: bed.api.requests())
    code, second, stderr = bed.run_json(config(bed))
    assert code == 0, stderr
    assert second["status"] == "no_files" and second["files"] == []
    assert "another run of acme-earned-badges is in progress" in second["reason"]
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 3
    assert_finished_exactly_once(bed, json.loads(out))


BULK_MAPPING = bulk_mapping({"const": "Loyalty"}, {"const": "weekly-import"})


def test_sigterm_while_requests_time_out_keeps_their_rows_for_the_resumed_run(bed: Bed) -> None:
    """SIGTERM while the requests in flight are timing out (the API is too slow): they use up
    their retries after the signal, which is no verdict about their rows; the file is kept,
    and the resumed run sends them again (bulk requestIds: the server answers 809 for those it
    applied late, so nothing is issued twice)."""
    put(bed)
    flow = bed.config(
        template="earn_badges_bulk",
        transform=BULK_MAPPING,
        sink={"batch_size": BATCH, "concurrency": CONCURRENCY, "max_retries": 0},
    )
    slow = bed.config(
        template="earn_badges_bulk",
        transform=BULK_MAPPING,
        sink={
            "batch_size": BATCH,
            "concurrency": CONCURRENCY,
            "max_retries": 0,
            "timeout_seconds": 1,
        },
        file="slow.yaml",
    )
    bed.api.configure(latency_ms=1500)  # every answer comes after the client's timeout
    proc = bed.spawn("run", str(slow), "--json", stderr=subprocess.PIPE)
    wait_until(lambda: len(bed.api.requests()) >= CONCURRENCY)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "received SIGTERM: finishing the requests in flight, then stopping" in err
    assert "Traceback" not in err
    report = json.loads(out)
    assert "stopped before the file was finished" in report["reason"]
    assert bed.sftp.files("inbox") == [NAME] and error_files(bed) == []
    assert len(bed.api.requests()) == CONCURRENCY  # only those in flight left
    wait_until(lambda: len(bed.api.earned()) == CONCURRENCY * BATCH)  # applied, answers lost

    bed.api.configure(latency_ms=0)
    code, resumed, stderr = bed.run_json(flow)
    assert code == 3, stderr
    (f,) = resumed["files"]
    assert counts(f) == (43, 2, 41, 40, 1)  # 40 issued, the unknown badge failed (1054)
    assert Counter(e["customerId"] for e in bed.api.earned()) == Counter(GOOD_IDS)
    (name,) = error_files(bed)
    rows = list(csv.reader(io.StringIO((bed.sftp.root / "errors" / name).read_text())))
    assert sorted(int(r[4]) for r in rows[1:]) == [12, 28, 44]


def test_rows_settled_without_a_verdict_are_not_sent_again_after_the_error_file_went_out(
    bed: Bed,
) -> None:
    """A request that used up its retries (no verdict) in a file that then finished: its rows
    are reported as failed in the error file; a crash after that upload must not send them
    again when the file is resumed (the error file already told the vendor)."""
    put(bed)
    bed.api.configure(fail_next=[503, 503])  # the first request: 503 twice, never applied
    flow = bed.config(sink={"batch_size": BATCH, "concurrency": 1, "max_retries": 1})
    killed = bed.run("run", str(flow), "--json", env={"DATAFLOW_CRASH_AT": "error_uploaded"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (name,) = error_files(bed)
    code, report, stderr = bed.run_json(flow)
    assert code == 3, stderr
    (f,) = report["files"]
    assert f["error_file"] == f"/errors/{name}"  # the upload before the crash, not a second
    assert error_files(bed) == [name]
    seen = Counter(r["customerId"] for r in bed.api.received())
    assert set(seen) == set(GOOD_IDS) - {5001, 5002, 5003}  # the 503'd rows were not resent
    assert max(seen.values()) == 1
    rows = list(csv.reader(io.StringIO((bed.sftp.root / "errors" / name).read_text())))
    assert sorted(int(r[4]) for r in rows[1:]) == [2, 3, 4, 12, 28, 44]
    assert (f["rows_succeeded"], f["rows_failed"], f["rows_rejected"]) == (37, 4, 2)
