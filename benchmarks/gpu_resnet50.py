"""Benchmark (GPU): ResNet-50 training throughput and its share of the GPU's bf16 peak; and
CIFAR-scale ResNet training with the on-device data path, with the share of step time in data.

    python benchmarks/gpu_resnet50.py                       # needs CUDA; else says so and stops
    python benchmarks/gpu_resnet50.py --peak-tflops 989     # your GPU's dense bf16 peak
    python benchmarks/gpu_resnet50.py --compile             # also with torch.compile
    python benchmarks/gpu_resnet50.py --smoke               # tiny sizes on a CPU: checks the script

Part 1: resnet50 at 224 px, batch ``--batch``, AMP bf16, channels_last, fused AdamW, through
imagefit's ``train_one_epoch`` on batches already on the GPU. Achieved TFLOPS = FLOPs of one
training step (counted by torch's FlopCounterMode: convolutions and matmuls, forward and
backward) x steps/s; the fraction is against the dense bf16 peak of the GPU (a table of
common GPUs, or ``--peak-tflops``).

Part 2: resnet18 at 32 px on a CIFAR-sized uint8 dataset (50,000 images) held on the GPU, batch
512, imagefit's Loader (on-device gather, whole-pixel shift + flip, normalise) feeding
``train_one_epoch``; the data share is the time of the loader alone over the time of training.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import timm
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from imagefit.config import AugmentConfig, FinetuneConfig, OptimConfig
from imagefit.data.augment import BatchAugment
from imagefit.data.loaders import ArraySource, Loader
from imagefit.evaluate.inference import Precision
from imagefit.train.loop import EpochProgress, train_one_epoch
from imagefit.train.optim import create_optimizer

# Dense (no sparsity) bf16 tensor-core peaks in TFLOPS, from the vendors' data sheets.
BF16_PEAK = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "RTX 4090": 165.2,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, any device")
    return parser.parse_args()


class Batches:
    def __init__(self, x: torch.Tensor, y: torch.Tensor, steps: int):
        self.x, self.y, self.steps = x, y, steps

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int, start: int = 0):
        for _ in range(start, self.steps):
            yield self.x, self.y


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((tflops for key, tflops in BF16_PEAK.items() if key in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resnet50_part(device: torch.device, args: argparse.Namespace, compiled: bool) -> None:
    size, batch = (32, 4) if args.smoke else (224, args.batch)
    model = timm.create_model("resnet50", num_classes=1000).to(
        device, memory_format=torch.channels_last
    )
    net = torch.compile(model) if compiled else model
    optimizer = create_optimizer(model, OptimConfig(name="adamw"), FinetuneConfig())
    precision = Precision(device, torch.bfloat16 if device.type == "cuda" else None, None, True)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, 1000, (batch,), device=device)
    criterion = nn.CrossEntropyLoss()
    steps = 2 if args.smoke else args.steps
    with FlopCounterMode(display=False) as counter:
        train_one_epoch(net, Batches(x, y, 1), optimizer, criterion, precision, 0, EpochProgress())
    train_one_epoch(
        net, Batches(x, y, 3), optimizer, criterion, precision, 0, EpochProgress()
    )  # warm-up
    sync(device)
    start = time.perf_counter()
    train_one_epoch(net, Batches(x, y, steps), optimizer, criterion, precision, 0, EpochProgress())
    sync(device)
    seconds = time.perf_counter() - start
    tflops = counter.get_total_flops() * steps / seconds / 1e12
    peak = peak_tflops(device, args.peak_tflops)
    share = (
        f", {tflops / peak:.1%} of the {peak:g} TFLOPS bf16 peak"
        if peak
        else " (peak unknown: --peak-tflops)"
    )
    print(
        f"resnet50 {size} px batch {batch} bf16 channels_last{' compiled' if compiled else ''}: "
        f"{steps * batch / seconds:,.0f} images/s, {tflops:.1f} TFLOPS achieved{share}"
    )


def cifar_part(device: torch.device, args: argparse.Namespace) -> None:
    count, batch, steps = (512, 64, 4) if args.smoke else (50_000, 512, 0)
    pixels = torch.from_numpy(
        np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    )
    source = ArraySource(pixels, (np.arange(count) % 10).tolist(), device)
    augment = BatchAugment(AugmentConfig(translate=0.125, hflip=0.5), 32, 10)
    loader = Loader(
        source,
        batch,
        device,
        shuffle=True,
        augment=augment,
        seed=0,
        mean=(0.49, 0.48, 0.45),
        std=(0.25, 0.24, 0.26),
        limit=steps or None,
    )
    model = timm.create_model("resnet18", num_classes=10).to(
        device, memory_format=torch.channels_last
    )
    optimizer = create_optimizer(model, OptimConfig(name="sgd", lr=0.1), FinetuneConfig())
    precision = Precision(device, torch.bfloat16 if device.type == "cuda" else None, None, True)
    train_one_epoch(
        model, loader, optimizer, nn.CrossEntropyLoss(), precision, 0, EpochProgress()
    )  # warm-up
    sync(device)
    start = time.perf_counter()
    progress = train_one_epoch(
        model, loader, optimizer, nn.CrossEntropyLoss(), precision, 1, EpochProgress()
    )
    sync(device)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in loader.epoch(2):
        pass
    sync(device)
    data_s = time.perf_counter() - start
    print(
        f"resnet18 32 px CIFAR-scale ({count} images on {device}), batch {batch}: "
        f"{progress.count / train_s:,.0f} images/s training; data (gather + augment + normalise) "
        f"{data_s / train_s:.1%} of the step time ({progress.count / data_s:,.0f} images/s alone)"
    )


def main() -> None:
    args = parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print(
            "gpu_resnet50: no CUDA device here; skipped (run it on a GPU, or --smoke to check it)"
        )
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    resnet50_part(device, args, compiled=False)
    if args.compile:
        resnet50_part(device, args, compiled=True)
    cifar_part(device, args)


if __name__ == "__main__":
    main()
