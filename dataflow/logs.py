"""Log lines: plain text (the default) or one JSON object per line, with the run's context.

The runner sets the dataflow and run id around a run, the pipeline the lineage id around a
file (`context`); they are contextvars, so they follow the run into asyncio tasks and
`asyncio.to_thread` workers, and every record logged there carries them. Text lines show them
as ``[acme-earned-badges run=1a2b3c4d file=5e6f7a8b]``; JSON lines as the keys ``dataflow``,
``run_id`` and ``lineage_id`` (absent where they do not apply), beside ``time`` (ISO-8601,
UTC), ``level``, ``logger`` and ``message``. Secrets are masked by `RedactingFilter` on the
message and by `redact` on a traceback.

The handler writes to whatever ``sys.stderr`` is at the moment, so that a live progress bar
(which swaps ``sys.stderr`` for a proxy) prints log lines above itself.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Literal

from dataflow.redact import RedactingFilter, redact

DATAFLOW: ContextVar[str | None] = ContextVar("dataflow", default=None)
RUN_ID: ContextVar[str | None] = ContextVar("run_id", default=None)
LINEAGE_ID: ContextVar[str | None] = ContextVar("lineage_id", default=None)
FIELDS = {"dataflow": DATAFLOW, "run_id": RUN_ID, "lineage_id": LINEAGE_ID}

LogFormat = Literal["text", "json"]
FORMATS: tuple[LogFormat, ...] = ("text", "json")


@contextmanager
def context(**values: str | None) -> Iterator[None]:
    """Set ``dataflow``, ``run_id`` and/or ``lineage_id`` for the records logged inside."""
    tokens = [(FIELDS[key], FIELDS[key].set(value)) for key, value in values.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Copies the current dataflow, run id and lineage id onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, var in FIELDS.items():
            if getattr(record, key, None) is None:
                setattr(record, key, var.get())
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        tags = _text_tags(record)
        if not tags:
            return line
        head, _, message = line.partition(": ")
        return f"{head}: [{tags}] {message}"

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return redact(super().formatException(ei))


def _text_tags(record: logging.LogRecord) -> str:
    parts = []
    if dataflow := getattr(record, "dataflow", None):
        parts.append(str(dataflow))
    if run_id := getattr(record, "run_id", None):
        parts.append(f"run={str(run_id)[:8]}")
    if lineage_id := getattr(record, "lineage_id", None):
        parts.append(f"file={str(lineage_id)[:8]}")
    return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; the context keys only where they apply."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


class StderrHandler(logging.StreamHandler[IO[str]]):
    """A stream handler bound to the current ``sys.stderr``, not the one at creation."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass  # always the current sys.stderr


def handler(log_format: LogFormat = "text") -> logging.Handler:
    """The stderr handler of the CLI: context, redaction, and the chosen format."""
    out = StderrHandler()
    out.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    out.addFilter(ContextFilter())
    out.addFilter(RedactingFilter())
    return out
