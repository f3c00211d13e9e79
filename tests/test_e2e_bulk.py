"""The bulk templates end to end: real sshd, gpg, the CLI and the emulator's bulk endpoints."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from typing import Any

import pytest

from .conftest import Bed, bulk_mapping, counts

NAME = "badges_bulk.csv.gpg"
IST_0930_16NOV = 1794801600  # 16/11/2026 09:30 Asia/Kolkata
IST_1000_17NOV = 1794889800  # 17/11/2026 10:00 Asia/Kolkata
HEADER = "badge_id,customer_id,event_date,owner_type,reference_id"
ROWS = [
    "BADGE-GOLD,1001,16/11/2026 09:30,Loyalty,ref-1",  # 2: group A
    "BADGE-GOLD,1002,16/11/2026 09:30,Loyalty,ref-1",  # 3: group A
    "BADGE-GOLD,1003,16/11/2026 09:30,Loyalty,ref-1",  # 4: group A, second request
    "BADGE-GOLD,1004,17/11/2026 10:00,Journeys,ref-2",  # 5: group B
    "BADGE-CLAIM,2001,16/11/2026 09:30,Loyalty,ref-1",  # 6: claimed before: fine
    "BADGE-CLAIM,2002,16/11/2026 09:30,Loyalty,ref-1",  # 7: earn: 810 / issue: fine
    "BADGE-WINDOW,3001,16/11/2026 09:30,Loyalty,ref-1",  # 8: 816, outside the window
    "BADGE-GOLD,3002,16/11/2026 09:30,Bogus,ref-1",  # 9: rejected: ownerType
    "BADGE-NOPE,3003,16/11/2026 09:30,Loyalty,ref-3",  # 10: 1054, top-level error
]
METAS = [
    "BADGE-GOLD",
    {"id": "BADGE-CLAIM", "requires_claim": True},
    {"id": "BADGE-WINDOW", "window_start": 1700000000, "window_end": 1790000000},
]


def mapping(date_field: str) -> dict[str, Any]:
    return bulk_mapping(date_field=date_field)


def setup(bed: Bed, template: str) -> Any:
    bed.api.configure(badge_metas=METAS, claims=[["BADGE-CLAIM", 2001], ["BADGE-GOLD", 1002]])
    bed.api.configure(apply_then_fail_next=[503])  # the first answer is lost: a retry follows
    # 809 answered with the first answer's data (the contract allows data null or {...}), so
    # per-customer errors survive a lost answer; tests/test_api_shapes.py covers data null
    bed.api.configure(data_on_809=True)
    data = ("\n".join([HEADER, *ROWS]) + "\n").encode()
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(data))
    date_field = "earnEventDate" if template == "earn_badges_bulk" else "issueEventDate"
    return bed.config(
        template=template, transform=mapping(date_field), sink={"batch_size": 2, "concurrency": 1}
    )


def error_rows(bed: Bed, report_file: dict[str, Any]) -> dict[int, list[str]]:
    name = report_file["error_file"].rsplit("/", 1)[1]
    rows = list(csv.reader(io.StringIO((bed.sftp.root / "errors" / name).read_text())))
    assert rows[0] == [*HEADER.split(","), "LINE_NO", "error_stage", "status_code", "error_message"]
    return {int(r[5]): r[6:] for r in rows[1:]}


def test_earn_badges_bulk(bed: Bed) -> None:
    config = setup(bed, "earn_badges_bulk")
    code, report, stderr = bed.run_json(config)
    assert code == 3, stderr
    (f,) = report["files"]
    assert counts(f) == (9, 1, 8, 5, 3)

    earned = bed.api.earned()
    assert Counter(e["customerId"] for e in earned) == {
        1001: 1,
        1002: 1,
        1003: 1,
        1004: 1,
        2001: 1,
    }  # the retry issued nothing
    assert {e["customerId"]: e["eventDate"] for e in earned}[1004] == IST_1000_17NOV
    requests = [r for r in bed.api.requests() if r["path"].endswith("/earnBulk")]
    # group A is 2 requests (batch_size 2), B, CLAIM, WINDOW and NOPE one each, plus the retry
    assert len(requests) == 7
    first, retry = requests[0], requests[1]
    assert (first["status"], retry["status"]) == (503, 400)  # 809, as Capillary answers it
    assert first["requestId"] == retry["requestId"]
    assert len({r["requestId"] for r in requests}) == 6

    errors = error_rows(bed, f)
    assert errors == {
        7: ["destination", "810", "Customer must claim the badge before earning it"],
        8: ["destination", "816", "Event date is outside the badge's validity window"],
        9: [
            "transform",
            "",
            "ownerType: 'Bogus' is not an ownerType (Loyalty, Loyalty_Promotion,"
            " Referral_Campaigns, Journeys, Audience_Campaigns, Rewards_Catalog, Goodwill_Module,"
            " Milestones, Historical_Import)",
        ],
        10: ["destination", "1054", "Badge meta BADGE-NOPE not found or inactive"],
    }


def test_issue_badges_bulk_and_a_rerun_never_issues_twice(bed: Bed) -> None:
    config = setup(bed, "issue_badges_bulk")
    code, report, stderr = bed.run_json(config)
    assert code == 3, stderr
    (f,) = report["files"]
    counts = (f["rows_total"], f["rows_rejected"], f["rows_succeeded"], f["rows_failed"])
    assert counts == (9, 1, 4, 4)
    issued = bed.api.issued()
    assert sorted(e["customerId"] for e in issued) == [1001, 1003, 1004, 2002]
    assert {e["customerId"]: e["eventDate"] for e in issued}[1001] == IST_0930_16NOV
    errors = error_rows(bed, f)
    assert errors[3] == ["destination", "1040", "An active issue exists for this customer"]
    assert errors[6][1] == "1040"  # 2001 was enrolled before
    assert errors[8][1] == "816" and errors[10][1] == "1054"

    # the same content again, with the ledger forgotten (as after a lost state directory):
    # every request carries the same requestId, the server answers 809, nothing is issued twice
    bed.sftp.put(
        "inbox/badges_bulk_again.csv.gpg", (bed.sftp.root / "processed" / NAME).read_bytes()
    )
    result = bed.run(
        "run", str(config), "--json", env={"DATAFLOW_STATE_DIR": str(bed.dir / "fresh-state")}
    )
    assert result.returncode == 3, result.stderr
    (again,) = json.loads(result.stdout)["files"]
    assert (again["rows_succeeded"], again["rows_failed"]) == (4, 4)  # the first answers
    assert sorted(e["customerId"] for e in bed.api.issued()) == [1001, 1003, 1004, 2002]


@pytest.mark.parametrize("template", ["earn_badges_bulk", "issue_badges_bulk"])
def test_bulk_dry_run_reports_without_sending(bed: Bed, template: str) -> None:
    config = setup(bed, template)
    code, report, _ = bed.run_json(config, "--dry-run")
    assert code == 3
    assert report["files"][0]["rows_rejected"] == 1
    assert bed.api.requests() == []


def test_bulk_kill_9_mid_send_then_resume_issues_exactly_once(bed: Bed) -> None:
    config = setup(bed, "issue_badges_bulk")
    killed = bed.run("run", str(config), env={"DATAFLOW_CRASH_AT": "acked:2"})
    assert killed.returncode == -9, killed.stderr
    code, report, stderr = bed.run_json(config)
    assert code == 3, stderr
    (f,) = report["files"]
    assert (f["rows_succeeded"], f["rows_failed"], f["rows_rejected"]) == (4, 4, 1)
    assert Counter(e["customerId"] for e in bed.api.issued()) == {
        1001: 1,
        1003: 1,
        1004: 1,
        2002: 1,
    }
