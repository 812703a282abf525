"""A multi-label set from real photos: 2x2 mosaics of single-label flower photos, each
labelled with every class it shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

FLOWERS = Path(__file__).resolve().parents[3] / "shared" / "data" / "flowers"
CLASSES = ("daisy", "dandelion", "sunflowers")


def write_mosaics(
    root: Path, count: int = 96, cell: int = 24, seed: int = 0, sep: str = "|"
) -> Path:
    """``root/mosaic_NNN.png`` and ``root/labels.csv`` (path, label with ``sep``); every
    mosaic shows one or two of :data:`CLASSES`, each photo used once."""
    if not FLOWERS.is_dir():
        pytest.skip(f"the real photos are not here: {FLOWERS}")
    rng = np.random.default_rng(seed)
    photos = {name: sorted((FLOWERS / name).iterdir()) for name in CLASSES}
    used = dict.fromkeys(CLASSES, 0)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        shown = sorted(rng.choice(CLASSES, size=int(rng.integers(1, 3)), replace=False))
        cells = list(shown) + list(rng.choice(shown, size=4 - len(shown)))
        rng.shuffle(cells)
        mosaic = Image.new("RGB", (2 * cell, 2 * cell))
        for position, name in enumerate(cells):
            with Image.open(photos[name][used[name]]) as photo:
                tile = ImageOps.fit(photo.convert("RGB"), (cell, cell))
            used[name] += 1
            mosaic.paste(tile, ((position % 2) * cell, (position // 2) * cell))
        target = root / f"mosaic_{index:03d}.png"
        mosaic.save(target)
        rows.append({"path": target.name, "label": sep.join(shown)})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root
