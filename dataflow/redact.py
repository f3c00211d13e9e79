"""Keep secrets out of logs, errors, reports and files.

Every secret value read from a dataflow file is registered here when the file is loaded;
`redact()` replaces any registered value in a text by ``***``. The logging filter installed by
the CLI applies it to every log record, and the run report and error files pass their free
text (reasons, API messages) through it too. Config models hold secrets as
`pydantic.SecretStr`, which never prints its value; this module is the second line of defence
for texts that come from elsewhere (an exception message, a server's reply).
"""

from __future__ import annotations

import logging
import threading

_lock = threading.Lock()
_secrets: set[str] = set()
_MIN_LEN = 4  # shorter values would redact ordinary words


def register(value: str | None) -> None:
    """Remember `value` (and its lines, for multi-line keys) as a secret to mask."""
    if not value:
        return
    with _lock:
        for part in [value, *value.splitlines()]:
            part = part.strip()
            if len(part) >= _MIN_LEN:
                _secrets.add(part)


def redact(text: str) -> str:
    """Return `text` with every registered secret replaced by ``***``."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that masks registered secrets in the formatted message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
