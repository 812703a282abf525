"""Calibration: do the model's probabilities mean what they say? Temperature scaling fixes them.

A network trained with cross-entropy is usually over-confident: among images it gives 0.9,
fewer than 90% are right. Temperature scaling (Guo et al., "On Calibration of Modern Neural
Networks", ICML 2017) divides the logits by one scalar T > 0 fitted on the validation split by
minimising the negative log-likelihood; it never changes which class wins, so accuracy is
untouched. The expected calibration error (ECE, 15 equal-width confidence bins as in the
paper) and the NLL on the test split are reported before and after.

:func:`calibrate_run` is the post-run step: it fits T on the run's validation split, stores it
in ``best.pt``'s meta (``temperature``, which ``predict`` and the ONNX export carry), adds
``ece``, ``nll``, ``ece_calibrated``, ``nll_calibrated`` and ``temperature`` to
``metrics.json``, writes ``calibration.json`` and ``plots/reliability.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from imagefit.data.cache import file_digest
from imagefit.errors import DataError
from imagefit.evaluate.predictions import (
    SplitPredictions,
    run_test_predictions,
    split_predictions,
)
from imagefit.fileio import atomic_open, make_dirs, write_json
from imagefit.models.trained import resolve_checkpoint
from imagefit.runs.checkpoint import load_checkpoint, save_checkpoint
from imagefit.runs.layout import RunLayout

log = logging.getLogger(__name__)

BINS = 15  # Guo et al.'s choice; ECE depends on it, so it is fixed for comparability
RELIABILITY_PNG = "reliability.png"


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)  # shifted so that exp cannot overflow
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict[str, list]:
    """Per equal-width confidence bin: mean confidence, accuracy and count (empty bins: None)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 cannot occur.
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    out: dict[str, list] = {"confidence": [], "accuracy": [], "count": []}
    for i in range(bins):
        members = index == i
        n = int(members.sum())
        out["count"].append(n)
        out["confidence"].append(float(confidence[members].mean()) if n else None)
        out["accuracy"].append(float(correct[members].mean()) if n else None)
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    table = reliability_bins(probs, labels, bins)
    total = sum(table["count"])
    return float(
        sum(
            n * abs(acc - conf)
            for n, acc, conf in zip(
                table["count"], table["accuracy"], table["confidence"], strict=True
            )
            if n
        )
        / total
    )


def negative_log_likelihood(
    logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0
) -> float:
    """Mean cross-entropy of ``logits / temperature`` against ``labels``."""
    x = torch.from_numpy(np.asarray(logits, dtype=np.float64)) / temperature
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return float(torch.nn.functional.cross_entropy(x, y))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """The T > 0 that minimises the NLL of ``logits / T`` (L-BFGS over log T, float64)."""
    if len(labels) == 0:
        raise DataError("cannot fit a temperature on no images")
    x = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # log T keeps T positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not np.isfinite(temperature):
        raise DataError("temperature fitting diverged (non-finite logits?)")
    return temperature


def calibration_report(
    logits: np.ndarray, labels: np.ndarray, temperature: float, bins: int = BINS
) -> dict[str, Any]:
    """ECE and NLL of ``logits`` before and after dividing by ``temperature``, with bins."""
    before, after = softmax(logits), softmax(logits, temperature)
    return {
        "images": len(labels),
        "temperature": temperature,
        "ece": expected_calibration_error(before, labels, bins),
        "nll": negative_log_likelihood(logits, labels),
        "ece_calibrated": expected_calibration_error(after, labels, bins),
        "nll_calibrated": negative_log_likelihood(logits, labels, temperature),
        "bins": bins,
        "reliability": reliability_bins(before, labels, bins),
        "reliability_calibrated": reliability_bins(after, labels, bins),
    }


def reliability_figure(report: dict[str, Any], title: str = "") -> Figure:
    """Two reliability diagrams side by side: before and after temperature scaling."""
    fig = Figure(figsize=(9, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    edges = np.linspace(0, 1, report["bins"] + 1)
    width = edges[1] - edges[0]
    for ax, key, label in zip(
        fig.subplots(1, 2),
        ("reliability", "reliability_calibrated"),
        (
            f"uncalibrated: ECE {report['ece']:.3f}, NLL {report['nll']:.3f}",
            f"T = {report['temperature']:.3g}: ECE {report['ece_calibrated']:.3f}, "
            f"NLL {report['nll_calibrated']:.3f}",
        ),
        strict=True,
    ):
        table = report[key]
        acc = np.array([a if a is not None else 0.0 for a in table["accuracy"]])
        conf = np.array([c if c is not None else 0.0 for c in table["confidence"]])
        filled = np.array(table["count"]) > 0
        ax.bar(edges[:-1], acc, width=width, align="edge", color="#4c72b0", label="accuracy")
        ax.bar(
            edges[:-1][filled],
            (conf - acc)[filled],
            bottom=acc[filled],
            width=width,
            align="edge",
            color="#dd8452",
            alpha=0.45,
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=label)
        ax.legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def set_checkpoint_temperature(checkpoint: str | Path, temperature: float) -> None:
    """Re-save ``checkpoint`` (atomically) with ``meta['temperature']`` set."""
    state = load_checkpoint(checkpoint)
    state.setdefault("meta", {})["temperature"] = float(temperature)
    save_checkpoint(state, checkpoint)


def _update_metrics(run_dir: Path, values: dict[str, float]) -> None:
    path = RunLayout(run_dir).metrics
    if not path.is_file():
        return
    metrics = json.loads(path.read_text(encoding="utf-8"))
    metrics.update(values)
    write_json(path, metrics)


def calibrate_run(run_dir: str | Path, device: str = "auto") -> dict[str, Any]:
    """Post-run step: fit T on the validation split, report ECE/NLL on test, store T.

    Raises DataError when the run has no validation split: fitting T on the test split
    would tune on the numbers it then reports.
    """
    checkpoint = resolve_checkpoint(run_dir)
    run_dir = checkpoint.parent
    try:
        val, meta, _ = split_predictions(checkpoint, "val", device=device)
    except DataError as exc:
        raise DataError(
            f"{run_dir}: cannot calibrate without a validation split ({exc}); a temperature "
            "fitted on the test split would be tuned on the numbers it reports"
        ) from None
    if meta.get("task") == "multilabel":
        raise DataError(
            f"{checkpoint}: a multi-label model; temperature scaling calibrates one softmax "
            "over exclusive classes (its per-class thresholds were tuned on val instead)"
        )
    temperature = fit_temperature(val.logits, val.labels)
    result: dict[str, Any] = {
        "temperature": temperature,
        "fitted_on": {"split": "val", "images": len(val.labels)},
        "val": calibration_report(val.logits, val.labels, temperature),
    }
    test: SplitPredictions | None
    try:
        test = run_test_predictions(run_dir)
    except DataError as exc:
        log.warning("%s: no test predictions (%s); calibration reported on val only", run_dir, exc)
        test = None
    shown = result["val"]
    if test is not None:
        result["test"] = shown = calibration_report(test.logits, test.labels, temperature)
        _update_metrics(run_dir, {k: shown[k] for k in _METRIC_KEYS})
    set_checkpoint_temperature(checkpoint, temperature)
    if test is not None:  # the logits do not change with T; keep the file tied to best.pt
        test.checkpoint_sha256 = file_digest(checkpoint).hex()
        test.save(RunLayout(run_dir).test_predictions)
    write_json(RunLayout(run_dir).calibration, result)
    plots = RunLayout(run_dir).plots
    make_dirs(plots)
    split = "test" if test is not None else "val"
    figure = reliability_figure(shown, f"{run_dir.name}: reliability on {split}")
    with atomic_open(plots / RELIABILITY_PNG, "wb", what="the reliability diagram") as handle:
        figure.savefig(handle, format="png")
    log.info(
        "%s: temperature %.3g; %s ECE %.4f -> %.4f, NLL %.4f -> %.4f",
        run_dir,
        temperature,
        split,
        shown["ece"],
        shown["ece_calibrated"],
        shown["nll"],
        shown["nll_calibrated"],
    )
    return result


_METRIC_KEYS = ("ece", "nll", "ece_calibrated", "nll_calibrated", "temperature")
