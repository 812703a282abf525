"""``export_onnx``: a trained run -> a checked, verified ONNX file that carries its preprocessing.

The file has one input ``input`` (N, 3, S, S) float32 with a dynamic batch axis and one output
``logits`` (N, classes). Class names, mean/std, input size, architecture and the imagefit
version live in the model's ``metadata_props`` (keys ``imagefit.*``), so ``predict`` and any
other consumer need nothing else. Verification runs real images of the run's own split through
ONNX Runtime and PyTorch and compares the logits; ``RUN/export.json`` records the result.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import imagefit
from imagefit.config import Config
from imagefit.data.images import resize_size
from imagefit.data.inputs import normalise
from imagefit.data.store import PixelSpec
from imagefit.errors import MetadataError
from imagefit.export import ExportError
from imagefit.export.preprocess import real_inputs
from imagefit.fileio import check_writable, write_error, write_errors, write_json
from imagefit.models.trained import load_trained, resolve_checkpoint
from imagefit.runs.layout import RunLayout, rejected_name
from imagefit.runs.meta import check_output_width, validate_meta

log = logging.getLogger(__name__)

INPUT, OUTPUT = "input", "logits"
META_PREFIX = "imagefit."
# torch.onnx's own test suite and the PyTorch ONNX tutorial compare ONNX Runtime with PyTorch at
# rtol 1e-3, atol 1e-5 (torchvision's test_onnx likewise); anything looser hides real bugs.
RTOL, ATOL = 1e-3, 1e-5
VERIFY_IMAGES = 16


def preprocessing_text(meta: dict[str, Any]) -> str:
    """What a consumer does to an image before the model: the run's evaluation pixels."""
    spec = PixelSpec.from_meta(meta)
    return (
        f"RGB; shorter side resized to int(image_size / crop_pct) = "
        f"{resize_size(spec.size, spec.crop_pct)} ({spec.interpolation}, antialiased); centre "
        "crop image_size x image_size; (pixel - 255*mean) / (255*std); NCHW float32"
    )


def export_onnx(
    target: str | Path,
    out: str | Path | None = None,
    opset: int = 17,
    int8: bool = False,
    verify: bool = True,
    batch_sizes: Sequence[int] = (1, 8),
    with_preprocessing: bool = False,
    allow_untrained: bool = False,
) -> dict[str, Any]:
    """Export a run folder or checkpoint to ONNX; return (and write to RUN/export.json) a report.

    ``out`` defaults to ``RUN/model.onnx`` (RUN = the checkpoint's folder); ``int8`` adds
    ``<out stem>.int8.onnx``. Raises ExportError when the file fails the ONNX checker or its
    outputs differ from PyTorch beyond rtol 1e-3 / atol 1e-5 (then export.json is written and
    the file is renamed ``*.rejected.onnx``). ``with_preprocessing`` adds
    ``<out stem>.preprocess.onnx`` whose input is one uint8 RGB image of any size
    (:mod:`imagefit.export.graph_preprocess`). A run with no finished epoch is refused
    unless ``allow_untrained``; then the file carries ``imagefit.trained=false``.
    """
    check_opset(opset)
    checkpoint = resolve_checkpoint(target)
    run_dir = checkpoint.parent
    model, meta, _ = load_trained(checkpoint, allow_untrained=allow_untrained)
    path = Path(out) if out is not None else RunLayout(run_dir).onnx
    # Both folders are written (the model, export.json): say so now if one cannot be, rather
    # than let the exporter fail on its temp file with an error that blames the model.
    check_writable(run_dir, "the run folder")
    check_writable(path.parent, "the ONNX file's folder")
    started = time.perf_counter()
    exporter = write_onnx(model, meta, path, opset)
    result: dict[str, Any] = {
        "onnx": str(path),
        "checkpoint": str(checkpoint),
        "trained": meta["trained"],
        "arch": meta["arch"],
        "opset": opset,
        "exporter": exporter,
        "size_bytes": path.stat().st_size,
        "input": INPUT,
        "output": OUTPUT,
        "input_shape": ["batch", 3, meta["image_size"], meta["image_size"]],
        "export_seconds": round(time.perf_counter() - started, 2),
    }
    if verify:
        result["verification"] = verify_onnx(model, path, meta, run_dir, batch_sizes)
        _reject_if_failed(result, run_dir)
    if int8:
        from imagefit.export.quantize import quantize_int8

        result["int8"] = quantize_int8(path, meta, run_dir)
    if with_preprocessing:
        from imagefit.export.graph_preprocess import export_preprocessing, raise_if_rejected

        result["with_preprocessing"] = export_preprocessing(path, meta, run_dir)
    write_json(RunLayout(run_dir).export, stored_paths(result, RunLayout(run_dir)))
    if with_preprocessing:
        raise_if_rejected(result["with_preprocessing"], RunLayout(run_dir).export)
    log.info(
        "exported %s (%s, opset %d, %.1f MiB)", path, exporter, opset, result["size_bytes"] / 2**20
    )
    return result


def export_after_training(cfg: Config, run_dir: Path) -> dict[str, Any] | None:
    """``export.onnx: true``: export the finished run; a failure is logged, the run stays complete."""
    if not cfg.export.onnx:
        return None
    try:
        return export_onnx(run_dir, opset=cfg.export.opset, int8=cfg.export.int8)
    except Exception as exc:  # noqa: BLE001 - the trained run is the result; export can be redone
        log.error(
            "%s: ONNX export failed (%s: %s); retry with `imagefit export %s --onnx`",
            run_dir,
            type(exc).__name__,
            exc,
            run_dir,
        )
        return None


PATH_KEYS = ("onnx", "checkpoint")  # the keys of export.json (at any depth) that hold paths


def stored_paths(result: dict[str, Any], layout: RunLayout) -> dict[str, Any]:
    """``result`` as ``export.json`` stores it: the run's own files relative to its folder.

    The returned result keeps usable paths (the caller opens them); the record must stay
    true when the run folder moves."""
    return {
        key: stored_paths(value, layout)
        if isinstance(value, dict)
        else layout.stored(value)
        if key in PATH_KEYS and isinstance(value, str)
        else value
        for key, value in result.items()
    }


def _reject_if_failed(result: dict[str, Any], run_dir: Path) -> None:
    """A file that does not reproduce PyTorch moves to ``*.rejected.onnx``, so that nothing
    picks it up by its usual name; export.json records why, then ExportError is raised."""
    check = result["verification"]
    if check["passed"]:
        return
    path = Path(result["onnx"])
    rejected = rejected_name(path)
    path.replace(rejected)
    result["onnx"] = str(rejected)
    record = RunLayout(run_dir).export
    write_json(record, stored_paths(result, RunLayout(run_dir)))
    raise ExportError(
        f"{path}: ONNX Runtime does not reproduce PyTorch ({check['summary']}); "
        f"kept as {rejected.name} for inspection, details in {record}"
    )


def opset_range() -> tuple[int, int]:
    """The opsets this torch.onnx can write (its own constants; a fallback for other versions)."""
    from torch.onnx import _constants

    return (
        getattr(_constants, "ONNX_MIN_OPSET", 7),
        getattr(_constants, "ONNX_MAX_OPSET", 20),
    )


def check_opset(opset: int) -> None:
    """An opset torch.onnx cannot write fails here in one line, not deep in the exporter."""
    low, high = opset_range()
    if not low <= opset <= high:
        raise ExportError(
            f"--opset {opset}: torch {torch.__version__} exports ONNX opsets {low} to {high} "
            "(17 is a safe choice; 18 and up use the torch.export exporter)"
        )


def write_onnx(model: nn.Module, meta: dict[str, Any], path: Path, opset: int) -> str:
    """Export, stamp the metadata and run the full checker; written atomically. Returns the exporter."""
    import onnx

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with write_errors(path, "the ONNX file"):
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        try:
            exporter = _torch_export(model, meta["image_size"], tmp, opset)
        except Exception as exc:  # torch raises many types here; say which arch and opset failed
            os_error = _os_error(exc)
            if os_error is not None:  # the file system, not the model
                raise write_error(path, os_error, "the ONNX file") from None
            # The details (often a dump of the TorchScript graph) go to the debug log only.
            log.debug(
                "torch.onnx.export of %s at opset %d failed", meta["arch"], opset, exc_info=exc
            )
            hint = "; the torch.export exporter may succeed: try --opset 18" if opset < 18 else ""
            reason = (str(exc).strip().splitlines() or [""])[0]
            raise ExportError(
                f"{path}: torch.onnx.export of {meta['arch']} failed at opset {opset}: "
                f"{type(exc).__name__}: {reason}{hint} (details with -v)"
            ) from None
        proto = onnx.load(str(tmp))
        _check_opset(proto, opset, path)
        onnx.helper.set_model_props(proto, metadata_props(meta))
        proto.doc_string = f"imagefit {meta['arch']} classifier, {meta['num_classes']} classes"
        with write_errors(path, "the ONNX file"):
            onnx.save(proto, str(tmp))
        _full_check(tmp, path)
        with write_errors(path, "the ONNX file"):
            tmp.replace(path)
    finally:
        with contextlib.suppress(OSError):  # a read-only folder must not hide the first error
            tmp.unlink(missing_ok=True)
    return exporter


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (exporters wrap file errors in their own types), if any."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _torch_export(model: nn.Module, size: int, path: Path, opset: int) -> str:
    """torch.onnx.export with a dynamic batch axis; returns which exporter wrote the file.

    The torch.export-based exporter only emits opset >= 18: asked for less, it falls back to 18
    without an error for ResNets and EfficientNets (its down-converter fails on Reduce ops).
    Opsets below 18 therefore use the TorchScript exporter, as timm's onnx_export does.
    """
    example = (torch.randn(2, 3, size, size),)  # batch 2: tracing cannot specialise on 1
    if opset >= 18:
        torch.onnx.export(
            model,
            example,
            str(path),
            opset_version=opset,
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            verbose=False,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
        )
        return "dynamo"
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but still the only one that honours opset < 18.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            example,
            str(path),
            opset_version=opset,
            dynamo=False,
            input_names=[INPUT],
            output_names=[OUTPUT],
            do_constant_folding=True,
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
        )
    return "torchscript"


def _check_opset(proto: Any, opset: int, path: Path) -> None:
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise ExportError(f"{path}: asked for opset {opset}, the exporter produced {got}")


def _full_check(tmp: Path, path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(tmp), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{path}: the ONNX checker rejects the exported model: {exc}") from None


def metadata_props(meta: dict[str, Any]) -> dict[str, str]:
    """The ``imagefit.*`` metadata_props that let a consumer preprocess and label by itself."""
    values = {
        "version": imagefit.__version__,
        "arch": meta["arch"],
        "classes": meta["classes"],
        "num_classes": meta["num_classes"],
        "image_size": meta["image_size"],
        "mean": list(meta["mean"]),
        "std": list(meta["std"]),
        "input": INPUT,
        "output": OUTPUT,
        "preprocessing": preprocessing_text(meta),
        # false: weights with no finished epoch (--allow-untrained); consumers refuse or label
        "trained": bool(meta.get("trained", True)),
    }
    if "crop_pct" in meta:  # a model from before they were recorded goes without (legacy pixels)
        values["crop_pct"] = float(meta["crop_pct"])
        values["interpolation"] = str(meta.get("interpolation") or "bilinear")
    if meta.get("temperature") is not None:  # fitted by calibration: probabilities = softmax(z/T)
        values["temperature"] = float(meta["temperature"])
    if meta.get("task") == "multilabel":  # sigmoid per class; a class is shown at its threshold
        values["task"] = "multilabel"
        values["thresholds"] = [float(t) for t in meta["thresholds"]]
    return {META_PREFIX + k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


JSON_KEYS = ("classes", "num_classes", "image_size", "mean", "std")  # stored as JSON text
OPTIONAL_JSON_KEYS = ("temperature", "crop_pct")
TEXT_KEYS = ("arch", "input", "interpolation")  # stored as plain text


def read_metadata(custom: dict[str, str], source: str | Path) -> dict[str, Any]:
    """``imagefit.*`` metadata_props (e.g. ``session.get_modelmeta().custom_metadata_map``) ->
    a validated meta dict like a checkpoint's (:func:`imagefit.runs.meta.validate_meta`)."""
    missing = [k for k in JSON_KEYS if META_PREFIX + k not in custom]
    if missing:
        raise ExportError(
            f"{source}: no {META_PREFIX}{missing[0]} metadata; not an ONNX file exported by "
            "imagefit (its preprocessing is unknown)"
        )
    meta: dict[str, Any] = {"arch": "?", "input": INPUT}
    for key in JSON_KEYS + OPTIONAL_JSON_KEYS:
        if META_PREFIX + key not in custom:
            continue
        text = custom[META_PREFIX + key]
        try:
            meta[key] = json.loads(text)
        except json.JSONDecodeError as exc:
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise MetadataError(
                f"{source}: metadata {META_PREFIX}{key} is not valid JSON ({exc.msg}): {shown!r}"
            ) from None
    meta.update({k: custom[META_PREFIX + k] for k in TEXT_KEYS if META_PREFIX + k in custom})
    # absent in exports older than the field: nothing says they are untrained
    meta["trained"] = custom.get(META_PREFIX + "trained", "true") != "false"
    if custom.get(META_PREFIX + "task") == "multilabel":
        meta["task"] = "multilabel"
        try:
            meta["thresholds"] = json.loads(custom[META_PREFIX + "thresholds"])
        except (KeyError, ValueError):
            raise MetadataError(
                f"{source}: a multilabel model needs valid {META_PREFIX}thresholds JSON"
            ) from None
    return validate_meta(meta, source)


def session_metadata(session: Any, source: str | Path) -> dict[str, Any]:
    """The validated metadata of an ONNX Runtime session's model, its output width checked
    against the class names (what predict, serve and the web page label their scores by)."""
    meta = read_metadata(session.get_modelmeta().custom_metadata_map, source)
    outputs = session.get_outputs()
    shape = outputs[0].shape if outputs else None
    check_output_width(meta, shape[-1] if shape else None, source)
    return meta


def ort_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with full graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own unrelated types (Fail, InvalidGraph)
        raise ExportError(f"{path}: ONNX Runtime cannot load it: {exc}") from None


def run_session(session: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits of ``x`` (N, 3, S, S) float32, fed in batches of ``batch_size``."""
    name = session.get_inputs()[0].name
    chunks = [
        session.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(chunks) if chunks else np.empty((0, 0), np.float32)


def _verification_inputs(meta: dict[str, Any], run_dir: Path, count: int) -> tuple[str, np.ndarray]:
    """Real images of the run (val, else test, else train), else seeded noise with a warning."""
    size = meta["image_size"]
    split, pixels, _ = real_inputs(
        run_dir, ("val", "test", "train"), count, PixelSpec.from_meta(meta)
    )
    if len(pixels):
        return f"{split} split of {RunLayout(run_dir).split}", normalise(
            pixels, meta["mean"], meta["std"]
        )
    manifest = RunLayout(run_dir).split.name
    log.warning("%s: no %s with readable images; verifying on random inputs", run_dir, manifest)
    noise = np.random.default_rng(0).standard_normal((count, 3, size, size)).astype(np.float32)
    return f"random normal (no readable {manifest} images)", noise


def verify_onnx(
    model: nn.Module,
    path: Path,
    meta: dict[str, Any],
    run_dir: Path,
    batch_sizes: Sequence[int] = (1, 8),
) -> dict[str, Any]:
    """Compare ONNX Runtime with PyTorch on real images at each batch size.

    Passes when every logit is within ``ATOL + RTOL * |torch|`` and top-1 agrees except on
    near-ties (images whose two competing logits are closer than that tolerance).
    """
    count = max(VERIFY_IMAGES, 2 * max(batch_sizes))
    source, x = _verification_inputs(meta, run_dir, count)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    session = ort_session(path)
    per_batch = {str(b): compare_logits(run_session(session, x, b), reference) for b in batch_sizes}
    passed = all(
        r["within_tolerance"] and r["disagreements"] == r["near_ties"] for r in per_batch.values()
    )
    worst = max(r["max_abs_diff"] for r in per_batch.values())
    agreement = min(r["top1_agreement"] for r in per_batch.values())
    summary = f"max |onnx - torch| {worst:.3g}, top-1 agreement {agreement:.2%} on {len(x)} images"
    return {
        "inputs": source,
        "images": len(x),
        "rtol": RTOL,
        "atol": ATOL,
        "batch_sizes": per_batch,
        "max_abs_diff": worst,
        "top1_agreement": agreement,
        "passed": passed,
        "summary": summary,
    }


def compare_logits(out: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Max abs difference, tolerance check and top-1 agreement of ``out`` against ``ref``."""
    diff = np.abs(out.astype(np.float64) - ref)
    tolerance = ATOL + RTOL * np.abs(ref)
    top_ref, top_out = ref.argmax(1), out.argmax(1)
    rows = np.flatnonzero(top_ref != top_out)
    gap = ref[rows, top_ref[rows]] - ref[rows, top_out[rows]]
    near = int(np.sum(gap <= tolerance[rows, top_ref[rows]] * 2))  # both logits may move by tol
    return {
        "max_abs_diff": float(diff.max(initial=0.0)),
        "within_tolerance": bool(np.all(diff <= tolerance)),
        "top1_agreement": float(np.mean(top_ref == top_out)) if len(ref) else 1.0,
        "disagreements": len(rows),
        "near_ties": near,
    }
