"""Request bodies and response parsing of each template (no I/O)."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from dataflow.rows import RecordResult, Request
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
    assert [r.lines() for r in built] == [[2, 3], [5, 6], [4]]
    assert all(r.line_nos.dtype == np.int64 for r in built)  # arrays, no int object per row
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
        RecordResult(3, True, api_id="5"),  # the issuedId, for result_file: all
    ]
    top = {"data": None, "errors": [{"code": 1054, "message": "no meta"}]}
    assert EARN_BADGES_BULK.parse_response(request, 200, top) == [
        RecordResult(2, False, "1054", "no meta"),
        RecordResult(3, False, "1054", "no meta"),
    ]
    done = {"data": None, "errors": [{"code": 809, "message": "duplicate"}]}
    assert all(r.ok for r in EARN_BADGES_BULK.parse_response(request, 200, done))
    missing = {"data": {"issuedBadges": []}, "errors": None}
    first = EARN_BADGES_BULK.parse_response(request, 200, missing)[0]
    assert (first.ok, first.final) == (False, False)
    assert "no result for customer 11: the outcome is unknown" in first.message


def test_import_response_must_match_the_request() -> None:
    recs = pd.DataFrame(
        {"badgeMetaId": ["A"], "customerId": [1], "earnEventDate": [T0], "earnExpiresOn": [T0]},
        index=[2],
    )
    (request,) = EARNED_BADGES.build_requests(EARNED_BADGES, recs, recs, 10, "x")
    (result,) = EARNED_BADGES.parse_response(request, 200, [])
    assert not result.ok and "outcome is unknown" in result.message


# --- every documented shape, and the undocumented ones an API (or a proxy) may answer -------

IMPORT_OK: dict[str, Any] = {
    "data": {"badgeMetaId": "A", "earnedBadgeId": 7},
    "errors": None,
    "warnings": [],
}
IMPORT_ERR: dict[str, Any] = {
    "data": None,
    "errors": [{"code": 816, "message": "window"}],
    "warnings": [],
}
OK, UNKNOWN = ("ok",), ("unknown",)


def failed(code: str, message: str) -> tuple[str, str, str]:
    return ("failed", code, message)


def import_request(n: int = 2) -> Request:
    recs = pd.DataFrame(
        {
            "badgeMetaId": ["A"] * n,
            "customerId": list(range(1, n + 1)),
            "earnEventDate": [T0] * n,
            "earnExpiresOn": [T0 + pd.Timedelta(days=1)] * n,
        },
        index=range(2, n + 2),
    )
    (request,) = EARNED_BADGES.build_requests(EARNED_BADGES, recs, recs, 10, "x")
    return request


def bulk_request() -> Request:
    recs = records("earnEventDate", 2)  # customers 11 and 12, one request
    (request,) = EARN_BADGES_BULK.build_requests(EARN_BADGES_BULK, recs, recs, 10, "x")
    return request


def verdicts(results: list[RecordResult]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for r in results:
        if r.ok:
            assert r.final
            out.append(OK)
        elif not r.final:
            assert "the outcome is unknown" in r.message, r.message
            out.append(UNKNOWN)
        else:
            out.append(failed(r.status_code, r.message))
    return out


REFUSED: dict[str, Any] = {
    "data": None,
    "errors": [{"code": 1054, "message": "no meta"}],
    "warnings": [],
}
ALREADY: dict[str, Any] = {"data": None, "errors": [{"code": 809, "message": "already processed"}]}


@pytest.mark.parametrize("status", [200, 400])
@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ([IMPORT_OK, IMPORT_OK], [OK, OK]),
        ([IMPORT_OK, IMPORT_ERR], [OK, failed("816", "window")]),
        ([None, None], [UNKNOWN, UNKNOWN]),  # confirms nothing
        ([{}, {"errors": None}], [UNKNOWN, UNKNOWN]),  # no data
        ([IMPORT_OK, {"data": {"badgeMetaId": "A"}, "errors": []}], [OK, UNKNOWN]),  # no id
        ([IMPORT_OK, {"data": {"earnedBadgeId": None}}], [OK, UNKNOWN]),
        ([IMPORT_OK, {"data": "yes"}], [OK, UNKNOWN]),
        ([IMPORT_OK, "ok"], [OK, UNKNOWN]),
        ([IMPORT_OK], [UNKNOWN, UNKNOWN]),  # too short
        ([IMPORT_OK] * 3, [UNKNOWN, UNKNOWN]),  # too long
        ([], [UNKNOWN, UNKNOWN]),
        ({}, [UNKNOWN, UNKNOWN]),
        ({"data": None, "errors": None}, [UNKNOWN, UNKNOWN]),
        (None, [UNKNOWN, UNKNOWN]),
        ("<html>maintenance</html>", [UNKNOWN, UNKNOWN]),
        (42, [UNKNOWN, UNKNOWN]),
        (REFUSED, [failed("1054", "no meta")] * 2),  # a request-level error, 200 or 400
        ({"errors": [{"code": 1001}]}, [failed("1001", "rejected by API")] * 2),
        (ALREADY, [OK, OK]),  # 809: our earlier attempt was applied
    ],
)
def test_import_answers(status: int, payload: object, expected: list[tuple[str, ...]]) -> None:
    assert verdicts(EARNED_BADGES.parse_response(import_request(), status, payload)) == expected


def issued(*items: object) -> dict[str, object]:
    return {"data": {"issuedBadges": list(items)}, "errors": None, "warnings": []}


C11 = {"customerId": 11, "issuedId": 5, "error": None}
C12 = {"customerId": 12, "issuedId": 6, "error": None}
C12_ERR = {"customerId": 12, "issuedId": None, "error": {"code": 810, "message": "claim"}}


@pytest.mark.parametrize("status", [200, 400])
@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (issued(C12, C11), [OK, OK]),  # matched by customerId, not by position
        (issued(C11, C12_ERR), [OK, failed("810", "claim")]),
        (issued({**C11, "customerId": "11"}, C12), [OK, OK]),  # an id spelt as a string
        (issued(C11), [OK, UNKNOWN]),  # a customer missing
        (issued(C11, {"customerId": 12, "error": None}), [OK, UNKNOWN]),  # no issuedId
        (issued(C11, {"customerId": 12, "issuedId": None}), [OK, UNKNOWN]),
        (issued(C11, None), [OK, UNKNOWN]),
        (issued(), [UNKNOWN, UNKNOWN]),
        ({"data": {"issuedBadges": None}}, [UNKNOWN, UNKNOWN]),
        ({"data": {}}, [UNKNOWN, UNKNOWN]),
        ({"data": None, "errors": None}, [UNKNOWN, UNKNOWN]),
        ({}, [UNKNOWN, UNKNOWN]),
        ([None, None], [UNKNOWN, UNKNOWN]),
        (None, [UNKNOWN, UNKNOWN]),
        ("<html>maintenance</html>", [UNKNOWN, UNKNOWN]),
        (REFUSED, [failed("1054", "no meta")] * 2),
        ({**issued(C11, C12), "errors": REFUSED["errors"]}, [failed("1054", "no meta")] * 2),
        (ALREADY, [OK, OK]),  # 809 with data null: the earlier attempt was applied
        ({**issued(C11, C12_ERR), "errors": ALREADY["errors"]}, [OK, failed("810", "claim")]),
        ({**issued(C11), "errors": ALREADY["errors"]}, [OK, OK]),
    ],
)
def test_bulk_answers(status: int, payload: object, expected: list[tuple[str, ...]]) -> None:
    results = EARN_BADGES_BULK.parse_response(bulk_request(), status, payload)
    assert verdicts(results) == expected


def test_a_customer_id_spelled_as_text_is_read_as_the_number_sent() -> None:
    from dataflow.templates import _customer_key

    assert _customer_key("1002") == 1002 and _customer_key(1002) == 1002
    # digits to str.isdigit() that int() refuses stay as they are: no error from a verdict
    assert _customer_key("²") == "²" and _customer_key("١٢") == "١٢"
    assert _customer_key("9" * 5000) == "9" * 5000
