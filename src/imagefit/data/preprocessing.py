"""The run's preprocessing: what the config sets, else the pretrained weights', else defaults.

Pretrained weights expect the pixels they were trained on: timm records each one's mean, std,
interpolation and crop_pct in its ``pretrained_cfg``. When the weights come from timm (``hub:``
names, or a weights file of a timm architecture) those are the defaults; a value the config
sets wins; the rest falls back to imagefit's defaults. :class:`Preprocessing` carries the
values and, per key, where it came from; it goes into the checkpoint meta and summary.json.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imagefit.config import IMAGENET_MEAN, IMAGENET_STD, Config
from imagefit.data.images import FILTERS, resize_size
from imagefit.model_names import HUB_PREFIX

PHOTO_MIN_SIZE = 96  # image_size from which a dataset is taken for photos (crop_pct 0.875)
PHOTO_CROP_PCT = 0.875  # the torchvision/timm ImageNet evaluation crop (224 of 256)
# Weights files that timm and the hub write; imagefit's own checkpoints are .pt and carry
# their run's preprocessing in their meta, which the config of the run that made them set.
TIMM_WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".bin")


@dataclass(frozen=True)
class Preprocessing:
    """Resolved preprocessing of a run; ``why`` maps each key to where its value came from."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    interpolation: str
    store_size: int
    why: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean"], out["std"] = list(self.mean), list(self.std)
        return out


def pretrained_name(cfg: Config) -> str | None:
    """The timm model name whose pretrained config describes ``cfg``'s initial weights."""
    init = cfg.model.init
    if init.startswith(HUB_PREFIX):
        return init.removeprefix(HUB_PREFIX)
    if Path(init).suffix.lower() in TIMM_WEIGHTS_SUFFIXES:
        return cfg.model.name
    return None


def pretrained_config(name: str) -> dict[str, Any] | None:
    """timm's pretrained config of ``name`` (``arch`` or ``arch.tag``) as a dict, or None."""
    import timm.models

    try:
        found = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError, KeyError):
        return None
    return found.to_dict() if found is not None else None


def resolve_preprocessing(cfg: Config) -> Preprocessing:
    """The preprocessing ``cfg`` trains and evaluates with (see the module docstring)."""
    d, why = cfg.data, {}
    name = pretrained_name(cfg)
    pretrained = pretrained_config(name) if name else None
    source = f"pretrained config of {name} (timm)"

    def pick(key: str, set_value: Any, timm_value: Any, default: Any, reason: str) -> Any:
        if set_value is not None:
            why[key] = "config"
            return set_value
        if timm_value is not None:
            why[key] = source
            return timm_value
        why[key] = reason
        return default

    timm_cfg = pretrained or {}
    mean = pick("mean", d.mean, timm_cfg.get("mean"), IMAGENET_MEAN, "default: ImageNet's")
    std = pick("std", d.std, timm_cfg.get("std"), IMAGENET_STD, "default: ImageNet's")
    photo = d.image_size >= PHOTO_MIN_SIZE
    crop_pct = pick(
        "crop_pct",
        d.crop_pct,
        timm_cfg.get("crop_pct"),
        PHOTO_CROP_PCT if photo else 1.0,
        f"default: image_size {d.image_size} {'>=' if photo else '<'} {PHOTO_MIN_SIZE}",
    )
    timm_interpolation = timm_cfg.get("interpolation")
    if timm_interpolation not in FILTERS:
        timm_interpolation = None  # e.g. timm's "nearest"/"random": no antialiased equivalent
    interpolation = pick(
        "interpolation", d.interpolation, timm_interpolation, "bilinear", "default"
    )
    if d.store_size is not None:
        store_size, why["store_size"] = d.store_size, "config"
    elif crop_pct == 1.0:
        store_size, why["store_size"] = d.image_size, "default: image_size (crop_pct 1)"
    else:
        store_size = math.ceil(resize_size(d.image_size, crop_pct) * 4 / 3)
        why["store_size"] = "default: ceil(int(image_size / crop_pct) * 4 / 3)"
    return Preprocessing(
        tuple(float(v) for v in mean),  # type: ignore[arg-type]
        tuple(float(v) for v in std),  # type: ignore[arg-type]
        float(crop_pct),
        str(interpolation),
        int(store_size),
        why,
    )
