"""Formula-driven pretraining data: FractalDB and 2D-OFDB, as files or rendered on the fly.

The pieces live in ``search`` (category search, parameter CSVs) and ``render`` (the fast
renderer; the tests hold a slow literal port of the official renderer to check it against);
this module writes whole datasets in the official layout and provides ``FractalDataset``.
The official quirks are options, official by default: see ``render``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from imagefit.datasets.fractal import render as fractal_render
from imagefit.datasets.fractal.render import (
    DRAW_MODES,
    IMAGE_FORMATS,
    OFDB_OFFICIAL_WEIGHT_ROW,
    CategorySpec,
    category_key,
    draw_canvas,
    fractal_points,
    normalize_draw,
    orient,
    render,
    write_category_job,
)
from imagefit.datasets.fractal.search import (
    list_param_files,
    read_param_file,
    read_params,
    read_weights,
    search_categories,
    write_params,
)
from imagefit.errors import DataError

__all__ = [
    "DRAW_MODES",
    "OFDB_OFFICIAL_WEIGHT_ROW",
    "OFDB_WEIGHTS",
    "FractalDataset",
    "read_params",
    "read_weights",
    "render",
    "search_categories",
    "write_fractaldb",
    "write_ofdb",
    "write_params",
]

logger = logging.getLogger(__name__)

OFDB_WEIGHTS = (OFDB_OFFICIAL_WEIGHT_ROW,)  # the one weight row of official 2D-OFDB images


def _check_options(size: int, points: int, fmt: str, draw: str, burn_in: int = 0) -> str:
    """Validate the shared writer options; return the normalised draw mode."""
    if fmt not in IMAGE_FORMATS:
        raise DataError(f"unknown image format {fmt!r}; choose one of {', '.join(IMAGE_FORMATS)}")
    if size < 8 or points < 2:
        raise DataError(f"need size >= 8 and points >= 2, got size {size}, points {points}")
    if not 0 <= burn_in < points:
        raise DataError(f"need 0 <= burn_in < points, got burn_in {burn_in}, points {points}")
    return normalize_draw(draw)


def _worker_count(workers: int | None, jobs: int) -> int:
    """``workers`` or every usable core, never more than there are jobs."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(workers if workers is not None else (available or 1), jobs))


def _run_jobs(
    jobs: list[tuple[str, np.ndarray, CategorySpec]], workers: int | None, progress: bool, desc: str
) -> int:
    """Render every category job, in this process or a process pool; return the file count.

    Each image's randomness comes from (seed, category, row, count), so the bytes do not
    depend on the worker count. Workers fork from a forkserver (plain fork is unsafe in a
    threaded caller; spawn would re-import torch in every worker), so scripts that call this
    with workers > 1 need the usual ``if __name__ == "__main__":`` guard.
    """
    count = _worker_count(workers, len(jobs))
    written = 0
    with tqdm(
        total=len(jobs), desc=desc, unit="category", disable=None if progress else True
    ) as bar:
        if count == 1:
            for job in jobs:
                written += write_category_job(job)
                bar.update(1)
            return written
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["__main__", fractal_render.__name__])
        with ProcessPoolExecutor(max_workers=count, mp_context=context) as pool:
            for future in as_completed([pool.submit(write_category_job, job) for job in jobs]):
                written += future.result()
                bar.update(1)
    return written


def _category_jobs(
    params_dir: str | Path, spec: CategorySpec
) -> list[tuple[str, np.ndarray, CategorySpec]]:
    """One job per CSV of ``params_dir``, every file parsed up front so bad input fails early."""
    return [(path.stem, read_param_file(path), spec) for path in list_param_files(params_dir)]


def write_ofdb(
    params_dir: str | Path,
    out_dir: str | Path,
    size: int = 362,
    points: int = 200_000,
    fmt: str = "png",
    draw: str = "patch_gray",
    workers: int | None = None,
    progress: bool = True,
    *,
    seed: int = 0,
    weight_row: Sequence[float] | None = OFDB_OFFICIAL_WEIGHT_ROW,
    keep_aspect: bool = False,
    burn_in: int = 0,
    vflip: bool = True,
) -> int:
    """Write 2D-OFDB: one image per category CSV, ``OUT/NAME/NAME_00_count_0_flip0.FMT``.

    ``fmt`` is "png" (official) or "ppm" (seed 000's copy). ``weight_row`` defaults to the
    official script's first row of weights_0.4.csv (a x 0.2); pass None for all ones.
    ``keep_aspect``, ``burn_in`` and ``vflip`` are the official quirks (``fractal_render``).
    Returns the number of images written; the bytes depend only on the inputs and ``seed``.
    """
    start = time.perf_counter()
    mode = _check_options(size, points, fmt, draw, burn_in)
    spec = CategorySpec(
        Path(out_dir),
        (_row_or_none(weight_row),),
        instances=1,
        flips=1,
        size=size,
        points=points,
        draw=mode,
        fmt=fmt,
        seed=seed,
        keep_aspect=keep_aspect,
        burn_in=burn_in,
        vflip=vflip,
    )
    written = _run_jobs(_category_jobs(params_dir, spec), workers, progress, "2D-OFDB")
    logger.info(
        "wrote %d 2D-OFDB images to %s in %.1f s", written, out_dir, time.perf_counter() - start
    )
    return written


def write_fractaldb(
    params_dir: str | Path,
    out_dir: str | Path,
    weights_file: str | Path,
    instances: int = 10,
    flips: int = 4,
    size: int = 362,
    points: int = 200_000,
    fmt: str = "png",
    draw: str = "patch_gray",
    workers: int | None = None,
    progress: bool = True,
    *,
    seed: int = 0,
    keep_aspect: bool = False,
    burn_in: int = 0,
    vflip: bool = True,
) -> int:
    """Write FractalDB: per category, weight rows x ``instances`` patch re-renders x ``flips``,
    named ``NAME/NAME_RR_count_C_flipF.FMT`` as the official renderer does.

    ``weights_file`` is a CSV path or the name of an official one ("0.4"). Point draw modes
    are deterministic, so like the official code they write count 0 only. Returns the number
    of images written.
    """
    start = time.perf_counter()
    mode = _check_options(size, points, fmt, draw, burn_in)
    if instances < 1 or not 1 <= flips <= 4:
        raise DataError(f"need instances >= 1 and 1 <= flips <= 4, got {instances}, {flips}")
    rows = tuple(tuple(float(v) for v in row) for row in read_weights(weights_file))
    spec = CategorySpec(
        Path(out_dir),
        rows,
        instances=instances,
        flips=flips,
        size=size,
        points=points,
        draw=mode,
        fmt=fmt,
        seed=seed,
        keep_aspect=keep_aspect,
        burn_in=burn_in,
        vflip=vflip,
    )
    written = _run_jobs(_category_jobs(params_dir, spec), workers, progress, "FractalDB")
    logger.info(
        "wrote %d FractalDB images to %s in %.1f s", written, out_dir, time.perf_counter() - start
    )
    return written


def _row_or_none(row: Sequence[float] | None) -> tuple[float, ...] | None:
    """A weight row as a tuple of 6 floats (None stays None: all ones)."""
    if row is None:
        return None
    values = tuple(float(v) for v in row)
    if len(values) != 6:
        raise DataError(f"a weight row has 6 factors (a..f), got {list(values)}")
    return values


class FractalDataset(Dataset):
    """Fractal images rendered in ``__getitem__``: pretraining at any scale without files.

    Item ``i`` is class ``i % n_classes``, instance ``k = i // n_classes``. Instance k uses flip
    ``k % flips``, weight row ``(k // flips) % len(weights)`` and patch re-render
    ``k // (flips * len(weights))``; its masks come from (seed, category, row, re-render) as
    in the writers, so item c of ``FractalDataset(dir, seed=s)`` equals the 2D-OFDB file that
    ``write_ofdb(dir, ..., seed=s)`` writes for category c. The dataset has
    ``n_classes * instances_per_class`` items, or ``length`` when given.
    """

    def __init__(
        self,
        params: str | Path | Sequence[np.ndarray],
        size: int = 362,
        points: int = 200_000,
        draw: str = "patch_gray",
        instances_per_class: int = 1,
        length: int | None = None,
        seed: int = 0,
        *,
        weights: str | Path | Sequence[Sequence[float] | None] | None = OFDB_WEIGHTS,
        flips: int = 1,
        as_tensor: bool = False,
        transform: Callable[[Image.Image], object] | None = None,
    ) -> None:
        self.names, self.params = _named_params(params)
        self.size, self.points, self.draw = size, points, _check_options(size, points, "png", draw)
        self.seed, self.flips, self.as_tensor, self.transform = seed, flips, as_tensor, transform
        self.weight_rows = _weight_rows(weights)
        if instances_per_class < 1 or not 1 <= flips <= 4 or (length is not None and length < 0):
            raise DataError(
                f"need instances >= 1, 1 <= flips <= 4, length >= 0; got "
                f"{instances_per_class}, {flips}, {length}"
            )
        self.length = length if length is not None else len(self.params) * instances_per_class

    @property
    def classes(self) -> list[str]:
        """Category names, index = label."""
        return list(self.names)

    def __len__(self) -> int:
        return self.length

    def render_array(self, index: int) -> tuple[np.ndarray, int]:
        """Item ``index`` as an (H, W, 3) uint8 array and its label."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} fractal images")
        label, instance = index % len(self.params), index // len(self.params)
        flip, rest = instance % self.flips, instance // self.flips
        row, count = rest % len(self.weight_rows), rest // len(self.weight_rows)
        xs, ys = fractal_points(self.params[label], self.size, self.points, self.weight_rows[row])
        rng = np.random.default_rng([self.seed, category_key(self.names[label]), row, count])
        return orient(draw_canvas(xs, ys, self.size, self.draw, rng=rng), flip), label

    def __getitem__(self, index: int) -> tuple[object, int]:
        array, label = self.render_array(index)
        if self.as_tensor:
            return torch.from_numpy(array).permute(2, 0, 1).contiguous(), label
        image = Image.fromarray(array)
        return (self.transform(image) if self.transform else image), label


def _named_params(params: str | Path | Sequence[np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
    """(names, arrays) from a parameter folder (file stems) or arrays (names 00000...)."""
    if isinstance(params, str | Path):
        paths = list_param_files(params)
        return [p.stem for p in paths], [read_param_file(p) for p in paths]
    arrays = [np.asarray(p, dtype=np.float64) for p in params]
    if not arrays:
        raise DataError("FractalDataset needs at least one category")
    return [f"{i:05d}" for i in range(len(arrays))], arrays


def _weight_rows(weights: str | Path | Sequence[Sequence[float] | None] | None) -> list:
    """Weight rows from a weights file, a list of rows, or None (one all-ones row)."""
    if weights is None:
        return [None]
    if isinstance(weights, str | Path):
        return [tuple(row) for row in read_weights(weights)]
    rows = [_row_or_none(row) for row in weights]
    if not rows:
        raise DataError("FractalDataset needs at least one weight row (or weights=None)")
    return rows
