"""The served model: an imagefit ONNX classifier, its metadata, and upload -> model input.

Uploads are decoded by :func:`imagefit.data.images.load_rgb` and cropped by
:func:`imagefit.data.images.resize_center_crop`, then normalised like the loaders, so the
server's predictions equal ``imagefit predict`` and the evaluation path.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imagefit.data.images import load_rgb
from imagefit.data.store import PixelSpec
from imagefit.errors import ImagefitError
from imagefit.export.onnx import session_metadata
from imagefit.runs import layout
from imagefit.runs.reader import require_trained
from imagefit.serve import ServeError

log = logging.getLogger(__name__)

MODEL_FILE = layout.ONNX  # export_onnx's default output in a run folder


@dataclass
class ServedModel:
    """An ONNX Runtime session on the plain (N, 3, S, S) classifier and what describes it."""

    path: Path
    session: Any
    meta: dict[str, Any]
    name: str
    version: str  # first 12 hex digits of the file's SHA-256: changes whenever the weights do
    run: str | None  # the run folder the file was exported from, when it sits in one
    input_name: str = field(init=False)

    def __post_init__(self) -> None:
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 -> (N, classes) float32."""
        return self.session.run(None, {self.input_name: x})[0]

    def describe(self) -> dict[str, Any]:
        """What ``GET /metadata`` answers."""
        meta = self.meta
        return {
            "model": {"name": self.name, "version": self.version, "file": str(self.path)},
            "run": self.run,
            "trained": self.meta["trained"],
            "arch": meta["arch"],
            "classes": meta["classes"],
            "num_classes": meta["num_classes"],
            "input_size": [meta["image_size"], meta["image_size"]],
            "preprocessing": {
                "description": meta.get("preprocessing", ""),
                "image_size": meta["image_size"],
                "crop_pct": meta.get("crop_pct", 1.0),
                "interpolation": meta.get("interpolation", "bilinear"),
                "mean": meta["mean"],
                "std": meta["std"],
            },
        }


def resolve_model_file(target: str | Path) -> Path:
    """A run folder means its exported model (``imagefit export RUN --onnx``); an ``.onnx``
    file is itself."""
    path = Path(target)
    if path.is_dir():
        candidate = path / MODEL_FILE
        if not candidate.is_file():
            raise ServeError(
                f"{path}: run folder has no {MODEL_FILE}; export it first with "
                f"`imagefit export {path} --onnx`"
            )
        return candidate
    if not path.is_file():
        raise ServeError(f"no such run folder or ONNX file: {path}")
    if path.suffix.lower() != ".onnx":
        raise ServeError(f"{path}: not an .onnx file (serve a run folder or an exported .onnx)")
    return path


def load_served_model(
    target: str | Path, threads: int | None = None, allow_untrained: bool = False
) -> ServedModel:
    """Load and describe the model; raises ServeError/ExportError with one clear line, and
    UntrainedRunError for a model exported with no finished epoch unless ``allow_untrained``."""
    path = resolve_model_file(target)
    session = _session(path, threads)
    custom = session.get_modelmeta().custom_metadata_map
    meta = session_metadata(session, path)
    require_trained(path, None if meta["trained"] else 0, allow_untrained)
    meta["preprocessing"] = custom.get("imagefit.preprocessing", "")
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].type != "tensor(float)":
        raise ServeError(
            f"{path}: input {inputs[0].name} {inputs[0].type} {inputs[0].shape} is not the "
            f"(N, 3, S, S) float32 classifier; serve the plain {layout.ONNX}, not the "
            f"*{layout.PREPROCESS_SUFFIX} made for browsers"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    run = _run_folder(path)
    name = Path(run).name if run else path.stem
    log.info(
        "loaded %s (%s, %d classes, version %s)", path, meta["arch"], meta["num_classes"], digest
    )
    return ServedModel(path, session, meta, name, digest, run)


def _session(path: Path, threads: int | None) -> Any:
    """An ONNX Runtime CPU session whose idle threads sleep rather than spin: between batches
    the cores belong to the request decoding (spinning halved throughput on 2 cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own unrelated types
        raise ServeError(f"{path}: ONNX Runtime cannot load it: {exc}") from None


def _run_folder(path: Path) -> str | None:
    """The folder holding the file, when it is a run folder (it has a checkpoint)."""
    from imagefit.models.trained import resolve_checkpoint

    try:
        return str(resolve_checkpoint(path.parent).parent.resolve())
    except ImagefitError:
        return None


def decode_upload(data: bytes, name: str, meta: dict[str, Any]) -> np.ndarray:
    """Uploaded bytes -> (3, S, S) float32 model input; raises ImageError (with ``kind``)."""
    image = load_rgb(io.BytesIO(data), name=name)
    pixels = PixelSpec.from_meta(meta).crop(image)  # the run's evaluation pixels
    return normalise_hwc(pixels, meta["mean"], meta["std"])


def normalise_hwc(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(S, S, 3) uint8 -> (3, S, S) float32, bit for bit what :func:`imagefit.export.preprocess.normalise` computes.

    NumPy rather than :func:`normalise`'s torch ops: those run on torch's intra-op thread pool,
    and a server decoding many uploads at once in threads oversubscribed 2 cores with it.
    The arithmetic is the same IEEE float32 (255 * mean and 255 * std in float32, one
    subtraction and one division per value), so the numbers are identical.
    """
    mean255 = np.asarray(mean, dtype=np.float32) * np.float32(255)
    std255 = np.asarray(std, dtype=np.float32) * np.float32(255)
    x = pixels.astype(np.float32).transpose(2, 0, 1)
    return np.ascontiguousarray((x - mean255[:, None, None]) / std255[:, None, None])
