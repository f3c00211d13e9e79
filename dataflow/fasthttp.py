"""A lean HTTP/1.1 client for http_write's badge API calls (the hot path of a big file).

httpx spends about 1 ms of CPU per request (its models, httpcore's pool, h11, anyio), as much
as mapping several hundred rows; this client writes one request head plus the body on a
kept-alive asyncio connection and reads the answer (Content-Length, chunked or until close)
in about a tenth of that. It answers with an `httpx.Response` and fails with httpx's
exceptions, so the caller's handling of statuses, timeouts and dropped connections is the
same as with httpx:

- connecting: `httpx.ConnectError` (refused, unreachable, a TLS failure), `httpx.ConnectTimeout`;
- writing: `httpx.WriteError`, `httpx.WriteTimeout`;
- reading: `httpx.ReadError`, `httpx.ReadTimeout` (`timeout` for each read: the head, then
  the body or each chunk), `httpx.RemoteProtocolError` (the server closed without an answer,
  or answered something that is not HTTP/1.1).

TLS uses the context httpx would (`httpx.create_ssl_context(verify)`, so ``ca_bundle`` and
``SSL_CERT_FILE`` mean the same), with SNI and ALPN ``http/1.1``. An idle connection is
reused for at most `KEEPALIVE_EXPIRY` seconds (httpcore's default) and never after the
server closed it or asked to (``Connection: close``). The body is asked for uncompressed
(``Accept-Encoding: identity``); a compressed answer is still decoded (by `httpx.Response`).

`usable` says when it applies: an ``http``/``https`` base URL without user info, query or
fragment, a plain endpoint path, and no proxy in the environment (httpx would honour
``HTTPS_PROXY`` and the like: with one set, http_write keeps httpx for everything).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import httpx

KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept (httpcore's default)
MAX_HEAD = 64 * 1024  # bytes of a response's status line and headers
_PATH = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*")
_BAD_VALUE = re.compile(r"[\r\n\0]")
_NO_BODY = frozenset({204, 304})


def usable(base_url: str, endpoint: str) -> bool:
    """True when the lean client sends exactly what httpx would send for this URL."""
    try:
        url = httpx.URL(base_url)
    except httpx.InvalidURL:
        return False
    if url.scheme not in ("http", "https") or url.userinfo or url.query or url.fragment:
        return False
    if not url.host or not _PATH.fullmatch(endpoint):
        return False
    return not any(urllib.request.getproxies().values())


class FastHttp:
    """A pool of at most `max_connections` HTTP/1.1 connections to one origin."""

    def __init__(
        self,
        base_url: str,
        *,
        verify: Any,
        max_connections: int,
        timeout: float,
        headers: Mapping[str, str],
    ) -> None:
        url = httpx.URL(base_url)
        self.host = url.host
        self.https = url.scheme == "https"
        self.port = url.port or (443 if self.https else 80)
        self.origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
        self.prefix = url.raw_path.decode("ascii").rstrip("/")
        self.timeout = timeout
        self._ssl: ssl.SSLContext | None = None
        if self.https:
            self._ssl = httpx.create_ssl_context(verify=verify)
            self._ssl.set_alpn_protocols(["http/1.1"])
        fixed = {"Host": url.netloc.decode("ascii"), **headers}
        fixed["Accept-Encoding"] = "identity"
        self._fixed = _header_block(fixed)
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def request(
        self,
        method: str,
        endpoint: str,
        body: bytes,
        headers: Mapping[str, str],
        before_send: Callable[[], None],
    ) -> httpx.Response:
        """Send one request and read its answer. `before_send` runs once a connection is
        ready, just before the first byte is written; if it raises, nothing is sent and the
        exception propagates."""
        target = self.prefix + endpoint
        head = b"".join(
            (
                f"{method} {target} HTTP/1.1\r\n".encode("ascii"),
                self._fixed,
                _header_block(headers),
                b"Content-Length: %d\r\n\r\n" % len(body),
            )
        )
        async with self._slots:
            connection = await self._connection()
            try:
                before_send()
            except BaseException:
                self._idle.append(connection)  # unused: still good
                raise
            try:
                status, raw_headers, content, reusable = await connection.exchange(
                    head, body, self.timeout
                )
            except BaseException:
                connection.close()
                raise
            if reusable:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            else:
                connection.close()
        return httpx.Response(status, headers=raw_headers, content=content)

    async def _connection(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if connection.alive(now):
                return connection
            connection.close()
        return await self._connect()

    async def _connect(self) -> _Connection:
        where = self.origin
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                    limit=MAX_HEAD,
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connecting to {where} timed out") from exc
        except (OSError, ssl.SSLError) as exc:  # refused, unreachable, TLS refused
            raise httpx.ConnectError(f"cannot connect to {where}: {exc}") from exc
        return _Connection(reader, writer)

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()

    async def __aenter__(self) -> FastHttp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _header_block(headers: Mapping[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        if _BAD_VALUE.search(name) or _BAD_VALUE.search(value) or ":" in name:
            raise httpx.LocalProtocolError(f"the header {name!r} holds a line break or NUL")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    def alive(self, now: float) -> bool:
        """Reusable: not closed by either side, and not idle for too long."""
        if now - self.idle_since > KEEPALIVE_EXPIRY:
            return False
        return not (self.writer.is_closing() or self.reader.at_eof())

    def close(self) -> None:
        self.writer.close()

    async def exchange(
        self, head: bytes, body: bytes, timeout: float
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        """Write the request, read the answer: (status, headers, body, reusable).

        A server may answer (413, say) and close before it read the whole body: as httpcore
        does, a failed write is followed by an attempt to read that answer."""
        failed: OSError | None = None
        try:
            async with asyncio.timeout(timeout):
                self.writer.writelines((head, body))
                await self.writer.drain()
        except TimeoutError as exc:
            raise httpx.WriteTimeout("writing the request timed out") from exc
        except OSError as exc:
            failed = exc
        if failed is not None:
            try:
                status, headers, content, _ = await self._answer(timeout)
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
            ) as exc:
                raise httpx.WriteError(f"writing the request failed: {failed}") from exc
            return status, headers, content, False
        try:
            return await self._answer(timeout)
        except TimeoutError as exc:
            raise httpx.ReadTimeout("reading the answer timed out") from exc
        except asyncio.IncompleteReadError as exc:
            why = "without sending a response" if not exc.partial else "in the middle of it"
            raise httpx.RemoteProtocolError(f"the server disconnected {why}") from exc
        except asyncio.LimitOverrunError as exc:
            raise httpx.RemoteProtocolError("the answer's head is too long") from exc
        except (ValueError, IndexError) as exc:
            raise httpx.RemoteProtocolError(f"the answer is not HTTP/1.1: {exc}") from exc
        except OSError as exc:
            raise httpx.ReadError(f"reading the answer failed: {exc}") from exc

    async def _answer(self, timeout: float) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        while True:
            async with asyncio.timeout(timeout):
                text = await self.reader.readuntil(b"\r\n\r\n")
            version, status, headers = _head(text)
            if not 100 <= status < 200:
                break
            if status == 101:
                raise ValueError("101 Switching Protocols was not asked for")
        fields = {name.lower(): value for name, value in headers}
        close = version == b"HTTP/1.0" or b"close" in fields.get(b"connection", b"").lower()
        if status in _NO_BODY:
            return status, headers, b"", not close
        coding = fields.get(b"transfer-encoding")
        if coding is not None:
            if coding.lower().rsplit(b",", 1)[-1].strip() != b"chunked":
                return status, headers, await self._until_close(timeout), False
            return status, headers, await self._chunked(timeout), not close
        length = fields.get(b"content-length")
        if length is None:
            return status, headers, await self._until_close(timeout), False
        size = _length(headers)
        async with asyncio.timeout(timeout):
            content = await self.reader.readexactly(size)
        return status, headers, content, not close

    async def _chunked(self, timeout: float) -> bytes:
        parts: list[bytes] = []
        while True:
            async with asyncio.timeout(timeout):
                line = await self.reader.readuntil(b"\r\n")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while await self.reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailer fields: not used
                    return b"".join(parts)
                chunk = await self.reader.readexactly(size + 2)
            if chunk[-2:] != b"\r\n":
                raise ValueError("a chunk does not end with CRLF")
            parts.append(chunk[:-2])

    async def _until_close(self, timeout: float) -> bytes:
        parts: list[bytes] = []
        while True:
            async with asyncio.timeout(timeout):
                part = await self.reader.read(1 << 16)
            if not part:
                return b"".join(parts)
            parts.append(part)


def _head(text: bytes) -> tuple[bytes, int, list[tuple[bytes, bytes]]]:
    """(version, status, headers) of a response head; ValueError when it is not HTTP/1.x."""
    lines = text[:-4].split(b"\r\n")
    version, code, *_ = lines[0].split(b" ", 2)
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise ValueError(f"the status line is {lines[0][:40]!r}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise ValueError(f"a header line is {line[:40]!r}")
        headers.append((name, value.strip(b" \t")))
    return version, int(code), headers


def _length(headers: list[tuple[bytes, bytes]]) -> int:
    values = {value.strip() for name, value in headers if name.lower() == b"content-length"}
    if len(values) != 1:
        raise ValueError("the answer has conflicting Content-Length headers")
    (value,) = values
    if not value.isdigit():
        raise ValueError(f"the Content-Length is {value[:20]!r}")
    return int(value)
