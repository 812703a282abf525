"""Test-time augmentation: a batch seen several ways, the class probabilities averaged.

The views are a registry (``train.tta``, ``imagefit eval --tta``, ``predict --tta``): ``flip``
adds the mirror image; ``flip+crops`` also zooms in on the four corners (7/8 of each side,
resized back), which helps when the object is off-centre or small. The averaged
probabilities come back as log-probabilities, which are logits of exactly those
probabilities, so every metric (loss, calibration, top-5) reads them like a model's logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from imagefit.errors import ConfigError

# The metrics reported with TTA beside the plain ones (metrics.json's and eval's "tta" block).
TTA_METRICS = ("accuracy", "top5_accuracy", "f1_macro", "loss")
CROP_FRACTION = 7 / 8  # the side of a corner crop: the usual eval crop_pct of timm's models


def _corner_crops(x: torch.Tensor) -> list[torch.Tensor]:
    """(B, C, H, W) -> four (B, C, H, W): each corner's crop resized back to the full size."""
    h, w = x.shape[-2:]
    ch, cw = max(1, round(h * CROP_FRACTION)), max(1, round(w * CROP_FRACTION))
    crops = [
        x[..., top : top + ch, left : left + cw] for top in (0, h - ch) for left in (0, w - cw)
    ]
    return [
        F.interpolate(c.float(), size=(h, w), mode="bilinear", align_corners=False).to(x.dtype)
        for c in crops
    ]


# name -> (B, C, H, W) -> the views to average, the batch itself first. Each mode's views
# begin with those of the modes before it, so one pass of the last mode asked for serves
# all of them (accuracy with and without TTA from one forward pass per view).
VIEWS: dict[str, Callable[[torch.Tensor], list[torch.Tensor]]] = {
    "none": lambda x: [x],
    "flip": lambda x: [x, x.flip(-1)],
    "flip+crops": lambda x: [x, x.flip(-1), *_corner_crops(x)],
}


def views(mode: str, x: torch.Tensor) -> list[torch.Tensor]:
    """The views of ``x`` (B, C, H, W) under ``mode``; an unknown mode lists the known ones."""
    try:
        make = VIEWS[mode]
    except KeyError:
        raise ConfigError(f"tta '{mode}' is not one of {', '.join(VIEWS)}") from None
    return make(x)


def view_count(mode: str) -> int:
    """How many views ``mode`` averages (checked: an unknown mode lists the known ones)."""
    return len(views(mode, torch.zeros(1, 1, 8, 8)))


def average_logits(logits: list[torch.Tensor]) -> torch.Tensor:
    """Log of the mean softmax over the views: (V x (B, K)) -> (B, K) float32."""
    if len(logits) == 1:
        return logits[0].float()
    probs = torch.stack([z.float().softmax(-1) for z in logits]).mean(0)
    return probs.clamp_min(torch.finfo(torch.float32).tiny).log()
