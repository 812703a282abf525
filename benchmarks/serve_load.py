"""Load on ``imagefit serve`` over loopback: throughput and latency percentiles with dynamic
batching on and off, at 1, 8 and 32 concurrent clients.

A resnet18 (random weights: speed does not depend on them) at 224 px is exported with its
metadata and served by a real ``imagefit serve`` subprocess; the clients post real 224 px
JPEGs as raw bodies. Each level is bounded by a request count and a time limit. Prints one
line per (mode, clients) and the batching/no-batching ratio of requests/s per level.

    PYTHONPATH=src python benchmarks/serve_load.py [--requests 400] [--time-limit 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers.serving import Served  # noqa: E402 - after the path is set

IMAGES = ROOT.parent / "shared" / "data" / "imagenette-val-224"  # beside the repository
MODES = {
    "batching": ["--max-batch", "32", "--max-wait-ms", "5"],
    "one-per-call": ["--max-batch", "1", "--max-wait-ms", "0"],
}


def make_model(folder: Path, arch: str, size: int) -> Path:
    from imagefit.export.onnx import write_onnx
    from imagefit.models.registry import create_model

    classes = [f"class_{i}" for i in range(10)]
    meta = {
        "arch": arch,
        "classes": classes,
        "num_classes": len(classes),
        "image_size": size,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    path = folder / "model.onnx"
    write_onnx(create_model(arch, len(classes)).eval(), meta, path, 17)
    return path


def photos(folder: Path, count: int = 16) -> list[bytes]:
    files = sorted(folder.rglob("*.JPEG")) or sorted(folder.rglob("*.jpg"))
    if not files:
        raise SystemExit(f"no JPEGs under {folder} (--images)")
    step = max(1, len(files) // count)
    return [f.read_bytes() for f in files[::step][:count]]


async def load(url: str, clients: int, total: int, limit_s: float, bodies: list[bytes]) -> dict:
    """``clients`` loops posting until ``total`` requests are sent or ``limit_s`` passes."""
    latencies: list[float] = []
    failures = 0
    sent = 0
    deadline = time.monotonic() + limit_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal sent, failures
            while sent < total and time.monotonic() < deadline:
                body = bodies[sent % len(bodies)]
                sent += 1
                started = time.perf_counter()
                try:
                    response = await client.post("/predict", content=body)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                failures += not ok

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "failures": failures,
        "rps": len(latencies) / wall,
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--requests", type=int, default=400, help="per mode and level")
    parser.add_argument("--time-limit", type=float, default=60, help="seconds per mode and level")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--images", type=Path, default=IMAGES, help="JPEGs to post")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    bodies = photos(args.images)
    print(f"{os.cpu_count()} CPUs; {args.arch} at {args.size} px; {len(bodies)} real JPEGs")
    results: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = make_model(Path(tmp), args.arch, args.size)
        for mode, flags in MODES.items():
            served = Served(model, *flags, log=Path(tmp) / f"{mode}.log")
            try:
                served.wait_ready()
                asyncio.run(load(served.url, 4, 16, 30, bodies))  # warm-up
                for clients in levels:
                    r = asyncio.run(
                        load(served.url, clients, args.requests, args.time_limit, bodies)
                    )
                    results[mode, clients] = r
                    print(
                        f"{mode:>12} {clients:>3} clients: {r['requests']:>5} requests, "
                        f"{r['failures']} failed, {r['rps']:7.1f} req/s, p50 {r['p50']:6.1f} ms, "
                        f"p95 {r['p95']:6.1f} ms, p99 {r['p99']:6.1f} ms",
                        flush=True,
                    )
            finally:
                served.stop()
    for clients in levels:
        on, off = results["batching", clients], results["one-per-call", clients]
        print(
            f"{clients:>3} clients: batching / one-per-call = {on['rps'] / off['rps']:.2f}x req/s"
        )
    goal = results["batching", max(levels)]
    ratio = goal["rps"] / results["one-per-call", max(levels)]["rps"]
    print(
        f"goal at {max(levels)} clients: batching >= 2x ({ratio:.2f}x: "
        f"{'met' if ratio >= 2 else 'NOT met'}), p99 < 250 ms ({goal['p99']:.0f} ms: "
        f"{'met' if goal['p99'] < 250 else 'NOT met'}), zero failures "
        f"({sum(r['failures'] for r in results.values())})"
    )


if __name__ == "__main__":
    main()
