"""Download a file while its first file step already reads it (issue 11): gpg decrypts the
bytes as they arrive, on the other core, instead of after the whole download.

The step (one that `reads_while_downloading`) reads the download file through a `Follower`,
which waits at the file's end until more is written or the download is over, and hashes
what it gives. Its result is taken only when it read exactly the downloaded bytes (the same
SHA-256 and size as the download's): a download started again after a reconnect (the file
rewritten from its start), a step that stopped reading early (gpg refused the file) or a
download that failed all fall back to the step's `apply` on the finished file, so the
outcome is the one of the sequential order, only sooner. A file the pipeline does not decrypt
after all (a duplicate, another content than a retry's) cuts the stream: gpg ends at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import IO

from dataflow.block import FileStep

log = logging.getLogger(__name__)
POLL = 0.01  # seconds the reader waits at the end of the file for more to be written
BATCH = 1 << 20  # bytes it waits for before reading (all that is left at the end)


class Follower:
    """A binary reader of a file being written: blocks at its end until more comes, `finish`
    (the writer is done: its end is the end) or `cut` (stop now: the end is here)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sha256 = hashlib.sha256()
        self.size = 0  # bytes given
        self._fh: IO[bytes] | None = None
        self._finished = threading.Event()
        self._cut = False
        self._lock = threading.Lock()  # after `cut` returns no read is under way

    def finish(self) -> None:
        self._finished.set()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            self._finished.set()
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def read(self, size: int = -1) -> bytes:
        while True:
            with self._lock:
                if self._cut:
                    return b""
                finished = self._finished.is_set()  # before the read: what it finds is all
                if self._fh is None:
                    with contextlib.suppress(FileNotFoundError):
                        self._fh = self.path.open("rb")
                if self._fh is not None and (finished or self._ready(size)):
                    data = self._fh.read(size)
                    if data:
                        self.sha256.update(data)
                        self.size += len(data)
                        return data
                if finished:
                    return b""
            self._finished.wait(POLL)

    def _ready(self, size: int) -> bool:
        """Enough written to read `size` bytes (at most `BATCH`): read in big pieces, so
        that the reading thread wakes rarely and takes little of the downloading thread's
        time (each wake-up makes it give up the GIL)."""
        assert self._fh is not None
        want = BATCH if size < 0 else min(size, BATCH)
        return os.fstat(self._fh.fileno()).st_size - self._fh.tell() >= want


class EarlyStep:
    """The first file step, running on the download as it is written."""

    def __init__(self, step: FileStep, downloaded: Path, workdir: Path) -> None:
        self.downloaded = downloaded
        self.follower = Follower(downloaded)
        self._task = asyncio.ensure_future(
            asyncio.to_thread(step.apply_stream, self.follower, downloaded, workdir)
        )
        self._settled = False

    def download_ended(self) -> None:
        """The download is over (done or failed): the file's end is the stream's."""
        self.follower.finish()

    async def result(self, sha256: str) -> Path | None:
        """The step's output when it read exactly the download (SHA-256 `sha256`), its error
        raised as `apply` would raise it; None when `apply` must run on the file instead."""
        self.follower.finish()
        await asyncio.wait([self._task])  # cancelled here: `abandon` still stops the step
        self._settled = True
        self.follower.cut()  # gpg has ended: nothing more is read
        size = self.downloaded.stat().st_size if self.downloaded.exists() else -1
        if not (self.follower.size == size > 0 and self.follower.sha256.hexdigest() == sha256):
            if not self._task.cancelled():
                self._task.exception()  # retrieved: not the file's verdict
            log.debug("%s: the first file step runs again on the whole file", self.downloaded)
            return None
        output = self._task.result()  # raises the step's FileRejected / FatalError
        self.downloaded.unlink()  # as `apply` removes its input
        return output

    async def abandon(self) -> None:
        """The file is not processed after all (or `result` was taken): stop the step and
        wait for it to end (what it wrote is in the file's private directory)."""
        if self._settled:
            return
        self.follower.cut()
        try:
            await asyncio.wait([self._task])  # a cancelled wait leaves the task running
        except asyncio.CancelledError:  # so wait again for the step to end, then go
            await asyncio.wait([self._task])
            raise
        finally:
            self._settled = self._task.done()
            if self._task.done() and not self._task.cancelled():
                self._task.exception()  # retrieved: it was stopped


def start(steps: list[FileStep], downloaded: Path, workdir: Path) -> EarlyStep | None:
    """The first step started on the download, when it can read while downloading."""
    if not steps or not type(steps[0]).reads_while_downloading:
        return None
    return EarlyStep(steps[0], downloaded, workdir)
