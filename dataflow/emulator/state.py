"""The emulator's in-memory state and its configuration."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class BadgeMeta:
    id: str
    active: bool = True
    window_start: int | None = None  # epoch seconds
    window_end: int | None = None
    requires_claim: bool = False  # earning needs an issue (enrolment) first

    def contains(self, when: int) -> bool:
        starts_ok = self.window_start is None or when >= self.window_start
        return starts_ok and (self.window_end is None or when <= self.window_end)

    def status(self) -> str:
        now = time.time()
        if self.window_start is not None and self.window_start > now:
            return "UPCOMING"
        if self.window_end is not None and self.window_end < now:
            return "EXPIRED"
        return "LIVE"


SETTINGS = (
    "token_ttl",
    "error_rate",
    "throttle_rate",
    "retry_after",
    "latency_ms",
    "token_latency_ms",
    "throttle_next",
    "store",
    "request_error_status",
    "data_on_809",
    "expired_token_status",
)


@dataclass
class State:
    clients: dict[str, str] = field(default_factory=dict)  # key -> secret
    basic: dict[str, str] = field(default_factory=dict)  # username -> password
    metas: dict[str, BadgeMeta] = field(default_factory=dict)
    token_ttl: float = 3600  # seconds, answered as ttlSeconds; a token expires after it
    expired_token_status: int = 401  # what an expired or unknown token is answered (or 498)
    tokens: dict[str, float] = field(default_factory=dict)  # token -> expiry
    token_requests: int = 0
    token_calls: list[float] = field(default_factory=list)  # arrival time of each token call
    received: list[dict[str, Any]] = field(default_factory=list)  # imported records
    earned_ids: list[list[Any]] = field(default_factory=list)  # [customerId, earnedBadgeId]
    earned: list[dict[str, Any]] = field(default_factory=list)  # earnBulk, per customer
    issued: list[dict[str, Any]] = field(default_factory=list)  # issueBulk, per customer
    active_issues: set[tuple[str, int]] = field(default_factory=set)
    request_ids: dict[str, Any] = field(default_factory=dict)  # requestId -> first answer data
    store: bool = True  # False: count accepted records only (benchmarks)
    accepted: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    # a whole request refused (809, 1054, a bad body): Capillary answers HTTP 400; 200 also seen
    request_error_status: int = 400
    data_on_809: bool = False  # True: a repeated requestId also gets the first answer's data
    fail_next: list[int] = field(default_factory=list)
    apply_then_fail_next: list[int] = field(default_factory=list)
    # raw answers for the next requests: {status, json | text, content_type, apply}
    answer_next: list[dict[str, Any]] = field(default_factory=list)
    throttle_next: int = 0
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after: float = 1.0
    latency_ms: float = 0.0
    token_latency_ms: float = 0.0  # a slow token endpoint
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    next_id: int = 1

    def new_id(self) -> int:
        value = self.next_id
        self.next_id += 1
        return value

    def configure(self, data: dict[str, Any]) -> None:
        for key in SETTINGS:
            if key in data:
                setattr(self, key, data[key])
        for key in ("fail_next", "apply_then_fail_next"):
            if key in data:
                setattr(self, key, [int(c) for c in data[key]])
        if "answer_next" in data:
            self.answer_next = [dict(a) for a in data["answer_next"]]
        if "seed" in data:
            self.rng = random.Random(data["seed"])
        self.clients.update(data.get("clients", {}))
        self.basic.update(data.get("basic", {}))
        for meta in data.get("badge_metas", []):
            meta = {"id": meta} if isinstance(meta, str) else meta
            self.metas[str(meta["id"])] = BadgeMeta(**meta)
        for meta_id, customer in data.get("claims", []):
            self.active_issues.add((str(meta_id), int(customer)))
        if data.get("expire_tokens"):
            self.tokens.clear()

    def reset(self) -> None:
        """Forget traffic and faults; keep credentials and badge metas."""
        for name in (
            "received",
            "earned_ids",
            "earned",
            "issued",
            "requests",
            "fail_next",
            "apply_then_fail_next",
            "answer_next",
            "token_calls",
        ):
            getattr(self, name).clear()
        self.active_issues.clear()
        self.request_ids.clear()
        self.throttle_next = self.token_requests = self.accepted = 0
        self.error_rate = self.throttle_rate = self.latency_ms = self.token_latency_ms = 0.0
        self.store = True
        self.request_error_status, self.data_on_809, self.expired_token_status = 400, False, 401
