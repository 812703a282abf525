"""Benchmark: training batches from WebDataset shards vs from the image files, and shard memory.

    python benchmarks/shards.py                          # 1,000 imagenette photos, 2 workers
    python benchmarks/shards.py --images 2000 --rounds 3 --sizes 250,1000,3000

Both paths deliver the same epochs of augmented, normalised training batches from the same
JPEGs, decoded every epoch by ``--workers`` loader processes (files: ``data.cache=never``;
shards: ``data.shards``). Cold: every file (each photo, or each tar) is dropped from the page
cache with ``posix_fadvise(POSIX_FADV_DONTNEED)`` before the epoch, so it is read from the
disk; warm: the same epoch again, from memory. Then the peak resident memory of one shard
epoch (main process and, separately, the largest loader worker) in a fresh process per
dataset size: it should stay flat as the dataset grows, since a stream holds one shuffle
buffer and a few chunks whatever the number of shards.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from imagefit.config import config_from_dict
from imagefit.data.loaders import build_data
from imagefit.data.shards import write_shards
from imagefit.data.splits import resolve_splits

from _timing import interleaved, ratio_line

PHOTOS = Path("/work/shared/data/imagenette-val-224")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128, help="training image size, px")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="250,1000,3000", help="dataset sizes for memory")
    parser.add_argument("--shard-mb", type=float, default=1.0, help="shard size, MiB")
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)  # internal: one memory probe
    return parser.parse_args()


def copy_photos(source: Path, out: Path, count: int) -> Path:
    """The first ``count`` photos, round-robin over the classes (a balanced subset)."""
    classes = sorted(p for p in source.iterdir() if p.is_dir())
    files = [sorted(c.iterdir()) for c in classes]
    taken = 0
    for index in range(max(len(f) for f in files)):
        for folder, members in zip(classes, files, strict=True):
            if taken < count and index < len(members):
                target = out / folder.name / members[index].name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(members[index], target)
                taken += 1
    return out


def drop_from_cache(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def config(root: Path, args: argparse.Namespace, **data: object):
    return config_from_dict(
        {
            "data": {
                "root": str(root),
                "image_size": args.size,
                "num_workers": args.workers,
                "val_fraction": 0.0,
                "test_fraction": 0.0,
                **data,
            },
            "train": {"batch_size": args.batch, "seed": 0},
        }
    )


def epoch_rate(loader, files: list[Path], cold: bool, epoch: int) -> float:
    if cold:
        drop_from_cache(files)
    started, count = time.perf_counter(), 0
    for x, _ in loader.epoch(epoch):
        count += len(x)
    return count / (time.perf_counter() - started)


def memory_probe(shards: str, args: argparse.Namespace) -> None:
    """One shard epoch in this (fresh) process; prints its peak RSS and its workers' (MiB)."""
    loader = build_data(config(Path(shards), args, shards=shards), torch.device("cpu")).train
    count = sum(len(x) for x, _ in loader.epoch(0))
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"images": count, "main_mib": own, "worker_mib": workers}))


def main() -> None:
    args = parse_args()
    if args.memory_child:
        memory_probe(args.memory_child, args)
        return
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="imagefit-shards-bench-"))
    try:
        root = copy_photos(args.photos, work / "photos", args.images)
        manifest = resolve_splits(root, 0.0, 0.0, 42)
        write_shards(manifest, work / "shards", shard_size=int(args.shard_mb * 2**20))
        files = [p for p, _ in manifest.splits["train"]]
        tars = sorted((work / "shards").glob("train-*.tar"))
        print(
            f"{len(files)} photos ({sum(p.stat().st_size for p in files) / 2**20:.0f} MiB) at "
            f"{args.size} px, batch {args.batch}, {args.workers} workers; {len(tars)} shards"
        )
        cpu = torch.device("cpu")
        from_files = build_data(config(root, args, cache="never"), cpu).train
        from_shards = build_data(config(root, args, shards=str(work / "shards")), cpu).train
        for cold in (True, False):
            cases = {
                "shards": lambda cold=cold: epoch_rate(from_shards, tars, cold, 0),
                "files": lambda cold=cold: epoch_rate(from_files, files, cold, 0),
            }
            samples = interleaved(cases, args.rounds)
            label = "cold page cache" if cold else "warm page cache"
            print(
                ratio_line(
                    f"{label}: shards vs files, images/s", samples["shards"], samples["files"]
                )
            )
        for size in [int(s) for s in args.sizes.split(",")]:
            part = copy_photos(args.photos, work / f"photos-{size}", size)
            shards = work / f"shards-{size}"
            write_shards(
                resolve_splits(part, 0.0, 0.0, 42), shards, shard_size=int(args.shard_mb * 2**20)
            )
            probe = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--memory-child",
                    str(shards),
                    "--size",
                    str(args.size),
                    "--batch",
                    str(args.batch),
                    "--workers",
                    str(args.workers),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            figures = json.loads(probe.stdout.strip().splitlines()[-1])
            print(
                f"memory, {figures['images']:5d} images: peak RSS main {figures['main_mib']:.0f} "
                f"MiB, largest worker {figures['worker_mib']:.0f} MiB"
            )
            shutil.rmtree(part)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
