"""Capillary API authentication: an OAuth token (cached, renewed) or Basic.

OAuth: ``POST {base_url}/v3/oauth/token/generate`` with ``{"key", "secret"}`` answers
``{"data": {"accessToken", "ttlSeconds"}, "errors"}`` (``expiresIn``/``expires_in`` are read
when ``ttlSeconds`` is absent; with none of them the token is assumed to last
`DEFAULT_TTL` seconds). The token goes in ``X-CAP-API-OAUTH-TOKEN``. Its life is counted from
the moment the token was asked for (the server's clock starts no later), and it is renewed a
quarter of its life (at most a minute) before it runs out, and once more when the API answers
401 or 498. Token requests are not badge API calls and take no slot of the rate limiter
(one per token lifetime, plus one per refusal).

Basic: ``Authorization: Basic base64(username:md5hex(password))``, as Capillary expects.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import hashlib
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr

from dataflow.errors import ApiDown, AuthError, FatalError
from dataflow.ratelimit import RetryPolicy

if TYPE_CHECKING:  # imported when requests are sent: loading a dataflow file stays light
    import httpx

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-CAP-API-OAUTH-TOKEN"
DEFAULT_TTL = 900.0  # seconds, when the token endpoint does not say
TTL_FIELDS = ("ttlSeconds", "expiresIn", "expires_in")


class OAuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["oauth"]
    client_key: SecretStr
    client_secret: SecretStr
    token_endpoint: str = "/v3/oauth/token/generate"


class BasicConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["basic"]
    username: str
    password: SecretStr


class Auth(abc.ABC):
    """Headers for a request; `invalidate` is called once after a 401/498."""

    renewable = False

    @abc.abstractmethod
    async def headers(self, client: httpx.AsyncClient) -> dict[str, str]:
        """The authentication headers for the next request."""

    def invalidate(self, used: dict[str, str]) -> None:  # noqa: B027 - optional hook
        """Forget the credentials in `used` (they were refused)."""


class BasicAuth(Auth):
    def __init__(self, config: BasicConfig) -> None:
        digest = hashlib.md5(config.password.get_secret_value().encode()).hexdigest()
        token = base64.b64encode(f"{config.username}:{digest}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}

    async def headers(self, client: httpx.AsyncClient) -> dict[str, str]:
        return self._headers


class OAuthToken(Auth):
    renewable = True

    def __init__(self, config: OAuthConfig, retry: RetryPolicy) -> None:
        self.config = config
        self.retry = retry
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def headers(self, client: httpx.AsyncClient) -> dict[str, str]:
        if self._token is None or time.monotonic() >= self._renew_at:
            async with self._lock:
                if self._token is None or time.monotonic() >= self._renew_at:
                    await self._fetch(client)
        assert self._token is not None
        return {TOKEN_HEADER: self._token}

    def invalidate(self, used: dict[str, str]) -> None:
        if used.get(TOKEN_HEADER) == self._token:
            self._token = None

    async def _fetch(self, client: httpx.AsyncClient) -> None:
        body = {
            "key": self.config.client_key.get_secret_value(),
            "secret": self.config.client_secret.get_secret_value(),
        }
        import httpx

        failures = 0
        while True:
            asked_at = time.monotonic()
            try:
                response = await client.post(self.config.token_endpoint, json=body)
            except httpx.TransportError as exc:
                failures += 1
                wait = self.retry.delay(failures)
                if wait is None:
                    raise ApiDown(
                        f"cannot reach the OAuth token endpoint: {type(exc).__name__}"
                    ) from exc
                await asyncio.sleep(wait)
                continue
            if response.status_code in (400, 401, 403):
                raise AuthError(
                    f"the OAuth token request was refused (HTTP {response.status_code}); "
                    "check client_key and client_secret"
                )
            if self.retry.recoverable(response.status_code):
                failures += 1
                wait = self.retry.delay(failures)
                if wait is not None:
                    await asyncio.sleep(wait)
                    continue
            break
        token, ttl = _parse_token(response)
        self.fetches += 1
        self._token = token
        self._renew_at = asked_at + ttl - min(60.0, ttl / 4)
        log.info("obtained an OAuth token (valid %gs)", ttl)


def _parse_token(response: httpx.Response) -> tuple[str, float]:
    try:
        payload: Any = response.json()
        data = payload.get("data") or payload
        token = data.get("accessToken") or data.get("access_token")
        ttl = _ttl(data)
    except (ValueError, AttributeError, TypeError):
        token, ttl = None, 0.0
    if response.status_code != 200 or not isinstance(token, str) or not token:
        raise FatalError(
            f"the OAuth token endpoint answered HTTP {response.status_code} without a token"
        )
    return token, max(ttl, 1.0)


def _ttl(data: dict[str, Any]) -> float:
    """The token's lifetime in seconds: the first usable of `TTL_FIELDS`, else `DEFAULT_TTL`."""
    for name in TTL_FIELDS:
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            continue
        try:
            seconds = float(value)
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds > 0:
            return seconds
    return DEFAULT_TTL
