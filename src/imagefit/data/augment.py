"""Augmentation of whole batches with tensor ops on the training device.

``BatchAugment`` runs the configured batch ops in one fixed order: the affine warp
(:mod:`imagefit.data.affine`), then RandAugment, random erasing and mixup/cutmix
(:mod:`imagefit.data.batch_ops`). Every op draws from a generator the loader seeds from
(seed, epoch, batch), so a batch is the same whatever the device, the worker count, or where a
resumed run restarts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from imagefit.config import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig
from imagefit.data import batch_ops
from imagefit.data.affine import AffineAugment, BatchOp
from imagefit.registry import Registry

# Each factory gets (config, image size, number of classes, data mean, data std) and returns an
# op, or None when the config switches it off. The mean and std are those the loader normalises
# with after the ops: ops that fill pixels (erasing noise, RandAugment's fill colour) need them
# to work in [0, 1] space what timm does in normalised space.
OpFactory = Callable[[AugmentConfig, int, int, Sequence[float], Sequence[float]], BatchOp | None]


def _affine(
    cfg: AugmentConfig, size: int, num_classes: int, mean: Sequence[float], std: Sequence[float]
) -> BatchOp | None:
    op = AffineAugment(cfg, size)
    return None if op.is_identity() else op


# The order is the augmentation: geometry first (crops and flips of the clean image), then the
# photometric ops on what the model will see, then erasing, and label mixing last because it
# blends whole augmented images and turns the targets soft.
BATCH_OPS: Registry[OpFactory] = Registry("batch augmentation op")
for _name, _factory in (
    ("affine", _affine),
    ("randaugment", batch_ops.randaugment_op),
    ("random_erasing", batch_ops.random_erasing_op),
    ("mixup", batch_ops.mixup_op),
):
    BATCH_OPS.add(_name, _factory)


class BatchAugment:
    """The configured batch ops, applied in ``BATCH_OPS`` order.

    ``mean``/``std``: the per-channel normalisation the loader applies after the ops (defaults:
    ``DataConfig``'s, ImageNet's).
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        size: int,
        num_classes: int,
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        built = (factory(cfg, size, num_classes, mean, std) for _, factory in BATCH_OPS.items())
        self.ops: list[BatchOp] = [op for op in built if op is not None]

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for op in self.ops:
            x, y = op(x, y, generator)
        return x, y
