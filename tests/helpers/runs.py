"""Run folders for tests: one made by hand (no training), one trained for real in seconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from imagefit.evaluate.metrics import compute_metrics
from imagefit.train.fit import fit

from conftest import tiny_config


def fake_predictions(num_classes: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(classes, targets (N,), logits (N, C)) of a model that is mostly right: 6 images a class."""
    rng = np.random.default_rng(seed)
    classes = [f"class_{i:03d}" for i in range(num_classes)]
    targets = np.repeat(np.arange(num_classes), 6)
    logits = rng.normal(size=(len(targets), num_classes))
    logits[np.arange(len(targets)), targets] += 2.0  # mostly right, some mistakes
    return classes, targets, logits


def write_run(
    run_dir: Path,
    num_classes: int = 10,
    epochs: int = 5,
    seed: int = 0,
    lr: float = 0.001,
    model: str = "resnet18",
    files: set[str] | None = None,
) -> Path:
    """A run folder as the trainer leaves it (without checkpoints), made by hand."""
    classes, targets, logits = fake_predictions(num_classes, seed)
    history = [
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "train_accuracy": 1 - 0.5 / e,
            "val_loss": 2.2 / e,
            "val_accuracy": 1 - 0.6 / e,
            "lr": lr * 0.5 ** (e - 1),
            "time_s": 1.5,
        }
        for e in range(1, epochs + 1)
    ]
    contents: dict[str, Any] = {
        "config.yaml": yaml.safe_dump(
            {
                "model": {"name": model, "pretrained": True},
                "optim": {"name": "adamw", "lr": lr},
                "data": {"image_size": 64, "root": "data/x"},
            }
        ),
        "history.json": json.dumps(history),
        "metrics.json": json.dumps(
            {"split": "test", **compute_metrics(targets, logits, classes, 0.9)}
        ),
        "summary.json": json.dumps(
            {
                "name": run_dir.name,
                "model": model,
                "params_total": 11_689_512,
                "params_trainable": 5_000,
                "epochs_run": epochs,
                "best_epoch": epochs,
                "best_val_accuracy": history[-1]["val_accuracy"],
                "wall_time_s": 3725.0,
                "train_images_per_s": 812.5,
                "status": "finished",
            }
        ),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, text in contents.items():
        if files is None or name in files:
            (run_dir / name).write_text(text, encoding="utf-8")
    return run_dir


def write_evidence(
    run_dir: Path,
    photos: Path,
    num_classes: int = 10,
    seed: int = 0,
    test_evaluations: int = 1,
) -> Path:
    """The post-run files of a :func:`write_run` folder, made by hand: ``test_predictions.npz``
    (the same predictions as its metrics), ``calibration.json``, ``ledger.json`` and a
    ``gallery/`` whose entries point at the real photos under ``photos``."""
    from PIL import Image

    from imagefit.evaluate.calibration import calibration_report
    from imagefit.evaluate.predictions import SplitPredictions

    classes, targets, logits = fake_predictions(num_classes, seed)
    files = sorted(photos.rglob("*.jpg"))
    SplitPredictions(
        split="test",
        root=str(photos),
        classes=classes,
        paths=[f"img_{i:03d}.jpg" for i in range(len(targets))],
        labels=targets,
        logits=logits.astype(np.float32),
    ).save(run_dir / "test_predictions.npz")
    report = calibration_report(logits, targets, 1.7)
    calibration = {
        "temperature": 1.7,
        "fitted_on": {"split": "val", "images": 40},
        "val": report,
        "test": report,
    }
    (run_dir / "calibration.json").write_text(json.dumps(calibration), encoding="utf-8")
    uses = [{"time": "2026-01-01T00:00:00", "by": "fit"}] * test_evaluations
    (run_dir / "ledger.json").write_text(json.dumps({"test_evaluations": uses}))
    gallery = run_dir / "gallery"
    (gallery / "overlays").mkdir(parents=True, exist_ok=True)
    predicted = logits.argmax(1)
    wrong = np.flatnonzero(predicted != targets)[:6]
    entries = []
    for n, i in enumerate(wrong):
        overlay = f"overlays/{n:03d}.png"
        Image.new("RGB", (32, 32), (200, 40 * (n % 6), 0)).save(gallery / overlay)
        entries.append(
            {
                "file": str(files[n % len(files)]),
                "true": classes[targets[i]],
                "predicted": classes[predicted[i]],
                "probability": 0.9 - 0.05 * n,
                "overlay": overlay,
            }
        )
    doc = {
        "layer": "layer4",
        "test_images": len(targets),
        "mistakes_total": int((predicted != targets).sum()),
        "mistakes": entries,
        "confused_pairs": [
            {"true": e["true"], "predicted": e["predicted"], "count": 1, "examples": [e]}
            for e in entries[:2]
        ],
    }
    (gallery / "gallery.json").write_text(json.dumps(doc), encoding="utf-8")
    return run_dir


def train_digits_run(out: Path, digits_root: Path) -> Path:
    """SimpleCNN on digits at 32 px, 3 short epochs (seconds): a real run folder to ship."""
    cfg = tiny_config(
        digits_root,
        out,
        data={"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
        augment={"hflip": 0.0},
        train={"epochs": 3, "batch_size": 32, "limit_batches": 12},
    )
    run = fit(cfg).run_dir
    # limit_batches also capped the test evaluation; the export checks use whole splits.
    return run
