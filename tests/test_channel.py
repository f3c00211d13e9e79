"""The SFTP channel's bytearray buffer reads as paramiko's own BufferedPipe does."""

from __future__ import annotations

import random
import threading

import pytest
from paramiko.buffered_pipe import BufferedPipe, PipeTimeout

from dataflow_blocks._channel import FrontPipe


def test_front_pipe_gives_the_same_reads_as_paramikos_pipe() -> None:
    rng = random.Random(7)
    ours, theirs = FrontPipe(), BufferedPipe()
    for _ in range(2000):
        if rng.random() < 0.5:
            data = rng.randbytes(rng.choice([0, 1, 4, 13, 32768, 40000]))
            ours.feed(data)
            theirs.feed(data)
        else:
            n = rng.choice([1, 4, 9, 32768, 1 << 20])
            if len(theirs):
                assert ours.read(n, timeout=0) == theirs.read(n, timeout=0)
        assert len(ours) == len(theirs) and ours.read_ready() == theirs.read_ready()
    assert ours.empty() == theirs.empty() and len(ours) == 0
    ours.close()
    assert ours.read(10) == b""  # closed and drained: the end of the stream


def test_front_pipe_waits_for_bytes_and_times_out() -> None:
    pipe = FrontPipe()
    with pytest.raises(PipeTimeout):
        pipe.read(4, timeout=0.05)
    threading.Timer(0.05, pipe.feed, args=(b"abcdef",)).start()
    assert pipe.read(4, timeout=5) == b"abcd"
    assert pipe.read(4, timeout=0) == b"ef"
