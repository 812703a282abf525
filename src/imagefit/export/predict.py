"""``predict``: class scores for image files, from a checkpoint, a run folder or an ONNX file.

The preprocessing (size, mean, std, class names) comes with the model: a checkpoint's ``meta``
or an exported file's ``imagefit.*`` metadata, so nothing has to be repeated on the command
line. A file that cannot be read gets an ``error`` entry; the other files are still predicted.
A model calibrated by :func:`imagefit.evaluate.calibration.calibrate_run` carries a
``temperature``; its probabilities are ``softmax(logits / temperature)`` (``calibrated: true``),
and ``abstain_below`` marks predictions whose probability falls under it. A multi-label model
(``task: multilabel``) scores each class with a sigmoid and lists in ``labels`` every class
whose score reaches its threshold.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagefit.data.inputs import Problem, expand_images, normalise
from imagefit.data.store import PixelSpec
from imagefit.errors import CheckpointError, DataError
from imagefit.evaluate.multilabel import sigmoid
from imagefit.evaluate.tta import average_logits, views

log = logging.getLogger(__name__)

BATCH_SIZE = 64


@dataclass
class Predictor:
    """A loaded model and the preprocessing that goes with it."""

    source: str
    meta: dict[str, Any]  # classes, image_size, mean, std (, temperature)
    logits: Callable[[np.ndarray], np.ndarray]  # (N, 3, S, S) float32 -> (N, classes)


def load_predictor(model_path: str | Path, allow_untrained: bool = False) -> Predictor:
    """A checkpoint or run folder runs in PyTorch; an ``.onnx`` file in ONNX Runtime.

    An untrained model is refused unless ``allow_untrained`` (``meta["trained"]`` says which)."""
    path = Path(model_path)
    if path.suffix.lower() == ".onnx":
        return _onnx_predictor(path, allow_untrained)
    from imagefit.models.trained import load_trained

    model, meta, _ = load_trained(path, allow_untrained=allow_untrained)

    def logits(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return Predictor(str(path), meta, logits)


def _onnx_predictor(path: Path, allow_untrained: bool) -> Predictor:
    from imagefit.export.onnx import ort_session, session_metadata
    from imagefit.runs.reader import require_trained

    if not path.is_file():
        raise CheckpointError(f"no such ONNX file: {path}")
    session = ort_session(path)
    meta = session_metadata(session, path)
    require_trained(path, None if meta["trained"] else 0, allow_untrained)
    name = session.get_inputs()[0].name
    return Predictor(str(path), meta, lambda x: session.run(None, {name: x})[0])


def predict(
    model_path: str | Path,
    images: Sequence[str | Path],
    top_k: int = 5,
    batch_size: int = BATCH_SIZE,
    abstain_below: float | None = None,
    tta: str = "none",
    allow_untrained: bool = False,
) -> list[dict[str, Any]]:
    """One dict per image, in order: ``{"file", "label", "index", "probability", "top_k": [...],
    "calibrated"}`` (plus ``"abstain"`` with ``abstain_below``), or ``{"file", "error", "kind"}``
    for an image that could not be read. ``tta`` (:data:`imagefit.evaluate.tta.VIEWS`) averages
    the probabilities over views of each image (``"tta"`` in each result names it)."""
    if top_k < 1:
        raise DataError(f"top_k must be at least 1, got {top_k}")
    if abstain_below is not None and not 0.0 <= abstain_below <= 1.0:
        raise DataError(f"abstain_below must be a probability in [0, 1], got {abstain_below}")
    views(tta, torch.zeros(1, 3, 8, 8))  # an unknown mode fails before any model loads
    predictor = load_predictor(model_path, allow_untrained)
    if tta != "none" and predictor.meta.get("task") == "multilabel":
        raise DataError(f"{model_path}: TTA averages softmax probabilities; not for multi-label")
    if abstain_below is not None and predictor.meta.get("temperature") is None:
        log.warning(
            "%s is not calibrated (no temperature): abstaining on uncalibrated probabilities; "
            "run `imagefit calibrate RUN` first",
            predictor.source,
        )
    items = expand_images(images)
    if not items:
        raise DataError("no images given")
    results: list[dict[str, Any]] = []
    for start in range(0, len(items), batch_size):
        results.extend(_predict_batch(predictor, items[start : start + batch_size], top_k, tta))
    if not predictor.meta["trained"]:
        for r in results:
            r["trained"] = False  # --allow-untrained: every answer says what it came from
    if abstain_below is not None:
        for r in results:
            if "error" not in r:
                r["abstain"] = r["probability"] < abstain_below
    failed = sum("error" in r for r in results)
    log.info(
        "predicted %d images with %s (%d failed)", len(results) - failed, predictor.source, failed
    )
    return results


def _predict_batch(
    predictor: Predictor, items: list[Path | Problem], top_k: int, tta: str = "none"
) -> list[dict[str, Any]]:
    """Decode what can be decoded, predict those in one batch, keep the others' errors in place."""
    meta = predictor.meta
    results: list[dict[str, Any]] = []
    good: list[tuple[int, np.ndarray]] = []
    spec = PixelSpec.from_meta(meta)  # the run's evaluation pixels
    for item in items:
        if isinstance(item, tuple):
            results.append({"file": str(item[0]), "error": item[1], "kind": item[2]})
            continue
        try:
            good.append((len(results), spec.array(item)))
            results.append({"file": str(item)})
        except DataError as exc:
            results.append(
                {"file": str(item), "error": str(exc), "kind": getattr(exc, "kind", "unreadable")}
            )
    if good:
        x = normalise(np.stack([pixels for _, pixels in good]), meta["mean"], meta["std"])
        if meta.get("task") == "multilabel":
            scores = sigmoid(predictor.logits(x))
            for (position, _), row in zip(good, scores, strict=True):
                results[position].update(_above(row, meta["classes"], meta["thresholds"], top_k))
            return results
        temperature = meta.get("temperature")
        # each view's probabilities at the model's temperature, then their mean
        per_view = [
            torch.from_numpy(predictor.logits(np.ascontiguousarray(view.numpy())))
            / (temperature or 1.0)
            for view in views(tta, torch.from_numpy(x))
        ]
        probs = softmax(average_logits(per_view).numpy())
        for (position, _), row in zip(good, probs, strict=True):
            results[position].update(_top(row, meta["classes"], top_k))
            results[position]["calibrated"] = temperature is not None
            if tta != "none":
                results[position]["tta"] = tta
    return results


def label_scores(logits: np.ndarray, meta: dict[str, Any], top_k: int) -> dict[str, Any]:
    """One image's logits (K,) as a served answer: the top classes by softmax, or, for a
    multi-label model, by sigmoid with every class above its threshold in ``labels``."""
    if meta.get("task") == "multilabel":
        return _above(sigmoid(logits), meta["classes"], meta["thresholds"], top_k)
    return _top(softmax(logits[None])[0], meta["classes"], top_k)


def _above(
    scores: np.ndarray, classes: list[str], thresholds: Sequence[float], k: int
) -> dict[str, Any]:
    """Multi-label: every class whose sigmoid score reaches its threshold (tuned on val),
    best first; ``top_k`` and ``label`` as for one class per image."""
    result = _top(scores, classes, k)
    order = np.argsort(-scores, kind="stable")
    result["labels"] = [classes[i] for i in order if scores[i] >= thresholds[i]]
    result["thresholds"] = {name: float(t) for name, t in zip(classes, thresholds, strict=True)}
    return result


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    # Shifted by the row maximum so that exp cannot overflow.
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _top(probs: np.ndarray, classes: list[str], k: int) -> dict[str, Any]:
    """The best class and the ``k`` best (ties: lower index first, like argmax)."""
    order = np.argsort(-probs, kind="stable")[: min(k, len(classes))]
    top = [{"label": classes[i], "index": int(i), "probability": float(probs[i])} for i in order]
    return {
        "label": top[0]["label"],
        "index": top[0]["index"],
        "probability": top[0]["probability"],
        "top_k": top,
    }
