"""RandAugment on a batch of tensors against timm's PIL ops one image at a time: images/s.

The same timm spec (``rand-m9-mstd0.5-inc1``), the same real flower photos centre-cropped to
``--size``, batches of ``--batch``. Baseline: imagefit's PIL path, which is timm's
``rand_augment_transform`` applied to each image of the batch (what a DataLoader worker
does); candidate: the tensor ops on the whole batch (:mod:`imagefit.data.randaugment`).
Rounds are interleaved; prints the ratio with its per-round range.

    python benchmarks/randaugment_batch.py [--size 224] [--batch 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from imagefit.config import IMAGENET_MEAN
from imagefit.data.batch_ops import RandAugment
from imagefit.data.images import load_rgb, resize_center_crop

from _timing import interleaved, ratio_line

FLOWERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "flowers"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--spec", default="rand-m9-mstd0.5-inc1")
    args = parser.parse_args()
    files = sorted(FLOWERS.glob("*/*.jpg"))[:: max(1, 1200 // args.batch)][: args.batch]
    pixels = np.stack(
        [np.asarray(resize_center_crop(load_rgb(f), args.size), np.uint8) for f in files]
    )
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
    y = torch.zeros(len(x), dtype=torch.int64)
    tensor = RandAugment(args.spec, args.size, IMAGENET_MEAN)
    pil = RandAugment(args.spec, args.size, IMAGENET_MEAN)
    pil.tensor = None  # the per-image PIL path: timm's ops
    assert tensor.tensor is not None, f"{args.spec}: not every op has a tensor version"

    def rate(op: RandAugment) -> float:
        start = time.perf_counter()
        op(x.clone(), y, torch.Generator().manual_seed(0))
        return len(x) / (time.perf_counter() - start)

    rates = interleaved({"pil": lambda: rate(pil), "tensor": lambda: rate(tensor)}, args.rounds)
    print(
        f"RandAugment {args.spec}, {len(x)} real photos at {args.size}px, "
        f"{torch.get_num_threads()} threads"
    )
    print(ratio_line("tensor batch vs PIL per image, images", rates["tensor"], rates["pil"]))


if __name__ == "__main__":
    main()
