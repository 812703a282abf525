"""Benchmark: distributed data parallel on a CPU, 1 vs 2 processes (gloo), same global batch.

    python benchmarks/ddp_overhead.py                      # resnet18, 32 px digits, 1 epoch
    python benchmarks/ddp_overhead.py --model simple_cnn --rounds 5

Each case is a real ``imagefit train`` in fresh processes, reading ``train_images_per_s`` (the
training loop only: no start-up, evaluation or checkpoints) from the run's summary.json:

- 1 process, 1 thread, batch 2B;
- 2 processes (torchrun, gloo), 1 thread each, batch B each (global 2B);
- 1 process, 2 threads, batch 2B (the other way to use two cores).

Perfect scaling would make the 2-process figure twice the 1-process 1-thread one; the
efficiency printed is the measured share of that.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from imagefit.datasets.digits import write_digits

from _timing import interleaved, median, ratio_line


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32, help="per process in the 2-process case")
    parser.add_argument("--rounds", type=int, default=3)
    return parser.parse_args()


def run_case(
    work: Path, root: Path, args: argparse.Namespace, processes: int, threads: int
) -> float:
    out = work / f"runs-{processes}x{threads}"
    batch = args.batch * 2 // processes  # the same global batch in every case
    config = {
        "data": {
            "root": str(root),
            "image_size": args.size,
            "num_workers": 0,
            "cache_dir": str(work / "cache"),
        },
        "model": {"name": args.model},
        "optim": {"name": "sgd", "lr": 0.05},
        "train": {"epochs": 1, "batch_size": batch, "threads": threads},
        "output": {"dir": str(out)},
    }
    path = work / f"c-{processes}x{threads}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
    ]
    command = (launcher if processes > 1 else [sys.executable]) + [
        "-m",
        "imagefit",
        "-q",
        "train",
        str(path),
    ]
    subprocess.run(command, check=True, capture_output=True)
    summary = sorted(out.glob("*/summary.json"))[-1]
    return json.loads(summary.read_text())["train_images_per_s"]


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        root = write_digits(work / "digits")
        run_case(work, root, args, 1, 1)  # fills the image cache, which every case then reads
        cases = {
            "1 process x 1 thread": lambda: run_case(work, root, args, 1, 1),
            "2 processes x 1 thread (DDP)": lambda: run_case(work, root, args, 2, 1),
            "1 process x 2 threads": lambda: run_case(work, root, args, 1, 2),
        }
        samples = interleaved(cases, args.rounds)
    one, two, threads = (samples[k] for k in cases)
    print(
        f"{args.model} at {args.size} px on digits, global batch {2 * args.batch}, 1 epoch, {args.rounds} rounds"
    )
    print(ratio_line("2 processes (DDP, gloo) vs 1 process, 1 thread each", two, one))
    print(
        f"scaling efficiency: {median([t / o for t, o in zip(two, one, strict=True)]) / 2:.0%} of perfect"
    )
    print(ratio_line("2 processes (DDP) vs 1 process with 2 threads", two, threads))
    print("medians: " + ", ".join(f"{k} {median(v):,.1f} images/s" for k, v in samples.items()))


if __name__ == "__main__":
    main()
