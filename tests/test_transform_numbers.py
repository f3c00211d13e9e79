"""Numbers parsed in bulk by Arrow (customerId, epoch dates) are what Python's int() and
float() make of each value, verdict by verdict: no wrap-around, no rounding through a float
for ids, the same rounding of fractional epochs."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from dataflow_blocks import field_mapping
from dataflow_blocks.field_mapping import FieldSpec

MAX_MS = 253402300799999
OUTSIDE = f"is outside the dates the API takes ({field_mapping.DATE_RANGE})"


def _number(rng: random.Random) -> str:
    sign = rng.choice(["", "", "", "+", "-", "+-", "--"])
    digits = "".join(
        rng.choice("0123456789") for _ in range(rng.choice([1, 3, 10, 13, 17, 19, 20, 31]))
    )
    odd = rng.random()
    if odd < 0.2:
        digits += "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 6)))
    elif odd < 0.25:
        digits = rng.choice(["1e5", "0x10", " ", "1_000", "١٢", "", ".5", "5.5.5", "inf"])
    elif odd < 0.45:
        digits = str(rng.randint(0, 260_000_000_000_000) // rng.choice([1, 1000]))
    elif odd < 0.5:
        digits = rng.choice(["9223372036854775807", "9223372036854775808", "18446744073709552"])
    return sign + digits


def _values(seed: int, integers: bool = False) -> pd.Series:
    """5000 numbers and near-numbers; `integers`: plain unsigned integers that fit in int64
    only (which a bulk parser may take as int64, where a huge one times 1000 wraps around)."""
    rng = random.Random(seed)
    texts = [_number(rng) for _ in range(5000)]
    if integers:
        texts = [t for t in texts if t.isascii() and t.isdigit() and len(t) <= 18]
    values = pd.Series(texts, dtype="str")
    values.index = pd.Index(np.arange(2, len(values) + 2))
    return values


def _epoch_reference(text: str, ms_per_unit: int) -> tuple[int | None, str]:
    import re

    if not text:
        return None, ""
    if not re.fullmatch(r"\+?-?[0-9]{1,30}(?:\.[0-9]*)?", text):
        return (
            None,
            f"does not match date_format '{'epoch' if ms_per_unit == 1000 else 'epoch_ms'}'",
        )
    try:
        ms = float(text) * ms_per_unit
    except ValueError:  # "+-5": the form, but no number
        return None, OUTSIDE
    if not 0 <= ms <= MAX_MS:
        return None, OUTSIDE
    return round(ms), ""


@pytest.mark.parametrize(("fmt", "unit"), [("epoch", 1000), ("epoch_ms", 1)])
@pytest.mark.parametrize("integers", [False, True])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_epochs_are_what_python_float_gives(fmt: str, unit: int, seed: int, integers: bool) -> None:
    values = _values(seed, integers)
    dates, why = field_mapping.parse_dates(values, [fmt], "UTC")
    ms = dates.to_numpy(dtype="datetime64[ms]")
    got = [
        (None if np.isnat(m) else int(m.astype(np.int64)), w) for m, w in zip(ms, why, strict=True)
    ]
    assert got == [_epoch_reference(v, unit) for v in values]
    assert sum(ms is not None for ms, _ in got) > 300  # valid dates were among them


def _id_reference(text: str) -> int | None:
    import re

    if not re.fullmatch(r"\+?[0-9]{1,19}", text):
        return None
    number = int(text)
    return number if 0 < number <= 2**63 - 1 else None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_customer_ids_are_what_python_int_gives(seed: int) -> None:
    values = _values(seed)
    converted, failed, _ = field_mapping._convert(values, "customer_id", FieldSpec(column="c"))
    got = [None if bad else int(n) for n, bad in zip(converted, failed, strict=True)]
    assert got == [_id_reference(v) for v in values]
    assert sum(n is not None for n in got) > 500
