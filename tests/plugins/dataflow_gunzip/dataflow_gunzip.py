"""gunzip: a file step that decompresses a gzip file (an example third-party block).

Example::

    - name: gunzip
      type: gunzip
      max_ratio: 200          # refuse a file that expands more than this (a gzip bomb)

It runs after pgp_decrypt (a vendor's ``.csv.gz.gpg``) and before the transform. A file that
is not gzip, is truncated, or expands past ``max_ratio`` is a file-level failure.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Literal

from pydantic import Field

from dataflow.block import BlockConfig, FileStep
from dataflow.errors import FatalError, FileRejected

CHUNK = 1 << 20


class GunzipConfig(BlockConfig):
    type: Literal["gunzip"] = "gunzip"
    max_ratio: int = Field(default=200, ge=1, description="largest allowed expansion factor")


class Gunzip(FileStep):
    Config = GunzipConfig
    config: GunzipConfig

    def apply(self, path: Path, workdir: Path) -> Path:
        out = workdir / "gunzipped"
        limit = max(path.stat().st_size, 1) * self.config.max_ratio
        written = 0
        try:
            with gzip.open(path, "rb") as src, out.open("wb") as dst:
                while block := src.read(CHUNK):
                    written += len(block)
                    if written > limit:
                        raise FileRejected(
                            f"the gzip file expands more than {self.config.max_ratio} times "
                            "its size (max_ratio); refused as a possible gzip bomb"
                        )
                    dst.write(block)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            out.unlink(missing_ok=True)
            raise FileRejected(f"not a valid gzip file ({exc})") from exc
        except FileRejected:
            out.unlink(missing_ok=True)
            raise
        except OSError as exc:
            out.unlink(missing_ok=True)
            raise FatalError(f"cannot write the decompressed file in {workdir}: {exc}") from exc
        path.unlink()
        return out
