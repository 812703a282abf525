"""INT8 static quantization of an exported model, with the accuracy and speed it costs.

ONNX Runtime's ``quantize_static`` in QDQ format with per-channel weights, calibrated on the
run's own training images. Activations are uint8 and weights int8 (U8S8): on x86 CPUs with
VNNI this runs as integer convolutions, while S8S8 QDQ measured slower than fp32 there.
"""

from __future__ import annotations

import logging
import tempfile
import time
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
LATENCY_RUNS = 20
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
    """Median batch-1 latency (ms) of each model after warm-up."""
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    ms = {name: median_ms(ort_session(path), x) for name, path in (("fp32", fp32), ("int8", int8))}
    return {
        "latency_ms_batch1": ms,
        "speedup_batch1": ms["fp32"] / ms["int8"] if ms["int8"] else None,
    }


def median_ms(session: Any, x: np.ndarray, runs: int = LATENCY_RUNS, warmup: int = 3) -> float:
    """Median wall time in milliseconds of ``session.run`` on ``x``."""
    feed = {session.get_inputs()[0].name: x}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1000)
