"""Microbenchmark: the client's CPU per badge call (dataflow.fasthttp vs httpx) against the
benchmark emulator (``python -m dataflow.emulator --fast``) over TCP.

Each client sends the same pre-built bodies (bench/run.py's: 1000 records, about 100 KB) at
the same concurrency and reads each answer (``--parse``: and orjson-parses it, as bench/run.py
does); the figure is this process's CPU time (user + system, `os.times`) per request, so the
emulator's own CPU (another process) is left out. Best of ``--repeat`` rounds (the machine
is shared).

    .venv/bin/python bench/client_cpu.py                      # 2000 requests, concurrency 8
    .venv/bin/python bench/client_cpu.py --module /tmp/old_fasthttp.py   # another FastHttp
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import orjson

from dataflow import fasthttp
from dataflow.sandbox import Emulator

sys.path.insert(0, str(Path(__file__).parent))
from run import IMPORT_PATH, _body

Send = Callable[[bytes], Awaitable[bytes]]
Figures = tuple[float, float, float]  # user CPU, system CPU, wall seconds


def load(path: str | None) -> ModuleType:
    if path is None:
        return fasthttp
    spec = importlib.util.spec_from_file_location("fasthttp_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def measure(
    send: Send, bodies: list[bytes], count: int, workers: int, parse: bool
) -> Figures:
    """(user CPU, system CPU, wall) seconds for `count` requests from `workers` tasks."""
    queue = list(range(count))

    async def work() -> None:
        while queue:
            n = queue.pop()
            answer = await send(bodies[n % len(bodies)])
            if parse:
                orjson.loads(answer)

    await asyncio.gather(*(work() for _ in range(workers)))  # warm up: connections open
    queue = list(range(count))
    before, wall = os.times(), time.monotonic()
    await asyncio.gather(*(work() for _ in range(workers)))
    after = os.times()
    return after.user - before.user, after.system - before.system, time.monotonic() - wall


async def with_fasthttp(
    module: ModuleType, url: str, headers: dict[str, str], **run: Any
) -> Figures:
    async with module.FastHttp(
        url, verify=True, max_connections=run["workers"], timeout=60, headers=headers
    ) as lean:

        async def send(body: bytes) -> bytes:
            response = await lean.request("PUT", IMPORT_PATH, body, {}, lambda: None)
            assert response.status_code == 200, response.status_code
            return bytes(response.content)

        return await measure(send, **run)


async def with_httpx(url: str, headers: dict[str, str], **run: Any) -> Figures:
    limits = httpx.Limits(max_connections=run["workers"], max_keepalive_connections=run["workers"])
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60, headers=headers) as c:

        async def send(body: bytes) -> bytes:
            response = await c.put(IMPORT_PATH, content=body)
            response.raise_for_status()
            return response.content

        return await measure(send, **run)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parse", action="store_true", help="orjson-parse each answer too")
    parser.add_argument("--module", help="a file defining FastHttp (default: dataflow.fasthttp)")
    args = parser.parse_args()
    module = load(args.module)
    secret = secrets.token_urlsafe(16)
    api = Emulator(clients={"bench": secret}, badge_metas=["BADGE-GOLD", "BADGE-SILVER"])
    api.args.append("--fast")
    api.start()
    try:
        api.configure(store=False)
        token = httpx.post(
            api.url + "/v3/oauth/token/generate", json={"key": "bench", "secret": secret}
        ).json()["data"]["accessToken"]
        headers = {"x-cap-api-oauth-token": token, "Content-Type": "application/json"}
        bodies = [_body(k * 1000, 1000) for k in range(16)]
        run = {"bodies": bodies, "count": args.requests, "workers": args.concurrency}
        run["parse"] = args.parse
        print(f"body {len(bodies[0])} bytes, {args.requests} requests, {args.concurrency} tasks")
        clients: dict[str, Callable[[], Coroutine[Any, Any, Figures]]] = {
            f"fasthttp ({module.__file__})": lambda: with_fasthttp(module, api.url, headers, **run),
            "httpx": lambda: with_httpx(api.url, headers, **run),
        }
        for name, client in clients.items():
            rounds = [asyncio.run(client()) for _ in range(args.repeat)]
            user, system, wall = min(rounds, key=lambda r: r[0] + r[1])
            per = 1e6 / args.requests
            print(
                f"{name}: {(user + system) * per:.0f} µs CPU/request (user {user * per:.0f}, "
                f"system {system * per:.0f}), wall {wall * per:.0f} µs/request"
            )
        answer = httpx.put(api.url + IMPORT_PATH, content=bodies[0], headers=headers).content
        started = time.process_time()
        for _ in range(args.requests):
            orjson.loads(answer)
        parse = (time.process_time() - started) * 1e6 / args.requests
        print(f"of which orjson.loads of the {len(answer)}-byte answer: {parse:.0f} µs/request")
    finally:
        api.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
