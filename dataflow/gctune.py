"""Fewer garbage collections while a file's rows are sent (issue 11).

Sending allocates millions of short-lived containers (each API answer is parsed into about
4 objects per record; the mapping thread builds frames and bodies), and CPython's default
thresholds (700, 10, 10) then run a young collection every 700 allocations and, as answers in
flight survive into the old generation, full collections over every object of the process
(pandas, pyarrow and the other imports: several hundred thousand). Measured at 1 M rows
(bench/phases.py): about 20 % of the CPU and a quarter of the send time, spent in the thread
that holds the GIL, so the event loop waited too.

`fewer_collections` freezes what exists when the send begins (the imports and the run's
long-lived state: never collected while frozen, never scanned) and raises the young
generation's threshold to 10,000; both are restored when the send ends. Objects without
cycles are freed by their reference count as before, so memory does not grow; cyclic garbage
made during the send is still collected, a little later.

A worker runs several dataflows in threads, whose sends may overlap without end: what was
alive at the freeze and became cyclic garbage since would then never be collected. So the
outermost entry collects before it freezes, and an entry while frozen for more than
`REFREEZE_SECONDS` unfreezes, collects and freezes again.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Iterator

YOUNG_THRESHOLD = 10_000
REFREEZE_SECONDS = 300.0

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, int, int] = gc.get_threshold()
_frozen_at = 0.0


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """While inside: the process's objects frozen and fewer young collections. Re-entrant
    (the outermost exit restores the thresholds and unfreezes)."""
    global _depth, _saved, _frozen_at
    with _lock:
        if _depth == 0:
            _saved = gc.get_threshold()
            _refreeze()
            gc.set_threshold(max(YOUNG_THRESHOLD, _saved[0]), *_saved[1:])
        elif time.monotonic() - _frozen_at > REFREEZE_SECONDS:
            gc.unfreeze()  # sends overlapping for long: collect what the freeze kept
            _refreeze()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.set_threshold(*_saved)
                gc.unfreeze()


def _refreeze() -> None:
    """Collect, then freeze what is left (call with the lock held)."""
    global _frozen_at
    gc.collect()
    gc.freeze()
    _frozen_at = time.monotonic()
