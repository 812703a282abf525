"""Augmentation of whole batches with tensor ops on the training device.

One batched affine warp does random-resized-crop, translation and flips for every image of a
batch at once (``affine_grid`` + ``grid_sample``), instead of per-image PIL work in loader
workers. Its randomness comes from a generator the loader seeds from (seed, epoch, batch), so a
batch is the same whatever the device, the worker count, or where a resumed run restarts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from imagefit.config import AugmentConfig

# (images (B, C, S, S) float in [0, 1], targets (B,) int or (B, K) soft, generator) -> same
BatchOp = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def _uniform(low: float, high: float, count: int, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)


class AffineAugment:
    """Random-resized-crop + translation + flips as one warp per batch."""

    def __init__(self, cfg: AugmentConfig, size: int):
        self.cfg, self.size = cfg, size

    def is_identity(self) -> bool:
        c = self.cfg
        return c.scale == (1.0, 1.0) and c.translate == 0 and c.hflip == 0 and c.vflip == 0

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, S, S) float in [0, 1] -> same shape; targets unchanged."""
        c, batch = self.cfg, x.shape[0]
        area = _uniform(c.scale[0], c.scale[1], batch, generator)
        log_ratio = _uniform(math.log(c.ratio[0]), math.log(c.ratio[1]), batch, generator)
        width = torch.sqrt(area * torch.exp(log_ratio))
        height = torch.sqrt(area / torch.exp(log_ratio))
        # Like torchvision's RandomResizedCrop, a crop that does not fit keeps the area square.
        misfit = (width > 1) | (height > 1)
        width = torch.where(misfit, torch.sqrt(area), width)
        height = torch.where(misfit, torch.sqrt(area), height)
        # Crop centre anywhere the crop stays inside the image (normalised coords in [-1, 1]).
        cx = _uniform(-1, 1, batch, generator) * (1 - width)
        cy = _uniform(-1, 1, batch, generator) * (1 - height)
        # Translation in whole pixels, so an un-scaled shift copies pixels without blurring.
        max_shift = round(c.translate * self.size)
        shift = torch.randint(-max_shift, max_shift + 1, (2, batch), generator=generator)
        cx = cx + shift[0] * 2.0 / self.size
        cy = cy + shift[1] * 2.0 / self.size
        flip_x = torch.where(torch.rand(batch, generator=generator) < c.hflip, -1.0, 1.0)
        flip_y = torch.where(torch.rand(batch, generator=generator) < c.vflip, -1.0, 1.0)
        theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 0, 2] = width * flip_x, cx
        theta[:, 1, 1], theta[:, 1, 2] = height * flip_y, cy
        theta = theta.to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection",
                               align_corners=False)  # fmt: skip
        return warped, y


# Further batch ops (RandAugment, random erasing, mixup/cutmix) register here by config key:
# each factory gets (config, image size, number of classes) and returns an op, or None when the
# config switches it off.
OpFactory = Callable[[AugmentConfig, int, int], BatchOp | None]
BATCH_OPS: dict[str, OpFactory] = {}


def register_batch_op(name: str) -> Callable[[OpFactory], OpFactory]:
    def wrap(factory: OpFactory) -> OpFactory:
        BATCH_OPS[name] = factory
        return factory

    return wrap


@register_batch_op("affine")
def _affine(cfg: AugmentConfig, size: int, num_classes: int) -> BatchOp | None:
    op = AffineAugment(cfg, size)
    return None if op.is_identity() else op


class BatchAugment:
    """The configured batch ops, applied in registration order."""

    def __init__(self, cfg: AugmentConfig, size: int, num_classes: int):
        built = (factory(cfg, size, num_classes) for factory in BATCH_OPS.values())
        self.ops: list[BatchOp] = [op for op in built if op is not None]

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for op in self.ops:
            x, y = op(x, y, generator)
        return x, y
