"""SIGINT/SIGTERM: the first asks the loop to stop after the current step and save; a second
one exits at once."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class StopFlag:
    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None


@contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """Install the handlers for the duration of a run (main thread only; else a no-op flag)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, _frame: object) -> None:
        if flag:
            log.error("second signal: exiting now")
            os._exit(128 + signum)
        flag.signal = signum
        log.warning(
            "%s received: finishing this step, then saving a resumable checkpoint",
            signal.Signals(signum).name,
        )

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
