"""A Capillary badge API emulator: a real HTTP server for the demo, the tests and compose.

It is written from the documents (the contract, §2), never from the client: it imports
nothing from the client's code, so a misread shape shows up in tests instead of being
mirrored by the double.

Endpoints (Capillary's envelopes, strict JSON types):

- ``POST /v3/oauth/token/generate`` ``{key, secret}`` -> ``{data: {accessToken, ttlSeconds},
  errors}``; the token is refused (401, or ``expired_token_status``) once ``ttlSeconds`` have
  passed. Basic auth (``base64(user:md5hex(password))``) is accepted too. Credentials are
  checked when a request arrives, as a server does.
- ``PUT /api_gateway/v1/badges/import/customerBadges``: an array of earned badges, answered by
  an array aligned with it, each ``{data: {..., earnedBadgeId}, errors, warnings}``.
- ``POST /api_gateway/v1/badges/customer/earnBulk`` and
  ``POST /api_gateway/v1/badges/badgeMeta/customer/issueBulk``: one badge, many customers,
  answered ``{data: {issuedBadges: [{customerId, issuedId, status, error}]}, errors}``.

Request-level errors (the whole request refused: 809, 1054, 1001 for a bad body) come in the
envelope ``{data: null | {...}, errors: [{code, message}], warnings}`` with HTTP 400, as
Capillary answers them (``request_error_status: 200`` answers them with HTTP 200 instead).
Error codes: 809 requestId already processed (``data: null``; with ``data_on_809`` the first
answer's data), 810 the customer must claim (be issued) the badge first, 816 event date
outside the badge's window, 1040 an active issue exists, 1054 badge meta unknown or inactive,
1001 a field missing or of the wrong type, 1002 earnExpiresOn not after earnEventDate.
Per-customer status: LIVE, UPCOMING or EXPIRED, from the badge's window.

Fault injection (``POST /__emulator/config``): ``fail_next`` (status codes for the next
requests), ``apply_then_fail_next`` (the request is applied, then its answer replaced by this
status: a lost response), ``answer_next`` (raw answers for the next requests, ``{status,
json | text, content_type, headers, apply}``; ``apply`` true processes the request first),
``error_rate`` (share answered 503), ``throttle_next`` and ``throttle_rate`` (429 with
``Retry-After: retry_after``), ``latency_ms``, ``token_latency_ms``, ``token_ttl``,
``expire_tokens``, ``expired_token_status``, ``request_error_status``, ``data_on_809``,
``seed``. Data:
``badge_metas`` (ids, or ``{id, active, window_start, window_end, requires_claim}``),
``clients``, ``basic``, ``claims`` (``[meta, customer]`` pairs).
Inspection: ``GET /__emulator/received`` (imported records, earned and issued badges, token
calls' arrival times), ``GET /__emulator/requests`` (every badge API request: arrival time,
method, path, status, records, the client's address ``peer``, its ``x-`` headers),
``POST /__emulator/reset``.

Run: ``python -m dataflow.emulator --port 8080 --client KEY:SECRET --basic USER:PASSWORD``
(``--fast``: a benchmark mode of the import API, see `dataflow.emulator.fast`).
"""

from dataflow.emulator.app import create_app
from dataflow.emulator.state import BadgeMeta, State

__all__ = ["BadgeMeta", "State", "create_app"]
