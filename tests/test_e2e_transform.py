"""End to end through the CLI (sshd, gpg, the emulator): SQL filter and expressions, a value
map, in-file duplicates and the reject threshold, with exact counts and error files."""

from __future__ import annotations

import csv
import io
from typing import Any

from .conftest import Bed

NAME = "badges_2026-11-16.csv.gpg"
HEADER = "tier,member,event_date,expires_at,status"
ROWS = [
    "gold,ACME-1001,16/11/2026 09:30,1798761600,paid",  # 2 sent
    "Silver,ACME-1002,16/11/2026 10:00,1798761600,paid",  # 3 sent (map ignores case)
    "gold,ACME-1003,16/11/2026 10:00,1798761600,test",  # 4 filtered
    "GOLD,ACME-1001,16/11/2026 09:30,1798761600,paid",  # 5 duplicate of line 2
    "bronze,ACME-1004,16/11/2026 10:00,1798761600,paid",  # 6 not in the map
    "gold,ACME-XYZ,16/11/2026 10:00,1798761600,paid",  # 7 the expression fails
    "silver,ACME-1005,16/11/2026 10:00,1798761600,",  # 8 filtered (status '')
    "gold,ACME-1006,17/11/2026 08:00,1798761600,paid",  # 9 sent
    "",  # 10 blank: filtered
]
TRANSFORM: dict[str, Any] = {
    "filter": "status = 'paid'",
    "duplicates": "reject",
    "mapping": {
        "badgeMetaId": {
            "column": "tier",
            "map": {"gold": "BADGE-GOLD", "silver": "BADGE-SILVER"},
            "ignore_case": True,
        },
        "customerId": {
            "expr": "CAST(CAST(regexp_extract(member, '[0-9A-Z]+$') AS BIGINT) AS VARCHAR)"
        },
        "earnEventDate": {
            "column": "event_date",
            "date_format": "%d/%m/%Y %H:%M",
            "timezone": "Asia/Kolkata",
        },
        "earnExpiresOn": {"column": "expires_at", "date_format": "epoch"},
    },
}


def put(bed: Bed, rows: list[str]) -> None:
    data = ("\n".join([HEADER, *rows]) + "\n").encode()
    bed.sftp.put(f"inbox/{NAME}", bed.keys.encrypt(data))


def error_rows(bed: Bed, path: str) -> list[list[str]]:
    text = (bed.sftp.root / path.lstrip("/")).read_text()
    return list(csv.reader(io.StringIO(text)))


def test_filter_map_expression_and_duplicates_with_exact_counts(bed: Bed) -> None:
    put(bed, ROWS)
    code, report, stderr = bed.run_json(bed.config(transform=TRANSFORM))
    assert code == 3, stderr
    (f,) = report["files"]
    counts = {k: f[k] for k in f if k.startswith("rows_")}
    assert counts == {
        "rows_total": 9,
        "rows_filtered": 3,
        "rows_rejected": 3,
        "rows_sent": 3,
        "rows_succeeded": 3,
        "rows_failed": 0,
    }
    received = sorted(bed.api.received(), key=lambda r: r["customerId"])
    assert [(r["badgeMetaId"], r["customerId"]) for r in received] == [
        ("BADGE-GOLD", 1001),
        ("BADGE-SILVER", 1002),
        ("BADGE-GOLD", 1006),
    ]
    rows = error_rows(bed, f["error_file"])
    assert rows[0] == [*HEADER.split(","), "LINE_NO", "error_stage", "status_code", "error_message"]
    by_line = {int(r[5]): r for r in rows[1:]}
    assert sorted(by_line) == [5, 6, 7]  # filtered lines 4, 8, 10 are not there
    assert by_line[5][8] == (
        "duplicate of line 2 (the same badgeMetaId, customerId, earnEventDate); duplicates: reject"
    )
    assert by_line[6][8] == (
        "badgeMetaId: value 'bronze' of column 'tier' is not in the map (ignoring case) "
        "('gold', 'silver') and no default is given"
    )
    assert by_line[7][8] == (
        "customerId: the expression failed on this row: Conversion Error: Could not convert "
        "string 'XYZ' to INT64"
    )
    assert all(r[6] == "transform" for r in rows[1:])


def test_above_max_rejected_percent_nothing_is_sent(bed: Bed) -> None:
    put(bed, ROWS)  # 3 of the 6 rows the filter keeps are rejected: 50 %
    config = bed.config(transform={**TRANSFORM, "max_rejected_percent": 40})
    code, report, stderr = bed.run_json(config)
    assert code == 1, stderr
    (f,) = report["files"]
    assert f["status"] == "failure"
    assert f["reason"] == (
        "3 of 6 rows rejected (50.0 %), above max_rejected_percent 40; nothing was sent"
    )
    assert bed.api.received() == []
    assert bed.sftp.files("inbox") == [] and NAME in bed.sftp.files("errors")
    assert f["rows_total"] == f["rows_sent"] == 0


def test_at_the_threshold_the_file_is_sent(bed: Bed) -> None:
    put(bed, ROWS)
    code, report, stderr = bed.run_json(
        bed.config(transform={**TRANSFORM, "max_rejected_percent": 50})
    )
    assert code == 3, stderr
    (f,) = report["files"]
    assert (f["rows_total"], f["rows_filtered"], f["rows_rejected"], f["rows_sent"]) == (
        9,
        3,
        3,
        3,
    )
    assert len(bed.api.received()) == 3


def test_a_hostile_expression_is_a_config_error_and_nothing_runs(bed: Bed) -> None:
    put(bed, ROWS)
    hostile = {**TRANSFORM, "filter": "status = (SELECT content FROM read_text('/etc/passwd'))"}
    config = bed.config(transform=hostile)
    result = bed.run("validate", str(config))
    assert result.returncode == 2
    assert "blocks[2].filter: a subquery is not allowed" in result.stdout + result.stderr
    code, _, stderr = bed.run_json(config)
    assert code == 2, stderr
    assert bed.api.received() == [] and bed.sftp.files("inbox") == [NAME]
