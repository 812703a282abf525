"""``evaluate_checkpoint``: metrics of a trained model on a split, through the one eval path."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from imagefit.config import Config, config_from_dict
from imagefit.data.loaders import Loader, make_source
from imagefit.data.splits import SplitManifest, resolve_splits
from imagefit.errors import DataError
from imagefit.evaluate.inference import Precision, evaluate, select_device
from imagefit.evaluate.metrics import compute_metrics
from imagefit.models.trained import load_trained, resolve_checkpoint
from imagefit.runs.layout import RunLayout

log = logging.getLogger(__name__)


def _manifest(cfg: Config, checkpoint: Path, data_root: str | None) -> SplitManifest:
    """The run's own split when it is known (so 'test' means the held-out files), else a
    fresh split of ``data_root`` with the run's split settings."""
    saved = RunLayout(checkpoint.parent).split
    if saved.is_file():
        return SplitManifest.load(saved, data_root)
    root = data_root or cfg.data.root
    if not root:
        raise DataError(
            f"{checkpoint}: no {saved.name} beside it and no data root: pass --data ROOT"
        )
    return resolve_splits(root, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed)


def evaluate_checkpoint(
    target: str | Path,
    split: str = "test",
    data_root: str | None = None,
    device: str = "auto",
    limit_batches: int | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Metrics (compute_metrics' dict, plus 'split' and 'checkpoint') of ``target`` on ``split``."""
    checkpoint = resolve_checkpoint(target)
    dev = select_device(device)
    model, meta, config = load_trained(checkpoint, dev)
    cfg = config_from_dict(config, source=str(checkpoint))
    manifest = _manifest(cfg, checkpoint, data_root)
    if manifest.classes != meta["classes"]:
        raise DataError(
            f"the data's classes {manifest.classes} differ from the model's {meta['classes']}"
        )
    samples = manifest.splits.get(split) or []
    if not samples:
        raise DataError(f"{manifest.root}: split '{split}' is empty or absent")
    size = meta["image_size"]
    skipped: dict[str, str] = {}
    source, _ = make_source(cfg.data, samples, size, dev, skipped)
    loader = Loader(
        source, batch_size, dev, mean=meta["mean"], std=meta["std"], limit=limit_batches
    )
    precision = Precision(dev, channels_last=cfg.train.channels_last)
    targets, logits, loss = evaluate(model, loader, precision, desc=split)
    metrics = compute_metrics(targets, logits, meta["classes"], loss)
    return {"split": split, "checkpoint": str(checkpoint), "skipped_files": len(skipped), **metrics}
