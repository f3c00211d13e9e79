"""Memory of the transform alone: where the dataflow process's RSS goes, chunk by chunk.

    python bench/memory.py --rows 1000000 [--chunk-bytes N] [--keep 2] [--trace]

Writes the benchmark's file (bench/run.py `write_csv`), then maps it chunk by chunk and
builds the import requests as `dataflow.pipeline` does, keeping the last `--keep` chunks'
requests alive (the chunk being sent and the one mapped ahead). Prints the RSS after the
imports, then per chunk: RSS, anonymous RSS, Arrow's allocated bytes and (``--trace``) the
Python heap traced by tracemalloc.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import gc
import sys
import tempfile
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import psutil


def rss() -> tuple[float, float]:
    fields = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("Rss", "Anonymous"):
            fields[name] = int(value.split()[0]) / 1024
    return fields["Rss"], fields["Anonymous"]


class _Sampler(threading.Thread):
    """The highest RSS seen since the last `take`, sampled every 2 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.high = 0.0

    def run(self) -> None:
        me = psutil.Process()
        while True:
            self.high = max(self.high, me.memory_info().rss / 2**20)
            time.sleep(0.002)

    def take(self) -> float:
        high, self.high = self.high, 0.0
        return high


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-bytes", type=int, default=2 << 20)
    parser.add_argument("--keep", type=int, default=2)
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--thread", action="store_true", help="map in worker threads")
    parser.add_argument("--trim", action="store_true", help="malloc_trim(0) after each chunk")
    args = parser.parse_args()
    base = rss()
    import pandas as pd  # noqa: F401  (here, so that the chunks' figures leave imports out)
    import pyarrow as pa
    import pyarrow.compute as pc  # noqa: F401
    import pyarrow.csv as pa_csv  # noqa: F401
    from run import write_csv

    from dataflow.block import RunContext
    from dataflow.templates import EARNED_BADGES
    from dataflow_blocks.field_mapping import FieldMapping, FieldMappingConfig

    print(f"start {base[0]:.0f} MiB; imports {rss()[0]:.0f} MiB (anon {rss()[1]:.0f})")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.csv"
        write_csv(path, args.rows)
        gc.collect()
        print(f"file written: {rss()[0]:.0f} MiB, pool {pa.default_memory_pool().backend_name}")
        cfg = FieldMappingConfig.model_validate(
            {
                "name": "map",
                "type": "field_mapping",
                "chunk_bytes": args.chunk_bytes,
                "mapping": {
                    "badgeMetaId": "badge_id",
                    "customerId": "customer_id",
                    "earnEventDate": {"column": "event_date", "date_format": "%d/%m/%Y %H:%M:%S"},
                    "earnExpiresOn": {"column": "expires_at", "date_format": "epoch"},
                },
            }
        )
        ctx = RunContext("b", EARNED_BADGES, path.parent, path.parent)
        stream = FieldMapping(cfg, ctx).read(path)
        print(f"opened: {rss()[0]:.0f} MiB")
        if args.trace:
            tracemalloc.start()
        sampler = _Sampler()
        sampler.start()
        alive: collections.deque[Any] = collections.deque(maxlen=args.keep)
        peak = 0.0
        started = time.process_time()
        it = iter(stream)

        def one() -> Any:
            chunk = next(it, None)
            if chunk is None:
                return None
            built = list(
                EARNED_BADGES.build_requests(EARNED_BADGES, chunk.records, chunk.source, 1000, "f")
            )
            return chunk, built

        n = 0
        pool = ThreadPoolExecutor(4) if args.thread else None
        while True:
            item = pool.submit(one).result() if pool is not None else one()
            if item is None:
                break
            alive.append(item)
            if args.trim:
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            n += 1
            now, anon = rss()
            peak = max(peak, now)
            traced = tracemalloc.get_traced_memory()[0] / 2**20 if args.trace else 0.0
            if n <= 3 or n % 5 == 0:
                print(
                    f"chunk {n}: rows {len(item[0].source)} rss {now:.0f} "
                    f"(max {sampler.take():.0f}) anon {anon:.0f} "
                    f"arrow {pa.total_allocated_bytes() / 2**20:.1f} traced {traced:.1f} MiB"
                )
        cpu = time.process_time() - started
        stream.close()
        print(f"peak {peak:.0f} MiB, cpu {cpu / args.rows * 1e6:.2f} us/row, chunks {n}")
        if args.trace:
            snap = tracemalloc.take_snapshot()
            for stat in snap.statistics("lineno")[:12]:
                print(stat)
    print(f"maxrss {psutil.Process().memory_info().rss / 2**20:.0f}")


if __name__ == "__main__":
    main()
