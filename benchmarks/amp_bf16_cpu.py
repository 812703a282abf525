"""bf16 autocast on a CPU with native bf16 against exact fp32: accuracy over seeds, and speed.

Real flower photos, resnet18 from scratch, the same split, schedule and augmentation for
both; only ``train.amp`` differs (``off`` vs ``bf16``). Prints test accuracy mean ± std per
precision and the wall-time ratio. ``train.amp: auto`` picks bf16 on such a CPU only because
this shows the accuracy unchanged within the seed-to-seed noise.

    python benchmarks/amp_bf16_cpu.py [--epochs 4] [--size 64] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from imagefit.config import config_from_dict
from imagefit.models.registry import create_model
from imagefit.train.fit import fit
from imagefit.train.runtime import cpu_has_native_bf16

from _timing import interleaved, ratio_line

FLOWERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "flowers"


def one_run(root: Path, out: Path, amp: str, seed: int, args: argparse.Namespace) -> tuple:
    cfg = config_from_dict(
        {
            "data": {"root": str(root), "image_size": args.size, "num_workers": 0},
            "augment": {"scale": [0.08, 1.0], "translate": 0.0, "hflip": 0.5},
            "model": {"name": "resnet18"},
            "optim": {"name": "adamw", "lr": 2e-3, "weight_decay": 0.05},
            "schedule": {"name": "cosine"},
            "train": {
                "epochs": args.epochs,
                "batch_size": 32,
                "seed": seed,
                "amp": amp,
                "device": "cpu",
            },
            "output": {"dir": str(out), "name": f"{amp}-{seed}"},
        }
    )
    started = time.perf_counter()
    result = fit(cfg)
    return result.metrics["accuracy"], time.perf_counter() - started


def step_rate(dtype: torch.dtype | None, size: int, batch: int = 32, steps: int = 3) -> float:
    """Training images/s of resnet18 (forward, backward, AdamW step) under autocast ``dtype``."""
    torch.manual_seed(0)
    model = create_model("resnet18", 5).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (batch,))
    started = 0.0
    for step in range(steps + 1):  # the first step warms oneDNN's kernels up, untimed
        if step == 1:
            started = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(FLOWERS))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=5, help="training-step speed rounds")
    parser.add_argument("--speed-only", action="store_true")
    args = parser.parse_args()
    print(f"native bf16 on this CPU: {cpu_has_native_bf16()}")
    rates = interleaved(
        {
            "fp32": lambda: step_rate(None, args.size),
            "bf16": lambda: step_rate(torch.bfloat16, args.size),
        },
        args.rounds,
    )
    print(
        ratio_line(f"resnet18 train step {args.size}px, bf16 vs fp32", rates["bf16"], rates["fp32"])
    )
    if args.speed_only:
        return
    results: dict[str, list[tuple[float, float]]] = {"off": [], "bf16": []}
    with tempfile.TemporaryDirectory() as out:
        for seed in args.seeds:
            for amp in results:  # interleaved, so load from elsewhere hits both alike
                acc, seconds = one_run(Path(args.data), Path(out), amp, seed, args)
                results[amp].append((acc, seconds))
                print(f"seed {seed} amp {amp:4}: test accuracy {acc:.4f}  {seconds:.1f}s")
    print(f"\n{'amp':6} {'test accuracy (mean ± std)':28} {'wall s (mean)':>14}")
    for amp, rows in results.items():
        accs, secs = [a for a, _ in rows], [s for _, s in rows]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(
            f"{amp:6} {statistics.mean(accs):.4f} ± {spread:.4f}{'':11} {statistics.mean(secs):14.1f}"
        )
    fp32, bf16 = (statistics.mean(s for _, s in results[k]) for k in ("off", "bf16"))
    print(f"bf16 / fp32 wall time: {bf16 / fp32:.2f}x")


if __name__ == "__main__":
    main()
