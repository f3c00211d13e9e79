"""The SHA-256 of a local file, read in 1 MiB blocks (a file's identity: its checkpoint key,
the check that a shard decrypted the text its set was planned on, the match of an upload)."""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()
