"""A sliding-window rate limiter that is never exceeded, and retry timing helpers.

The window counts requests at the moment they leave, not when a worker decides to send
them: between the two a worker may wait for a token, a connection or a TLS handshake, and
requests that waited together would otherwise leave together, more than `limit` of them in
one window. A request first *reserves* a place (waiting, before it holds any connection, until
the window has room), then *departs*: its time is stamped from httpcore's ``trace`` extension
just before its first byte is written. A reservation never expires while it waits, so
reserved and departed requests together never exceed the limit; a request that never left
(a refused connection, a stop request) gives its place back.

Why that suffices: take any window and the last-reserved request that left in it; when it
reserved, every other request of that window had either left already (within one window of
that moment) or held a reservation, and it was granted only with fewer than `limit` of those.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

MAX_RETRY_AFTER = 300.0  # seconds: a hostile or mistaken Retry-After is capped
# httpcore's trace events fired just before a request's headers are written
SEND_EVENTS = frozenset(
    {"http11.send_request_headers.started", "http2.send_request_headers.started"}
)


class SlidingWindow:
    """At most `limit` requests leave in any window of `per` seconds.

    Every request attempt (retries included) takes a slot, so the server never sees more than
    `limit` requests in any `per`-second window, whatever the concurrency. A slot is held a
    little longer than `per` (1 %, at most 50 ms) so that jitter between our clock and the
    server's arrival times cannot squeeze `limit + 1` requests into one server-side window.
    """

    def __init__(self, limit: int, per: float, clock: object = time.monotonic) -> None:
        self.limit = limit
        self.per = per
        self.span = per + min(per * 0.01, 0.05)
        self._clock = clock
        self._departed: deque[float] = deque()  # departure times, oldest first
        self._reserved = 0  # places granted to requests that have not left yet
        self._lock = asyncio.Lock()
        self._freed = asyncio.Event()

    def _now(self) -> float:
        return self._clock()  # type: ignore[operator,no-any-return]

    async def reserve(self) -> None:
        """Wait until the window has room for one more request, and hold that place."""
        async with self._lock:
            while True:
                now = self._now()
                while self._departed and now - self._departed[0] >= self.span:
                    self._departed.popleft()
                if len(self._departed) + self._reserved < self.limit:
                    self._reserved += 1
                    return
                wait = self._departed[0] + self.span - now if self._departed else None
                self._freed.clear()
                with contextlib.suppress(TimeoutError):  # a departure ages out, or a
                    await asyncio.wait_for(self._freed.wait(), wait)  # place changes

    def depart(self) -> None:
        """The reserved request leaves now."""
        self._reserved -= 1
        self._departed.append(self._now())
        self._freed.set()  # a waiter recomputes when a place frees up

    def give_back(self) -> None:
        """The reserved request never left."""
        self._reserved -= 1
        self._freed.set()

    async def acquire(self) -> None:
        """Reserve and leave at once."""
        await self.reserve()
        self.depart()

    def slot(self, before_send: Callable[[], None] | None = None) -> Slot:
        """One request attempt's slot: `reserve()`, send with `extensions`, then `release()`."""
        return Slot(self, before_send)


class Slot:
    """One request attempt's place in a `SlidingWindow`, stamped as the request leaves.

    `before_send` runs just before the request is written; it may raise to keep the request
    from leaving (the exception propagates out of httpx unchanged).
    """

    def __init__(self, window: SlidingWindow, before_send: Callable[[], None] | None) -> None:
        self.window = window
        self.before_send = before_send
        self.reserved = False
        self.departed = False

    @property
    def extensions(self) -> dict[str, Any]:
        return {"trace": self._trace}

    async def reserve(self) -> None:
        await self.window.reserve()
        self.reserved = True

    async def _trace(self, event: str, info: dict[str, Any]) -> None:
        if event in SEND_EVENTS:
            self.departing()

    def departing(self) -> None:
        """The request is about to be written (`before_send` may still keep it back): for a
        client that calls it directly instead of tracing through `extensions`."""
        if self.before_send is not None:
            self.before_send()
        self._depart()

    def _depart(self) -> None:
        if self.reserved and not self.departed:
            self.departed = True
            self.window.depart()

    def release(self, answered: bool) -> None:
        """After the attempt: a request that never left gives its place back.

        `answered`: a response came back, so the request left even if the transport did
        not trace it (it is counted now, late).
        """
        if not self.reserved or self.departed:
            return
        if answered:
            self._depart()
        else:
            self.reserved = False
            self.window.give_back()


@dataclass(frozen=True)
class RetryPolicy:
    """When a call is tried again, shared by the HTTP sink and the OAuth client: a timeout, a
    dropped connection or a recoverable status code, up to `max_retries` more times, each
    after an exponential backoff with jitter."""

    max_retries: int
    recoverable_status_codes: frozenset[int] = frozenset({502, 503, 504, 520, 521})

    def recoverable(self, status: int) -> bool:
        return status in self.recoverable_status_codes

    def delay(self, failures: int) -> float | None:
        """Seconds to wait after the `failures`-th failed attempt; None: retries used up."""
        return None if failures > self.max_retries else backoff(failures)


def backoff(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with jitter: attempt 1 -> 0.25..0.5 s, 2 -> 0.5..1 s, ..."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def retry_after(value: str | None, default: float) -> float:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), capped.

    Negative values and dates in the past mean "now"; NaN, garbage and impossible dates give
    `default`; anything over `MAX_RETRY_AFTER` (infinity included) is capped to it.
    """
    if not value:
        return default
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return default
        if when.tzinfo is None:  # "-0000": HTTP dates are always GMT
            when = when.replace(tzinfo=UTC)
        try:
            seconds = when.timestamp() - time.time()
        except (OverflowError, OSError, ValueError):
            return default
    if math.isnan(seconds):
        return default
    return max(0.0, min(seconds, MAX_RETRY_AFTER))
