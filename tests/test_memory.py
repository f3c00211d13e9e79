"""Memory of a streamed file: allocator settings (`dataflow.memory`) and the chunk sizes.

The allocator tests run in a fresh interpreter: the settings are process-wide and must be
observed from a known start.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from dataflow.block import RunContext
from dataflow.templates import EARNED_BADGES, TEMPLATES
from dataflow_blocks.field_mapping import (
    CHUNK_BYTES,
    GROUPED_CHUNK_BYTES,
    FieldMapping,
    FieldMappingConfig,
)

from .conftest import bulk_mapping

# a fresh interpreter that frees 100 MiB of 1 MiB arrays interleaved with small live ones
# (after a large freed array raised glibc's dynamic mmap threshold): prints RSS before/after
FRAGMENT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pathlib import Path

    def rss():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024

    if sys.argv[1] == "tuned":
        from dataflow import memory
        memory.tune()
    big = np.ones(8 << 17)  # 8 MiB, mmapped, then freed: glibc would raise its threshold
    del big
    before = rss()
    arrays, pins = [], []
    for _ in range(100):
        arrays.append(np.ones(1 << 17))  # 1 MiB
        pins.append(np.ones(64))  # 512 bytes from malloc, between them
    del arrays
    print(before, rss())
    """
)


def _python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "ARROW_"))}
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def test_tune_gives_freed_arrays_back_to_the_system() -> None:
    before, after = map(int, _python(FRAGMENT, "tuned").split())
    assert after - before < 20, f"RSS {before} -> {after} MiB after freeing 100 MiB"


def test_tune_puts_arrow_on_the_system_allocator_unless_told_otherwise() -> None:
    code = (
        "from dataflow import memory; memory.tune(); import pyarrow as pa; "
        "print(pa.default_memory_pool().backend_name)"
    )
    assert _python(code) == "system"
    assert _python(code, env={"ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}) == "jemalloc"


def _stream(path: Path, template: Any, **settings: Any) -> Any:
    config = FieldMappingConfig.model_validate({"name": "t", "type": "field_mapping", **settings})
    return FieldMapping(config, RunContext("t", template, path.parent, path.parent)).read(path)


def test_import_template_reads_in_2_mib_chunks(tmp_path: Path) -> None:
    path = tmp_path / "badges.csv"
    line = "BADGE-GOLD,{},16/11/2026 09:30,1830000000\n"
    rows = 5 * (1 << 20) // len(line.format(1000000))  # about 5 MiB
    with path.open("w") as out:
        out.write("badge_id,customer_id,event_date,expires_at\n")
        out.writelines(line.format(1000000 + i) for i in range(rows))
    mapping = {
        "badgeMetaId": "badge_id",
        "customerId": "customer_id",
        "earnEventDate": {"column": "event_date", "date_format": "%d/%m/%Y %H:%M"},
        "earnExpiresOn": {"column": "expires_at", "date_format": "epoch"},
    }
    config = FieldMappingConfig.model_validate(
        {"name": "t", "type": "field_mapping", "mapping": mapping}
    )
    assert FieldMapping(config, RunContext("t", EARNED_BADGES, tmp_path, tmp_path)).chunk_bytes == (
        CHUNK_BYTES
    )  # what dataflow.shards plans with
    stream = _stream(path, EARNED_BADGES, mapping=mapping)
    try:
        sizes = [len(chunk.records) for chunk in stream]
    finally:
        stream.close()
    assert sum(sizes) == rows
    assert len(sizes) == 3
    assert max(sizes) * len(line.format(1000000)) < CHUNK_BYTES + (64 << 10)  # + a read ahead


def test_bulk_template_chunks_and_request_ids_are_unchanged(tmp_path: Path) -> None:
    """A bulk template's requestIds depend on its chunks: its default stays 4 MiB."""
    template = TEMPLATES["earn_badges_bulk"]
    path = tmp_path / "bulk.csv"
    line = "BADGE-GOLD,{},16/11/2026 09:30,Loyalty,ref-1\n"
    rows = 3 * (1 << 20) // len(line.format(1000000))  # about 3 MiB: one 4 MiB chunk
    with path.open("w") as out:
        out.write("badge_id,customer_id,event_date,owner_type,reference_id\n")
        out.writelines(line.format(1000000 + i) for i in range(rows))

    def ids(**settings: Any) -> list[str | None]:
        stream = _stream(path, template, **bulk_mapping(), **settings)
        try:
            return [
                request.request_id
                for chunk in stream
                for request in template.build_requests(
                    template, chunk.records, chunk.source, 1000, "sha"
                )
            ]
        finally:
            stream.close()

    default = ids()
    assert len(default) == -(-rows // 1000)
    assert default == ids(chunk_bytes=GROUPED_CHUNK_BYTES)
    assert default != ids(chunk_bytes=CHUNK_BYTES)
