"""Keep the process's memory close to what it holds: allocator settings for a streaming run.

A file is mapped chunk by chunk; each chunk's arrays (numpy, pandas, Arrow) are a few hundred
KiB to a few MiB, allocated and freed over and over, partly in worker threads. With glibc's
defaults this retains far more than is alive: once a large block that was mmapped is freed,
glibc raises its mmap threshold (up to 32 MiB), so the next chunks' arrays come from the
heaps instead, and freed heap memory is rarely returned (a heap per thread, fragmented).
Arrow's own allocator (mimalloc) also keeps freed pages. Measured on the benchmark's 1 M-row
file (bench/memory.py): the transform's RSS stays ~80 MiB lower with

- a fixed glibc mmap threshold (512 KiB: no longer raised as arrays are freed) and trim
  threshold, so large arrays are returned to the system when freed (128 KiB, glibc's
  starting value, holds ~6 MiB less but costs ~10 % more CPU in the transform: page faults);
- Arrow allocating through the same (system) allocator instead of its mimalloc pool.

`tune()` applies both once per process. A setting the user gave in the environment
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``ARROW_DEFAULT_MEMORY_POOL``) is
left as given; on a C library without `mallopt` (musl) only the Arrow part applies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable
from functools import cache

log = logging.getLogger(__name__)

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 512 << 10  # arrays from this size are mmapped, and unmapped when freed
TRIM_THRESHOLD = 1 << 20  # free memory above this at a heap's top is given back


@cache
def tune() -> None:
    """Apply the allocator settings (once; later calls do nothing)."""
    _tune_malloc()
    _tune_arrow()


def _tune_malloc() -> None:
    settings = (
        ("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        ("MALLOC_TRIM_THRESHOLD_", _M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    )
    mallopt = _mallopt()
    if mallopt is None:
        return
    for variable, option, value in settings:
        if variable not in os.environ and not mallopt(option, value):
            log.debug("mallopt(%d, %d) was refused", option, value)


def _mallopt() -> Callable[[int, int], int] | None:
    """glibc's `mallopt`, None elsewhere."""
    if not _glibc():
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        function = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):  # no such name here
        return False


def _tune_arrow() -> None:
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
