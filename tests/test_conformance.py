"""Every block type, built-in or plugin, passes the one conformance suite."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any, Literal

import pytest

from dataflow.registry import BUILTINS, block_types, resolve
from dataflow.sandbox import PgpKeys, free_port
from dataflow.testing import check_block

# settings that make open() fail fast instead of waiting on a DNS lookup or a real server
UNREACHABLE: dict[str, dict[str, Any]] = {
    "sftp_read": {"hostname": "127.0.0.1", "port": free_port(), "timeout_seconds": 2},
    "http_write": {"base_url": f"http://127.0.0.1:{free_port()}"},
}


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_block_conforms(name: str, tmp_path: Path, pgp_keys: PgpKeys) -> None:
    cls = resolve(name)
    assert cls is not None
    key = {"file:secrets/acme-private.asc": pgp_keys.private_key.read_text()}
    check_block(cls, tmp_path, unreachable=UNREACHABLE.get(name), values=key)


def test_the_suite_catches_a_block_whose_library_exception_escapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataflow.block import BlockConfig, FileStep

    module = types.ModuleType(
        "leaky_plugin",
        "leaky: a broken block.\n\nExample::\n\n    - name: leaky\n      type: leaky\n",
    )
    monkeypatch.setitem(sys.modules, "leaky_plugin", module)

    class LeakyConfig(BlockConfig):
        type: Literal["leaky"] = "leaky"

    class Leaky(FileStep):
        Config = LeakyConfig

        def open(self) -> None:
            raise KeyError("a library's own exception")

        def apply(self, path: Path, workdir: Path) -> Path:
            return path

    Leaky.__module__ = "leaky_plugin"
    with pytest.raises(AssertionError, match=r"open\(\) let a builtins\.KeyError escape"):
        check_block(Leaky, tmp_path)
    Leaky.__module__ = __name__  # this module's docstring has no example
    with pytest.raises(AssertionError, match="no 'Example::' block"):
        check_block(Leaky, tmp_path)


def test_every_registered_type_resolves() -> None:
    assert set(BUILTINS) <= set(block_types())
