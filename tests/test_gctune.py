"""dataflow.gctune: fewer garbage collections while a file's rows are sent (issue 11)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from dataflow import gctune
from dataflow.block import RowStream, Sink
from dataflow.checkpoint import Progress
from dataflow.errorfile import ErrorFile
from dataflow.errors import FatalError
from dataflow.pipeline import Chain, _send_rows
from dataflow.report import FileReport
from dataflow.rows import Chunk
from dataflow.templates import EARNED_BADGES


def test_freezes_and_raises_the_young_threshold_then_restores() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with gctune.fewer_collections():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (gctune.YOUNG_THRESHOLD, *before[1:])
        with gctune.fewer_collections():  # re-entrant: the inner exit changes nothing
            pass
        assert gc.get_threshold()[0] == gctune.YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_restored_when_the_send_fails() -> None:
    before = gc.get_threshold()
    with contextlib.suppress(RuntimeError), gctune.fewer_collections():
        raise RuntimeError("the send failed")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_cyclic_garbage_is_still_collected() -> None:
    class Node:
        other: Any = None

    with gctune.fewer_collections():
        for _ in range(3 * gctune.YOUNG_THRESHOLD):
            a, b = Node(), Node()
            a.other, b.other = b, a  # a cycle, garbage at the next turn
        assert sum(isinstance(o, Node) for o in gc.get_objects()) < 2 * gctune.YOUNG_THRESHOLD


class _Empty(RowStream):
    columns: list[str] = []

    def __iter__(self) -> Iterator[Chunk]:
        return iter(())


class _Recording(Sink):
    """A sink that only records the collector's state while it is asked to send."""

    seen: list[tuple[int, int]] = []

    def build_requests(self, records: Any, source: Any, file_id: str) -> Iterator[Any]:
        return iter(())

    async def send(self, requests: AsyncIterator[Any], on_result: Any) -> None:
        async for _ in requests:
            pass
        self.seen.append((gc.get_threshold()[0], gc.get_freeze_count()))


def test_the_pipeline_sends_with_fewer_collections(tmp_path: Path) -> None:
    sink = _Recording(SimpleNamespace(name="dest"), None)  # type: ignore[arg-type]
    chain = Chain("t", EARNED_BADGES, None, [], None, sink)  # type: ignore[arg-type]
    errors = ErrorFile(tmp_path / "errors.csv", [], ",")
    ledger = SimpleNamespace(checkpoints=lambda name: None)
    report = FileReport(name="f.csv", lineage_id="L")
    with contextlib.suppress(FatalError):  # no row, no verdict: not what is tested here
        asyncio.run(_send_rows(chain, _Empty(), errors, report, Progress("L", key="k"), ledger))  # type: ignore[arg-type]
    errors.close()
    assert sink.seen and sink.seen[0][0] == gctune.YOUNG_THRESHOLD and sink.seen[0][1] > 0
    assert gc.get_freeze_count() == 0


def test_overlapping_sends_refreeze_so_garbage_kept_by_the_freeze_is_collected(
    monkeypatch: Any,
) -> None:
    """A worker's sends may overlap without end: an entry while frozen for long unfreezes,
    collects and freezes again, so a cycle that was alive at the first freeze is freed."""

    class Node:
        other: Any = None

    with gctune.fewer_collections():  # the first send: frozen from here
        a, b = Node(), Node()
        a.other, b.other = b, a
        alive = weakref.ref(a)
        gc.freeze()  # the cycle among the frozen objects (as if alive at the first freeze)
        del a, b
        gc.collect()
        assert alive() is not None  # garbage now, but kept by the freeze
        with gctune.fewer_collections():  # a second dataflow's send, soon after: no refreeze
            assert alive() is not None
        monkeypatch.setattr(gctune, "REFREEZE_SECONDS", 0.0)
        with gctune.fewer_collections():  # another send starts long after the freeze
            assert alive() is None
    assert gc.get_freeze_count() == 0
