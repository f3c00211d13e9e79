"""`result_file: all` (contract §9): every non-filtered row with its outcome and the API's id."""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx

from .conftest import Bed, bulk_mapping

NAME = "badges_results.csv.gpg"
HEADER = "badge_id,customer_id,event_date,expires_at"
ROWS = [
    "BADGE-GOLD,7101,16/11/2026 09:30,1798761600",  # 2: accepted
    "BADGE-GOLD,abc,16/11/2026 09:30,1798761600",  # 3: rejected by the transform
    "",  # 4: blank: filtered, not in the file
    "BADGE-UNKNOWN,7102,16/11/2026 09:30,1798761600",  # 5: failed at the API (1054)
    "BADGE-SILVER,7103,16/11/2026 09:30,1798761600",  # 6: accepted
]


def result_rows(bed: Bed, report_file: dict[str, Any]) -> list[dict[str, str]]:
    path = bed.sftp.root / report_file["error_file"].lstrip("/")
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_result_file_all_holds_every_row_with_outcome_and_earned_badge_id(bed: Bed) -> None:
    data = ("\n".join([HEADER, *ROWS]) + "\n").encode()
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(data))
    code, report, stderr = bed.run_json(bed.config(source={"result_file": "all"}))
    assert code == 3, stderr
    (f,) = report["files"]
    assert (f["rows_total"], f["rows_filtered"], f["rows_rejected"]) == (5, 1, 1)
    assert (f["rows_succeeded"], f["rows_failed"]) == (2, 1)
    rows = result_rows(bed, f)
    assert [r["LINE_NO"] for r in sorted(rows, key=lambda r: int(r["LINE_NO"]))] == [
        "2",
        "3",
        "5",
        "6",
    ]  # every non-filtered row, once
    assert list(rows[0])[-6:] == [
        "LINE_NO",
        "error_stage",
        "status_code",
        "error_message",
        "outcome",
        "api_id",
    ]
    by_line = {int(r["LINE_NO"]): r for r in rows}
    assert by_line[3]["outcome"] == "rejected" and by_line[3]["error_stage"] == "transform"
    assert by_line[5]["outcome"] == "failed" and by_line[5]["status_code"] == "1054"
    ids = dict(
        httpx.get(f"{bed.api.url}/__emulator/received", timeout=10).json()["earned_ids"]
    )  # customerId -> the earnedBadgeId the API answered
    for line, customer in ((2, 7101), (6, 7103)):
        assert by_line[line]["outcome"] == "succeeded"
        assert by_line[line]["customer_id"] == str(customer)
        assert by_line[line]["api_id"] == str(ids[customer])


def test_result_file_all_for_a_bulk_template_carries_the_issued_id(bed: Bed) -> None:
    bed.api.configure(badge_metas=["BADGE-GOLD"])
    header = "badge_id,customer_id,event_date,owner_type,reference_id"
    rows = [f"BADGE-GOLD,{8201 + i},16/11/2026 09:30,Loyalty,ref-1" for i in range(3)]
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(("\n".join([header, *rows]) + "\n").encode()))
    flow = bed.config(
        template="earn_badges_bulk", transform=bulk_mapping(), source={"result_file": "all"}
    )
    code, report, stderr = bed.run_json(flow)
    assert code == 0, stderr
    (f,) = report["files"]
    rows_out = result_rows(bed, f)  # a success writes a result file too
    issued = {r["customerId"]: r for r in bed.api.earned()}  # earnBulk records
    assert len(rows_out) == 3
    for row in rows_out:
        assert row["outcome"] == "succeeded"
        assert row["api_id"] == str(issued[int(row["customer_id"])]["issuedId"])


def test_default_result_file_is_the_error_file_only(bed: Bed) -> None:
    data = ("\n".join([HEADER, ROWS[0]]) + "\n").encode()
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(data))
    code, report, stderr = bed.run_json(bed.config())
    assert code == 0, stderr
    assert report["files"][0]["error_file"] is None  # nothing to report, nothing written


def test_rows_accepted_before_a_crash_keep_their_ids_in_the_result_file(bed: Bed) -> None:
    customers = list(range(7200, 7260))
    lines = [f"BADGE-GOLD,{c},16/11/2026 09:30,1798761600" for c in customers]
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(("\n".join([HEADER, *lines]) + "\n").encode()))
    config = bed.config(source={"result_file": "all"}, sink={"batch_size": 10, "concurrency": 1})
    killed = bed.run("run", str(config), "--json", env={"DATAFLOW_CRASH_AT": "acked:3"})
    assert killed.returncode == -9, killed.stderr  # 30 rows acknowledged, then kill -9
    code, report, stderr = bed.run_json(config)
    assert code == 0, stderr
    (f,) = report["files"]
    assert (f["rows_total"], f["rows_succeeded"], f["rows_failed"]) == (60, 60, 0)
    ids = dict(httpx.get(f"{bed.api.url}/__emulator/received", timeout=10).json()["earned_ids"])
    rows = result_rows(bed, f)
    assert len(rows) == 60
    for row in rows:  # the 30 of the killed run too: their ids were checkpointed
        assert row["outcome"] == "succeeded"
        assert row["api_id"] == str(ids[int(row["customer_id"])]), row
