"""Benchmark: CPU inference of PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime INT8.

    python benchmarks/inference.py                        # resnet18 + resnet50 at 224 px
    python benchmarks/inference.py --run runs/demo        # INT8 accuracy on that run's val split
    python benchmarks/inference.py --archs resnet18 --rounds 3 --json out.json

Speed: batch-1 latency (median ms) and batch-64 throughput (images/s) of randomly initialised
timm models (weights do not change the arithmetic), all engines with the same thread count and
measured in interleaved rounds in this one process, so that a change in machine load hits every
engine alike; ratios are against PyTorch eager from the same run. INT8 is imagefit's own export
(static QDQ, per-channel, U8S8, calibrated on real training images of ``--run``).

Accuracy: the INT8 drop is measured on a real validation set, the val split of ``--run``
(default: the digits demo, SimpleCNN, trained here with ``--demo-epochs`` epochs if absent).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from imagefit.evaluate.metrics import compute_metrics
from imagefit.export.onnx import export_onnx, ort_session, run_session, write_onnx
from imagefit.export.preprocess import load_samples, normalise, real_inputs, split_samples
from imagefit.export.quantize import quantize_file


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64, help="throughput batch size")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved throughput rounds")
    parser.add_argument("--latency-iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--run", type=Path, help="trained run for calibration and INT8 accuracy")
    parser.add_argument("--demo-dir", type=Path, default=Path("imagefit-demo"))
    parser.add_argument("--demo-epochs", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


def demo_run(args: argparse.Namespace) -> Path:
    """The digits demo run (SimpleCNN), trained now if ``--demo-dir`` has none."""
    run = args.demo_dir / "runs" / "demo"
    if not (run / "best.pt").is_file():
        from imagefit.demo import run_demo

        print(f"training the digits demo ({args.demo_epochs} epochs) into {args.demo_dir} ...")
        run = run_demo(
            args.demo_dir, [f"train.epochs={args.demo_epochs}", "data.num_workers=0"]
        ).run_dir
    return run


def engines(arch: str, args: argparse.Namespace, run: Path, tmp: Path) -> dict[str, Any]:
    """name -> callable(x) for eager, ORT fp32 and ORT INT8 of ``arch`` (random weights)."""
    model = timm.create_model(arch, num_classes=1000).eval()
    meta = {"arch": arch, "classes": [str(i) for i in range(1000)], "num_classes": 1000,
            "image_size": args.size, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}  # fmt: skip
    fp32, int8 = tmp / f"{arch}.onnx", tmp / f"{arch}.int8.onnx"
    write_onnx(model, meta, fp32, opset=17)
    _, pixels, _ = real_inputs(run, ("train",), 64, args.size)  # real images, resized to 224
    quantize_file(fp32, int8, normalise(pixels, meta["mean"], meta["std"]), meta)
    sessions = {
        name: ort_session(path, args.threads)
        for name, path in (("ort_fp32", fp32), ("ort_int8", int8))
    }

    def eager(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    calls = {"eager": eager}
    for name, session in sessions.items():
        calls[name] = lambda x, s=session: s.run(None, {"input": x})
    return calls


def measure(calls: dict[str, Any], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median batch-1 latency and median batch-N throughput, engines interleaved per round."""
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    batch = rng.standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
    latency: dict[str, list[float]] = {name: [] for name in calls}
    throughput: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():  # warm-up: first runs allocate and pick kernels
        call(one), call(batch)
    for _ in range(args.latency_iters):
        for name, call in calls.items():
            latency[name].append(_seconds(call, one) * 1000)
    for _ in range(args.rounds):
        for name, call in calls.items():
            throughput[name].append(args.batch / _seconds(call, batch))
    return {name: {"latency_ms": float(np.median(latency[name])),
                   "images_per_s": float(np.median(throughput[name]))} for name in calls}  # fmt: skip


def _seconds(call: Any, x: np.ndarray) -> float:
    started = time.perf_counter()
    call(x)
    return time.perf_counter() - started


def int8_accuracy(run: Path) -> dict[str, Any]:
    """fp32 vs INT8 (ORT) accuracy on the run's whole val split; test figures from export.json."""
    from imagefit.models.trained import load_trained

    _, meta, _ = load_trained(run)
    _, samples = split_samples(run, ("val",))
    pixels, labels = load_samples(samples, meta["image_size"])
    x = normalise(pixels, meta["mean"], meta["std"])
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_onnx(run, out=Path(tmp) / "model.onnx", int8=True)
        files = {"fp32": exported["onnx"], "int8": exported["int8"]["onnx"]}
        acc = {name: compute_metrics(labels, run_session(ort_session(path), x, 64), meta["classes"])["accuracy"]
               for name, path in files.items()}  # fmt: skip
    q = exported["int8"]
    return {"run": str(run), "arch": meta["arch"], "val_images": len(x), "val_fp32": acc["fp32"],
            "val_int8": acc["int8"], "val_relative_drop": (acc["fp32"] - acc["int8"]) / acc["fp32"],
            "test_fp32": q["fp32_accuracy"], "test_int8": q["int8_accuracy"], "test_images": q["eval_images"]}  # fmt: skip


def report(results: dict[str, Any], accuracy: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nCPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}; {args.size} px")  # fmt: skip
    print(f"{'model':10} {'engine':9} {'b1 ms':>8} {'b1 x eager':>10} {'b' + str(args.batch) + ' img/s':>10} "
          f"{'x eager':>8} {'x ORT fp32':>10}")  # fmt: skip
    for arch, engines_ in results.items():
        eager, fp32 = engines_["eager"], engines_["ort_fp32"]
        for name, r in engines_.items():
            print(f"{arch:10} {name:9} {r['latency_ms']:8.2f} {eager['latency_ms'] / r['latency_ms']:10.2f} "
                  f"{r['images_per_s']:10.1f} {r['images_per_s'] / eager['images_per_s']:8.2f} "
                  f"{r['images_per_s'] / fp32['images_per_s']:10.2f}")  # fmt: skip
    a = accuracy
    print(f"\nINT8 accuracy ({a['arch']}, {a['run']}): val {a['val_int8']:.4f} vs fp32 {a['val_fp32']:.4f} "
          f"on {a['val_images']} images, relative drop {a['val_relative_drop']:.2%}; "
          f"test {a['test_int8']:.4f} vs {a['test_fp32']:.4f} on {a['test_images']}")  # fmt: skip
    goals(results, accuracy)


def goals(results: dict[str, Any], accuracy: dict[str, Any]) -> None:
    """The targets, stated pass/fail as measured."""
    for arch, r in results.items():
        fp32_ok = all(r["ort_fp32"][k] <= r["eager"][k] for k in ("latency_ms",)) and (
            r["ort_fp32"]["images_per_s"] >= r["eager"]["images_per_s"])  # fmt: skip
        ratio = r["ort_int8"]["images_per_s"] / r["ort_fp32"]["images_per_s"]
        print(f"goal {arch}: ORT fp32 never slower than eager: {'met' if fp32_ok else 'NOT met'}; "
              f"INT8 >= 1.8x ORT fp32 throughput: {ratio:.2f}x {'met' if ratio >= 1.8 else 'NOT met'}")  # fmt: skip
    drop = accuracy["val_relative_drop"]
    print(
        f"goal INT8 relative accuracy drop <= 0.5%: {drop:.2%} {'met' if drop <= 0.005 else 'NOT met'}"
    )


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        # OpenMP threads that wait on a descheduled peer stall PyTorch far more than ORT's pool:
        # on a busy machine the eager numbers (and so every ratio) come out too favourable.
        print(f"warning: load average {load:.1f} > {os.cpu_count()} cores; timings are unreliable "
              "(try --threads 1, or an idle machine)")  # fmt: skip
    run = args.run or demo_run(args)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            started = time.perf_counter()
            results[arch] = measure(engines(arch, args, run, Path(tmp)), args)
            print(f"{arch}: measured in {time.perf_counter() - started:.0f} s")
    accuracy = int8_accuracy(run)
    report(results, accuracy, args)
    if args.json:
        args.json.write_text(json.dumps({"speed": results, "accuracy": accuracy}, indent=1))


if __name__ == "__main__":
    main()
