"""What flows between blocks: chunks of rows with their source line numbers.

A *chunk* is a slice of one source file: the source values of every row (as text, indexed by
the row's line number in the decrypted file, header = line 1), the mapped API records of the
rows that passed every rule, and the rows that did not (`RowError`, a value, never an
exception). Chunks are bounded in size, so memory does not grow with the file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:  # the engine core loads without pandas (`dataflow validate` stays light)
    import numpy as np
    import pandas as pd

STAGE_TRANSFORM = "transform"
STAGE_DESTINATION = "destination"


@dataclass(frozen=True)
class RowError:
    """One rejected or failed row, destined for the error file."""

    line_no: int
    stage: str  # transform | destination
    message: str
    status_code: str = ""
    raw: str | None = None  # the raw text of a malformed line (its fields are unknown)


@dataclass
class Chunk:
    """Consecutive rows of one file after mapping."""

    source: pd.DataFrame  # every well-formed row's source values, index = line number
    records: pd.DataFrame  # API fields of the valid rows, index = line number
    errors: list[RowError] = field(default_factory=list)
    filtered: int = 0  # blank lines: counted, never sent, not errors

    @property
    def total(self) -> int:
        """Rows this chunk accounts for: records + errors + filtered."""
        return len(self.records) + len(self.errors) + self.filtered


@dataclass(frozen=True)
class Request:
    """One API call's worth of records, with the source lines it carries."""

    # the source line of each record, in the body's order: an int64 array (a slice of the
    # chunk's, no Python int per row); a sequence of ints is taken too
    line_nos: np.ndarray[Any, Any] | Sequence[int]
    body: bytes  # serialised JSON
    source: pd.DataFrame  # source values of the chunk these lines came from
    customers: tuple[int, ...] = ()  # customerId of each line, for bulk templates
    request_id: str | None = None  # the idempotency key, for bulk templates

    def lines(self) -> list[int]:
        """The line numbers as Python ints."""
        return line_list(self.line_nos)

    def fail(self, status_code: str, message: str, final: bool = True) -> list[RecordResult]:
        """The same failure for every line of this request (`final=False`: no verdict)."""
        return [RecordResult(n, False, status_code, message, final) for n in self.lines()]


def line_list(line_nos: np.ndarray[Any, Any] | Sequence[int]) -> list[int]:
    """Line numbers (an array or a sequence) as a list of Python ints."""
    tolist = getattr(line_nos, "tolist", None)
    if tolist is not None:
        listed: list[int] = tolist()
        return listed
    return [int(n) for n in line_nos]


@dataclass(frozen=True)
class RecordResult:
    """The API's verdict on one source line."""

    line_no: int
    ok: bool
    status_code: str = ""
    message: str = ""
    # False: no verdict from the API about this row (transient or unconfirmed); such a row is
    # sent again if its file is kept
    final: bool = True
    api_id: str = ""  # the API's id for an accepted record (earnedBadgeId / issuedId), if given


class Accepted(Sequence[RecordResult]):
    """Every line of one request accepted by the API, as arrays: the compact form of a list
    of ``RecordResult(line_no, True, api_id=...)``, one per line, in the request's order.

    The template returns it for an all-success answer (one pass over the answer, no object per
    row); `dataflow.accounts.Accounts.on_result` and `dataflow.checkpoint.Checkpoints.ack`
    take it whole. It is still a sequence of `RecordResult` (made on access) for any other
    reader, and equal to the list it stands for.
    """

    __slots__ = ("_ids", "lines")

    def __init__(self, lines: np.ndarray, api_ids: Sequence[Any] | None = None) -> None:
        self.lines = lines  # int64 line numbers
        if api_ids is not None and len(api_ids) != len(lines):
            raise ValueError(f"{len(api_ids)} api ids for {len(lines)} lines")
        self._ids = api_ids  # the API's ids as answered (made text on access); None: none

    def api_id(self, position: int) -> str:
        """The API's id of the line at `position`, as text ("" when none was given)."""
        if self._ids is None:
            return ""
        value = self._ids[position]
        return "" if value is None else str(value)

    def __len__(self) -> int:
        return len(self.lines)

    @overload
    def __getitem__(self, index: int) -> RecordResult: ...
    @overload
    def __getitem__(self, index: slice) -> list[RecordResult]: ...
    def __getitem__(self, index: int | slice) -> RecordResult | list[RecordResult]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        position = range(len(self))[index]  # IndexError as a list raises it
        return RecordResult(int(self.lines[position]), True, api_id=self.api_id(position))

    def __iter__(self) -> Iterator[RecordResult]:
        for position, line_no in enumerate(self.lines.tolist()):
            yield RecordResult(line_no, True, api_id=self.api_id(position))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable arrays, like a list

    def __repr__(self) -> str:
        return f"Accepted({len(self)} lines)"
