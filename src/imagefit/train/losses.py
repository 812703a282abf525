"""The training loss: cross-entropy with label smoothing, soft targets and class weights.

Validation and test losses stay unweighted (``evaluate`` computes plain cross-entropy), so
``val_loss`` means the same with and without ``train.class_weights``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from imagefit.config import Config
from imagefit.data.balance import balanced_class_weights
from imagefit.data.multilabel import multi_hot

log = logging.getLogger(__name__)


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against soft targets (B, K) (mixup/cutmix), optionally class-weighted and
    label-smoothed.

    ``smoothing`` eps mixes the targets with the uniform distribution, ``s_ik = (1 - eps) t_ik
    + eps / K``. With weights ``w`` the loss is
    ``sum_i sum_k w_k s_ik (-log p_ik) / sum_i sum_k w_k t_ik``: normalised by the weight of
    the unsmoothed targets, as ``nn.CrossEntropyLoss`` normalises by ``sum_i w_(y_i)``, so for
    one-hot targets it equals ``nn.CrossEntropyLoss(weight=w, label_smoothing=eps)``. Without
    weights it is the batch mean of ``sum_k s_ik (-log p_ik)``.
    """

    weight: torch.Tensor | None  # a buffer (register_buffer), None without class weights

    def __init__(self, weight: torch.Tensor | None = None, smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= smoothing <= 1.0:
            raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
        self.smoothing = smoothing
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B, K)
        smoothed = targets
        if self.smoothing > 0:
            smoothed = targets * (1 - self.smoothing) + self.smoothing / targets.shape[-1]
        if self.weight is None:
            return -(smoothed * log_probs).sum(-1).mean()
        return -(smoothed * self.weight * log_probs).sum() / (targets * self.weight).sum()


class MultiLabelLoss(nn.Module):
    """A multi-label loss on bit-set targets (B,) (:mod:`imagefit.data.multilabel`).

    ``bce``: binary cross-entropy per class, the mean over images and classes. ``asl``: timm's
    asymmetric loss (Ridnik et al. 2021), divided by the batch size: timm returns the sum over
    the batch, which would scale the step with the batch size.
    """

    def __init__(self, num_classes: int, kind: str = "bce"):
        super().__init__()
        from timm.loss import AsymmetricLossMultiLabel

        self.num_classes, self.kind = num_classes, kind
        self.asl = AsymmetricLossMultiLabel() if kind == "asl" else None

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hot = multi_hot(targets, self.num_classes) if targets.ndim == 1 else targets.float()
        if self.asl is not None:
            return self.asl(logits.float(), hot) / len(logits)
        return nn.functional.binary_cross_entropy_with_logits(logits.float(), hot)


def create_criterion(cfg: Config, train_labels: Sequence[int], classes: Sequence[str]) -> nn.Module:
    """The loss ``cfg`` asks for; ``train.class_weights=balanced`` reads ``train_labels``."""
    if cfg.data.task == "multilabel":  # the config refuses weights, smoothing, mixup there
        return MultiLabelLoss(len(classes), cfg.train.loss)
    weight = None
    if cfg.train.class_weights == "balanced":
        weight = torch.from_numpy(balanced_class_weights(train_labels, classes))
    if cfg.data.augment and (cfg.augment.mixup > 0 or cfg.augment.cutmix > 0):
        # mixup/cutmix targets are soft (B, K): the loss smooths them
        return SoftTargetCrossEntropy(weight, smoothing=cfg.train.label_smoothing)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.train.label_smoothing)
