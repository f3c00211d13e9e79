"""File leases with fencing: one worker at a time works on a file, across machines.

A worker claims a file (dataflow, name in the source directory) for ``ttl`` seconds and gets
a fencing number, one more than the previous claim's. It renews the lease with heartbeats;
a lease not renewed in time may be claimed by another worker, which gets the next fence. Every
write of the file's state (heartbeat, checkpoint, error-file step, finishing the file) carries
the fence and is checked against the lease's in the same transaction: a worker that lost its
lease (paused, partitioned, killed and restarted late) changes nothing and gets `LeaseLost`.

The claim reads the lease row with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (two claimants
never wait on each other: the second sees the row taken) and in a ``BEGIN IMMEDIATE``
transaction on SQLite (one writer at a time). Times are the database's clock, so the hosts'
clocks do not matter. A fenced write takes the lease row ``FOR SHARE`` on PostgreSQL: a
takeover waits for it to commit, and a write after a takeover is refused.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from dataflow.db import Store
from dataflow.errors import FatalError

LEASE_ENV = "DATAFLOW_LEASE_SECONDS"
LEASE_DEFAULT = 60.0  # seconds; renewed every third of it

NOW = {
    "postgresql": "EXTRACT(EPOCH FROM clock_timestamp())::double precision",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}


class LeaseLost(FatalError):
    """Another worker claimed the file after this one's lease ran out: stop, write nothing."""


@dataclass(frozen=True)
class Lease:
    dataflow: str
    name: str
    owner: str
    fence: int


def lease_seconds() -> float:
    """The time to live of a file's lease (``DATAFLOW_LEASE_SECONDS``, default 60): a worker
    that stops renewing it (killed, paused, cut off) loses the file after this long."""
    text = os.environ.get(LEASE_ENV, "")
    try:
        value = float(text) if text else LEASE_DEFAULT
    except ValueError as exc:
        raise FatalError(f"{LEASE_ENV} must be a number of seconds, not {text!r}") from exc
    if not 0.5 <= value <= 86400:
        raise FatalError(f"{LEASE_ENV} must be between 0.5 and 86400 seconds, not {value:g}")
    return value


def worker_name(run_id: str) -> str:
    """Who holds a lease, as shown in messages: host, process and run."""
    return f"{socket.gethostname()}:{os.getpid()}:{run_id[:8]}"


def lost(lease: Lease) -> LeaseLost:
    return LeaseLost(
        f"the lease of {lease.name} (dataflow {lease.dataflow}) was taken over by another "
        f"worker after this one ({lease.owner}, fence {lease.fence}) did not renew it in time; "
        "nothing more is written for it here, the other worker goes on with the file"
    )


def claim(
    store: Store, dataflow: str, name: str, owner: str, ttl: float, steal: bool = False
) -> Lease | None:
    """Claim the file for `ttl` seconds: its lease, or None while another worker holds it
    (with `steal`, taken over anyway: the caller knows that holder is gone). The caller has
    begun a transaction."""
    now = NOW[store.dialect]
    skip = " FOR UPDATE SKIP LOCKED" if store.postgres else ""
    row = store.execute(
        f"SELECT owner, fence, lease_until > {now} FROM leases WHERE dataflow = ? AND name = ?"
        + skip,
        (dataflow, name),
    ).fetchone()
    if row is None:
        inserted = store.execute(
            f"INSERT INTO leases (dataflow, name, owner, fence, lease_until) VALUES "
            f"(?, ?, ?, 1, {now} + ?) ON CONFLICT DO NOTHING",
            (dataflow, name, owner, ttl),
        )
        return Lease(dataflow, name, owner, 1) if inserted.rowcount == 1 else None
    holder, fence, live = row
    if live and holder != owner and not steal:
        return None
    store.execute(
        f"UPDATE leases SET owner = ?, fence = ?, lease_until = {now} + ? "
        "WHERE dataflow = ? AND name = ?",
        (owner, int(fence) + 1, ttl, dataflow, name),
    )
    return Lease(dataflow, name, owner, int(fence) + 1)


def check(store: Store, lease: Lease) -> None:
    """Raise LeaseLost unless `lease` is still the file's; in the caller's transaction."""
    share = " FOR SHARE" if store.postgres else ""
    row = store.execute(
        "SELECT fence FROM leases WHERE dataflow = ? AND name = ?" + share,
        (lease.dataflow, lease.name),
    ).fetchone()
    if row is None or int(row[0]) != lease.fence:
        raise lost(lease)


def heartbeat(store: Store, lease: Lease, ttl: float) -> None:
    """Renew the lease for `ttl` seconds from now; LeaseLost if it was taken over."""
    renewed = store.execute(
        f"UPDATE leases SET lease_until = {NOW[store.dialect]} + ? "
        "WHERE dataflow = ? AND name = ? AND fence = ?",
        (ttl, lease.dataflow, lease.name, lease.fence),
    )
    if renewed.rowcount != 1:
        raise lost(lease)


def release(store: Store, lease: Lease) -> None:
    """Give the file up (finished, or handed back): another worker may claim it at once. A
    stale lease releases nothing."""
    store.execute(
        "UPDATE leases SET lease_until = 0 WHERE dataflow = ? AND name = ? AND fence = ?",
        (lease.dataflow, lease.name, lease.fence),
    )


def live(store: Store, dataflow: str, name: str) -> bool:
    """True while some worker holds a lease of that name that has not run out."""
    row = store.execute(
        f"SELECT lease_until > {NOW[store.dialect]} FROM leases WHERE dataflow = ? AND name = ?",
        (dataflow, name),
    ).fetchone()
    return bool(row and row[0])
