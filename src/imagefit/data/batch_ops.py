"""RandAugment, random erasing and mixup/cutmix as batch ops; :mod:`imagefit.data.augment` runs
them after the affine warp, in that order.

The implementations are timm's and torchvision's wherever their randomness can be steered. Those
draw from the global RNGs (Python's ``random``, NumPy's and torch's), so each op runs inside
:func:`seeded_global_rngs`: seeded from one draw of the batch generator, restored afterwards.
A batch's augmentation therefore stays a pure function of (seed, epoch, batch), which exact
resume needs, and the global RNGs that dropout and the like use are never moved.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from timm.data.auto_augment import posterize as timm_posterize
from timm.data.auto_augment import rand_augment_transform
from torchvision.transforms import v2

from imagefit.config import AugmentConfig
from imagefit.data.affine import BatchOp
from imagefit.data.randaugment import from_timm
from imagefit.errors import ConfigError


@contextmanager
def seeded_global_rngs(
    generator: torch.Generator, device: torch.device | None = None
) -> Iterator[None]:
    """Seed Python's ``random``, NumPy's global RNG and torch's CPU RNG (and ``device``'s, when
    it is a CUDA device) from one draw of ``generator``; restore all their states on exit."""
    seed = int(torch.randint(2**63 - 1, (), generator=generator))
    # Only this device's CUDA generator: torch.manual_seed would seed every CUDA device, and
    # fork_rng restores only the ones it is given. The library ops here draw on the CPU; the
    # CUDA generator is seeded so that one drawing on the device would still be reproducible.
    cuda: list[int] = []
    if device is not None and device.type == "cuda":
        cuda.append(device.index if device.index is not None else torch.cuda.current_device())
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=cuda):
        try:
            random.seed(seed)
            np.random.seed([seed & 0xFFFFFFFF, seed >> 32])  # NumPy takes 32-bit words
            torch.random.default_generator.manual_seed(seed)
            for index in cuda:
                torch.cuda.default_generators[index].manual_seed(seed)
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


# timm's spec grammar: "rand", then "-"-separated sections, each a key and a number or a "t"
# transform set. timm skips a section that has no number (a typo such as "rand-m9-mstdx"
# would be ignored) and maps an unknown set name to its default set, so both are checked here.
_RAND_NUMERIC = re.compile(r"(mstd|mmax|inc|m|n|p)\d")
_RAND_SETS = ("weights", "3aw", "3a")


def _check_randaugment(spec: str) -> None:
    sections = spec.split("-")

    def valid(section: str) -> bool:
        if section.startswith("t"):
            return section[1:] in _RAND_SETS
        return _RAND_NUMERIC.match(section) is not None

    if sections[0] != "rand" or not all(valid(section) for section in sections[1:]):
        raise ConfigError(
            f"augment.randaugment: {spec!r} is not a timm RandAugment spec "
            "(such as 'rand-m9-mstd0.5-inc1')"
        )


def posterize(image: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    """timm's posterize, also for 0 bits: timm's increasing posterize reaches 0 bits at
    magnitude 10 (a black image), which Pillow 11+ refuses ("bits must be between ... 1 and
    8") where older Pillow returned black."""
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size)
    return timm_posterize(image, bits_to_keep)


class RandAugment:
    """timm's RandAugment (``rand_augment_transform``) on a batch: with tensor ops on the
    training device (:mod:`imagefit.data.randaugment`) when every op of the spec has one,
    else on each image via timm's PIL ops."""

    def __init__(self, spec: str, size: int, mean: Sequence[float]):
        _check_randaugment(spec)
        # As timm's create_transform: translations up to 45% of the side, and the fill of
        # rotations, shears and translations the data mean (ImageNet's: (124, 116, 104)), which
        # normalisation then maps to zero, as zero padding would be in normalised space.
        hparams = {
            "translate_const": int(size * 0.45),
            "img_mean": tuple(min(255, round(255 * m)) for m in mean),
        }
        try:
            self.transform = rand_augment_transform(spec, hparams)
        except (AssertionError, ValueError) as exc:  # timm asserts on unknown sections
            raise ConfigError(
                f"augment.randaugment: {spec!r} is not a valid timm RandAugment "
                f"spec: {exc or 'unknown section'}"
            ) from None
        for op in self.transform.ops:
            if op.aug_fn is timm_posterize:
                op.aug_fn = posterize
        self.tensor = from_timm(self.transform, hparams["img_mean"])  # type: ignore[arg-type]

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, S, S) float in [0, 1] -> same (quantised to 1/255); targets unchanged."""
        if self.tensor is not None:
            return self.tensor(x, y, generator)
        # PIL ops need uint8 on the CPU: on an accelerator this costs a round trip per batch.
        quantised = x.mul(255).round_().clamp_(0, 255).to(torch.uint8)
        pixels = quantised.permute(0, 2, 3, 1).cpu().numpy()  # (B, S, S, C)
        out = np.empty_like(pixels)
        with seeded_global_rngs(generator):
            for index, image in enumerate(pixels):
                augmented = self.transform(Image.fromarray(np.ascontiguousarray(image)))
                out[index] = np.asarray(augmented.convert("RGB"))
        back = torch.from_numpy(out).to(x.device).permute(0, 3, 1, 2)  # channels_last strides
        return back.to(x.dtype).div_(255), y


def _uniform(
    low: float, high: float, shape: tuple[int, ...], generator: torch.Generator
) -> torch.Tensor:
    return low + (high - low) * _rand(shape, generator)


def _rand(shape: int | tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float64)


class RandomErasing:
    """timm's ``RandomErasing(probability, mode='pixel')``, vectorised over the batch.

    Each image, with probability ``probability``, gets one rectangle of per-pixel noise: area
    a uniform 2%..1/3 of the image, log aspect ratio uniform in [log 0.3, log 1/0.3], the first
    of 10 draws that fits inside the image (none that fits: no rectangle). timm draws the noise
    N(0, 1) in normalised space; these ops run before normalisation, so here it is
    ``mean + std * N(0, 1)`` per channel, which normalisation turns into timm's N(0, 1). Erased
    pixels can lie outside [0, 1], as timm's outside the range of normalised images.
    """

    attempts = 10

    def __init__(
        self,
        probability: float,
        mean: Sequence[float],
        std: Sequence[float],
        area: tuple[float, float] = (0.02, 1 / 3),
        min_aspect: float = 0.3,
    ):
        self.probability, self.area = probability, area
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)

    def boxes(self, batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
        """(B, 4) int64 (top, left, height, width) per image, height = width = 0 for none."""
        chosen = _rand(batch, generator) < self.probability
        area = _uniform(*self.area, (batch, self.attempts), generator) * size * size
        aspect = torch.exp(_uniform(*self.log_aspect, (batch, self.attempts), generator))
        height = torch.round(torch.sqrt(area * aspect)).long()  # (B, attempts)
        width = torch.round(torch.sqrt(area / aspect)).long()
        fits = (height < size) & (width < size)
        first = fits.long().argmax(1, keepdim=True)  # first attempt that fits (0 if none does)
        keep = chosen & fits.any(1)
        height = height.gather(1, first).squeeze(1) * keep  # (B,)
        width = width.gather(1, first).squeeze(1) * keep
        top = (_rand(batch, generator) * (size - height + 1)).long()  # uniform in 0..S-h
        left = (_rand(batch, generator) * (size - width + 1)).long()
        return torch.stack([top, left, height, width], 1)

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, S, S) float -> same, erased rectangles filled with noise; targets unchanged."""
        batch, channels, size, _ = x.shape
        boxes = self.boxes(batch, size, generator)
        count = int((boxes[:, 2] * boxes[:, 3]).sum())
        if count == 0:
            return x, y
        noise = torch.randn(count, channels, generator=generator)  # (erased pixels, C)
        fill = (self.mean + self.std * noise).to(device=x.device, dtype=x.dtype)
        top, left, height, width = boxes.to(x.device).unbind(1)  # each (B,)
        line = torch.arange(size, device=x.device)
        rows = (line >= top[:, None]) & (line < (top + height)[:, None])  # (B, S)
        cols = (line >= left[:, None]) & (line < (left + width)[:, None])
        mask = rows[:, :, None, None] & cols[:, None, :, None]  # (B, S, S, 1)
        # The fill goes to the masked pixels in (image, row, column) order, C values each.
        erased = x.permute(0, 2, 3, 1).masked_scatter(mask, fill)  # (B, S, S, C)
        return erased.permute(0, 3, 1, 2), y


class MixupCutmix:
    """torchvision's ``v2.MixUp`` / ``v2.CutMix`` (one chosen per batch with probability 1/2, as
    timm's default ``switch_prob``, when both are on): targets become soft (B, K) float.

    Each image is mixed with its neighbour in the batch (``roll(1, 0)``; batches are shuffled).
    Targets that arrive soft (B, K) are mixed as they are. Runs last of the batch ops: every
    op before it sees the class-index targets and whole, unmixed images. Label smoothing is
    the loss's (``SoftTargetCrossEntropy(smoothing=...)``), not applied here.
    """

    def __init__(self, mixup: float, cutmix: float, num_classes: int):
        ops: list[v2.Transform] = []
        if mixup > 0:
            ops.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
        if cutmix > 0:
            ops.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
        self.transform = ops[0] if len(ops) == 1 else v2.RandomChoice(ops, p=[0.5, 0.5])

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, S, S) float -> same; y: (B,) int64 or (B, K) -> (B, K) float."""
        # torchvision draws lambda, the box and the choice from torch's global CPU RNG.
        with seeded_global_rngs(generator, x.device):
            mixed, targets = self.transform(x, y)
        return mixed, targets.float()


def randaugment_op(
    cfg: AugmentConfig, size: int, num_classes: int, mean: Sequence[float], std: Sequence[float]
) -> BatchOp | None:
    return None if cfg.randaugment is None else RandAugment(cfg.randaugment, size, mean)


def random_erasing_op(
    cfg: AugmentConfig, size: int, num_classes: int, mean: Sequence[float], std: Sequence[float]
) -> BatchOp | None:
    return RandomErasing(cfg.random_erasing, mean, std) if cfg.random_erasing > 0 else None


def mixup_op(
    cfg: AugmentConfig, size: int, num_classes: int, mean: Sequence[float], std: Sequence[float]
) -> BatchOp | None:
    if cfg.mixup == 0 and cfg.cutmix == 0:
        return None
    return MixupCutmix(cfg.mixup, cfg.cutmix, num_classes)
