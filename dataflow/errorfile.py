"""The error file: every rejected or failed row, spooled on local disk, then uploaded.

Its header is the source's columns, then ``LINE_NO,error_stage,status_code,error_message``;
it uses the source's delimiter and is written as UTF-8. A malformed line has no fields to
show: its columns are left empty and its raw text is quoted in the message. A file-level
failure is one row with the stage that failed and what to do next.

Business users open it in a spreadsheet, so (contract §3) a value that would start a formula
(first character ``=``, ``+``, ``-``, ``@``, tab or CR, and not a plain number such as
``-12.5`` or ``+44``) is written with a leading ``'``, and a value holding a line break or a
lone CR is quoted. ``neutralize_formulas=False`` (the source's option) writes values raw.
"""

from __future__ import annotations

import errno
import re
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

from dataflow.errors import FatalError
from dataflow.redact import redact
from dataflow.rows import RowError

TRAILER = ["LINE_NO", "error_stage", "status_code", "error_message"]
RESULT_TRAILER = ["outcome", "api_id"]  # `result_file: all`: every row, with the API's id
MAX_RAW = 500
MAX_KINDS = 200  # distinct (stage, code, message) counted per file; the rest is "other"
SUMMARY_ROWS = 20  # the commonest kept in the ledger's error_summary
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


STAMP_FORMAT = "%Y%m%d%H%M%S"  # contract §3: result_<stamp>_<name>, and a taken name's suffix


def timestamp(when: float | None = None) -> str:
    """The contract's ``YYYYMMDDHHMMSS`` stamp, in UTC (now by default)."""
    return time.strftime(STAMP_FORMAT, time.gmtime(when))


def error_file_name(original: str, stamp: str) -> str:
    """``result_<stamp>_<name>`` with .gpg/.pgp/.asc/.zip/.gz removed from the end."""
    name = original
    while True:
        lower = name.lower()
        for suffix in (".gpg", ".pgp", ".asc", ".zip", ".gz"):
            if lower.endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                break
        else:
            return f"result_{stamp}_{name}"


def neutralize(value: str) -> str:
    """``'`` before a value a spreadsheet would read as a formula; plain numbers unchanged."""
    if value.startswith(FORMULA_START) and not PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


class ErrorFile:
    def __init__(
        self,
        path: Path,
        columns: list[str],
        delimiter: str = ",",
        *,
        neutralize_formulas: bool = True,
        all_rows: bool = False,
    ) -> None:
        self.path = path
        self.all_rows = all_rows  # a result file: accepted rows too, and outcome/api_id
        self.columns = columns
        self.delimiter = delimiter
        self.neutralize_formulas = neutralize_formulas
        self.rows = 0
        self.kinds: Counter[tuple[str, str, str]] = Counter()  # bounded by MAX_KINDS
        self._fh: IO[str] | None = None
        self._special = (delimiter, '"', "\n", "\r")

    def _cell(self, value: str) -> str:
        if self.neutralize_formulas:
            value = neutralize(value)
        if any(c in value for c in self._special):  # csv's minimal quoting misses a lone CR
            return '"' + value.replace('"', '""') + '"'
        return value

    def _write(self, cells: list[Any]) -> None:
        line = self.delimiter.join(self._cell("" if c is None else str(c)) for c in cells)
        try:
            if self._fh is None:
                self._fh = self.path.open("w", encoding="utf-8", newline="")
                header = [*self.columns, *TRAILER, *(RESULT_TRAILER if self.all_rows else [])]
                self._fh.write(self.delimiter.join(map(self._cell, header)))
                self._fh.write("\n")
            self._fh.write(line + "\n")
        except OSError as exc:
            raise local_write_error(self.path, exc, "the error file") from exc

    def add(self, error: RowError, values: list[Any] | None) -> None:
        message = error.message
        if error.raw is not None:
            raw = error.raw if len(error.raw) <= MAX_RAW else error.raw[:MAX_RAW] + "..."
            message = f"{message}: {raw}"
        cells: list[Any] = [("" if v is None else str(v)) for v in values] if values else []
        cells += [""] * (len(self.columns) - len(cells))
        row = [*cells, error.line_no or "", error.stage, error.status_code, redact(message)]
        if self.all_rows:
            row += ["rejected" if error.stage == "transform" else "failed", ""]
        self._write(row)
        self.rows += 1
        self._count(error)

    def add_accepted(self, line_no: int, api_id: str, values: list[Any] | None) -> None:
        """An accepted row, for a result file (`result_file: all`); nothing otherwise."""
        if not self.all_rows:
            return
        cells: list[Any] = [("" if v is None else str(v)) for v in values] if values else []
        cells += [""] * (len(self.columns) - len(cells))
        self._write([*cells, line_no, "", "", "", "succeeded", api_id])
        self.rows += 1

    def _count(self, error: RowError) -> None:
        key = (error.stage, str(error.status_code), redact(error.message))
        if key in self.kinds or len(self.kinds) < MAX_KINDS:
            self.kinds[key] += 1

    def summary(self) -> list[tuple[str, str, str, int]]:
        """The commonest (stage, code, message, count), the rest summed as "other errors"."""
        top = self.kinds.most_common(SUMMARY_ROWS)
        rest = self.rows - sum(n for _, n in top)
        rows = [(stage, code, message, n) for (stage, code, message), n in top]
        return rows + ([("", "", "other errors", rest)] if rest > 0 else [])

    def close(self) -> None:
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError as exc:
                raise local_write_error(self.path, exc, "the error file") from exc


def local_write_error(path: Path, exc: OSError, what: str) -> FatalError:
    """A local write failed: a full disk, a quota, permissions. Not the file's fault."""
    directory = path.parent
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return FatalError(
            f"local disk full at {directory} while writing {what}; the file is kept for the next "
            "run: free space there, or point TMPDIR to a larger disk"
        )
    return FatalError(
        f"cannot write {what} to {directory}: {exc.strerror or exc}; the file is kept for the "
        "next run: check the permissions and space of TMPDIR"
    )
