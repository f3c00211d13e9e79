"""The bulk badge endpoints: earn for many customers, issue (enrol) many customers.

Written from the contract (§2), not from the client: nothing here comes from `dataflow`'s
own templates, so the client is checked against the documents rather than against itself.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from dataflow.emulator.state import State

# the documented triggeredBy.ownerType values (contract §2)
OWNER_TYPES = (
    "Loyalty",
    "Loyalty_Promotion",
    "Referral_Campaigns",
    "Journeys",
    "Audience_Campaigns",
    "Rewards_Catalog",
    "Goodwill_Module",
    "Milestones",
    "Historical_Import",
)
ISO_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


class Invalid(Exception):
    """The whole request is malformed (a request-level error, code 1001)."""


def _int_list(body: dict[str, Any], key: str) -> list[int]:
    values = body.get(key)
    if not isinstance(values, list) or not values:
        raise Invalid(f"{key} must be a non-empty array of customer ids")
    if len(values) > 1000:
        raise Invalid(f"{key}: at most 1000 customers per request")
    for value in values:
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise Invalid(f"{key} must hold positive integers, got {value!r}")
    return values


def _common(body: Any) -> tuple[str, str]:
    if not isinstance(body, dict):
        raise Invalid("the request body must be an object")
    meta, rid = body.get("badgeMetaId"), body.get("requestId")
    if not isinstance(meta, str) or not meta:
        raise Invalid("badgeMetaId must be a non-empty string")
    if not isinstance(rid, str) or not rid:
        raise Invalid("requestId must be a non-empty string")
    trigger = body.get("triggeredBy")
    if not isinstance(trigger, dict):
        raise Invalid("triggeredBy must be an object {ownerType, referenceId}")
    if trigger.get("ownerType") not in OWNER_TYPES:
        raise Invalid(f"triggeredBy.ownerType must be one of {', '.join(OWNER_TYPES)}")
    if not isinstance(trigger.get("referenceId"), str) or not trigger["referenceId"]:
        raise Invalid("triggeredBy.referenceId must be a non-empty string")
    return meta, rid


def earn(state: State, body: Any) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(data, top-level errors) for earnBulk."""
    meta_id, rid = _common(body)
    customers = _int_list(body, "customerIds")
    when = body.get("earnEventDate")
    if not isinstance(when, str) or not ISO_MS.fullmatch(when):
        raise Invalid(
            "earnEventDate must be ISO-8601 UTC with milliseconds, like 2026-11-16T06:00:00.000Z"
        )
    event = int(datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp())
    return _apply(state, rid, meta_id, customers, event, earn=True)


def issue(state: State, body: Any) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(data, top-level errors) for issueBulk."""
    meta_id, rid = _common(body)
    customers = _int_list(body, "customers")
    event = body.get("issueEventDate")
    if not isinstance(event, int) or isinstance(event, bool):
        raise Invalid("issueEventDate must be an integer (epoch seconds)")
    return _apply(state, rid, meta_id, customers, event, earn=False)


def _apply(
    state: State, rid: str, meta_id: str, customers: list[int], event: int, earn: bool
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    if rid in state.request_ids:
        data = state.request_ids[rid] if state.data_on_809 else None
        return data, [{"code": 809, "message": f"requestId {rid} was already processed"}]
    meta = state.metas.get(meta_id)
    if meta is None or not meta.active:
        return None, [{"code": 1054, "message": f"Badge meta {meta_id} not found or inactive"}]
    results: list[dict[str, Any]] = []
    for customer in customers:
        error = None
        if not meta.contains(event):
            error = {"code": 816, "message": "Event date is outside the badge's validity window"}
        elif earn and meta.requires_claim and (meta_id, customer) not in state.active_issues:
            error = {"code": 810, "message": "Customer must claim the badge before earning it"}
        elif not earn and (meta_id, customer) in state.active_issues:
            error = {"code": 1040, "message": "An active issue exists for this customer"}
        if error is not None:
            results.append(
                {"customerId": customer, "issuedId": None, "status": None, "error": error}
            )
            continue
        issued_id = state.new_id()
        record = {
            "badgeMetaId": meta_id,
            "customerId": customer,
            "eventDate": event,
            "requestId": rid,
            "issuedId": issued_id,
        }
        state.accepted += 1
        if earn:
            state.earned.append(record)
        else:
            state.active_issues.add((meta_id, customer))
            state.issued.append(record)
        results.append(
            {"customerId": customer, "issuedId": issued_id, "status": meta.status(), "error": None}
        )
    data = {"issuedBadges": results}
    state.request_ids[rid] = data
    return data, []
