"""An SFTP session whose channel buffers its bytes in a bytearray (issue 11).

paramiko's `BufferedPipe` holds what the server sent in an `array.array`, and every read
takes bytes from its front with ``del buffer[:n]``: the array moves everything behind them.
An SFTP download reads a 4-byte length and then each 32 KiB message, so with a window's
worth of bytes waiting (up to 2 MiB) every read moves megabytes. A bytearray takes bytes
from its front in O(1) (CPython moves its start), so the same reads cost what they copy.
The class keeps `BufferedPipe`'s own locking, waiting and closing: it only replaces the two
hooks paramiko keeps for the buffer's representation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from paramiko.buffered_pipe import BufferedPipe

if TYPE_CHECKING:
    import paramiko

    _Pipe = BufferedPipe[bytes]  # generic in the stubs only
else:
    _Pipe = BufferedPipe


class FrontPipe(_Pipe):
    def __init__(self) -> None:
        super().__init__()
        self._buffer: Any = bytearray()

    def _buffer_frombytes(self, data: bytes) -> None:
        self._buffer += data

    def _buffer_tobytes(self, limit: int | None = None) -> bytes:
        return bytes(self._buffer[:limit])


def open_sftp(transport: paramiko.Transport) -> paramiko.SFTPClient:
    """`SFTPClient.from_transport`, with the channel's buffer a `FrontPipe` before any byte
    arrives (a paramiko without the `in_buffer` attribute keeps its own)."""
    import paramiko

    channel = transport.open_session()
    if isinstance(getattr(channel, "in_buffer", None), BufferedPipe):
        channel.in_buffer = FrontPipe()
    channel.invoke_subsystem("sftp")
    return paramiko.SFTPClient(channel)
