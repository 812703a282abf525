"""Pixels for exported models: the training loaders' normalisation, and real images of a run.

Export verification, INT8 calibration, ``predict`` and the MLflow input example all turn files
into model inputs here, through the run's evaluation pixels (``PixelSpec.from_meta``: its
``image_size``, ``crop_pct`` and ``interpolation``) and the same arithmetic as :class:`imagefit.data.loaders.Loader`, so every path sees identical numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imagefit.data.folder import Sample
from imagefit.data.splits import SplitManifest
from imagefit.data.store import PixelSpec
from imagefit.errors import DataError
from imagefit.runs.layout import RunLayout

log = logging.getLogger(__name__)


def run_manifest(run_dir: Path) -> SplitManifest | None:
    """The run's ``split.json``, or None when the folder has none (a bare checkpoint)."""
    path = RunLayout(run_dir).split
    if not path.is_file():
        return None
    return SplitManifest.load(path)


def spread(samples: Sequence[Sample], count: int) -> list[Sample]:
    """``count`` samples evenly spaced over ``samples`` (sorted by class: covers every class)."""
    if len(samples) <= count:
        return list(samples)
    picks = np.linspace(0, len(samples) - 1, count).round().astype(int)
    return [samples[i] for i in picks]


def load_samples(samples: Sequence[Sample], spec: PixelSpec | int) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``samples`` to (N, S, S, 3) uint8 and (N,) labels; unreadable files are skipped.

    ``spec``: the evaluation pixels (an int: the side, crop_pct 1, bilinear)."""
    spec = spec if isinstance(spec, PixelSpec) else PixelSpec(spec)
    size = spec.size
    arrays, labels = [], []
    for path, label in samples:
        try:
            arrays.append(spec.array(path))
        except DataError as exc:
            log.warning("skipped: %s", exc)
            continue
        labels.append(label)
    if not arrays:
        return np.empty((0, size, size, 3), np.uint8), np.empty(0, np.int64)
    return np.stack(arrays), np.asarray(labels, dtype=np.int64)


def split_samples(
    run_dir: Path, splits: Sequence[str], count: int | None = None
) -> tuple[str, list[Sample]]:
    """The first of ``splits`` that the run's split.json holds: (its name, up to ``count`` files)."""
    manifest = run_manifest(run_dir)
    for name in splits:
        items = manifest.splits.get(name) if manifest else None
        if items:
            return name, spread(items, count) if count else list(items)
    return "", []


def real_inputs(
    run_dir: Path, splits: Sequence[str], count: int, size: PixelSpec | int
) -> tuple[str, np.ndarray, np.ndarray]:
    """(split name, pixels, labels) of up to ``count`` real images of the run; empty if none."""
    name, samples = split_samples(run_dir, splits, count)
    pixels, labels = load_samples(samples, size)
    return (name if len(pixels) else ""), pixels, labels
