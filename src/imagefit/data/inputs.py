"""Images a user hands over, as model inputs: files and folders expanded to image files, and
uint8 pixels normalised exactly as the training loaders do.

``predict``, ``explain``, export verification and serving all start here, so every path that
turns a user's files into logits sees the numbers evaluation sees.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from imagefit.data.images import is_image_file


def normalise(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32, exactly as the training loaders compute it.

    The Loader subtracts ``mean * 255`` and divides by ``std * 255`` in float32; doing the
    same (rather than ``x / 255`` first) keeps the logits bit-identical to evaluation.
    """
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float()
    m = torch.tensor(mean).view(1, -1, 1, 1) * 255
    s = torch.tensor(std).view(1, -1, 1, 1) * 255
    return ((x - m) / s).contiguous().numpy()


Problem = tuple[Path, str, str]  # (path, message, kind) of an input that is no image file


def expand_images(images: Iterable[str | Path]) -> list[Path | Problem]:
    """Files as given, folders as their image files (recursive, sorted); a missing path or an
    image-less folder becomes a :data:`Problem`."""
    found: list[Path | Problem] = []
    for item in map(Path, images):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file() and is_image_file(p))
            found.extend(files or [(item, f"{item}: folder holds no image files", "no_images")])
        elif item.exists():
            found.append(item)
        else:
            found.append((item, f"{item}: file not found", "missing"))
    return found
