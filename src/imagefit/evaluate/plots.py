"""PNG plots of a run folder (curves, confusion matrices, per-class accuracy) and of several runs.

Figures are built as ``matplotlib.figure.Figure`` objects rendered by the Agg canvas; pyplot
is never imported, so no global figure state leaks between calls, threads or tests.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from numpy.typing import ArrayLike

from imagefit.fileio import atomic_write, make_dirs
from imagefit.runs.layout import RunLayout
from imagefit.runs.reader import RunRecord, load_run

log = logging.getLogger(__name__)

History = Sequence[Mapping[str, Any]]

ANNOTATE_MAX = 20  # above this many classes, per-cell numbers are unreadable
TOP_BOTTOM_K = 10  # classes in each of the best / worst panels
TICKS_MAX = 60  # above this many classes, label only every n-th tick
DPI = 100
NO_SAMPLES = "#bbbbbb"


# --------------------------------------------------------------------------- figure helpers


def figure_png(fig: Figure, dpi: int = DPI) -> bytes:
    """``fig`` rendered as PNG bytes."""
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def save_figure(fig: Figure, path: Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parents created) and return ``path``."""
    path = Path(path)
    make_dirs(path.parent)
    atomic_write(path, figure_png(fig, dpi), what="the plot", durable=False)
    return path


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _column(history: History, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and values of ``key`` where it is a number (missing/None/NaN dropped)."""
    epochs, values = [], []
    for index, row in enumerate(history):
        value = row.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            epochs.append(row.get("epoch", index + 1))
            values.append(float(value))
    return np.asarray(epochs, dtype=float), np.asarray(values)


def _class_ticks(ax: Any, num: int, names: Sequence[str], axis: str) -> None:
    """Label every class when few, else every n-th with small text, so labels never overlap."""
    step = max(1, math.ceil(num / TICKS_MAX))
    positions = np.arange(0, num, step)
    labels = [_short(str(names[int(i)])) for i in positions]
    size = max(4.0, min(10.0, 400 / max(len(positions), 1)))
    if axis == "x":
        ax.set_xticks(positions, labels, rotation=90, fontsize=size)
    else:
        ax.set_yticks(positions, labels, fontsize=size)


# --------------------------------------------------------------------------- single-run plots


def training_curves_figure(history: History, title: str | None = None) -> Figure:
    """Loss, accuracy and learning rate against epoch, train and validation."""
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    panels = fig.subplots(1, 3)
    specs = [
        ("Loss", [("train_loss", "train"), ("val_loss", "val")]),
        ("Accuracy", [("train_accuracy", "train"), ("val_accuracy", "val")]),
        ("Learning rate", [("lr", "lr")]),
    ]
    for ax, (name, series) in zip(panels, specs, strict=True):
        for key, label in series:
            epochs, values = _column(history, key)
            if len(values):
                ax.plot(epochs, values, marker="o" if len(values) < 30 else None, label=label)
        if name == "Learning rate" and ax.lines and (ax.lines[0].get_ydata() > 0).all():
            ax.set_yscale("log")  # schedules span decades; linear hides the tail
        ax.set(title=name, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    return fig


def confusion_matrix_figure(
    matrix: ArrayLike, classes: Sequence[str], normalize: bool = False, title: str | None = None
) -> Figure:
    """Heat map of ``matrix`` (rows = true, columns = predicted); ``normalize`` divides each
    row by its total so cells read as the fraction of that true class."""
    counts = np.asarray(matrix, dtype=float)
    num = len(counts)
    rows = counts.sum(axis=1, keepdims=True)
    values = (
        np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0) if normalize else counts
    )
    side = min(max(6.0, 0.35 * num + 3), 22.0)
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(
        values,
        cmap="Blues",
        interpolation="nearest",
        aspect="equal",
        vmin=0,
        vmax=1 if normalize else max(values.max(), 1),
    )
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of true class" if normalize else "count")
    if num <= ANNOTATE_MAX:
        _annotate_cells(ax, values, normalize)
    _class_ticks(ax, num, classes, "x")
    _class_ticks(ax, num, classes, "y")
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(title or ("Confusion matrix (normalized)" if normalize else "Confusion matrix"))
    return fig


def _annotate_cells(ax: Any, values: np.ndarray, normalize: bool) -> None:
    threshold = values.max() / 2 if values.size else 0
    size = max(5.0, min(10.0, 160 / len(values)))
    for (i, j), value in np.ndenumerate(values):
        if value == 0 and not normalize:
            continue  # empty cells stay blank: the non-zero ones are what the eye looks for
        text = f"{value:.2f}" if normalize else f"{int(value)}"
        color = "white" if value > threshold else "black"
        ax.text(j, i, text, ha="center", va="center", fontsize=size, color=color)


def _support_colors(num: int, support: ArrayLike | None) -> list[str]:
    if support is None:
        return ["C0"] * num
    return ["C0" if s > 0 else NO_SAMPLES for s in np.asarray(support)]


def per_class_accuracy_figure(
    accuracy: ArrayLike,
    classes: Sequence[str],
    support: ArrayLike | None = None,
    title: str | None = None,
) -> Figure:
    """Bar per class in class order, with the mean over classes that have samples."""
    acc = np.asarray(accuracy, dtype=float)
    num = len(acc)
    fig = Figure(figsize=(min(max(8.0, 0.25 * num + 2), 24.0), 5), layout="constrained")
    ax = fig.subplots()
    ax.bar(np.arange(num), acc, color=_support_colors(num, support), width=0.8)
    seen = np.asarray(support) > 0 if support is not None else np.ones(num, bool)
    if seen.any():
        mean = float(acc[seen].mean())
        ax.axhline(mean, color="C3", linestyle="--", label=f"mean {mean:.3f}")
    handles, _ = ax.get_legend_handles_labels()
    if not seen.all():
        handles.append(Patch(color=NO_SAMPLES, label="no samples in this split"))
    if handles:
        ax.legend(handles=handles, loc="lower right")
    _class_ticks(ax, num, classes, "x")
    ax.set(ylim=(0, 1.05), ylabel="accuracy (recall)", xlim=(-0.6, num - 0.4))
    ax.set_title(title or "Per-class accuracy")
    ax.grid(axis="y", alpha=0.3)
    return fig


def per_class_top_bottom_figure(
    accuracy: ArrayLike,
    classes: Sequence[str],
    k: int = 10,
    support: ArrayLike | None = None,
    title: str | None = None,
) -> Figure:
    """The ``k`` best and ``k`` worst classes by accuracy (classes without samples left out)."""
    acc = np.asarray(accuracy, dtype=float)
    keep = np.flatnonzero(np.asarray(support) > 0) if support is not None else np.arange(len(acc))
    order = keep[np.argsort(-acc[keep], kind="stable")]
    k = max(1, min(k, math.ceil(len(order) / 2))) if len(order) else 0
    groups = [("Best", order[:k], "C2"), ("Worst", order[::-1][:k], "C3")]
    fig = Figure(figsize=(13, max(3.0, 0.32 * k + 1.5)), layout="constrained")
    for ax, (name, index, color) in zip(fig.subplots(1, 2), groups, strict=True):
        ax.barh(np.arange(len(index)), acc[index], color=color)
        ax.set_yticks(np.arange(len(index)), [_short(str(classes[i]), 28) for i in index])
        ax.invert_yaxis()  # best (or worst) first, at the top
        for row, i in enumerate(index):
            ax.text(min(acc[i] + 0.01, 0.9), row, f"{acc[i]:.3f}", va="center", fontsize=8)
        ax.set(xlim=(0, 1.05), xlabel="accuracy", title=f"{name} {len(index)} classes")
        ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def top_confused_pairs(matrix: ArrayLike, k: int = 10) -> list[tuple[int, int, int]]:
    """The ``k`` most frequent mistakes as ``(true, predicted, count)``, largest count first
    (ties by true then predicted index); the diagonal and zero cells are never listed."""
    counts = np.asarray(matrix, dtype=np.int64).copy()
    np.fill_diagonal(counts, 0)
    true, pred = np.nonzero(counts)
    order = np.lexsort((pred, true, -counts[true, pred]))[:k]
    return [(int(true[i]), int(pred[i]), int(counts[true[i], pred[i]])) for i in order]


def top_confused_pairs_figure(
    matrix: ArrayLike, classes: Sequence[str], k: int = 10, title: str | None = None
) -> Figure:
    """Horizontal bars of the most frequent (true → predicted) mistakes."""
    pairs = top_confused_pairs(matrix, k)
    fig = Figure(figsize=(10, max(3.0, 0.35 * len(pairs) + 1.5)), layout="constrained")
    ax = fig.subplots()
    labels = [f"{_short(str(classes[t]), 24)} → {_short(str(classes[p]), 24)}" for t, p, _ in pairs]
    bars = ax.barh(np.arange(len(pairs)), [c for _, _, c in pairs], color="C1")
    ax.bar_label(bars, padding=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yticks(np.arange(len(pairs)), labels)
    ax.invert_yaxis()
    ax.set(xlabel="count (true → predicted)")
    ax.set_title(title or f"Top {len(pairs)} confused pairs")
    if not pairs:
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=ax.transAxes)
    ax.grid(axis="x", alpha=0.3)
    return fig


def run_figures(record: RunRecord) -> dict[str, Figure]:
    """The figures that ``record``'s files allow and that say something at its number of
    classes, by file name (seed 002's set).

    Left out: the best / worst classes with no more than ``2 * TOP_BOTTOM_K`` classes (the
    all-classes panel already shows each one, and with two classes "best 1 / worst 1" is the
    whole problem twice), and the confused pairs with two classes or no mistakes (the
    confusion matrix's off-diagonal cells are then the whole list).
    """
    figures: dict[str, Figure] = {}
    if record.history:
        figures["training_curves.png"] = training_curves_figure(record.history, record.name)
    if record.metrics.get("task") == "multilabel":  # no confusion matrix: classes overlap
        figures.update(multilabel_figures(record))
        return figures
    matrix, classes = record.metrics.get("confusion_matrix"), record.classes
    if not matrix or len(classes) != len(matrix):
        return figures
    figures["confusion_matrix.png"] = confusion_matrix_figure(matrix, classes)
    figures["confusion_matrix_normalized.png"] = confusion_matrix_figure(matrix, classes, True)
    per_class = record.metrics.get("per_class", {})
    accuracy = per_class.get("accuracy") or _recall(matrix)
    support = per_class.get("support") or np.asarray(matrix).sum(axis=1).tolist()
    figures["per_class_accuracy_all.png"] = per_class_accuracy_figure(accuracy, classes, support)
    if sum(s > 0 for s in support) > 2 * TOP_BOTTOM_K:
        figures["per_class_accuracy_top_bottom.png"] = per_class_top_bottom_figure(
            accuracy, classes, TOP_BOTTOM_K, support
        )
    if len(classes) > 2 and top_confused_pairs(matrix, 1):
        figures["top_confused_pairs.png"] = top_confused_pairs_figure(matrix, classes)
    return figures


def average_precision_figure(per_class: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Multi-label: each class's average precision on test, best first, support in the label."""
    rows = sorted(per_class.items(), key=lambda item: -(item[1].get("ap") or 0.0))
    fig = Figure(figsize=(7, max(2.5, 0.35 * len(rows) + 1)))
    ax = fig.add_subplot()
    names = [f"{_short(name)} ({values.get('support', 0)})" for name, values in rows]
    ax.barh(range(len(rows)), [values.get("ap") or 0.0 for _, values in rows], color="C0")
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("average precision (test)")
    ax.set_title("per-class average precision")
    fig.tight_layout()
    return fig


def precision_recall_figure(
    truth: np.ndarray, scores: np.ndarray, classes: Sequence[str], limit: int = 12
) -> Figure:
    """Multi-label: the precision-recall curve of each class (the ``limit`` most frequent)."""
    from sklearn.metrics import precision_recall_curve

    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    for k in np.argsort(-truth.sum(0), kind="stable")[:limit]:
        if truth[:, k].any():
            precision, recall, _ = precision_recall_curve(truth[:, k], scores[:, k])
            ax.plot(recall, precision, label=_short(classes[k]))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall per class (test)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def multilabel_figures(record: RunRecord) -> dict[str, Figure]:
    """Per-class AP bars from ``metrics.json``; PR curves when the test scores were saved."""
    from imagefit.data.multilabel import multi_hot_np
    from imagefit.evaluate.multilabel import sigmoid
    from imagefit.evaluate.predictions import SplitPredictions

    figures: dict[str, Figure] = {}
    per_class = record.metrics.get("per_class") or {}
    if per_class:
        figures["per_class_ap.png"] = average_precision_figure(per_class)
    saved = RunLayout(record.path).test_predictions
    if saved.is_file():
        predictions = SplitPredictions.load(saved)
        truth = multi_hot_np(predictions.labels, len(predictions.classes))
        scores = sigmoid(predictions.logits)
        figures["precision_recall.png"] = precision_recall_figure(
            truth, scores, predictions.classes
        )
    return figures


def _recall(matrix: ArrayLike) -> list[float]:
    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1)
    return np.divide(np.diag(counts), rows, out=np.zeros(len(rows)), where=rows > 0).tolist()


def plot_run(run_dir: Path) -> list[Path]:
    """Write the run's PNGs into ``run_dir/plots/`` and return their paths.

    Plots what the folder's files allow; a warning names any file that is missing."""
    record = load_run(Path(run_dir))
    if record.missing:
        log.warning("%s: missing %s; plotting what exists", run_dir, ", ".join(record.missing))
    figures = run_figures(record)
    folder = RunLayout(record.path).plots
    return [save_figure(fig, folder / name) for name, fig in figures.items()]


# --------------------------------------------------------------------------- several runs


def unique_names(records: Sequence[RunRecord]) -> list[str]:
    """Run names for legends, suffixed with their folder when two runs share a name."""
    names = [r.name for r in records]
    return [
        f"{n} ({r.path.parent.name}/{r.path.name})" if names.count(n) > 1 else n
        for n, r in zip(names, records, strict=True)
    ]


def comparison_curves_figure(histories: Mapping[str, History]) -> Figure:
    """Validation accuracy and loss of several runs, overlaid."""
    fig = Figure(figsize=(14, 5), layout="constrained")
    panels = fig.subplots(1, 2)
    for ax, key in zip(panels, ("val_accuracy", "val_loss"), strict=True):
        for name, history in histories.items():
            epochs, values = _column(history, key)
            if len(values):
                ax.plot(epochs, values, label=name, marker="o" if len(values) < 30 else None)
        ax.set(title=key.replace("_", " "), xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    return fig


def accuracy_bar_figure(accuracies: Mapping[str, float | None]) -> Figure:
    """Bar per run of its test accuracy (runs without one are shown as 'n/a')."""
    names = list(accuracies)
    values = [float(v) if (v := accuracies[n]) is not None else 0.0 for n in names]
    fig = Figure(figsize=(max(6.0, 0.8 * len(names) + 3), 5), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(np.arange(len(names)), values, color="C0")
    for bar, name in zip(bars, names, strict=True):
        value = accuracies[name]
        text = "n/a" if value is None else f"{value:.3f}"
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, text, ha="center")
    ax.set_xticks(np.arange(len(names)), [_short(n, 30) for n in names], rotation=30, ha="right")
    ax.set(ylim=(0, 1.1), ylabel="test accuracy", title="Test accuracy")
    ax.grid(axis="y", alpha=0.3)
    return fig


def comparison_figures(records: Sequence[RunRecord]) -> dict[str, Figure]:
    """Overlaid validation curves and the test-accuracy bar chart of ``records``, by file name."""
    names = unique_names(records)
    return {
        "comparison_val_curves.png": comparison_curves_figure(
            {n: r.history for n, r in zip(names, records, strict=True)}
        ),
        "comparison_test_accuracy.png": accuracy_bar_figure(
            {n: r.metrics.get("accuracy") for n, r in zip(names, records, strict=True)}
        ),
    }


def plot_comparison(run_dirs: Sequence[Path], out_dir: Path) -> list[Path]:
    """Write the comparison PNGs of ``run_dirs`` into ``out_dir`` and return their paths."""
    records = [load_run(Path(d)) for d in run_dirs]
    for record in records:
        if record.missing:
            log.warning("%s: missing %s", record.path, ", ".join(record.missing))
    figures = comparison_figures(records)
    return [save_figure(fig, Path(out_dir) / name) for name, fig in figures.items()]


def lr_find_figure(
    lrs: Sequence[float],
    losses: Sequence[float],
    smoothed: Sequence[float],
    suggestion: float | None,
) -> Figure:
    """The learning-rate range test: raw and smoothed loss against lr, the suggestion marked."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(lrs, losses, color="0.75", linewidth=0.8, label="loss")
    ax.plot(lrs, smoothed, color="C0", label="smoothed loss")
    if suggestion is not None:
        ax.axvline(suggestion, color="C3", linestyle="--")
        ax.plot([], [], color="C3", linestyle="--", label=f"suggested lr {suggestion:.2g}")
    ax.set_xscale("log")
    if smoothed:
        # The diverging tail reaches orders of magnitude above the start: clip it, as fastai
        # does, so the fall the suggestion reads stays visible.
        low = min(min(losses), min(smoothed))
        ax.set_ylim(low - 0.05 * abs(low), 1.5 * max(smoothed[0], low))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("learning-rate range test")
    ax.legend()
    fig.tight_layout()
    return fig
