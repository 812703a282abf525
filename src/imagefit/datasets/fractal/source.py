"""``data.source: fractal``: FractalDB-style images rendered on the fly inside ``imagefit train``.

Every epoch draws new instances: item ``i`` of epoch ``e`` is category ``i % C``, and its
weight row (FractalDB's parameter fluctuation), patch masks and flip come from a generator
seeded by (seed, stream, epoch, i). An epoch is therefore a pure function of its number, so a
run resumed mid-epoch sees exactly the images an uninterrupted one saw, whatever the number of
loader workers; and pretraining is not limited to the images some earlier step wrote to disk.

Rendering (a numba chaos game and patch stamping, ``render``) runs in DataLoader workers; the
batches then go through the same augmentation and normalisation as any other source.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from imagefit.config import Config, DataConfig
from imagefit.data.loaders import ArraySource, Batch, DataBundle, _ignore_stop_signals, split_loader
from imagefit.data.preprocessing import resolve_preprocessing
from imagefit.data.splits import SplitManifest
from imagefit.datasets.fractal.render import (
    OFDB_OFFICIAL_WEIGHT_ROW,
    draw_canvas,
    fractal_points,
    orient,
)
from imagefit.datasets.fractal.search import list_param_files, read_param_file, read_weights
from imagefit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TRAIN_STREAM, VAL_STREAM = 0, 1  # the val set is rendered once, from its own stream
# data.fractal_weights values that are not weight files
NAMED_WEIGHTS: dict[str, tuple[tuple[float, ...] | None, ...]] = {
    "ones": (None,),
    "ofdb": (OFDB_OFFICIAL_WEIGHT_ROW,),
}


def weight_rows(spec: str) -> tuple[tuple[float, ...] | None, ...]:
    """The rows an instance draws from: a named set or the rows of a FractalDB weights file."""
    if spec in NAMED_WEIGHTS:
        return NAMED_WEIGHTS[spec]
    try:
        return tuple(tuple(float(v) for v in row) for row in read_weights(spec))
    except DataError as exc:
        raise ConfigError(f"data.fractal_weights={spec!r}: {exc}") from None


def params_digest(paths: Sequence[Path]) -> str:
    """SHA-256 over the category CSVs (name and bytes, in order): which categories these are."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode("utf-8") + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class FractalRenderer:
    """Renders instance ``index`` of ``epoch`` as an (S, S, 3) uint8 array and its label."""

    def __init__(
        self,
        params: Sequence[np.ndarray],
        rows: Sequence[tuple[float, ...] | None],
        image_size: int,
        render_size: int,
        points: int,
        draw: str,
        flips: int,
        seed: int,
    ):
        self.params, self.rows = list(params), list(rows)
        self.image_size, self.render_size, self.points = image_size, render_size, points
        self.draw, self.flips, self.seed = draw, flips, seed

    def __call__(self, stream: int, epoch: int, index: int) -> tuple[np.ndarray, int]:
        label = index % len(self.params)
        rng = np.random.default_rng([self.seed, stream, epoch, index])
        row = self.rows[int(rng.integers(len(self.rows)))]
        flip = int(rng.integers(self.flips))
        xs, ys = fractal_points(self.params[label], self.render_size, self.points, row)
        image = orient(draw_canvas(xs, ys, self.render_size, self.draw, rng=rng), flip)
        if self.render_size != self.image_size:
            # Area averaging keeps thin strokes visible when a large canvas is shrunk.
            size = (self.image_size, self.image_size)
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
        return image, label


class _EpochItems(Dataset):
    def __init__(self, renderer: FractalRenderer, stream: int, epoch: int):
        self.renderer, self.stream, self.epoch = renderer, stream, epoch

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.renderer(self.stream, self.epoch, index)


def _collate(items: list[tuple[np.ndarray, int]]) -> Batch:
    pixels = torch.from_numpy(np.stack([pixels for pixels, _ in items]))
    return pixels, torch.tensor([label for _, label in items], dtype=torch.int64)


class FractalSource:
    """A pixel source of ``categories x instances`` rendered images, new ones each epoch."""

    def __init__(self, renderer: FractalRenderer, length: int, workers: int, pin_memory: bool):
        self.renderer, self.length = renderer, length
        self.workers, self.pin_memory = workers, pin_memory
        self.current_epoch = 0

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose instances :meth:`batches` renders (the loader sets it)."""
        self.current_epoch = epoch

    def batches(self, index_batches: Sequence[np.ndarray]) -> Iterator[Batch]:
        items = _EpochItems(self.renderer, TRAIN_STREAM, self.current_epoch)
        if not self.workers:
            for indices in index_batches:
                yield _collate([items[int(i)] for i in indices])
            return
        # A private generator: the workers' base seed must not consume the global torch RNG
        # (rendering is seeded per item, so nothing else depends on it).
        yield from DataLoader(
            items,
            batch_sampler=[b.tolist() for b in index_batches],
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(0),
            worker_init_fn=_ignore_stop_signals,
            persistent_workers=False,
        )


def _check(d: DataConfig) -> list[Path]:
    if not d.fractal_params:
        raise ConfigError(
            "data.source=fractal needs data.fractal_params: a folder of category CSVs"
        )
    folder = Path(d.fractal_params)
    if not folder.is_dir():
        raise ConfigError(f"data.fractal_params: folder not found: {folder}")
    if d.test_fraction:
        raise ConfigError(
            f"data.source=fractal has no test split (data.test_fraction={d.test_fraction}): "
            "set data.test_fraction=0"
        )
    return list_param_files(folder)


def build_fractal_data(
    cfg: Config,
    device: torch.device,
    *,
    batch_size: int | None = None,
    shard: tuple[int, int] = (0, 1),
) -> DataBundle:
    """Loaders for ``data.source=fractal``: a train split rendered anew every epoch and, with
    ``data.val_fraction`` > 0, a fixed val set of that fraction of ``fractal_instances`` per
    category (rendered once, from its own random stream)."""
    d, t = cfg.data, cfg.train
    paths = _check(d)
    names = [p.stem for p in paths]
    renderer = FractalRenderer(
        [read_param_file(p) for p in paths],
        weight_rows(d.fractal_weights),
        d.image_size,
        d.fractal_render_size or d.image_size,
        d.fractal_points,
        d.fractal_draw,
        d.fractal_flips,
        t.seed,
    )
    length = len(names) * d.fractal_instances
    # The manifest lists the category files: split.json and the ledger then record (and
    # hash) exactly which formulas the run was trained on.
    manifest = SplitManifest(
        Path(d.fractal_params or ".").resolve(),  # set: checked above
        names,
        {"train": [(p.resolve(), label) for label, p in enumerate(paths)], "val": [], "test": []},
        layout="fractal",
    )
    source = FractalSource(renderer, length, d.num_workers, device.type == "cuda")
    pre = resolve_preprocessing(cfg)
    if d.crop_pct is None:  # rendered at image_size: the whole picture is the evaluation view
        pre = replace(pre, crop_pct=1.0, why={**pre.why, "crop_pct": "rendered at image_size"})
    train = split_loader(cfg, "train", source, len(names), pre, device, batch_size, shard)
    val = None
    per_class = round(d.val_fraction * d.fractal_instances)
    if per_class:
        count = per_class * len(names)
        images = [renderer(VAL_STREAM, 0, i) for i in range(count)]
        pixels = np.stack([image for image, _ in images])
        val_source = ArraySource(pixels, [label for _, label in images], device)
        val = split_loader(cfg, "val", val_source, len(names), pre, device, shard=shard)
    log.info(
        "data: %d fractal categories from %s, %d images rendered per epoch%s",
        len(names),
        d.fractal_params,
        length,
        f", {per_class} fixed val images per category" if per_class else "",
    )
    return DataBundle(names, manifest, train, val, None, True, preprocessing=pre)


def provenance(d: DataConfig) -> dict[str, Any]:
    """What the rendered data was: the categories' hash and the rendering settings."""
    paths = list_param_files(Path(d.fractal_params or "."))
    return {
        "source": "fractal",
        "params": str(Path(d.fractal_params or ".").resolve()),
        "params_sha256": params_digest(paths),
        "categories": len(paths),
        "instances_per_category": d.fractal_instances,
        "weights": d.fractal_weights,
        "draw": d.fractal_draw,
        "flips": d.fractal_flips,
        "points": d.fractal_points,
        "render_size": d.fractal_render_size or d.image_size,
    }
