"""Optimizers and learning-rate schedules, looked up by name.

Parameter groups come from timm (no weight decay on biases and norms; optional layer-wise lr
decay). Every parameter is in the optimizer from the start, frozen or not, so a two-stage run
only flips ``requires_grad`` when it unfreezes: frozen parameters have no gradient and the
optimizer skips them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from imagefit.config import FinetuneConfig, OptimConfig, ScheduleConfig
from imagefit.errors import ConfigError


def _fused_capable() -> list[str]:
    """Device types with fused kernels in this torch (its own list, which it checks at step())."""
    from torch.utils import _foreach_utils

    return getattr(_foreach_utils, "_get_fused_kernels_supported_devices", lambda: ["cuda"])()


# factory(param groups, config, **kernel options such as fused=True) -> optimizer
OptimizerFactory = Callable[..., torch.optim.Optimizer]
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "adam": lambda groups, c, **kw: torch.optim.Adam(
        groups, lr=c.lr, betas=c.betas, eps=c.eps, **kw
    ),
    "adamw": lambda groups, c, **kw: torch.optim.AdamW(
        groups, lr=c.lr, betas=c.betas, eps=c.eps, **kw
    ),
    "sgd": lambda groups, c, **kw: torch.optim.SGD(
        groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0, **kw
    ),
}
# Devices with fused Adam/AdamW/SGD kernels (CPU since torch 2.4). On a CPU they are ~20x
# faster than torch's default per-tensor loop for a ResNet-18 (benchmarks/fit_vs_loop.py).
FUSED_DEVICES = (
    ("cuda", "cpu") if tuple(map(int, torch.__version__.split(".")[:2])) >= (2, 4) else ("cuda",)
)


def _lookup(registry: dict[str, Any], name: str, key: str) -> Any:
    if name not in registry:
        raise ConfigError(f"{key} '{name}' is not one of: {', '.join(sorted(registry))}")
    return registry[name]


def kernel_options(implementation: str, device: torch.device) -> dict[str, bool]:
    """The optimizer keyword for ``optim.implementation`` on ``device``: fused, foreach or loop."""
    if implementation == "auto":
        implementation = "fused" if device.type in FUSED_DEVICES else "foreach"
    elif implementation == "fused" and device.type not in _fused_capable():
        raise ConfigError(
            f"optim.implementation 'fused': torch has no fused optimizer kernels "
            f"for {device.type}; use auto or foreach"
        )
    return {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[
        implementation
    ]


def create_optimizer(
    model: nn.Module, optim: OptimConfig, finetune: FinetuneConfig
) -> torch.optim.Optimizer:
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    factory = _lookup(OPTIMIZERS, optim.name, "optim.name")
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(True)  # timm's grouping skips frozen tensors; we want all of them
    try:
        if finetune.layer_decay is not None:
            groups = param_groups_layer_decay(
                model, optim.weight_decay, layer_decay=finetune.layer_decay
            )
        else:
            groups = param_groups_weight_decay(model, optim.weight_decay)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(trainable[n])
    for group in groups:
        group.setdefault("lr_scale", 1.0)
    device = next(model.parameters()).device
    return factory(groups, optim, **kernel_options(optim.implementation, device))


# A schedule is the lr multiplier of an epoch (0-based) of `epochs`: f(epoch, epochs, cfg).
SHAPES: dict[str, Callable[[int, int, ScheduleConfig], float]] = {
    "none": lambda e, n, c: 1.0,
    "cosine": lambda e, n, c: (
        c.min_lr_factor
        + (1 - c.min_lr_factor)
        * 0.5
        * (1 + math.cos(math.pi * max(0, e - c.warmup_epochs) / max(1, n - c.warmup_epochs)))
    ),
    "step": lambda e, n, c: c.gamma ** (e // c.step_size),
    "plateau": lambda e, n, c: 1.0,  # the plateau factor is state, kept by LRSchedule
}


class LRSchedule:
    """Per-epoch lr: base lr x warmup x shape x plateau reductions x unfreeze factor.

    Everything but the plateau state is a pure function of the epoch, so resuming needs only
    ``state_dict()``; the lr is written into each param group scaled by its ``lr_scale``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        cfg: ScheduleConfig,
        base_lr: float,
        epochs: int,
        mode: str = "max",
    ):
        self.shape = _lookup(SHAPES, cfg.name, "schedule.name")
        self.optimizer, self.cfg, self.base_lr, self.epochs, self.mode = (
            optimizer,
            cfg,
            base_lr,
            epochs,
            mode,
        )
        self.plateau_factor, self.bad_epochs = 1.0, 0
        self.best: float | None = None
        self.phase_factor = 1.0

    def lr_at(self, epoch: int) -> float:
        c = self.cfg
        warm = 1.0
        if epoch < c.warmup_epochs:
            warm = c.warmup_start_factor + (1 - c.warmup_start_factor) * epoch / c.warmup_epochs
        shape = self.shape(epoch, self.epochs, c)
        return self.base_lr * warm * shape * self.plateau_factor * self.phase_factor

    def start_epoch(self, epoch: int) -> float:
        lr = self.lr_at(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def end_epoch(self, metric: float | None) -> None:
        """Plateau bookkeeping on the monitored metric (ignored by other schedules)."""
        if self.cfg.name != "plateau" or metric is None:
            return
        improved = self.best is None or (
            metric > self.best if self.mode == "max" else metric < self.best
        )
        if improved:
            self.best, self.bad_epochs = metric, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.cfg.plateau_patience:
            self.plateau_factor *= self.cfg.plateau_factor
            self.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "plateau_factor": self.plateau_factor,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "phase_factor": self.phase_factor,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_factor, self.best = state["plateau_factor"], state["best"]
        self.bad_epochs, self.phase_factor = state["bad_epochs"], state["phase_factor"]
