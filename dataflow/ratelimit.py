"""A sliding-window rate limiter that is never exceeded, and retry timing helpers."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections import deque

MAX_RETRY_AFTER = 300.0  # seconds: a hostile or mistaken Retry-After is capped


class SlidingWindow:
    """At most `limit` acquisitions in any window of `per` seconds.

    Every request attempt (retries included) takes a slot, so the server never sees more than
    `limit` requests in any `per`-second window, whatever the concurrency.
    """

    def __init__(self, limit: int, per: float, clock: object = time.monotonic) -> None:
        self.limit = limit
        self.per = per
        self._clock = clock
        self._starts: deque[float] = deque()
        self._lock = asyncio.Lock()

    def _now(self) -> float:
        return self._clock()  # type: ignore[operator,no-any-return]

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._now()
                while self._starts and now - self._starts[0] >= self.per:
                    self._starts.popleft()
                if len(self._starts) < self.limit:
                    self._starts.append(now)
                    return
                await asyncio.sleep(self._starts[0] + self.per - now)


def backoff(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with jitter: attempt 1 -> 0.25..0.5 s, 2 -> 0.5..1 s, ..."""
    ceiling = min(cap, base * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def retry_after(value: str | None, default: float) -> float:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date), capped."""
    if not value:
        return default
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return default
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # NaN
        return default
    return max(0.0, min(seconds, MAX_RETRY_AFTER))
