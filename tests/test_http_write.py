"""http_write against the API emulator over real HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

from dataflow.block import RunContext
from dataflow.errors import AuthError, FatalError
from dataflow.rows import RecordResult, Request
from dataflow.sandbox import Emulator
from dataflow.templates import EARNED_BADGES
from dataflow_blocks.http_write import HttpWrite, HttpWriteConfig

from .conftest import BASIC_PASSWORD, BASIC_USER, CLIENT_KEY, CLIENT_SECRET

EVENT = 1794801600


def make(api: Emulator, tmp_path: Path, **overrides: Any) -> HttpWrite:
    values: dict[str, Any] = {
        "name": "dest",
        "base_url": api.url,
        "batch_size": 2,
        "concurrency": 2,
        "auth": {"type": "oauth", "client_key": CLIENT_KEY, "client_secret": CLIENT_SECRET},
    }
    values.update(overrides)
    config = HttpWriteConfig.model_validate(values)
    return HttpWrite(config, RunContext("t", EARNED_BADGES, tmp_path, tmp_path))


def requests(n: int, per: int = 2, meta: str = "BADGE-GOLD", first: int = 2) -> list[Request]:
    source = pd.DataFrame({"c": ["x"] * n}, index=range(first, n + first))
    out = []
    for start in range(0, n, per):
        lines = tuple(range(start + first, min(n, start + per) + first))
        body = [
            {
                "badgeMetaId": meta,
                "customerId": line,
                "earnEventDate": EVENT,
                "earnExpiresOn": EVENT + 86400,
            }
            for line in lines
        ]
        out.append(Request(lines, orjson.dumps(body), source))
    return out


def send(block: HttpWrite, reqs: list[Request]) -> list[RecordResult]:
    results: list[RecordResult] = []

    async def gen() -> AsyncIterator[Request]:
        for r in reqs:
            yield r

    asyncio.run(block.send(gen(), lambda _r, res: results.extend(res)))
    return sorted(results, key=lambda r: r.line_no)


def test_sends_batches_and_parses_records(api: Emulator, tmp_path: Path) -> None:
    results = send(make(api, tmp_path), requests(5) + requests(1, meta="NOPE", first=100))
    assert [(r.line_no, r.ok) for r in results] == [
        (2, True),
        (3, True),
        (4, True),
        (5, True),
        (6, True),
        (100, False),
    ]
    assert (results[-1].status_code, results[-1].message) == (
        "1054",
        "Badge meta NOPE not found or inactive",
    )
    assert sorted(r["customerId"] for r in api.received()) == [2, 3, 4, 5, 6]
    assert [q["method"] for q in api.requests()] == ["PUT"] * 4
    assert api.token_requests() == 1  # the token is cached


def test_recoverable_codes_are_retried(api: Emulator, tmp_path: Path) -> None:
    api.configure(fail_next=[503, 502])
    results = send(make(api, tmp_path, concurrency=1), requests(2))
    assert all(r.ok for r in results)
    assert [q["status"] for q in api.requests()] == [503, 502, 200]


def test_retries_exhausted_fail_the_rows_with_the_status(api: Emulator, tmp_path: Path) -> None:
    api.configure(fail_next=[503, 503, 503])
    results = send(make(api, tmp_path, concurrency=1, max_retries=2), requests(2))
    assert [(r.ok, r.status_code) for r in results] == [(False, "503"), (False, "503")]
    assert results[0].message.startswith("HTTP 503 after 3 attempts")
    assert api.received() == []


def test_429_waits_for_retry_after_and_is_not_counted(api: Emulator, tmp_path: Path) -> None:
    api.configure(throttle_next=2, retry_after=0.5)
    started = time.monotonic()
    results = send(make(api, tmp_path, concurrency=1, max_retries=0), requests(2))
    assert all(r.ok for r in results)
    assert time.monotonic() - started >= 1.0
    assert [q["status"] for q in api.requests()] == [429, 429, 200]


def test_rate_limit_is_never_exceeded(api: Emulator, tmp_path: Path) -> None:
    block = make(api, tmp_path, concurrency=4, rate={"limit": 4, "per": "second"})
    send(block, requests(24))  # 12 requests
    times = sorted(q["at"] for q in api.requests())
    assert len(times) == 12
    for i in range(len(times) - 4):
        assert times[i + 4] - times[i] >= 0.95  # 5 requests never within one second
    assert times[-1] - times[0] >= 1.9


def test_expired_token_is_renewed_once(api: Emulator, tmp_path: Path) -> None:
    block = make(api, tmp_path, concurrency=1)
    send(block, requests(2))
    api.configure(expire_tokens=True)
    results = send(block, requests(2))
    assert all(r.ok for r in results)
    assert api.token_requests() == 2
    assert [q["status"] for q in api.requests()] == [200, 401, 200]


def test_basic_auth(api: Emulator, tmp_path: Path) -> None:
    auth = {"type": "basic", "username": BASIC_USER, "password": BASIC_PASSWORD}
    assert all(r.ok for r in send(make(api, tmp_path, auth=auth), requests(2)))
    bad = {"type": "basic", "username": BASIC_USER, "password": "nope-nope"}
    with pytest.raises(AuthError, match=r"refused the credentials \(HTTP 401"):
        send(make(api, tmp_path, auth=bad), requests(2))


def test_bad_oauth_secret_stops_the_run(api: Emulator, tmp_path: Path) -> None:
    auth = {"type": "oauth", "client_key": CLIENT_KEY, "client_secret": "wrong-one"}
    with pytest.raises(AuthError, match="check client_key and client_secret"):
        send(make(api, tmp_path, auth=auth), requests(2))


def test_whole_batch_4xx_fails_its_rows_with_the_api_message(api: Emulator, tmp_path: Path) -> None:
    api.configure(fail_next=[400])
    results = send(make(api, tmp_path, concurrency=1), requests(4))
    assert [(r.ok, r.status_code) for r in results] == [
        (False, "400"),
        (False, "400"),
        (True, ""),
        (True, ""),
    ]
    assert results[0].message == "injected HTTP 400"  # the envelope's code and message


def test_api_down_stops_the_run(api: Emulator, tmp_path: Path) -> None:
    api.configure(fail_next=[503] * 20)
    block = make(api, tmp_path, concurrency=1, max_retries=0, max_consecutive_failures=3)
    with pytest.raises(FatalError, match="looks down: 3 requests in a row"):
        send(block, requests(20))


def test_additional_headers_are_sent_and_masked(bed: Any) -> None:
    """`headers:` adds request headers (Connect+'s custom headers); their values are secrets."""
    from .conftest import Bed

    assert isinstance(bed, Bed)
    bed.sftp.put(
        "inbox/badges_h.csv.gpg",
        bed.keys.encrypt(
            b"badge_id,customer_id,event_date,expires_at\nBADGE-GOLD,4001,16/11/2026 09:30,"
            b"1798761600\n"
        ),
    )
    org = "org-secret-" + "7" * 8
    flow = bed.config(sink={"headers": {"X-CAP-ORG": "${T_ORG}", "X-Trace": "weekly"}})
    result = bed.run("run", str(flow), "--json", env={"T_ORG": org})
    assert result.returncode == 0, result.stderr
    (sent,) = [r for r in bed.api.requests() if r["path"].endswith("/customerBadges")]
    assert sent["headers"]["x-cap-org"] == org and sent["headers"]["x-trace"] == "weekly"
    assert org not in result.stdout + result.stderr
    runs = bed.run("runs", "--json", env={"T_ORG": org})
    assert org not in runs.stdout


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Authorization": "x"}, "header 'Authorization' is set by dataflow itself"),
        ({"Bad Name": "x"}, "'Bad Name' is not a valid HTTP header name"),
        ({"X-A": "a\r\nX-B: b"}, "the value of header 'X-A' holds a line break or NUL"),
    ],
)
def test_additional_headers_are_checked(headers: dict[str, str], message: str) -> None:
    from pydantic import ValidationError

    base = {"name": "d", "base_url": "https://api.example", "auth": {"type": "basic",
            "username": "u", "password": "p"}}  # fmt: skip
    with pytest.raises(ValidationError, match=message):
        HttpWriteConfig.model_validate({**base, "headers": headers})
