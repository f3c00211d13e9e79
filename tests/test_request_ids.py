"""Bulk requestIds are pinned: the same file and settings give the same ids in every version,
so a file resumed after an upgrade is recognised by the API (809) and never issued twice."""

from __future__ import annotations

from .conftest import Bed, bulk_mapping

HEADER = b"badge_id,customer_id,event_date,owner_type,reference_id\n"
ROWS = b"".join(
    b"BADGE-%s,%d,16/11/2026 09:30,Loyalty,ref-%d\n"
    % (b"GOLD" if i % 3 else b"SILVER", 5000 + i, i % 2)
    for i in range(1, 41)
)
MAPPING = bulk_mapping()
# computed by the code at b74695b (before the layout refactor of issue 8); never change them
PINNED = [
    "7b330235ad65421874308d24a1d80c8d",
    "caeb204d0f661f703ef17462af0f08d0",
    "5e8b706799b27f0388713f5bd41133ac",
    "df3f3f9a132208cc8403aafb896e8ebf",
    "af66682abc490565f404dbe20a5fafc8",
    "0612df0dc0f2c4f5c8840959e201b3b7",
]


def test_bulk_request_ids_are_pinned(bed: Bed) -> None:
    bed.api.configure(badge_metas=["BADGE-GOLD", "BADGE-SILVER"])
    bed.sftp.put("inbox/badges_pin.csv", HEADER + ROWS)
    flow = bed.config(
        template="earn_badges_bulk",
        decrypt={"enabled": False},
        transform=MAPPING,
        sink={"batch_size": 7, "concurrency": 1},
    )
    code, report, stderr = bed.run_json(flow)
    assert code == 0, stderr
    assert report["files"][0]["rows_succeeded"] == 40
    ids = [r["requestId"] for r in bed.api.requests() if r.get("requestId")]
    assert ids == PINNED
