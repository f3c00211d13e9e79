"""The emulator's HTTP application (Starlette)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dataflow.emulator import bulk
from dataflow.emulator.state import State

IMPORT_PATH = "/api_gateway/v1/badges/import/customerBadges"
EARN_BULK_PATH = "/api_gateway/v1/badges/customer/earnBulk"
ISSUE_BULK_PATH = "/api_gateway/v1/badges/badgeMeta/customer/issueBulk"
TOKEN_PATH = "/v3/oauth/token/generate"

Handler = Callable[[Any, dict[str, Any]], Awaitable[Response]]


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
        state.token_calls.append(time.time())  # arrival times, apart from `requests`
        if state.token_latency_ms:
            await asyncio.sleep(state.token_latency_ms / 1000)
        try:
            body = orjson.loads(await request.body())
            key, secret = body["key"], body["secret"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return refused(1001, "key and secret are required")
        if state.clients.get(key) != secret:
            return _error(401, 401, "Invalid client key or secret")
        value = secrets.token_urlsafe(24)
        state.tokens[value] = time.time() + state.token_ttl
        # the documented shape, exactly: {data: {accessToken, ttlSeconds}, errors}
        return _json(
            {"data": {"accessToken": value, "ttlSeconds": state.token_ttl}, "errors": None}
        )

    def refused(code: int, message: str, data: Any = None) -> Response:
        """A request-level error: the whole request refused, in Capillary's envelope."""
        return _json(
            {"data": data, "errors": [{"code": code, "message": message}], "warnings": []},
            state.request_error_status,
        )

    def raw_answer(answer: dict[str, Any]) -> Response:
        status = int(answer.get("status", 200))
        headers = {str(k): str(v) for k, v in answer.get("headers", {}).items()}
        if "text" in answer:
            media = str(answer.get("content_type", "text/html"))
            return Response(
                str(answer["text"]), status_code=status, headers=headers, media_type=media
            )
        return _json(answer.get("json"), status, headers)

    async def injected() -> Response | None:
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

    def endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Log, inject faults, check auth, parse JSON, then call the handler."""

        async def route(request: Request) -> Response:
            entry: dict[str, Any] = {
                "at": time.time(),
                "method": request.method,
                "path": request.url.path,
                "records": 0,
                # the client's address: which host sent it (tests/test_cluster_netns.py)
                "peer": request.client.host if request.client is not None else None,
                # custom headers a client sent (Connect+ lets users add them); the token is not
                "headers": {
                    k: v
                    for k, v in request.headers.items()
                    if k.startswith("x-") and k != "x-cap-api-oauth-token"
                },
            }
            state.requests.append(entry)
            allowed = authorised(request)  # as a server does: on arrival, before any work
            raw = await request.body()  # received whole: applied even if the client goes away
            answer = state.answer_next.pop(0) if state.answer_next else None
            response = await injected()
            if response is None and answer is not None and not answer.get("apply", False):
                response = raw_answer(answer)
            if response is None and not allowed:
                status = state.expired_token_status
                response = _error(status, status, "Invalid or expired credentials")
            if response is None:
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    response = refused(1001, "Request body is not valid JSON")
                else:
                    response = await handler(body, entry)
                    if answer is not None:
                        response = raw_answer(answer)
                    elif state.apply_then_fail_next:
                        code = state.apply_then_fail_next.pop(0)
                        response = _error(code, code, f"injected HTTP {code} after applying")
            entry["status"] = response.status_code
            return response

        return route

    async def import_badges(body: Any, entry: dict[str, Any]) -> Response:
        if not isinstance(body, list) or not body:
            return refused(1001, "Request body must be a non-empty array of badges")
        if len(body) > 1000:
            return refused(1001, "At most 1000 badges per request")
        entry["records"] = len(body)
        out: list[dict[str, Any]] = []
        for record in body:
            problem = check_import_record(state, record)
            if problem is not None:
                out.append({"data": None, "errors": [problem], "warnings": []})
                continue
            state.accepted += 1
            earned_id = state.new_id()
            if state.store:
                state.received.append(record)
                state.earned_ids.append([record.get("customerId"), earned_id])
            out.append(
                {
                    "data": {**record, "earnedBadgeId": earned_id},
                    "errors": None,
                    "warnings": [],
                }
            )
        return _json(out)

    def bulk_endpoint(apply: Callable[[State, Any], Any], customers_key: str) -> Handler:
        async def handler(body: Any, entry: dict[str, Any]) -> Response:
            if isinstance(body, dict) and isinstance(body.get(customers_key), list):
                entry["records"] = len(body[customers_key])
                entry["requestId"] = body.get("requestId")
            try:
                data, errors = apply(state, body)
            except bulk.Invalid as exc:
                return refused(1001, str(exc))
            if errors:  # 809 (with the first answer's data if data_on_809), 1054
                first = errors[0]
                return refused(first["code"], first["message"], data)
            return _json({"data": data, "errors": None, "warnings": []})

        return handler

    async def received(request: Request) -> Response:
        return _json(
            {
                "records": state.received,
                "earned_ids": state.earned_ids,
                "earned": state.earned,
                "issued": state.issued,
                "accepted": state.accepted,
                "token_requests": state.token_requests,
                "token_calls": state.token_calls,
            }
        )

    async def requests(request: Request) -> Response:
        return _json(state.requests)

    async def configure(request: Request) -> Response:
        state.configure(orjson.loads(await request.body() or b"{}"))
        return _json({"ok": True})

    async def reset(request: Request) -> Response:
        state.reset()
        return _json({"ok": True})

    return Starlette(
        routes=[
            Route(TOKEN_PATH, token, methods=["POST"]),
            Route(IMPORT_PATH, endpoint(import_badges), methods=["PUT"]),
            Route(
                EARN_BULK_PATH, endpoint(bulk_endpoint(bulk.earn, "customerIds")), methods=["POST"]
            ),
            Route(
                ISSUE_BULK_PATH, endpoint(bulk_endpoint(bulk.issue, "customers")), methods=["POST"]
            ),
            Route("/__emulator/received", received, methods=["GET"]),
            Route("/__emulator/requests", requests, methods=["GET"]),
            Route("/__emulator/config", configure, methods=["POST"]),
            Route("/__emulator/reset", reset, methods=["POST"]),
        ]
    )


def check_import_record(state: State, record: Any) -> dict[str, Any] | None:
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
    if not meta.contains(record["earnEventDate"]):
        return {"code": 816, "message": "Event date is outside the badge's validity window"}
    return None
