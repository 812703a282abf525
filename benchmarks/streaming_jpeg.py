"""Benchmark: imagefit's streaming JPEG decoding vs Pillow + torchvision transforms, per core.

    python benchmarks/streaming_jpeg.py                         # 200 photo-sized JPEGs -> 224 px
    python benchmarks/streaming_jpeg.py --size 64 --images 400 --loader

Per core: one process, one thread, file -> (S, S, 3) uint8 at ``--size``. The baseline is the
usual torchvision pipeline, ``Image.open().convert("RGB")`` -> ``Resize(S)`` -> ``CenterCrop(S)``
-> ``PILToTensor``. imagefit's ``data.decoder=torchvision`` decodes with libjpeg-turbo through
``torchvision.io.decode_jpeg`` and resizes with torch's antialiased bilinear; the canonical
``pillow`` decoder is shown too (it should match the baseline). Goal: >= 1.1x.
``--loader`` also times the whole streaming loader (imagefit StreamSource vs ImageFolder +
DataLoader, both with ``--workers`` worker processes).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from imagefit.data.decode import decode_array
from imagefit.data.loaders import StreamSource

from _timing import interleaved, median, ratio_line


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--width", type=int, default=500, help="source width (height 3/4 of it)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--loader", action="store_true", help="also time the DataLoader paths")
    parser.add_argument("--workers", type=int, default=2)
    return parser.parse_args()


def write_jpegs(root: Path, count: int, width: int) -> list[Path]:
    """Photo-like JPEGs (smooth colour fields, texture noise), quality 90, 4:2:0."""
    rng = np.random.default_rng(0)
    height, paths = width * 3 // 4, []
    for index in range(count):
        coarse = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
        smooth = np.asarray(
            Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        )
        pixels = np.clip(smooth.astype(np.int16) + rng.integers(-20, 20, smooth.shape), 0, 255)
        paths.append(root / f"class_{index % 2}" / f"{index:04d}.jpg")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def per_core(paths: list[Path], size: int, decode) -> float:
    start = time.perf_counter()
    for path in paths:
        decode(path)
    return len(paths) / (time.perf_counter() - start)


def baseline_decoder(size: int):
    pipeline = transforms.Compose(
        [transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()]
    )
    return lambda path: pipeline(Image.open(path).convert("RGB"))


def loader_cases(root: Path, paths: list[Path], args: argparse.Namespace) -> dict:
    samples = [(p, int(p.parent.name[-1])) for p in paths]
    source = StreamSource(samples, args.size, 1, False, args.workers, False, "torchvision")
    order = [np.arange(i, min(i + 32, len(samples))) for i in range(0, len(samples), 32)]
    pipeline = transforms.Compose(
        [transforms.Resize(args.size), transforms.CenterCrop(args.size), transforms.PILToTensor()]
    )
    folder = DataLoader(
        datasets.ImageFolder(str(root), transform=pipeline), batch_size=32, num_workers=args.workers
    )

    def ours() -> float:
        start = time.perf_counter()
        seen = sum(len(x) for x, _ in source.batches(order))
        return seen / (time.perf_counter() - start)

    def theirs() -> float:
        start = time.perf_counter()
        seen = sum(len(x) for x, _ in folder)
        return seen / (time.perf_counter() - start)

    return {"imagefit StreamSource": ours, "ImageFolder+DataLoader": theirs}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_jpegs(Path(tmp), args.images, args.width)
        base = baseline_decoder(args.size)
        cases = {
            "torchvision decoder": lambda: per_core(
                paths, args.size, lambda p: decode_array(p, args.size, decoder="torchvision")
            ),
            "pillow decoder": lambda: per_core(
                paths, args.size, lambda p: decode_array(p, args.size)
            ),
            "Pillow + torchvision transforms": lambda: per_core(paths, args.size, base),
        }
        samples = interleaved(cases, args.rounds)
        print(
            f"{args.images} JPEGs {args.width}x{args.width * 3 // 4} -> {args.size} px, one core, "
            f"{args.rounds} interleaved rounds"
        )
        base_samples = samples["Pillow + torchvision transforms"]
        print(
            ratio_line(
                "imagefit torchvision decoder vs Pillow+transforms",
                samples["torchvision decoder"],
                base_samples,
                goal=1.1,
            )
        )
        print(
            ratio_line(
                "imagefit pillow decoder (canonical) vs Pillow+transforms",
                samples["pillow decoder"],
                base_samples,
            )
        )
        print("medians: " + ", ".join(f"{k} {median(v):,.1f} images/s" for k, v in samples.items()))
        if args.loader:
            loaders = interleaved(loader_cases(Path(tmp), paths, args), max(3, args.rounds // 2))
            print(f"loaders with {args.workers} workers on {os.cpu_count()} cores:")
            print(
                ratio_line(
                    "imagefit StreamSource (torchvision decoder) vs ImageFolder+DataLoader",
                    loaders["imagefit StreamSource"],
                    loaders["ImageFolder+DataLoader"],
                )
            )


if __name__ == "__main__":
    main()
