"""Per-image predictions of a trained run on one split: which file, its label, the logits.

Metrics summarise; comparing two runs image by image (McNemar, flipped predictions),
calibrating, and showing mistakes need the predictions themselves. :func:`split_predictions`
computes them from a checkpoint and the run's ``split.json`` through the one evaluation path
(the loaders and :func:`imagefit.train.loop.evaluate`), so they work for any finished run;
:func:`save_test_predictions` is the post-run step that stores the test split's as
``RUN/test_predictions.npz`` (plain arrays, loaded without pickle).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imagefit.config import Config, config_from_dict
from imagefit.data.cache import file_digest
from imagefit.data.loaders import Loader, make_source
from imagefit.data.sources import resolve_data
from imagefit.data.splits import SplitManifest
from imagefit.data.store import PixelSpec
from imagefit.errors import DataError
from imagefit.evaluate.inference import Precision, evaluate_modes, select_device
from imagefit.fileio import atomic_open
from imagefit.models.trained import load_trained, resolve_checkpoint
from imagefit.runs import layout
from imagefit.runs.layout import RunLayout

log = logging.getLogger(__name__)


@dataclass
class SplitPredictions:
    """Logits of a model on the files of one split, in the split's order (bad files left out)."""

    split: str
    root: str  # the dataset root the paths are relative to
    classes: list[str]
    paths: list[str]  # (N,) posix paths relative to ``root``
    labels: np.ndarray  # (N,) int64
    logits: np.ndarray  # (N, C) float32
    checkpoint_sha256: str = ""
    loss: float | None = None
    skipped: int = 0  # files of the split that could not be decoded
    # {TTA mode: (logits (N, C), mean cross-entropy)} when asked for besides the plain ones
    with_tta: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)

    @property
    def predicted(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels

    def probabilities(self, temperature: float = 1.0) -> np.ndarray:
        """Softmax of ``logits / temperature`` in float64, (N, C)."""
        z = self.logits.astype(np.float64) / temperature
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def file(self, i: int) -> Path:
        return Path(self.root) / self.paths[i]

    def save(self, path: str | Path) -> Path:
        with atomic_open(path, "wb", what="the predictions") as handle:
            np.savez(
                handle,
                split=np.array(self.split),
                root=np.array(self.root),
                classes=np.array(self.classes),
                paths=np.array(self.paths),
                labels=self.labels,
                logits=self.logits,
                checkpoint_sha256=np.array(self.checkpoint_sha256),
            )
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> SplitPredictions:
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    split=str(data["split"]),
                    root=str(data["root"]),
                    classes=[str(c) for c in data["classes"]],
                    paths=[str(p) for p in data["paths"]],
                    labels=data["labels"].astype(np.int64),
                    logits=data["logits"].astype(np.float32),
                    checkpoint_sha256=str(data["checkpoint_sha256"]),
                )
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path}: not a predictions file ({exc})") from None


def run_manifest(checkpoint: Path, cfg: Config, data_root: str | None) -> SplitManifest:
    """The run's own split when it is known (so 'test' means the held-out files), else a
    fresh split of ``data_root`` with the run's split settings."""
    saved = RunLayout(checkpoint.parent).split
    if saved.is_file():
        return SplitManifest.load(saved, data_root)
    root = data_root or cfg.data.root
    if not root:
        raise DataError(
            f"{checkpoint}: no {layout.SPLIT} beside it and no data root: pass --data ROOT"
        )
    # The run's own source (folders or a label file), moved to ``root`` when one is given.
    return resolve_data(cfg.data.model_copy(update={"root": root})).manifest


def split_predictions(
    target: str | Path,
    split: str = "test",
    data_root: str | None = None,
    device: str = "auto",
    limit_batches: int | None = None,
    batch_size: int = 256,
    allow_untrained: bool = False,
    tta: str = "none",
) -> tuple[SplitPredictions, dict[str, Any], SplitManifest]:
    """(predictions on ``split``, the checkpoint's meta, the manifest) of a run or checkpoint.

    ``tta`` other than none: its logits too (``with_tta``), from the same pass over the data.
    """
    checkpoint = resolve_checkpoint(target)
    dev = select_device(device)
    model, meta, config = load_trained(checkpoint, dev, allow_untrained)
    cfg = config_from_dict(config, source=str(checkpoint))
    manifest = run_manifest(checkpoint, cfg, data_root)
    if manifest.classes != meta["classes"]:
        raise DataError(
            f"the data's classes {manifest.classes} differ from the model's {meta['classes']}"
        )
    samples = manifest.splits.get(split) or []
    if not samples:
        present = [name for name in ("test", "val", "train") if manifest.splits.get(name)]
        hint = f"; it has {', '.join(present)}: use --split {present[0]}" if present else ""
        raise DataError(f"{manifest.root}: split '{split}' is empty or absent{hint}")
    skipped: dict[str, str] = {}
    spec = PixelSpec.from_meta(meta, cfg.data.decoder)  # the run's evaluation pixels
    source, kept = make_source(cfg.data, samples, meta["image_size"], dev, skipped, spec=spec)
    loader = Loader(
        source, batch_size, dev, mean=meta["mean"], std=meta["std"], limit=limit_batches
    )
    precision = Precision(dev, channels_last=cfg.train.channels_last)
    multilabel = meta.get("task") == "multilabel"
    if multilabel and tta != "none":
        raise DataError(f"{checkpoint}: TTA averages softmax probabilities; not for multi-label")
    modes = ("none", tta) if tta != "none" else ("none",)
    evaluated = evaluate_modes(model, loader, precision, modes, split, multilabel)
    targets, logits, loss = evaluated["none"]
    kept = kept[: len(targets)]  # --limit-batches evaluates a prefix
    if len(kept) != len(targets):
        raise DataError(f"{checkpoint}: {len(targets)} predictions for {len(kept)} files")
    predictions = SplitPredictions(
        split=split,
        root=str(manifest.root),
        classes=list(meta["classes"]),
        paths=[path.relative_to(manifest.root).as_posix() for path, _ in kept],
        labels=targets.astype(np.int64),
        logits=logits.astype(np.float32),
        checkpoint_sha256=file_digest(checkpoint).hex(),
        loss=loss,
        skipped=len(skipped),
        with_tta={mode: (z.astype(np.float32), ce) for mode, (_, z, ce) in evaluated.items()},
    )
    predictions.with_tta.pop("none")
    return predictions, meta, manifest


def run_test_predictions(run_dir: str | Path, data_root: str | None = None) -> SplitPredictions:
    """The run's test predictions: ``RUN/test_predictions.npz`` when it belongs to the current
    ``best.pt``, else computed from ``best.pt`` and ``split.json`` (and saved)."""
    checkpoint = resolve_checkpoint(run_dir)
    saved = RunLayout(checkpoint.parent).test_predictions
    if saved.is_file() and data_root is None:
        stored = SplitPredictions.load(saved)
        if stored.checkpoint_sha256 == file_digest(checkpoint).hex():
            return stored
        log.info("%s: made by another checkpoint; computing them again", saved)
    predictions, _, _ = split_predictions(checkpoint, "test", data_root)
    predictions.save(saved)
    return predictions


def save_test_predictions(run_dir: str | Path) -> Path:
    """Post-run step: write ``RUN/test_predictions.npz`` (path, label, logits per test image)."""
    run_test_predictions(run_dir)
    return RunLayout(resolve_checkpoint(run_dir).parent).test_predictions
