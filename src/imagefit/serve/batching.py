"""Dynamic batching: concurrent requests share one ONNX Runtime call.

Requests put their already decoded input on an asyncio queue; one task takes the first
waiting input, gathers more until ``max_batch`` or ``max_wait_ms`` after the first, and runs
the batch in a worker thread so the event loop keeps accepting and decoding meanwhile. While
one batch runs, the next one fills up, so under load batches grow without any added wait.
``max_batch=1`` is one request, one call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

log = logging.getLogger(__name__)

Item = tuple[np.ndarray, asyncio.Future]


class Batcher:
    """``await batcher.submit(x)`` -> the logits row of ``x`` (3, S, S) float32."""

    def __init__(
        self,
        infer: Callable[[np.ndarray], np.ndarray],
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        self.infer = infer
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_wait_ms) / 1000
        self.on_batch = on_batch  # (batch size, seconds of inference), for metrics
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self._busy = False  # a batch taken off the queue is not answered yet
        # One thread: ONNX Runtime parallelises inside a call; two calls would compete for cores.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagefit-infer")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="imagefit-batcher")

    async def stop(self) -> None:
        """Stop after the inputs already queued are answered."""
        while not self._queue.empty() or self._busy:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.shutdown(wait=True)

    async def submit(self, x: np.ndarray) -> np.ndarray:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((x, future))
        return await future

    async def _gather(self) -> list[Item]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            try:  # whatever is already waiting joins without a wait
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            self._busy = True
            try:
                await self._answer(loop, batch)
            finally:
                self._busy = False

    async def _answer(self, loop: asyncio.AbstractEventLoop, batch: list[Item]) -> None:
        live = [(x, f) for x, f in batch if not f.cancelled()]  # client gone: skip its input
        if not live:
            return
        started = time.perf_counter()
        try:
            logits = await loop.run_in_executor(
                self._pool, self.infer, np.stack([x for x, _ in live])
            )
        except Exception as exc:  # every waiting request must get an answer
            log.exception("inference failed for a batch of %d", len(live))
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(len(live), time.perf_counter() - started)
        for (_, future), row in zip(live, logits, strict=True):
            if not future.done():
                future.set_result(row)
