"""Benchmark: an N-row encrypted vendor file through the whole dataflow, against its limit.

For each ``--rows`` value, in the same run and on the same real parts (a sandbox OpenSSH
SFTP server, the gpg binary, the API emulator over TCP):

1. the limit: OpenSSH ``sftp -b`` get of the encrypted file (key auth), ``gpg --decrypt`` of
   it to a file, and an ideal client pushing the same number of batches of pre-built bodies
   (same records per request, same bytes) to the same emulator at the same concurrency with
   the fastest client we have (``dataflow.fasthttp.FastHttp``, dataflow's own), reading and
   orjson-parsing each answer; ``limit = sftp + gpg + ideal``; the same push through httpx
   is timed too and printed (``ideal_client_httpx_s``), for information only;
2. ``dataflow run`` as a subprocess; its wall time, ``ratio = dataflow / limit``, the peak
   RSS of its process tree (dataflow + gpg children) sampled every 20 ms, and its CPU seconds
   (user + system of the process and its waited-for children) per million rows;
3. the emulator's own CPU seconds during each phase (``emulator_busy`` = its CPU / the phase's
   wall time: near 1.0 it is the bottleneck of that phase).

Run by hand as root (not in CI):

    .venv/bin/python bench/run.py --rows 500000 1000000 5000000
    .venv/bin/python bench/run.py --rows 1000000 --profile prof.txt   # py-spy, all threads
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import contextlib
import json
import math
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import yaml

from dataflow.fasthttp import FastHttp
from dataflow.sandbox import Emulator, PgpKeys, SftpServer
from dataflow_blocks.pgp_decrypt import _AGENT_CONF as AGENT_CONF

IMPORT_PATH = "/api_gateway/v1/badges/import/customerBadges"
BASE = 1794801600  # 2026-11-16T04:00Z; one second apart, so every timestamp is unique
PASSPHRASE = "bench-pass"
REMOTE = "/inbox/badges_bench.csv.gpg"


def write_csv(path: Path, rows: int) -> None:
    with path.open("w") as fh:
        fh.write("badge_id,customer_id,event_date,expires_at\n")
        step = 100_000
        for begin in range(0, rows, step):
            lines = []
            for i in range(begin, min(rows, begin + step)):
                t = time.gmtime(BASE + i)
                lines.append(
                    f"BADGE-{'GOLD' if i % 2 else 'SILVER'},{100000 + i},"
                    f"{t.tm_mday:02d}/{t.tm_mon:02d}/{t.tm_year} {t.tm_hour:02d}:{t.tm_min:02d}:"
                    f"{t.tm_sec:02d},{BASE + 31536000 + i}\n"
                )
            fh.write("".join(lines))


def encrypt(keys: PgpKeys, plain: Path, out: Path) -> None:
    home = tempfile.mkdtemp(prefix="g", dir="/tmp")
    try:
        gpg = ["gpg", "--homedir", home, "--batch", "--quiet"]
        subprocess.run([*gpg, "--import", str(keys.public_key)], check=True)
        subprocess.run(
            [
                *gpg,
                *("--trust-model", "always", "--compress-algo", "none"),
                *("--recipient", keys.uid, "--output", str(out), "--encrypt", str(plain)),
            ],
            check=True,
        )
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], check=False)
        shutil.rmtree(home, ignore_errors=True)


# --- the limit -------------------------------------------------------------------------------


def compile_package() -> None:
    """Byte-compile dataflow's own modules, as a (non-editable) install does: an editable
    install under PYTHONDONTWRITEBYTECODE (this machine's default) would compile them again
    at every start, about 0.3 s that no installed dataflow pays."""
    root = Path(__file__).resolve().parent.parent
    for package in ("dataflow", "blocks"):
        compileall.compile_dir(str(root / package), quiet=1)


class Bed:
    """The servers, keys and client credentials shared by every size of one bench run."""

    def __init__(self, work: Path, fast: bool) -> None:
        self.work = work
        compile_package()
        self.secret = secrets.token_urlsafe(16)
        self.sftp = SftpServer().start()
        self.api = Emulator(
            clients={"bench": self.secret}, badge_metas=["BADGE-GOLD", "BADGE-SILVER"]
        )
        if fast:
            self.api.args.append("--fast")  # a benchmark mode: see dataflow.emulator.fast
        self.api.start()
        self.api.configure(store=False)
        assert self.api.proc is not None
        self.api_process = psutil.Process(self.api.proc.pid)
        self.keys = PgpKeys(work, PASSPHRASE).generate()
        self.client_key = work / "client_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key)], check=True
        )
        self.sftp.authorize_key(self.client_key.with_suffix(".pub").read_text())
        self.gpg_home = tempfile.mkdtemp(prefix="gb", dir="/tmp")
        # the agent settings of pgp_decrypt's throwaway home (the key's local copy at the
        # minimum s2k count): the limit's gpg pays the same ~5 ms unlock as dataflow's
        Path(self.gpg_home, "gpg-agent.conf").write_text(AGENT_CONF)
        subprocess.run(
            [*self._gpg(), "--import", str(self.keys.private_key)], check=True, capture_output=True
        )

    def _gpg(self) -> list[str]:
        return [
            *("gpg", "--homedir", self.gpg_home, "--batch", "--quiet"),
            *("--pinentry-mode", "loopback", "--passphrase", PASSPHRASE),
        ]

    def api_cpu(self) -> float:
        times = self.api_process.cpu_times()
        return float(times.user + times.system)

    def sftp_get(self, local: Path) -> float:
        batch = self.work / "sftp.batch"
        batch.write_text(f"get {REMOTE} {local}\n")
        command = [
            *("sftp", "-q", "-b", str(batch), "-i", str(self.client_key), "-P"),
            str(self.sftp.port),
            "-o",
            f"UserKnownHostsFile={self.sftp.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            f"{self.sftp.user}@127.0.0.1",
        ]
        started = time.monotonic()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        return time.monotonic() - started

    def gpg_decrypt(self, encrypted: Path, out: Path) -> float:
        started = time.monotonic()
        subprocess.run(
            [*self._gpg(), "--yes", "--output", str(out), "--decrypt", str(encrypted)],
            check=True,
            stderr=subprocess.DEVNULL,
        )
        return time.monotonic() - started

    def ideal_client(
        self, rows: int, batch_size: int, concurrency: int, with_httpx: bool = True
    ) -> dict[str, float]:
        """The same requests (count, records, bytes) from pre-built bodies, cycled, through
        FastHttp (dataflow's own badge-call client, the fastest we have: the limit) and then,
        for information, through httpx; each answer is read and orjson-parsed. Seconds of
        each, and the emulator's CPU seconds during the FastHttp one."""
        sizes = [min(batch_size, rows - start) for start in range(0, rows, batch_size)]
        distinct = {size: [_body(k * batch_size, size) for k in range(16)] for size in set(sizes)}
        answer = httpx.post(
            self.api.url + "/v3/oauth/token/generate",
            json={"key": "bench", "secret": self.secret},
            timeout=60,
        )
        headers = {
            "x-cap-api-oauth-token": answer.json()["data"]["accessToken"],
            "Content-Type": "application/json",
        }
        api_before = self.api_cpu()
        fast = asyncio.run(_push_fast(self.api.url, headers, sizes, distinct, concurrency))
        api_cpu = self.api_cpu() - api_before
        slow = math.nan
        if with_httpx:
            slow = asyncio.run(_push_httpx(self.api.url, headers, sizes, distinct, concurrency))
        return {"fasthttp_s": fast, "httpx_s": slow, "emulator_cpu_s": api_cpu}


Send = Callable[[bytes], Awaitable[bytes]]


async def _push(
    sizes: list[int], bodies: dict[int, list[bytes]], workers: int, send: Send
) -> float:
    """Seconds for `workers` tasks to send every batch, reading and parsing each answer."""
    queue = list(enumerate(sizes))
    queue.reverse()

    async def work() -> None:
        while queue:
            n, size = queue.pop()
            orjson.loads(await send(bodies[size][n % len(bodies[size])]))  # a client reads it

    started = time.monotonic()
    await asyncio.gather(*(work() for _ in range(workers)))
    return time.monotonic() - started


async def _push_fast(
    url: str,
    headers: dict[str, str],
    sizes: list[int],
    bodies: dict[int, list[bytes]],
    workers: int,
) -> float:
    async with FastHttp(
        url, verify=True, max_connections=workers, timeout=60, headers=headers
    ) as lean:

        async def send(body: bytes) -> bytes:
            response = await lean.request("PUT", IMPORT_PATH, body, {}, lambda: None)
            if response.status_code != 200:
                raise RuntimeError(f"the emulator answered HTTP {response.status_code}")
            return response.content

        return await _push(sizes, bodies, workers, send)


async def _push_httpx(
    url: str,
    headers: dict[str, str],
    sizes: list[int],
    bodies: dict[int, list[bytes]],
    workers: int,
) -> float:
    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=60, headers=headers
    ) as client:

        async def send(body: bytes) -> bytes:
            response = await client.put(IMPORT_PATH, content=body)
            response.raise_for_status()
            return response.content

        return await _push(sizes, bodies, workers, send)


def _body(first: int, size: int) -> bytes:
    return orjson.dumps(
        [
            {
                "badgeMetaId": "BADGE-GOLD" if i % 2 else "BADGE-SILVER",
                "customerId": 100000 + i,
                "earnEventDate": BASE + i,
                "earnExpiresOn": BASE + 31536000 + i,
            }
            for i in range(first, first + size)
        ]
    )


# --- dataflow ----------------------------------------------------------------------------------


def config(bed: Bed, args: argparse.Namespace, directory: Path) -> Path:
    (directory / "private.asc").write_bytes(bed.keys.private_key.read_bytes())
    path = directory / "bench.yaml"
    blocks: list[dict[str, Any]] = [
        {
            "name": "src",
            "type": "sftp_read",
            "hostname": "127.0.0.1",
            "port": bed.sftp.port,
            "username": bed.sftp.user,
            "password": bed.sftp.password,
            "known_hosts": str(bed.sftp.known_hosts),
            "source_directory": "/inbox",
            "filename_pattern": r".*\.gpg",
            "processed_directory": "/processed",
            "error_directory": "/errors",
        },
        {
            "name": "decrypt",
            "type": "pgp_decrypt",
            "private_key": "${file:private.asc}",
            "passphrase": PASSPHRASE,
        },
        {
            "name": "map",
            "type": "field_mapping",
            **({"chunk_bytes": args.chunk_bytes} if args.chunk_bytes else {}),
            "mapping": {
                "badgeMetaId": "badge_id",
                "customerId": "customer_id",
                "earnEventDate": {"column": "event_date", "date_format": "%d/%m/%Y %H:%M:%S"},
                "earnExpiresOn": {"column": "expires_at", "date_format": "epoch"},
            },
        },
        {
            "name": "dest",
            "type": "http_write",
            "base_url": bed.api.url,
            "auth": {"type": "oauth", "client_key": "bench", "client_secret": bed.secret},
            "batch_size": args.batch_size,
            "concurrency": args.concurrency,
            "rate": {"limit": 1_000_000, "per": "second"},
        },
    ]
    document = {"version": 1, "name": "bench", "template": "earned_badges", "blocks": blocks}
    path.write_text(yaml.safe_dump(document))
    return path


class TreeMemory(threading.Thread):
    """The peak RSS of a process and all its descendants, sampled every 20 ms; with, at the
    tree's peak, when it happened, each child's RSS and the top process's /proc smaps_rollup
    (anonymous vs file-backed pages), and a coarse timeline (one sample per second)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = self.peak_top = 0
        self.started = time.monotonic()
        self.at_peak: dict[str, Any] = {}
        self.timeline: list[tuple[float, int, int]] = []  # (s, top MiB, children MiB)
        self.done = threading.Event()

    def run(self) -> None:
        next_mark = 0.0
        while not self.done.is_set():
            try:
                top = self.process.memory_info().rss
                children: dict[str, int] = {}
                for child in self.process.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        name = f"{child.name()}[{child.pid}]"
                        children[name] = child.memory_info().rss
            except psutil.Error:
                return
            tree = top + sum(children.values())
            now = time.monotonic() - self.started
            if tree > self.peak:
                self.at_peak = {
                    "t_s": round(now, 2),
                    "top_mib": round(top / 2**20, 1),
                    "children_mib": {k: round(v / 2**20, 1) for k, v in children.items()},
                    "top_smaps": _smaps_rollup(self.process.pid),
                }
            if now >= next_mark:
                self.timeline.append((round(now, 1), top >> 20, sum(children.values()) >> 20))
                next_mark = now + 1.0
            self.peak, self.peak_top = max(self.peak, tree), max(self.peak_top, top)
            self.done.wait(0.02)


def _smaps_rollup(pid: int) -> dict[str, float]:
    """Rss, Anonymous and file-backed (Rss - Anonymous) MiB of one process."""
    fields: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("Rss", "Anonymous", "Shared_Clean", "Private_Clean"):
                fields[name] = round(int(value.split()[0]) / 1024, 1)
    if "Rss" in fields and "Anonymous" in fields:
        fields["File"] = round(fields["Rss"] - fields["Anonymous"], 1)
    return fields


@dataclass
class Measured:
    """One `dataflow run --json` subprocess: its report, stderr, wall and CPU seconds (its
    own and its waited-for children's: gpg), and its process tree's memory."""

    report: dict[str, Any]
    stderr: bytes
    wall: float
    cpu: float
    memory: TreeMemory


def measure(command: list[str], env: dict[str, str], stderr: int) -> Measured:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=stderr)
    memory = TreeMemory(proc.pid)
    memory.start()
    out, err = proc.communicate()
    wall = time.monotonic() - started
    memory.done.set()
    memory.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    text = out.decode()  # py-spy writes its own lines around the report
    report = json.loads(text[text.index("{") : text.rindex("}") + 1])
    return Measured(report, err or b"", wall, cpu, memory)


def run_dataflow(bed: Bed, args: argparse.Namespace, rows: int, directory: Path) -> dict[str, Any]:
    path = config(bed, args, directory)
    env = {**os.environ, "DATAFLOW_STATE_DIR": str(directory / "state")}
    command = [sys.executable, "-m", "dataflow", "run", str(path), "--json"]
    if args.profile:
        profile = Path(args.profile).with_suffix(f".{rows}.txt")
        py_spy = Path(sys.executable).with_name("py-spy")
        command = [
            *(str(py_spy), "record", "--threads", "-f", "raw", "-r", "100"),
            "-o",
            str(profile),
            "--",
            *command,
        ]
    api_before = bed.api_cpu()
    measured = measure(command, env, stderr=subprocess.DEVNULL)
    memory = measured.memory
    (f,) = measured.report["files"]
    return {
        "status": f["status"],
        "rows_succeeded": f["rows_succeeded"],
        "seconds": measured.wall,
        "cpu_seconds": measured.cpu,
        "peak_rss_tree": memory.peak,
        "peak_rss_top": memory.peak_top,
        "at_peak": memory.at_peak,
        "timeline": memory.timeline,
        "emulator_cpu": bed.api_cpu() - api_before,
    }


def bench(bed: Bed, args: argparse.Namespace, rows: int) -> dict[str, Any]:
    """`args.repeat` rounds of (the limit, then dataflow) on the same file; the figures are
    the round with the median ratio, and every round's are listed (the machine is shared:
    its speed drifts from minute to minute, and a limit measured in another minute than the
    run it divides would make the ratio noise)."""
    directory = Path(tempfile.mkdtemp(prefix=f"rows{rows}-", dir=bed.work))
    plain = directory / "plain.csv"
    write_csv(plain, rows)
    original = directory / "original.gpg"
    encrypt(bed.keys, plain, original)
    csv_bytes = plain.stat().st_size
    plain.unlink()
    rounds = [bench_round(bed, args, rows, directory, original, k) for k in range(args.repeat)]
    shutil.rmtree(directory, ignore_errors=True)
    ranked = sorted(rounds, key=lambda r: r["ratio_to_limit"])
    result = {"rows": rows, "csv_mb": round(csv_bytes / 1e6, 1), **ranked[len(ranked) // 2]}
    result["ideal_client_httpx_s"] = rounds[0]["ideal_client_httpx_s"]
    result["all_rows_accepted"] = all(r["all_rows_accepted"] for r in rounds)
    if len(rounds) > 1:
        result["rounds"] = [
            {k: r[k] for k in ("limit", "dataflow_s", "ratio_to_limit", "cpu_us_per_row")}
            for r in rounds
        ]
        result["ratio_min_median_max"] = [
            ranked[0]["ratio_to_limit"],
            ranked[len(ranked) // 2]["ratio_to_limit"],
            ranked[-1]["ratio_to_limit"],
        ]
    return result


def bench_round(
    bed: Bed, args: argparse.Namespace, rows: int, directory: Path, original: Path, k: int
) -> dict[str, Any]:
    """One round: the file placed in the inbox, the limit measured, then dataflow run (with
    a state of its own, so the file is new to it)."""
    encrypted = bed.sftp.root / REMOTE.lstrip("/")
    shutil.copy(original, encrypted)
    uid = os.stat(bed.sftp.root / "inbox").st_uid
    os.chown(encrypted, uid, uid)
    stamp = time.time() - 600
    os.utime(encrypted, (stamp, stamp))
    bed.api.reset()
    bed.api.configure(store=False)

    local = directory / "fetched.gpg"
    sftp_s = bed.sftp_get(local)
    gpg_s = bed.gpg_decrypt(local, directory / "decrypted.csv")
    (directory / "decrypted.csv").unlink()
    local.unlink()
    ideal = bed.ideal_client(rows, args.batch_size, args.concurrency, with_httpx=k == 0)
    ideal_s = ideal["fasthttp_s"]
    bed.api.reset()
    bed.api.configure(store=False)

    state = directory / f"round{k}"
    state.mkdir()
    run = run_dataflow(bed, args, rows, state)
    accepted = bed.api._call("GET", "/__emulator/received")["accepted"]
    limit = sftp_s + gpg_s + ideal_s
    ok = run["status"] == "success" and run["rows_succeeded"] == rows == accepted
    shutil.rmtree(state, ignore_errors=True)
    return {
        "limit": {
            "sftp_get_s": round(sftp_s, 2),
            "gpg_decrypt_s": round(gpg_s, 2),
            "ideal_client_s": round(ideal_s, 2),
            "total_s": round(limit, 2),
            "emulator_busy_ideal": round(ideal["emulator_cpu_s"] / ideal_s, 2),
        },
        "ideal_client_httpx_s": round(ideal["httpx_s"], 2),  # information, not in the limit
        "dataflow_s": round(run["seconds"], 2),
        "ratio_to_limit": round(run["seconds"] / limit, 2),
        "rows_per_second": round(rows / run["seconds"]),
        "cpu_s_per_million_rows": round(run["cpu_seconds"] / rows * 1e6, 2),
        "cpu_us_per_row": round(run["cpu_seconds"] / rows * 1e6, 1),
        "peak_rss_tree_mib": round(run["peak_rss_tree"] / 2**20, 1),
        "peak_rss_dataflow_mib": round(run["peak_rss_top"] / 2**20, 1),
        "at_peak": run["at_peak"],
        "rss_timeline": " ".join(f"{t:g}:{a}+{b}" for t, a, b in run["timeline"]),
        "emulator_busy_dataflow": round(run["emulator_cpu"] / run["seconds"], 2),
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "requests": -(-rows // args.batch_size),
        "accepted_by_api": accepted,
        "all_rows_accepted": ok,
        "profiled": bool(args.profile),
    }


# --- profiles -----------------------------------------------------------------------------------


def top_of_profile(path: Path, count: int = 25) -> str:
    """The functions with the most samples in a py-spy raw (collapsed) profile: self and total,
    over the samples of every thread that was running (idle waits left out)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, weight = line.rpartition(" ")
        n = int(weight)
        frames = [_short(f) for f in stack.split(";")[1:]]  # [0] is the thread
        if not frames or _idle(frames[-1]):
            continue
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    lines = [f"{samples} busy samples; self% / total%  function (file)"]
    for frame, hits in own.most_common(count):
        share = f"{100 * hits / samples:5.1f} / {100 * total[frame] / samples:5.1f}"
        lines.append(f"{share}  {frame}")
    lines.append("by total (inclusive):")
    for frame, hits in total.most_common(count + 10):
        lines.append(f"{100 * hits / samples:5.1f}  {frame}")
    return "\n".join(lines)


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/main/", "python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where.rsplit(':', 1)[0]})"


def _idle(frame: str) -> bool:
    return frame.startswith(("select ", "poll ", "wait ", "_worker ", "epoll"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--chunk-bytes", type=int, help="field_mapping chunk_bytes (its default)")
    parser.add_argument(
        "--slow-emulator", action="store_true", help="the emulator's default mode, not --fast"
    )
    parser.add_argument("--profile", help="py-spy raw profile of dataflow: PATH.<rows>.txt")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of (limit, dataflow): the median is kept"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    bed = Bed(work, fast=not args.slow_emulator)
    ok = True
    try:
        for rows in args.rows:
            result = bench(bed, args, rows)
            ok = ok and result["all_rows_accepted"]
            print(json.dumps(result, indent=2), flush=True)
            if args.profile:
                print(top_of_profile(Path(args.profile).with_suffix(f".{rows}.txt")), flush=True)
    finally:
        bed.api.stop()
        bed.sftp.cleanup()
        subprocess.run(["gpgconf", "--homedir", bed.gpg_home, "--kill", "all"], check=False)
        shutil.rmtree(bed.gpg_home, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
