"""A lean HTTP/1.1 client for http_write's badge API calls (the hot path of a big file).

httpx spends about 1 ms of CPU per request (its models, httpcore's pool, anyio), as much as
mapping several hundred rows. This client keeps only what the badge calls need: a pool of
kept-alive asyncio connections to one origin, each driven by h11 (httpx's own HTTP/1.1 state
machine, which does the framing: the request head, the status line and headers,
Content-Length, chunked or until-close bodies, keep-alive, and its protocol checks). It
answers with an `Answer` (what http_write reads of an `httpx.Response`, the rest made on
demand) and fails with httpx's exceptions, so the caller's handling
of statuses, timeouts and dropped connections is the same as with httpx:

- connecting: `httpx.ConnectError` (refused, unreachable, a TLS failure), `httpx.ConnectTimeout`;
- writing: `httpx.WriteError`, `httpx.WriteTimeout`;
- reading: `httpx.ReadError`, `httpx.ReadTimeout` (`timeout` for each read),
  `httpx.RemoteProtocolError` (the server closed without a complete answer, or answered
  something h11 refuses as HTTP/1.1);
- a header that cannot be sent (a line break in a value): `httpx.LocalProtocolError`, naming
  the header but not its value (h11's own message quotes it).

TLS uses the context httpx would (`httpx.create_ssl_context(verify)`, so ``ca_bundle`` and
``SSL_CERT_FILE`` mean the same), with SNI and ALPN ``http/1.1``. An idle connection is
reused for at most `KEEPALIVE_EXPIRY` seconds (httpcore's default) and never after the
server closed it or asked to (``Connection: close``, HTTP/1.0), nor once the server sent
anything after the answer (bytes left after it, or readable while idle: an unsolicited 408
before a close, say, that would be read as the next request's answer). The body is asked for
uncompressed (``Accept-Encoding: identity``); a compressed answer is still decoded (by
`httpx.Response`).

`usable` says when it applies: an ``http``/``https`` base URL without user info, query or
fragment, a plain endpoint path, and no proxy in the environment (httpx would honour
``HTTPS_PROXY`` and the like: with one set, http_write keeps httpx for everything).
"""

from __future__ import annotations

import asyncio
import re
import select
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import h11
import httpx

KEEPALIVE_EXPIRY = 5.0  # seconds an idle connection is kept (httpcore's default)
MAX_HEAD = 64 * 1024  # bytes of a response's status line and headers (h11's default)
READ_SIZE = 64 * 1024  # bytes asked for per read
_PATH = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*")

Headers = Sequence[tuple[bytes, bytes]]


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
        self._fixed = _encoded(fixed)
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def request(
        self,
        method: str,
        endpoint: str,
        body: bytes,
        headers: Mapping[str, str],
        before_send: Callable[[], None],
    ) -> Answer:
        """Send one request and read its answer. `before_send` runs once a connection is
        ready, just before the request is written; if it raises, nothing is sent and the
        exception propagates."""
        fields = [*self._fixed, *_encoded(headers), (b"Content-Length", b"%d" % len(body))]
        try:  # h11 checks the method, target and headers here, before any connection
            head = h11.Request(method=method, target=self.prefix + endpoint, headers=fields)
        except h11.LocalProtocolError:
            # h11's message quotes the offending value (a token, perhaps): name the field only
            where = _refused(method, self.prefix + endpoint, fields)
            raise httpx.LocalProtocolError(
                f"cannot send {method} {endpoint}: {where} is not valid HTTP/1.1"
            ) from None
        async with self._slots:
            connection = await self._connection()
            try:
                before_send()
            except BaseException:
                self._idle.append(connection)  # unused: still good
                raise
            try:
                response, content, reusable = await connection.exchange(head, body, self.timeout)
            except BaseException:
                connection.close()
                raise
            if reusable:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            else:
                connection.close()
        return Answer(response.status_code, response.headers, content)

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


class Answer:
    """An answer as http_write reads it: its status and (identity-encoded) body as they came;
    its headers, text, JSON and a compressed body's decoding from an `httpx.Response` made
    on first use (most answers need none of them: about 40 µs each saved, issue 11)."""

    __slots__ = ("_body", "_encoded", "_headers", "_response", "status_code")

    def __init__(self, status_code: int, headers: Any, body: bytes) -> None:
        self.status_code = status_code
        self._headers = headers  # h11's: iterated as (lower-case name, value)
        self._body = body
        self._encoded = any(name == b"content-encoding" for name, _ in headers)
        self._response: httpx.Response | None = None

    @property
    def response(self) -> httpx.Response:
        if self._response is None:
            raw = self._headers.raw_items()
            self._response = httpx.Response(self.status_code, headers=raw, content=self._body)
        return self._response

    @property
    def content(self) -> bytes:
        return self.response.content if self._encoded else self._body

    @property
    def headers(self) -> httpx.Headers:
        return self.response.headers

    @property
    def text(self) -> str:
        return self.response.text

    @property
    def reason_phrase(self) -> str:
        return self.response.reason_phrase

    def json(self) -> Any:
        return self.response.json()


def _encoded(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """Header names and values as bytes (h11 validates them when the request is made)."""
    fields = []
    for name, value in headers.items():
        try:
            fields.append((name.encode("ascii"), value.encode("latin-1")))
        except UnicodeEncodeError:
            raise httpx.LocalProtocolError(
                f"the header {name!r} cannot be sent as HTTP/1.1 (not ASCII/Latin-1)"
            ) from None
    return fields


def _refused(method: str, target: str, fields: list[tuple[bytes, bytes]]) -> str:
    """Which part of a request h11 refuses, named without its value."""
    for name, value in fields:
        probe = [(name, value)] if name.lower() == b"host" else [(b"Host", b"h"), (name, value)]
        try:
            h11.Request(method=method, target=target, headers=probe)
        except h11.LocalProtocolError:
            return f"the header {name.decode('ascii', 'replace')!r}"
    return "the method or the target"


class _Connection:
    """One TCP (or TLS) connection and its h11 state machine."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.idle_since = time.monotonic()

    def alive(self, now: float) -> bool:
        """Reusable: not closed by either side, not idle for too long, and nothing sent on it
        since its last answer (as httpcore does: a server's unsolicited 408 before it closes,
        or its close, would otherwise be read as the next request's answer)."""
        if now - self.idle_since > KEEPALIVE_EXPIRY:
            return False
        if self.writer.is_closing() or self.reader.at_eof():
            return False
        # StreamReader has no public way to tell buffered bytes: read its buffer directly
        if getattr(self.reader, "_buffer", b""):
            return False
        return not _readable(self.writer.get_extra_info("socket"))

    def close(self) -> None:
        self.writer.close()

    async def exchange(
        self, head: h11.Request, body: bytes, timeout: float
    ) -> tuple[h11.Response, bytes, bool]:
        """Write the request, read the answer: (response, body, reusable).

        A server may answer (413, say) and close before it read the whole body: as httpcore
        does, a failed write is followed by an attempt to read that answer."""
        failed: OSError | None = None
        try:
            async with asyncio.timeout(timeout):
                self.writer.writelines(self._serialised(head, body))
                await self.writer.drain()
        except TimeoutError as exc:
            raise httpx.WriteTimeout("writing the request timed out") from exc
        except OSError as exc:
            failed = exc
        if failed is not None:
            try:
                response, content, _ = await self._answer(timeout)
            except (OSError, h11.ProtocolError) as exc:
                raise httpx.WriteError(f"writing the request failed: {failed}") from exc
            return response, content, False
        try:
            return await self._answer(timeout)
        except TimeoutError as exc:
            raise httpx.ReadTimeout("reading the answer timed out") from exc
        except h11.RemoteProtocolError as exc:
            raise httpx.RemoteProtocolError(f"the answer is not valid HTTP/1.1: {exc}") from exc
        except OSError as exc:
            raise httpx.ReadError(f"reading the answer failed: {exc}") from exc

    def _serialised(self, head: h11.Request, body: bytes) -> list[bytes]:
        parts = [self.h11.send(head) or b""]
        parts += self.h11.send_with_data_passthrough(h11.Data(data=body)) or []
        parts.append(self.h11.send(h11.EndOfMessage()) or b"")
        return parts

    async def _answer(self, timeout: float) -> tuple[h11.Response, bytes, bool]:
        response: h11.Response | None = None
        parts: list[bytes] = []
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                async with asyncio.timeout(timeout):
                    self.h11.receive_data(await self.reader.read(READ_SIZE))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                parts.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    raise h11.RemoteProtocolError("101 Switching Protocols was not asked for")
            elif isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("the server disconnected without an answer")
        assert response is not None  # h11 sends EndOfMessage only after the Response
        # bytes after the answer (an unsolicited answer, say) belong to no request of ours
        trailing, closed = self.h11.trailing_data
        reusable = self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE
        reusable = reusable and not trailing and not closed
        if reusable:
            self.h11.start_next_cycle()
        return response, b"".join(parts), reusable


def _readable(sock: Any) -> bool:
    """True when the socket has something to read (or an end or error to report) right now."""
    if sock is None:
        return False
    try:
        if hasattr(select, "poll"):  # no limit on the descriptor's number, unlike select()
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):  # the descriptor is closed: not reusable either
        return True
