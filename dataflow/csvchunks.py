"""Stream a delimited text file in chunks, knowing every row's line number.

Fast path: a block of complete lines is parsed by Arrow (every column as text). When the block
holds no multi-line record, each physical line is exactly one row, so line numbers follow
from the lines Arrow reported as malformed. Slow path, only for blocks with a value spanning
lines (or a stray CR): Python's csv module, record by record, which can also pull lines past
the block for a quoted value that crosses it. A broken quote never swallows the rest of the
file: a malformed record that spans lines is reported as its first line, and parsing resumes
on the next line.

Yields `Block`s: the rows as a DataFrame of strings indexed by line number, the malformed
lines (line number, text, reason), and how many blank lines were skipped.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from dataflow import memory
from dataflow.errors import FileRejected

MAX_RECORD_LINES = 1000  # a quoted value longer than this is taken as a broken quote


@dataclass
class Block:
    rows: pd.DataFrame  # index: line number
    malformed: list[tuple[int, str, str]] = field(default_factory=list)
    blank: int = 0


class _TooLong(Exception):
    pass


class CsvChunks:
    """Open `path` and read its header (unless `headers` is given for a headerless file)."""

    def __init__(
        self,
        path: Path,
        *,
        delimiter: str = ",",
        encoding: str = "utf-8",
        headers: list[str] | None = None,
        block_chars: int = 4 << 20,
    ) -> None:
        memory.tune()  # a streamed file: freed arrays go back to the system
        codec = codecs.lookup(encoding).name
        self.path = path
        self.encoding = encoding
        self._fh = path.open(
            encoding="utf-8-sig" if codec == "utf-8" else encoding, newline="", errors="strict"
        )
        self.delimiter = delimiter
        self.block_chars = block_chars
        self._pending = ""
        self._eof = False
        self.next_line = 1
        try:
            if headers is None:
                self.columns = self._read_header()
            else:
                self.columns = list(headers)
        except BaseException:
            self._fh.close()
            raise
        seen: dict[str, int] = {}
        for position, name in enumerate(self.columns, 1):
            if name in seen:
                self.close()
                raise FileRejected(
                    f"the header names column {name!r} twice (columns {seen[name]} and {position})"
                )
            seen[name] = position

    def close(self) -> None:
        self._fh.close()

    def check_decodable(self) -> None:
        """Decode the whole file once, streaming, so that a bad byte deep in it is a
        file-level failure before any row is sent (not after half the file went out)."""
        encoding = self._fh.encoding
        with self.path.open("rb") as raw:
            offset = begin = 0  # of `block` in the file; of the text (after a BOM)
            if encoding == "utf-8-sig":  # skip the BOM here: offsets then stay the file's
                encoding = "utf-8"
                offset = begin = len(codecs.BOM_UTF8) if raw.read(3) == codecs.BOM_UTF8 else 0
                raw.seek(offset)
            decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
            utf8 = codecs.lookup(encoding).name == "utf-8"
            buffer = bytearray(1 << 20)  # one buffer: no fresh megabyte (page faults) per read
            while size := raw.readinto(buffer):
                block = buffer if size == len(buffer) else buffer[:size]
                held = decoder.getstate()[0]  # bytes of a character split across reads
                if utf8 and not held and block.isascii():  # valid UTF-8 as it is, and
                    offset += len(block)  # 10 times faster to tell than to decode
                    continue
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as exc:
                    data = held + block
                    where = offset - len(held) + exc.start
                    line = self._line_at(encoding, begin, where)
                    raise FileRejected(
                        f"the file is not valid {self.encoding} (byte 0x{data[exc.start]:02x} "
                        f"at offset {where}, on line {line}); set `encoding:` "
                        "on the field_mapping block"
                    ) from exc
                offset += len(block)
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError as exc:
                line = self._line_at(encoding, begin, offset)
                raise FileRejected(
                    f"the file is not valid {self.encoding}: it ends inside a character, on "
                    f"line {line}; set `encoding:` on the field_mapping block"
                ) from exc

    def _line_at(self, encoding: str, begin: int, end: int) -> int:
        """The line number at byte `end` of the file (its text starting at byte `begin`):
        counted only when a file is rejected, so a good file is not counted twice."""
        lines = _LineCounter()
        decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        with self.path.open("rb") as raw:
            raw.seek(begin)
            while begin < end and (block := raw.read(min(1 << 20, end - begin))):
                lines.add(decoder.decode(block))
                begin += len(block)
        lines.add(decoder.decode(b"", final=True))
        return lines.current

    # -- raw text ---------------------------------------------------------------------------

    def _read(self, size: int) -> str:
        try:
            return self._fh.read(size)
        except UnicodeDecodeError as exc:
            self.check_decodable()  # raises, naming the exact line of the bad byte
            raise FileRejected(
                f"the file is not valid {self.encoding} (byte 0x{exc.object[exc.start]:02x} "
                f"after line {self.next_line}); set `encoding:` on the field_mapping block"
            ) from exc

    def _readline(self) -> str:
        """One more line (for a record that crosses the block), '' at end of file.

        A line ends at LF, CRLF or a lone CR, as for Python's csv module."""
        while not self._eof:
            if _line_end(self._pending) is not None:
                break
            more = self._read(1 << 16)
            if not more:
                self._eof = True
            self._pending += more
        cut = _line_end(self._pending) or len(self._pending)
        line, self._pending = self._pending[:cut], self._pending[cut:]
        return line

    def _next_text(self) -> str:
        """Complete lines worth about `block_chars`, '' at end of file."""
        text = self._pending
        if not self._eof:
            more = self._read(self.block_chars)
            if not more:
                self._eof = True
            text += more
        # cut after the last line end; a final CR may be the first half of a CRLF
        cut = len(text) if self._eof else max(text.rfind("\n"), text.rfind("\r", 0, -1)) + 1
        if cut == 0 and not self._eof:  # a single line longer than a block
            self._pending = text
            return self._readline()
        block, self._pending = text[:cut], text[cut:]
        return block

    def _read_header(self) -> list[str]:
        line = self._readline()
        if not line.strip():
            raise FileRejected("the file is empty or its first line (the header) is blank")
        try:
            header = next(csv.reader([line], delimiter=self.delimiter, strict=True))
        except csv.Error as exc:
            raise FileRejected(f"line 1: the header is not valid CSV: {exc}") from exc
        self.next_line = 2
        return [name.strip() for name in header]

    # -- parsing ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Block]:
        while True:
            text = self._next_text()
            if not text:
                return
            first = self.next_line
            nlines = _count_lines(text)
            block = self._fast(text, first, nlines)
            if block is None:
                block = self._slow(text, first)
            else:
                self.next_line = first + nlines
            yield block

    def _fast(self, text: str, first: int, nlines: int) -> Block | None:
        if "\r" in text and text.count("\r") != text.count("\r\n"):
            return None  # a stray CR: Arrow would end a row there
        invalid: list[tuple[int | None, str]] = []

        def handler(row: Any) -> str:
            invalid.append((row.number, row.text))
            return "skip"

        data = text.encode("utf-8")
        try:
            try:  # without a handler first: Arrow parses faster so, and most blocks are clean
                table = self._arrow(data, None)
            except pa.ArrowInvalid:
                invalid.clear()
                table = self._arrow(data, handler)
        except (pa.ArrowInvalid, pa.ArrowException):
            return None
        if any(number is None or "\n" in t or "\r" in t for number, t in invalid):
            return None
        if any(t.count('"') % 2 for _, t in invalid):
            return None  # an open quote may go on past this line, even past the block
        if '"' in text and _any_newline(table):
            return None
        if table.num_rows + len(invalid) != nlines:
            return None  # something we did not foresee: take the exact path
        lines = np.arange(first, first + nlines, dtype=np.int64)
        if invalid:  # Arrow numbers the lines of the block from 1
            bad = np.array([int(n) - 1 for n, _ in invalid if n is not None], dtype=np.int64)
            lines = np.delete(lines, bad)
        ncols = len(self.columns)
        malformed = [
            (first + int(n) - 1, t, _count_reason(t, ncols, self.delimiter))
            for n, t in invalid
            if n is not None
        ]
        frame = table.rename_columns(self.columns).to_pandas()
        frame.index = pd.Index(lines, dtype="int64")
        return _drop_blank(Block(frame, malformed), self.delimiter)

    def _arrow(self, data: bytes, handler: Any) -> pa.Table:
        """`data` parsed by Arrow, every column as text; `handler` is told malformed rows
        (without one, a malformed row raises ArrowInvalid)."""
        ncols = len(self.columns)
        return pa_csv.read_csv(
            io.BytesIO(data),
            read_options=pa_csv.ReadOptions(
                column_names=[f"c{i}" for i in range(ncols)],
                use_threads=False,
                block_size=len(data) + 1,
            ),
            parse_options=pa_csv.ParseOptions(
                delimiter=self.delimiter,
                invalid_row_handler=handler,
                ignore_empty_lines=False,
                newlines_in_values=False,
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types={f"c{i}": pa.string() for i in range(ncols)},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )

    def _slow(self, text: str, first: int) -> Block:
        ncols = len(self.columns)
        pending = deque(_split_lines(text))
        rows: list[list[str]] = []
        linenos: list[int] = []
        malformed: list[tuple[int, str, str]] = []
        blank = 0
        line_no = first
        while pending:
            consumed: list[str] = []

            def feed(consumed: list[str] = consumed) -> Iterator[str]:
                while True:
                    line = pending.popleft() if pending else self._readline()
                    if not line:
                        return
                    consumed.append(line)
                    if len(consumed) > MAX_RECORD_LINES:
                        raise _TooLong
                    yield line

            error = ""
            record: list[str] | None
            try:
                record = next(csv.reader(feed(), delimiter=self.delimiter, strict=True))
            except StopIteration:
                break
            except csv.Error as exc:
                record, error = None, f"broken quoting ({exc})"
            except _TooLong:
                record, error = None, "unterminated quote"
            span = len(consumed)
            if record is not None and len(record) == ncols:
                rows.append(record)
                linenos.append(line_no)
            elif span > 1:
                # a broken quote: report the first line, parse again from the second
                raw = consumed[0].rstrip("\r\n")
                malformed.append((line_no, raw, "unterminated quote"))
                pending.extendleft(reversed(consumed[1:]))
                span = 1
            elif record is not None and (record == [] or not "".join(record).strip()):
                blank += 1
            else:
                raw = consumed[0].rstrip("\r\n") if consumed else ""
                reason = error or f"expected {ncols} fields, found {len(record or [])}"
                malformed.append((line_no, raw, reason))
            line_no += span
        self.next_line = line_no
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in self.columns]
        frame = pd.DataFrame(
            {
                name: pd.array(list(col), dtype="str")
                for name, col in zip(self.columns, columns, strict=True)
            },
            index=pd.Index(linenos, dtype="int64"),
        )
        return _drop_blank(Block(frame, malformed, blank), self.delimiter)


_BREAK = re.compile(r"\r\n|\r|\n")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")


def _split_lines(text: str) -> list[str]:
    """Lines with their ends (LF, CRLF, lone CR), and only those: str.splitlines would
    also break at form feeds, U+0085, U+2028 and others that are data in a CSV value."""
    return _LINE.findall(text)


def _line_end(text: str) -> int | None:
    """Where the first line of `text` ends (after its terminator), None if it does not yet.
    A CR at the very end may be followed by LF: the line is complete only once known."""
    found = _BREAK.search(text)
    if found is None or (found.group() == "\r" and found.end() == len(text)):
        return None
    return found.end()


class _LineCounter:
    """The line number reached by text fed in pieces (LF, CRLF and a lone CR end a line)."""

    def __init__(self) -> None:
        self.current = 1
        self._cr = False  # the last piece ended with CR

    def add(self, text: str) -> None:
        if not text:
            return
        breaks = text.count("\n") + text.count("\r") - text.count("\r\n")
        if self._cr and text[0] == "\n":
            breaks -= 1
        self.current += breaks
        self._cr = text.endswith("\r")


def _count_lines(text: str) -> int:
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def _any_newline(table: pa.Table) -> bool:
    for column in table.columns:
        if pc.any(pc.match_substring(column, "\n")).as_py():
            return True
        if pc.any(pc.match_substring(column, "\r")).as_py():
            return True
    return False


def _count_reason(text: str, ncols: int, delimiter: str) -> str:
    try:
        found = len(next(csv.reader([text], delimiter=delimiter)))
    except (csv.Error, StopIteration):
        return "malformed CSV (broken quoting)"
    if text.count('"') % 2:
        return "unterminated quote"
    return f"expected {ncols} fields, found {found}"


def _blank_line(raw: str, delimiter: str) -> bool:
    if not raw.strip(" \t\r\n" + delimiter):
        return True
    try:
        fields = next(csv.reader([raw], delimiter=delimiter, strict=True))
    except (csv.Error, StopIteration):
        return False
    return not "".join(fields).strip()


def _drop_blank(block: Block, delimiter: str) -> Block:
    """Lines with nothing but delimiters and spaces are counted as blank, not as rows."""
    frame = block.rows
    if len(frame) and len(frame.columns):
        # test the first column, then the others only on the few rows still empty
        empty = frame.iloc[:, 0].str.strip() == ""
        for name in frame.columns[1:]:
            if not empty.any():
                break
            empty[empty] = frame.loc[empty, name].str.strip() == ""
        if empty.any():
            block.blank += int(empty.sum())
            block.rows = frame[~empty]
    still = []
    for line_no, raw, reason in block.malformed:
        if _blank_line(raw, delimiter):  # ", ," is blank, whatever its field count
            block.blank += 1
        else:
            still.append((line_no, raw, reason))
    block.malformed = still
    return block
