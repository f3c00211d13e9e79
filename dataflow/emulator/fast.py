"""A benchmark mode of the emulator (``python -m dataflow.emulator --fast``), for bench/run.py.

The import endpoint (``PUT .../import/customerBadges``) is served by a bare ASGI handler:
the token is checked, the body parsed and its size checked (a non-empty array of at most 1000
objects), every record counted as accepted (``State.accepted``) and answered with a
precomputed array of the documented shape (``{data: {earnedBadgeId}, errors: null,
warnings: []}`` per element). Records are not validated field by field and not stored, and
no fault is injected: the emulator must not be the bottleneck of a benchmark. Every other
path (the token, the bulk APIs, ``/__emulator/...``) is the default application's. The
default mode, written from the API documents and used by the tests, is unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from dataflow.emulator.app import IMPORT_PATH, create_app
from dataflow.emulator.state import State

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

_HEADERS = [(b"content-type", b"application/json")]


def create_fast_app(state: State) -> App:
    full = create_app(state)
    answers: dict[int, bytes] = {}

    def answer(count: int) -> bytes:
        if count not in answers:
            answers[count] = orjson.dumps(
                [
                    {"data": {"earnedBadgeId": k + 1}, "errors": None, "warnings": []}
                    for k in range(count)
                ]
            )
        return answers[count]

    def refused(code: int, message: str) -> bytes:
        return orjson.dumps(
            {"data": None, "errors": [{"code": code, "message": message}], "warnings": []}
        )

    def authorised(scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"x-cap-api-oauth-token":
                expiry = state.tokens.get(value.decode("latin-1"))
                return expiry is not None and expiry > time.time()
        return False

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != IMPORT_PATH or scope["method"] != "PUT":
            await full(scope, receive, send)
            return
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        entry: dict[str, Any] = {"at": time.time(), "method": "PUT", "path": IMPORT_PATH}
        entry["peer"] = scope["client"][0] if scope.get("client") else None
        status, body, count = _import(state, authorised(scope), b"".join(parts), answer, refused)
        entry["status"], entry["records"] = status, count
        state.requests.append(entry)
        await send({"type": "http.response.start", "status": status, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": body})

    return app


def _import(
    state: State,
    allowed: bool,
    raw: bytes,
    answer: Callable[[int], bytes],
    refused: Callable[[int, str], bytes],
) -> tuple[int, bytes, int]:
    """(status, body, records accepted)."""
    if not allowed:
        status = state.expired_token_status
        return status, refused(status, "Invalid or expired credentials"), 0
    try:
        records = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return state.request_error_status, refused(1001, "Request body is not valid JSON"), 0
    if not isinstance(records, list) or not records or len(records) > 1000:
        message = "Request body must be a non-empty array of at most 1000 badges"
        return state.request_error_status, refused(1001, message), 0
    if not all(isinstance(r, dict) for r in records):
        return state.request_error_status, refused(1001, "each badge must be an object"), 0
    state.accepted += len(records)
    return 200, answer(len(records)), len(records)
