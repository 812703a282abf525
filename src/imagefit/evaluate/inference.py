"""Running a model over a loader: the device, the precision and the one ``evaluate`` loop.

Validation during training, ``imagefit eval`` and the sweeps all call :func:`evaluate`, so a
number means the same wherever it is printed.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from imagefit.data.loaders import Loader
from imagefit.data.multilabel import multi_hot
from imagefit.errors import ConfigError


def select_device(name: str = "auto") -> torch.device:
    """``auto``: cuda, then mps, then cpu. An explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"train.device '{name}' is not a device name (auto, cpu, cuda, mps)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device '{name}': no CUDA device is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device '{name}': MPS is not available")
    return device


def bars_disabled() -> bool | None:
    """No progress bars on the other processes of a distributed run (None: tqdm decides)."""
    return True if int(os.environ.get("RANK", "0")) > 0 else None


@dataclass
class Precision:
    """How to run forward passes: autocast dtype, grad scaler, memory format."""

    device: torch.device
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    channels_last: bool = False

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Loader,
    precision: Precision,
    desc: str = "eval",
    multilabel: bool = False,
) -> tuple[np.ndarray, np.ndarray, float]:
    """(targets (N,), logits (N, C) float32, mean cross-entropy) over the whole loader.

    ``multilabel``: targets are bit sets of the classes (data.multilabel) and the loss is the
    binary cross-entropy per class (mean over images and classes)."""
    model.eval()
    all_logits, all_targets = [], []
    loss_sum = torch.zeros((), dtype=torch.float64, device=precision.device)
    for x, targets in tqdm(
        loader.epoch(0),
        total=len(loader),
        desc=desc,
        unit="batch",
        leave=False,
        disable=bars_disabled(),
    ):
        with precision.autocast():
            logits = model(precision.prepare(x)).float()
        if multilabel:
            hot = multi_hot(targets, logits.shape[1])
            loss_sum += (
                nn.functional.binary_cross_entropy_with_logits(
                    logits, hot, reduction="sum"
                ).double()
                / logits.shape[1]
            )
        else:
            loss_sum += nn.functional.cross_entropy(logits, targets, reduction="sum").double()
        all_logits.append(logits)
        all_targets.append(targets)
    if not all_logits:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), float("nan")
    logits_np = torch.cat(all_logits).cpu().numpy()
    targets_np = torch.cat(all_targets).cpu().numpy()
    return targets_np, logits_np, float(loss_sum) / len(targets_np)
