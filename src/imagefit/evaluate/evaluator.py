"""``evaluate_checkpoint``: metrics of a trained model on a split, through the one eval path."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from imagefit.evaluate.ledger import note_test_use, split_changes
from imagefit.evaluate.metrics import compute_metrics
from imagefit.evaluate.predictions import split_predictions
from imagefit.evaluate.tta import TTA_METRICS
from imagefit.models.trained import resolve_checkpoint
from imagefit.runs.layout import RunLayout

log = logging.getLogger(__name__)


def evaluate_checkpoint(
    target: str | Path,
    split: str = "test",
    data_root: str | None = None,
    device: str = "auto",
    limit_batches: int | None = None,
    batch_size: int = 256,
    tta: str = "none",
) -> dict[str, Any]:
    """Metrics (compute_metrics' dict, plus 'split' and 'checkpoint') of ``target`` on ``split``.

    A run folder's ledger is checked first: ``changed_files`` lists the files of the split whose
    content differs from what the run was trained and tested with (warned), and an evaluation
    of the test split is counted (``test_evaluations``). ``tta`` other than none adds
    ``"tta": {"mode", "accuracy", "top5_accuracy", "f1_macro", "loss"}`` beside the plain
    metrics (one pass over the data computes both).
    """
    predictions, _, manifest = split_predictions(
        target, split, data_root, device, limit_batches, batch_size, tta
    )
    checkpoint = resolve_checkpoint(target)
    run_dir = checkpoint.parent
    changes = split_changes(run_dir, manifest, split)
    if changes.any:
        log.warning(
            "%s: the files of the '%s' split changed since the run trained: %s",
            run_dir,
            split,
            changes.describe(),
        )
    metrics = compute_metrics(
        predictions.labels, predictions.logits, predictions.classes, predictions.loss
    )
    extra: dict[str, Any] = {
        "changed_files": changes.changed + changes.missing if changes.recorded else None
    }
    if split == "test" and RunLayout(run_dir).split.is_file() and limit_batches is None:
        extra["test_evaluations"] = note_test_use(run_dir, "eval")
    if tta != "none":
        logits, loss = predictions.with_tta[tta]
        with_tta = compute_metrics(predictions.labels, logits, predictions.classes, loss)
        extra["tta"] = {"mode": tta, **{k: with_tta[k] for k in TTA_METRICS}}
    return {
        "split": split,
        "checkpoint": str(checkpoint),
        "skipped_files": predictions.skipped,
        **extra,
        **metrics,
    }
