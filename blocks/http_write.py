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
      headers: {}                        # more request headers, e.g. {X-CAP-ORG: "${ORG}"};
                                         # values are secrets (masked everywhere)

Rate: `rate.limit` is never exceeded in any window of `rate.per`, from the first request on.
A request takes its slot at the moment it leaves (just before its first byte is written, see
`dataflow.ratelimit`), not when a worker picks it up, so requests that waited together for a
token or a connection do not leave together. Every attempt counts, retries included; the
OAuth token calls (not badge API calls, one per token lifetime) do not.

Stopping: once the stop request is set (SIGTERM, `dataflow.shutdown.STOP`), no request starts,
no retry is sent again and waits (backoff, Retry-After) end at once; requests already in
flight complete and are reported. The rows of requests that were not sent are left
unacknowledged, so the resumed run sends them.

Transport: the badge API calls go through a lean HTTP/1.1 client (`dataflow.fasthttp`: a
keep-alive pool of asyncio connections framed by h11, httpx's TLS context and exceptions,
about a third of httpx's CPU per request); with a proxy set in the environment
(``HTTPS_PROXY`` and the like), or a base URL it does not cover, they go through httpx, as
the OAuth token calls always do.

Answers: a row succeeds only when the answer confirms it (see `dataflow.templates`).
Request-level errors come in Capillary's envelope with HTTP 200 or 4xx alike; 809 means our
earlier attempt was applied (rows succeeded), any other code fails the rows with its code and
message. A 2xx answer that is not JSON (a maintenance page) or confirms nothing, and a 5xx
that is not retried, leave the rows failed as "outcome unknown", not final.

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
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from dataflow.block import BlockConfig, OnResult, Sink, Template
from dataflow.errors import ApiDown, AuthError, FatalError
from dataflow.httpauth import Auth, BasicAuth, BasicConfig, OAuthConfig, OAuthToken
from dataflow.jsonbody import NOT_JSON as _NOT_JSON  # a body that is not JSON
from dataflow.jsonbody import read as _json  # None when empty, else the body or _NOT_JSON
from dataflow.ratelimit import RetryPolicy, SlidingWindow, backoff, retry_after
from dataflow.rows import RecordResult, Request
from dataflow.shutdown import STOP
from dataflow.templates import unconfirmed

if TYPE_CHECKING:  # imported when the block sends: `dataflow validate` stays light
    import httpx
    import pandas as pd

    from dataflow.fasthttp import Answer, FastHttp

    Response = httpx.Response | Answer  # what a send answers: httpx's, or FastHttp's

log = logging.getLogger(__name__)

PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
RESERVED_HEADERS = {"content-type", "authorization", "x-cap-api-oauth-token", "content-length"}
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token


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
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="additional request headers (Connect+'s custom headers); values are "
        "treated as secrets and masked; the content type, auth and token headers are ours",
    )

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid HTTP header name")
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by dataflow itself; remove it")
            if any(c in secret.get_secret_value() for c in "\r\n\0"):
                raise ValueError(f"the value of header {name!r} holds a line break or NUL")
        return value

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
        self.limiter = SlidingWindow(config.rate.limit, PERIODS[config.rate.per])
        self.retry = RetryPolicy(config.max_retries, frozenset(config.recoverable_status_codes))
        self.auth: Auth = (
            OAuthToken(config.auth, self.retry)
            if isinstance(config.auth, OAuthConfig)
            else BasicAuth(config.auth)
        )
        self._consecutive_exhausted = 0

    def build_requests(
        self, records: pd.DataFrame, source: pd.DataFrame, file_id: str
    ) -> Iterator[Request]:
        """`batch_size` records (or customers, for the bulk APIs) per request, shaped by the
        template."""
        return self.template.build_requests(
            self.template, records, source, self.config.batch_size, file_id
        )

    def _verify(self) -> Any:
        """True (httpx's default trust: certifi, or SSL_CERT_FILE/SSL_CERT_DIR), or an SSL
        context trusting ``ca_bundle`` (a PEM file or a hashed directory, as httpx read it)."""
        if not self.config.ca_bundle:
            return True
        import ssl

        path = (self.context.base_dir / self.config.ca_bundle).resolve()
        try:
            if path.is_dir():
                return ssl.create_default_context(capath=str(path))
            return ssl.create_default_context(cafile=str(path))
        except (OSError, ssl.SSLError) as exc:
            raise FatalError(
                f"http_write: the ca_bundle {path} cannot be read as PEM certificates: "
                f"{getattr(exc, 'strerror', None) or exc}"
            ) from exc

    def _headers(self) -> dict[str, str]:
        return {
            **{name: value.get_secret_value() for name, value in self.config.headers.items()},
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "dataflow/0.1",
        }

    def _client(self) -> httpx.AsyncClient:
        import httpx

        c = self.config
        return httpx.AsyncClient(
            base_url=c.base_url,
            timeout=c.timeout_seconds,
            verify=self._verify(),
            limits=httpx.Limits(
                max_connections=c.concurrency, max_keepalive_connections=c.concurrency
            ),
            headers=self._headers(),
        )

    def _lean(self) -> contextlib.AbstractAsyncContextManager[FastHttp | None]:
        """The lean client for the badge API calls (`dataflow.fasthttp`) when it applies to
        this URL; None: httpx sends them too. The OAuth token calls always go through httpx."""
        from dataflow.fasthttp import FastHttp, usable

        c = self.config
        if not usable(c.base_url, self.endpoint):
            return contextlib.nullcontext(None)
        return FastHttp(
            c.base_url,
            verify=self._verify(),
            max_connections=c.concurrency,
            timeout=c.timeout_seconds,
            headers=self._headers(),
        )

    async def probe_token(self) -> str | None:
        """For ``dataflow check``: with OAuth, obtain a token and say where from (None with
        Basic, which has no token). Raises AuthError (refused) or ApiDown (unreachable)."""
        if not isinstance(self.config.auth, OAuthConfig):
            return None
        async with self._client() as client:
            await self.auth.headers(client)
        return f"obtained from {self.config.base_url}{self.config.auth.token_endpoint}"

    async def probe_endpoint(self) -> str:
        """For ``dataflow check``: call the endpoint once with the credentials and an empty
        body (``[]``, or ``{}`` for a bulk template), so no record is sent and nothing is
        applied. The API authenticates before it validates: 401/403/498 means refused, a
        validation error means accepted. Raises AuthError (refused), ApiDown (unreachable)
        or FatalError (wrong URL, failing server)."""
        import httpx

        body = b"{}" if self.template.group_by else b"[]"
        target = f"{self.method} {self.config.base_url}{self.endpoint}"
        async with self._client() as client:
            headers = await self.auth.headers(client)
            try:
                response = await client.request(
                    self.method, self.endpoint, content=body, headers=headers
                )
            except httpx.TransportError as exc:
                raise ApiDown(f"cannot reach {target}: {type(exc).__name__}") from exc
        status = response.status_code
        if status in (401, 403, 498):
            raise AuthError(
                f"{target} refused the credentials (HTTP {status}: {_api_message(response)}); "
                "check the auth: settings"
            )
        if status in (404, 405):
            raise FatalError(
                f"{target} answered HTTP {status} ({_api_message(response)}); check base_url "
                "and endpoint"
            )
        if status >= 500:
            raise FatalError(
                f"{target} answered HTTP {status} ({_api_message(response)}); the API is "
                "failing: try again later"
            )
        return f"accepted by {target} (an empty request: no record sent)"

    async def send(self, requests: AsyncIterator[Request], on_result: OnResult) -> None:
        """Send with `concurrency` workers. When one meets a fatal error (credentials refused,
        the API down) or the requests cannot be made (the producer fails), nothing new
        leaves, the requests already in flight finish and are reported (their rows may have
        been applied), and then the first error is raised, as itself."""
        concurrency = self.config.concurrency
        queue: asyncio.Queue[Request | None] = asyncio.Queue(maxsize=concurrency * 2)
        halt = asyncio.Event()
        failures: list[Exception] = []

        def fail(exc: Exception) -> None:
            failures.append(exc)
            halt.set()

        async with self._client() as client, self._lean() as lean:

            async def produce() -> None:
                try:
                    async for request in requests:
                        if STOP.is_set() or halt.is_set():
                            break
                        await queue.put(request)
                except Exception as exc:  # building the requests failed: the file's problem
                    fail(exc)
                finally:
                    for _ in range(concurrency):
                        await queue.put(None)

            async def work() -> None:
                while (request := await queue.get()) is not None:
                    if halt.is_set():
                        continue  # not sent, not acknowledged: the kept file sends it again
                    try:
                        results = await self._send_one(client, request, lean)
                        if results is not None:  # None: stopped before it was sent, not acked
                            on_result(request, results)
                    except Exception as exc:
                        fail(exc)

            await asyncio.gather(produce(), *(work() for _ in range(concurrency)))
        if failures:
            raise failures[0]

    async def _send_one(
        self, client: httpx.AsyncClient, request: Request, lean: FastHttp | None = None
    ) -> Sequence[RecordResult] | None:
        """The request's results; None when the stop request kept it from being sent."""
        import httpx

        from dataflow.metrics import api_request

        c = self.config
        failures = 0
        renewed = False
        yielded = 0.0
        last = ""
        while True:
            try:
                response, headers = await self._attempt(client, request, lean)
            except _StopRequested:
                return None
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                failures += 1
                # the connection failed: the server may come back as a new process that knows
                # no token, so a 401 after this earns another renewal (a token refused right
                # after its renewal still stops the run)
                renewed = False
                wait = self.retry.delay(failures)
                if wait is None:
                    last = f"{type(exc).__name__} after {failures} attempt(s)"
                    return self._exhausted(request, "", last)
                if not await _pause(wait):
                    return None
                continue
            status = response.status_code
            api_request(self.context.dataflow, status)  # dataflow_api_requests_total
            if status in c.yielding_status_codes:
                wait = retry_after(response.headers.get("Retry-After"), backoff(1))
                if yielded + wait > c.max_yield_seconds:
                    return self._exhausted(
                        request, str(status), f"HTTP {status}: still throttled after {yielded:.0f}s"
                    )
                yielded += wait
                log.info("HTTP %d: waiting %.1fs (Retry-After)", status, wait)
                if not await _pause(wait):
                    return None
                continue
            if self.retry.recoverable(status):
                failures += 1
                wait = self.retry.delay(failures)
                if wait is None:
                    return self._exhausted(
                        request,
                        str(status),
                        f"HTTP {status} after {failures} attempts: {_api_message(response)}",
                    )
                if not await _pause(wait):
                    return None
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

    async def _attempt(
        self, client: httpx.AsyncClient, request: Request, lean: FastHttp | None = None
    ) -> tuple[Response, dict[str, str]]:
        """Send once: a rate-limit place first, then the token, then the request itself.

        Raises `_StopRequested` when the stop request came before the request left.
        """
        _unless_stopped()
        slot = self.limiter.slot(before_send=_unless_stopped)
        await slot.reserve()
        answered = False
        try:
            _unless_stopped()  # the wait for a place may have been long
            headers = await self.auth.headers(client)
            response: Response
            if lean is not None:  # the place is stamped as the request leaves
                response = await lean.request(
                    self.method, self.endpoint, request.body, headers, slot.departing
                )
            else:
                response = await client.request(
                    self.method,
                    self.endpoint,
                    content=request.body,
                    headers=headers,
                    extensions=slot.extensions,
                )
            answered = True
        finally:
            slot.release(answered)
        return response, headers

    def _exhausted(self, request: Request, status: str, message: str) -> list[RecordResult]:
        self._consecutive_exhausted += 1
        if self._consecutive_exhausted >= self.config.max_consecutive_failures:
            raise ApiDown(
                f"the API at {self.config.base_url} looks down: {self._consecutive_exhausted} "
                f"requests in a row failed after retries (last: {message}); the file is kept "
                "and will be taken up by the next run"
            )
        return request.fail(status, message, final=False)  # no verdict: sent again if kept

    def _results(self, request: Request, response: Response) -> Sequence[RecordResult]:
        """Verdicts from a final answer (not retried): 2xx, a 4xx envelope, or other codes."""
        status = response.status_code
        if 200 <= status < 300 and (accept := self.template.accept_raw) is not None:
            accepted = accept(request, response.content)  # all rows accepted: no dict per row
            if accepted is not None:
                return accepted
        payload = _json(response.content)
        if 200 <= status < 300:
            if payload is _NOT_JSON:
                why = f"the body is not JSON ({_snippet(response)})"
                return unconfirmed(request.line_nos, status, why)
            return self.template.parse_response(request, status, payload)
        if status >= 500 or status < 400:  # a failed server, a redirect: no verdict
            why = f"it is not an answer of the API ({_api_message(response)})"
            return unconfirmed(request.line_nos, status, why)
        if _is_envelope(payload) or (
            isinstance(payload, list) and len(payload) == len(request.line_nos)
        ):
            return self.template.parse_response(request, status, payload)
        message = f"HTTP {status}: {_api_message(response)}"
        return request.fail(str(status), message)


class _StopRequested(Exception):
    """Raised just before a request would leave after the stop request: it is not sent."""


def _unless_stopped() -> None:
    if STOP.is_set():
        raise _StopRequested


async def _pause(seconds: float) -> bool:
    """Sleep `seconds`, or less if the stop request comes; True when not stopped."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not STOP.is_set():
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return True
        await asyncio.sleep(min(left, 0.1))
    return False


def _is_envelope(payload: Any) -> bool:
    """Capillary's request-level envelope: an object with a non-empty `errors`."""
    return isinstance(payload, dict) and bool(payload.get("errors"))


def _snippet(response: Response) -> str:
    text = " ".join(response.text.split())
    return repr(text[:80]) if text else "an empty body"


def _api_message(response: Response, payload: Any = None) -> str:
    if payload is None:
        payload = _json(response.content)
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
