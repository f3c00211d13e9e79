"""Crash points for the crash-safety tests: ``DATAFLOW_CRASH_AT=point[:n]``.

At the n-th time (default 1) the run reaches `point`, the process sends itself SIGKILL: a
real ``kill -9`` at a precise moment, which a timer cannot give. Points: ``downloading``
(after each block written by the download), ``downloaded``,
``decrypted``, ``acked`` (after an acknowledged request is committed), ``error_temp``
(the error file is on the server under its temporary name), ``error_renamed`` (under its
name, not yet checkpointed), ``error_uploaded``, ``moved``.
Unset (always, outside tests), this does nothing.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_seen: Counter[str] = Counter()


def crash_point(name: str) -> None:
    spec = os.environ.get("DATAFLOW_CRASH_AT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _seen[name] += 1
    if _seen[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
