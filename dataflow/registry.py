"""Block types by name.

Built-in blocks are listed explicitly below by module path and imported only when a dataflow
uses them (`resolve`), so loading a dataflow file imports only the blocks it names. Third-party
packages add theirs through the ``dataflow.blocks`` entry-point group (name = the block's
``type:``, value = ``module:Class``); both take the same road: `resolve` loads a built-in
module or a plugin's entry point, then checks it is a `Block` whose config's ``type`` matches.
A plugin cannot shadow a built-in; a broken plugin is logged, not fatal.
"""

from __future__ import annotations

import importlib
import logging
from functools import cache
from importlib.metadata import EntryPoint, entry_points

from dataflow.block import Block

log = logging.getLogger(__name__)

BUILTINS: dict[str, str] = {
    "sftp_read": "dataflow_blocks.sftp_read:SftpRead",
    "pgp_decrypt": "dataflow_blocks.pgp_decrypt:PgpDecrypt",
    "field_mapping": "dataflow_blocks.field_mapping:FieldMapping",
    "http_write": "dataflow_blocks.http_write:HttpWrite",
    "schedule": "dataflow_blocks.schedule:Schedule",
}

ENTRY_POINT_GROUP = "dataflow.blocks"


@cache
def _plugins() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTINS:
            log.warning("plugin block %r ignored: a built-in block has that name", ep.name)
            continue
        found[ep.name] = ep
    return found


def names() -> list[str]:
    """Every block type name, built-ins first, without importing any block."""
    return [*BUILTINS, *(n for n in _plugins() if n not in BUILTINS)]


@cache
def resolve(name: str) -> type[Block] | None:
    """The block class for a ``type:`` name, imported now; None if unknown or broken."""
    try:
        if name in BUILTINS:
            module, _, attr = BUILTINS[name].partition(":")
            cls = getattr(importlib.import_module(module), attr)
        elif name in _plugins():
            cls = _plugins()[name].load()
        else:
            return None
    except Exception as exc:  # a broken plugin must not take the engine down
        log.error("block type %r failed to load: %s", name, exc)
        return None
    if not (isinstance(cls, type) and issubclass(cls, Block)):
        log.error("block type %r is not a dataflow.block.Block subclass", name)
        return None
    return cls


def block_types() -> dict[str, type[Block]]:
    """Every loadable block type, imported (for the docs and the JSON Schema)."""
    found = {name: resolve(name) for name in names()}
    return {name: cls for name, cls in found.items() if cls is not None}
