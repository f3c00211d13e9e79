"""Request bodies and response parsing of each template (no I/O)."""

from __future__ import annotations

import orjson
import pandas as pd

from dataflow.rows import RecordResult
from dataflow.templates import EARN_BADGES_BULK, EARNED_BADGES, ISSUE_BADGES_BULK, TEMPLATES

T0 = pd.Timestamp("2026-11-16T04:00:00.123456Z")


def records(date_field: str, n: int = 5) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "badgeMetaId": ["A", "A", "B", "A", "A"][:n],
            "customerId": [11, 12, 13, 14, 15][:n],
            date_field: [T0] * n,
            "ownerType": ["Loyalty"] * n,
            "referenceId": ["r"] * n,
        },
        index=range(2, n + 2),
    )


def test_the_three_templates_are_registered() -> None:
    assert set(TEMPLATES) == {"earned_badges", "earn_badges_bulk", "issue_badges_bulk"}


def test_bulk_requests_group_and_batch_with_deterministic_ids() -> None:
    recs = records("earnEventDate")
    built = list(EARN_BADGES_BULK.build_requests(EARN_BADGES_BULK, recs, recs, 2, "sha-1"))
    assert [r.line_nos for r in built] == [(2, 3), (5, 6), (4,)]
    body = orjson.loads(built[0].body)
    assert body == {
        "badgeMetaId": "A",
        "customerIds": [11, 12],
        "requestId": built[0].request_id,
        "earnEventDate": "2026-11-16T04:00:00.123Z",
        "triggeredBy": {"ownerType": "Loyalty", "referenceId": "r"},
    }
    again = list(EARN_BADGES_BULK.build_requests(EARN_BADGES_BULK, recs, recs, 2, "sha-1"))
    other = list(EARN_BADGES_BULK.build_requests(EARN_BADGES_BULK, recs, recs, 2, "sha-2"))
    assert [r.request_id for r in again] == [r.request_id for r in built]
    assert not {r.request_id for r in other} & {r.request_id for r in built}


def test_issue_bulk_body() -> None:
    recs = records("issueEventDate", 1)
    (request,) = ISSUE_BADGES_BULK.build_requests(ISSUE_BADGES_BULK, recs, recs, 10, "x")
    body = orjson.loads(request.body)
    assert body["customers"] == [11] and body["issueEventDate"] == 1794801600


def test_bulk_response_parsing() -> None:
    recs = records("earnEventDate", 2)
    (request,) = EARN_BADGES_BULK.build_requests(EARN_BADGES_BULK, recs, recs, 10, "x")
    ok = {
        "data": {
            "issuedBadges": [
                {"customerId": 12, "issuedId": 5, "error": None},
                {"customerId": 11, "issuedId": None, "error": {"code": 810, "message": "claim"}},
            ]
        },
        "errors": None,
    }
    assert EARN_BADGES_BULK.parse_response(request, 200, ok) == [
        RecordResult(2, False, "810", "claim"),
        RecordResult(3, True),
    ]
    top = {"data": None, "errors": [{"code": 1054, "message": "no meta"}]}
    assert EARN_BADGES_BULK.parse_response(request, 200, top) == [
        RecordResult(2, False, "1054", "no meta"),
        RecordResult(3, False, "1054", "no meta"),
    ]
    done = {"data": None, "errors": [{"code": 809, "message": "duplicate"}]}
    assert all(r.ok for r in EARN_BADGES_BULK.parse_response(request, 200, done))
    missing = {"data": {"issuedBadges": []}, "errors": None}
    assert EARN_BADGES_BULK.parse_response(request, 200, missing)[0].message == (
        "no result for customer 11 in the response"
    )


def test_import_response_must_match_the_request() -> None:
    recs = pd.DataFrame(
        {"badgeMetaId": ["A"], "customerId": [1], "earnEventDate": [T0], "earnExpiresOn": [T0]},
        index=[2],
    )
    (request,) = EARNED_BADGES.build_requests(EARNED_BADGES, recs, recs, 10, "x")
    (result,) = EARNED_BADGES.parse_response(request, 200, [])
    assert not result.ok and "outcome is unknown" in result.message
