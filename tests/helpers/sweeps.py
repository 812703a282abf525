"""Sweep files for tests: a tiny base config, a sweep file beside it, a small Optuna search."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def base_tree(root: Path, **train: Any) -> dict[str, Any]:
    """simple_cnn at 16 px, 1 epoch of at most 2 batches: a trial in well under a second."""
    return {
        "data": {"root": str(root), "image_size": 16, "num_workers": 0},
        "model": {"name": "simple_cnn"},
        "optim": {"name": "adam", "lr": 0.003},
        "train": {"epochs": 1, "batch_size": 8, "threads": 1, "limit_batches": 2, **train},
    }


def write_sweep(
    folder: Path, sweep: dict[str, Any], base: dict[str, Any] | None, name: str = "s.sweep.yaml"
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if base is not None:
        (folder / "base.yaml").write_text(yaml.safe_dump(base))
    path = folder / name
    path.write_text(yaml.safe_dump({"base": "base.yaml", "out": str(folder / "out"), **sweep}))
    return path


def read(path: Path) -> Any:
    return json.loads(path.read_text())


def search_sweep(root: Path, pruner: dict[str, Any], n_trials: int) -> dict[str, Any]:
    return {
        "search": {
            "n_trials": n_trials,
            "metric": "val_accuracy",
            "pruner": pruner,
            "sampler": {"type": "tpe", "seed": 0},
            "params": {
                "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                "optim.name": {"type": "categorical", "choices": ["adam", "sgd"]},
            },
        }
    }
