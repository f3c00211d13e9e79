"""Fault injection on real parts for the SFTP and local-fault tests (root: mounts, signals)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from dataflow.sandbox import SftpServer


@contextlib.contextmanager
def tmpfs(path: Path, size: str, uid: int | None = None) -> Iterator[Path]:
    """A small tmpfs mounted at `path` (owned by `uid`), unmounted whatever happens."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size},mode=0755" + (f",uid={uid},gid={uid}" if uid is not None else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount_ro(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def fill(directory: Path) -> None:
    """Fill the file system of `directory` to the last block."""
    with contextlib.suppress(OSError), (directory / "filler").open("wb") as fh:
        while True:
            fh.write(b"\0" * 4096)
            fh.flush()


def sessions(server: SftpServer) -> list[int]:
    """Every process sshd forked for a connection (monitor and sftp child), not the listener."""
    assert server.proc is not None
    found: list[int] = []
    todo = [server.proc.pid]
    while todo:
        out = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(todo.pop())], capture_output=True, text=True
        ).stdout.split()
        found += [int(pid) for pid in out]
        todo += [int(pid) for pid in out]
    return found


def signal_sessions(server: SftpServer, sig: int) -> list[int]:
    pids = sessions(server)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return pids


def kill_quietly(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def growing(pattern: str, base: Path) -> Callable[[], bool]:
    """True once a file matching `pattern` below `base` holds some bytes."""

    def check() -> bool:
        return any(p.is_file() and p.stat().st_size > 0 for p in base.glob(pattern))

    return check
