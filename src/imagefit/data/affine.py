"""The batched affine warp: random-resized-crop, translation and flips for a whole batch.

One batched affine warp does random-resized-crop, translation and flips for every image of a
batch at once (``affine_grid`` + ``grid_sample``), instead of per-image PIL work in loader
workers. Its randomness comes from a generator the loader seeds from (seed, epoch, batch), so a
batch is the same whatever the device, the worker count, or where a resumed run restarts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from imagefit.config import AugmentConfig

# (images (B, C, S, S) float in [0, 1], targets (B,) int or (B, K) soft, generator) -> same
BatchOp = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def _uniform(
    low: float, high: float, shape: int | tuple[int, ...], generator: torch.Generator
) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, dtype=torch.float64)


def crop_boxes(
    boxes: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    attempts: int = 10,
) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop.get_params`` for a whole batch: (B, 4) float64
    (left, top, width, height) inside each image's valid ``boxes`` (B, 2) (width, height).

    As torchvision: up to 10 tries of an area fraction uniform in ``scale`` and a log-uniform
    aspect ratio in ``ratio``, sides rounded to whole pixels, the first try that fits placed
    uniformly at a whole-pixel position; none fits: the largest centred crop whose aspect
    lies in ``ratio``. All tries are drawn at once (the generator advances the same for every
    batch of a size, whatever fits), which keeps a batch a pure function of its seed.
    """
    batch = boxes.shape[0]
    width, height = boxes[:, 0:1].double(), boxes[:, 1:2].double()  # (B, 1)
    area = width * height * _uniform(scale[0], scale[1], (batch, attempts), generator)
    log_ratio = _uniform(math.log(ratio[0]), math.log(ratio[1]), (batch, attempts), generator)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(area * aspect))  # (B, attempts)
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = fits.long().argmax(1, keepdim=True)  # the first try that fits
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    width, height = width.squeeze(1), height.squeeze(1)
    top = torch.floor(_uniform(0, 1, batch, generator) * (height - h + 1))
    left = torch.floor(_uniform(0, 1, batch, generator) * (width - w + 1))
    # torchvision's fallback: a centred crop, the whole image unless its aspect is outside
    # ``ratio``, then clamped to the nearest bound.
    in_ratio = width / height
    fw = torch.where(
        in_ratio > ratio[1], torch.round(height * ratio[1]), width
    )  # too wide: full height
    fh = torch.where(in_ratio < ratio[0], torch.round(width / ratio[0]), height)
    fw, fh = torch.minimum(fw, width), torch.minimum(fh, height)
    found = fits.any(1)
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    left = torch.where(found, left, torch.div(width - fw, 2, rounding_mode="floor"))
    top = torch.where(found, top, torch.div(height - fh, 2, rounding_mode="floor"))
    return torch.stack([left, top, w, h], 1)


def _reflect_edges(u: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Continuous coordinates mirrored into [0, length] (pixel edges), then kept on the outer
    pixel centres, so bilinear sampling never reads the canvas padding beyond ``length``."""
    u = torch.where(u < 0, -u, u)
    u = torch.where(u > length, 2 * length - u, u)
    return torch.minimum(torch.maximum(u, torch.full_like(u, 0.5)), length - 0.5)


class AffineAugment:
    """Random-resized-crop + translation + flips as one warp per batch.

    The input is either square images of the output size or training-store canvases
    (:mod:`imagefit.data.store`) with each image's valid box; the crop is sampled inside the
    valid box (:func:`crop_boxes`) and resized once to ``size`` by bilinear sampling
    (``grid_sample``), translated by whole output pixels with reflection at the image's own
    edges, and flipped. Bilinear sampling does not antialias: a crop shrunk by more than 2x
    (rare: the store keeps about the evaluation resolution) aliases where torchvision's
    antialiased resize would not.
    """

    def __init__(self, cfg: AugmentConfig, size: int):
        self.cfg, self.size = cfg, size

    def is_identity(self) -> bool:
        c = self.cfg
        return c.scale == (1.0, 1.0) and c.translate == 0 and c.hflip == 0 and c.vflip == 0

    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        generator: torch.Generator,
        boxes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, H, W) float in [0, 1], ``boxes`` (B, 2) valid (width, height) from the
        top-left (None: the whole image) -> (B, C, size, size); targets unchanged."""
        c, batch, size = self.cfg, x.shape[0], self.size
        if boxes is None:
            boxes = torch.tensor([[x.shape[3], x.shape[2]]]).expand(batch, 2)
        boxes = boxes.cpu()
        crop = crop_boxes(boxes, c.scale, c.ratio, generator)  # (B, 4) float64
        # Translation in whole output pixels, so an un-scaled shift copies pixels unblurred.
        max_shift = round(c.translate * size)
        shift = torch.randint(-max_shift, max_shift + 1, (2, batch), generator=generator)
        flip_x = torch.rand(batch, generator=generator) < c.hflip
        flip_y = torch.rand(batch, generator=generator) < c.vflip
        whole = (crop[:, 2:] == size).all() and x.shape[2] == x.shape[3] == size
        if whole and bool((crop[:, :2] == 0).all()):
            # Every crop is a whole image already at the output size: index gathers do what
            # bilinear sampling at pixel centres would, ~5x faster on a CPU.
            return shift_and_flip(x, shift, flip_x, flip_y), y
        grid = self._grid(crop, boxes.double(), shift, flip_x, flip_y, x.shape)
        warped = F.grid_sample(
            x,
            grid.to(device=x.device, dtype=x.dtype),
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )
        return warped, y

    def _grid(
        self,
        crop: torch.Tensor,
        boxes: torch.Tensor,
        shift: torch.Tensor,
        flip_x: torch.Tensor,
        flip_y: torch.Tensor,
        shape: torch.Size,
    ) -> torch.Tensor:
        """(B, size, size, 2) sampling positions in grid_sample's [-1, 1] (align_corners
        False) for output pixel centres, in source pixel-edge coordinates before that."""
        size = self.size
        centres = torch.arange(size, dtype=torch.float64) + 0.5  # (S,)

        def axis(start, length, valid, moved, flipped, canvas):  # each (B,)
            u = torch.where(flipped[:, None], size - centres, centres) + moved[:, None]
            source = start[:, None] + u * (length / size)[:, None]  # (B, S)
            return 2 * _reflect_edges(source, valid[:, None]) / canvas - 1

        gx = axis(crop[:, 0], crop[:, 2], boxes[:, 0], shift[0], flip_x, shape[3])
        gy = axis(crop[:, 1], crop[:, 3], boxes[:, 1], shift[1], flip_y, shape[2])
        return torch.stack(
            [gx[:, None, :].expand(-1, size, -1), gy[:, :, None].expand(-1, -1, size)], -1
        )


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices off the image mirrored back in, edge pixel repeated: grid_sample's reflection
    padding at align_corners=False (-1 -> 0, size -> size - 1). Shifts stay below ``size``."""
    index = torch.where(index < 0, -index - 1, index)
    return torch.where(index >= size, 2 * size - 1 - index, index)


def shift_and_flip(
    x: torch.Tensor, shift: torch.Tensor, flip_x: torch.Tensor, flip_y: torch.Tensor
) -> torch.Tensor:
    """(B, C, S, S) -> same: each image flipped (bool (B,)), then moved by ``shift`` (2, B)
    whole pixels (x, y) with reflection padding: one row gather on the channels-last view."""
    batch, channels, size, _ = x.shape
    base = torch.arange(size)
    cols = _reflect(torch.where(flip_x[:, None], size - 1 - base, base) + shift[0][:, None], size)
    rows = _reflect(torch.where(flip_y[:, None], size - 1 - base, base) + shift[1][:, None], size)
    image = torch.arange(batch)[:, None, None]
    flat = ((image * size + rows[:, :, None]) * size + cols[:, None, :]).reshape(-1)  # (B*S*S,)
    pixels = x.permute(0, 2, 3, 1).contiguous().reshape(-1, channels)  # no copy for loader batches
    if x.device.type == "cpu":
        # numpy's take copies rows of C values ~8x faster than torch's index_select on a CPU.
        out = torch.from_numpy(np.take(pixels.numpy(), flat.numpy(), axis=0))
    else:
        out = pixels.index_select(0, flat.to(x.device))
    return out.view(batch, size, size, channels).permute(0, 3, 1, 2)  # channels_last strides
