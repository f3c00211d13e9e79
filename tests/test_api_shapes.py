"""The client against the API as documented (contract §2), over real TCP to the emulator.

Request-level errors in the HTTP 400 envelope (809 above all), the token's `ttlSeconds`,
answers that confirm nothing, the rate limit from the first request, the stop request, and
the edge shapes of retries and token renewal.
"""

from __future__ import annotations

import asyncio
import email.utils
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pytest

from dataflow.block import RunContext
from dataflow.errors import AuthError
from dataflow.ratelimit import SlidingWindow
from dataflow.rows import RecordResult, Request
from dataflow.sandbox import Emulator
from dataflow.shutdown import STOP
from dataflow.templates import EARN_BADGES_BULK, EARNED_BADGES, Template
from dataflow_blocks.http_write import HttpWrite, HttpWriteConfig

from .conftest import CLIENT_KEY, CLIENT_SECRET, Bed, counts, wait_until
from .test_http_write import requests, send

OAUTH = {"type": "oauth", "client_key": CLIENT_KEY, "client_secret": CLIENT_SECRET}


def make(api: Emulator, tmp_path: Path, template: Template = EARNED_BADGES, **kw: Any) -> HttpWrite:
    values: dict[str, Any] = {"name": "dest", "base_url": api.url, "auth": OAUTH}
    values.update({"batch_size": 2, "concurrency": 1, **kw})
    config = HttpWriteConfig.model_validate(values)
    return HttpWrite(config, RunContext("t", template, tmp_path, tmp_path))


def bulk_requests(customers: list[int], per: int = 2) -> list[Request]:
    recs = pd.DataFrame(
        {
            "badgeMetaId": ["BADGE-GOLD"] * len(customers),
            "customerId": customers,
            "earnEventDate": [pd.Timestamp("2026-11-16T04:00:00Z")] * len(customers),
            "ownerType": ["Loyalty"] * len(customers),
            "referenceId": ["ref-1"] * len(customers),
        },
        index=range(2, len(customers) + 2),
    )
    return list(EARN_BADGES_BULK.build_requests(EARN_BADGES_BULK, recs, recs, per, "sha"))


def token_calls(api: Emulator) -> list[float]:
    return list(api._call("GET", "/__emulator/received")["token_calls"])


@pytest.fixture
def stop() -> Any:
    STOP.clear()
    yield STOP
    STOP.clear()


# --- 1, 2: request-level errors in the HTTP 400 envelope; 809 means "applied" -------------


@pytest.mark.parametrize("status", [400, 200])
def test_a_lost_bulk_answer_is_retried_and_809_counts_as_succeeded(
    api: Emulator, tmp_path: Path, status: int
) -> None:
    api.configure(request_error_status=status, apply_then_fail_next=[503])
    results = send(make(api, tmp_path, EARN_BADGES_BULK), bulk_requests([1001, 1002]))
    assert [(r.ok, r.final) for r in results] == [(True, True), (True, True)]
    log = api.requests()
    assert [q["status"] for q in log] == [503, status]  # the retry was answered 809
    assert log[0]["requestId"] == log[1]["requestId"]
    assert sorted(e["customerId"] for e in api.earned()) == [1001, 1002]  # issued once


@pytest.mark.parametrize("status", [400, 200])
def test_other_request_level_errors_fail_the_rows_with_their_code(
    api: Emulator, tmp_path: Path, status: int
) -> None:
    api.configure(request_error_status=status)
    reqs = bulk_requests([1001, 1002])
    nope = [Request(r.line_nos, r.body.replace(b"BADGE-GOLD", b"BADGE-NOPE"), r.source,
                    r.customers, r.request_id) for r in reqs]  # fmt: skip
    results = send(make(api, tmp_path, EARN_BADGES_BULK), nope)
    assert {(r.ok, r.final, r.status_code, r.message) for r in results} == {
        (False, True, "1054", "Badge meta BADGE-NOPE not found or inactive")
    }
    assert [q["status"] for q in api.requests()] == [status]


def test_the_emulator_answers_request_level_errors_as_capillary_does(api: Emulator) -> None:
    import httpx

    token = httpx.post(api.url + "/v3/oauth/token/generate",
                       json={"key": CLIENT_KEY, "secret": CLIENT_SECRET}).json()  # fmt: skip
    assert set(token) == {"data", "errors"} and set(token["data"]) == {"accessToken", "ttlSeconds"}
    headers = {"X-CAP-API-OAUTH-TOKEN": token["data"]["accessToken"]}
    bad = httpx.post(api.url + "/api_gateway/v1/badges/customer/earnBulk", json={},
                     headers=headers)  # fmt: skip
    assert bad.status_code == 400
    assert bad.json()["data"] is None and bad.json()["errors"][0]["code"] == 1001


BULK_HEADER = "badge_id,customer_id,event_date,owner_type,reference_id"
BULK_MAPPING = {
    "mapping": {
        "badgeMetaId": "badge_id",
        "customerId": "customer_id",
        "issueEventDate": {
            "column": "event_date",
            "date_format": "%d/%m/%Y %H:%M",
            "timezone": "Asia/Kolkata",
        },
        "ownerType": "owner_type",
        "referenceId": "reference_id",
    }
}


def test_crash_resume_of_a_bulk_file_reads_809_over_http_400_as_succeeded(bed: Bed) -> None:
    rows = [f"BADGE-GOLD,{1001 + i},16/11/2026 09:30,Loyalty,ref-1" for i in range(8)]
    bed.sftp.put("inbox/badges_b.csv.gpg",
                 bed.keys.encrypt(("\n".join([BULK_HEADER, *rows]) + "\n").encode()))  # fmt: skip
    config = bed.config(template="issue_badges_bulk", transform=BULK_MAPPING,
                        sink={"batch_size": 2, "concurrency": 1})  # fmt: skip
    bed.api.configure(latency_ms=400)
    proc = bed.spawn("run", str(config))
    wait_until(lambda: len(bed.api.requests()) >= 2)  # the second is in flight: applied...
    proc.kill()  # ...but its answer never reaches us
    proc.wait()
    wait_until(lambda: len(bed.api.issued()) >= 4)
    bed.api.configure(latency_ms=0)
    code, report, stderr = bed.run_json(config)
    assert code == 0, stderr
    (f,) = report["files"]
    assert counts(f) == (8, 0, 8, 8, 0) and f["error_file"] is None
    resent = [q for q in bed.api.requests() if q["status"] == 400]
    assert resent, "the resumed run should have re-sent the request in flight"
    assert sorted(e["customerId"] for e in bed.api.issued()) == list(range(1001, 1009))


# --- 3: the token's lifetime is ttlSeconds --------------------------------------------------


def test_a_short_lived_token_is_renewed_before_it_expires(api: Emulator, tmp_path: Path) -> None:
    api.configure(token_ttl=3, latency_ms=150)
    started = time.monotonic()
    results = send(make(api, tmp_path, concurrency=2, batch_size=1), requests(64, per=1))
    assert time.monotonic() - started > 4  # the run outlives the first token
    assert all(r.ok for r in results)
    assert [q["status"] for q in api.requests() if q["status"] != 200] == []  # never a 401
    assert api.token_requests() >= 2


@pytest.mark.parametrize(
    ("data", "ttl"),
    [
        ({"accessToken": "t", "ttlSeconds": 5}, 5.0),
        ({"accessToken": "t", "expiresIn": 7}, 7.0),
        ({"accessToken": "t", "expires_in": "9"}, 9.0),
        ({"accessToken": "t", "ttlSeconds": None, "expiresIn": 11}, 11.0),
        ({"accessToken": "t", "ttlSeconds": "soon"}, 900.0),
        ({"accessToken": "t"}, 900.0),
    ],
)
def test_token_lifetime_fields(data: dict[str, Any], ttl: float) -> None:
    import httpx

    from dataflow.httpauth import _parse_token

    response = httpx.Response(200, content=orjson.dumps({"data": data, "errors": None}))
    assert _parse_token(response) == ("t", ttl)


# --- 4: an answer that confirms nothing is not a success ------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 200, "json": [None, None]},
        {"status": 200, "json": [None, None], "apply": True},
        {"status": 200, "json": {}},
        {"status": 200, "json": [{"errors": None}, {"data": {}}]},
        {"status": 200, "json": [{"data": {"earnedBadgeId": 1}}]},  # one element for two
        {"status": 200, "text": "<html><h1>Down for maintenance</h1></html>"},
        {"status": 200, "text": ""},
        {"status": 302, "text": "", "headers": {"Location": "/login"}},
    ],
)
def test_an_answer_that_confirms_nothing_fails_the_rows_not_final(
    api: Emulator, tmp_path: Path, answer: dict[str, Any]
) -> None:
    api.configure(answer_next=[answer])
    results = send(make(api, tmp_path), requests(4))
    assert [(r.ok, r.final) for r in results] == [(False, False)] * 2 + [(True, True)] * 2
    assert "the outcome is unknown" in results[0].message


@pytest.mark.parametrize(
    ("extra", "accepted"),
    [
        ("1e400", True),  # a number beyond a double, where the client does not read
        ("-" + "9" * 5000, True),  # an integer past int()'s 4300 digits
        ('"\\ud800"', False),  # a lone surrogate is not text: the answer confirms nothing
        ("NaN", False),
    ],
)
def test_an_all_success_answer_with_odd_values_where_the_client_does_not_read(
    api: Emulator, tmp_path: Path, extra: str, accepted: bool
) -> None:
    elements = [
        f'{{"data":{{"earnedBadgeId":{n}}},"errors":null,"warnings":[{extra}]}}' for n in (1, 2)
    ]
    api.configure(answer_next=[{"status": 200, "text": "[" + ",".join(elements) + "]"}])
    results = send(make(api, tmp_path), requests(2))
    if accepted:
        assert [(r.ok, r.final, r.api_id) for r in results] == [
            (True, True, "1"),
            (True, True, "2"),
        ]
    else:
        assert [(r.ok, r.final) for r in results] == [(False, False)] * 2
        assert "the outcome is unknown" in results[0].message


# --- 5: the rate limit, from the first request ---------------------------------------------


def test_no_window_ever_exceeds_the_limit_from_the_first_request(
    api: Emulator, tmp_path: Path
) -> None:
    api.configure(token_latency_ms=300, latency_ms=20)  # everybody waits for the token
    limit = 20
    block = make(api, tmp_path, concurrency=8, batch_size=1, rate={"limit": limit, "per": "second"})
    results = send(block, requests(70, per=1))
    assert len(results) == 70 and all(r.ok for r in results)
    arrivals = sorted(q["at"] for q in api.requests())  # badge API calls (tokens not counted)
    assert len(arrivals) == 70 and len(token_calls(api)) == 1
    for i in range(len(arrivals) - limit):
        window = arrivals[i + limit] - arrivals[i]
        assert window >= 1.0, f"{limit + 1} calls within {window:.3f}s from call {i}"


def test_a_place_held_while_waiting_never_expires() -> None:
    window = SlidingWindow(2, 0.2)
    departed: list[float] = []

    async def slow(hold: float) -> None:  # reserved now, leaves only after `hold`
        await window.reserve()
        await asyncio.sleep(hold)
        window.depart()
        departed.append(time.monotonic())

    async def main() -> None:
        await asyncio.gather(slow(0.5), slow(0.5), slow(0), slow(0))

    asyncio.run(main())
    departed.sort()
    assert departed[2] - departed[0] >= 0.2  # the late two waited for the first two to age


def test_a_place_given_back_frees_the_window() -> None:
    window = SlidingWindow(1, 60)

    async def main() -> float:
        await window.reserve()
        window.give_back()  # never left (a refused connection)
        started = time.monotonic()
        await asyncio.wait_for(window.acquire(), 1)
        return time.monotonic() - started

    assert asyncio.run(main()) < 0.5


# --- 6: after the stop request, no request starts ------------------------------------------


def test_after_stop_only_the_requests_in_flight_complete(
    api: Emulator, tmp_path: Path, stop: threading.Event
) -> None:
    api.configure(latency_ms=300)
    acked: list[Request] = []

    def on_result(request: Request, results: list[RecordResult]) -> None:
        acked.append(request)
        stop.set()  # the first answer: the other worker's request is in flight

    async def source() -> AsyncIterator[Request]:
        for r in requests(20, per=1):
            yield r

    block = make(api, tmp_path, concurrency=2, batch_size=1)
    asyncio.run(block.send(source(), on_result))
    log = api.requests()
    assert len(log) == 2  # the one answered and the one in flight, nothing after
    assert len(acked) == 2 and all(q["status"] == 200 for q in log)


def test_a_request_waiting_to_retry_is_not_sent_after_stop(
    api: Emulator, tmp_path: Path, stop: threading.Event
) -> None:
    api.configure(throttle_next=1, retry_after=5)
    acked: list[Request] = []

    def stopper() -> None:
        wait_until(lambda: [q for q in api.requests() if q.get("status") == 429], 10)
        stop.set()

    thread = threading.Thread(target=stopper)
    thread.start()

    async def source() -> AsyncIterator[Request]:
        for r in requests(2):
            yield r

    started = time.monotonic()
    asyncio.run(make(api, tmp_path).send(source(), lambda r, _: acked.append(r)))
    thread.join()
    assert time.monotonic() - started < 3  # the 5 s wait ended with the stop
    assert [q["status"] for q in api.requests()] == [429]  # never sent again
    assert acked == []  # its rows are left unacknowledged: the resumed run sends them


def test_a_request_waiting_for_a_rate_slot_is_not_sent_after_stop(
    api: Emulator, tmp_path: Path, stop: threading.Event
) -> None:
    acked: list[Request] = []

    def on_result(request: Request, results: list[RecordResult]) -> None:
        acked.append(request)
        stop.set()  # the others are waiting for the window (1 per second)

    async def source() -> AsyncIterator[Request]:
        for r in requests(5, per=1):
            yield r

    block = make(api, tmp_path, concurrency=3, batch_size=1, rate={"limit": 1, "per": "second"})
    started = time.monotonic()
    asyncio.run(block.send(source(), on_result))
    assert time.monotonic() - started < 1.5
    assert len(api.requests()) == 1 and len(acked) == 1


# --- 7: Retry-After shapes, token renewal ---------------------------------------------------


def test_retry_after_as_an_http_date(api: Emulator, tmp_path: Path) -> None:
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    throttled = {
        "status": 429,
        "json": {"errors": [{"code": 429}]},
        "headers": {"Retry-After": when},
    }
    api.configure(answer_next=[throttled])
    started = time.monotonic()
    results = send(make(api, tmp_path), requests(2))
    assert all(r.ok for r in results)
    assert time.monotonic() - started >= 0.9  # waited until the date (1-2 s, whole seconds)
    assert [q["status"] for q in api.requests()] == [429, 200]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        ("-5", 0.0),
        ("1e308", 300.0),
        ("inf", 300.0),
        ("nan", 1.5),
        ("", 1.5),
        ("soon", 1.5),
        ("Fri, 31 Dec 9999 23:59:59 GMT", 300.0),
        ("Mon, 01 Jan 1990 00:00:00 GMT", 0.0),
        ("Mon, 45 Foo 2020 99:99:99 GMT", 1.5),
    ],
)
def test_retry_after_values(value: str, expected: float) -> None:
    from dataflow.ratelimit import retry_after

    assert retry_after(value, 1.5) == expected


def test_http_date_without_a_zone_is_gmt() -> None:
    from dataflow.ratelimit import retry_after

    when = email.utils.formatdate(time.time() + 100)[:-6] + " -0000"
    assert 95 <= retry_after(when, 1.5) <= 100


@pytest.mark.parametrize("code", [401, 498])
def test_401_or_498_mid_run_renews_the_token_once(api: Emulator, tmp_path: Path, code: int) -> None:
    api.configure(latency_ms=100)

    def expire() -> None:  # mid-run, with requests in flight
        wait_until(lambda: len([q for q in api.requests() if q.get("status") == 200]) >= 4, 30)
        api.configure(expire_tokens=True, expired_token_status=code)

    thread = threading.Thread(target=expire)
    thread.start()
    results = send(make(api, tmp_path, concurrency=4, batch_size=1), requests(16, per=1))
    thread.join()
    assert len(results) == 16 and all(r.ok for r in results)
    assert api.token_requests() == 2  # renewed once, not once per refused request
    statuses = [q["status"] for q in api.requests()]
    assert statuses.count(code) >= 1 and statuses.count(200) == 16


def test_a_token_refused_after_renewal_stops_the_run(api: Emulator, tmp_path: Path) -> None:
    api.configure(fail_next=[498, 498])
    with pytest.raises(AuthError, match=r"HTTP 498"):
        send(make(api, tmp_path), requests(2))
    assert api.token_requests() == 2
