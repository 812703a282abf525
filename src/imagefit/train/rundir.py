"""The run folder: ``output.dir/output.name/`` with config, history, metrics and checkpoints.

``config.yaml`` is written first, before any data is read, so even a run that fails at once
leaves a record of what was asked.
"""

from __future__ import annotations

import csv
import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from imagefit.config import Config, save_config

# seed 000's columns first, in honest names (its "test" columns were validation).
HISTORY_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy"]


def create_run_dir(cfg: Config) -> Path:
    """Make a new, unique run folder and write ``config.yaml`` into it."""
    base = Path(cfg.output.dir)
    name = cfg.output.name or f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, suffix = base / name, 1
    while run_dir.exists():
        suffix += 1
        run_dir = base / f"{name}-{suffix}"
    run_dir.mkdir(parents=True)
    if run_dir.name != name:
        cfg.output.name = run_dir.name
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    write_json(run_dir / "history.json", history)
    extra = [k for row in history for k in row if k not in HISTORY_COLUMNS]
    columns = HISTORY_COLUMNS + list(dict.fromkeys(extra))
    tmp = run_dir / ".history.csv.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in history:
            writer.writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )
    tmp.replace(run_dir / "history.csv")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: torch.device, seed: int) -> dict[str, Any]:
    """What produced a result: versions, commit, device, seed, command line."""
    packages: dict[str, str | None] = {}
    for name in ("imagefit", "torch", "torchvision", "timm", "numpy", "pillow", "scikit-learn"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": packages,
        "git_commit": _git_commit(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor(),
        "threads": torch.get_num_threads(),
        "seed": seed,
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
