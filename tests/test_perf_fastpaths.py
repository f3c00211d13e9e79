"""The performance fast paths give exactly what the value-by-value paths give.

- request bodies built by Arrow over the columns (`build_array_requests`) are byte for byte
  ``orjson.dumps`` of a dict per row (`build_array_requests_slow`), line numbers included;
- dates of a fixed-width format parsed by slicing (`_parse_fixed`) are what pandas' strptime
  path gives, verdict by verdict, for valid, invalid, unpadded and odd values;
- the bulk requests built from groups found over the columns (`build_grouped_requests`) are
  those of the dict of groups (`build_grouped_requests_slow`): same order, lines, customers,
  bodies and requestIds.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pandas as pd
import pytest

from dataflow.templates import (
    EARN_BADGES_BULK,
    EARNED_BADGES,
    ISSUE_BADGES_BULK,
    Template,
    _groups,
    _row_objects,
    build_array_requests,
    build_array_requests_slow,
    build_grouped_requests,
    build_grouped_requests_slow,
)
from dataflow_blocks import field_mapping

TEXTS = ["BADGE-GOLD", 'q"uote', "back\\slash", "tab\there", "ünï€😀", "", "a\u2028b", "x\x7fy"]


def _records(n: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)

    def dates() -> pd.Series:
        ms = [rng.randint(0, 253402300799999) for _ in range(n)]
        return pd.Series(np.array(ms, dtype="datetime64[ms]")).dt.tz_localize("UTC")

    records = pd.DataFrame(
        {
            "badgeMetaId": pd.Series([rng.choice(TEXTS) for _ in range(n)], dtype="str"),
            "customerId": np.array([rng.randint(1, 2**63 - 1) for _ in range(n)], np.int64),
            "earnEventDate": dates(),
            "earnExpiresOn": dates(),
        }
    )
    records.index = pd.Index(np.arange(2, n + 2) * 3)  # line numbers, with gaps
    return records


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_bodies_are_orjson_of_the_records(batch_size: int) -> None:
    records = _records(2503, seed=batch_size)
    kinds = EARNED_BADGES.all_fields
    assert _row_objects(records, list(kinds), kinds) is not None  # the fast path is taken
    fast = list(build_array_requests(EARNED_BADGES, records, records, batch_size, "f"))
    slow = list(build_array_requests_slow(EARNED_BADGES, records, records, batch_size, "f"))
    assert [(r.lines(), r.body) for r in fast] == [(r.lines(), r.body) for r in slow]


def test_a_value_orjson_must_escape_takes_the_reference_path() -> None:
    records = _records(50, seed=1)
    records.iloc[5, 0] = "new\nline"
    kinds = EARNED_BADGES.all_fields
    assert _row_objects(records, list(kinds), kinds) is None
    fast = list(build_array_requests(EARNED_BADGES, records, records, 10, "f"))
    slow = list(build_array_requests_slow(EARNED_BADGES, records, records, 10, "f"))
    assert [r.body for r in fast] == [r.body for r in slow]


def _date_text(rng: random.Random) -> str:
    y = rng.choice([rng.randint(1, 9999), rng.randint(1965, 2100), 0, 2024, 1900])
    m = rng.choice([rng.randint(0, 13), rng.randint(1, 12)])
    d = rng.choice([rng.randint(0, 32), 29, 30, 31, rng.randint(1, 28)])
    hh, mm, ss = rng.randint(0, 25), rng.randint(0, 61), rng.randint(0, 62)
    text = f"{d:02d}/{m:02d}/{y:04d} {hh:02d}:{mm:02d}:{ss:02d}"
    odd = rng.random()
    if odd < 0.05:
        return text.replace(" ", "  ")
    if odd < 0.10:
        return f"{d}/{m}/{y} {hh}:{mm}:{ss}"
    if odd < 0.12:
        return text[:-1]
    if odd < 0.14:
        return text + "x"
    if odd < 0.15:
        return ""
    if odd < 0.16:
        return text.replace("/", "-")
    if odd < 0.17:
        return "\u0660\u0661/\u0660\u0662/2026 10:00:00"  # Arabic-Indic digits
    return text


@pytest.mark.parametrize(
    ("fmt", "timezone", "width"),
    [
        ("%d/%m/%Y %H:%M:%S", "UTC", 19),
        ("%d/%m/%Y %H:%M:%S", "Europe/Paris", 19),
        ("%d/%m/%Y %H:%M", "Asia/Kolkata", 16),
        ("%d/%m/%Y", "UTC", 10),
    ],
)
def test_fixed_width_dates_parse_as_strptime_does(
    fmt: str, timezone: str, width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(width)
    values = pd.Series([_date_text(rng)[:width] for _ in range(20000)], dtype="str")
    values.index = pd.Index(np.arange(2, len(values) + 2))
    assert field_mapping._parse_fixed(values, fmt) is not None  # the fast path is taken
    fast_dates, fast_why = field_mapping.parse_dates(values, [fmt], timezone)
    monkeypatch.setattr(field_mapping, "_parse_fixed", lambda values, fmt: None)
    slow_dates, slow_why = field_mapping.parse_dates(values, [fmt], timezone)
    assert fast_dates.equals(slow_dates)
    assert fast_why.equals(slow_why)
    assert fast_dates.notna().sum() > len(values) // 4  # valid dates were among them


@pytest.mark.parametrize("fmt", ["%Y-%m-%dT%H:%M:%S%z", "%d %b %Y", "iso8601", "%y%m%d", "%d/%m"])
def test_other_formats_are_not_taken_by_the_fixed_path(fmt: str) -> None:
    values = pd.Series(["16/11/2026"], dtype="str")
    assert field_mapping._parse_fixed(values, fmt) is None


def _bulk_records(template: Template, n: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    date_field = template.group_by[1]
    base = 1794801600 * 1_000_000  # microseconds
    # a few distinct dates, some differing only below the unit sent (ms, or s): one group
    moments = [base, base + 1, base + 999, base + 1000, base + 999_999, base + 3_600_000_000]
    moments += [base - 1, base - 1001]
    micro = np.array([rng.choice(moments) for _ in range(n)], dtype="datetime64[us]")
    records = pd.DataFrame(
        {
            "badgeMetaId": pd.Series([rng.choice(TEXTS[:5]) for _ in range(n)], dtype="str"),
            "customerId": np.array([rng.randint(1, 2**63 - 1) for _ in range(n)], np.int64),
            date_field: pd.Series(micro).dt.tz_localize("UTC"),
            "ownerType": pd.Series([rng.choice(["Loyalty", "Journeys"]) for _ in range(n)]),
            "referenceId": pd.Series([rng.choice(["w1", "w2", 'q"'])] * n, dtype="str"),
        }
    )
    records.index = pd.Index(np.arange(2, n + 2) * 2)  # line numbers, with gaps
    return records


def _requests(requests: list[Any]) -> list[tuple[Any, ...]]:
    return [(r.lines(), r.customers, r.request_id, r.body) for r in requests]


@pytest.mark.parametrize("template", [EARN_BADGES_BULK, ISSUE_BADGES_BULK])
@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_bulk_requests_are_those_of_the_dict_of_groups(template: Template, batch_size: int) -> None:
    records = _bulk_records(template, 3001, seed=batch_size)
    assert _groups(records, template.group_by, template.all_fields) is not None  # fast path
    fast = list(build_grouped_requests(template, records, records, batch_size, "f"))
    slow = list(build_grouped_requests_slow(template, records, records, batch_size, "f"))
    assert _requests(fast) == _requests(slow)
    assert len({r.request_id for r in fast}) == len(fast) > 1


def test_a_missing_group_value_takes_the_reference_path() -> None:
    records = _bulk_records(EARN_BADGES_BULK, 40, seed=3)
    records.loc[records.index[4], "referenceId"] = None
    assert _groups(records, EARN_BADGES_BULK.group_by, EARN_BADGES_BULK.all_fields) is None
    fast = list(build_grouped_requests(EARN_BADGES_BULK, records, records, 5, "f"))
    slow = list(build_grouped_requests_slow(EARN_BADGES_BULK, records, records, 5, "f"))
    assert _requests(fast) == _requests(slow)
