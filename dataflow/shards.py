"""Big files sent in shards by several workers (Celery executor only; see docs/scale-out.md).

On a worker, a file whose decrypted plaintext has more than ``DATAFLOW_SHARD_ROWS`` lines
(default 1,000,000) is split by the run that downloaded it into shards: ranges of the
parser's chunks (`dataflow.csvchunks`, ``chunk_bytes`` each; deterministic for a file), one
row per shard in the ``shards`` table, one Celery task (``dataflow.shard``) per shard. The
run records the file, and itself, as ``in_progress`` and returns: no worker thread waits for
shards. The set records the parse settings its chunk ranges were planned with (`parse_settings`:
``chunk_bytes``, encoding, delimiter, headers), and every shard parses with those, whatever its
worker's configuration or version says now.

Each shard task claims its own lease (``<name>/shard<n>``, fenced like a file's), downloads
and decrypts the file into its own private directory, checks its SHA-256, parses every chunk
(line numbers stay the file's) and transforms and sends only its own. Its bulk requestIds
are those one worker would send (they derive from the send key and each chunk's lines), its
acknowledgements go to the file's checkpoint, and it sends at ``rate.limit / shards``, so
the shards together never exceed the dataflow's limit (runs of the dataflow are skipped
while a shard set is in progress, see `active`). A finished shard stores its counts, error
rows and failures in its row (its error file in parts of `PART_BYTES` in ``shard_errors``);
the one that finds every other shard done (decided in one transaction, the set's row locked)
claims the set's finish lease (``<name>/finish``: one finisher at a time, the set's row read
again after the claim, so a resumed finish repeats no step done before) and assembles the
error file in shard (line) order, one part in memory at a time, uploads it,
moves the original and records the file once in the run that split it, with the summed
counts; the run's status is then derived again and its alerts are raised, once. A killed
shard's task comes back (acks late) or is enqueued again by the next run of the dataflow and
resumes from the checkpoint; a finished shard delivered again does nothing. A set whose
shards are all done but whose finish failed (an upload, the move, a lost lease) gets a
finish enqueued by the next run of the dataflow while no worker holds its leases, until it
succeeds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import functools
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
from pydantic import BaseModel

from dataflow import lease as leases
from dataflow import logs, metrics
from dataflow.alerts import alert_run
from dataflow.block import Block, FileStep, RemoteFile, RunContext, Sink, Source, Transform
from dataflow.config import Dataflow
from dataflow.db import COUNTS
from dataflow.digest import BLOCK
from dataflow.errorfile import ErrorFile
from dataflow.errors import FatalError, StateError, Stopped
from dataflow.lease import Lease, LeaseLost, lease_seconds, worker_name
from dataflow.ledger import MESSAGE_CHARS, Ledger
from dataflow.pipeline import (
    IN_PROGRESS,
    Chain,
    Decrypted,
    leased,
    process_shard,
    upload_error_file,
)
from dataflow.redact import redact
from dataflow.report import FileReport, RunReport

log = logging.getLogger(__name__)

STALLED_AFTER = 3  # deliveries of a shard stopped on an error: its dataflow's runs then fail
SHARD_ENV = "DATAFLOW_SHARD_ROWS"
SHARD_DEFAULT = 1_000_000
HEADER_READ = 1 << 16  # what dataflow.csvchunks reads with the header (its first chunk)
PART_BYTES = 1 << 20  # a shard's error file is stored, and read back, in parts of this size
DEFAULT_CHUNK_BYTES = 4 << 20  # a transform that does not say its chunk size
# the transform settings (besides chunk_bytes) that decide where its chunks begin and end
PARSE_KEYS = ("encoding", "delimiter", "headerless", "headers")
Enqueue = Callable[[str, str, str, int], None]  # (dataflow file, dataflow, send key, shard)


def shard_rows() -> int:
    """Rows above which a file is sent in shards (``DATAFLOW_SHARD_ROWS``)."""
    text = os.environ.get(SHARD_ENV, "")
    try:
        value = int(text) if text else SHARD_DEFAULT
    except ValueError as exc:
        raise FatalError(f"{SHARD_ENV} must be a number of rows, not {text!r}") from exc
    if value < 1:
        raise FatalError(f"{SHARD_ENV} must be at least 1, not {value}")
    return value


def scan(path: Path) -> tuple[int, str]:
    """Newlines in the file and its SHA-256, in one pass (the plaintext the ranges are of)."""
    lines = 0
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(BLOCK):
            lines += block.count(b"\n")
            digest.update(block)
    return lines, digest.hexdigest()


def plan(rows: int, size: int, chunk_bytes: int, threshold: int, limit: int) -> list[range]:
    """The shards' chunk ranges (the last open-ended); [] when the file is sent whole."""
    # an estimate (the last shard takes whatever is left): the parser's first chunk also
    # holds what it read ahead with the header
    chunks = max(0, size - HEADER_READ) // chunk_bytes + 1
    count = min(math.ceil(rows / threshold), chunks, limit)
    if rows <= threshold or count < 2:
        return []
    # balanced: shard i starts at chunk i * chunks // count (7 chunks in 3: 2, 2, 3 and not
    # 3, 3, 1: the slowest shard decides when the file is done)
    starts = [i * chunks // count for i in range(count)] + [sys.maxsize]
    return [range(starts[i], starts[i + 1]) for i in range(count)]


def _rate_limit(chain: Chain) -> int:
    rate = getattr(chain.sink.config, "rate", None)
    return int(getattr(rate, "limit", sys.maxsize))


@dataclass
class Sharder:
    """`dataflow.pipeline.Sharder` on a worker: `enqueue` puts a shard task on the queue."""

    enqueue: Enqueue
    config_path: str
    threshold: int

    async def split(self, decrypted: Decrypted) -> bool:
        chain, path, report = decrypted.chain, decrypted.path, decrypted.report
        if getattr(chain.transform.config, "duplicates", None) == "reject":
            return False  # a repeat is found across the whole file: one worker reads it
        newlines, plain = await asyncio.to_thread(scan, path)
        rows = max(0, newlines - 1)
        settings = {**parse_settings(chain), "plaintext_sha256": plain}
        size = path.stat().st_size
        ranges = plan(rows, size, settings["chunk_bytes"], self.threshold, _rate_limit(chain))
        if not ranges:
            return False
        report.status = IN_PROGRESS
        report.reason = (
            f"about {rows} rows (above {SHARD_ENV} {self.threshold}): sent in {len(ranges)} "
            "shards by the workers; its counts, error file and move come when the last finishes"
        )
        record_split(decrypted, self.config_path, ranges, settings)
        for number in range(len(ranges)):
            self.enqueue(self.config_path, chain.dataflow, decrypted.progress.key, number)
        log.info("%s: %s", decrypted.file.name, report.reason)
        return True


def parse_settings(chain: Chain) -> dict[str, Any]:
    """What the chunk ranges of a file depend on: the transform's effective ``chunk_bytes``
    (field_mapping's default depends on the template and on the version) and the settings
    that decide where a chunk ends (encoding, delimiter, headers), as a JSON object."""
    config = chain.transform.config
    known = type(config).model_fields
    settings: dict[str, Any] = {key: getattr(config, key) for key in PARSE_KEYS if key in known}
    if isinstance(settings.get("headers"), tuple | list):
        settings["headers"] = list(settings["headers"])
    settings["chunk_bytes"] = int(
        getattr(chain.transform, "chunk_bytes", None) or DEFAULT_CHUNK_BYTES
    )
    return settings


def record_split(
    decrypted: Decrypted, config_path: str, ranges: list[range], settings: dict[str, Any]
) -> None:
    """The set, its shards and the file (in progress) in one transaction (the file's fence)."""
    chain, file, report = decrypted.chain, decrypted.file, decrypted.report
    ledger, run, progress = decrypted.ledger, decrypted.run, decrypted.progress
    key = progress.key
    with ledger.transaction(chain.dataflow) as db:
        for table in ("shard_errors", "shards", "shard_sets"):
            db.execute(
                f"DELETE FROM {table} WHERE dataflow = ? AND send_key = ?", (chain.dataflow, key)
            )
        db.execute(
            "INSERT INTO shard_sets (dataflow, send_key, name, path, size, mtime, ok_path, "
            "sha256, send_no, run_id, lineage_id, config_path, shards, state, chunk_bytes, "
            "parse) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', ?, ?)",
            (
                chain.dataflow, key, file.name, file.path, file.size, file.mtime, file.ok_path,
                report.sha256, progress.send_no, run.run_id, report.lineage_id, config_path,
                len(ranges), settings["chunk_bytes"], json.dumps(settings, default=str),
            ),
        )  # fmt: skip
        for number, chunks in enumerate(ranges):
            end = None if chunks.stop == sys.maxsize else chunks.stop
            db.execute(
                "INSERT INTO shards (dataflow, send_key, shard_no, chunk_from, chunk_to, state) "
                "VALUES (?, ?, ?, ?, ?, 'pending')",
                (chain.dataflow, key, number, chunks.start, end),
            )
        ledger.record_file(run, report)


def active(ledger: Ledger, dataflow: str) -> list[dict[str, Any]]:
    """The shard sets of `dataflow` still in progress, with their pending shards and, in
    ``stalled``, the shards no worker holds now that stopped on an error `STALLED_AFTER`
    times or more in a row: pending ones (sending) or done ones (finishing the file)."""
    sets = ledger.select(
        "SELECT * FROM shard_sets WHERE dataflow = ? AND state = 'running'", (dataflow,)
    )
    for one in sets:
        shards = ledger.select(
            "SELECT shard_no, state, stops, stopped FROM shards WHERE dataflow = ? AND "
            "send_key = ? ORDER BY shard_no",
            (dataflow, one["send_key"]),
        )
        one["pending"] = [int(r["shard_no"]) for r in shards if r["state"] == "pending"]
        stopping = [  # sending, or (all sent) finishing: counted on shard 0 (`record_stop`)
            r
            for r in shards
            if int(r["stops"] or 0) >= STALLED_AFTER
            and (r["state"] == "pending" or (not one["pending"] and int(r["shard_no"]) == 0))
        ]
        if stopping and leases.live(ledger.store, dataflow, finish_lease_name(one["name"])):
            stopping = []  # a worker is finishing the file now
        one["stalled"] = [
            r
            for r in stopping
            if not leases.live(ledger.store, dataflow, lease_name(one["name"], r["shard_no"]))
        ]
    return sets


def record_stop(ledger: Ledger, dataflow: str, key: str, number: int, error: str) -> None:
    """Count a delivery of shard `number` that stopped on `error`, sending its rows or
    finishing the file (kept for the runs of the dataflow, which report a shard that keeps
    stopping: `active`'s ``stalled``). Best effort: a state that cannot be written is what
    stopped the shard, and its worker has logged it."""
    text = redact(error)[:MESSAGE_CHARS]
    count = "UPDATE shards SET stops = COALESCE(stops, 0) + 1, stopped = ? "
    with contextlib.suppress(FatalError):
        sending = ledger.store.execute(
            count + "WHERE dataflow = ? AND send_key = ? AND shard_no = ? AND state = 'pending'",
            (text, dataflow, key, number),
        )
        if sending.rowcount == 0:  # sent: it was finishing the file if every shard is sent
            # (else a delivery again of a sent shard: nothing of the set's); counted on the
            # set's shard 0, whichever shard's delivery finishes (see `stalled_reason`)
            ledger.store.execute(
                count + "WHERE dataflow = ? AND send_key = ? AND shard_no = 0 AND NOT EXISTS "
                "(SELECT 1 FROM shards WHERE dataflow = ? AND send_key = ? AND state != 'done')",
                (text, dataflow, key, dataflow, key),
            )


def stalled_reason(one: Mapping[str, Any]) -> str:
    """What a run of the dataflow says of a set whose shards keep stopping, and what to do."""
    stops = "; ".join(
        (
            f"shard {r['shard_no']} of {one['shards']} stopped {r['stops']} times"
            if r["state"] == "pending"
            else f"finishing the file stopped {r['stops']} times"
        )
        + f", last: {r['stopped']}"
        for r in one["stalled"]
    )
    return (
        f"{one['name']} (split by run {one['run_id']}) cannot be finished: {stops}. Its other "
        "shards' rows are sent and the dataflow's other files wait; fix the cause (a file "
        "replaced on the server must be put back as it was: SHA-256 "
        f"{str(one['sha256'])[:16]}...) and the next run enqueues the shard again"
    )


def enqueue_orphans(
    ledger: Ledger, dataflow: str, sets: list[dict[str, Any]], sharder: Sharder
) -> None:
    """Enqueue again the pending shards no worker holds (their task was lost: the run that
    split the file was killed before enqueuing, the broker lost it). A shard delivered twice
    is sent once: the second delivery finds it held or done. A set whose shards are all
    done but that nobody finishes (its finish failed or was killed) gets a finish: shard 0
    enqueued again, whose delivery finds every shard done and finishes the file."""
    for one in sets:
        if not one["pending"] and not finisher_live(ledger, dataflow, one):
            log.info("%s: all shards done, the file is not finished: finish enqueued", one["name"])
            sharder.enqueue(str(one["config_path"]), dataflow, str(one["send_key"]), 0)
            continue
        for number in one["pending"]:
            name = lease_name(str(one["name"]), number)
            if not leases.live(ledger.store, dataflow, name):
                log.info("%s: shard %d has no worker: enqueued again", one["name"], number)
                sharder.enqueue(str(one["config_path"]), dataflow, str(one["send_key"]), number)


def lease_name(name: str, number: int) -> str:
    """A shard's lease ("/" is in no file name: never a file's own lease)."""
    return f"{name}/shard{number}"


def finish_lease_name(name: str) -> str:
    """The lease of the one worker finishing a set (its error file, move, record, alerts)."""
    return f"{name}/finish"


def finisher_live(ledger: Ledger, dataflow: str, one: Mapping[str, Any]) -> bool:
    """True while a worker holds the set's finish lease or one of its shards' leases (a
    shard that is sending, or that has just sent the last rows and is about to finish)."""
    names = [finish_lease_name(str(one["name"]))]
    names += [lease_name(str(one["name"]), n) for n in range(int(one["shards"]))]
    return any(leases.live(ledger.store, dataflow, name) for name in names)


def run_shard(path: str, dataflow_name: str, key: str, number: int) -> str:
    """The task of one shard, on a worker: what it did, in a word."""
    from dataflow.config import load_dataflow

    dataflow = load_dataflow(path)
    ledger = Ledger()
    try:
        rows = ledger.select(
            "SELECT * FROM shard_sets WHERE dataflow = ? AND send_key = ?", (dataflow_name, key)
        )
        if not rows or rows[0]["state"] != "running":
            log.info("%s: shard %d: its file is finished; nothing to do", dataflow_name, number)
            return "finished"
        one = rows[0]
        with logs.context(dataflow=dataflow.name, run_id=one["run_id"]):
            try:
                return asyncio.run(_shard(dataflow, ledger, one, number))
            except (Stopped, LeaseLost, StateError):
                raise  # not the shard's own problem: SIGTERM, another worker, the state
            except Exception as exc:
                text = str(exc) if isinstance(exc, FatalError) else f"{type(exc).__name__}: {exc}"
                record_stop(ledger, dataflow_name, key, number, text)
                raise
    finally:
        metrics.flush(ledger)  # the API request counts of this shard (never raises)
        with contextlib.suppress(FatalError):
            ledger.close()


async def _shard(dataflow: Dataflow, ledger: Ledger, one: dict[str, Any], number: int) -> str:
    ttl = lease_seconds()
    owner = worker_name(str(one["run_id"]))
    lease = ledger.claim_file(dataflow.name, lease_name(one["name"], number), owner, ttl)
    if lease is None:
        log.info("%s: shard %d is being sent by another worker", one["name"], number)
        return "held"
    try:
        return await leased(ledger, lease, ttl, _shard_leased(dataflow, ledger, one, number, lease))
    finally:
        with contextlib.suppress(FatalError):
            ledger.release(lease)


async def _shard_leased(
    dataflow: Dataflow, ledger: Ledger, one: dict[str, Any], number: int, lease: Lease
) -> str:
    key = str(one["send_key"])
    (row,) = ledger.select(
        "SELECT * FROM shards WHERE dataflow = ? AND send_key = ? AND shard_no = ?",
        (dataflow.name, key, number),
    )
    workdir = Path(tempfile.mkdtemp(prefix=f"dataflow-{os.getpid()}-shard-"))  # mode 700
    blocks: list[Block] = []
    try:
        chunks = range(int(row["chunk_from"]), int(row["chunk_to"] or sys.maxsize))
        chain, blocks = await _open_chain(dataflow, workdir, chunks, one)
        file = RemoteFile(
            str(one["path"]), str(one["name"]), int(one["size"] or 0), int(one["mtime"] or 0),
            one["ok_path"],
        )  # fmt: skip
        last = False
        if row["state"] == "pending":
            last = await _send_shard(chain, file, workdir, ledger, one, number, lease)
        elif _all_done(ledger, dataflow.name, key):  # the finishing was interrupted
            last = True
        if last:
            return await _finish(dataflow, chain, file, workdir, ledger, one, lease.owner)
        return "sent"
    finally:
        for block in reversed(blocks):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(block.close)
        shutil.rmtree(workdir, ignore_errors=True)


def _divided(config: BaseModel, shards: int) -> BaseModel:
    """A sink's settings with its rate limit divided among the shards sending at once."""
    rate = getattr(config, "rate", None)
    if not isinstance(rate, BaseModel) or not isinstance(getattr(rate, "limit", None), int):
        return config
    limit = max(1, int(getattr(rate, "limit")) // shards)  # noqa: B009 - typed as BaseModel
    return config.model_copy(update={"rate": rate.model_copy(update={"limit": limit})})


def planned_settings(one: dict[str, Any]) -> dict[str, Any] | None:
    """The parse settings the set was planned with; None for a set split by a version that
    did not record them (its shards parse with the configuration as it is now)."""
    if one.get("chunk_bytes") is None:
        return None
    settings: dict[str, Any] = json.loads(one.get("parse") or "{}")
    settings["chunk_bytes"] = int(one["chunk_bytes"])
    return settings


def _as_planned(config: BaseModel, settings: dict[str, Any]) -> BaseModel:
    """A transform's settings with the parse settings the set was planned with."""
    known = type(config).model_fields
    update = {key: value for key, value in settings.items() if key in known}
    return config.model_copy(update=update) if update else config


def _check_planned(chain: Chain, one: dict[str, Any], settings: dict[str, Any] | None) -> None:
    if settings is None:
        log.warning(
            "%s: its shards were planned by an earlier version that did not record its parse "
            "chunk; they parse with the chunk configured now (%s bytes)",
            one["name"],
            getattr(chain.transform, "chunk_bytes", "?"),
        )
        return
    have = getattr(chain.transform, "chunk_bytes", None)
    if have is not None and int(have) != settings["chunk_bytes"]:
        raise FatalError(
            f"{one['name']}: its shards were planned with chunks of {settings['chunk_bytes']} "
            f"bytes and block {chain.transform.config.name!r} cannot parse with that size "
            f"(it uses {have}); nothing was sent by this shard"
        )


async def _open_chain(
    dataflow: Dataflow, workdir: Path, chunks: range, one: dict[str, Any]
) -> tuple[Chain, list[Block]]:
    context = RunContext(
        dataflow=dataflow.name,
        template=dataflow.template,
        workdir=workdir,
        base_dir=dataflow.path.resolve().parent,
    )
    settings = planned_settings(one)
    blocks: list[Block] = []
    for spec in dataflow.blocks:
        config: BaseModel = spec.config
        if issubclass(spec.cls, Sink):
            config = _divided(config, int(one["shards"]))
        elif issubclass(spec.cls, Transform) and settings is not None:
            config = _as_planned(config, settings)  # the chunks the ranges were planned with
        blocks.append(spec.cls(config, context))
    opened: list[Block] = []
    try:
        for block in blocks:
            opened.append(block)
            await asyncio.to_thread(block.open)
    except BaseException:
        for block in reversed(opened):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(block.close)
        raise
    chain = Chain(
        dataflow=dataflow.name,
        template=dataflow.template,
        source=next(b for b in blocks if isinstance(b, Source)),
        steps=[b for b in blocks if isinstance(b, FileStep)],
        transform=next(b for b in blocks if isinstance(b, Transform)),
        sink=next(b for b in blocks if isinstance(b, Sink)),
        chunks=chunks,
    )
    try:
        _check_planned(chain, one, settings)
    except BaseException:
        for block in reversed(opened):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(block.close)
        raise
    return chain, opened


async def _send_shard(
    chain: Chain,
    file: RemoteFile,
    workdir: Path,
    ledger: Ledger,
    one: dict[str, Any],
    number: int,
    lease: Lease,
) -> bool:
    """Send the shard's rows and record it done; True when it was the last one."""
    report = FileReport(str(one["name"]), str(one["lineage_id"]), size=int(one["size"] or 0))
    report.sha256, report.send_no = str(one["sha256"]), int(one["send_no"])
    progress = ledger.checkpoints(chain.dataflow).open(report.sha256, report.name, report.send_no)
    assert chain.chunks is not None
    log.info(
        "%s: shard %d of %d (chunks %d..%s) on %s",
        file.name,
        number,
        int(one["shards"]),
        chain.chunks.start,
        "end" if chain.chunks.stop == sys.maxsize else chain.chunks.stop - 1,
        lease.owner,
    )
    filedir = Path(tempfile.mkdtemp(prefix="file-", dir=workdir))
    with logs.context(lineage_id=report.lineage_id):
        planned = planned_settings(one) or {}
        errors = await process_shard(
            chain, file, filedir, ledger, report, progress, planned.get("plaintext_sha256")
        )
        failed = json.dumps(pack_failed(progress.failed))
        with ledger.transaction(chain.dataflow) as db:
            lock = " FOR UPDATE" if db.postgres else ""  # the finishers, one after the other
            db.execute(
                "SELECT state FROM shard_sets WHERE dataflow = ? AND send_key = ?" + lock,
                (chain.dataflow, progress.key),
            )
            store_errors(ledger, chain.dataflow, progress.key, number, errors.path, errors.rows)
            db.execute(
                "UPDATE shards SET state = 'done', rows_total = ?, rows_filtered = ?, "
                "rows_rejected = ?, rows_sent = ?, rows_succeeded = ?, rows_failed = ?, "
                "error_rows = ?, errors = NULL, summary = ?, failed = ?, owner = ?, "
                "stops = NULL, stopped = NULL "  # sent: only its finishing may stop now
                "WHERE dataflow = ? AND send_key = ? AND shard_no = ? AND state = 'pending'",
                (
                    *(getattr(report, f"rows_{n}") for n in COUNTS), errors.rows,
                    json.dumps(errors.summary()), failed, lease.owner,
                    chain.dataflow, progress.key, number,
                ),
            )  # fmt: skip
            last = _all_done(ledger, chain.dataflow, progress.key)
    log.info(
        "%s: shard %d sent %d rows: %d accepted, %d failed, %d rejected%s",
        file.name,
        number,
        report.rows_sent,
        report.rows_succeeded,
        report.rows_failed,
        report.rows_rejected,
        "; the last one: it finishes the file" if last else "",
    )
    return last


def _all_done(ledger: Ledger, dataflow: str, key: str) -> bool:
    (row,) = ledger.store.execute(
        "SELECT COUNT(*) FROM shards WHERE dataflow = ? AND send_key = ? AND state != 'done'",
        (dataflow, key),
    ).fetchall()
    return int(row[0]) == 0


def header_bytes(fh: IO[bytes]) -> bytes:
    """The header record at the start of an error file: lines up to the first end of line
    outside quotes (a column name may hold a quoted line break; quotes inside are doubled)."""
    header = b""
    while line := fh.readline():
        header += line
        if header.count(b'"') % 2 == 0:
            break
    return header


def store_errors(
    ledger: Ledger, dataflow: str, key: str, number: int, path: Path, rows: int
) -> None:
    """A shard's error file into ``shard_errors`` (part 0 its header, then its rows in parts
    of `PART_BYTES`), replacing what an interrupted attempt stored; read one part at a time.
    Call it in the transaction that marks the shard done."""
    with ledger.transaction(dataflow) as db:
        where = (dataflow, key, number)
        db.execute(
            "DELETE FROM shard_errors WHERE dataflow = ? AND send_key = ? AND shard_no = ?", where
        )
        if not rows or not path.exists():
            return
        insert = "INSERT INTO shard_errors VALUES (?, ?, ?, ?, ?)"
        with path.open("rb") as fh:
            db.execute(insert, (*where, 0, header_bytes(fh)))
            part = 1
            while data := fh.read(PART_BYTES):
                db.execute(insert, (*where, part, data))
                part += 1


def assemble_errors(
    ledger: Ledger,
    dataflow: str,
    key: str,
    shards: Iterable[int],
    out: IO[bytes],
    delimiter: str = ",",
) -> None:
    """Write the file's error file to `out`: the header once, then every shard's rows in shard
    (line) order, one stored part in memory at a time."""
    header = False
    for number in shards:
        where = (dataflow, key, number)
        parts = ledger.store.execute(
            "SELECT part_no FROM shard_errors WHERE dataflow = ? AND send_key = ? AND "
            "shard_no = ? ORDER BY part_no",
            where,
        ).fetchall()
        if not parts:
            legacy = _legacy_errors(ledger, where)
            if legacy:
                out.write((legacy if not header else _without_header(legacy, delimiter)).encode())
                header = True
            continue
        for (part,) in parts:
            if int(part) == 0 and header:
                continue
            (row,) = ledger.store.execute(
                "SELECT data FROM shard_errors WHERE dataflow = ? AND send_key = ? AND "
                "shard_no = ? AND part_no = ?",
                (*where, int(part)),
            ).fetchall()
            out.write(bytes(row[0]))
        header = header or bool(parts)


def _without_header(text: str, delimiter: str) -> str:
    """An error file's rows without its header (a CSV record, perhaps over several lines)."""
    lines = io.StringIO(text, newline="").readlines()
    reader = csv.reader(iter(lines), delimiter=delimiter)
    next(reader, None)
    return "".join(lines[reader.line_num :])


Failed = dict[tuple[str, str], np.ndarray]  # (code, message) -> int64 lines the API failed


def pack_failed(failed: Mapping[int, tuple[str, str]]) -> list[list[str]]:
    """A shard's failed lines as stored: [[code, message, base64 of int64 lines]], 8 bytes a
    line (not one JSON list per line)."""
    by_error: dict[tuple[str, str], list[int]] = {}
    for line, (code, message) in failed.items():
        by_error.setdefault((str(code), message), []).append(line)
    return [
        [code, message, base64.b64encode(np.array(sorted(lines), np.int64).tobytes()).decode()]
        for (code, message), lines in by_error.items()
    ]


def unpack_failed(text: str | None, into: Failed) -> None:
    """Add a shard's stored failed lines to `into` (also the per-line form of an earlier
    version: [[line, code, message]])."""
    for entry in json.loads(text or "[]"):
        if isinstance(entry[0], int):  # [line, code, message]
            lines = np.array([entry[0]], np.int64)
            code, message = str(entry[1]), str(entry[2])
        else:
            code, message = str(entry[0]), str(entry[1])
            lines = np.frombuffer(base64.b64decode(entry[2]), dtype=np.int64)
        before = into.get((code, message))
        into[(code, message)] = lines if before is None else np.concatenate([before, lines])


SHARD_COLUMNS = (
    "shard_no, rows_total, rows_filtered, rows_rejected, rows_sent, rows_succeeded, "
    "rows_failed, error_rows, summary, failed"
)


def _shards(ledger: Ledger, dataflow: str, key: str) -> list[dict[str, Any]]:
    """The set's shards, their counts, summaries and failed lines (not their error rows)."""
    return ledger.select(
        f"SELECT {SHARD_COLUMNS} FROM shards WHERE dataflow = ? AND send_key = ? ORDER BY shard_no",
        (dataflow, key),
    )


def _legacy_errors(ledger: Ledger, where: tuple[str, str, int]) -> str:
    """The error file an earlier version stored whole in a shard's row ('' if none)."""
    rows = ledger.store.execute(
        "SELECT errors FROM shards WHERE dataflow = ? AND send_key = ? AND shard_no = ?", where
    ).fetchall()
    return bytes(rows[0][0]).decode("utf-8") if rows and rows[0][0] else ""


async def _finish(
    dataflow: Dataflow,
    chain: Chain,
    file: RemoteFile,
    workdir: Path,
    ledger: Ledger,
    one: dict[str, Any],
    owner: str,
) -> str:
    """Finish the set under its finish lease (`<name>/finish`, fenced, renewed): one finisher
    at a time, whichever shard's delivery comes; a killed finisher's lease runs out and the
    next run enqueues the finish again (`enqueue_orphans`)."""
    ttl = lease_seconds()
    # unique per attempt: two threads of one worker process must not share the claim
    me = f"{owner}:finish-{uuid.uuid4().hex[:8]}"
    lease = ledger.claim_file(dataflow.name, finish_lease_name(str(one["name"])), me, ttl)
    if lease is None:
        log.info("%s: another worker is finishing the file", one["name"])
        return "finish held"
    try:
        work = _finish_claimed(dataflow, chain, file, workdir, ledger, one)
        return await leased(ledger, lease, ttl, work)
    finally:
        with contextlib.suppress(FatalError):
            ledger.release(lease)


async def _finish_claimed(
    dataflow: Dataflow,
    chain: Chain,
    file: RemoteFile,
    workdir: Path,
    ledger: Ledger,
    one: dict[str, Any],
) -> str:
    # read again now that the finish is ours: what a finisher before did is not repeated
    rows = ledger.select(
        "SELECT * FROM shard_sets WHERE dataflow = ? AND send_key = ?",
        (chain.dataflow, str(one["send_key"])),
    )
    if not rows or rows[0]["state"] != "running":
        log.info("%s: already finished by another worker", one["name"])
        return "finished"
    await _finish_set(dataflow, chain, file, workdir, ledger, rows[0])
    return "finished the file"


async def _finish_set(
    dataflow: Dataflow,
    chain: Chain,
    file: RemoteFile,
    workdir: Path,
    ledger: Ledger,
    one: dict[str, Any],
) -> None:
    """The last shard: one error file from all shards, the original moved, the file recorded
    once in the run that split it, whose status is derived again and whose alerts are raised.
    Each step is recorded, so an interrupted finish resumes."""
    key = str(one["send_key"])
    shards = _shards(ledger, chain.dataflow, key)
    report = FileReport(str(one["name"]), str(one["lineage_id"]), size=int(one["size"] or 0))
    report.sha256, report.send_no = str(one["sha256"]), int(one["send_no"])
    for name in COUNTS:
        setattr(report, f"rows_{name}", sum(int(s[f"rows_{name}"] or 0) for s in shards))
    errors = ErrorFile(workdir / "errors.csv", [], chain.transform.delimiter)
    kinds: Counter[tuple[str, str, str]] = Counter()
    failed: Failed = {}
    for shard in shards:
        errors.rows += int(shard["error_rows"] or 0)
        for stage, code, message, count in json.loads(shard["summary"] or "[]"):
            if (stage, code, message) != ("", "", "other errors"):  # the rest: summed again
                kinds[(stage, code, message)] += int(count)
        unpack_failed(shard["failed"], failed)
    errors.kinds = kinds
    progress = ledger.checkpoints(chain.dataflow).open(report.sha256, report.name, report.send_no)
    if errors.rows:
        write = functools.partial(_write_errors, ledger, key, shards, errors, chain)
        await upload_error_file(chain, file, errors.path, report, progress, ledger, write)
    if one["processed_path"]:
        report.processed_path = str(one["processed_path"])  # moved before an interruption
    else:
        report.processed_path = await asyncio.to_thread(chain.source.move_original, file, False)
        with ledger.transaction(chain.dataflow) as db:
            db.execute(
                "UPDATE shard_sets SET processed_path = ? WHERE dataflow = ? AND send_key = ?",
                (report.processed_path, chain.dataflow, key),
            )
    report.status = "partial" if report.rows_rejected + report.rows_failed else "success"
    run = RunReport(chain.dataflow, str(one["run_id"]), "")
    with ledger.transaction(chain.dataflow) as db:
        ledger.finish_file(run, report, errors.summary(), failed_lines=failed)
        done = db.execute(
            "UPDATE shard_sets SET state = 'finished' WHERE dataflow = ? AND send_key = ? "
            "AND state = 'running'",
            (chain.dataflow, key),
        )
        if done.rowcount != 1:  # rolls back the record: another finisher recorded it
            raise FatalError(f"{file.name}: finished by another worker; not recorded again")
        db.execute(
            "DELETE FROM shard_errors WHERE dataflow = ? AND send_key = ?", (chain.dataflow, key)
        )
        status = ledger.refresh_run(run.run_id, finished_at=_now())
    log.info(
        "%s: finished from %d shards: %s (%d rows: %d accepted, %d rejected, %d failed); moved "
        "to %s",
        file.name,
        len(shards),
        report.status,
        report.rows_total,
        report.rows_succeeded,
        report.rows_rejected,
        report.rows_failed,
        report.processed_path,
    )
    if status is not None and status != IN_PROGRESS:
        _alert(dataflow, ledger, run.run_id)


def _write_errors(
    ledger: Ledger, key: str, shards: list[dict[str, Any]], errors: ErrorFile, chain: Chain
) -> None:
    numbers = [int(s["shard_no"]) for s in shards]
    with errors.path.open("wb") as out:
        assemble_errors(ledger, chain.dataflow, key, numbers, out, errors.delimiter)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _alert(dataflow: Dataflow, ledger: Ledger, run_id: str) -> None:
    """The alerts of the run that split the file, now that its last file is finished: its
    true status from every file it recorded (it raised none while it was in progress)."""
    run = ledger.run_report(run_id)
    if run is not None:
        alert_run(dataflow, run, ledger)
