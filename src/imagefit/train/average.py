"""The exponential moving average of the weights (``train.ema_decay``), and which to keep.

timm's ``ModelEmaV3`` does the averaging (foreach lerp over parameters and buffers, decay
warmup ``1 - (1 + step)^(-2/3)`` capped at the decay, so early averages are not dominated by
the random init). It holds no step counter of its own: the caller passes the run's optimizer
step count, which the checkpoint keeps, so a resumed run averages exactly as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn


class WeightAverage:
    """The averaged copy of ``model`` (``.module``, kept in eval mode), updated per step."""

    def __init__(self, model: nn.Module, decay: float):
        # fp32 average whatever the autocast: bf16 cannot hold (1 - decay) x update
        self._ema = ModelEmaV3(model, decay=decay, use_warmup=True)

    @property
    def module(self) -> nn.Module:
        return self._ema.module

    def update(self, model: nn.Module, step: int) -> None:
        """After optimizer step number ``step`` (1-based, over the run)."""
        self._ema.update(model, step=step)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._ema.module.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self._ema.module.load_state_dict(state)


def better_weights(row: Mapping[str, Any], monitor: str, mode: str) -> tuple[float | None, str]:
    """(the epoch's monitored value, "raw" or "ema"): the weight average when its column
    (``<monitor>_ema``) is better than the raw weights', else the raw weights.

    Early stopping, plateau schedules and ``best.pt`` then follow the better of the two, so
    the average counts as soon as it helps and costs nothing when it does not.
    """
    raw, ema = row.get(monitor), row.get(f"{monitor}_ema")
    if ema is None or raw is None:
        return raw, "raw"
    better = ema > raw if mode == "max" else ema < raw
    return (ema, "ema") if better else (raw, "raw")
