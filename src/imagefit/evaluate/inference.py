"""Running a model over a loader: the device, the precision and the one ``evaluate`` loop.

Validation during training, ``imagefit eval`` and the sweeps all call :func:`evaluate`, so a
number means the same wherever it is printed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from imagefit.data.loaders import Loader
from imagefit.data.multilabel import multi_hot
from imagefit.errors import ConfigError
from imagefit.evaluate.tta import average_logits, view_count, views


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


Evaluated = tuple[np.ndarray, np.ndarray, float]  # (targets (N,), logits (N, C), mean CE)


def evaluate(
    model: nn.Module,
    loader: Loader,
    precision: Precision,
    desc: str = "eval",
    multilabel: bool = False,
    tta: str = "none",
) -> Evaluated:
    """(targets (N,), logits (N, C) float32, mean loss) over the whole loader.

    ``multilabel``: targets are bit sets of the classes (data.multilabel) and the loss is the
    binary cross-entropy per class (mean over images and classes). ``tta``
    (:data:`imagefit.evaluate.tta.VIEWS`): the logits are those of the averaged probabilities
    over the views of each batch.
    """
    return evaluate_modes(model, loader, precision, (tta,), desc, multilabel)[tta]


@torch.no_grad()
def evaluate_modes(
    model: nn.Module,
    loader: Loader,
    precision: Precision,
    modes: Sequence[str] = ("none",),
    desc: str = "eval",
    multilabel: bool = False,
) -> dict[str, Evaluated]:
    """:func:`evaluate` under several TTA modes, in one pass over the data: ``{mode: result}``."""
    if multilabel and set(modes) != {"none"}:
        raise ConfigError("TTA averages softmax probabilities: not for multi-label models")
    counts = {mode: view_count(mode) for mode in modes}
    widest = max(counts, key=counts.__getitem__)
    model.eval()
    all_logits: dict[str, list[torch.Tensor]] = {mode: [] for mode in modes}
    all_targets = []
    loss_sums = {
        mode: torch.zeros((), dtype=torch.float64, device=precision.device) for mode in modes
    }
    for x, targets in tqdm(
        loader.epoch(0),
        total=len(loader),
        desc=desc,
        unit="batch",
        leave=False,
        disable=bars_disabled(),
    ):
        outputs = []
        for view in views(widest, x):
            with precision.autocast():
                outputs.append(model(precision.prepare(view)).float())
        for mode in modes:
            logits = average_logits(outputs[: counts[mode]])
            loss_sums[mode] += _loss_sum(logits, targets, multilabel)
            all_logits[mode].append(logits)
        all_targets.append(targets)
    if not all_targets:
        empty = (np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), float("nan"))
        return dict.fromkeys(modes, empty)
    targets_np = torch.cat(all_targets).cpu().numpy()
    return {
        mode: (
            targets_np,
            torch.cat(all_logits[mode]).cpu().numpy(),
            float(loss_sums[mode]) / len(targets_np),
        )
        for mode in modes
    }


def _loss_sum(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """The batch's summed loss in float64: cross-entropy, or for multi-label the binary
    cross-entropy averaged over the classes."""
    if multilabel:
        hot = multi_hot(targets, logits.shape[1])
        total = F.binary_cross_entropy_with_logits(logits, hot, reduction="sum").double()
        return total / logits.shape[1]
    return F.cross_entropy(logits, targets, reduction="sum").double()
