"""The transform alone (field_mapping over a local CSV), with and without SQL.

    python bench/transform.py --rows 1000000            # plain mapping vs filter + 2 exprs
    python bench/transform.py --rows 5000000 --only dup  # duplicates: reject, peak RSS

Writes a synthetic earned-badges file (unique customers, 10 % filtered out, a few repeats)
to a temp dir, then times FieldMapping.read() over it: rows/s and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from dataflow.block import RunContext
from dataflow.templates import EARNED_BADGES
from dataflow_blocks.field_mapping import FieldMapping, FieldMappingConfig

PLAIN: dict[str, Any] = {
    "badgeMetaId": "badge_id",
    "customerId": "customer_id",
    "earnEventDate": {"column": "event_date", "date_format": "%d/%m/%Y %H:%M"},
    "earnExpiresOn": {"column": "expires_at", "date_format": "epoch"},
}
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"mapping": PLAIN},
    "sql": {
        "filter": "status = 'paid' AND country IN ('IN', 'AE')",
        "mapping": {
            **PLAIN,
            "badgeMetaId": {"expr": "badge_id || '-' || upper(trim(country))"},
            "customerId": {"expr": "CAST(CAST(customer_id AS BIGINT) + 0 AS VARCHAR)"},
        },
    },
    "dup": {"mapping": PLAIN, "duplicates": "reject"},
}


def write(path: Path, rows: int) -> None:
    with path.open("w") as out:
        out.write("badge_id,customer_id,event_date,expires_at,status,country\n")
        for i in range(rows):
            minute = i % (60 * 24 * 365)
            day, rest = divmod(minute, 60 * 24)
            hour, mins = divmod(rest, 60)
            status = "test" if i % 10 == 9 else "paid"
            customer = i // 2 + 1 if i % 1000 == 999 else i + 1  # a repeat now and then
            out.write(
                f"BADGE-GOLD,{customer},{day % 28 + 1:02d}/{day // 28 % 12 + 1:02d}/2026 "
                f"{hour:02d}:{mins:02d},1830000000,{status},{'IN' if i % 2 else 'AE'}\n"
            )


def run(path: Path, variant: str) -> tuple[int, float]:
    cfg = FieldMappingConfig.model_validate(
        {"name": "t", "type": "field_mapping", **VARIANTS[variant]}
    )
    stream = FieldMapping(cfg, RunContext("b", EARNED_BADGES, path.parent, path.parent)).read(path)
    start = time.perf_counter()
    total = 0
    try:
        for chunk in stream:
            total += chunk.total
    finally:
        stream.close()
    return total, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--only", choices=list(VARIANTS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.csv"
        write(path, args.rows)
        for variant in [args.only] if args.only else ["plain", "sql"]:
            total, seconds = run(path, variant)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"{variant:5} {total} rows in {seconds:.2f} s: {total / seconds:,.0f} rows/s "
                f"(peak RSS so far {peak:.0f} MiB)"
            )


if __name__ == "__main__":
    main()
