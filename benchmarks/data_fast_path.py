"""Benchmark: imagefit's small-image fast path vs torchvision ImageFolder + DataLoader.

    python benchmarks/data_fast_path.py                  # 5,000 CIFAR-like 32 px PNGs
    python benchmarks/data_fast_path.py --images 10000 --rounds 5 --workers 2

Both deliver one epoch of augmented, normalised 32 px training batches (float, N x 3 x 32 x 32)
from the same PNG files: torchvision decodes every image every epoch in ``--workers`` loader
processes and augments it per sample (RandomCrop(32, padding=4) + RandomHorizontalFlip +
ToTensor + Normalize); imagefit reads its decoded uint8 cache (decoded once, before timing;
that one-off cost is printed too) and augments whole batches with one affine warp (random
shift up to 4 px + flip) in the main process. Goal: >= 5x.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from imagefit.config import config_from_dict
from imagefit.data.loaders import build_data

from _timing import interleaved, median, ratio_line

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="torchvision DataLoader workers")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--root", type=Path, help="reuse/keep the PNG folder here")
    return parser.parse_args()


def write_pngs(root: Path, count: int) -> Path:
    """``count`` CIFAR-like 32 px PNGs in 10 class folders (smooth shapes plus noise)."""
    if root.is_dir() and sum(1 for _ in root.rglob("*.png")) >= count:
        return root
    rng = np.random.default_rng(0)
    for index in range(count):
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((32, 32), Image.Resampling.BICUBIC)
        pixels = np.clip(
            np.asarray(image, dtype=np.int16) + rng.integers(-12, 12, (32, 32, 3)), 0, 255
        )
        target = root / f"class_{index % 10}" / f"{index:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(target)
    return root


def torchvision_epoch(root: Path, args: argparse.Namespace):
    augment = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    dataset = datasets.ImageFolder(str(root), transform=augment)
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers)

    def run() -> float:
        start, seen = time.perf_counter(), 0
        for x, _ in loader:
            seen += len(x)
        return seen / (time.perf_counter() - start)

    return run


def imagefit_epoch(root: Path, cache: Path, args: argparse.Namespace):
    cfg = config_from_dict(
        {
            "data": {
                "root": str(root),
                "image_size": 32,
                "cache": "always",
                "cache_dir": str(cache),
                "val_fraction": 0.01,
                "test_fraction": 0.0,
                "mean": list(MEAN),
                "std": list(STD),
            },
            "augment": {"translate": 4 / 32, "hflip": 0.5},
            "train": {"batch_size": args.batch, "device": "cpu"},
        }
    )
    started = time.perf_counter()
    data = build_data(cfg, torch.device("cpu"))
    print(
        f"imagefit: one-off decode into the cache: {time.perf_counter() - started:.1f} s "
        f"({data.train.num_samples + data.val.num_samples} images)"
    )
    state = {"epoch": 0}

    def run() -> float:
        start, seen = time.perf_counter(), 0
        for x, _ in data.train.epoch(state["epoch"]):
            seen += len(x)
        state["epoch"] += 1
        return seen / (time.perf_counter() - start)

    return run


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_pngs(args.root or Path(tmp) / "pngs", args.images)
        cases = {
            "imagefit": imagefit_epoch(root, Path(tmp) / "cache", args),
            "torchvision": torchvision_epoch(root, args),
        }
        samples = interleaved(cases, args.rounds)
    print(
        f"{args.images} PNGs at 32 px, batch {args.batch}, torchvision with {args.workers} workers, "
        f"{torch.get_num_threads()} torch threads, {args.rounds} interleaved epochs each"
    )
    print(
        ratio_line(
            "imagefit fast path vs torchvision ImageFolder+DataLoader",
            samples["imagefit"],
            samples["torchvision"],
            goal=5.0,
        )
    )
    print("medians: " + ", ".join(f"{k} {median(v):,.0f} images/s" for k, v in samples.items()))


if __name__ == "__main__":
    main()
