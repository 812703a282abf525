"""scikit-learn's digits (1,797 real 8x8 handwritten digits, shipped offline) as an ImageFolder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(out: str | Path, scale: int = 4) -> Path:
    """Write ``out/<digit>/<index:04d>.png`` (grey, 8x8 scaled by ``scale`` with nearest).

    Existing complete output is reused; the files are deterministic.
    """
    from sklearn.datasets import load_digits

    out = Path(out)
    digits = load_digits()
    marker = out / ".complete"
    if marker.is_file():
        return out
    for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        pixels = np.clip(np.rint(image * (255.0 / 16.0)), 0, 255).astype(
            np.uint8
        )  # 0..16 -> 0..255
        picture = Image.fromarray(pixels, mode="L").resize(
            (8 * scale, 8 * scale), Image.Resampling.NEAREST
        )
        target = out / str(label) / f"{index:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        picture.save(target)
    marker.write_text(f"{len(digits.images)} images\n", encoding="utf-8")
    return out
