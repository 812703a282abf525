"""Transfer strategies: which parameters train (``full``, ``freeze``, ``partial``).

Stages come from timm's ``group_matcher`` (stem, then each stage, then the head), so
``partial`` means the same thing for every architecture: the last N stages plus the head.
Batch-norm layers whose parameters are all frozen are also kept in eval mode, so their running
statistics stay those of the pretrained weights.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from imagefit.errors import ConfigError
from imagefit.models.weights import head_names


def stage_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names grouped by stage, stem first and the head last."""
    from timm.models import group_parameters

    group_matcher = getattr(model, "group_matcher", None)  # timm's interface
    if group_matcher is None:
        raise ConfigError(f"{type(model).__name__} has no stage grouping; use strategy full")
    groups = group_parameters(model, group_matcher(coarse=True))
    ordered = [groups[key] for key in sorted(groups)]
    head = head_names(model)
    body = [[n for n in g if n not in head] for g in ordered]
    return [g for g in body if g] + [sorted(n for n, _ in model.named_parameters() if n in head)]


def trainable_names(model: nn.Module, strategy: str, partial_stages: int = 2) -> set[str]:
    names = [n for n, _ in model.named_parameters()]
    if strategy == "full":
        return set(names)
    groups = stage_groups(model)
    head, body = groups[-1], groups[:-1]
    if strategy == "freeze":
        return set(head)
    if strategy == "partial":
        if partial_stages > len(body):
            raise ConfigError(
                f"finetune.partial_stages={partial_stages} but the model has {len(body)} stages"
            )
        return set(head).union(*body[len(body) - partial_stages :])
    raise ConfigError(f"finetune.strategy '{strategy}' is not one of full, freeze, partial")


def apply_strategy(model: nn.Module, strategy: str, partial_stages: int = 2) -> None:
    """Set ``requires_grad`` for ``strategy``."""
    keep = trainable_names(model, strategy, partial_stages)
    for name, param in model.named_parameters():
        param.requires_grad_(name in keep)


def freeze_frozen_norms(model: nn.Module) -> None:
    """Put batch norms with no trainable parameter in eval mode; call after ``model.train()``."""
    for module in model.modules():
        params = list(module.parameters(recurse=False))
        if isinstance(module, _BatchNorm) and params and not any(p.requires_grad for p in params):
            module.eval()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
