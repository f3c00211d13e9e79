"""Block types by name.

Built-in blocks are registered explicitly below; third-party packages add theirs through the
``dataflow.blocks`` entry-point group (name = the block's ``type:``, value = its class).
"""

from __future__ import annotations

import logging
from functools import cache
from importlib.metadata import entry_points

from dataflow.block import Block
from dataflow_blocks.field_mapping import FieldMapping
from dataflow_blocks.http_write import HttpWrite
from dataflow_blocks.pgp_decrypt import PgpDecrypt
from dataflow_blocks.sftp_read import SftpRead

log = logging.getLogger(__name__)

BUILTINS: dict[str, type[Block]] = {
    "sftp_read": SftpRead,
    "pgp_decrypt": PgpDecrypt,
    "field_mapping": FieldMapping,
    "http_write": HttpWrite,
}

ENTRY_POINT_GROUP = "dataflow.blocks"


@cache
def block_types() -> dict[str, type[Block]]:
    """Every known block type: built-ins first; a plugin cannot shadow a built-in."""
    types = dict(BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in types:
            log.warning("plugin block %r ignored: a built-in block has that name", ep.name)
            continue
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not take the engine down
            log.error("plugin block %r failed to load: %s", ep.name, exc)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Block)):
            log.error("plugin block %r is not a dataflow.block.Block subclass", ep.name)
            continue
        types[ep.name] = cls
    return types
