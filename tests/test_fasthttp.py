"""The lean HTTP/1.1 client of http_write (dataflow.fasthttp), against real TCP and TLS
servers scripted per connection: what it writes, how it frames answers, when it reuses a
connection, and that every failure is the httpx exception the sink already handles."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from dataflow.block import RunContext
from dataflow.errors import FatalError
from dataflow.fasthttp import FastHttp, usable
from dataflow.sandbox import Emulator
from dataflow.templates import EARNED_BADGES
from dataflow_blocks.http_write import HttpWrite, HttpWriteConfig

from .alertkit import make_certificates
from .test_http_write import make, requests, send

Reply = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]


@dataclass
class Server:
    """Answers each request with the next reply; a reply returns False to close."""

    replies: list[Reply]
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.replies:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self.replies.pop(0)(reader, writer, request):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def answer(raw: bytes, keep: bool = True) -> Reply:
    async def reply(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _q: bytes) -> bool:
        writer.write(raw)
        await writer.drain()
        return keep

    return reply


def ok(body: bytes = b'{"ok":1}', extra: bytes = b"") -> Reply:
    return answer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body))


async def hang(_r: asyncio.StreamReader, _w: asyncio.StreamWriter, _q: bytes) -> bool:
    await asyncio.sleep(5)
    return False


async def vanish(_r: asyncio.StreamReader, _w: asyncio.StreamWriter, _q: bytes) -> bool:
    return False  # closes without answering


def run(
    replies: list[Reply],
    client: Callable[[FastHttp], Awaitable[Any]],
    tls: ssl.SSLContext | None = None,
    **options: Any,
) -> tuple[Any, Server]:
    server = Server(replies)

    async def main() -> Any:
        listening = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
        port = listening.sockets[0].getsockname()[1]
        scheme = "https" if tls is not None else "http"
        settings: dict[str, Any] = {"verify": True, "max_connections": 2, "timeout": 2.0}
        settings["headers"] = {"Content-Type": "application/json", "X-Org": "acme"}
        settings.update(options)
        async with listening, FastHttp(f"{scheme}://127.0.0.1:{port}/api", **settings) as lean:
            return await client(lean)

    return asyncio.run(main()), server


def put(body: bytes = b"[1]", **headers: str) -> Callable[[FastHttp], Awaitable[httpx.Response]]:
    async def call(lean: FastHttp) -> httpx.Response:
        return await lean.request("PUT", "/v1/import", body, headers, lambda: None)

    return call


def twice(lean: FastHttp) -> Awaitable[list[httpx.Response]]:
    async def both() -> list[httpx.Response]:
        return [await put()(lean), await put()(lean)]

    return both()


def test_it_writes_the_request_httpx_would_and_keeps_the_connection() -> None:
    (first, second), server = run([ok(), ok(b"[2]")], twice)
    assert (first.status_code, first.json(), second.content) == (200, {"ok": 1}, b"[2]")
    assert server.connections == 1  # kept alive
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"PUT /api/v1/import HTTP/1.1"  # the base URL's path, then the endpoint
    fields = dict(line.split(b": ", 1) for line in lines[1:])
    assert fields[b"Host"].startswith(b"127.0.0.1:") and fields[b"X-Org"] == b"acme"
    assert fields[b"Content-Length"] == b"3" and body == b"[1]"
    assert fields[b"Accept-Encoding"] == b"identity"


@pytest.mark.parametrize(
    ("raw", "content"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;x=1\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n",
            b"[1,2]",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nT: v\r\n\r\n",
            b"{}",
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]", b"[]"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b""),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n[]", b"[]"),
    ],
)
def test_answers_are_framed_and_the_connection_kept(raw: bytes, content: bytes) -> None:
    (first, second), server = run([answer(raw), ok()], twice)
    assert first.content == content and second.json() == {"ok": 1}
    assert server.connections == 1


def test_a_compressed_answer_is_decoded() -> None:
    packed = gzip.compress(b'{"a":1}')
    response, _ = run([ok(packed, b"Content-Encoding: gzip\r\n")], put())
    assert response.json() == {"a": 1}
    assert response.content == b'{"a":1}'  # what http_write reads: decoded too
    assert response.headers["content-encoding"] == "gzip"


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n[]",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n[]",
        b"HTTP/1.1 200 OK\r\n\r\n[]",  # delimited by the close
    ],
)
def test_a_connection_the_server_ends_is_not_reused(raw: bytes) -> None:
    (first, second), server = run([answer(raw, keep=False), ok()], twice)
    assert first.content == b"[]" and second.status_code == 200
    assert server.connections == 2


def test_an_idle_connection_closed_by_the_server_is_not_reused() -> None:
    async def client(lean: FastHttp) -> list[int]:
        first = await put()(lean)
        await asyncio.sleep(0.2)  # the server closed it meanwhile
        return [first.status_code, (await put()(lean)).status_code]

    statuses, server = run(
        [answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", False), ok()], client
    )
    assert statuses == [200, 200] and server.connections == 2


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (vanish, httpx.RemoteProtocolError),
        (hang, httpx.ReadTimeout),
        (
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n[]", False),
            httpx.RemoteProtocolError,
        ),
        (answer(b"SSH-2.0-OpenSSH\r\n\r\n", False), httpx.RemoteProtocolError),
        (answer(b"HTTP/1.1 200 OK\r\n folded\r\n\r\n", False), httpx.RemoteProtocolError),
        (
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n[]"),
            httpx.RemoteProtocolError,
        ),
        (
            answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", False),
            httpx.RemoteProtocolError,
        ),
        (answer(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000, False), httpx.RemoteProtocolError),
        (answer(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", False), httpx.RemoteProtocolError),
    ],
)
def test_failures_are_the_httpx_exceptions(reply: Reply, error: type[Exception]) -> None:
    with pytest.raises(error):
        run([reply], put(), timeout=0.3)


def test_a_refused_connection_is_a_connect_error() -> None:
    async def main() -> None:
        listening = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = listening.sockets[0].getsockname()[1]
        listening.close()
        await listening.wait_closed()
        lean = FastHttp(
            f"http://127.0.0.1:{port}", verify=True, max_connections=1, timeout=1, headers={}
        )
        await put()(lean)

    with pytest.raises(httpx.ConnectError):
        asyncio.run(main())


def test_before_send_can_keep_the_request_back() -> None:
    class Stop(Exception):
        pass

    def refuse() -> None:
        raise Stop

    async def client(lean: FastHttp) -> int:
        await put()(lean)  # opens the connection
        with pytest.raises(Stop):
            await lean.request("PUT", "/v1/import", b"[9]", {}, refuse)
        return (await put()(lean)).status_code

    status, server = run([ok(), ok()], client)
    assert status == 200 and server.connections == 1  # the connection stayed good
    assert all(not q.endswith(b"[9]") for q in server.requests)  # never written


@pytest.mark.parametrize("value", ["s3cret\r\nX-Evil: 1", "s3cret\0", "s3cret\u20ac"])
def test_header_values_cannot_inject_lines_and_are_not_shown(value: str) -> None:
    with pytest.raises(httpx.LocalProtocolError) as caught:
        run([ok()], put(b"[]", **{"X-Token": value}))
    assert "'X-Token'" in str(caught.value) and "s3cret" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def tls_server(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    ca, cert, key = make_certificates(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, ca


def http_write(tmp_path: Path, ca_bundle: str) -> HttpWrite:
    config = HttpWriteConfig.model_validate(
        {
            "name": "dest",
            "base_url": "https://127.0.0.1:9",
            "auth": {"type": "basic", "username": "u", "password": "p"},
            "ca_bundle": ca_bundle,
        }
    )
    return HttpWrite(config, RunContext("t", EARNED_BADGES, tmp_path, tmp_path))


def test_tls_with_http_writes_ca_bundle_and_no_deprecated_verify(tmp_path: Path) -> None:
    context, ca = tls_server(tmp_path)
    block = http_write(tmp_path, ca.name)  # relative to the dataflow file's folder
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # httpx 0.28 deprecates verify=<str>
        verify = block._verify()
        asyncio.run(block._client().aclose())  # httpx is given the same kind of context
        (first, second), server = run([ok(), ok()], twice, tls=context, verify=verify)
    assert first.status_code == second.status_code == 200 and server.connections == 1


def test_an_unreadable_ca_bundle_is_a_fatal_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate")
    for name in ("missing.pem", "junk.pem"):
        with pytest.raises(FatalError, match=f"ca_bundle {tmp_path / name} cannot be read"):
            http_write(tmp_path, name)._verify()


def test_tls_refuses_a_server_it_does_not_trust(tmp_path: Path) -> None:
    context, _ = tls_server(tmp_path)
    with pytest.raises(httpx.ConnectError):
        run([ok()], put(), tls=context)


def test_it_applies_only_where_it_sends_what_httpx_would(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert usable("https://eu.api.capillarytech.com", "/api_gateway/v1/badges/import/x")
    assert usable("http://127.0.0.1:8080/base", "/v1")
    assert not usable("https://user:pw@api.example", "/v1")
    assert not usable("https://api.example?x=1", "/v1")
    assert not usable("ftp://api.example", "/v1")
    assert not usable("https://api.example", "/v1 with space")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert not usable("https://eu.api.capillarytech.com", "/v1")  # httpx honours the proxy


# --- in http_write ----------------------------------------------------------------------------


@pytest.mark.parametrize("proxied", [False, True])
def test_http_write_sends_the_badge_calls_through_it_unless_a_proxy_is_set(
    api: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxied: bool
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    if proxied:  # httpx would send through it; only the https one: the emulator is http
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    calls: list[str] = []
    original = FastHttp.request

    async def counted(self: FastHttp, method: str, *args: Any) -> httpx.Response:
        calls.append(method)
        return await original(self, method, *args)

    monkeypatch.setattr(FastHttp, "request", counted)
    results = send(make(api, tmp_path), requests(6))
    assert [r.ok for r in results] == [True] * 6
    assert calls == ([] if proxied else ["PUT"] * 3)
    assert len(api.requests()) == 3


# --- an answer nobody asked for ---------------------------------------------------------------

TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n"


async def echo(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bool:
    """200 with the request's own body: which request an answer belongs to."""
    body = request.partition(b"\r\n\r\n")[2]
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    return True


def then_unsolicited(keep: bool, same_segment: bool) -> Reply:
    """Answers, then (while the connection is idle, or in the same segment) a 408 too."""

    async def reply(_r: asyncio.StreamReader, writer: asyncio.StreamWriter, _q: bytes) -> bool:
        first = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n[1]"
        if same_segment:
            writer.write(first + TIMEOUT_408)
        else:
            writer.write(first)
            await writer.drain()
            await asyncio.sleep(0.05)  # the client is idle now
            writer.write(TIMEOUT_408)
        await writer.drain()
        return keep

    return reply


@pytest.mark.parametrize(
    ("same_segment", "keep"),
    [(False, True), (False, False), (True, True)],
    ids=["while-idle", "while-idle-then-closed", "same-segment"],
)
def test_an_unsolicited_answer_is_not_taken_for_the_next_requests(
    same_segment: bool, keep: bool
) -> None:
    async def client(lean: FastHttp) -> list[httpx.Response]:
        first = await put(b"[1]")(lean)
        await asyncio.sleep(0.2)  # the 408 arrives meanwhile
        return [first, await put(b"[2]")(lean)]

    (first, second), server = run([then_unsolicited(keep, same_segment), echo], client)
    assert (first.status_code, first.content) == (200, b"[1]")
    assert (second.status_code, second.content) == (200, b"[2]")  # its own answer
    assert server.connections == 2  # on a new connection
