"""pgp_decrypt: each key unlock is cheap (issue 11).

The passphrase cache is off, so the probe in open() and every file unlock the key again; the
agent re-protects the imported key in the run's throwaway home, by default with a hash count
calibrated to ~100 ms (measured ~1 s under load) paid at every unlock. The block asks for
the minimum count; the key as configured keeps its own protection.
"""

from __future__ import annotations

import re
from pathlib import Path

from dataflow.sandbox import PgpKeys

from .conftest import opened
from .test_pgp_decrypt import PLAIN, encrypted, make_block

_COUNT = re.compile(rb"\(protected openpgp-s2k3-[a-z0-9-]+ \(\(sha1 #[0-9A-F]+#\s+\"(\d+)\"\)")


def agent_counts(home: str) -> list[int]:
    """The hash counts protecting the keys the agent re-protected in `home`."""
    counts = []
    for key in Path(home, "private-keys-v1.d").glob("*.key"):
        counts += [int(n) for n in _COUNT.findall(key.read_bytes())]
    return counts


def test_the_agent_protects_the_key_with_the_minimum_count(
    pgp_keys: PgpKeys, tmp_path: Path
) -> None:
    with opened(make_block(pgp_keys, tmp_path)) as block:
        assert block._home is not None
        assert block.apply(encrypted(pgp_keys, tmp_path), tmp_path).read_bytes() == PLAIN
        counts = agent_counts(block._home)
    assert counts and set(counts) == {65536}, counts
