"""The training loop: ``train_one_epoch`` (its twin, ``evaluate``, is in :mod:`imagefit.evaluate.inference`).

Running sums stay on the device (no per-step ``.item()`` for metrics); the one host sync per
step is the finiteness check, which must happen before ``optimizer.step()`` to keep the weights
of the last good step. The stop request travels in the same small tensor, so that in a
distributed run one all-reduce per step makes every process agree on both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from imagefit.data.loaders import Loader
from imagefit.data.multilabel import multi_hot
from imagefit.errors import TrainingStopped
from imagefit.evaluate.inference import Precision, bars_disabled
from imagefit.models.transfer import freeze_frozen_norms
from imagefit.train.losses import MultiLabelLoss
from imagefit.train.progress import ProgressLog

# (step finite: 0-dim bool tensor, stop requested here) -> (finite on every process, stop
# requested on any): what all processes of a distributed run agree on, in one all-reduce.
StepAgreement = Callable[[torch.Tensor, bool], tuple[bool, bool]]


def grad_norm(params: Sequence[torch.Tensor], clip: float | None) -> torch.Tensor | None:
    """Total L2 norm of the gradients (None without any), clipping them to ``clip`` if set.

    Without a clip only the norm is computed: ``clip_grad_norm_(params, inf)`` also multiplied
    every gradient by 1.0, a second pass over all of them on every step.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    if clip is not None:
        return nn.utils.clip_grad_norm_(params, clip)
    if not hasattr(nn.utils, "get_total_norm"):  # torch < 2.6
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    # One C++ loop over the tensors instead of one Python call each (small models feel it).
    foreach = True if grads[0].device.type in ("cpu", "cuda") else None
    return nn.utils.get_total_norm(grads, foreach=foreach)


def step_is_finite(loss: torch.Tensor, norm: torch.Tensor | None) -> torch.Tensor:
    """0-dim bool on the device, without a host sync: loss and gradient norm are finite.

    ``norm`` is None under a grad scaler without clipping: the scaler skips steps with
    non-finite gradients itself (and lowers its scale).
    """
    probe = loss.detach().float()
    if norm is not None:
        probe = probe * 0 + norm  # inf * 0 is nan: one test covers both
    return torch.isfinite(probe)


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


def accumulation_group(step: int, batches: int, accum_steps: int) -> tuple[int, bool]:
    """(micro-batches in the accumulation group of ``step``, ``step`` is its last one).

    Groups restart each epoch; the last one of an epoch may be shorter (``batches`` not a
    multiple of ``accum_steps``), and its losses are then divided by its own length, so every
    optimizer step follows the mean gradient of the micro-batches it saw (as timm does).
    """
    first = step - step % accum_steps
    size = min(accum_steps, batches - first)
    return size, step + 1 == first + size


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
    agree: StepAgreement | None = None,
    accum_steps: int = 1,
    after_step: Callable[[], None] | None = None,
) -> EpochProgress:
    """Train from ``progress.batch`` to the end of the epoch (or until ``should_stop``).

    ``agree`` makes the processes of a distributed run take the same decisions each step.
    One optimizer step per ``accum_steps`` micro-batches; ``after_step`` runs after each
    optimizer step (the weight average). A stop may come between the micro-batches of one
    step: the gradients summed so far stay in ``.grad`` for the checkpoint to keep.
    """
    model.train()
    freeze_frozen_norms(model)
    params = [p for p in model.parameters() if p.requires_grad]
    # Running sums on the device (float64; MPS has none); read once, at the end.
    kind = torch.float32 if precision.device.type == "mps" else torch.float64
    loss_sum = torch.tensor(progress.loss_sum, dtype=kind, device=precision.device)
    correct = torch.tensor(progress.correct, dtype=kind, device=precision.device)
    count = progress.count
    batches = len(loader)
    # DDP all-reduces gradients in backward(); inside no_sync() it only sums them locally.
    no_sync = getattr(model, "no_sync", None)
    bar = tqdm(
        loader.epoch(epoch, progress.batch),
        total=batches,
        initial=progress.batch,
        desc=f"epoch {epoch + 1}",
        unit="batch",
        leave=False,
        disable=bars_disabled(),
    )
    # No bar (output redirected): a log line every so often instead; rank 0 speaks for all.
    ticker = ProgressLog(
        epoch, len(loader), progress.batch, bool(bar.disable) and not bars_disabled()
    )
    for step, (x, targets) in enumerate(bar, start=progress.batch):
        group, last = accumulation_group(step, batches, accum_steps)
        if step % accum_steps == 0:
            optimizer.zero_grad(set_to_none=True)
        sync = no_sync() if no_sync is not None and not last else contextlib.nullcontext()
        with sync:
            with precision.autocast():
                logits = model(precision.prepare(x))
                loss = criterion(logits, targets)
            scaler = precision.scaler
            scaled = loss / group if group > 1 else loss
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        norm = None
        if last:
            if scaler is not None and grad_clip is not None:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            # With a scaler and no clip the norm is never needed: the scaler checks gradients.
            if scaler is None or grad_clip is not None:
                norm = grad_norm(params, grad_clip)
        step_finite = step_is_finite(loss, norm)
        finite, stop = (
            agree(step_finite, should_stop()) if agree else (bool(step_finite), should_stop())
        )
        if not finite:  # the one host sync of a step: before the step, to keep good weights
            what = "loss" if not torch.isfinite(loss) else "gradient norm"
            raise TrainingStopped(
                f"non-finite {what} at epoch {epoch + 1}, step {step + 1} (loss={loss.item()}, "
                f"grad norm={norm.item() if norm is not None else None}); stopped before the "
                "optimizer step, so the weights are those of the last good step"
            )
        if last:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            if after_step is not None:
                after_step()
        loss_sum.add_(loss.detach(), alpha=len(x))
        correct.add_(_correct(logits.detach(), targets, criterion))
        count += len(x)
        progress.batch = step + 1
        ticker.step(progress.batch, len(x), loss_sum, count)
        if stop and progress.batch < batches:
            progress.interrupted = True
            break
    progress.loss_sum, progress.correct = float(loss_sum), float(correct)
    progress.count = count
    return progress


def _correct(logits: torch.Tensor, targets: torch.Tensor, criterion: nn.Module) -> torch.Tensor:
    """Images guessed right: the top class; multi-label, every class right at score 0.5."""
    if isinstance(criterion, MultiLabelLoss):
        hot = multi_hot(targets, logits.shape[1]) if targets.ndim == 1 else targets
        return ((logits > 0) == (hot > 0.5)).all(1).sum()
    hard = targets.argmax(1) if targets.ndim == 2 else targets
    return (logits.argmax(1) == hard).sum()
