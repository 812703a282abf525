"""Benchmark: imagefit's training step (``train_one_epoch``) vs a minimal hand-written loop.

    python benchmarks/fit_vs_loop.py                       # SimpleCNN + resnet18, 32 px, CPU
    python benchmarks/fit_vs_loop.py --models resnet18 --batch 128 --rounds 7

Both sides train the same architecture from the same weights on the same pre-made batches
(channels_last float, on the device), with the same threads and the same optimizer kernels
(imagefit resolves ``optim.implementation=auto``; the hand loop is given that choice), so the
ratio measures what imagefit's loop adds: the finiteness check (the one host sync), running
metrics on the device, the stop flag, progress bar, grad-norm. Goal: >= 0.95 on CPU, >= 0.97 on
GPU (AMP bf16 there, as imagefit's default). A second line shows imagefit's default optimizer
kernels against torch's default ones (a per-tensor loop on CPU).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from imagefit.config import FinetuneConfig, OptimConfig
from imagefit.evaluate.inference import Precision
from imagefit.models.registry import create_model
from imagefit.train.loop import EpochProgress, train_one_epoch
from imagefit.train.optim import create_optimizer, kernel_options

from _timing import interleaved, median, ratio_line


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["simple_cnn", "resnet18"])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=0, help="steps per round (default: per model)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args()


class Batches:
    """The loader interface train_one_epoch reads, over fixed pre-made batches."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.batches[start:])


def make_batches(
    args: argparse.Namespace, steps: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        x = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
        y = torch.randint(0, 10, (args.batch,), generator=generator)
        out.append((x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def imagefit_case(
    model: nn.Module,
    batches: Batches,
    device: torch.device,
    dtype: torch.dtype | None,
    implementation: str = "auto",
):
    optimizer = create_optimizer(
        model, OptimConfig(name="adamw", implementation=implementation), FinetuneConfig()
    )
    precision = Precision(device, dtype, None, channels_last=True)
    criterion = nn.CrossEntropyLoss()

    def run() -> float:
        sync(device)
        start = time.perf_counter()
        train_one_epoch(model, batches, optimizer, criterion, precision, 0, EpochProgress())
        sync(device)
        return len(batches) * batches.batches[0][0].shape[0] / (time.perf_counter() - start)

    return run


def hand_case(
    model: nn.Module,
    batches: Batches,
    device: torch.device,
    dtype: torch.dtype | None,
    kernels: dict[str, bool] | None = None,
):
    """The minimal loop: forward, loss, zero_grad, backward, step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, **(kernels or {}))

    def run() -> float:
        model.train()
        sync(device)
        start = time.perf_counter()
        for x, y in batches.batches:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        return len(batches) * batches.batches[0][0].shape[0] / (time.perf_counter() - start)

    return run


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> None:
    dtype = torch.bfloat16 if device.type == "cuda" else None
    steps = args.steps or (40 if name == "simple_cnn" or device.type == "cuda" else 4)
    batches = Batches(make_batches(args, steps, device))
    base = create_model(name, 10).to(device, memory_format=torch.channels_last)
    kernels = kernel_options("auto", device)
    cases = {
        "imagefit": imagefit_case(copy.deepcopy(base), batches, device, dtype),
        "hand": hand_case(copy.deepcopy(base), batches, device, dtype, kernels),
        "hand (torch default kernels)": hand_case(copy.deepcopy(base), batches, device, dtype),
    }
    for run in cases.values():
        run()  # warm-up: allocator, optimizer state, cuDNN/oneDNN kernel choice
    samples = interleaved(cases, args.rounds)
    print(
        f"\n{name} at {args.size} px, batch {args.batch}, {steps} steps/round, {args.rounds} rounds, "
        f"{device}, {torch.get_num_threads()} threads, optimizer kernels {kernels}, amp {dtype}"
    )
    goal = 0.97 if device.type == "cuda" else 0.95
    print(
        "  "
        + ratio_line(
            "imagefit step vs hand loop (same kernels)", samples["imagefit"], samples["hand"], goal
        )
    )
    print(
        "  "
        + ratio_line(
            "imagefit defaults vs hand loop with torch defaults",
            samples["imagefit"],
            samples["hand (torch default kernels)"],
        )
    )
    print("  medians: " + ", ".join(f"{k} {median(v):,.1f} img/s" for k, v in samples.items()))


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for name in args.models:
        bench_model(name, args, device)


if __name__ == "__main__":
    main()
