"""Benchmark: an N-row encrypted vendor file through the whole dataflow, on real parts.

Generates a CSV with unique timestamps, encrypts it with gpg, puts it on a sandbox OpenSSH
SFTP server, runs ``dataflow run`` as a subprocess against the API emulator, and prints rows/s
and the peak RSS of the dataflow process (sampled every 20 ms with psutil). Run as root:

    .venv/bin/python bench/run.py --rows 100000
    .venv/bin/python bench/run.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from dataflow.sandbox import Emulator, PgpKeys, SftpServer


def write_csv(path: Path, rows: int) -> None:
    base = 1794801600  # 2026-11-16T04:00Z; one second apart, so every timestamp is unique
    with path.open("w") as fh:
        fh.write("badge_id,customer_id,event_date,expires_at\n")
        for i in range(rows):
            t = time.gmtime(base + i)
            fh.write(
                f"BADGE-{'GOLD' if i % 2 else 'SILVER'},{100000 + i},"
                f"{t.tm_mday:02d}/{t.tm_mon:02d}/{t.tm_year} {t.tm_hour:02d}:{t.tm_min:02d}:"
                f"{t.tm_sec:02d},{base + 31536000 + i}\n"
            )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--chunk-bytes", type=int, default=4 << 20)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    secret = secrets.token_urlsafe(16)
    sftp = SftpServer().start()
    api = Emulator(clients={"bench": secret}, badge_metas=["BADGE-GOLD", "BADGE-SILVER"]).start()
    api.configure(store=False)
    try:
        keys = PgpKeys(work, "bench-pass").generate()
        plain = work / "plain.csv"
        t0 = time.monotonic()
        write_csv(plain, args.rows)
        encrypted = sftp.root / "inbox" / "badges_bench.csv.gpg"
        home = tempfile.mkdtemp(prefix="g", dir="/tmp")
        subprocess.run(
            ["gpg", "--homedir", home, "--batch", "--quiet", "--import", str(keys.public_key)],
            check=True,
        )
        subprocess.run(
            [
                "gpg",
                "--homedir",
                home,
                "--batch",
                "--trust-model",
                "always",
                "--compress-algo",
                "none",
                "--recipient",
                keys.uid,
                "--output",
                str(encrypted),
                "--encrypt",
                str(plain),
            ],
            check=True,
        )
        os.chown(encrypted, *(2 * [os.stat(sftp.root / "inbox").st_uid]))
        os.utime(encrypted, (time.time() - 600, time.time() - 600))
        size = encrypted.stat().st_size
        print(
            f"generated {args.rows:,} rows, {plain.stat().st_size / 1e6:.1f} MB CSV, "
            f"{size / 1e6:.1f} MB encrypted in {time.monotonic() - t0:.1f}s",
            file=sys.stderr,
        )
        plain.unlink()
        (work / "private.asc").write_bytes(keys.private_key.read_bytes())
        config = work / "bench.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "version": 1,
                    "name": "bench",
                    "template": "earned_badges",
                    "blocks": [
                        {
                            "name": "src",
                            "type": "sftp_read",
                            "hostname": "127.0.0.1",
                            "port": sftp.port,
                            "username": sftp.user,
                            "password": sftp.password,
                            "known_hosts": str(sftp.known_hosts),
                            "source_directory": "/inbox",
                            "filename_pattern": r".*\.gpg",
                            "processed_directory": "/processed",
                            "error_directory": "/errors",
                        },
                        {
                            "name": "decrypt",
                            "type": "pgp_decrypt",
                            "private_key": "${file:private.asc}",
                            "passphrase": "bench-pass",
                        },
                        {
                            "name": "map",
                            "type": "field_mapping",
                            "chunk_bytes": args.chunk_bytes,
                            "mapping": {
                                "badgeMetaId": "badge_id",
                                "customerId": "customer_id",
                                "earnEventDate": {
                                    "column": "event_date",
                                    "date_format": "%d/%m/%Y %H:%M:%S",
                                },
                                "earnExpiresOn": {"column": "expires_at", "date_format": "epoch"},
                            },
                        },
                        {
                            "name": "dest",
                            "type": "http_write",
                            "base_url": api.url,
                            "auth": {
                                "type": "oauth",
                                "client_key": "bench",
                                "client_secret": secret,
                            },
                            "batch_size": args.batch_size,
                            "concurrency": args.concurrency,
                            "rate": {"limit": 1_000_000, "per": "second"},
                        },
                    ],
                }
            )
        )
        env = {**os.environ, "DATAFLOW_STATE_DIR": str(work / "state")}
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "dataflow", "run", str(config), "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        peak = peak_tree = 0
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = ps.memory_info().rss
                tree = rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            except psutil.Error:
                break
            peak, peak_tree = max(peak, rss), max(peak_tree, tree)
            time.sleep(0.02)
        out, _ = proc.communicate()
        elapsed = time.monotonic() - started
        report = json.loads(out)
        (f,) = report["files"]
        accepted = api._call("GET", "/__emulator/received")["accepted"]
        ok = f["rows_succeeded"] == args.rows == accepted
        print(
            json.dumps(
                {
                    "rows": args.rows,
                    "status": f["status"],
                    "accepted_by_api": accepted,
                    "seconds": round(elapsed, 2),
                    "rows_per_second": round(args.rows / elapsed),
                    "peak_rss_mib": round(peak / 2**20, 1),
                    "peak_rss_with_children_mib": round(peak_tree / 2**20, 1),
                    "batch_size": args.batch_size,
                    "concurrency": args.concurrency,
                    "requests": -(-args.rows // args.batch_size),
                    "all_rows_accepted": ok,
                },
                indent=2,
            )
        )
        return 0 if ok else 1
    finally:
        api.stop()
        sftp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
