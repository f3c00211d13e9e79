"""An API answer's body as JSON, the way the parsed path reads it (`http_write`).

JSON as RFC 8259 defines it: UTF-8, no NaN or Infinity, no trailing comma, no lone
surrogate. orjson reads almost every answer. It also refuses a number beyond a double (an
exponent like ``1e400`` in a warning, a 400-digit integer), which the struct decoder of
all-success answers (`dataflow.templates.accept_import_answer`, msgspec) skips unread in a
field it does not decode: such a body is read again here, by msgspec (numbers beyond a
double as infinity) and, for an integer msgspec will not convert (past Python's 4300 digits
for ``int()``), by the standard library. So the parsed path accepts at least what the struct
decoder accepts, and a far-off number does not make an answer unreadable.

The second reading runs in a thread of its own: both parsers count nesting against Python's
recursion limit from the current stack, and a fresh thread's stack is shallower than the
event loop's, where the struct decoder ran, so a body the struct decoder could nest through
is never too deep here.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

NOT_JSON: Any = object()  # a body that is not JSON


def read(content: bytes) -> Any:
    """The parsed body: None when empty, `NOT_JSON` when it is not JSON."""
    import orjson

    try:
        return orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        pass
    found: list[Any] = [NOT_JSON]
    reader = threading.Thread(target=lambda: found.__setitem__(0, _again(content)))
    reader.start()
    reader.join()
    return found[0]


def _again(content: bytes) -> Any:
    import msgspec

    try:
        return msgspec.json.Decoder(float_hook=float).decode(content)
    except msgspec.ValidationError:  # an integer too long for int(): the standard library
        return _standard(content)
    except (msgspec.DecodeError, RecursionError):
        return NOT_JSON
    except Exception as exc:  # MemoryError, say: the body stays unread, and it is said
        log.error("an answer's body could not be read as JSON: %s", type(exc).__name__)
        return NOT_JSON


def _standard(content: bytes) -> Any:
    import json

    try:
        payload = json.loads(
            content.decode(),  # strict UTF-8, unlike json.loads of bytes (which guesses)
            parse_constant=_no_constant,
            parse_int=_integer,
        )
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
        return NOT_JSON
    return payload if _all_text(payload) else NOT_JSON


def _all_text(payload: Any) -> bool:
    """No lone surrogate (a ``\\ud800`` escape) in any key or text: msgspec and orjson refuse
    them, and such a value could not be written to a UTF-8 file."""
    pending = [payload]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str) and not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                return False
    return True


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _integer(text: str) -> Any:
    """An integer literal; past Python's 4300-digit limit for int(), the float it is (inf)."""
    return int(text) if len(text) <= 4300 else float(text)
