"""http_write: send the mapped records to a Capillary badge API.

Example::

    - name: connect_to_destination
      type: http_write
      base_url: https://eu.api.capillarytech.com
      endpoint: /api_gateway/v1/badges/import/customerBadges   # template default
      method: PUT                                              # template default
      auth:
        type: oauth                      # POST {base_url}/v3/oauth/token/generate {key, secret}
        client_key: ${ACME_CLIENT_KEY}
        client_secret: ${ACME_CLIENT_SECRET}
        # type: basic, username, password
      batch_size: 100                    # records per request, 1..1000
      concurrency: 4                     # requests in flight
      rate: {limit: 1000, per: minute}   # never exceeded, retries included
      max_retries: 3                     # recoverable codes, timeouts, connection errors
      recoverable_status_codes: [502, 503, 504, 520, 521]
      yielding_status_codes: [429]       # wait (Retry-After) and retry; not counted
      timeout_seconds: 30
      ca_bundle: null                    # a PEM file to trust instead of the system CAs

Outcomes per request: 2xx is parsed per record by the template; a recoverable code, timeout
or connection error is retried with exponential backoff and jitter up to `max_retries`, then
its rows fail with the last status; a yielding code waits for Retry-After (capped at 300 s)
and is not counted, up to `max_yield_seconds` in all; 401/498 with OAuth renews the token once;
a refused credential (401/403 after renewal) stops the run and keeps the file; any other 4xx
or 5xx fails the request's rows with the HTTP status and the API's message. When
`max_consecutive_failures` requests in a row exhaust their retries the API is taken as down:
the run stops and the file is kept for the next run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dataflow.block import BlockConfig, OnResult, Sink
from dataflow.errors import AuthError, FatalError
from dataflow.httpauth import Auth, BasicAuth, BasicConfig, OAuthConfig, OAuthToken
from dataflow.ratelimit import SlidingWindow, backoff, retry_after
from dataflow.rows import RecordResult, Request
from dataflow.templates import Template

log = logging.getLogger(__name__)

PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}


class Rate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(ge=1)
    per: Literal["second", "minute", "hour"] = "minute"


class HttpWriteConfig(BlockConfig):
    type: Literal["http_write"] = "http_write"
    base_url: str
    endpoint: str | None = None
    method: Literal["PUT", "POST"] | None = None
    auth: OAuthConfig | BasicConfig = Field(discriminator="type")
    batch_size: int = Field(default=100, ge=1, le=1000)
    concurrency: int = Field(default=4, ge=1, le=64)
    rate: Rate = Rate(limit=1000, per="minute")
    max_retries: int = Field(default=3, ge=0, le=20)
    recoverable_status_codes: list[int] = [502, 503, 504, 520, 521]
    yielding_status_codes: list[int] = [429]
    timeout_seconds: float = Field(default=30, gt=0)
    max_yield_seconds: float = Field(default=900, ge=0)
    max_consecutive_failures: int = Field(default=5, ge=1)
    ca_bundle: str | None = None

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError(f"base_url must start with https:// (or http://), got {value!r}")
        return value.rstrip("/")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("endpoint must start with '/'")
        return value


class HttpWrite(Sink):
    Config = HttpWriteConfig
    config: HttpWriteConfig

    def __init__(self, config: HttpWriteConfig, context: Any) -> None:
        super().__init__(config, context)
        self.template: Template = context.template
        self.endpoint = config.endpoint or self.template.endpoint
        self.method = config.method or self.template.method
        self.auth: Auth = (
            OAuthToken(config.auth, config.max_retries)
            if isinstance(config.auth, OAuthConfig)
            else BasicAuth(config.auth)
        )
        self.limiter = SlidingWindow(config.rate.limit, PERIODS[config.rate.per])
        self._consecutive_exhausted = 0

    def _client(self) -> httpx.AsyncClient:
        c = self.config
        verify: Any = True
        if c.ca_bundle:
            verify = str((self.context.base_dir / c.ca_bundle).resolve())
        return httpx.AsyncClient(
            base_url=c.base_url,
            timeout=c.timeout_seconds,
            verify=verify,
            limits=httpx.Limits(
                max_connections=c.concurrency, max_keepalive_connections=c.concurrency
            ),
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": "dataflow/0.1",
            },
        )

    async def send(self, requests: AsyncIterator[Request], on_result: OnResult) -> None:
        queue: asyncio.Queue[Request | None] = asyncio.Queue(maxsize=self.config.concurrency * 2)

        async with self._client() as client:

            async def produce() -> None:
                async for request in requests:
                    await queue.put(request)
                for _ in range(self.config.concurrency):
                    await queue.put(None)

            async def work() -> None:
                while (request := await queue.get()) is not None:
                    results = await self._send_one(client, request)
                    on_result(request, results)

            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(produce())
                    for _ in range(self.config.concurrency):
                        group.create_task(work())
            except* FatalError as eg:
                raise eg.exceptions[0] from None

    async def _send_one(self, client: httpx.AsyncClient, request: Request) -> list[RecordResult]:
        c = self.config
        attempt = 0
        renewed = False
        yielded = 0.0
        last = ""
        while True:
            await self.limiter.acquire()
            headers = await self.auth.headers(client)
            try:
                response = await client.request(
                    self.method, self.endpoint, content=request.body, headers=headers
                )
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__} after {attempt + 1} attempt(s)"
                attempt += 1
                if attempt > c.max_retries:
                    return self._exhausted(request, "", last)
                await asyncio.sleep(backoff(attempt))
                continue
            status = response.status_code
            if status in c.yielding_status_codes:
                wait = retry_after(response.headers.get("Retry-After"), backoff(1))
                if yielded + wait > c.max_yield_seconds:
                    return self._exhausted(
                        request, str(status), f"HTTP {status}: still throttled after {yielded:.0f}s"
                    )
                yielded += wait
                log.info("HTTP %d: waiting %.1fs (Retry-After)", status, wait)
                await asyncio.sleep(wait)
                continue
            if status in c.recoverable_status_codes:
                attempt += 1
                if attempt > c.max_retries:
                    return self._exhausted(
                        request,
                        str(status),
                        f"HTTP {status} after {attempt} attempts: {_api_message(response)}",
                    )
                await asyncio.sleep(backoff(attempt))
                continue
            if status in (401, 498) and self.auth.renewable and not renewed:
                renewed = True
                self.auth.invalidate(headers)
                continue
            if status in (401, 403, 498):
                raise AuthError(
                    f"the API refused the credentials (HTTP {status} on {self.method} "
                    f"{self.endpoint}): {_api_message(response)}"
                )
            self._consecutive_exhausted = 0
            return self._results(request, response)

    def _exhausted(self, request: Request, status: str, message: str) -> list[RecordResult]:
        self._consecutive_exhausted += 1
        if self._consecutive_exhausted >= self.config.max_consecutive_failures:
            raise FatalError(
                f"the API at {self.config.base_url} looks down: {self._consecutive_exhausted} "
                f"requests in a row failed after retries (last: {message}); the file is kept "
                "and will be taken up by the next run"
            )
        return request.fail(status, message)

    def _results(self, request: Request, response: httpx.Response) -> list[RecordResult]:
        status = response.status_code
        try:
            payload = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            payload = None
        if 200 <= status < 300:
            if payload is None:
                message = f"HTTP {status} with an unreadable body; outcome unknown"
                return request.fail(str(status), message)
            return self.template.parse_response(request, status, payload)
        if isinstance(payload, list) and len(payload) == len(request.line_nos):
            return self.template.parse_response(request, status, payload)
        message = f"HTTP {status}: {_api_message(response, payload)}"
        return request.fail(str(status), message)


def _api_message(response: httpx.Response, payload: Any = None) -> str:
    if payload is None:
        try:
            payload = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            payload = None
    if isinstance(payload, dict):
        errors = payload.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            return f"{first.get('code', '')} {first.get('message', '')}".strip()
        for key in ("message", "error"):
            if isinstance(payload.get(key), str):
                return str(payload[key])
    text = response.text.strip().replace("\n", " ")
    return text[:200] or response.reason_phrase
