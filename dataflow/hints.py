"""The "did you mean" hint, one implementation for every message that names a choice."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


def did_you_mean(value: str, known: Sequence[str], *, listing: str = "expected one of") -> str:
    """``; did you mean 'x'?`` for a close match, else ``; <listing>: a, b, c``."""
    close = difflib.get_close_matches(value, list(known), n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    return f"; {listing}: {', '.join(known)}"
