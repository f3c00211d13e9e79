"""Separate network hosts on one machine, for the cluster tests (tests/test_cluster_netns.py)
and bench/cluster_timing.py.

`Network` makes one network namespace per worker host, each joined to the machine by its own
veth pair on a private /30 (the namespace's default route is the machine's end), and a
service address (a /32 on the machine's loopback, reachable from every namespace through its
veth) where PostgreSQL, redis-server, the SFTP server and the API emulator listen. A worker
runs as ``ip netns exec <ns> dataflow worker``: it reaches the services only over its veth,
and the emulator sees its namespace's address as the client of each request (``peer``).

Names carry the creating process's pid and a count (``dfc-<pid>-<n>-w<k>``, links
``dfc<pid>x<n>h<k>`` / ``...n<k>``, the loopback label ``lo:dfc<pid>x<n>``), so
`clean_leftovers` removes what an earlier run that was killed left behind (its pid is gone)
and never touches a live run's.
Root only (as CI and the dev container run): namespaces, links and the SFTP user need it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
import yaml

from dataflow.runner import pid_alive
from dataflow.sandbox import Emulator, PgpKeys, SftpServer, free_port, wait_for_port

from .conftest import (
    BASIC_PASSWORD,
    BASIC_USER,
    CLIENT_KEY,
    CLIENT_SECRET,
    METAS,
    PGP_PASSPHRASE,
    Bed,
)
from .pgkit import Postgres

PREFIX = "dfc"
NET = "10.213"  # the namespaces' /30s and the service address are in one free 10.213.T.0/24
DATAFLOW = [sys.executable, "-m", "dataflow"]


def ip(*args: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _kill_in_netns(name: str) -> None:
    for pid in ip("netns", "pids", name, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def clean_leftovers() -> None:
    """Remove the namespaces, links and loopback addresses of earlier runs whose process is
    gone (a test run killed before its finalizers)."""
    for line in ip("netns", "list", check=False).splitlines():
        name = line.split(" ", 1)[0]
        match = re.fullmatch(rf"{PREFIX}-(\d+)-\d-w\d+", name)
        if match and not pid_alive(int(match[1])):
            _kill_in_netns(name)
            ip("netns", "del", name, check=False)
    for line in ip("-o", "link", "show", check=False).splitlines():
        match = re.match(rf"\d+: ({PREFIX}(\d+)x\dh\d+)[@:]", line)
        if match and not pid_alive(int(match[2])):
            ip("link", "del", match[1], check=False)
    for line in ip("-o", "-4", "addr", "show", "dev", "lo", check=False).splitlines():
        match = re.search(rf"inet (\S+) .* lo:{PREFIX}(\d+)x\d\b", line)
        if match and not pid_alive(int(match[2])):
            _kill_users_of(match[1].split("/")[0])  # its services and their clients
            ip("addr", "del", match[1], "dev", "lo", check=False)


def _kill_users_of(address: str) -> None:
    """SIGKILL the processes with a TCP socket on `address` (a dead run's services, and the
    schedulers it left connected to them)."""
    result = subprocess.run(["ss", "-Htanp"], capture_output=True, text=True, check=False)
    pids: set[int] = set()
    for line in result.stdout.splitlines():
        fields = line.split()
        if any(f.startswith(f"{address}:") for f in fields[3:5]):
            pids.update(int(pid) for pid in re.findall(r"pid=(\d+)", line))
    for pid in pids - {os.getpid()}:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _free_subnet() -> int:
    """A third octet T such that nothing on this machine uses 10.213.T.x yet."""
    used = ip("-4", "-o", "addr", check=False) + ip("-4", "route", "show", "table", "all")
    choices = [t for t in range(1, 254) if f"{NET}.{t}." not in used]
    if not choices:
        raise RuntimeError(f"no free /24 left in {NET}.0.0/16 for the test namespaces")
    return random.choice(choices)


@dataclass
class NetHost:
    """One namespace: a separate host as far as the network is concerned."""

    ns: str
    host_if: str
    ns_if: str
    gateway: str  # the machine's end of the veth pair
    address: str  # the namespace's end: what the services see as the client

    def inode(self) -> int:
        return os.stat(f"/run/netns/{self.ns}").st_ino


_networks = itertools.count()


@dataclass
class Network:
    hosts: list[NetHost] = field(default_factory=list)
    number: int = field(default_factory=lambda: next(_networks) % 10)
    third: int = 0
    service: str = ""  # where the services listen: a /32 on the machine's loopback

    @property
    def tag(self) -> str:
        return f"{PREFIX}{os.getpid()}x{self.number}"

    @property
    def subnet(self) -> str:
        return f"{NET}.{self.third}.0/24"

    def create(self, count: int) -> Network:
        clean_leftovers()
        self.third = _free_subnet()
        self.service = f"{NET}.{self.third}.254"
        ip("addr", "add", f"{self.service}/32", "dev", "lo", "label", f"lo:{self.tag}")
        for k in range(count):
            self._host(k)
        return self

    def _host(self, k: int) -> NetHost:
        pid = os.getpid()
        host = NetHost(
            ns=f"{PREFIX}-{pid}-{self.number}-w{k}",
            host_if=f"{self.tag}h{k}",
            ns_if=f"{self.tag}n{k}",
            gateway=f"{NET}.{self.third}.{4 * k + 1}",
            address=f"{NET}.{self.third}.{4 * k + 2}",
        )
        self.hosts.append(host)  # cleaned up by destroy() even if a step below fails
        ip("netns", "add", host.ns)
        ip("link", "add", host.host_if, "type", "veth", "peer", "name", host.ns_if)
        ip("link", "set", host.ns_if, "netns", host.ns)
        ip("addr", "add", f"{host.gateway}/30", "dev", host.host_if)
        ip("link", "set", host.host_if, "up")
        ip("-n", host.ns, "addr", "add", f"{host.address}/30", "dev", host.ns_if)
        ip("-n", host.ns, "link", "set", host.ns_if, "up")
        ip("-n", host.ns, "link", "set", "lo", "up")
        ip("-n", host.ns, "route", "add", "default", "via", host.gateway)
        return host

    def destroy(self) -> None:
        for host in self.hosts:
            _kill_in_netns(host.ns)
            ip("link", "del", host.host_if, check=False)
            ip("netns", "del", host.ns, check=False)
        self.hosts.clear()
        if self.service:
            ip("addr", "del", f"{self.service}/32", "dev", "lo", check=False)
            self.service = ""


class Redis:
    def __init__(self, host: str) -> None:
        self.host = host
        self.port = free_port(host)
        self.dir = Path(tempfile.mkdtemp(prefix="dataflow-redis-"))
        self.password = "redis-" + os.urandom(8).hex()  # reachable off loopback: not open
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    def start(self) -> Redis:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", self.host,
             "--requirepass", self.password, "--save", "", "--appendonly", "no",
             "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port, 20, self.proc, host=self.host)
        return self

    def flush(self) -> None:
        subprocess.run(
            ["redis-cli", "-h", self.host, "-p", str(self.port), "--no-auth-warning", "flushall"],
            env={**os.environ, "REDISCLI_AUTH": self.password},
            capture_output=True,
            check=True,
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Services:
    """PostgreSQL, redis-server, the SFTP server and the emulator on the service address."""

    def __init__(self, network: Network, keys_dir: Path) -> None:
        self.network = network
        self.keys_dir = keys_dir
        self.postgres: Postgres | None = None
        self.redis: Redis | None = None
        self.sftp: SftpServer | None = None
        self.api: Emulator | None = None
        self.keys: PgpKeys | None = None

    def start(self) -> Services:
        service = self.network.service
        self.postgres = Postgres(listen=service, clients=self.network.subnet).start()
        self.redis = Redis(service).start()
        self.sftp = SftpServer(host=service).start()
        self.api = Emulator(
            clients={CLIENT_KEY: CLIENT_SECRET},
            basic={BASIC_USER: BASIC_PASSWORD},
            badge_metas=METAS,
            host=service,
        ).start()
        self.keys = PgpKeys(self.keys_dir, PGP_PASSPHRASE).generate()  # Bed.env's
        return self

    def stop(self) -> None:
        for stop in (
            self.api.stop if self.api else None,
            self.sftp.cleanup if self.sftp else None,
            self.redis.stop if self.redis else None,
            self.postgres.stop if self.postgres else None,
        ):
            if stop is not None:
                with contextlib.suppress(Exception):
                    stop()


class Node:
    """A `dataflow` command in the background, on the machine or in a namespace, in its own
    process group (so a kill takes the command and its children: gpg, a worker thread's)."""

    def __init__(
        self, args: list[str], env: dict[str, str], log: Path, host: NetHost | None = None
    ) -> None:
        self.args, self.host, self.log = args, host, log
        wrapper = ["ip", "netns", "exec", host.ns] if host is not None else []
        self.fh = log.open("w")
        self.proc = subprocess.Popen(
            [*wrapper, *DATAFLOW, *args],
            env={**os.environ, **env},
            stdout=self.fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.text():
                return
            assert self.proc.poll() is None, f"{self.args} exited:\n{self.text()}"
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not logged by {self.args}:\n{self.text()}")

    def real_pid(self) -> int:
        """The dataflow process itself: `ip netns exec` execs it (the same pid), or else its
        child (an iproute2 that forks)."""
        pid = self.proc.pid
        for _ in range(3):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"dataflow" in cmdline and not cmdline[0].endswith(b"ip"):
                return pid
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            assert children, f"no dataflow process under {self.proc.pid}: {cmdline}"
            pid = int(children[0])
        raise AssertionError(f"no dataflow process under {self.proc.pid}")

    def in_netns(self) -> bool:
        assert self.host is not None
        return os.stat(f"/proc/{self.real_pid()}/ns/net").st_ino == self.host.inode()

    def kill(self) -> None:
        """SIGKILL to the whole process group: the host is gone at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.fh.close()

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (a warm shutdown); SIGKILL after `timeout`. The exit code, None if killed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            code = None
        self.fh.close()
        return code


@dataclass
class Cluster:
    """One test's view of the services: its own database, a clean SFTP tree and emulator,
    and the processes it started (stopped by `stop_all`)."""

    services: Services
    dir: Path
    state_url: str = ""
    nodes: list[Node] = field(default_factory=list)

    @property
    def network(self) -> Network:
        return self.services.network

    @property
    def bed(self) -> Bed:
        s = self.services
        assert s.sftp is not None and s.api is not None and s.keys is not None
        return Bed(self.dir, s.sftp, s.api, s.keys)

    def prepare(self) -> Cluster:
        from dataflow import db

        s = self.services
        assert s.postgres is not None and s.redis is not None and s.api is not None
        plain = s.postgres.database()  # a fresh database, on 127.0.0.1
        name = sa.make_url(plain).database
        assert name is not None
        self.state_url = s.postgres.url(name, host=self.network.service)
        db.upgrade(self.state_url)
        s.redis.flush()
        s.api.reset()
        s.api.configure(token_ttl=3600, retry_after=1, expire_tokens=True)
        sftp = self.bed.sftp
        for directory in ("inbox", "processed", "errors"):
            for path in (sftp.root / directory).iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        return self

    def env(self, label: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of one process: its own state and temp dirs (its own host)."""
        s = self.services
        assert s.redis is not None
        own = self.dir / label
        (own / "tmp").mkdir(parents=True, exist_ok=True)
        return {
            **self.bed.env,
            "DATAFLOW_STATE_URL": self.state_url,
            "DATAFLOW_BROKER_URL": s.redis.url,
            "DATAFLOW_STATE_DIR": str(own / "state"),
            "TMPDIR": str(own / "tmp"),
            **(extra or {}),
        }

    def worker(self, k: int, extra: dict[str, str] | None = None, concurrency: int = 1) -> Node:
        host = self.network.hosts[k]
        label = f"w{k}-{len(self.nodes)}"
        args = ["worker", "--concurrency", str(concurrency)]
        node = Node(args, self.env(label, extra), self.dir / f"{label}.log", host)
        self.nodes.append(node)
        return node

    def scheduler(self, flows: Path, extra: dict[str, str] | None = None) -> Node:
        label = f"scheduler-{len(self.nodes)}"
        args = ["schedule", str(flows), "--executor", "celery"]
        node = Node(args, self.env(label, extra), self.dir / f"{label}.log")
        self.nodes.append(node)
        return node

    def stop_all(self) -> None:
        """Stop what is still running, then print each process's warnings and errors (pytest
        shows them when the test failed)."""
        for node in self.nodes:
            if node.proc.poll() is None:
                node.stop(timeout=20)
        for node in self.nodes:
            lines = [
                line
                for line in node.text().splitlines()
                if " WARNING " in line or " ERROR " in line or "Error" in line
            ]
            print(f"--- {node.log.name} ({' '.join(node.args[:1])}): {len(lines)} problem line(s)")
            print("\n".join(lines[-20:]))

    def register(self, flows: Path, names: Iterable[str]) -> None:
        """A first scheduler puts the jobs (weekly) in the PostgreSQL job store and stops."""
        first = self.scheduler(flows)
        for name in names:
            first.wait_for(f"{name}: next run at")
        assert first.stop() == 0, first.text()

    def history(self, name: str) -> list[dict[str, Any]]:
        from dataflow.ledger import Ledger

        ledger = Ledger(url=self.state_url)
        try:
            return ledger.history(name, limit=100)
        finally:
            ledger.close()

    def finished(self, name: str) -> bool:
        """A run of this dataflow finished with a file."""
        return any(r["status"] and r["files"] for r in self.history(name))

    def make_due(self, names: Iterable[str], hours_ago: float) -> None:
        """Move jobs' next run time in the PostgreSQL job store into the past (as if the
        schedulers had been down over their fire times): the next scheduler to start, or a
        standby taking over, runs them at once."""
        parsed = sa.make_url(self.state_url)
        past = datetime.now(UTC) - timedelta(hours=hours_ago)
        with psycopg.connect(
            host=parsed.host, port=parsed.port, user=parsed.username,
            password=parsed.password, dbname=parsed.database,
        ) as conn:  # fmt: skip
            for name in names:
                row = conn.execute(
                    "SELECT job_state FROM apscheduler_jobs WHERE id = %s", (name,)
                ).fetchone()
                assert row is not None, f"job {name} is not in the PostgreSQL job store"
                job = pickle.loads(row[0])
                job["next_run_time"] = past
                conn.execute(
                    "UPDATE apscheduler_jobs SET job_state = %s, next_run_time = %s WHERE id = %s",
                    (pickle.dumps(job), past.timestamp(), name),
                )


# ---- dataflows with planted invalid rows -------------------------------------------------

IMPORT_HEADER = "badge_id,customer_id,event_date,expires_at"
BULK_HEADER = "badge_id,customer_id,event_date,owner_type,reference_id"


@dataclass
class Planted:
    """A vendor file: its rows, the customers that must arrive, the lines that must not."""

    name: str
    template: str
    header: str
    lines: list[str] = field(default_factory=list)
    valid: list[int] = field(default_factory=list)  # customer ids the API must accept
    invalid: dict[int, str] = field(default_factory=dict)  # LINE_NO -> the expected stage

    @property
    def file(self) -> str:
        return f"badges_{self.name}.csv.gpg"

    @property
    def rejected(self) -> int:
        return sum(1 for stage in self.invalid.values() if stage == "transform")

    @property
    def failed(self) -> int:
        return len(self.invalid) - self.rejected

    def csv(self) -> bytes:
        return ("\n".join([self.header, *self.lines]) + "\n").encode()


def import_rows(name: str, count: int, base: int, every: int = 397) -> Planted:
    """Earned badges (the import API); every `every`-th row is invalid, in turn: rejected by
    the mapping (no number, a wrong date, expiry before the event) or by the API (1054)."""
    planted = Planted(name, "earned_badges", IMPORT_HEADER)
    bad = [
        ("BADGE-GOLD,abc,16/11/2026 09:30,1798761600", "transform"),
        ("BADGE-GOLD,{c},2026-11-16,1798761600", "transform"),
        ("BADGE-SILVER,{c},16/11/2026 09:30,1700000000", "transform"),
        ("BADGE-UNKNOWN,{c},16/11/2026 09:30,1798761600", "destination"),
    ]
    for i in range(count):
        customer = base + i
        line_no = i + 2  # the header is line 1
        if i % every == every - 1:
            text, stage = bad[(i // every) % len(bad)]
            planted.lines.append(text.format(c=customer))
            planted.invalid[line_no] = stage
        else:
            meta = "BADGE-GOLD" if i % 2 else "BADGE-SILVER"
            planted.lines.append(f"{meta},{customer},16/11/2026 09:30,1798761600")
            planted.valid.append(customer)
    return planted


def bulk_rows(name: str, template: str, count: int, base: int, every: int = 331) -> Planted:
    """Rows for a bulk template (one badge, many customers); every `every`-th row invalid:
    rejected by the mapping (ownerType, customer id) or in a group the API refuses (1054)."""
    planted = Planted(name, template, BULK_HEADER)
    bad = [
        ("BADGE-GOLD,{c},16/11/2026 09:30,Bogus,ref-1", "transform"),
        ("BADGE-GOLD,x{c},16/11/2026 09:30,Loyalty,ref-1", "transform"),
        ("BADGE-UNKNOWN,{c},16/11/2026 09:30,Loyalty,ref-1", "destination"),
    ]
    for i in range(count):
        customer = base + i
        line_no = i + 2
        if i % every == every - 1:
            text, stage = bad[(i // every) % len(bad)]
            planted.lines.append(text.format(c=customer))
            planted.invalid[line_no] = stage
        else:
            planted.lines.append(f"BADGE-GOLD,{customer},16/11/2026 09:30,Loyalty,ref-1")
            planted.valid.append(customer)
    return planted


def write_flow(
    bed: Bed,
    flows: Path,
    planted: Planted,
    sink: dict[str, Any],
    transform: dict[str, Any] | None = None,
) -> Path:
    """The dataflow file of `planted` in `flows` (SFTP and API on the service address, a
    weekly interval trigger: only `make_due` fires it) and its encrypted file in the inbox;
    `transform`: more settings of the field mapping (e.g. chunk_bytes)."""
    from .conftest import bulk_mapping

    date_field = "issueEventDate" if planted.template == "issue_badges_bulk" else "earnEventDate"
    mapping = bulk_mapping(date_field=date_field) if planted.header == BULK_HEADER else {}
    path = bed.config(
        name=planted.name,
        file=str((flows / f"{planted.name}.yaml").relative_to(bed.dir)),
        template=planted.template,
        source={
            "hostname": bed.sftp.host,
            "filename_pattern": re.escape(planted.file),
            "min_file_age_seconds": 0,
        },
        transform={**mapping, **(transform or {})},
        sink={"headers": {"X-Flow": flow_tag(planted.name)}, **sink},
    )
    doc = yaml.safe_load(path.read_text())
    doc["blocks"][-1] = {"name": "trigger", "type": "schedule", "every": {"days": 7}}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    bed.sftp.put(f"inbox/{planted.file}", bed.keys.encrypt(planted.csv()))
    return path


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def flow_tag(name: str) -> str:
    """The X-Flow header of a dataflow's requests (header values are secrets, masked in the
    logs: the tag is not the dataflow's name, which the logs must show)."""
    return "tag-" + hashlib.sha256(name.encode()).hexdigest()[:12]


def flow_requests(api: Emulator, name: str) -> list[dict[str, Any]]:
    """The badge API requests one dataflow sent (by its X-Flow header)."""
    tag = flow_tag(name)
    return [r for r in api.requests() if r.get("headers", {}).get("x-flow") == tag]
