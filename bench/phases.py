"""The phase timeline of a `dataflow run` (issue 11): download end, decrypt end, first
request, last answer, for N rows, on the bench's real parts (bench/run.py's Bed).

    .venv/bin/python bench/phases.py --rows 1000000 --switch-ms 0 1        # as root

Each ``--switch-ms`` value is one dataflow run (0: Python's default switch interval);
prints one JSON line per run: the phases (seconds since the process started), wall time,
CPU µs/row (dataflow + gpg), and the OpenSSH sftp get + gpg --decrypt figures of this run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from run import REMOTE, Bed, config, encrypt, measure, write_csv


def one_run(bed: Bed, args: argparse.Namespace, rows: int, switch: float) -> dict[str, object]:
    directory = Path(tempfile.mkdtemp(prefix=f"phase{rows}-", dir=bed.work))
    path = config(bed, args, directory)
    env = {**os.environ, "DATAFLOW_STATE_DIR": str(directory / "state")}
    if switch:
        env["DATAFLOW_SWITCH_MS"] = str(switch)
    if args.gc_threshold:
        env["DATAFLOW_GC_THRESHOLD"] = args.gc_threshold
    if args.gc_send:
        env["DATAFLOW_GC_SEND"] = args.gc_send
    if args.gc_off:
        env["DATAFLOW_GC_OFF"] = "1"
    probe = Path(__file__).with_name("phase_probe.py")
    command = [sys.executable, str(probe), "run", str(path), "--json"]
    if args.gil_profile:  # py-spy: only the samples of the thread holding the GIL
        py_spy = str(Path(sys.executable).with_name("py-spy"))
        command = [py_spy, "record", "--gil", "--threads", "-f", "raw", "-r", "200", "-o"]
        command += [args.gil_profile, "--", sys.executable, str(probe), "run", str(path), "--json"]
    measured = measure(command, env, stderr=subprocess.PIPE)
    wall, cpu, memory = measured.wall, measured.cpu, measured.memory
    phases: dict[str, float] = {}
    for line in measured.stderr.decode().splitlines():
        if line.startswith("PHASE "):
            _, name, at = line.split()
            phases.setdefault(name, float(at))
    (f,) = measured.report["files"]
    shutil.rmtree(directory, ignore_errors=True)
    return {
        "rows": rows,
        "switch_ms": switch or "default",
        "gc_threshold": args.gc_threshold or "default",
        "gc_send": args.gc_send or ("gctune off" if args.gc_off else "gctune"),
        "status": f["status"],
        "wall_s": round(wall, 2),
        "cpu_us_per_row": round(cpu / rows * 1e6, 2),
        "phases": phases,
        "peak_rss_tree_mib": round(memory.peak / 2**20, 1),
        "at_peak": memory.at_peak,
        "rss_timeline": " ".join(f"{t:g}:{a}+{b}" for t, a, b in memory.timeline),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--switch-ms", type=float, nargs="+", default=[0.0])
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--chunk-bytes", type=int)
    parser.add_argument("--gc-threshold", help='gc.set_threshold for the run: "g0,g1,g2"')
    parser.add_argument("--gc-send", help='while sending: "freeze" and/or "g0,g1,g2" (";")')
    parser.add_argument("--gc-off", action="store_true", help="without dataflow.gctune")
    parser.add_argument("--gil-profile", help="py-spy --gil raw profile of the run: PATH")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="phases-"))
    bed = Bed(work, fast=True)
    try:
        plain = work / "plain.csv"
        write_csv(plain, args.rows)
        encrypted = bed.sftp.root / REMOTE.lstrip("/")
        encrypt(bed.keys, plain, encrypted)
        plain.unlink()
        uid = os.stat(bed.sftp.root / "inbox").st_uid
        sftp_s = bed.sftp_get(work / "fetched.gpg")
        gpg_s = bed.gpg_decrypt(work / "fetched.gpg", work / "decrypted.csv")
        (work / "decrypted.csv").unlink()
        print(json.dumps({"sftp_get_s": round(sftp_s, 2), "gpg_decrypt_s": round(gpg_s, 2)}))
        for switch in args.switch_ms:
            shutil.copy(work / "fetched.gpg", encrypted)  # each run finds the file in /inbox
            os.chown(encrypted, uid, uid)
            stamp = time.time() - 600
            os.utime(encrypted, (stamp, stamp))
            bed.api.reset()
            bed.api.configure(store=False)
            print(json.dumps(one_run(bed, args, args.rows, switch)), flush=True)
    finally:
        bed.api.stop()
        bed.sftp.cleanup()
        subprocess.run(["gpgconf", "--homedir", bed.gpg_home, "--kill", "all"], check=False)
        shutil.rmtree(bed.gpg_home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
