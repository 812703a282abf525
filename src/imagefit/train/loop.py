"""The two loops: ``train_one_epoch`` and ``evaluate``.

Running sums stay on the device (no per-step ``.item()`` for metrics); the one host sync per
step is the finiteness check, which must happen before ``optimizer.step()`` to keep the weights
of the last good step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from imagefit.data.loaders import Loader
from imagefit.errors import TrainingStopped
from imagefit.models.transfer import freeze_frozen_norms


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


@dataclass
class EpochProgress:
    """Where an epoch stands: resumable from ``batch`` with these running sums."""

    batch: int = 0
    loss_sum: float = 0.0
    correct: float = 0.0
    count: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.count)

    @property
    def accuracy(self) -> float:
        return self.correct / max(1, self.count)


def train_one_epoch(
    model: nn.Module,
    loader: Loader,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    precision: Precision,
    epoch: int,
    progress: EpochProgress,
    grad_clip: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> EpochProgress:
    """Train from ``progress.batch`` to the end of the epoch (or until ``should_stop``)."""
    model.train()
    freeze_frozen_norms(model)
    params = [p for p in model.parameters() if p.requires_grad]
    device = precision.device
    sums = torch.tensor([progress.loss_sum, progress.correct], dtype=torch.float64, device=device)
    count = progress.count
    bar = tqdm(loader.epoch(epoch, progress.batch), total=len(loader), initial=progress.batch,
               desc=f"epoch {epoch + 1}", unit="batch", leave=False, disable=None)  # fmt: skip
    for step, (x, targets) in enumerate(bar, start=progress.batch):
        with precision.autocast():
            logits = model(precision.prepare(x))
            loss = criterion(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        if precision.scaler is not None:
            precision.scaler.scale(loss).backward()
            precision.scaler.unscale_(optimizer)
        else:
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip or math.inf)
        finite = torch.isfinite(loss.detach()) & (torch.isfinite(norm) | (precision.scaler is not None))
        if not bool(finite):
            what = "loss" if not torch.isfinite(loss) else "gradient norm"
            raise TrainingStopped(
                f"non-finite {what} at epoch {epoch + 1}, step {step + 1} (loss={loss.item()}, "
                f"grad norm={norm.item()}); stopped before the optimizer step, so the weights "
                "are those of the last good step"
            )
        if precision.scaler is not None:
            precision.scaler.step(optimizer)
            precision.scaler.update()
        else:
            optimizer.step()
        hard = targets.argmax(1) if targets.ndim == 2 else targets
        sums += torch.stack([loss.detach().double() * len(x),
                             (logits.argmax(1) == hard).sum().double()])  # fmt: skip
        count += len(x)
        progress.batch = step + 1
        if should_stop() and progress.batch < len(loader):
            progress.interrupted = True
            break
    progress.loss_sum, progress.correct = (float(v) for v in sums.tolist())
    progress.count = count
    return progress


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: Loader, precision: Precision, desc: str = "eval"
) -> tuple[np.ndarray, np.ndarray, float]:
    """(targets (N,), logits (N, C) float32, mean cross-entropy) over the whole loader."""
    model.eval()
    all_logits, all_targets = [], []
    loss_sum = torch.zeros((), dtype=torch.float64, device=precision.device)
    for x, targets in tqdm(loader.epoch(0), total=len(loader), desc=desc, unit="batch",
                           leave=False, disable=None):  # fmt: skip
        with precision.autocast():
            logits = model(precision.prepare(x)).float()
        loss_sum += nn.functional.cross_entropy(logits, targets, reduction="sum").double()
        all_logits.append(logits)
        all_targets.append(targets)
    if not all_logits:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), float("nan")
    logits_np = torch.cat(all_logits).cpu().numpy()
    targets_np = torch.cat(all_targets).cpu().numpy()
    return targets_np, logits_np, float(loss_sum) / len(targets_np)
