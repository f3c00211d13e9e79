"""In-file duplicates for field_mapping: the template's key seen before, in bounded memory.

Each valid row's key (its *converted* values: the same customer and the same instant are
the same key however the file spells them) becomes a 16-byte digest (two independent 64-bit
pandas hashes: a false match among 5 M keys has odds of about 1e-26). Digests live in a few
sorted numpy runs with the first line that had each (20 bytes per distinct key), merged
log-structured style so that each lookup is a `searchsorted` per run and the whole file
costs O(n log n). No Python object per row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

MAX_RUN = 1 << 20  # entries: merges stop there, so a merge's transient memory stays ~40 MiB
_HASH_KEYS = ("dataflow-keys-a1", "dataflow-keys-b2")  # 16 characters each (siphash keys)


def key_fields(template: Any) -> tuple[str, ...]:
    """The template's key (contract §9): earned_badges: badgeMetaId, customerId,
    earnEventDate; the bulk templates: their grouping fields plus customerId."""
    declared = getattr(template, "key", None)
    if declared:
        return tuple(declared)
    if template.group_by:
        return tuple(f for f in template.fields if f in template.group_by or f == "customerId")
    return tuple(f for f in template.fields if f != "earnExpiresOn")


def digests(records: pd.DataFrame, fields: tuple[str, ...]) -> np.ndarray[Any, Any]:
    """One 16-byte digest per row of `records` over `fields`."""
    import numpy as np
    import pandas as pd

    frame = records.loc[:, list(fields)]
    halves = [
        pd.util.hash_pandas_object(frame, index=False, hash_key=k).to_numpy(np.uint64)
        for k in _HASH_KEYS
    ]
    return np.ascontiguousarray(np.stack(halves, axis=1)).view("S16").ravel()


class SeenKeys:
    """Digests seen so far with the first line of each; `check` marks repeats."""

    def __init__(self) -> None:
        self._runs: list[tuple[Any, Any]] = []  # (sorted digests S16, lines uint32)

    @property
    def size(self) -> int:
        return sum(len(d) for d, _ in self._runs)

    def check(self, keys: np.ndarray[Any, Any], lines: np.ndarray[Any, Any]) -> Any:
        """For each key (in file order), the line that had it first, or 0 when it is new;
        the new keys are remembered."""
        import numpy as np

        first = np.zeros(len(keys), dtype=np.int64)
        for digests_run, lines_run in self._runs:
            if not len(digests_run):
                continue
            at = np.searchsorted(digests_run, keys)
            inside = at < len(digests_run)
            hit = np.zeros(len(keys), dtype=bool)
            hit[inside] = digests_run[at[inside]] == keys[inside]
            first[hit & (first == 0)] = lines_run[at[hit & (first == 0)]]
        # repeats inside this batch: the earliest line of each key wins
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        starts = np.ones(len(keys), dtype=bool)
        starts[1:] = ordered[1:] != ordered[:-1]
        group_first = np.maximum.accumulate(np.where(starts, np.arange(len(keys)), 0))
        leader = order[group_first]
        inner = (~starts) & (first[order] == 0)
        first[order[inner]] = lines[leader[inner]]
        leaders = np.zeros(len(keys), dtype=bool)
        leaders[order[starts]] = True
        new = (first == 0) & leaders
        self._add(keys[new], lines[new].astype(np.uint32))
        return first

    def _add(self, keys: Any, lines: Any) -> None:
        import numpy as np

        order = np.argsort(keys, kind="stable")
        self._runs.append((keys[order], lines[order]))
        runs = self._runs
        while (
            len(runs) > 1
            and len(runs[-2][0]) <= 2 * len(runs[-1][0])
            and len(runs[-2][0]) + len(runs[-1][0]) <= MAX_RUN
        ):
            (d1, l1), (d2, l2) = runs.pop(-2), runs.pop()
            runs.append(_merge(d1, l1, d2, l2))


def _merge(d1: Any, l1: Any, d2: Any, l2: Any) -> tuple[Any, Any]:
    """Two sorted runs into one, by placing the second's entries (no sort of the whole)."""
    import numpy as np

    at = np.searchsorted(d1, d2, side="right") + np.arange(len(d2))
    from_first = np.ones(len(d1) + len(d2), dtype=bool)
    from_first[at] = False
    digests_out = np.empty(len(from_first), dtype=d1.dtype)
    lines_out = np.empty(len(from_first), dtype=l1.dtype)
    digests_out[at], lines_out[at] = d2, l2
    digests_out[from_first], lines_out[from_first] = d1, l1
    return digests_out, lines_out
