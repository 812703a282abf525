"""Class imbalance: per-class counts, loss weights and per-sample sampling weights.

Both remedies read the train split only (validation and test must keep their natural class
mix, or their metrics stop describing the data the model will meet):

- ``train.class_weights=balanced``: the loss of class ``c`` is weighted by
  ``n / (k * count[c])``, scikit-learn's ``compute_class_weight('balanced')``;
- ``data.sampler=balanced``: each epoch draws ``n`` indices with replacement, every class
  equally likely (see :meth:`imagefit.data.loaders.Loader.index_batches`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from imagefit.errors import DataError

log = logging.getLogger(__name__)


def class_counts(labels: Sequence[int], num_classes: int) -> np.ndarray:
    """(num_classes,) int64: how many samples each class has."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def imbalance_ratio(counts: Sequence[int]) -> float:
    """Largest over smallest class count (inf when a class is empty; 1.0 means balanced)."""
    array = np.asarray(counts)
    if array.size == 0:
        return 1.0
    return float("inf") if array.min() == 0 else float(array.max() / array.min())


def _require_all_classes(counts: np.ndarray, classes: Sequence[str], what: str) -> None:
    empty = [classes[int(i)] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DataError(
            f"{what}: the train split has no images of class(es) {empty}, so they cannot be "
            "balanced; add images or drop the class folders"
        )


def balanced_class_weights(labels: Sequence[int], classes: Sequence[str]) -> np.ndarray:
    """(num_classes,) float32 loss weights ``n / (k * count[c])`` (sklearn's 'balanced')."""
    from sklearn.utils.class_weight import compute_class_weight

    counts = class_counts(labels, len(classes))
    _require_all_classes(counts, classes, "train.class_weights=balanced")
    weights = compute_class_weight(
        "balanced", classes=np.arange(len(classes)), y=np.asarray(labels)
    )
    shown = ", ".join(f"{name} {w:.3g}" for name, w in zip(classes, weights, strict=True))
    log.info("class weights (balanced): %s", shown)
    return weights.astype(np.float32)


def balanced_sample_weights(labels: Sequence[int], classes: Sequence[str]) -> np.ndarray:
    """(n,) float64 probabilities summing to 1: every class gets the same total mass."""
    label_array = np.asarray(labels, dtype=np.int64)
    counts = class_counts(labels, len(classes))
    _require_all_classes(counts, classes, "data.sampler=balanced")
    weights = 1.0 / counts[label_array]
    return weights / weights.sum()
