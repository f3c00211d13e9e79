"""The error file written for spreadsheets: formulas neutralised, line breaks quoted."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from dataflow.errorfile import ErrorFile, neutralize
from dataflow.rows import RowError


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
        ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
        ("@SUM(A1:A2)", "'@SUM(A1:A2)"),
        ("-2+3", "'-2+3"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("-", "'-"),
        ("-12.5", "-12.5"),
        ("+44", "+44"),
        ("1e5", "1e5"),
        ("-.5", "-.5"),
        ("a=b", "a=b"),
        ("", ""),
    ],
)
def test_neutralize(value: str, written: str) -> None:
    assert neutralize(value) == written


def read(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


@pytest.mark.parametrize("on", [True, False])
def test_values_written_back(tmp_path: Path, on: bool) -> None:
    errors = ErrorFile(tmp_path / "e.csv", ["=a", "b"], neutralize_formulas=on)
    errors.add(RowError(2, "transform", "bad"), ["=1+1", "x\ry"])
    errors.add(RowError(3, "transform", "bad"), ["-12.5", "two\nlines"])
    errors.close()
    rows = read(tmp_path / "e.csv")
    assert rows[0][:2] == (["'=a", "b"] if on else ["=a", "b"])
    assert rows[1][:2] == (["'=1+1", "x\ry"] if on else ["=1+1", "x\ry"])  # lone CR quoted
    assert rows[2][:2] == ["-12.5", "two\nlines"]
    assert len(rows) == 3
