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

log = logging.getLogger(__name__)


class SoftTargetCrossEntropy(nn.Module):
    """Cross-entropy against soft targets (B, K) (mixup/cutmix), optionally class-weighted.

    With weights ``w`` the loss is ``sum_i sum_k w_k t_ik (-log p_ik) / sum_i sum_k w_k t_ik``,
    which for one-hot targets equals ``nn.CrossEntropyLoss(weight=w)``.
    """

    def __init__(self, weight: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B, K)
        if self.weight is None:
            return -(targets * log_probs).sum(-1).mean()
        weighted = targets * self.weight  # (B, K)
        return -(weighted * log_probs).sum() / weighted.sum()


def create_criterion(cfg: Config, train_labels: Sequence[int], classes: Sequence[str]) -> nn.Module:
    """The loss ``cfg`` asks for; ``train.class_weights=balanced`` reads ``train_labels``."""
    weight = None
    if cfg.train.class_weights == "balanced":
        weight = torch.from_numpy(balanced_class_weights(train_labels, classes))
    if cfg.data.augment and (cfg.augment.mixup > 0 or cfg.augment.cutmix > 0):
        return SoftTargetCrossEntropy(weight)  # mixup targets are soft, label smoothing included
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.train.label_smoothing)
