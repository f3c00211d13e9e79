"""A process-wide stop request: set by SIGTERM/SIGINT, read between requests.

When set, the pipeline stops handing requests to the destination, lets the requests in
flight finish (their results are checkpointed), and leaves the file for the next run.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

STOP = threading.Event()


def install_handlers() -> None:
    """SIGTERM and SIGINT request a clean stop (a second SIGINT interrupts at once)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if STOP.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning(
            "received %s: finishing the requests in flight, then stopping",
            signal.Signals(signum).name,
        )
        STOP.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
