"""The chunked CSV reader: exact line numbers whatever the block size."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from dataflow.csvchunks import CsvChunks
from dataflow.errors import FileRejected


def parse(path: Path, block_chars: int, **kw: object) -> tuple[list, list, int, list[str]]:
    chunks = CsvChunks(path, block_chars=block_chars, **kw)  # type: ignore[arg-type]
    rows, bad, blank = [], [], 0
    for block in chunks:
        rows += [
            (int(i), list(r))
            for i, r in zip(block.rows.index, block.rows.itertuples(index=False), strict=True)
        ]
        bad += [(n, raw) for n, raw, _ in block.malformed]
        blank += block.blank
    chunks.close()
    return rows, bad, blank, chunks.columns


def random_file(seed: int) -> tuple[str, list, list, int]:
    """A file of good, quoted, multi-line, malformed and blank rows, with the truth."""
    rng = random.Random(seed)
    lines = ["a,b,c"]
    rows, bad, blank = [], [], 0
    for i in range(400):
        line_no = len(lines) + 1
        kind = rng.choice(["plain"] * 6 + ["quoted", "multi", "short", "long", "blank", "crlf"])
        if kind == "plain":
            lines.append(f"{i},x{i},y")
            rows.append((line_no, [str(i), f"x{i}", "y"]))
        elif kind == "quoted":
            lines.append(f'"{i}","a,b",""""')
            rows.append((line_no, [str(i), "a,b", '"']))
        elif kind == "multi":
            lines.append(f'{i},"first\nsecond",z')
            rows.append((line_no, [str(i), "first\nsecond", "z"]))
        elif kind == "short":
            lines.append(f"{i},only")
            bad.append((line_no, f"{i},only"))
        elif kind == "long":
            lines.append(f"{i},1,2,3")
            bad.append((line_no, f"{i},1,2,3"))
        elif kind == "blank":
            lines.append("")
            blank += 1
        else:
            lines.append(f"{i},cr,lf\r")
            rows.append((line_no, [str(i), "cr", "lf"]))
    text = "\n".join(lines) + "\n"
    # multi-line values occupy two physical lines: renumber
    fixed_rows, fixed_bad, shift = [], [], 0
    events = sorted([(n, "r", v) for n, v in rows] + [(n, "b", v) for n, v in bad])
    for n, what, value in events:
        if what == "r":
            fixed_rows.append((n + shift, value))
            shift += value[1].count("\n") if isinstance(value, list) else 0
        else:
            fixed_bad.append((n + shift, value))
    return text, fixed_rows, fixed_bad, blank


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("block_chars", [16, 333, 4 << 20])
def test_line_numbers_are_exact(tmp_path: Path, seed: int, block_chars: int) -> None:
    text, rows, bad, blank = random_file(seed)
    path = tmp_path / "f.csv"
    path.write_bytes(text.encode())
    got_rows, got_bad, got_blank, columns = parse(path, block_chars)
    assert columns == ["a", "b", "c"]
    assert got_rows == rows
    assert got_bad == bad
    assert got_blank == blank


def test_broken_quote_does_not_swallow_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text('a,b,c\n1,2,3\n6,"7,8\n9,10,11\n12,13,14\n')
    rows, bad, _, _ = parse(path, 1 << 20)
    assert rows == [(2, ["1", "2", "3"]), (4, ["9", "10", "11"]), (5, ["12", "13", "14"])]
    assert bad == [(3, '6,"7,8')]


def test_bom_encoding_delimiter_headerless(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes("\ufeffa;b\nJosé;1\n".encode())
    rows, _, _, columns = parse(path, 1 << 20, delimiter=";")
    assert columns == ["a", "b"] and rows == [(2, ["José", "1"])]
    path.write_bytes("Zoë;2\n".encode("latin-1"))
    rows, _, _, columns = parse(
        path, 1 << 20, delimiter=";", encoding="latin-1", headers=["x", "y"]
    )
    assert columns == ["x", "y"] and rows == [(1, ["Zoë", "2"])]


def test_undecodable_bytes_are_a_file_level_failure(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(b"a,b\n\xff\xfe,1\n")
    with pytest.raises(FileRejected, match=r"not valid utf-8.*set `encoding:`"):
        parse(path, 1 << 20)


def test_duplicate_header_and_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text("a,a\n1,2\n")
    with pytest.raises(FileRejected, match="names column 'a' twice"):
        parse(path, 1 << 20)
    path.write_text("")
    with pytest.raises(FileRejected, match="empty"):
        parse(path, 1 << 20)
