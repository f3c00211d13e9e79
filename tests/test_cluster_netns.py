"""The cluster as separate network hosts (issue 12): PostgreSQL, redis-server, the SFTP server
and the emulator on the machine, one scheduler (and a standby) on the machine, three
`dataflow worker`s each in its own network namespace behind a veth pair (tests/clusterkit.py).

- Four dataflows (import and bulk templates, planted invalid rows): one worker is SIGKILLed
  in the middle of two files (an import and a bulk one) and the active scheduler is
  SIGKILLed once; the standby takes over and queues the dataflows again, the other hosts
  resume the files once the dead worker's leases lapse.
- A 60,000-row file with ``DATAFLOW_SHARD_ROWS=20000``: three shards on several hosts at
  once; then the same with a host SIGKILLed mid-shard and the scheduler killed.

Counted at the emulator (what it accepted, from which address), on the SFTP server (moves,
error files) and in the run history (`dataflow runs --json`). bench/cluster_timing.py times
the big file on one worker host against three.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .clusterkit import (
    Cluster,
    Network,
    Node,
    Planted,
    Services,
    bulk_rows,
    flow_requests,
    import_rows,
    wait_until,
    write_flow,
)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    network = Network()
    try:
        network.create(3)
        services = Services(network, tmp_path_factory.mktemp("cluster-keys"))
        try:
            yield services.start()
        finally:
            services.stop()
    finally:
        network.destroy()


@pytest.fixture
def cluster(services: Services, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(services, tmp_path).prepare()
    try:
        yield cluster
    finally:
        cluster.stop_all()


SLOW = {"batch_size": 50, "concurrency": 2, "rate": {"limit": 10, "per": "second"}}
FAST = {"batch_size": 100, "concurrency": 2, "rate": {"limit": 25, "per": "second"}}
IN_FLIGHT = SLOW["batch_size"] * SLOW["concurrency"]  # rows a kill may leave unconfirmed


def dataflows() -> list[tuple[Planted, dict[str, Any]]]:
    return [
        (import_rows("imp-a", 4000, 100_000), SLOW),  # killed mid-file
        (bulk_rows("bulk-earn", "earn_badges_bulk", 3000, 200_000), SLOW),  # killed mid-file
        (import_rows("imp-b", 3000, 300_000), FAST),
        (bulk_rows("bulk-issue", "issue_badges_bulk", 2000, 400_000), FAST),
    ]


VICTIMS = ("imp-a", "bulk-earn")
LEASE_SECONDS = 4.0  # a killed worker's files are free again after this long
LEASE = {"DATAFLOW_LEASE_SECONDS": f"{LEASE_SECONDS:g}"}


def error_lines(cluster: Cluster, planted: Planted) -> list[int]:
    """The LINE_NO column of the dataflow's one error file (every occurrence)."""
    errors = cluster.bed.sftp.root / "errors"
    (path,) = [p for p in errors.iterdir() if p.name.endswith("_" + planted.file[:-4])]
    rows = list(csv.reader(io.StringIO(path.read_text())))
    header = planted.header.split(",")
    assert rows[0] == [*header, "LINE_NO", "error_stage", "status_code", "error_message"]
    stages = {int(r[len(header)]): r[len(header) + 1] for r in rows[1:]}
    assert stages == planted.invalid, planted.name
    return [int(r[len(header)]) for r in rows[1:]]


def runs_json(cluster: Cluster) -> list[dict[str, Any]]:
    result = cluster.bed.run("runs", "--json", "--limit", "100", env=cluster.env("cli"))
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def accepted(cluster: Cluster, planted: Planted) -> Counter[int]:
    """Customers the emulator accepted for this dataflow (each id is unique to one file)."""
    api = cluster.bed.api
    ids = set(range(planted.valid[0] - 1, planted.valid[-1] + 2))
    if planted.template == "earned_badges":
        records = api.received()
    else:
        records = api.earned() if planted.template == "earn_badges_bulk" else api.issued()
    return Counter(r["customerId"] for r in records if r["customerId"] in ids)


def test_three_worker_hosts_a_worker_and_the_scheduler_killed(cluster: Cluster) -> None:
    bed, api, hosts = cluster.bed, cluster.bed.api, cluster.network.hosts
    flows = cluster.dir / "flows"
    flows.mkdir()
    plan = dataflows()
    for planted, sink in plan:
        write_flow(bed, flows, planted, sink)
    names = [p.name for p, _ in plan]
    cluster.register(flows, names)

    # the first host alone takes the two victims' runs, queued by the active scheduler
    first = cluster.worker(0, LEASE, concurrency=2)
    cluster.make_due(VICTIMS, hours_ago=3)
    active = cluster.scheduler(flows)
    for name in VICTIMS:
        active.wait_for(f"{name}: enqueued for a worker")
    standby = cluster.scheduler(flows)
    standby.wait_for("standby: another dataflow scheduler is active")
    wait_until(
        lambda: all(len(flow_requests(api, v)) >= 6 for v in VICTIMS), 90, "both files mid-way"
    )
    assert first.in_netns()  # the real worker process, in its own namespace
    pid = first.real_pid()
    first.kill()  # SIGKILL: the host is gone (its process group, not a wrapper)
    killed_at = time.monotonic()
    assert not Path(f"/proc/{pid}").exists()
    before = {v: flow_requests(api, v) for v in VICTIMS}
    assert {r["peer"] for v in VICTIMS for r in before[v]} == {hosts[0].address}
    assert bed.sftp.files("processed") == []  # mid-file: nothing finished
    for planted, _ in plan[:2]:
        sent = sum(r["records"] for r in before[planted.name])
        assert 0 < sent < len(planted.lines) - planted.rejected, planted.name

    # the other hosts come up; the active scheduler dies, the standby queues every dataflow
    others = [cluster.worker(k, LEASE, concurrency=2) for k in (1, 2)]
    time.sleep(max(0.0, killed_at + LEASE_SECONDS + 1 - time.monotonic()))  # leases lapsed
    cluster.make_due(names, hours_ago=2)
    active.kill()
    standby.wait_for("this one takes over", timeout=20)
    for name in names:
        standby.wait_for(f"{name}: enqueued for a worker", timeout=30)
    files = sorted(p.file for p, _ in plan)
    wait_until(lambda: bed.sftp.files("processed") == files, 150, "every original moved")
    wait_until(lambda: all(cluster.finished(n) for n in names), 60, "every run recorded")
    assert all(node.in_netns() for node in others)
    assert standby.stop() == 0, standby.text()
    for node in others:
        assert node.stop() == 0, node.text()

    # each worker was its own host: the resumed files came from the other two addresses
    for name in VICTIMS:
        after = flow_requests(api, name)[len(before[name]) :]
        assert after and {r["peer"] for r in after} <= {hosts[1].address, hosts[2].address}
    peers = {r["peer"] for r in api.requests()}
    assert peers <= {h.address for h in hosts}, peers  # nothing sent from the machine itself

    # the emulator's record: nothing lost, bulk requests applied once, re-sends bounded
    for planted, _ in plan:
        counted = accepted(cluster, planted)
        assert set(counted) == set(planted.valid), planted.name  # 0 rows lost, none extra
        resent = sum(counted.values()) - len(counted)
        print(f"{planted.name}: {len(counted)} rows accepted, {resent} re-sent")  # -rP shows it
        if planted.template != "earned_badges":
            assert resent == 0, planted.name  # a bulk request is never applied twice
            applied = Counter(
                r["requestId"] for r in flow_requests(api, planted.name) if r["status"] == 200
            )
            assert applied and set(applied.values()) == {1}, planted.name
        elif planted.name in VICTIMS:
            assert resent <= IN_FLIGHT, (planted.name, resent)  # at most the requests in flight
        else:
            assert resent == 0, planted.name

    # the SFTP tree: each original moved once, one error file each with exactly its lines
    assert bed.sftp.files("inbox") == []
    assert len(bed.sftp.files("errors")) == len(plan)
    for planted, _ in plan:
        lines = error_lines(cluster, planted)
        assert sorted(lines) == sorted(planted.invalid), planted.name  # each line once

    # the run history: one finished run per dataflow with its file and counts; the killed
    # runs stay unfinished, with no file
    runs = runs_json(cluster)
    for planted, _ in plan:
        mine = [r for r in runs if r["dataflow"] == planted.name]
        done = [r for r in mine if r["status"] is not None]
        assert len(done) == 1, (planted.name, mine)
        (run,) = done
        assert run["status"] == "partial"
        (f,) = run["files"]
        assert f["name"] == planted.file and f["status"] == "partial"
        assert f["rows_total"] == len(planted.lines)
        assert (f["rows_rejected"], f["rows_failed"]) == (planted.rejected, planted.failed)
        assert f["rows_succeeded"] == len(planted.valid)
        assert f["processed_path"].endswith(f"/processed/{planted.file}")
        killed = [r for r in mine if r["status"] is None]
        assert len(killed) == (planted.name in VICTIMS), (planted.name, mine)
        assert all(r["files"] == [] for r in killed)


SHARD_ROWS = 20_000
CHUNK_BYTES = 256 << 10  # about 6,000 rows: shards are ranges of the parser's chunks
SHARD = {"DATAFLOW_SHARD_ROWS": str(SHARD_ROWS), **LEASE}


def big_flow(cluster: Cluster, name: str, base: int, sink: dict[str, Any]) -> Planted:
    """A 60,000-row import file (three shards), an invalid row every 2,999, registered."""
    flows = cluster.dir / "flows"
    flows.mkdir()
    big = import_rows(name, 3 * SHARD_ROWS, base, every=2999)
    write_flow(cluster.bed, flows, big, sink, {"chunk_bytes": CHUNK_BYTES})
    cluster.register(flows, [name])
    return big


def sent_by_host(cluster: Cluster, name: str) -> Counter[str]:
    sent = Counter[str]()
    for r in flow_requests(cluster.bed.api, name):
        sent[r["peer"]] += r["records"]
    return sent


def moved(cluster: Cluster, big: Planted) -> bool:
    """The file is recorded with its move (not only `in_progress` in the run that split it)."""
    records = [f for r in cluster.history(big.name) for f in r["files"]]
    return any(f["processed_path"] for f in records)


def assert_big_outcome(cluster: Cluster, big: Planted, resent_at_most: int) -> None:
    """Every row accepted (re-sent at most `resent_at_most`), one error file with exactly the
    invalid lines, one move, and the whole file's counts in the run history."""
    bed = cluster.bed
    counted = accepted(cluster, big)
    assert set(counted) == set(big.valid)  # 0 rows lost
    resent = sum(counted.values()) - len(counted)
    print(f"{big.name}: {len(counted)} rows accepted, {resent} re-sent (bound {resent_at_most})")
    assert resent <= resent_at_most
    assert bed.sftp.files("inbox") == [] and bed.sftp.files("processed") == [big.file]
    assert len(bed.sftp.files("errors")) == 1
    lines = error_lines(cluster, big)
    assert sorted(lines) == sorted(big.invalid)  # each invalid line once, from every shard
    runs = [r for r in runs_json(cluster) if r["dataflow"] == big.name]
    records = [f for r in runs for f in r["files"] if f["name"] == big.file]
    assert sum(f["rows_total"] for f in records) == len(big.lines)
    assert sum(f["rows_rejected"] for f in records) == big.rejected
    assert sum(f["rows_failed"] for f in records) == big.failed
    assert sum(f["rows_succeeded"] for f in records) == len(big.valid)
    done = [f for f in records if f["processed_path"]]
    assert len(done) == 1 and done[0]["processed_path"].endswith(f"/processed/{big.file}")
    assert done[0]["status"] == "partial"
    (split,) = [r for r in runs if done[0] in r["files"]]
    assert split["status"] == "partial", split  # the run's status is its file's
    assert all(r["files"] == [] for r in runs if r is not split)  # runs while shards ran


def test_a_big_file_is_split_into_shards_run_by_several_worker_hosts(cluster: Cluster) -> None:
    """DATAFLOW_SHARD_ROWS: a 60,000-row file is three shards; the three workers run them at
    once (rows from at least two addresses), and they end in one error file with exactly the
    invalid lines, one move of the original and the ledger's counts of the whole file."""
    sink = {"batch_size": 500, "concurrency": 2, "rate": {"limit": 30, "per": "second"}}
    big = big_flow(cluster, "big", 1_000_000, sink)
    workers: list[Node] = [cluster.worker(k, SHARD) for k in range(3)]
    cluster.make_due(["big"], hours_ago=3)
    scheduler = cluster.scheduler(cluster.dir / "flows", SHARD)
    scheduler.wait_for("big: enqueued for a worker")
    wait_until(lambda: moved(cluster, big), 150, "the file finished")
    assert scheduler.stop() == 0
    for node in workers:
        assert node.stop() == 0, node.text()
    sent = sent_by_host(cluster, "big")
    assert set(sent) <= {h.address for h in cluster.network.hosts}
    assert len(sent) >= 2, f"the big file's rows all came from one host: {dict(sent)}"
    assert_big_outcome(cluster, big, resent_at_most=0)  # nothing killed: each row once


def test_a_worker_host_killed_mid_shard_and_the_scheduler_killed(cluster: Cluster) -> None:
    """The issue's scenario on the big file: its shards run on several hosts at once, one
    host is SIGKILLed mid-shard and the active scheduler too; the standby's next fire
    enqueues the orphaned shard again, a live host resumes it from the checkpoint."""
    batch, concurrency = 250, 2
    in_flight = batch * concurrency  # rows a kill may leave sent but unconfirmed
    sink = {"batch_size": batch, "concurrency": concurrency}
    big = big_flow(cluster, "big-kill", 2_000_000, {**sink, "rate": {"limit": 24, "per": "second"}})
    hosts = cluster.network.hosts
    workers: list[Node] = [cluster.worker(k, SHARD) for k in range(3)]
    cluster.make_due([big.name], hours_ago=3)
    flows = cluster.dir / "flows"
    active = cluster.scheduler(flows, SHARD)
    active.wait_for(f"{big.name}: enqueued for a worker")
    standby = cluster.scheduler(flows, SHARD)
    standby.wait_for("standby: another dataflow scheduler is active")
    wait_until(
        lambda: sum(1 for n in sent_by_host(cluster, big.name).values() if n >= 1000) >= 2,
        90,
        "shards sending from two hosts",
    )
    concurrent = sent_by_host(cluster, big.name)
    sending = [k for k, h in enumerate(hosts) if concurrent[h.address] >= 1000]
    victim = min(sending, key=lambda k: concurrent[hosts[k].address])  # the least advanced
    assert workers[victim].in_netns()
    workers[victim].kill()  # mid-shard
    killed_at = time.monotonic()
    at_kill = sent_by_host(cluster, big.name)[hosts[victim].address]
    assert cluster.bed.sftp.files("processed") == []
    assert at_kill < SHARD_ROWS // 2  # mid-shard: most of its rows unsent (a shard: 15k+)
    time.sleep(max(0.0, killed_at + LEASE_SECONDS + 1 - time.monotonic()))  # its lease lapsed
    cluster.make_due([big.name], hours_ago=2)
    active.kill()
    standby.wait_for("this one takes over", timeout=20)
    standby.wait_for(f"{big.name}: enqueued for a worker", timeout=30)
    wait_until(lambda: moved(cluster, big), 150, "the file finished")
    assert standby.stop() == 0
    for k, node in enumerate(workers):
        if k != victim:
            assert node.stop() == 0, node.text()
    assert len(concurrent) >= 2, f"the shards all ran on one host: {dict(concurrent)}"
    by_host = sent_by_host(cluster, big.name)
    print(f"{big.name}: killed host sent {at_kill} rows before the kill; by host {dict(by_host)}")
    assert by_host[hosts[victim].address] == at_kill  # it is gone
    assert_big_outcome(cluster, big, resent_at_most=in_flight)


def test_namespaces_are_cleaned_up_by_name() -> None:
    """A run killed before its finalizers leaves namespaces and links; the next run removes
    them by name (their creator's pid is gone), never those of a live run."""
    from .clusterkit import PREFIX, clean_leftovers, ip

    dead = 2**22 + 12345  # above PID_MAX_LIMIT: no such process, ever
    assert not os.path.exists(f"/proc/{dead}")
    ns, link = f"{PREFIX}-{dead}-0-w0", f"{PREFIX}{dead}x0h0"
    address = "10.213.255.77"  # outside the /24s a Network takes (T < 254)
    live = Network().create(1)
    mine = live.hosts[0].ns
    try:
        ip("netns", "add", ns)
        ip("link", "add", link, "type", "veth", "peer", "name", f"{PREFIX}{dead}x0n0")
        ip("addr", "add", f"{address}/32", "dev", "lo", "label", f"lo:{PREFIX}{dead}x0")
        clean_leftovers()
        assert address not in ip("-o", "addr", "show", "dev", "lo")
        assert live.service in ip("-o", "addr", "show", "dev", "lo")
        assert ns not in ip("netns", "list").split()
        assert link not in ip("-o", "link", "show")
        assert live.hosts[0].ns in ip("netns", "list").split()
        assert live.hosts[0].host_if in ip("-o", "link", "show")
    finally:
        live.destroy()
        ip("netns", "del", ns, check=False)
        ip("link", "del", link, check=False)
        ip("addr", "del", f"{address}/32", "dev", "lo", check=False)
    assert mine not in ip("netns", "list").split() and live.tag not in ip("-o", "link", "show")
