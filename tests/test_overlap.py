"""The download decrypted as it arrives (`dataflow.overlap`): the stream reader on a growing
file, and end to end on the real sshd and gpg: the early result is taken only when it read
exactly the downloaded bytes (else the step runs again on the whole file, as it did before
the overlap), and a download started again after a reconnect still sends every row once."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dataflow.block import BlockConfig, ByteStream, FileStep
from dataflow.errors import FileRejected
from dataflow.overlap import BATCH, EarlyStep, Follower
from dataflow.sandbox import SAMPLE_HEADER

from .conftest import Bed
from .faultkit import growing, signal_sessions, wait_for

AGAIN = "the first file step runs again on the whole file"


def write_slowly(path: Path, parts: list[bytes], follower: Follower, pause: float) -> None:
    with path.open("wb") as fh:
        for part in parts:
            fh.write(part)
            fh.flush()
            time.sleep(pause)
    follower.finish()


def test_the_follower_reads_a_growing_file_to_its_end() -> None:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"follow-{os.getpid()}"
    parts = [os.urandom(300_000) for _ in range(12)]  # more than BATCH, in small writes
    follower = Follower(path)  # the file does not exist yet: the reader waits for it
    writer = threading.Thread(target=write_slowly, args=(path, parts, follower, 0.01))
    writer.start()
    got = []
    try:
        while block := follower.read(BATCH):
            got.append(block)
    finally:
        writer.join()
        path.unlink()
    assert b"".join(got) == b"".join(parts)
    assert follower.size == sum(map(len, parts))
    assert follower.sha256.hexdigest() == hashlib.sha256(b"".join(parts)).hexdigest()
    assert max(map(len, got)) <= BATCH and len(got) < len(parts)  # read in big pieces


def test_a_cut_follower_ends_at_once(tmp_path: Path) -> None:
    path = tmp_path / "partial"
    path.write_bytes(b"x" * 10)
    follower = Follower(path)
    assert follower.read(4) == b"xxxx"
    threading.Timer(0.2, follower.cut).start()  # less than a batch left: the reader waits
    started = time.monotonic()
    assert follower.read(BATCH) == b""
    assert 0.1 < time.monotonic() - started < 5
    assert follower.size == 4 and follower.read(BATCH) == b""


def test_a_finished_follower_gives_what_is_left(tmp_path: Path) -> None:
    path = tmp_path / "small"
    path.write_bytes(b"abc")
    follower = Follower(path)
    follower.finish()
    assert follower.read(BATCH) == b"abc" and follower.read(BATCH) == b""


def big_encrypted_file(bed: Bed, rows: int, pad: int) -> bytes:
    """Valid rows with an incompressible note of `pad` characters, encrypted."""
    lines = [SAMPLE_HEADER + ",note"]
    noise = base64.b64encode(os.urandom(rows * pad * 3 // 4 + 3)).decode()
    for i in range(rows):
        note = noise[i * pad : (i + 1) * pad]
        lines.append(f"BADGE-GOLD,{100000 + i},16/11/2026 09:30,1798761600,{note}")
    return bed.keys.encrypt(("\n".join(lines) + "\n").encode())


def fast_sink() -> dict[str, object]:
    return {"batch_size": 1000, "concurrency": 4}


def test_an_encrypted_file_is_decrypted_while_it_downloads(bed: Bed) -> None:
    bed.sftp.put("inbox/badges_a.csv.gpg", big_encrypted_file(bed, 2000, 200))
    result = bed.run("-v", "run", str(bed.config(sink=fast_sink())), "--json")
    assert result.returncode == 0, result.stderr
    assert AGAIN not in result.stderr  # the early decryption was taken
    assert "downloaded /inbox/badges_a.csv.gpg" in result.stderr
    assert len(bed.api.received()) == 2000
    assert bed.sftp.files("processed") == ["badges_a.csv.gpg"]


@pytest.mark.timeout(300)
def test_a_download_cut_and_started_again_is_decrypted_once_and_every_row_is_sent_once(
    bed: Bed, tmp_path: Path
) -> None:
    rows = 20_000
    data = big_encrypted_file(bed, rows, 6000)  # about 120 MB: the kill lands mid-download
    bed.sftp.put("inbox/badges_big.csv.gpg", data)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dataflow", "-v", "run", str(bed.config(sink=fast_sink()))],
        env={**os.environ, **bed.env, "TMPDIR": str(tmpdir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(growing("dataflow-*/file-*/download", tmpdir))
    assert signal_sessions(bed.sftp, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stderr[-3000:]
    assert "the connection to the server was lost; reconnecting (1 of 2)" in stderr
    # the reader went on where it was once the new download passed it: the same bytes
    # (the SHA-256 matched the download's), so the early decryption was taken
    assert AGAIN not in stderr
    received = bed.api.received()
    assert len(received) == rows
    assert len({r["customerId"] for r in received}) == rows  # each row once
    assert bed.sftp.files("processed") == ["badges_big.csv.gpg"]
    assert bed.sftp.files("errors") == []


def test_a_file_that_is_not_pgp_is_rejected_as_before(bed: Bed) -> None:
    # random bytes after a first byte that is no packet tag (its top bit clear): gpg finds no
    # OpenPGP data at once (random bytes alone can pass for a packet, then fail otherwise)
    bed.sftp.put("inbox/badges_x.csv.gpg", b"\x00" + os.urandom((40 << 20) - 1))
    result = bed.run("run", str(bed.config()), "--json")
    assert result.returncode == 1, result.stderr
    (f,) = json.loads(result.stdout)["files"]
    assert f["status"] == "failure" and "not PGP data" in f["reason"], f
    # gpg stops reading at once: python-gnupg's broken pipe is not a traceback on stderr
    assert "Traceback" not in result.stderr and "Broken pipe" not in result.stderr
    assert "badges_x.csv.gpg" in bed.sftp.files("errors")
    assert bed.api.received() == []


# --- when the early result is taken (a fake step: the unit under test is EarlyStep) ---------


class Reader(FileStep):
    """Reads `limit` bytes of the stream (all: -1) and writes them out."""

    Config = BlockConfig
    limit = -1

    def apply(self, path: Path, workdir: Path) -> Path:
        raise AssertionError("not called by EarlyStep")

    def apply_stream(self, stream: ByteStream, path: Path, workdir: Path) -> Path:
        out, got = workdir / "out", b""
        while self.limit < 0 or len(got) < self.limit:
            block = stream.read(BATCH)
            if not block:
                break
            got += block
        if got.startswith(b"BAD"):
            raise FileRejected("refused")
        out.write_bytes(got)
        return out


def early(tmp_path: Path, content: bytes, limit: int = -1) -> tuple[EarlyStep, Path]:
    downloaded = tmp_path / "download"
    downloaded.write_bytes(content)
    step = Reader(BlockConfig(name="s", type="reader"), None)
    step.limit = limit
    return EarlyStep(step, downloaded, tmp_path), downloaded


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def test_the_early_result_is_taken_when_it_read_the_whole_download(tmp_path: Path) -> None:
    async def go() -> None:
        step, downloaded = early(tmp_path, b"x" * (3 * BATCH + 5))
        step.download_ended()
        out = await step.result(sha(b"x" * (3 * BATCH + 5)))
        assert out == tmp_path / "out" and out.read_bytes() == b"x" * (3 * BATCH + 5)
        assert not downloaded.exists()  # as `apply` removes its input
        await step.abandon()  # taken: nothing more to do
        assert out.exists()

    asyncio.run(go())


def test_its_error_is_the_files_when_it_read_the_whole_download(tmp_path: Path) -> None:
    async def go() -> None:
        step, _ = early(tmp_path, b"BAD file")
        with pytest.raises(FileRejected, match="refused"):
            await step.result(sha(b"BAD file"))

    asyncio.run(go())


@pytest.mark.parametrize("case", ["stopped early", "other bytes", "empty"])
def test_the_step_runs_again_when_the_stream_was_not_the_download(
    tmp_path: Path, case: str
) -> None:
    async def go() -> None:
        content = b"" if case == "empty" else b"BAD" + b"y" * (2 * BATCH)
        step, downloaded = early(tmp_path, content, BATCH if case == "stopped early" else -1)
        if case == "other bytes":  # the file rewritten after the reader went through it
            await asyncio.sleep(0.3)
            downloaded.write_bytes(b"z" * len(content))
            content = downloaded.read_bytes()
        assert await step.result(sha(content)) is None  # its verdict (refused) is not used
        assert downloaded.exists()  # for `apply`

    asyncio.run(go())


def test_an_abandoned_step_is_stopped(tmp_path: Path) -> None:
    async def go() -> None:
        step, _ = early(tmp_path, b"partial")  # the download never ends: the reader waits
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await step.abandon()
        assert time.monotonic() - started < 5
        assert (tmp_path / "out").read_bytes() == b"partial"[: step.follower.size]

    asyncio.run(go())


class SlowReader(Reader):
    def apply_stream(self, stream: ByteStream, path: Path, workdir: Path) -> Path:
        time.sleep(0.5)
        return super().apply_stream(stream, path, workdir)


def test_a_result_cancelled_while_waiting_is_still_stopped_by_abandon(tmp_path: Path) -> None:
    async def go() -> None:
        downloaded = tmp_path / "download"
        downloaded.write_bytes(b"BAD")
        step = EarlyStep(
            SlowReader(BlockConfig(name="s", type="reader"), None), downloaded, tmp_path
        )
        waiting = asyncio.ensure_future(step.result(sha(b"BAD")))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await step.abandon()  # waits for the step, retrieves its FileRejected
        assert step._task.done()

    asyncio.run(go())
