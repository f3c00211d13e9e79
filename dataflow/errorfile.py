"""The error file: every rejected or failed row, spooled on local disk, then uploaded.

Its header is the source's columns, then ``LINE_NO,error_stage,status_code,error_message``;
it uses the source's delimiter and is written as UTF-8. A malformed line has no fields to
show: its columns are left empty and its raw text is quoted in the message. A file-level
failure is one row with the stage that failed and what to do next.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import IO, Any

from dataflow.redact import redact
from dataflow.rows import RowError

TRAILER = ["LINE_NO", "error_stage", "status_code", "error_message"]
MAX_RAW = 500


def error_file_name(original: str, stamp: str) -> str:
    """``result_<stamp>_<name>`` with .gpg/.pgp/.asc/.zip removed from the end."""
    name = original
    while True:
        lower = name.lower()
        for suffix in (".gpg", ".pgp", ".asc", ".zip"):
            if lower.endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                break
        else:
            return f"result_{stamp}_{name}"


class ErrorFile:
    def __init__(self, path: Path, columns: list[str], delimiter: str = ",") -> None:
        self.path = path
        self.columns = columns
        self.delimiter = delimiter
        self.rows = 0
        self._fh: IO[str] | None = None
        self._writer: Any = None

    def _open(self) -> None:
        self._fh = self.path.open("w", encoding="utf-8", newline="")
        self._writer = csv.writer(self._fh, delimiter=self.delimiter, lineterminator="\n")
        self._writer.writerow([*self.columns, *TRAILER])

    def add(self, error: RowError, values: list[Any] | None) -> None:
        if self._writer is None:
            self._open()
        message = error.message
        if error.raw is not None:
            raw = error.raw if len(error.raw) <= MAX_RAW else error.raw[:MAX_RAW] + "..."
            message = f"{message}: {raw}"
        cells = [("" if v is None else str(v)) for v in values] if values else []
        cells += [""] * (len(self.columns) - len(cells))
        self._writer.writerow(
            [*cells, error.line_no or "", error.stage, error.status_code, redact(message)]
        )
        self.rows += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
