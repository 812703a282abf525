"""INT8 static quantization of an exported model, with the accuracy and speed it costs.

ONNX Runtime's ``quantize_static`` in QDQ format with per-channel weights, calibrated on the
run's own training images. Activations are uint8 and weights int8 (U8S8): on x86 CPUs with
VNNI this runs as integer convolutions, while S8S8 QDQ measured slower than fp32 there.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from imagefit.data.inputs import normalise
from imagefit.data.store import PixelSpec
from imagefit.evaluate.metrics import compute_metrics
from imagefit.export import ExportError
from imagefit.export.onnx import INPUT, metadata_props, ort_session, run_session
from imagefit.export.preprocess import load_samples, real_inputs, split_samples
from imagefit.runs.layout import RunLayout, int8_name

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 128
CALIBRATION_BATCH = 16
EVAL_BATCH = 64
LATENCY_RUNS = 20  # calls per round
LATENCY_ROUNDS = 5  # rounds, the models taking turns
SCHEME = "static, QDQ, per-channel weights, uint8 activations / int8 weights, MinMax calibration"


class _Batches:
    """onnxruntime CalibrationDataReader over an in-memory (N, 3, S, S) array."""

    def __init__(self, x: np.ndarray, input_name: str, batch_size: int = CALIBRATION_BATCH):
        self.batches = iter(
            [{input_name: x[i : i + batch_size]} for i in range(0, len(x), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def quantize_int8(
    fp32: Path,
    meta: dict[str, Any],
    run_dir: Path,
    out: Path | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
) -> dict[str, Any]:
    """Write ``<fp32 stem>.int8.onnx`` and report accuracy (test split, else val), size, latency."""
    out = out or int8_name(fp32)
    _, pixels, _ = real_inputs(run_dir, ("train",), calibration_images, PixelSpec.from_meta(meta))
    if not len(pixels):
        raise ExportError(
            f"{run_dir}: INT8 calibration needs the run's training images "
            f"({RunLayout(run_dir).split.name} with readable train files)"
        )
    started = time.perf_counter()
    quantize_file(fp32, out, normalise(pixels, meta["mean"], meta["std"]), meta)
    report: dict[str, Any] = {
        "onnx": str(out),
        "scheme": SCHEME,
        "calibration_images": len(pixels),
        "quantize_seconds": round(time.perf_counter() - started, 2),
        "size_bytes": out.stat().st_size,
        "fp32_size_bytes": fp32.stat().st_size,
    }
    report.update(_accuracy(fp32, out, meta, run_dir))
    report.update(_latency(fp32, out, meta["image_size"]))
    ms = report["latency_ms_batch1"]
    log.info(
        "INT8 %s: accuracy %s (fp32 %s), batch-1 latency %.2f ms (fp32 %.2f ms)",
        out,
        _fmt(report["int8_accuracy"]),
        _fmt(report["fp32_accuracy"]),
        ms["int8"],
        ms["fp32"],
    )
    return report


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def quantize_file(fp32: Path, out: Path, calibration: np.ndarray, meta: dict[str, Any]) -> None:
    """Quantize ``fp32`` to ``out`` (INT8, :data:`SCHEME`) calibrated on ``calibration`` inputs."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    # Beside ``out``: the final rename is then atomic (no cross-device move from /tmp).
    with tempfile.TemporaryDirectory(prefix=".imagefit-int8-", dir=out.parent) as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        # Shape inference and BatchNorm folding first, as ONNX Runtime's quantization guide asks:
        # quantizing unfused ops costs accuracy and speed.
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(
            str(prepared),
            str(quantized),
            _Batches(calibration, INPUT),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        proto = onnx.load(str(quantized))
        props = metadata_props(meta) | {"imagefit.quantization": SCHEME}
        onnx.helper.set_model_props(proto, props)
        onnx.save(proto, str(quantized))
        onnx.checker.check_model(str(quantized), full_check=True)
        quantized.replace(out)


def _accuracy(fp32: Path, int8: Path, meta: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Both models' accuracy on the whole test split (else val), through compute_metrics."""
    split, samples = split_samples(run_dir, ("test", "val"))
    pixels, labels = load_samples(samples, PixelSpec.from_meta(meta))
    if not len(pixels):
        log.warning("%s: no test or val images to measure the INT8 accuracy on", run_dir)
        return {"eval_split": None, "eval_images": 0, "fp32_accuracy": None, "int8_accuracy": None}
    x = normalise(pixels, meta["mean"], meta["std"])
    logits = {
        name: run_session(ort_session(path), x, EVAL_BATCH)
        for name, path in (("fp32", fp32), ("int8", int8))
    }
    acc = {
        name: compute_metrics(labels, z, meta["classes"])["accuracy"] for name, z in logits.items()
    }
    drop = acc["fp32"] - acc["int8"]
    return {
        "eval_split": split,
        "eval_images": len(x),
        "fp32_accuracy": acc["fp32"],
        "int8_accuracy": acc["int8"],
        "accuracy_drop": drop,
        "relative_accuracy_drop": drop / acc["fp32"] if acc["fp32"] else None,
        "top1_agreement_with_fp32": float(
            np.mean(logits["fp32"].argmax(1) == logits["int8"].argmax(1))
        ),
    }


def _latency(fp32: Path, int8: Path, size: int) -> dict[str, Any]:
    """Batch-1 latency (ms) of each model: medians with their spread over several rounds."""
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    sessions = {name: ort_session(path) for name, path in (("fp32", fp32), ("int8", int8))}
    return latency_report(sessions, x)


def latency_report(
    sessions: dict[str, Any],
    x: np.ndarray,
    rounds: int = LATENCY_ROUNDS,
    runs: int = LATENCY_RUNS,
    warmup: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Time every session ``runs`` times per round, the sessions taking turns round by round.

    One timing of each model once gave 8.7x and then 3.6x on the same files: on a shared CPU,
    other work comes and goes. Alternating the models in rounds exposes both to the same
    background, the median of all calls resists outliers, and the spread (quartiles, min, max,
    the per-round speedups) shows how far one figure can be trusted.
    """
    feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
    for name, session in sessions.items():
        for _ in range(warmup):
            session.run(None, feeds[name])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    per_round: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, session in sessions.items():
            these = []
            for _ in range(runs):
                started = clock()
                session.run(None, feeds[name])
                these.append((clock() - started) * 1000)
            times[name] += these
            per_round[name].append(float(np.median(these)))
    stats = {name: _spread(values) for name, values in times.items()}
    report: dict[str, Any] = {
        "latency_ms_batch1": {name: s["median"] for name, s in stats.items()},
        "latency_batch1": {**stats, "rounds": rounds, "runs_per_round": runs},
    }
    if {"fp32", "int8"} <= set(sessions):
        ratios = [f / i for f, i in zip(per_round["fp32"], per_round["int8"], strict=True) if i]
        report["speedup_batch1"] = float(np.median(ratios)) if ratios else None
        report["speedup_batch1_range"] = [min(ratios), max(ratios)] if ratios else None
    return report


def _spread(values: list[float]) -> dict[str, float | int]:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {
        "median": float(median),
        "q1": float(q1),
        "q3": float(q3),
        "min": float(min(values)),
        "max": float(max(values)),
        "calls": len(values),
    }
