"""Progress inside an epoch when no progress bar is shown.

tqdm draws its bar only on a terminal; with stderr redirected to a file (a batch job, ``nohup``,
a container's log) an epoch of an hour would show nothing until it ends. Then a log line is
written every ``IMAGEFIT_PROGRESS_EVERY_S`` seconds (default 30; 0 turns it off): epoch, batch
i/n, images/s and the running loss.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("imagefit.train")

ENV = "IMAGEFIT_PROGRESS_EVERY_S"
DEFAULT_EVERY_S = 30.0


def progress_interval() -> float:
    """Seconds between progress lines, from the environment (a bad value: the default)."""
    raw = os.environ.get(ENV, "")
    try:
        return max(0.0, float(raw)) if raw.strip() else DEFAULT_EVERY_S
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %g", ENV, raw, DEFAULT_EVERY_S)
        return DEFAULT_EVERY_S


class ProgressLog:
    """Call :meth:`step` after each batch; it logs when ``every_s`` have passed since the last
    line. The running loss is read (one host sync) only when a line is written."""

    def __init__(
        self,
        epoch: int,
        batches: int,
        start_batch: int,
        active: bool,
        every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.every_s = progress_interval() if every_s is None else every_s
        self.active = active and self.every_s > 0
        self.epoch, self.batches, self.clock = epoch, batches, clock
        self.started = self.last = clock()
        self.start_batch = start_batch
        self.images = 0

    def step(self, batch: int, images: int, loss_sum: Any, count: int) -> None:
        """``batch`` batches done in the epoch, ``images`` more since the last call; the
        epoch's running loss is ``loss_sum / count`` (``loss_sum`` may be a device tensor)."""
        self.images += images
        if not self.active:
            return
        now = self.clock()
        if now - self.last < self.every_s:
            return
        self.last = now
        rate = self.images / max(now - self.started, 1e-9)
        log.info(
            "epoch %d: batch %d/%d (%.0f%%), %.1f images/s, loss %.4f",
            self.epoch + 1,
            batch,
            self.batches,
            100 * batch / max(1, self.batches),
            rate,
            float(loss_sum) / max(1, count),
        )
