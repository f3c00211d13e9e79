"""`python -m dataflow` with a phase timeline (bench/phases.py runs it; not for production).

Wraps, without changing them, the source's download, each file step's apply, the
transform's read and the sink's send (first request taken, first and last answer), and
prints ``PHASE <name> <seconds since start>`` lines to stderr. ``DATAFLOW_SWITCH_MS`` sets
``sys.setswitchinterval`` and ``DATAFLOW_GC_THRESHOLD`` (``"g0,g1,g2"``) ``gc.set_threshold``
for the whole run, ``DATAFLOW_GC_SEND`` (``freeze`` and/or ``g0,g1,g2``, ``;``-separated)
while the sink sends, ``DATAFLOW_GC_OFF`` runs the pipeline without `dataflow.gctune`
(experiments of issue 11).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

T0 = time.monotonic()


def mark(name: str) -> None:
    print(f"PHASE {name} {time.monotonic() - T0:.3f}", file=sys.stderr, flush=True)


def install() -> None:
    from dataflow.block import FileStep, Sink, Source, Transform
    from dataflow_blocks.field_mapping import FieldMapping
    from dataflow_blocks.http_write import HttpWrite
    from dataflow_blocks.pgp_decrypt import PgpDecrypt
    from dataflow_blocks.sftp_read import SftpRead

    del FileStep, Sink, Source, Transform
    if os.environ.get("DATAFLOW_GC_OFF"):  # the pipeline without dataflow.gctune
        import contextlib

        from dataflow import pipeline

        setattr(pipeline, "fewer_collections", contextlib.nullcontext)  # noqa: B010

    def timed(cls: Any, method: str, label: str) -> None:
        original = getattr(cls, method)

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            mark(f"{label}_start")
            try:
                return original(self, *args, **kwargs)
            finally:
                mark(f"{label}_end")

        setattr(cls, method, wrapper)

    timed(SftpRead, "open", "sftp_open")
    timed(PgpDecrypt, "open", "pgp_open")
    timed(SftpRead, "list_files", "list")
    timed(SftpRead, "download", "download")
    timed(PgpDecrypt, "apply", "decrypt")
    if hasattr(PgpDecrypt, "apply_streaming"):
        timed(PgpDecrypt, "apply_streaming", "decrypt_stream")
    if hasattr(SftpRead, "download_into"):
        timed(SftpRead, "download_into", "download_into")
    timed(FieldMapping, "read", "read")
    original_send = HttpWrite.send

    async def send(self: Any, requests: AsyncIterator[Any], on_result: Any) -> None:
        seen = {"req": False, "ans": False}

        async def watched() -> AsyncIterator[Any]:
            async for request in requests:
                if not seen["req"]:
                    seen["req"] = True
                    mark("first_request")
                yield request

        def answered(request: Any, results: Any) -> None:
            if not seen["ans"]:
                seen["ans"] = True
                mark("first_answer")
            on_result(request, results)

        import gc

        saved = gc.get_threshold()
        for action in filter(None, os.environ.get("DATAFLOW_GC_SEND", "").split(";")):
            if action == "freeze":
                gc.freeze()
            else:
                gc.set_threshold(*(int(n) for n in action.split(",")))
        try:
            await original_send(self, watched(), answered)
        finally:
            gc.set_threshold(*saved)
            gc.unfreeze()
        mark("last_answer")

    HttpWrite.send = send


if __name__ == "__main__":
    switch = os.environ.get("DATAFLOW_SWITCH_MS")
    if switch:
        sys.setswitchinterval(float(switch) / 1000)
    gc_threshold = os.environ.get("DATAFLOW_GC_THRESHOLD")  # e.g. "50000,20,100"
    if gc_threshold:
        import gc

        gc.set_threshold(*(int(n) for n in gc_threshold.split(",")))
    install()
    from dataflow.cli import main

    mark("imported")
    code = main()
    mark("exit")
    sys.exit(code)
