"""Mapping rows to template fields: conversions and row rules (pure pandas, no I/O)."""

from __future__ import annotations

import pandas as pd

from dataflow.templates import EARNED_BADGES, to_json_value
from dataflow_blocks.field_mapping import FieldSpec, map_rows

LATER = "1830000000"  # 2027-12-28


def run(values: dict[str, list[str]], **specs: FieldSpec) -> tuple[pd.DataFrame, dict[int, str]]:
    n = len(next(iter(values.values())))
    source = pd.DataFrame(
        {k: pd.array(v, dtype="str") for k, v in values.items()}, index=range(2, n + 2)
    )
    base = {
        "badgeMetaId": FieldSpec(column="b"),
        "customerId": FieldSpec(column="c"),
        "earnEventDate": FieldSpec(column="e", date_format="iso8601"),
        "earnExpiresOn": FieldSpec(column="x", date_format="epoch"),
    }
    records, rejected = map_rows(source, {**base, **specs}, EARNED_BADGES)
    return records, {r.line_no: r.message for r in rejected}


def test_customer_id_rules() -> None:
    ids = ["1", " 42 ", "+7", "0", "-3", "1.5", "abc", "99999999999999999999", ""]
    n = len(ids)
    records, rejected = run(
        {"b": ["B"] * n, "c": ids, "e": ["2026-11-16T10:00:00Z"] * n, "x": [LATER] * n}
    )
    assert list(records["customerId"]) == [1, 42, 7]
    assert rejected == {
        5: "customerId: '0' is not a positive integer",
        6: "customerId: '-3' is not a positive integer",
        7: "customerId: '1.5' is not a positive integer",
        8: "customerId: 'abc' is not a positive integer",
        9: "customerId: '99999999999999999999' is not a positive integer",
        10: "customerId: empty (column 'c')",
    }


def test_date_formats_timezones_and_lists() -> None:
    values = {
        "b": ["B"] * 5,
        "c": ["1"] * 5,
        "e": [
            "16/11/2026 09:30",
            "2026-11-16",
            "16.11.2026",
            "2026-11-16T04:00:00+00:00",
            "2026-03-29 02:30",
        ],
        "x": [LATER] * 5,
    }
    records, rejected = run(
        values,
        earnEventDate=FieldSpec(
            column="e",
            date_format=["%d/%m/%Y %H:%M", "%Y-%m-%d", "%Y-%m-%d %H:%M", "iso8601"],
            timezone="Europe/Berlin",
        ),
    )
    seconds = to_json_value(records["earnEventDate"], "epoch_s")
    # 09:30 Berlin (CET, +1) = 08:30 UTC; a date alone is local midnight
    assert seconds[:2] == [1794817800, 1794783600]
    assert seconds[2] == 1794801600  # an explicit offset wins over timezone
    assert rejected == {
        4: "earnEventDate: '16.11.2026' does not match date_format '%d/%m/%Y %H:%M' or "
        "'%Y-%m-%d' or '%Y-%m-%d %H:%M' or 'iso8601'",
        6: "earnEventDate: '2026-03-29 02:30' does not exist in timezone Europe/Berlin "
        "(a local time skipped when the clocks go forward)",
    }


def test_epoch_ms_const_and_cross_field_rule() -> None:
    values = {
        "b": [" B1 ", "B2"],
        "c": ["1", "2"],
        "e": ["2026-11-16T10:00:00Z"] * 2,
        "x": ["1830000000000", "1000"],
    }
    records, rejected = run(
        values,
        earnExpiresOn=FieldSpec(column="x", date_format="epoch_ms"),
        badgeMetaId=FieldSpec(const="CONST-1"),
    )
    assert list(records["badgeMetaId"]) == ["CONST-1"]
    assert to_json_value(records["earnExpiresOn"], "epoch_s") == [1830000000]
    assert rejected == {3: "earnExpiresOn: must be after earnEventDate"}


def test_epoch_numbers_never_wrap_around_and_ids_are_exact() -> None:
    """A huge epoch times 1000 must not wrap (as int64) into the range; the largest
    customerId is exact (not rounded through a float)."""
    outside = "is outside the dates the API takes (1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z)"
    records, rejected = run(  # integers only: no float on the way
        {"b": ["B"] * 2, "c": ["1", "2"], "e": ["2026-11-16T10:00:00Z"] * 2,
         "x": ["18446744073709552", LATER]}
    )  # fmt: skip
    assert rejected == {2: f"earnExpiresOn: '18446744073709552' {outside}"}
    n = 4
    records, rejected = run(
        {
            "b": ["B"] * n,
            "c": ["9223372036854775807", "9223372036854775808", "+0012", "7"],
            "e": ["2026-11-16T10:00:00Z"] * n,
            "x": [LATER, LATER, f"+{LATER}.4", "+-5"],
        }
    )
    assert rejected == {
        3: "customerId: '9223372036854775808' is not a positive integer",
        5: f"earnExpiresOn: '+-5' {outside}",
    }
    assert list(records["customerId"]) == [9223372036854775807, 12]
    assert to_json_value(records["earnExpiresOn"], "epoch_s") == [int(LATER)] * 2


def test_all_problems_of_a_row_are_named() -> None:
    records, rejected = run({"b": [""], "c": ["x"], "e": ["never"], "x": ["soon"]})
    assert records.empty
    assert rejected == {
        2: "badgeMetaId: empty (column 'b'); customerId: 'x' is not a positive "
        "integer; earnEventDate: 'never' does not match date_format "
        "'iso8601'; earnExpiresOn: 'soon' does not match date_format 'epoch'"
    }


def test_values_are_trimmed() -> None:
    records, rejected = run(
        {"b": ["  B  "], "c": [" 5"], "e": [" 2026-11-16T10:00:00Z "], "x": [f" {LATER} "]}
    )
    assert rejected == {}
    assert list(records["badgeMetaId"]) == ["B"]
