"""Where training images come from (``data.source``): one builder of loaders per source."""

from __future__ import annotations

from collections.abc import Callable

import torch

from imagefit.config import Config
from imagefit.data.loaders import DataBundle
from imagefit.data.loaders import build_data as build_folder_data
from imagefit.registry import Registry

SOURCES: Registry[Callable[..., DataBundle]] = Registry("data source")
SOURCES.add("folder", build_folder_data)


@SOURCES.register("fractal")
def _fractal(cfg: Config, device: torch.device, **kwargs) -> DataBundle:
    from imagefit.datasets.fractal.source import build_fractal_data  # numba: only when used

    return build_fractal_data(cfg, device, **kwargs)


def build_data(
    cfg: Config,
    device: torch.device,
    *,
    batch_size: int | None = None,
    shard: tuple[int, int] = (0, 1),
) -> DataBundle:
    """The train/val/test loaders of ``cfg.data.source``."""
    return SOURCES.get(cfg.data.source, "data.source")(
        cfg, device, batch_size=batch_size, shard=shard
    )
