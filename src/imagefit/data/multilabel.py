"""Multi-label targets as one integer per image: bit k set when the image shows class k.

The split manifest, the image cache, the loaders and the distributed gathers all carry one
integer label per image; a bit set lets a multi-label dataset travel through them unchanged
(``split.json`` stays ``[path, integer]``, a split of the same file and seed is the same
split), and the multi-hot (B, K) matrix is made where a loss or a metric needs it. An int64
holds 63 bits: :data:`MAX_CLASSES` classes, far more than label files of this size have.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

MAX_CLASSES = 62  # bit 63 is the sign of an int64


def encode(indices: Iterable[int]) -> int:
    """The bit set of class ``indices``."""
    code = 0
    for index in indices:
        code |= 1 << index
    return code


def decode(code: int, num_classes: int) -> list[int]:
    """The class indices of the bit set ``code``, ascending."""
    return [k for k in range(num_classes) if code >> k & 1]


def multi_hot(codes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B,) int64 bit sets -> (B, K) float 0/1 targets on the same device."""
    bits = torch.arange(num_classes, device=codes.device)
    return ((codes.long().unsqueeze(1) >> bits) & 1).float()


def multi_hot_np(codes: np.ndarray, num_classes: int) -> np.ndarray:
    """(N,) int bit sets -> (N, K) int 0/1 matrix."""
    bits = np.arange(num_classes, dtype=np.int64)
    return (np.asarray(codes, dtype=np.int64)[:, None] >> bits) & 1
