"""What flows between blocks: chunks of rows with their source line numbers.

A *chunk* is a slice of one source file: the source values of every row (as text, indexed by
the row's line number in the decrypted file, header = line 1), the mapped API records of the
rows that passed every rule, and the rows that did not (`RowError`, a value, never an
exception). Chunks are bounded in size, so memory does not grow with the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the engine core loads without pandas (`dataflow validate` stays light)
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

    line_nos: tuple[int, ...]
    body: bytes  # serialised JSON
    source: pd.DataFrame  # source values of the chunk these lines came from
    customers: tuple[int, ...] = ()  # customerId of each line, for bulk templates
    request_id: str | None = None  # the idempotency key, for bulk templates

    def fail(self, status_code: str, message: str, final: bool = True) -> list[RecordResult]:
        """The same failure for every line of this request (`final=False`: no verdict)."""
        return [RecordResult(n, False, status_code, message, final) for n in self.line_nos]


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
