"""The block contract: what a block is and what flows between blocks.

A dataflow is one Source, any number of FileSteps, one Transform and one Sink, in that order,
and at most one Trigger (when it runs by itself; without one it runs only on demand)::

    Trigger.next_fire(previous, now) -> datetime   (the scheduler asks; no library type crosses)

    Source.list_files() -> [RemoteFile]        (one file is the unit of work)
    Source.download(file, path) -> sha256
    FileStep.apply(path, workdir) -> path      (decrypt, ...; raises FileRejected)
    FileStep.protect_output(local, name, workdir) -> (local, name)   (before each upload)
    FileStep.apply_stream(stream, path, workdir) -> path   (optional: the first step reads
                                               the download as it is written; dataflow.overlap)
    Transform.read(path) -> RowStream          (chunks of rows; bad rows are values)
    Sink.build_requests(records, source, file_id) -> [Request]   (the sink batches; the
                                               template says what one request looks like)
    Sink.send(requests, on_result)             (async; one RecordResult per source line)
    Source.upload_error_file(local, name, *, earlier=()), Source.move_original(file, failed)

Each block type is one module in the top-level `blocks/` folder (import name
`dataflow_blocks`) with a `Config` model (a `BlockConfig`) that declares every key once; that
model drives validation, the docs and secret handling.
Blocks get their config and a `RunContext`, open their resources in `open()` and release them
in `close()`, and translate library exceptions into `dataflow.errors` at their boundary.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from dataflow.rows import Chunk, RecordResult, Request

if TYPE_CHECKING:
    import pandas as pd

BlockKind = Literal["source", "step", "transform", "sink", "trigger"]

# (relative YAML path inside the block, message)
CheckProblem = tuple[tuple[str | int, ...], str]


class Template(Protocol):
    """What a destination API's record format offers the blocks: the fields a transform
    must produce (name -> kind), and how records become requests and answers verdicts. The
    Capillary badge templates (`dataflow.templates`) are one implementation."""

    @property
    def name(self) -> str: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def fields(self) -> dict[str, str]: ...  # mandatory field -> kind
    @property
    def all_fields(self) -> dict[str, str]: ...  # mandatory and optional
    @property
    def group_by(self) -> tuple[str, ...]: ...  # fields whose rows share one request
    @property
    def row_rule(self) -> Callable[[pd.DataFrame], pd.Series[Any]] | None: ...
    @property
    def build_requests(
        self,
    ) -> Callable[[Any, pd.DataFrame, pd.DataFrame, int, str], Iterator[Request]]: ...
    @property
    def parse_response(self) -> Callable[[Request, int, Any], Sequence[RecordResult]]: ...
    @property
    def accept_raw(self) -> Callable[[Request, bytes], Sequence[RecordResult] | None] | None:
        """A 2xx answer's bytes -> every row accepted (`Accepted`), or None: parse it."""
        ...


class ByteStream(Protocol):
    """Bytes read in order (`FileStep.apply_stream`'s input); b"" at the end."""

    def read(self, size: int = -1, /) -> bytes: ...


class BlockConfig(BaseModel):
    """Keys every block has. Subclasses add their own; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    type: str
    enabled: bool = True

    def check(self, template: Template) -> list[CheckProblem]:
        """Cross-checks that need the template (mandatory fields, ...). Override as needed."""
        return []


@dataclass
class RunContext:
    """What a block may know about the run it is part of."""

    dataflow: str
    template: Template
    workdir: Path  # private (mode 700), removed at the end of the run
    base_dir: Path  # the dataflow file's folder: relative paths are resolved against it
    dry_run: bool = False


class Block(abc.ABC):
    kind: ClassVar[BlockKind]
    Config: ClassVar[type[BlockConfig]]

    def __init__(self, config: Any, context: RunContext) -> None:
        self.config = config
        self.context = context

    @classmethod
    def remove_leftovers(cls) -> None:
        """Clean what a killed run of this block type left behind (called at each run start)."""
        return None

    def open(self) -> None:  # noqa: B027 - optional hook
        """Acquire resources (connections, keyrings). Called once per run."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release everything `open` acquired; must be safe to call after a failed open."""


@dataclass(frozen=True)
class RemoteFile:
    path: str  # full path on the server
    name: str  # base name
    size: int
    mtime: int
    ok_path: str | None = None  # the companion X.ok, when ok_file is on


class Source(Block):
    kind = "source"

    @abc.abstractmethod
    def list_files(self) -> list[RemoteFile]:
        """Files ready to process, oldest first."""

    @abc.abstractmethod
    def download(self, file: RemoteFile, dest: Path) -> str:
        """Stream `file` to `dest`; return the SHA-256 hex digest of its bytes."""

    @abc.abstractmethod
    def upload_error_file(self, local: Path, name: str, *, earlier: Collection[str] = ()) -> str:
        """Upload atomically to the error directory under `name`; return the final path.

        Never overwrites (a taken name gets a suffix), and is idempotent: asked again for the
        same `local` and `name` (a resumed run), an identical file already uploaded is the
        answer, not a second copy. `earlier` (given only for an encrypted error file, whose
        bytes differ at each attempt) holds the SHA-256 of what earlier attempts uploaded: a
        file under `name` with one of them is the answer too.
        """

    @abc.abstractmethod
    def move_original(self, file: RemoteFile, failed: bool) -> str:
        """Move the original (and its .ok) to processed (or error) directory; return its path."""

    def prepare(self, path: Path, workdir: Path) -> Path:
        """Source-specific unpacking after the file steps (unzip); default: nothing."""
        return path

    @property
    def result_file(self) -> Literal["errors", "all"]:
        """What is written back per file (contract §9): ``errors`` (the error file: rejected
        and failed rows) or ``all`` (every non-filtered row with its outcome and the API's
        id, under the same name); a source may let users choose."""
        return "errors"

    @property
    def neutralize_formulas(self) -> bool:
        """Write a value that would open as a spreadsheet formula with a leading ``'`` in the
        error file this source gets back (contract §3); a source may let users turn it off."""
        return True


class FileStep(Block):
    kind = "step"
    # True: `apply_stream` can read the file while it is still being downloaded
    reads_while_downloading: ClassVar[bool] = False

    @abc.abstractmethod
    def apply(self, path: Path, workdir: Path) -> Path:
        """Turn one local file into another (decrypt, ...). Raise FileRejected on failure."""

    def protect_output(self, local: Path, name: str, workdir: Path) -> tuple[Path, str]:
        """The file to upload, and its name, for `local` about to be written back to the
        server as `name` (an error or result file). The pipeline calls it for every step, in
        order, before each upload; a step may encrypt it (writing the ciphertext into
        `workdir`, the file's private directory) and rename it. It must be deterministic in
        `name` (a resumed upload asks again). Default: unchanged. Raise FatalError when it
        cannot: nothing is uploaded then."""
        return local, name

    def apply_stream(self, stream: ByteStream, path: Path, workdir: Path) -> Path:
        """`apply` to the bytes of `path` as `stream` yields them, while `path` is still being
        downloaded (the first step, when it `reads_while_downloading`; `dataflow.overlap`).
        Leave `path` in place: the pipeline takes the result only if `stream` gave exactly
        the downloaded bytes, and otherwise calls `apply`. Raise as `apply` does."""
        raise NotImplementedError(f"{type(self).__name__} cannot read while downloading")


class RowStream(abc.ABC):
    """An open source file: its column names, then its chunks."""

    columns: list[str]

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Chunk]: ...

    def select(self, chunks: range) -> bool:
        """Yield only the chunks whose index (0-based, in file order) is in `chunks`, without
        transforming the others (a shard of a big file, `dataflow.shards`); line numbers stay
        the file's. False when this stream cannot: it yields every chunk, the pipeline drops
        the others."""
        return False

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the file."""


class Transform(Block):
    kind = "transform"

    @abc.abstractmethod
    def read(self, path: Path) -> RowStream:
        """Open `path` and check its header; raise FileRejected if it cannot be used."""

    @property
    def delimiter(self) -> str:
        """The source's field delimiter: the error file written back uses the same."""
        return ","


OnResult = Callable[[Request, Sequence[RecordResult]], None]


class Sink(Block):
    kind = "sink"

    @abc.abstractmethod
    def build_requests(
        self, records: pd.DataFrame, source: pd.DataFrame, file_id: str
    ) -> Iterator[Request]:
        """The requests for one chunk's valid records, batched as this sink sends them; the
        template decides what each request looks like. `file_id` identifies the file's
        content (and send), so request ids are deterministic."""

    @abc.abstractmethod
    async def send(self, requests: AsyncIterator[Request], on_result: OnResult) -> None:
        """Send every request; report each one's per-line results through `on_result`.

        Raises FatalError (bad credentials, retries exhausted) to stop the run.
        """


class Trigger(Block):
    """When a dataflow runs by itself. The scheduler only calls these three methods."""

    kind = "trigger"

    def __init__(self, config: Any, context: RunContext | None = None) -> None:
        # a trigger is consulted outside any run (by the scheduler): it has no run context
        self.config = config

    @abc.abstractmethod
    def next_fire(self, previous: datetime | None, now: datetime) -> datetime | None:
        """The next fire time after `previous` (None at first: after `now`); None: never again.

        A time before `now` is a missed fire; the scheduler coalesces missed fires into one.
        """

    def fire_key(self, when: datetime) -> str | None:
        """Fires that share a key run once (for example one wall-clock minute); None: no guard."""
        return None

    def describe(self) -> str:
        """A short human description, for logs and the run-history page."""
        return type(self).__name__
