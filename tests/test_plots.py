"""Plots of synthetic run folders: the right files, valid PNGs, readable at 10 and 120 classes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from imagefit.evaluate import plots
from imagefit.runs.reader import load_run

from helpers.runs import write_run

RUN_PLOTS = {
    "training_curves.png",
    "confusion_matrix.png",
    "confusion_matrix_normalized.png",
    "per_class_accuracy_all.png",
    "per_class_accuracy_top_bottom.png",
    "top_confused_pairs.png",
}


def check_png(path: Path, min_side: int = 300, max_side: int = 4000) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.load()
        assert min_side <= image.width <= max_side and min_side <= image.height <= max_side
        assert np.asarray(image.convert("L")).std() > 5  # something was drawn


def test_top_confused_pairs_from_a_known_matrix() -> None:
    matrix = [[50, 3, 0, 7], [9, 40, 3, 0], [0, 1, 45, 0], [7, 0, 2, 99]]
    assert plots.top_confused_pairs(matrix, k=4) == [(1, 0, 9), (0, 3, 7), (3, 0, 7), (0, 1, 3)]
    assert plots.top_confused_pairs(matrix, k=100)[-1] == (2, 1, 1)
    assert len(plots.top_confused_pairs(matrix, k=100)) == 7  # zeros and diagonal never listed
    assert plots.top_confused_pairs(np.diag([5, 6, 7])) == []


def test_plot_run_writes_seed_002_set(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", num_classes=2 * plots.TOP_BOTTOM_K + 1)
    paths = plots.plot_run(run)
    assert {p.name for p in paths} == RUN_PLOTS
    assert all(p.parent == run / "plots" for p in paths)
    for path in paths:
        check_png(path)


@pytest.mark.parametrize(
    ("num_classes", "left_out"),
    [
        (2, {"per_class_accuracy_top_bottom.png", "top_confused_pairs.png"}),
        (2 * plots.TOP_BOTTOM_K, {"per_class_accuracy_top_bottom.png"}),
        (2 * plots.TOP_BOTTOM_K + 1, set()),
    ],
)
def test_panels_that_say_nothing_at_this_size_are_left_out(
    tmp_path: Path, num_classes: int, left_out: set[str]
) -> None:
    figures = plots.run_figures(load_run(write_run(tmp_path / "run", num_classes=num_classes)))
    assert set(figures) == RUN_PLOTS - left_out


def test_confusion_matrix_with_120_classes_stays_readable(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 3, (120, 120)) + np.diag(rng.integers(5, 30, 120))
    names = [f"a_rather_long_class_name_{i}" for i in range(120)]
    for normalize in (False, True):
        ax = plots.confusion_matrix_figure(matrix, names, normalize).axes[0]
        assert not ax.texts  # no per-cell numbers at this size
        assert len(ax.get_xticks()) <= plots.TICKS_MAX and len(ax.get_yticks()) <= plots.TICKS_MAX
    fig = plots.confusion_matrix_figure(matrix, names, normalize=True)
    check_png(plots.save_figure(fig, tmp_path / "cm.png"), max_side=3000)


def test_small_confusion_matrix_is_annotated_and_normalized_by_row() -> None:
    fig = plots.confusion_matrix_figure([[3, 1], [0, 4]], ["a", "b"], normalize=True)
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["0.00", "0.25", "0.75", "1.00"]
    counts = plots.confusion_matrix_figure([[3, 1], [0, 4]], ["a", "b"])
    assert sorted(t.get_text() for t in counts.axes[0].texts) == ["1", "3", "4"]


def test_per_class_plots_with_many_classes_and_absent_ones(tmp_path: Path) -> None:
    accuracy = np.linspace(0, 1, 150)
    support = [0 if i % 50 == 0 else 4 for i in range(150)]
    names = [f"c{i}" for i in range(150)]
    fig = plots.per_class_accuracy_figure(accuracy, names, support)
    assert len(fig.axes[0].patches) == 150
    check_png(plots.save_figure(fig, tmp_path / "all.png"))
    top_bottom = plots.per_class_top_bottom_figure(accuracy, names, k=5, support=support)
    best, worst = ([t.get_text() for t in ax.get_yticklabels()] for ax in top_bottom.axes)
    assert best == ["c149", "c148", "c147", "c146", "c145"]
    assert worst == ["c1", "c2", "c3", "c4", "c5"]  # c0 has no samples: not "worst"


def test_training_curves_plot_train_val_and_lr() -> None:
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "val_loss": None if e == 2 else 1.1 / e,
            "train_accuracy": 0.5,
            "val_accuracy": 0.4,
            "lr": 0.1 / e,
        }
        for e in (1, 2, 3)
    ]
    loss, acc, lr = plots.training_curves_figure(history).axes
    assert [line.get_label() for line in loss.lines] == ["train", "val"]
    assert np.asarray(loss.lines[1].get_xdata()).tolist() == [
        1,
        3,
    ]  # the missing value is skipped, not zero
    assert len(acc.lines) == 2 and lr.get_yscale() == "log"


def test_missing_files_plot_what_exists_and_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = write_run(tmp_path / "partial", files={"history.json"})
    with caplog.at_level(logging.WARNING, logger="imagefit.evaluate.plots"):
        paths = plots.plot_run(run)
    assert [p.name for p in paths] == ["training_curves.png"]
    assert "metrics.json" in caplog.text and "summary.json" in caplog.text
    assert plots.plot_run(tmp_path / "empty_dir_that_is_missing") == []


def test_plot_comparison(tmp_path: Path) -> None:
    runs = [write_run(tmp_path / name, seed=i) for i, name in enumerate(("a", "b", "c"))]
    paths = plots.plot_comparison(runs, tmp_path / "compare")
    assert {p.name for p in paths} == {"comparison_val_curves.png", "comparison_test_accuracy.png"}
    for path in paths:
        check_png(path)
    fig = plots.comparison_curves_figure({"x": [{"epoch": 1, "val_accuracy": 0.5}], "y": []})
    assert [line.get_label() for line in fig.axes[0].lines] == ["x"]


def test_figures_leave_no_pyplot_state(tmp_path: Path) -> None:
    from matplotlib._pylab_helpers import Gcf

    fig = plots.top_confused_pairs_figure([[1, 2], [3, 4]], ["a", "b"])
    assert isinstance(fig, Figure)
    plots.run_figures(load_run(write_run(tmp_path / "run", num_classes=3)))
    plots.figure_png(fig)
    assert not Gcf.get_all_fig_managers()  # nothing registered with pyplot: nothing leaks
