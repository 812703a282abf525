"""Benchmark: CPU inference of PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime INT8.

    python benchmarks/inference.py                        # resnet18 + resnet50 at 224 px
    python benchmarks/inference.py --accuracy-archs resnet18 resnet50   # INT8 accuracy of both
    python benchmarks/inference.py --run runs/demo        # also INT8 accuracy of that run
    python benchmarks/inference.py --archs resnet18 --rounds 3 --json out.json

Speed: batch-1 latency (median ms) and batch-64 throughput (images/s) of randomly initialised
timm models (weights do not change the arithmetic), all engines with the same thread count and
measured in interleaved rounds in this one process, so that a change in machine load hits every
engine alike; ratios are against PyTorch eager from the same run. INT8 is imagefit's own export
(static QDQ, per-channel, U8S8, calibrated on real training images).

Accuracy: random weights have no accuracy, so the INT8 drop is measured on trained models of
the benchmarked architectures: each of ``--accuracy-archs`` (default resnet18) is trained here
from scratch on scikit-learn's digits at ``--accuracy-size`` px (32) for ``--accuracy-epochs``
epochs (about 2 minutes for resnet18 on 2 cores; kept under ``--demo-dir`` and reused), then
exported fp32 + INT8 and scored on its whole val split (the goal's "real validation set") and
test split. ``--run`` adds any trained run folder. Every accuracy line names its model, data and
image size. Run folders are never modified: the export goes to a temporary copy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch

from imagefit.data.inputs import normalise
from imagefit.evaluate.metrics import compute_metrics
from imagefit.export.onnx import export_onnx, ort_session, run_session, write_onnx
from imagefit.export.preprocess import load_samples, real_inputs, split_samples
from imagefit.export.quantize import quantize_file
from imagefit.models.trained import load_trained, resolve_checkpoint


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64, help="throughput batch size")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved throughput rounds")
    parser.add_argument("--latency-iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--accuracy-archs",
        nargs="*",
        default=["resnet18"],
        help="architectures trained on digits for the INT8 accuracy drop",
    )
    parser.add_argument("--accuracy-size", type=int, default=32, help="digits image size (px)")
    parser.add_argument("--accuracy-epochs", type=int, default=4)
    parser.add_argument("--run", type=Path, help="also: INT8 accuracy of this trained run")
    parser.add_argument(
        "--demo-dir",
        type=Path,
        default=Path("imagefit-demo"),
        help="where the digits and the accuracy runs are kept (reused)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args()


def accuracy_run(arch: str, args: argparse.Namespace) -> Path:
    """``arch`` trained from scratch on digits (the demo's data, split and recipe), reused when
    ``--demo-dir`` already holds a finished one with the same size and epochs."""
    from imagefit.demo import demo_config
    from imagefit.train.fit import fit

    name = f"bench-{arch}-{args.accuracy_size}px-{args.accuracy_epochs}ep"
    run = args.demo_dir / "runs" / name
    summary = run / "summary.json"
    finished = summary.is_file() and json.loads(summary.read_text()).get("status") == "finished"
    if finished and (run / "best.pt").is_file():
        return run
    from imagefit.datasets.digits import write_digits

    overrides = [
        f"model.name={arch}",
        f"data.image_size={args.accuracy_size}",
        f"output.name={name}",
        f"train.epochs={args.accuracy_epochs}",
        "data.num_workers=0",
    ]
    cfg = demo_config(args.demo_dir, overrides)
    write_digits(cfg.data.root)
    shutil.rmtree(run, ignore_errors=True)  # an unfinished earlier attempt
    print(
        f"training {arch} on digits at {args.accuracy_size} px ({args.accuracy_epochs} epochs) "
        f"into {run} ..."
    )
    started = time.perf_counter()
    run = fit(cfg).run_dir
    print(f"{arch}: trained in {time.perf_counter() - started:.0f} s")
    return run


def engines(arch: str, args: argparse.Namespace, run: Path, tmp: Path) -> dict[str, Any]:
    """name -> callable(x) for eager, ORT fp32 and ORT INT8 of ``arch`` (random weights)."""
    model = timm.create_model(arch, num_classes=1000).eval()
    meta = {
        "arch": arch,
        "classes": [str(i) for i in range(1000)],
        "num_classes": 1000,
        "image_size": args.size,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
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
    return {
        name: {
            "latency_ms": float(np.median(latency[name])),
            "images_per_s": float(np.median(throughput[name])),
        }
        for name in calls
    }


def _seconds(call: Any, x: np.ndarray) -> float:
    started = time.perf_counter()
    call(x)
    return time.perf_counter() - started


def int8_accuracy(run: Path) -> dict[str, Any]:
    """fp32 vs INT8 (ORT) accuracy of ``run`` on its whole val split, and on its test split.

    The export goes to a temporary copy of the checkpoint and split.json, so the run folder
    (its model.onnx, export.json) is left exactly as it was."""
    _, meta, config = load_trained(run)
    _, samples = split_samples(run, ("val",))
    pixels, labels = load_samples(samples, meta["image_size"])
    x = normalise(pixels, meta["mean"], meta["std"])
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp)
        shutil.copy(resolve_checkpoint(run), copy / "best.pt")
        shutil.copy(run / "split.json", copy / "split.json")
        exported = export_onnx(copy / "best.pt", int8=True)
        files = {"fp32": exported["onnx"], "int8": exported["int8"]["onnx"]}
        acc = {
            name: compute_metrics(labels, run_session(ort_session(path), x, 64), meta["classes"])[
                "accuracy"
            ]
            for name, path in files.items()
        }
    q = exported["int8"]
    data = Path((config.get("data") or {}).get("root") or "?").name
    return {
        "run": str(run),
        "arch": meta["arch"],
        "data": data,
        "image_size": meta["image_size"],
        "val_images": len(x),
        "val_fp32": acc["fp32"],
        "val_int8": acc["int8"],
        "val_relative_drop": (acc["fp32"] - acc["int8"]) / acc["fp32"],
        "test_fp32": q["fp32_accuracy"],
        "test_int8": q["int8_accuracy"],
        "test_images": q["eval_images"],
        "test_relative_drop": (q["fp32_accuracy"] - q["int8_accuracy"]) / q["fp32_accuracy"],
    }


def report(
    results: dict[str, Any], accuracy: list[dict[str, Any]], args: argparse.Namespace
) -> None:
    print(
        f"\nCPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}; {args.size} px"
    )
    print(
        f"{'model':10} {'engine':9} {'b1 ms':>8} {'b1 x eager':>10} {'b' + str(args.batch) + ' img/s':>10} "
        f"{'x eager':>8} {'x ORT fp32':>10}"
    )
    for arch, engines_ in results.items():
        eager, fp32 = engines_["eager"], engines_["ort_fp32"]
        for name, r in engines_.items():
            print(
                f"{arch:10} {name:9} {r['latency_ms']:8.2f} {eager['latency_ms'] / r['latency_ms']:10.2f} "
                f"{r['images_per_s']:10.1f} {r['images_per_s'] / eager['images_per_s']:8.2f} "
                f"{r['images_per_s'] / fp32['images_per_s']:10.2f}"
            )
    print(
        "\nINT8 accuracy (ORT INT8 vs ORT fp32 of the same trained model; not the random-weight "
        "models timed above):"
    )
    print(
        f"{'model':16} {'data':8} {'px':>4} {'split':5} {'images':>6} {'fp32':>7} {'int8':>7} "
        f"{'int8/fp32':>9} {'rel drop':>8} {'1 image':>7}"
    )
    for a in accuracy:
        for split in ("val", "test"):
            fp32, int8, n = a[f"{split}_fp32"], a[f"{split}_int8"], a[f"{split}_images"]
            print(
                f"{a['arch']:16} {a['data']:8} {a['image_size']:4d} {split:5} {n:6d} {fp32:7.4f} "
                f"{int8:7.4f} {int8 / fp32:9.4f} {a[f'{split}_relative_drop']:8.2%} {1 / (n * fp32):7.2%}"
            )
    for a in accuracy:
        print(f"  {a['arch']}: {a['run']}")
    goals(results, accuracy)


def goals(results: dict[str, Any], accuracy: list[dict[str, Any]]) -> None:
    """The targets, stated pass/fail as measured, each naming the model it was measured on."""
    for arch, r in results.items():
        fp32_ok = all(r["ort_fp32"][k] <= r["eager"][k] for k in ("latency_ms",)) and (
            r["ort_fp32"]["images_per_s"] >= r["eager"]["images_per_s"]
        )
        ratio = r["ort_int8"]["images_per_s"] / r["ort_fp32"]["images_per_s"]
        print(
            f"goal {arch}: ORT fp32 never slower than eager: {'met' if fp32_ok else 'NOT met'}; "
            f"INT8 >= 1.8x ORT fp32 throughput: {ratio:.2f}x {'met' if ratio >= 1.8 else 'NOT met'}"
        )
    for a in accuracy:
        drop = a["val_relative_drop"]
        print(
            f"goal INT8 relative accuracy drop <= 0.5% ({a['arch']}, {a['data']} {a['image_size']} px, "
            f"val {a['val_images']} images): {drop:.2%} {'met' if drop <= 0.005 else 'NOT met'}"
        )
    measured = {a["arch"] for a in accuracy}
    for arch in results:
        if arch not in measured:
            print(f"goal INT8 accuracy drop ({arch}): not measured (add --accuracy-archs {arch})")
    if not accuracy:
        print(
            "goal INT8 relative accuracy drop <= 0.5%: not measured (no --accuracy-archs, no --run)"
        )


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        # OpenMP threads that wait on a descheduled peer stall PyTorch far more than ORT's pool:
        # on a busy machine the eager numbers (and so every ratio) come out too favourable.
        print(
            f"warning: load average {load:.1f} > {os.cpu_count()} cores; timings are unreliable "
            "(try --threads 1, or an idle machine)"
        )
    runs = [accuracy_run(arch, args) for arch in args.accuracy_archs]
    runs += [args.run] if args.run else []
    # The speed engines calibrate INT8 on real training images: any accuracy run's will do.
    calibration = runs[0] if runs else accuracy_run("simple_cnn", args)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            started = time.perf_counter()
            results[arch] = measure(engines(arch, args, calibration, Path(tmp)), args)
            print(f"{arch}: measured in {time.perf_counter() - started:.0f} s")
    accuracy = [int8_accuracy(run) for run in runs]
    report(results, accuracy, args)
    if args.json:
        args.json.write_text(json.dumps({"speed": results, "accuracy": accuracy}, indent=1))


if __name__ == "__main__":
    main()
