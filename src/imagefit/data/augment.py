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
        self.size = size
        # A store's canvases must be cropped to ``size`` even when the warp would be the
        # identity on images of that size: then the crop is torchvision's deterministic
        # fallback, the largest centred crop with an aspect in ``augment.ratio``.
        self.crop = AffineAugment(cfg, size)

    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
        boxes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, H, W) float in [0, 1]; ``boxes`` (B, 2): each image's valid (width,
        height) on a store canvas (None: whole images) -> (B, C, size, size), targets."""
        warps = bool(self.ops) and isinstance(self.ops[0], AffineAugment)
        if not warps and (boxes is not None or x.shape[2:] != (self.size, self.size)):
            x, y = self.crop(x, y, generator, boxes)
        for op in self.ops:
            if isinstance(op, AffineAugment):
                x, y = op(x, y, generator, boxes)
            else:
                x, y = op(x, y, generator)
        return x, y
