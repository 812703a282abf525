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
from imagefit.runs.reader import read_metrics

log = logging.getLogger(__name__)


def reported_split(run_dir: Path) -> str:
    """The split a run reports on: what its ``metrics.json`` says (``val`` for a dataset with
    no test split), else ``test``."""
    recorded = (read_metrics(run_dir) or {}).get("split")
    return recorded if isinstance(recorded, str) and recorded else "test"


def evaluate_checkpoint(
    target: str | Path,
    split: str | None = None,
    data_root: str | None = None,
    device: str = "auto",
    limit_batches: int | None = None,
    batch_size: int = 256,
    tta: str = "none",
    allow_untrained: bool = False,
) -> dict[str, Any]:
    """Metrics (compute_metrics' dict, plus 'split', 'checkpoint' and 'trained') of ``target``
    on ``split`` (default: the split the run reports on, see :func:`reported_split`).

    A run folder's ledger is checked first: ``changed_files`` lists the files of the split whose
    content differs from what the run was trained and tested with (warned), and an evaluation
    of the test split is counted (``test_evaluations``). ``tta`` other than none adds
    ``"tta": {"mode", "accuracy", "top5_accuracy", "f1_macro", "loss"}`` beside the plain
    metrics (one pass over the data computes both).
    """
    checkpoint = resolve_checkpoint(target)
    run_dir = checkpoint.parent
    split = split or reported_split(run_dir)
    predictions, meta, manifest = split_predictions(
        target, split, data_root, device, limit_batches, batch_size, allow_untrained, tta=tta
    )
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
        "trained": meta["trained"],
        "skipped_files": predictions.skipped,
        **extra,
        **metrics,
    }
