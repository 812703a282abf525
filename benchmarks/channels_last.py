"""Benchmark: channels_last vs NCHW (contiguous) memory format for ResNet training on a CPU.

    python benchmarks/channels_last.py                        # resnet18 + resnet50, 112 px
    python benchmarks/channels_last.py --size 224 --batch 32 --rounds 7

One training step (forward, backward, fused AdamW step) per measurement, the two formats
interleaved round by round in this process with the same threads and weights; the ratio is
channels_last images/s over NCHW images/s (``train.channels_last`` defaults to true). On a
GPU (``--device cuda``) the same comparison runs under bf16 autocast.
"""

from __future__ import annotations

import argparse
import copy
import time

import timm
import torch
import torch.nn.functional as F

from _timing import interleaved, median, ratio_line


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2, help="training steps per measurement")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def case(model: torch.nn.Module, fmt: torch.memory_format, args: argparse.Namespace):
    device = torch.device(args.device)
    model = model.to(device, memory_format=fmt)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device).contiguous(
        memory_format=fmt
    )
    y = torch.randint(0, 1000, (args.batch,), device=device)
    dtype = torch.bfloat16 if device.type == "cuda" else None

    def run() -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return args.steps * args.batch / (time.perf_counter() - start)

    return run


def main() -> None:
    args = parse_args()
    for name in args.models:
        base = timm.create_model(name, num_classes=1000)
        cases = {
            "channels_last": case(copy.deepcopy(base), torch.channels_last, args),
            "nchw": case(copy.deepcopy(base), torch.contiguous_format, args),
        }
        for run in cases.values():
            run()  # warm-up: oneDNN picks its kernels for each layout on first use
        samples = interleaved(cases, args.rounds)
        print(
            f"{name} at {args.size} px, batch {args.batch}, {args.device}, {torch.get_num_threads()} threads, "
            f"{args.rounds} rounds x {args.steps} steps"
        )
        print(
            "  "
            + ratio_line(
                "channels_last vs NCHW (training)", samples["channels_last"], samples["nchw"]
            )
        )
        print("  medians: " + ", ".join(f"{k} {median(v):,.1f} img/s" for k, v in samples.items()))


if __name__ == "__main__":
    main()
