"""timm's RandAugment on whole batches of tensors, on the training device.

timm parses the spec (``rand-m9-mstd0.5-inc1``: magnitude, its std, the increasing op set,
layers, probability, weights) and keeps its semantics: per image, ``num_layers`` ops chosen
uniformly with replacement (without, when weighted), each applied with probability ``p`` at a
magnitude drawn from N(m, mstd) (uniform in [0, m] for mstd inf) clipped to [0, mmax or 10],
mapped to the op's argument by timm's own level functions (``LEVEL_TO_ARG``) with a random
sign where timm negates. Every draw comes from the batch generator (seeded per (seed, epoch,
batch)), so a batch is the same after a resume; the ops are tensor arithmetic, batched per op
over the images that drew it.

The pixel ops mirror Pillow's integer arithmetic, so they equal timm's PIL ops on uint8
images (tests/test_randaugment.py compares op by op): Invert, Posterize, Solarize,
SolarizeAdd, AutoContrast and Equalize exactly; Brightness, Color, Contrast and Sharpness
within 1 level (Pillow blends in its own float rounding). The geometric ops (Rotate, ShearX/Y,
TranslateX/YRel) use bilinear sampling where timm draws bilinear or bicubic at random, and fill
what comes from outside with the data mean as timm does: they agree with Pillow's bilinear
inside the image and differ along the border, where Pillow and ``grid_sample`` treat the edge
pixels differently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from timm.data.auto_augment import LEVEL_TO_ARG, AugmentOp, RandAugment
from torchvision.transforms.v2 import functional as TF

_LEVEL_DENOM = 10.0  # timm's: magnitude 10 is an op's full strength
# luma weights of Pillow's RGB -> L (ITU-R 601-2), in its fixed point: L = (R*19595 +
# G*38470 + B*7471 + 0x8000) >> 16
_LUMA = (19595, 38470, 7471)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) integer-valued float -> (B, 1, H, W) Pillow's L."""
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return torch.floor((r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2] + 0x8000) / 65536)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Pillow's ``Image.blend(degenerate, x, factor)`` (ImageEnhance): truncated to an int."""
    out = degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)
    return torch.trunc(out).clamp_(0, 255)


def _brightness(x: torch.Tensor, factor: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, factor)


def _color(x: torch.Tensor, factor: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    return _blend(_luma(x).expand_as(x), x, factor)


def _contrast(x: torch.Tensor, factor: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    mean = torch.floor(_luma(x).mean(dim=(1, 2, 3), keepdim=True) + 0.5)  # Pillow's int(m + .5)
    return _blend(mean.expand_as(x), x, factor)


def _sharpness(x: torch.Tensor, factor: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    # Pillow's SMOOTH filter ([[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13) rounds to the nearest
    # level and leaves the 1-pixel border as it is; the 3x3 sum as shifted adds (a grouped
    # conv2d is several times slower on a CPU).
    rows = x[:, :, :-2] + x[:, :, 1:-1] + x[:, :, 2:]
    box = rows[:, :, :, :-2] + rows[:, :, :, 1:-1] + rows[:, :, :, 2:]
    smooth = torch.floor((box + 4 * x[:, :, 1:-1, 1:-1]) / 13 + 0.5)
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, factor)


def _per_image(value: torch.Tensor) -> torch.Tensor:
    return value.view(-1, 1, 1, 1)


def _posterize(x: torch.Tensor, bits: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    # keep the top ``bits`` bits; 0 bits (timm's increasing posterize at magnitude 10): black
    step = _per_image(torch.pow(2.0, 8 - bits.clamp(0, 8)))
    return torch.floor(x / step) * step * _per_image(bits > 0)


def _solarize(x: torch.Tensor, threshold: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= _per_image(threshold), 255 - x, x)


def _solarize_add(x: torch.Tensor, add: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 128, (x + _per_image(add)).clamp(max=255), x)


def _invert(x: torch.Tensor, _: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    return 255 - x


def _auto_contrast(x: torch.Tensor, _: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Pillow's ``ImageOps.autocontrast`` (no cutoff): each channel stretched to 0..255."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    flat = hi <= lo
    scale = 255.0 / torch.where(flat, torch.ones_like(hi), hi - lo)
    out = torch.floor(x * scale - lo * scale).clamp(0, 255)
    return torch.where(flat, x, out)


def _equalize(x: torch.Tensor, _: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    # torchvision's equalize is a batched port of Pillow's
    return TF.equalize(x.to(torch.uint8)).to(x.dtype)


def _warp(x: torch.Tensor, matrix: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Pillow's ``Image.transform(AFFINE, matrix)`` per image: output pixel centre (u, v)
    samples the input at ``matrix @ (u, v, 1)`` (B, 2, 3) in pixel coordinates whose centres
    lie at +0.5; outside the image, ``fill`` (C,)."""
    batch, channels, height, width = x.shape
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
    # normalised (align_corners=False) output -> pixel -> input pixel -> normalised
    to_pixels = torch.tensor([[width / 2, 0, width / 2], [0, height / 2, height / 2], [0, 0, 1]])
    to_norm = torch.tensor([[2 / width, 0, -1], [0, 2 / height, -1], [0, 0, 1]])
    full = torch.cat([matrix, torch.tensor([[[0.0, 0.0, 1.0]]]).expand(batch, 1, 3)], 1)
    theta = (to_norm.double() @ full.double() @ to_pixels.double())[:, :2]
    grid = F.affine_grid(theta.to(x), [batch, channels + 1, height, width], align_corners=False)
    with_mask = torch.cat([x, torch.ones_like(x[:, :1])], 1)
    sampled = F.grid_sample(
        with_mask, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    inside = sampled[:, -1:]
    out = sampled[:, :-1] + (1 - inside) * fill.view(1, -1, 1, 1)
    return torch.floor(out + 0.5).clamp_(0, 255)


def _affine(rows: Callable[[torch.Tensor, int, int], torch.Tensor]):
    def op(x: torch.Tensor, value: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        return _warp(x, rows(value.double().cpu(), x.shape[3], x.shape[2]), fill)

    return op


def _rows(a, b, c, d, e, f) -> torch.Tensor:  # each (B,) -> (B, 2, 3)
    return torch.stack([torch.stack([a, b, c], -1), torch.stack([d, e, f], -1)], 1)


def _rotation(degrees: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pillow's ``rotate(degrees)`` (anticlockwise, about the centre) as an inverse map."""
    angle = -torch.deg2rad(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    cx, cy = width / 2.0, height / 2.0
    return _rows(cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)


def _one(value: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(value)


OpFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# timm's op names -> the batched op (x (B, C, H, W) integer-valued float, argument (B,), fill)
TENSOR_OPS: dict[str, OpFn] = {
    "AutoContrast": _auto_contrast,
    "Equalize": _equalize,
    "Invert": _invert,
    "Rotate": _affine(_rotation),
    "Posterize": _posterize,
    "PosterizeIncreasing": _posterize,
    "PosterizeOriginal": _posterize,
    "Solarize": _solarize,
    "SolarizeIncreasing": _solarize,
    "SolarizeAdd": _solarize_add,
    "Color": _color,
    "ColorIncreasing": _color,
    "Contrast": _contrast,
    "ContrastIncreasing": _contrast,
    "Brightness": _brightness,
    "BrightnessIncreasing": _brightness,
    "Sharpness": _sharpness,
    "SharpnessIncreasing": _sharpness,
    "ShearX": _affine(lambda k, w, h: _rows(_one(k), k, 0 * k, 0 * k, _one(k), 0 * k)),
    "ShearY": _affine(lambda k, w, h: _rows(_one(k), 0 * k, 0 * k, k, _one(k), 0 * k)),
    "TranslateXRel": _affine(lambda k, w, h: _rows(_one(k), 0 * k, k * w, 0 * k, _one(k), 0 * k)),
    "TranslateYRel": _affine(lambda k, w, h: _rows(_one(k), 0 * k, 0 * k, 0 * k, _one(k), k * h)),
}
# timm's level functions that flip their sign at random (``_randomly_negate``, which draws from
# Python's global RNG): their unsigned argument at magnitude m, the sign drawn here instead
_NEGATED: dict[str, Callable[[float, dict], float]] = {
    "Rotate": lambda m, hp: m / _LEVEL_DENOM * 30.0,
    "ShearX": lambda m, hp: m / _LEVEL_DENOM * 0.3,
    "ShearY": lambda m, hp: m / _LEVEL_DENOM * 0.3,
    "TranslateXRel": lambda m, hp: m / _LEVEL_DENOM * hp.get("translate_pct", 0.45),
    "TranslateYRel": lambda m, hp: m / _LEVEL_DENOM * hp.get("translate_pct", 0.45),
}
_INCREASING_ENHANCE = {
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
}


def supports(ops: Sequence[AugmentOp]) -> bool:
    """Whether every op of a timm RandAugment has a batched tensor version here."""
    return all(op.name in TENSOR_OPS for op in ops)


def _argument(op: AugmentOp, magnitude: float, negate: bool) -> float:
    """timm's level function at ``magnitude``, with its random sign decided by ``negate``."""
    if op.name in _NEGATED:
        value = _NEGATED[op.name](magnitude, op.hparams)
        return -value if negate else value
    if op.name in _INCREASING_ENHANCE:  # timm's _enhance_increasing_level_to_arg
        level = magnitude / _LEVEL_DENOM * 0.9
        return max(0.1, 1.0 + (-level if negate else level))
    level_fn = LEVEL_TO_ARG[op.name]  # the rest draw nothing
    return 0.0 if level_fn is None else float(level_fn(magnitude, op.hparams)[0])


class TensorRandAugment:
    """A parsed timm ``RandAugment`` (its ops, layers and weights, read at each call) applied
    to a batch of tensors."""

    def __init__(self, transform: RandAugment, fill: Sequence[int]):
        self.transform = transform
        self.fill = torch.tensor([float(v) for v in fill])

    def _magnitudes(self, op: AugmentOp, count: int, generator: torch.Generator) -> torch.Tensor:
        m, std = float(op.magnitude), float(op.magnitude_std or 0)
        if std == float("inf"):
            drawn = torch.rand(count, generator=generator, dtype=torch.float64) * m
        elif std > 0:
            drawn = m + std * torch.randn(count, generator=generator, dtype=torch.float64)
        else:
            drawn = torch.full((count,), m, dtype=torch.float64)
        return drawn.clamp(0.0, float(op.magnitude_max or _LEVEL_DENOM))

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, S, S) float in [0, 1] -> same (quantised to 1/255); targets unchanged."""
        batch, ops, layers = x.shape[0], self.transform.ops, self.transform.num_layers
        pixels = x.mul(255).round_().clamp_(0, 255)
        if self.transform.choice_weights is None:  # timm: with replacement
            choice = torch.randint(len(ops), (batch, layers), generator=generator)
        else:  # timm: weighted, without replacement
            weights = torch.as_tensor(self.transform.choice_weights, dtype=torch.float64)
            choice = torch.multinomial(weights.expand(batch, -1), layers, generator=generator)
        applied = torch.rand(batch, layers, generator=generator, dtype=torch.float64)
        negate = torch.rand(batch, layers, generator=generator) > 0.5
        fill = self.fill.to(pixels)
        for layer in range(layers):
            for index, op in enumerate(ops):
                chosen = (choice[:, layer] == index) & (applied[:, layer] <= op.prob)
                magnitudes = self._magnitudes(op, batch, generator)  # drawn for all: stable
                rows = torch.nonzero(chosen).flatten()
                if len(rows) == 0:
                    continue
                values = [_argument(op, float(magnitudes[i]), bool(negate[i, layer])) for i in rows]
                argument = torch.tensor(values, dtype=pixels.dtype, device=pixels.device)
                where = rows.to(pixels.device)
                pixels[where] = TENSOR_OPS[op.name](pixels[where], argument, fill)
        return pixels.div_(255).to(x.dtype), y


def from_timm(transform: RandAugment, fill: Sequence[int]) -> TensorRandAugment | None:
    """The batched version of a parsed timm RandAugment, or None if an op has none here."""
    return TensorRandAugment(transform, fill) if supports(transform.ops) else None
