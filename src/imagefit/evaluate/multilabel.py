"""Multi-label metrics and per-class decision thresholds.

An image may show any number of classes: each class has its own sigmoid score and its own
threshold, tuned on validation to maximise that class's F1 (one shared 0.5 favours the
frequent classes). Ranking quality, which needs no threshold, is mAP: the mean over classes
of scikit-learn's ``average_precision_score``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
)

from imagefit.data.multilabel import multi_hot_np

DEFAULT_THRESHOLD = 0.5  # a class never seen positive on val keeps it


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(logits, dtype=np.float64), -60, 60)))


def tune_thresholds(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per class, the score threshold that maximises F1 on (``truth`` (N, K), ``scores``)."""
    thresholds = np.full(truth.shape[1], DEFAULT_THRESHOLD)
    for k in range(truth.shape[1]):
        if truth[:, k].sum() == 0:
            continue
        precision, recall, cuts = precision_recall_curve(truth[:, k], scores[:, k])
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        thresholds[k] = float(cuts[int(np.argmax(f1[:-1]))])  # the last point has no cut
    return thresholds


def multilabel_metrics(
    codes: Any,
    logits: Any,
    class_names: Sequence[str],
    loss: float | None = None,
    thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Metrics of bit-set targets ``codes`` (N,) against ``logits`` (N, K).

    ``thresholds`` None: tuned here (validation); given: applied (test, with val's).
    """
    k = len(class_names)
    truth = multi_hot_np(np.asarray(codes), k)
    scores = sigmoid(logits)
    cuts = tune_thresholds(truth, scores) if thresholds is None else np.asarray(thresholds)
    predicted = (scores >= cuts).astype(np.int64)
    present = truth.sum(0) > 0  # AP of a class without positives is undefined
    ap = np.full(k, np.nan)
    for j in np.flatnonzero(present):
        ap[j] = average_precision_score(truth[:, j], scores[:, j])
    per_class_p = precision_score(truth, predicted, average=None, zero_division=0)
    per_class_r = recall_score(truth, predicted, average=None, zero_division=0)
    return {
        "task": "multilabel",
        "num_samples": len(truth),
        "loss": loss,
        "map": float(np.nanmean(ap)) if present.any() else None,
        "f1_micro": float(f1_score(truth, predicted, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "subset_accuracy": float((predicted == truth).all(1).mean()),
        "accuracy": float((predicted == truth).all(1).mean()),  # summaries' column: exact match
        "thresholds": [float(c) for c in cuts],
        "per_class": {
            name: {
                "precision": float(per_class_p[j]),
                "recall": float(per_class_r[j]),
                "ap": None if np.isnan(ap[j]) else float(ap[j]),
                "support": int(truth[:, j].sum()),
                "threshold": float(cuts[j]),
            }
            for j, name in enumerate(class_names)
        },
    }


def frequency_baseline_map(train_codes: Any, codes: Any, num_classes: int) -> float:
    """The mAP of scoring every image by the classes' train frequency: what a model must beat.

    A constant score ranks all images alike, so each class's AP is its positive rate."""
    truth = multi_hot_np(np.asarray(codes), num_classes)
    prior = multi_hot_np(np.asarray(train_codes), num_classes).mean(0)
    scores = np.tile(prior, (len(truth), 1))
    aps = [
        average_precision_score(truth[:, j], scores[:, j])
        for j in range(num_classes)
        if truth[:, j].any()
    ]
    return float(np.mean(aps))
