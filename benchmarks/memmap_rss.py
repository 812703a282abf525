"""Benchmark: peak resident memory against dataset size, memory-mapped cache vs in memory.

    python benchmarks/memmap_rss.py                          # 2k, 8k, 32k PNGs at 64 px
    python benchmarks/memmap_rss.py --sizes 1000 4000 16000 --image-size 32

One set of PNGs is written (as many as the largest size); each dataset size is a split
manifest over the first N of them (``data.split_manifest``), so the sizes differ in nothing
else. For every size, fresh child processes run ``build_data`` and iterate one training epoch
of augmented batches; the peak RSS of each child (``ru_maxrss`` from ``os.wait4``) is printed
next to the decoded dataset size (N x S x S x 3 bytes):

- ``memmap, cold``: ``data.memory_budget_mb=1`` with an empty cache folder: the child decodes
  the dataset into the cache file (row by row, never the whole array), then reads each batch
  from it (``DiskArraySource``);
- ``memmap``: the same on the cache the cold child wrote;
- ``in RAM``: a budget the dataset fits, the contrast: the cached array is held and batches
  are gathered from it (``ArraySource``), so every page of it becomes resident.

The figure per case is the growth ratio, peak RSS growth / dataset growth (the least-squares
slope of peak RSS over dataset size, in bytes per byte): about 0 is flat memory, about 1
memory that grows with the data. The in-RAM case is the baseline measured in the same run.
The peaks carry some tens of MiB of noise (glibc's heap keeps freed batch buffers; it settles
within an epoch and stays there), which small batches and large sizes keep small against the
dataset. What the memmap cases still grow by is per-image bookkeeping (the file list, labels,
rows of the file hash index), about a KiB an image at most, not pixels. Linux (and macOS) only:
``ru_maxrss`` and ``os.wait4``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 2**20
CASES = {"memmap, cold": 1, "memmap": 1, "in RAM": 10**6}  # name -> data.memory_budget_mb


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[2000, 8000, 32000], help="dataset sizes, in images"
    )
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--root", type=Path, help="reuse/keep the PNG folder here")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # JSON job of one child process
    return parser.parse_args()


def maxrss_bytes(kib_or_bytes: int) -> int:
    return kib_or_bytes if sys.platform == "darwin" else kib_or_bytes * 1024  # Linux: KiB


def write_pngs(root: Path, count: int, size: int) -> list[Path]:
    """``count`` smooth-plus-noise PNGs of ``size`` px in 10 class folders, in a fixed order."""
    import numpy as np
    from PIL import Image

    paths = [root / f"class_{i % 10}" / f"{i:06d}.png" for i in range(count)]
    if all(p.is_file() for p in paths):
        return paths
    rng = np.random.default_rng(0)
    for path in paths:
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC)
        noise = rng.integers(-12, 12, (size, size, 3))
        pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path)
    return paths


def write_manifest(root: Path, paths: list[Path], target: Path) -> Path:
    """A split manifest of ``paths``: every 50th image in val, the rest in train."""
    from imagefit.data.splits import SplitManifest

    samples = [(p, int(p.parent.name.split("_")[1])) for p in paths]
    splits = {
        "train": [s for i, s in enumerate(samples) if i % 50],
        "val": samples[::50],
        "test": [],
    }
    SplitManifest(root, [f"class_{i}" for i in range(10)], splits, "stratified").save(target)
    return target


def child(job: dict) -> None:
    """One case in this fresh process: build the data, iterate one training epoch."""
    import torch

    from imagefit.config import config_from_dict
    from imagefit.data.loaders import build_data

    floor = maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # imports only
    cfg = config_from_dict(
        {
            "data": {
                "root": job["root"],
                "split_manifest": job["manifest"],
                "num_workers": 0,
                "image_size": job["image_size"],
                "cache_dir": job["cache"],
                "memory_budget_mb": job["budget_mb"],
            },
            "train": {"batch_size": job["batch"], "device": "cpu"},
        }
    )
    started = time.perf_counter()
    data = build_data(cfg, torch.device("cpu"))
    built = time.perf_counter()
    seen = 0
    for x, _ in data.train.epoch(0):
        seen += len(x)
    print(
        json.dumps(
            {
                "source": type(data.train.source).__name__,
                "floor": floor,
                "seen": seen,
                "build_s": built - started,
                "epoch_s": time.perf_counter() - built,
            }
        )
    )


def run_child(job: dict) -> dict:
    """Run ``job`` in a fresh interpreter; its JSON line plus its peak RSS in bytes."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    out = process.stdout.read() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)  # the child's own rusage, not all children's
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"child failed ({process.returncode}): {job}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak": maxrss_bytes(usage.ru_maxrss)}


def growth(rows: list[dict]) -> float:
    """Least-squares slope of peak RSS over dataset size (bytes per byte) across the sizes."""
    xs, ys = [r["dataset"] for r in rows], [r["peak"] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


def main() -> None:
    args = parse_args()
    if args.child:
        child(json.loads(args.child))
        # Skip the interpreter's teardown: it adds a spike of its own (about 120 MiB here)
        # that would sit on top of every case's peak and hide the data's share.
        sys.stdout.flush()
        os._exit(0)
    sizes = sorted(set(args.sizes))
    if len(sizes) < 2:
        raise SystemExit("--sizes needs at least two sizes to measure growth")
    if sizes[0] * args.image_size**2 * 3 <= CASES["memmap"] * MIB:
        raise SystemExit(
            f"{sizes[0]} images of {args.image_size} px fit the smallest budget "
            f"({CASES['memmap']} MiB): the memmap case would hold them in memory"
        )
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        root = args.root or Path(tmp) / "pngs"
        paths = write_pngs(root, sizes[-1], args.image_size)
        seconds = time.perf_counter() - started
        print(f"{sizes[-1]} PNGs at {args.image_size} px ready in {seconds:.0f} s")
        results: dict[str, list[dict]] = {name: [] for name in CASES}
        for count in sizes:
            manifest = write_manifest(root, paths[:count], Path(tmp) / f"split_{count}.json")
            cache = Path(tmp) / f"cache_{count}"  # empty: the cold case decodes into it
            for name, budget in CASES.items():
                job = {
                    "root": str(root),
                    "manifest": str(manifest),
                    "cache": str(cache),
                    "image_size": args.image_size,
                    "batch": args.batch,
                    "budget_mb": budget,
                }
                row = run_child(job)
                row["dataset"] = count * args.image_size**2 * 3
                results[name].append(row)
    print(
        f"\npeak RSS of one child per case (build_data + one training epoch, batch {args.batch}, "
        f"{args.image_size} px, {os.cpu_count()} CPUs)"
    )
    print(f"{'images':>8} {'dataset MiB':>12} | " + " | ".join(f"{name:>26}" for name in CASES))
    print(f"{'':>8} {'':>12} | " + " | ".join(f"{'peak MiB (source, s)':>26}" for _ in CASES))
    for i, count in enumerate(sizes):
        cells = []
        for name in CASES:
            row = results[name][i]
            seconds = row["build_s"] + row["epoch_s"]
            kind = "disk" if row["source"] == "DiskArraySource" else "RAM"
            cells.append(f"{row['peak'] / MIB:>10,.0f} ({kind}, {seconds:5.1f} s)")
        dataset = results["memmap"][i]["dataset"] / MIB
        print(f"{count:>8,} {dataset:>12,.0f} | " + " | ".join(f"{c:>26}" for c in cells))
    floor = min(row["floor"] for rows in results.values() for row in rows) / MIB
    print(f"(a child's RSS after its imports, before any data: {floor:,.0f} MiB)")
    base, pixels = growth(results["in RAM"]), args.image_size**2 * 3
    for name in ("memmap, cold", "memmap"):
        ratio = growth(results[name])
        print(
            f"peak RSS growth / dataset growth, {name}: {ratio:.3f} vs in RAM {base:.3f} "
            f"(flat: about 0); per image {ratio * pixels / 1024:.2f} KiB vs "
            f"{base * pixels / 1024:.2f} KiB, of {pixels / 1024:.0f} KiB of pixels"
        )
    last = {name: rows[-1]["peak"] for name, rows in results.items()}
    ratio = last["memmap"] / last["in RAM"]
    print(f"peak RSS at {sizes[-1]:,} images, memmap vs in RAM: {ratio:.3f}x")


if __name__ == "__main__":
    main()
