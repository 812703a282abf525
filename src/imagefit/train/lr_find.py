"""The learning-rate range test (Smith 2015; as fastai's ``lr_find`` and Lightning's
``Tuner.lr_find``): train a fresh model of the config for a few steps while the lr grows
exponentially from ``start`` to ``end``, follow the smoothed loss, stop once it diverges.

The suggestion is Lightning's: the lr where the smoothed loss falls fastest (the most negative
gradient over equal steps in log lr), leaving out the first steps (noise) and the last
(divergence). Nothing of the model is kept: the weights after a ramp to a diverging lr are
worth nothing. What remains is the curve (:mod:`imagefit.workflow` writes it and its plot).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch

from imagefit.config import Config
from imagefit.data.loaders import Loader
from imagefit.datasets.sources import build_data
from imagefit.errors import ConfigError, DataError
from imagefit.evaluate.inference import Precision
from imagefit.models.registry import create_model
from imagefit.models.transfer import apply_strategy, freeze_frozen_norms
from imagefit.train.loop import grad_norm
from imagefit.train.losses import create_criterion
from imagefit.train.optim import create_optimizer
from imagefit.train.runtime import amp_dtype, configure

log = logging.getLogger(__name__)

SMOOTHING = 0.98  # fastai's and Lightning's beta for the loss's running average
SKIP_BEGIN, SKIP_END = 10, 1  # Lightning's defaults for the suggestion


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # each step's raw loss
    smoothed: list[float]  # the bias-corrected running average the suggestion reads
    suggestion: float | None  # None: too few steps before divergence to say
    stopped: str  # why the ramp ended: "end" or what diverged

    def to_json(self) -> dict:
        return asdict(self)


def lr_schedule(start: float, end: float, steps: int) -> np.ndarray:
    """The ``steps`` lrs of the ramp: equal steps in log lr from ``start`` to ``end``."""
    if not 0 < start < end:
        raise ConfigError(f"lr-find: need 0 < --start < --end, got start={start}, end={end}")
    if steps < 2:
        raise ConfigError(f"lr-find: --steps must be at least 2, got {steps}")
    return np.geomspace(start, end, steps)


def suggest(lrs: list[float], smoothed: list[float]) -> float | None:
    """The lr of the steepest fall of ``smoothed`` (Lightning's rule), or None."""
    losses = np.asarray(smoothed[SKIP_BEGIN:-SKIP_END], dtype=np.float64)
    rates = np.asarray(lrs[SKIP_BEGIN:-SKIP_END], dtype=np.float64)
    finite = np.isfinite(losses)
    losses, rates = losses[finite], rates[finite]
    if len(losses) < 2:
        return None
    return float(rates[int(np.argmin(np.gradient(losses)))])


def find_lr(
    cfg: Config,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 100,
    diverge: float = 4.0,
) -> LRFindResult:
    """Run the range test on ``cfg``'s train split and model (``steps`` batches at most)."""
    schedule = lr_schedule(start, end, steps)
    device = configure(cfg.train)
    data = build_data(cfg, device)
    model = create_model(cfg.model.name, len(data.classes), cfg.model.init, cfg.model.drop_rate)
    model = model.to(  # type: ignore[call-overload]
        device,
        memory_format=torch.channels_last if cfg.train.channels_last else torch.preserve_format,
    )
    first_phase = "freeze" if cfg.finetune.freeze_epochs else cfg.finetune.strategy
    apply_strategy(model, first_phase, cfg.finetune.partial_stages)
    dtype = amp_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    precision = Precision(device, dtype, scaler, cfg.train.channels_last)
    optimizer = create_optimizer(model, cfg.optim, cfg.finetune)
    train_labels = [label for _, label in data.manifest.splits["train"]]
    criterion = create_criterion(cfg, train_labels, data.classes).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    freeze_frozen_norms(model)

    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best, stopped = 0.0, math.inf, "end"
    batches = _endless(data.train)
    for step, lr in enumerate(schedule):
        x, targets = next(batches)
        for group in optimizer.param_groups:
            group["lr"] = float(lr) * group.get("lr_scale", 1.0)
        with precision.autocast():
            loss = criterion(model(precision.prepare(x)), targets)
        value = float(loss.detach())  # one sync a step: the stop rule needs the value now
        if not math.isfinite(value):
            stopped = f"the loss became {value} at lr {lr:.3g}"
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * value
        current = average / (1 - SMOOTHING ** (step + 1))
        lrs.append(float(lr))
        losses.append(value)
        smoothed.append(current)
        if step > 0 and current > diverge * best:
            stopped = f"the smoothed loss passed {diverge:g}x its lowest at lr {lr:.3g}"
            break
        best = min(best, current)
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if cfg.train.grad_clip is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm(params, cfg.train.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
    suggestion = suggest(lrs, smoothed)
    if suggestion is None:
        log.warning(
            "lr-find: %d steps before %s; too few to suggest an lr (lower --start or raise "
            "--steps)",
            len(lrs),
            stopped,
        )
    return LRFindResult(lrs, losses, smoothed, suggestion, stopped)


def _endless(loader: Loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Training batches, epoch after epoch (a small dataset has fewer batches in an epoch
    than the ramp has steps)."""
    if len(loader) == 0:
        raise DataError("lr-find: the train split gives no batch")
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1
