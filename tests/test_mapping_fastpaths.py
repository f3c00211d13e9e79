"""The byte-level fast paths of field_mapping and the templates say what pandas says."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dataflow.templates import EARNED_BADGES
from dataflow_blocks import field_mapping as fm

TRICKY = [
    "1", "42", "+7", "-3", "+-5", "++1", "+", "-", "", "1.5", "1e3", " 42", "42 ", "\u00a042",
    "\u0663", "\uff11\uff12", "0", "007", "9" * 19, "9" * 20, "9" * 30, "9" * 31,
    "12a", "a12", "+0", "-0", "1+", "4-2",
]  # fmt: skip


def text(values: list[str]) -> pd.Series:
    return pd.Series(pd.array(values, dtype="str"), index=range(2, len(values) + 2))


@pytest.mark.parametrize(("sign", "most"), [(b"+", 19), (b"+-", 30)])
def test_digit_runs_is_the_regex(sign: bytes, most: int) -> None:
    values = text(TRICKY)
    signs = "".join("\\" + chr(c) for c in sign)
    expected = values.str.fullmatch(f"[{signs}]?[0-9]{{1,{most}}}").to_numpy(dtype=bool)
    assert fm._digit_runs(values, sign, most).tolist() == expected.tolist()
    sliced = values.iloc[3:]  # values not starting at the buffer's first byte
    assert fm._digit_runs(sliced, sign, most).tolist() == expected[3:].tolist()


def test_strip_and_empty_are_pandas() -> None:
    samples = [*TRICKY, "\tx", "x\n", "\u2003x\u2003", "é", "xé", "\x1fx", "ok"]
    for values in (text(samples), text(["ab", "cd"]), text(["", ""])):
        assert fm._stripped(values).tolist() == values.str.strip().tolist()
        assert fm._empty(values).tolist() == (values == "").tolist()
    with_missing = pd.Series(["a ", None], dtype="str")
    assert fm._stripped(with_missing).tolist() == with_missing.str.strip().tolist()


def test_expires_rule_per_row() -> None:
    when = pd.Series(pd.to_datetime([0, 5000, 9000], unit="ms", utc=True)).astype(
        "datetime64[ms, UTC]"
    )
    later = pd.Series(pd.to_datetime([1000, 5000, 1000], unit="ms", utc=True)).astype(
        "datetime64[ms, UTC]"
    )
    records = pd.DataFrame({"earnEventDate": when, "earnExpiresOn": later}).set_axis([4, 7, 9])
    assert EARNED_BADGES.row_rule is not None
    rule = EARNED_BADGES.row_rule(records)
    told = "earnExpiresOn: must be after earnEventDate"
    assert rule.to_dict() == {4: "", 7: told, 9: told}
    assert str(rule.dtype) == "str"


def test_fixed_dates_in_utc_and_elsewhere() -> None:
    values = text(["16/11/2026 10:00:00", "29/02/2025 10:00:00", "29/03/2026 02:30:00"])
    fmt = "%d/%m/%Y %H:%M:%S"
    utc, codes = fm._parse_one(values, fmt, "UTC")
    assert codes.tolist() == [fm._OK, fm._NO_MATCH, fm._OK]
    assert utc[0] == np.datetime64("2026-11-16T10:00:00", "ms")
    paris, codes = fm._parse_one(values, fmt, "Europe/Paris")
    assert codes.tolist() == [fm._OK, fm._NO_MATCH, fm._GAP]  # 02:30 skipped that night
    assert paris[0] == np.datetime64("2026-11-16T09:00:00", "ms")
