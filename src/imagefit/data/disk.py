"""Batches read from a cached array on disk: the fast path for datasets larger than memory.

The decoded ``(N, S, S, 3)`` uint8 cache is a ``.npy`` file. Instead of holding it (or touching
it through a memory map, whose pages count in the process's resident memory), each batch reads
its rows with ``preadv``: rows sorted by index, every run of consecutive rows in one call
(evaluation batches are a single read), then put back in batch order. The page cache keeps
what is hot; the process holds a few batches, whatever the dataset size
(``benchmarks/memmap_rss.py``). A thread reads ahead while the current batch trains.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from imagefit.errors import DataError

# pixels (B, S, S, 3) uint8, labels (B,) int64 (, a store's valid boxes (B, 2) int64)
Batch = tuple[torch.Tensor, ...]


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) positions of the runs of consecutive values in sorted ``rows``."""
    breaks = (np.flatnonzero(np.diff(rows) != 1) + 1).tolist()
    return list(zip([0, *breaks], [*breaks, len(rows)], strict=True))


class DiskArraySource:
    """Pixels of a memory-mapped ``.npy`` array, gathered from its file batch by batch."""

    def __init__(
        self,
        pixels: np.memmap,
        labels: Sequence[int],
        device: torch.device,
        read_ahead: int = 2,
        boxes: np.ndarray | None = None,
    ):
        """``boxes`` (N, 2): each image's valid (width, height) when ``pixels`` is a training
        store (:mod:`imagefit.data.store`); batches then carry theirs as a third item."""
        if not isinstance(pixels, np.memmap) or pixels.filename is None:
            raise TypeError("DiskArraySource needs a np.memmap of a file (np.load(mmap_mode='r'))")
        self.path, self.offset = str(pixels.filename), int(pixels.offset)
        self.shape = tuple(int(n) for n in pixels.shape[1:])
        self.row_bytes = int(np.prod(self.shape))
        self.count = len(pixels)
        self.memmap = pixels  # only where os.preadv is missing (macOS, Windows)
        self.labels = torch.as_tensor(list(labels), dtype=torch.int64)
        # Pinned host memory lets the copy to a GPU run asynchronously (non_blocking=True).
        self.pin = device.type == "cuda"
        self.read_ahead = read_ahead
        self.boxes = None if boxes is None else torch.as_tensor(boxes, dtype=torch.int64)

    def __len__(self) -> int:
        return self.count

    def read(self, indices: np.ndarray, fd: int | None = None) -> torch.Tensor:
        """Rows ``indices`` (any order, repeats allowed) as a (B, S, S, 3) uint8 tensor."""
        order = np.argsort(indices, kind="stable")
        rows = np.asarray(indices)[order]
        ordered = np.empty((len(rows), *self.shape), dtype=np.uint8)  # in file order
        for start, stop in _runs(rows):
            self._read_run(ordered[start:stop], int(rows[start]), fd)
        out = torch.empty((len(rows), *self.shape), dtype=torch.uint8, pin_memory=self.pin)
        out.numpy()[order] = ordered  # back to batch order
        return out

    def _read_run(self, target: np.ndarray, first: int, fd: int | None) -> None:
        if fd is None or not hasattr(os, "preadv"):
            target[...] = self.memmap[first : first + len(target)]
            return
        wanted = target.nbytes
        # numpy's stubs declare ndarray.__buffer__ for Python >= 3.12 only
        got = os.preadv(fd, [target], self.offset + first * self.row_bytes)  # type: ignore[list-item]
        if got != wanted:
            raise DataError(
                f"{self.path}: image cache file is truncated (row {first}); "
                "delete it to decode again"
            )

    def batches(self, index_batches: Sequence[np.ndarray]) -> Iterator[Batch]:
        fd = os.open(self.path, os.O_RDONLY)
        try:
            # preadv releases the GIL: one thread reads the next batches while this one trains.
            with ThreadPoolExecutor(max_workers=1) as pool:
                yield from self._prefetched(pool, fd, index_batches)
        finally:
            os.close(fd)

    def _prefetched(
        self, pool: ThreadPoolExecutor, fd: int, index_batches: Sequence[np.ndarray]
    ) -> Iterator[Batch]:
        pending: deque[tuple[Future[torch.Tensor], np.ndarray]] = deque()
        todo = iter(index_batches)
        while True:
            while len(pending) < self.read_ahead and (indices := next(todo, None)) is not None:
                pending.append((pool.submit(self.read, indices, fd), indices))
            if not pending:
                return
            future, indices = pending.popleft()
            index = torch.as_tensor(indices, dtype=torch.int64)
            if self.boxes is None:
                yield future.result(), self.labels[index]
            else:
                yield future.result(), self.labels[index], self.boxes[index]
