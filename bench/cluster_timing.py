"""One big file on one worker host against three (tests/clusterkit.py: each worker in its own
network namespace, PostgreSQL, redis-server, sshd and the emulator on the machine).

For each worker count: a fresh database, the file in the inbox, the workers started and
ready, then the job made due and a `dataflow schedule --executor celery` started; the time
is from "enqueued for a worker" in the scheduler's log to the original in /processed, and
the rows each worker's address sent are counted at the emulator. With
`DATAFLOW_SHARD_ROWS` below the file's rows the three workers should share the file.

Run by hand as root (not part of the suite):

    .venv/bin/python bench/cluster_timing.py --rows 300000 --shard-rows 100000
    .venv/bin/python bench/cluster_timing.py --rows 300000 --shard-rows 100000 --latency-ms 200
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.clusterkit import (
    Cluster,
    Network,
    Services,
    flow_requests,
    import_rows,
    wait_until,
    write_flow,
)


def measure(services: Services, args: argparse.Namespace, workers: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="cluster-timing-") as tmp:
        cluster = Cluster(services, Path(tmp)).prepare()
        assert services.api is not None
        services.api.configure(latency_ms=args.latency_ms)  # a real API's time per request
        try:
            flows = cluster.dir / "flows"
            flows.mkdir()
            big = import_rows("big", args.rows, 1_000_000, every=max(args.rows // 20, 2))
            sink = {"batch_size": args.batch_size, "concurrency": args.concurrency}
            sink["rate"] = {"limit": args.rate, "per": "second"}
            mapping = {"chunk_bytes": args.chunk_bytes} if args.chunk_bytes else None
            write_flow(cluster.bed, flows, big, sink, mapping)
            env = {"DATAFLOW_SHARD_ROWS": str(args.shard_rows)}
            cluster.register(flows, ["big"])
            nodes = [cluster.worker(k, env) for k in range(workers)]
            for node in nodes:
                node.wait_for(" ready.", timeout=60)
            cluster.make_due(["big"], hours_ago=3)
            scheduler = cluster.scheduler(flows, env)
            scheduler.wait_for("big: enqueued for a worker")
            started = time.monotonic()
            wait_until(
                lambda: cluster.bed.sftp.files("processed") == [big.file],
                args.timeout,
                "the original moved",
            )
            elapsed = time.monotonic() - started
            sent = Counter[str]()
            for request in flow_requests(cluster.bed.api, "big"):
                sent[request["peer"]] += request["records"]
            return {"workers": workers, "seconds": round(elapsed, 1), "rows_by_host": dict(sent)}
        finally:
            cluster.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench/cluster_timing.py")
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--shard-rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rate", type=int, default=100_000, help="requests per second")
    parser.add_argument("--latency-ms", type=int, default=0, help="the emulator's per request")
    parser.add_argument("--chunk-bytes", type=int, help="the parse chunk (shards are chunks)")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    network = Network()
    try:
        network.create(3)
        with tempfile.TemporaryDirectory(prefix="cluster-keys-") as keys:
            services = Services(network, Path(keys))
            try:
                services.start()
                for workers in (1, 3):
                    print(measure(services, args, workers), flush=True)
            finally:
                services.stop()
    finally:
        network.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
