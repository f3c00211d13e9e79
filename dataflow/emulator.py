"""A Capillary badge API emulator: a real HTTP server for the demo, the tests and compose.

Implements ``POST /v3/oauth/token/generate``, Basic auth (``base64(user:md5hex(password))``)
and ``PUT /api_gateway/v1/badges/import/customerBadges`` with Capillary's envelopes: an array
aligned with the request, each element ``{data, errors, warnings}``. Types are strict (a
customerId sent as a string is an error), badge metas must be known, and every accepted
record is remembered so that tests can assert exactly what arrived.

Record error codes: 1054 unknown or inactive badgeMetaId, 816 event date outside the badge's
window, 1001 a field missing or of the wrong type, 1002 earnExpiresOn not after earnEventDate.

Fault injection (``POST /__emulator/config``): ``fail_next`` (status codes returned to the
next requests, in order), ``error_rate`` (share of requests answered 503), ``throttle_next``
and ``throttle_rate`` (429 with ``Retry-After: retry_after``), ``latency_ms``, ``token_ttl``.
Inspection: ``GET /__emulator/received`` (accepted records), ``GET /__emulator/requests``
(every request: time, method, path, status, record count), ``POST /__emulator/reset``.

Run: ``python -m dataflow.emulator --port 8080 --client KEY:SECRET --basic USER:PASSWORD``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

IMPORT_PATH = "/api_gateway/v1/badges/import/customerBadges"
TOKEN_PATH = "/v3/oauth/token/generate"


@dataclass
class BadgeMeta:
    id: str
    active: bool = True
    window_start: int | None = None  # epoch seconds
    window_end: int | None = None


@dataclass
class State:
    clients: dict[str, str] = field(default_factory=dict)  # key -> secret
    basic: dict[str, str] = field(default_factory=dict)  # username -> password
    metas: dict[str, BadgeMeta] = field(default_factory=dict)
    token_ttl: int = 3600
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry
    token_requests: int = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    store: bool = True  # False: count accepted records only (benchmarks)
    accepted: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)
    throttle_next: int = 0
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after: float = 1.0
    latency_ms: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    next_id: int = 1

    def configure(self, data: dict[str, Any]) -> None:
        for key in (
            "token_ttl",
            "error_rate",
            "throttle_rate",
            "retry_after",
            "latency_ms",
            "throttle_next",
            "store",
        ):
            if key in data:
                setattr(self, key, data[key])
        if "fail_next" in data:
            self.fail_next = [int(c) for c in data["fail_next"]]
        if "seed" in data:
            self.rng = random.Random(data["seed"])
        self.clients.update(data.get("clients", {}))
        self.basic.update(data.get("basic", {}))
        for meta in data.get("badge_metas", []):
            meta = {"id": meta} if isinstance(meta, str) else meta
            self.metas[str(meta["id"])] = BadgeMeta(**meta)
        if data.get("expire_tokens"):
            self.tokens.clear()


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(payload), status_code=status, headers=headers, media_type="application/json"
    )


def _error(status: int, code: int, message: str) -> Response:
    return _json(
        {"data": None, "errors": [{"code": code, "message": message}], "warnings": []}, status
    )


def create_app(state: State | None = None) -> Starlette:
    state = state or State()

    def authorised(request: Request) -> bool:
        token = request.headers.get("x-cap-api-oauth-token")
        if token is not None:
            expiry = state.tokens.get(token)
            return expiry is not None and expiry > time.time()
        header = request.headers.get("authorization", "")
        if header.startswith("Basic "):
            try:
                user, _, digest = base64.b64decode(header[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            password = state.basic.get(user)
            return password is not None and hashlib.md5(password.encode()).hexdigest() == digest
        return False

    async def token(request: Request) -> Response:
        state.token_requests += 1
        try:
            body = orjson.loads(await request.body())
            key, secret = body["key"], body["secret"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return _error(400, 400, "key and secret are required")
        if state.clients.get(key) != secret:
            return _error(401, 401, "Invalid client key or secret")
        value = secrets.token_urlsafe(24)
        state.tokens[value] = time.time() + state.token_ttl
        return _json(
            {
                "data": {"accessToken": value, "expiresIn": state.token_ttl},
                "errors": None,
                "warnings": None,
            }
        )

    async def faults(entry: dict[str, Any]) -> Response | None:
        if state.latency_ms:
            await asyncio.sleep(state.latency_ms / 1000)
        if state.fail_next:
            code = state.fail_next.pop(0)
            return _error(code, code, f"injected HTTP {code}")
        if state.throttle_next > 0 or (
            state.throttle_rate and state.rng.random() < state.throttle_rate
        ):
            state.throttle_next = max(0, state.throttle_next - 1)
            return _json(
                {"errors": [{"code": 429, "message": "Too many requests"}]},
                429,
                {"Retry-After": f"{state.retry_after:g}"},
            )
        if state.error_rate and state.rng.random() < state.error_rate:
            return _error(503, 503, "injected: service unavailable")
        return None

    async def import_badges(request: Request) -> Response:
        entry: dict[str, Any] = {
            "at": time.time(),
            "method": request.method,
            "path": request.url.path,
            "records": 0,
        }
        state.requests.append(entry)
        response = await faults(entry)
        if response is None:
            if not authorised(request):
                response = _error(401, 401, "Invalid or expired credentials")
            else:
                response = await _import(request, entry)
        entry["status"] = response.status_code
        return response

    async def _import(request: Request, entry: dict[str, Any]) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, 400, "Request body is not valid JSON")
        if not isinstance(body, list) or not body:
            return _error(400, 400, "Request body must be a non-empty array of badges")
        if len(body) > 1000:
            return _error(400, 400, "At most 1000 badges per request")
        entry["records"] = len(body)
        out: list[dict[str, Any]] = []
        for record in body:
            problem = _check_record(state, record)
            if problem is not None:
                out.append({"data": None, "errors": [problem], "warnings": []})
                continue
            earned_id = state.next_id
            state.next_id += 1
            state.accepted += 1
            if state.store:
                state.received.append(record)
            out.append(
                {"data": {**record, "earnedBadgeId": earned_id}, "errors": None, "warnings": []}
            )
        return _json(out)

    async def received(request: Request) -> Response:
        return _json(
            {
                "records": state.received,
                "accepted": state.accepted,
                "token_requests": state.token_requests,
            }
        )

    async def requests(request: Request) -> Response:
        return _json(state.requests)

    async def configure(request: Request) -> Response:
        state.configure(orjson.loads(await request.body() or b"{}"))
        return _json({"ok": True})

    async def reset(request: Request) -> Response:
        state.received.clear()
        state.requests.clear()
        state.fail_next.clear()
        state.throttle_next = 0
        state.error_rate = state.throttle_rate = state.latency_ms = 0
        state.token_requests = 0
        state.accepted = 0
        return _json({"ok": True})

    return Starlette(
        routes=[
            Route(TOKEN_PATH, token, methods=["POST"]),
            Route(IMPORT_PATH, import_badges, methods=["PUT"]),
            Route("/__emulator/received", received, methods=["GET"]),
            Route("/__emulator/requests", requests, methods=["GET"]),
            Route("/__emulator/config", configure, methods=["POST"]),
            Route("/__emulator/reset", reset, methods=["POST"]),
        ]
    )


def _check_record(state: State, record: Any) -> dict[str, Any] | None:
    if not isinstance(record, dict):
        return {"code": 1001, "message": "each badge must be an object"}
    types = {"badgeMetaId": str, "customerId": int, "earnEventDate": int, "earnExpiresOn": int}
    for name, kind in types.items():
        value = record.get(name)
        if value is None:
            return {"code": 1001, "message": f"{name} is required"}
        if not isinstance(value, kind) or isinstance(value, bool):
            return {
                "code": 1001,
                "message": f"{name} must be {kind.__name__}, got {type(value).__name__}",
            }
    extra = set(record) - set(types)
    if extra:
        return {"code": 1001, "message": f"unknown field(s): {', '.join(sorted(extra))}"}
    if record["customerId"] <= 0:
        return {"code": 1001, "message": "customerId must be positive"}
    meta = state.metas.get(record["badgeMetaId"])
    if meta is None or not meta.active:
        return {
            "code": 1054,
            "message": f"Badge meta {record['badgeMetaId']} not found or inactive",
        }
    if record["earnExpiresOn"] <= record["earnEventDate"]:
        return {"code": 1002, "message": "earnExpiresOn must be after earnEventDate"}
    event = record["earnEventDate"]
    if (meta.window_start is not None and event < meta.window_start) or (
        meta.window_end is not None and event > meta.window_end
    ):
        return {"code": 816, "message": "Event date is outside the badge's validity window"}
    return None


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m dataflow.emulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--client", action="append", default=[], help="KEY:SECRET (OAuth)")
    parser.add_argument("--basic", action="append", default=[], help="USER:PASSWORD")
    parser.add_argument("--badge-meta", action="append", default=[], help="a known badgeMetaId")
    parser.add_argument("--config", help="a JSON file with the same keys as /__emulator/config")
    args = parser.parse_args(argv)
    state = State()
    if args.config:
        with open(args.config, "rb") as fh:
            state.configure(orjson.loads(fh.read()))
    state.configure(
        {
            "clients": dict(c.split(":", 1) for c in args.client),
            "basic": dict(b.split(":", 1) for b in args.basic),
            "badge_metas": args.badge_meta,
        }
    )
    uvicorn.run(
        create_app(state), host=args.host, port=args.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
