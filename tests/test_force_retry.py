"""`dataflow run --force` and `dataflow retry`, end to end: real sshd, gpg, the emulator over
TCP and the CLI as a subprocess.

A send again of a content (forced, or a retry of the rows the API failed) is a new lineage
whose bulk requestIds differ from the first send's (the emulator answers 809 for a repeated
requestId, which would swallow the rows) and are deterministic for that send, so a killed
send resumes without issuing twice (``DATAFLOW_CRASH_AT``: a real SIGKILL).
"""

from __future__ import annotations

import csv
import io
import json
import re
import secrets
import signal
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dataflow.checkpoint import SCHEMA as CHECKPOINT_SCHEMA
from dataflow.ledger import SCHEMA, Ledger, RetryRefused

from .conftest import Bed, bulk_mapping, counts

NAME = "badges_again.csv.gpg"
BULK_HEADER = "badge_id,customer_id,event_date,owner_type,reference_id"
BULK_MAPPING = bulk_mapping()
BULK_CUSTOMERS = list(range(8101, 8111))


def put(bed: Bed, lines: list[str], header: str) -> bytes:
    """Put the file; the same bytes again with `put_again` (encryption is not deterministic)."""
    data = bed.keys.encrypt(("\n".join([header, *lines]) + "\n").encode())
    return put_again(bed, data)


def put_again(bed: Bed, data: bytes) -> bytes:
    bed.sftp.put(f"inbox/{NAME}", data)
    return data


def bulk_flow(bed: Bed, concurrency: int = 2) -> Any:
    return bed.config(
        template="earn_badges_bulk",
        transform=BULK_MAPPING,
        sink={"batch_size": 2, "concurrency": concurrency},
    )


def bulk_rows(meta: str, customers: list[int]) -> list[str]:
    return [f"{meta},{c},16/11/2026 09:30,Loyalty,ref-1" for c in customers]


def earn_requests(bed: Bed) -> list[dict[str, Any]]:
    return [r for r in bed.api.requests() if r["path"].endswith("/earnBulk")]


def error_rows(bed: Bed, path: str) -> dict[int, list[str]]:
    rows = list(csv.reader(io.StringIO((bed.sftp.root / path.lstrip("/")).read_text())))
    at = rows[0].index("LINE_NO")
    return {int(r[at]): r[at + 1 :] for r in rows[1:]}


def history(bed: Bed) -> list[dict[str, Any]]:
    result = bed.run("runs", "--json")
    assert result.returncode == 0, result.stderr
    return [f for run in json.loads(result.stdout) for f in run["files"]]


def test_force_sends_a_completed_file_again_with_new_request_ids(bed: Bed) -> None:
    bed.api.configure(badge_metas=["BADGE-GOLD"])
    rows = bulk_rows("BADGE-GOLD", BULK_CUSTOMERS)
    data = put(bed, rows, BULK_HEADER)
    flow = bulk_flow(bed)
    code, first, stderr = bed.run_json(flow)
    assert code == 0, stderr
    first_ids = {r["requestId"] for r in earn_requests(bed)}
    assert len(first_ids) == 5

    put_again(bed, data)  # the same content again
    code, plain, stderr = bed.run_json(flow)
    assert code == 0, stderr
    assert plain["files"][0]["status"] == "duplicate"  # without --force: not sent
    assert len(earn_requests(bed)) == 5

    put_again(bed, data)
    code, forced, stderr = bed.run_json(flow, "--force")
    assert code == 0, stderr
    (f,) = forced["files"]
    assert f["status"] == "success"
    assert counts(f) == (10, 0, 10, 10, 0)
    assert f["lineage_id"] != first["files"][0]["lineage_id"]
    assert f["send_no"] == 1
    requests = earn_requests(bed)[5:]
    forced_ids = {r["requestId"] for r in requests}
    assert len(forced_ids) == 5 and not forced_ids & first_ids
    assert [r["status"] for r in requests] == [200] * 5  # none swallowed as 809
    assert Counter(e["customerId"] for e in bed.api.earned()) == dict.fromkeys(BULK_CUSTOMERS, 2)
    assert bed.sftp.files("inbox") == []
    assert len(bed.sftp.files("processed")) == 3  # nothing overwritten
    recorded = {r["lineage_id"]: r for r in history(bed)}
    assert recorded[f["lineage_id"]]["send_no"] == 1


def test_a_killed_forced_run_resumes_without_issuing_twice(bed: Bed) -> None:
    bed.api.configure(badge_metas=["BADGE-GOLD"])
    rows = bulk_rows("BADGE-GOLD", BULK_CUSTOMERS)
    data = put(bed, rows, BULK_HEADER)
    flow = bulk_flow(bed)
    code, _, stderr = bed.run_json(flow)
    assert code == 0, stderr
    first_ids = {r["requestId"] for r in earn_requests(bed)}

    put_again(bed, data)
    killed = bed.run("run", str(flow), "--force", env={"DATAFLOW_CRASH_AT": "acked:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert bed.sftp.files("inbox") == [NAME]
    before = len(earn_requests(bed))

    code, resumed, stderr = bed.run_json(flow, "--force")
    assert code == 0, stderr
    (f,) = resumed["files"]
    assert counts(f) == (10, 0, 10, 10, 0)
    assert f["send_no"] == 1  # the number recorded before the first request of the killed run
    forced = earn_requests(bed)[5:]
    assert not {r["requestId"] for r in forced} & first_ids
    assert len({r["requestId"] for r in forced}) == 5  # the same ids in both attempts
    killed_ids = {r["requestId"] for r in earn_requests(bed)[5:before]}
    for again in earn_requests(bed)[before:]:
        if again["requestId"] in killed_ids:
            assert again["status"] == 400  # 809: recognised, not issued again
    # every customer earned once by the first send and once by the forced one, never more
    assert Counter(e["customerId"] for e in bed.api.earned()) == dict.fromkeys(BULK_CUSTOMERS, 2)
    assert bed.sftp.files("inbox") == []


IMPORT_HEADER = "badge_id,customer_id,event_date,expires_at"


def import_rows(fixed: str, broken: str) -> list[str]:
    return [
        *(f"BADGE-GOLD,{7001 + i},16/11/2026 09:30,1798761600" for i in range(5)),  # 2-6
        f"{fixed},7006,16/11/2026 09:30,1798761600",  # 7: 1054, until the meta exists
        "BADGE-GOLD,abc,16/11/2026 09:30,1798761600",  # 8: rejected by the transform
        f"{fixed},7007,16/11/2026 09:30,1798761600",  # 9: 1054, until the meta exists
        f"{broken},7008,16/11/2026 09:30,1798761600",  # 10: 1054 for good
        "BADGE-GOLD,7009,16/11/2026 09:30,1798761600",  # 11
    ]


def test_retry_sends_only_the_rows_the_api_failed(bed: Bed) -> None:
    fixed, broken = (f"BADGE-{kind}-{secrets.token_hex(4)}" for kind in ("FIX", "NEVER"))
    put(bed, import_rows(fixed, broken), IMPORT_HEADER)
    flow = bed.config()
    code, first, stderr = bed.run_json(flow)
    assert code == 3, stderr
    (original,) = first["files"]
    assert counts(original) == (10, 1, 9, 6, 3)
    assert sorted(error_rows(bed, original["error_file"])) == [7, 8, 9, 10]
    lineage = original["lineage_id"]

    bed.api.configure(badge_metas=[fixed])  # the API is fixed for one badge
    sent_before = len(bed.api.requests())
    result = bed.run("retry", str(flow), lineage, "--json")
    assert result.returncode == 3, result.stderr
    (f,) = json.loads(result.stdout)["files"]
    assert counts(f) == (3, 0, 3, 2, 1)
    assert f["status"] == "partial"
    assert f["retry_of"] == lineage and f["lineage_id"] != lineage
    assert f["processed_path"] == original["processed_path"]  # the original stays there
    accepted = sorted(r["customerId"] for r in bed.api.received()[6:])
    assert accepted == [7006, 7007]  # accepted now (7008 is refused again)
    assert sum(r["records"] for r in bed.api.requests()[sent_before:]) == 3  # only lines 7, 9, 10
    assert f["error_file"] and f["error_file"] != original["error_file"]
    assert error_rows(bed, f["error_file"]) == {
        10: ["destination", "1054", f"Badge meta {broken} not found or inactive"]
    }
    assert sorted(error_rows(bed, original["error_file"])) == [7, 8, 9, 10]  # left as it was
    assert bed.sftp.files("processed") == [NAME]
    recorded = {r["lineage_id"]: r for r in history(bed)}
    assert recorded[f["lineage_id"]]["retry_of"] == lineage

    again = bed.run("retry", str(flow), lineage)  # what still fails is the retry's now
    assert again.returncode == 2
    assert f"already retried as lineage {f['lineage_id']}" in again.stderr

    bed.api.configure(badge_metas=[broken])
    last = bed.run("retry", str(flow), f["lineage_id"], "--json")
    assert last.returncode == 0, last.stderr
    (g,) = json.loads(last.stdout)["files"]
    assert counts(g) == (1, 0, 1, 1, 0) and g["error_file"] is None
    assert g["retry_of"] == f["lineage_id"]
    assert Counter(r["customerId"] for r in bed.api.received()) == dict.fromkeys(
        [7001, 7002, 7003, 7004, 7005, 7006, 7007, 7008, 7009], 1
    )


def test_a_killed_bulk_retry_resumes_without_issuing_twice(bed: Bed) -> None:
    fixed = f"BADGE-FIX-{secrets.token_hex(4)}"
    bed.api.configure(badge_metas=["BADGE-GOLD"])
    failing = list(range(8201, 8209))
    put(bed, [*bulk_rows("BADGE-GOLD", [8200]), *bulk_rows(fixed, failing)], BULK_HEADER)
    flow = bulk_flow(bed, concurrency=1)
    code, first, stderr = bed.run_json(flow)
    assert code == 3, stderr
    (original,) = first["files"]
    assert counts(original) == (9, 0, 9, 1, 8)
    first_ids = {r["requestId"] for r in earn_requests(bed)}

    bed.api.configure(badge_metas=[fixed])
    lineage = original["lineage_id"]
    killed = bed.run("retry", str(flow), lineage, env={"DATAFLOW_CRASH_AT": "acked:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    result = bed.run("retry", str(flow), lineage, "--json")
    assert result.returncode == 0, result.stderr
    (f,) = json.loads(result.stdout)["files"]
    assert counts(f) == (8, 0, 8, 8, 0)
    retry_ids = {r["requestId"] for r in earn_requests(bed)} - first_ids
    assert len(retry_ids) == 4  # 8 customers in requests of 2, the same ids after the kill
    earned = Counter(e["customerId"] for e in bed.api.earned())
    assert earned == dict.fromkeys([8200, *failing], 1)  # nobody issued twice


def test_retry_of_an_unknown_lineage_says_so(bed: Bed) -> None:
    result = bed.run("retry", str(bed.config()), "no-such-lineage")
    assert result.returncode == 2
    assert "no file with lineage no-such-lineage" in result.stderr
    assert "Traceback" not in result.stderr
    assert bed.api.requests() == []


def test_an_older_state_directory_gains_the_new_columns(tmp_path: Path) -> None:
    """A ledger.db written before sends again were numbered opens, keeps its history, and
    its interrupted checkpoint (keyed by the content hash) still resumes."""
    new_columns = re.compile(r"^\s*(send_no|retry_of|content|error_digests|ids) .*\n", re.MULTILINE)
    old = new_columns.sub("", SCHEMA + CHECKPOINT_SCHEMA)
    assert "send_no" not in old
    db = sqlite3.connect(tmp_path / "ledger.db")
    db.executescript(old)
    db.execute(
        "INSERT INTO runs VALUES ('r1', 'flow', '2026-11-16T06:00:00+00:00', NULL, "
        "'success', 0, NULL)"
    )
    db.execute(
        "INSERT INTO files VALUES ('r1', 'flow', 'a.csv', 1, 'aa', 'l1', 'success', "
        "1, 0, 0, 1, 1, 0, '/processed/a.csv', NULL, NULL)"
    )
    db.execute("INSERT INTO progress VALUES ('flow', 'bb', 'b.csv', 'l2', NULL, NULL)")
    db.commit()
    db.close()

    ledger = Ledger(tmp_path)
    try:
        assert ledger.completed("flow", "aa")
        (run,) = ledger.history("flow")
        assert run["files"][0]["send_no"] == 0 and run["files"][0]["retry_of"] is None
        assert ledger.next_send("flow", "aa") == 1
        resumed = ledger.checkpoints("flow").open("bb", "b.csv")
        assert (resumed.resumed, resumed.lineage_id, resumed.key) == (True, "l2", "bb")
        with pytest.raises(RetryRefused, match="processed by an earlier version") as refused:
            db2 = sqlite3.connect(tmp_path / "ledger.db")
            db2.execute("UPDATE files SET rows_failed = 1")
            db2.commit()
            db2.close()
            ledger.retry_source("flow", "l1")
        assert "--force" in str(refused.value)
    finally:
        ledger.close()
