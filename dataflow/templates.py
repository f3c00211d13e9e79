"""Templates: what each Capillary badge API expects, as data plus the least code.

A template names its endpoint and method, the kind of every field it sends (which drives
conversion and row rules in `field_mapping`), an optional cross-field rule, how rows become
request bodies and how a response becomes one verdict per source line.

Field kinds:

- ``text``: trimmed, non-empty string;
- ``customer_id``: a positive integer, sent as a JSON number;
- ``epoch_s``: a date, sent as integer seconds since the epoch (UTC);
- ``iso_ms``: a date, sent as ISO-8601 UTC with milliseconds (``2026-11-16T06:00:00.000Z``);
- ``owner_type``: one of `OWNER_TYPES`.

Two request shapes exist: the import API takes a JSON array of records, in file order; the
bulk APIs take one request per group of rows sharing the `group_by` fields, with at most
`batch_size` customers and a `requestId` derived from the file's content hash and the
request's rows, so that a retried or resumed request is recognised by the server (error 809)
and never issues twice.

Verdicts: a row counts as succeeded only when the answer confirms it (the import API: its
element has ``data.earnedBadgeId`` and no errors; the bulk APIs: its customer's item has an
``issuedId`` and no error, or the request was answered 809). A record or request error is a
final failure with the API's code and message; an answer that confirms nothing (nulls,
missing fields, wrong lengths, garbage) fails its rows as "outcome unknown", not final.
Request-level errors come in the envelope ``{data, errors: [{code, message}], warnings}``
with HTTP 200 or 4xx alike (`request_level`). An answer accepting every row is checked in one
pass and returned as `Accepted` (arrays, no object per row); any other answer gets the
per-row verdicts.

Adding a template is one `Template(...)` value registered in `TEMPLATES`; see docs/templates.md.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from dataflow.rows import Accepted, RecordResult, Request, line_list

if TYPE_CHECKING:  # imported where rows are built: loading a dataflow file stays light
    import numpy as np
    import pandas as pd

ALREADY_PROCESSED = "809"  # a bulk requestId seen before: our earlier attempt was applied
FIELD_KINDS = ("text", "customer_id", "epoch_s", "iso_ms", "owner_type")
DATE_KINDS = ("epoch_s", "iso_ms")
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

RowRule = Callable[["pd.DataFrame"], "pd.Series[Any]"]
RequestBuilder = Callable[["Template", "pd.DataFrame", "pd.DataFrame", int, str], Iterator[Request]]
ResponseParser = Callable[[Request, int, Any], Sequence[RecordResult]]
RawAcceptor = Callable[[Request, bytes], "Accepted | None"]
BodyMaker = Callable[[dict[str, Any], list[int], str], dict[str, Any]]


@dataclass(frozen=True)
class Template:
    name: str
    endpoint: str
    method: str
    fields: dict[str, str]  # mandatory field -> kind
    build_requests: RequestBuilder
    parse_response: ResponseParser
    optional: dict[str, str] = field(default_factory=dict)
    row_rule: RowRule | None = None  # returns a message per row, "" where the row is fine
    group_by: tuple[str, ...] = ()  # bulk templates: rows sharing these go in one request
    make_body: BodyMaker | None = None  # bulk templates: (group values, customers, requestId)
    # a 2xx answer's bytes -> `Accepted` when it accepts every row, else None (then the
    # answer is parsed and `parse_response` decides); it must agree with `parse_response`
    accept_raw: RawAcceptor | None = None

    @property
    def all_fields(self) -> dict[str, str]:
        return {**self.fields, **self.optional}


def _dumps(value: Any) -> bytes:
    import orjson

    return orjson.dumps(value)


def to_json_value(series: pd.Series[Any], kind: str) -> list[Any]:
    import pandas as pd

    """Convert one typed column (as produced by field_mapping) to JSON-ready values."""
    if kind == "epoch_s":
        epoch = pd.Timestamp(0, tz="UTC").as_unit("s")  # not ns: 31/12/9999 must fit
        seconds = (series - epoch) // pd.Timedelta(seconds=1)
        return [int(v) for v in seconds]
    if kind == "iso_ms":
        return [v.strftime("%Y-%m-%dT%H:%M:%S.") + f"{v.microsecond // 1000:03d}Z" for v in series]
    if kind == "customer_id":
        return [int(v) for v in series]
    return [str(v) for v in series]


# --- the import API: one JSON array element per row -----------------------------------------


def build_array_requests(
    template: Template, records: pd.DataFrame, source: pd.DataFrame, batch_size: int, file_id: str
) -> Iterator[Request]:
    """Rows in file order, `batch_size` per request, as a JSON array of objects.

    Each row's object is built once per chunk by Arrow over the columns (`_row_objects`), and
    a request's body is a slice of them: the same bytes as ``orjson.dumps`` of the records
    (`build_array_requests_slow`, used where a column's kind or values are not covered).
    """
    import numpy as np

    kinds = template.all_fields
    names = [name for name in kinds if name in records.columns]
    objects = _row_objects(records, names, kinds) if len(records) else None
    if objects is None:
        yield from build_array_requests_slow(template, records, source, batch_size, file_id)
        return
    data, offsets = objects
    lines = records.index.to_numpy(dtype=np.int64)
    starts = list(range(0, len(records), batch_size))
    cuts = offsets[[*starts, len(records)]].tolist()  # where each request's rows start
    for i, start in enumerate(starts):
        end = min(start + batch_size, len(records))
        body = b"".join((b"[", data[cuts[i] : cuts[i + 1] - 1], b"]"))  # no last ","
        yield Request(line_nos=lines[start:end], body=body, source=source)


_NEEDS_ESCAPE = r"[\x00-\x08\x0a-\x1f]"  # beyond tab, quote and backslash: orjson decides


def _row_objects(
    records: pd.DataFrame, names: list[str], kinds: dict[str, str]
) -> tuple[memoryview, np.ndarray[Any, Any]] | None:
    """Every row's JSON object followed by ``,``, concatenated, and the offset of each row's
    start in it (int64, one more at the end); None when a column is not covered (see
    `_json_column`)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if not names:
        return None
    parts: list[Any] = []
    literal = "{"  # the text between two columns' values, one piece each
    for name in names:
        column = _json_column(records[name], kinds[name])
        if column is None:
            return None
        parts += [literal + _dumps(name).decode() + ":", column]
        literal = ","
    parts.append("},")
    joined = pc.binary_join_element_wise(
        *(pa.scalar(p, pa.large_string()) if isinstance(p, str) else p for p in parts),
        pa.scalar("", pa.large_string()),
    )
    _, offsets_buffer, data_buffer = joined.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)
    return memoryview(data_buffer), offsets[joined.offset : joined.offset + len(joined) + 1]


def _json_column(series: pd.Series[Any], kind: str) -> Any:
    """One column as Arrow large strings, each value's JSON text; None for a kind or values
    left to orjson (iso_ms, a text with a control character other than tab)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if kind in ("text", "owner_type"):
        text = pa.array(series.astype("str"), type=pa.large_string())
        if text.null_count:
            return None
        # texts repeat (badge ids, owner types): each distinct one is escaped once
        encoded = pc.dictionary_encode(text)
        words = encoded.dictionary
        if pc.any(pc.match_substring_regex(words, _NEEDS_ESCAPE)).as_py():
            return None
        for char, escaped in (("\\", "\\\\"), ('"', '\\"'), ("\t", "\\t")):
            words = pc.replace_substring(words, char, escaped)
        quote = pa.scalar('"', pa.large_string())
        words = pc.binary_join_element_wise(quote, words, quote, pa.scalar("", pa.large_string()))
        return pc.take(words, encoded.indices)
    if kind == "customer_id":
        numbers = series.to_numpy(dtype=np.int64)
    elif kind == "epoch_s" and str(series.dtype) == "datetime64[ms, UTC]":
        numbers = series.array.asi8 // 1000  # what field_mapping makes: ms since the epoch
    elif kind == "epoch_s":
        milliseconds = series.dt.tz_convert("UTC").dt.tz_localize(None).dt.as_unit("ms")
        numbers = milliseconds.to_numpy().view(np.int64) // 1000
    else:
        return None
    return pc.cast(pa.array(numbers, type=pa.int64()), pa.large_string())


def build_array_requests_slow(
    template: Template, records: pd.DataFrame, source: pd.DataFrame, batch_size: int, file_id: str
) -> Iterator[Request]:
    """`build_array_requests` value by value (a dict per row, orjson): the reference."""
    import numpy as np

    kinds = template.all_fields
    names = [name for name in kinds if name in records.columns]
    for start in range(0, len(records), batch_size):
        part = records.iloc[start : start + batch_size]
        columns = [to_json_value(part[name], kinds[name]) for name in names]
        body = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
        lines = np.array([int(i) for i in part.index], dtype=np.int64)
        yield Request(line_nos=lines, body=_dumps(body), source=source)


def parse_array_response(request: Request, status: int, payload: Any) -> Sequence[RecordResult]:
    """An array aligned with the request: ``{data: {..., earnedBadgeId}, errors, warnings}``.

    A record counts as succeeded only when its element confirms it (``data`` with an
    ``earnedBadgeId``, no errors). A request-level envelope (``{data, errors: [...]}``) is a
    verdict on the whole request; anything else confirms nothing (`unconfirmed`).
    """
    whole = request_level(request, payload)
    if whole is not None:
        return whole
    sent = len(request.line_nos)
    if not isinstance(payload, list) or len(payload) != sent:
        got = f"{len(payload)} elements" if isinstance(payload, list) else _kind(payload)
        why = f"the response does not match the request ({sent} records, got {got})"
        return unconfirmed(request.line_nos, status, why)
    accepted = _all_imported(request, payload)
    if accepted is not None:
        return accepted
    return [
        _import_verdict(line_no, status, element)
        for line_no, element in zip(request.lines(), payload, strict=True)
    ]


def _all_imported(request: Request, payload: list[Any]) -> Accepted | None:
    """`Accepted` when every element confirms its record (what `_import_verdict` would say
    of each), else None: the per-row verdicts decide. One pass, no object per row."""
    ids: list[Any] = []
    append = ids.append
    for element in payload:
        if type(element) is not dict or element.get("errors"):
            return None
        data = element.get("data")
        if type(data) is not dict:
            return None
        badge = data.get("earnedBadgeId")
        if badge is None or badge == "":
            return None
        append(badge)
    return Accepted(_lines(request), ids)


# What an all-success element of an import answer is, as typed structs: anything else (a
# falsy but not-null `errors`, a float or boolean id, an integer beyond 64 bits, which orjson
# reads as a float) fails to decode and goes to the parsed path, which decides.
_BadgeId = (
    Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
    | Annotated[str, msgspec.Meta(min_length=1)]
)


class _Earned(msgspec.Struct, gc=False):  # no cycles: untracked, 15 % faster to decode
    earnedBadgeId: _BadgeId


class _Element(msgspec.Struct, gc=False):
    """An element that accepts its record; its other fields (warnings, ...) are skipped."""

    data: _Earned
    errors: Annotated[list[Any], msgspec.Meta(max_length=0)] | None = None


_IMPORT_ANSWER = msgspec.json.Decoder(list[_Element])


class _BadgeIds(Sequence[Any]):
    """The API's ids of decoded elements, read on access (a result file reads them)."""

    __slots__ = ("_elements",)

    def __init__(self, elements: list[_Element]) -> None:
        self._elements = elements

    def __len__(self) -> int:
        return len(self._elements)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [element.data.earnedBadgeId for element in self._elements[index]]
        return self._elements[index].data.earnedBadgeId


def accept_import_answer(request: Request, content: bytes) -> Accepted | None:
    """`Accepted` when the answer's bytes accept every record, as `parse_array_response`
    says of the parsed answer; else None (the answer is then parsed). The answer is decoded
    straight into typed structs (msgspec): the check runs in the decoder, with no dict per
    element and no loop in Python (issue 11: 0.50 -> 0.14 ms per 1000-record answer).
    A body with invalid UTF-8 anywhere goes to the parsed path (orjson refuses it; msgspec
    does not read the fields it skips). A number beyond a double in a skipped field (1e400)
    is read by the parsed path too (`http_write._json`), so no scan for one is needed.
    """
    try:
        content.decode()
        elements = _IMPORT_ANSWER.decode(content)
    except (UnicodeDecodeError, msgspec.MsgspecError, RecursionError):
        return None
    if len(elements) != len(request.line_nos):
        return None
    return Accepted(_lines(request), _BadgeIds(elements))


def _lines(request: Request) -> Any:
    import numpy as np

    return np.asarray(request.line_nos, dtype=np.int64)  # the request's own array: no copy


def _import_verdict(line_no: int, status: int, element: Any) -> RecordResult:
    if not isinstance(element, dict):
        return _unconfirmed(line_no, status, f"the record's result is {_kind(element)}")
    errors = element.get("errors")
    if errors:
        return _failed(line_no, errors)
    data = element.get("data")
    if isinstance(data, dict) and data.get("earnedBadgeId") not in (None, ""):
        return RecordResult(line_no, True, api_id=str(data["earnedBadgeId"]))
    return _unconfirmed(line_no, status, "the record's result has no data.earnedBadgeId")


def request_level(request: Request, payload: Any) -> Sequence[RecordResult] | None:
    """The verdict of a request-level envelope ``{data, errors: [{code, message}], warnings}``.

    809 (this requestId was already processed: our own earlier attempt was applied) makes
    every row succeeded; any other code fails every row with its code and message. None when
    the payload carries no top-level errors. The HTTP status does not matter (200 or 4xx).
    """
    if not isinstance(payload, dict) or not payload.get("errors"):
        return None
    if ALREADY_PROCESSED in _codes(payload["errors"]):
        return Accepted(_lines(request))
    code, message = _first_error(payload["errors"])
    return request.fail(code, message)


def unconfirmed(
    line_nos: np.ndarray[Any, Any] | Sequence[int], status: int, why: str
) -> list[RecordResult]:
    """Rows the answer confirms nothing about: failed, not final (sent again if kept)."""
    return [_unconfirmed(n, status, why) for n in line_list(line_nos)]


def _unconfirmed(line_no: int, status: int, why: str) -> RecordResult:
    message = (
        f"HTTP {status}, but {why}: the outcome is unknown (not confirmed by the API); "
        "check the record in Capillary before resending"
    )
    return RecordResult(line_no, False, str(status), message, final=False)


def _failed(line_no: int, errors: Any) -> RecordResult:
    code, message = _first_error(errors)
    return RecordResult(line_no, False, code, message)


def _codes(errors: Any) -> list[str]:
    items = errors if isinstance(errors, list) else [errors]
    return [str(e.get("code")) for e in items if isinstance(e, dict)]


def _first_error(errors: Any) -> tuple[str, str]:
    items = errors if isinstance(errors, list) else [errors]
    codes = [str(e.get("code", "")) for e in items if isinstance(e, dict)]
    messages = [str(e.get("message", "")) for e in items if isinstance(e, dict)]
    return (codes[0] if codes else ""), "; ".join(m for m in messages if m) or "rejected by API"


def _kind(value: Any) -> str:
    return "null" if value is None else f"a JSON {type(value).__name__}"


def _expires_after_event(records: pd.DataFrame) -> pd.Series[Any]:
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    bad = (records["earnExpiresOn"] <= records["earnEventDate"]).to_numpy(dtype=bool)
    told = pa.DictionaryArray.from_arrays(  # no Python string per row
        pa.array(bad.view(np.int8)),
        pa.array(["", "earnExpiresOn: must be after earnEventDate"], type=pa.large_string()),
    ).cast(pa.large_string())
    return pd.Series(pd.array(told, dtype="str"), index=records.index)


EARNED_BADGES = Template(
    name="earned_badges",
    endpoint="/api_gateway/v1/badges/import/customerBadges",
    method="PUT",
    fields={
        "badgeMetaId": "text",
        "customerId": "customer_id",
        "earnEventDate": "epoch_s",
        "earnExpiresOn": "epoch_s",
    },
    build_requests=build_array_requests,
    parse_response=parse_array_response,
    row_rule=_expires_after_event,
    accept_raw=accept_import_answer,
)

# --- the bulk APIs: one request per group, customers listed ---------------------------------


def request_id(file_id: str, template: str, group: tuple[Any, ...], lines: tuple[int, ...]) -> str:
    """Deterministic: the same file content and rows always give the same requestId."""
    text = f"{file_id}|{template}|{group!r}|{lines[0]}-{lines[-1]}:{len(lines)}|{lines!r}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def build_grouped_requests(
    template: Template, records: pd.DataFrame, source: pd.DataFrame, batch_size: int, file_id: str
) -> Iterator[Request]:
    """Rows grouped by `template.group_by` (first appearance order), `batch_size` per request.

    The groups are found over the columns (`_groups`: each distinct value converted once) and
    the requests are those of `build_grouped_requests_slow`, the reference, byte for byte and
    requestId for requestId; it is used where a key column holds a missing value.
    """
    import numpy as np

    if records.empty or template.make_body is None:
        return
    keys = template.group_by
    found = _groups(records, keys, template.all_fields)
    if found is None:
        yield from build_grouped_requests_slow(template, records, source, batch_size, file_id)
        return
    groups, positions_by_group = found
    customers = records["customerId"].to_numpy(dtype=np.int64)
    lines = records.index.to_numpy(dtype=np.int64)
    for group, positions in zip(groups, positions_by_group, strict=True):
        for start in range(0, len(positions), batch_size):
            part = positions[start : start + batch_size]
            part_lines = lines[part]
            part_customers = tuple(customers[part].tolist())
            rid = request_id(file_id, template.name, group, tuple(part_lines.tolist()))
            body = template.make_body(
                dict(zip(keys, group, strict=True)), list(part_customers), rid
            )
            yield Request(part_lines, _dumps(body), source, part_customers, rid)


def _groups(
    records: pd.DataFrame, keys: tuple[str, ...], kinds: dict[str, str]
) -> tuple[list[tuple[Any, ...]], list[Any]] | None:
    """The distinct groups of JSON values of `keys`, in order of first appearance, and the
    row positions of each (in row order); None when a key column holds a missing value.

    Rows are grouped by their values as sent (`to_json_value`), as the reference does: two
    dates that differ below the unit sent are one group."""
    import numpy as np
    import pandas as pd

    combined: Any = np.zeros(len(records), dtype=np.int64)
    for name in keys:
        codes, uniques = pd.factorize(records[name], sort=False)
        if len(codes) and codes.min() < 0:
            return None
        sent = to_json_value(pd.Series(uniques), kinds[name])
        sent_codes, sent_uniques = pd.factorize(pd.Series(sent, dtype=object), sort=False)
        # relabelled at each step, so the codes stay below rows * distinct values
        combined, _ = pd.factorize(combined * len(sent_uniques) + sent_codes[codes], sort=False)
    codes = combined  # numbered in order of first appearance, as a dict keeps its keys
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    positions = np.split(order, bounds)
    firsts = [int(p[0]) for p in positions]
    columns = [to_json_value(records[name].iloc[firsts], kinds[name]) for name in keys]
    return list(zip(*columns, strict=True)), positions


def build_grouped_requests_slow(
    template: Template, records: pd.DataFrame, source: pd.DataFrame, batch_size: int, file_id: str
) -> Iterator[Request]:
    """`build_grouped_requests` value by value (a dict of groups): the reference."""
    import numpy as np

    if records.empty or template.make_body is None:
        return
    kinds = template.all_fields
    keys = template.group_by
    values = {name: to_json_value(records[name], kinds[name]) for name in keys}
    customers = to_json_value(records["customerId"], "customer_id")
    lines = [int(i) for i in records.index]
    groups: dict[tuple[Any, ...], list[int]] = {}
    for position, group in enumerate(zip(*(values[k] for k in keys), strict=True)):
        groups.setdefault(group, []).append(position)
    for group, positions in groups.items():
        for start in range(0, len(positions), batch_size):
            part = positions[start : start + batch_size]
            part_lines = tuple(lines[p] for p in part)
            part_customers = tuple(customers[p] for p in part)
            rid = request_id(file_id, template.name, group, part_lines)
            body = template.make_body(
                dict(zip(keys, group, strict=True)), list(part_customers), rid
            )
            array = np.array(part_lines, dtype=np.int64)
            yield Request(array, _dumps(body), source, part_customers, rid)


def parse_grouped_response(request: Request, status: int, payload: Any) -> Sequence[RecordResult]:
    """``{data: {issuedBadges: [{customerId, issuedId, error}]}, errors, warnings}``.

    A customer counts as succeeded only when its item has an ``issuedId`` and no error, or
    when the request was answered 809 (our earlier attempt was applied; per-customer items
    sent with the 809 are still read, for their errors). Any other top-level error fails every
    row of the request; an answer that confirms nothing leaves the rows `unconfirmed`.
    """
    if not isinstance(payload, dict):
        return unconfirmed(request.line_nos, status, f"the response is {_kind(payload)}")
    applied = ALREADY_PROCESSED in _codes(payload.get("errors") or [])
    data = payload.get("data")
    issued = data.get("issuedBadges") if isinstance(data, dict) else None
    if not applied or not isinstance(issued, list):
        whole = request_level(request, payload)
        if whole is not None:
            return whole
    if not isinstance(issued, list):
        return unconfirmed(request.line_nos, status, "the response has no data.issuedBadges")
    accepted = None if applied else _all_issued(request, issued)
    if accepted is not None:
        return accepted
    return _bulk_verdicts(request, status, issued, applied)


def _bulk_verdicts(
    request: Request, status: int, issued: list[Any], applied: bool
) -> list[RecordResult]:
    """One verdict per line: its customer's next item (matched by customerId)."""
    by_customer: dict[Any, list[dict[str, Any]]] = {}
    for item in issued:
        if isinstance(item, dict):
            by_customer.setdefault(_customer_key(item.get("customerId")), []).append(item)
    results = []
    for line_no, customer in zip(request.lines(), request.customers, strict=True):
        items = by_customer.get(customer)
        item = items.pop(0) if items else None
        results.append(_bulk_verdict(line_no, status, customer, item, applied))
    return results


def _all_issued(request: Request, issued: list[Any]) -> Accepted | None:
    """`Accepted` when the items answer the request's customers one by one, in order, each
    with an issuedId and no error (what the matching by customer would conclude), else None."""
    customers = request.customers
    if len(issued) != len(customers):
        return None
    ids: list[Any] = []
    append = ids.append
    for item, customer in zip(issued, customers, strict=True):
        if type(item) is not dict or item.get("error"):
            return None
        if _customer_key(item.get("customerId")) != customer:
            return None
        issued_id = item.get("issuedId")
        if issued_id is None or issued_id == "":
            return None
        append(issued_id)
    return Accepted(_lines(request), ids)


def _bulk_verdict(
    line_no: int, status: int, customer: int, item: dict[str, Any] | None, applied: bool
) -> RecordResult:
    if item is not None and item.get("error"):
        return _failed(line_no, item["error"])
    issued = item.get("issuedId") if item is not None else None
    if applied or issued not in (None, ""):
        return RecordResult(line_no, True, api_id="" if issued is None else str(issued))
    if item is None:
        return _unconfirmed(line_no, status, f"the response has no result for customer {customer}")
    return _unconfirmed(line_no, status, f"the result for customer {customer} has no issuedId")


def _customer_key(value: Any) -> Any:
    """customerId as sent (an int), also when the answer spells it as a string."""
    if isinstance(value, str) and value.isascii() and value.isdigit():  # not "²": a digit
        with contextlib.suppress(ValueError):  # to isdigit(), not to int(); nor 5000 digits
            return int(value)
    return value


def bulk_template(
    name: str, endpoint: str, date_field: str, date_kind: str, customers_key: str
) -> Template:
    """A bulk badge API: one badge, many customers, triggeredBy {ownerType, referenceId}."""

    def make_body(group: dict[str, Any], customers: list[int], rid: str) -> dict[str, Any]:
        return {
            "badgeMetaId": group["badgeMetaId"],
            customers_key: customers,
            "requestId": rid,
            date_field: group[date_field],
            "triggeredBy": {"ownerType": group["ownerType"], "referenceId": group["referenceId"]},
        }

    return Template(
        name=name,
        endpoint=endpoint,
        method="POST",
        fields={
            "badgeMetaId": "text",
            "customerId": "customer_id",
            date_field: date_kind,
            "ownerType": "owner_type",
            "referenceId": "text",
        },
        build_requests=build_grouped_requests,
        parse_response=parse_grouped_response,
        group_by=("badgeMetaId", date_field, "ownerType", "referenceId"),
        make_body=make_body,
    )


EARN_BADGES_BULK = bulk_template(
    "earn_badges_bulk",
    "/api_gateway/v1/badges/customer/earnBulk",
    date_field="earnEventDate",
    date_kind="iso_ms",
    customers_key="customerIds",
)
ISSUE_BADGES_BULK = bulk_template(
    "issue_badges_bulk",
    "/api_gateway/v1/badges/badgeMeta/customer/issueBulk",
    date_field="issueEventDate",
    date_kind="epoch_s",
    customers_key="customers",
)

TEMPLATES: dict[str, Template] = {
    t.name: t for t in (EARNED_BADGES, EARN_BADGES_BULK, ISSUE_BADGES_BULK)
}
