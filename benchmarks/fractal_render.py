"""Benchmark: imagefit's fractal renderer vs the literal official per-point renderer.

    python benchmarks/fractal_render.py                      # renderer speed and ratio
    python benchmarks/fractal_render.py --ofdb               # + 2D-OFDB-1k search and render
    python benchmarks/fractal_render.py --official-search 10 # + official-compatible search

Both renderers are timed in this run at the same size and draw mode; the reference is timed
on fewer points and scaled linearly to the full count (its cost is per point), which the
output says. Images/s count rendering to an array (no file encoding) for both.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from imagefit.datasets.fractal.dataset import (
    read_params,
    render,
    search_categories,
    write_ofdb,
    write_params,
)
from imagefit.datasets.fractal.render import random_masks

# The slow literal port of the official renderer is a test helper, not part of the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.fractal_reference import reference_render

OFFICIAL_PARAMS = (
    Path(__file__).resolve().parent.parent / "tests" / "data" / "fractaldb1k-official-params"
)


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=OFFICIAL_PARAMS, help="category CSVs")
    parser.add_argument("--size", type=int, default=362)
    parser.add_argument("--points", type=int, default=200_000)
    parser.add_argument("--draw", default="patch_gray")
    parser.add_argument("--images", type=int, default=50, help="images for the fast renderer")
    parser.add_argument("--reference-points", type=int, default=20_000)
    parser.add_argument("--reference-images", type=int, default=2)
    parser.add_argument("--ofdb", action="store_true", help="time 2D-OFDB-1k search + render")
    parser.add_argument("--categories", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=None, help="default: all cores")
    parser.add_argument("--format", default="png", choices=("png", "ppm"))
    parser.add_argument("--official-search", type=int, default=0, metavar="N")
    return parser.parse_args()


def load_params(folder: Path) -> list[np.ndarray]:
    """The benchmark categories: ``folder`` if it exists, else 10 freshly searched ones."""
    if folder.is_dir():
        return read_params(folder)
    return search_categories(10, progress=False)


def time_fast(params: list[np.ndarray], args: argparse.Namespace) -> float:
    """Images per second of ``render`` (after one warm-up call that compiles the kernels)."""
    render(params[0], args.size, 1000, args.draw)
    start = time.perf_counter()
    for index in range(args.images):
        render(params[index % len(params)], args.size, args.points, args.draw, rng=index)
    return args.images / (time.perf_counter() - start)


def time_reference(params: list[np.ndarray], args: argparse.Namespace) -> tuple[float, bool]:
    """Estimated images per second of the reference at full points, and whether it matched
    the fast renderer pixel for pixel on the reduced point count."""
    elapsed, identical = 0.0, True
    for index in range(args.reference_images):
        category = params[index % len(params)]
        masks = random_masks(np.random.default_rng(index), args.reference_points)
        start = time.perf_counter()
        slow = reference_render(category, args.size, args.reference_points, args.draw, masks)
        elapsed += time.perf_counter() - start
        fast = render(category, args.size, args.reference_points, args.draw, masks=masks)
        identical = identical and np.array_equal(slow, fast)
    per_image = elapsed / args.reference_images * (args.points / args.reference_points)
    return 1.0 / per_image, identical


def time_ofdb(args: argparse.Namespace) -> None:
    """Search ``--categories`` categories (fast mode) and write 2D-OFDB: total wall time."""
    workers = args.workers or len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        categories = search_categories(args.categories, workers=workers, progress=False)
        searched = time.perf_counter() - start
        write_params(categories, Path(tmp) / "params")
        count = write_ofdb(
            Path(tmp) / "params",
            Path(tmp) / "ofdb",
            args.size,
            args.points,
            args.format,
            args.draw,
            workers=workers,
            progress=False,
        )
        total = time.perf_counter() - start
    print(
        f"2D-OFDB-{args.categories}: search {searched:.1f} s + render/write {count} "
        f"{args.format} images {total - searched:.1f} s = {total:.1f} s total "
        f"on {workers} workers"
    )


def time_official_search(count: int) -> None:
    """Official-compatible (bit-exact, sequential) search of ``count`` categories."""
    search_categories(1, compat="official", progress=False)  # compile outside the timing
    start = time.perf_counter()
    search_categories(count, compat="official", progress=False)
    elapsed = time.perf_counter() - start
    print(
        f"official-compatible search: {count} categories in {elapsed:.1f} s "
        f"({elapsed / count:.2f} s per category, one core)"
    )


def main() -> None:
    """Run the selected measurements and print them."""
    args = parse_args()
    params = load_params(args.params)
    fast = time_fast(params, args)
    slow, identical = time_reference(params, args)
    print(f"{args.size} px, {args.points:,} points, {args.draw}, one core each:")
    print(f"  imagefit renderer : {fast:8.2f} images/s ({args.images} images)")
    scale = args.points / args.reference_points
    print(
        f"  reference renderer: {slow:8.4f} images/s (timed on {args.reference_points:,} "
        f"points x {args.reference_images} images, scaled x{scale:g}; "
        f"pixel-identical to imagefit there: {'yes' if identical else 'NO'})"
    )
    print(f"  ratio             : {fast / slow:8.0f}x (goal >= 100x)")
    if args.official_search:
        time_official_search(args.official_search)
    if args.ofdb:
        time_ofdb(args)


if __name__ == "__main__":
    main()
