"""The learning-rate range test: a sane suggestion on a tiny problem, the curve and plot on
disk and nothing else, and the suggestion written back through the --set mechanism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from imagefit.cli import app
from imagefit.config import load_config
from imagefit.errors import ConfigError
from imagefit.train.lr_find import find_lr, lr_schedule, suggest

from conftest import tiny_config


def test_suggestion_is_the_steepest_fall_of_the_smoothed_loss() -> None:
    lrs = list(np.geomspace(1e-6, 1.0, 61))
    # flat, then a fall that is steepest at index 30, then a rise
    smoothed = [
        2.0 - np.tanh((i - 30) / 4.0) + (0.05 * (i - 45) ** 2 if i > 45 else 0.0) for i in range(61)
    ]
    assert suggest(lrs, smoothed) == pytest.approx(lrs[30])
    assert suggest(lrs[:5], smoothed[:5]) is None  # too few steps past the skipped first ones


def test_the_ramp_is_checked() -> None:
    assert lr_schedule(1e-4, 1.0, 5) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    with pytest.raises(ConfigError, match="--start < --end"):
        lr_schedule(1.0, 1e-3, 10)
    with pytest.raises(ConfigError, match="--steps"):
        lr_schedule(1e-4, 1.0, 1)


def test_range_test_on_a_tiny_problem_suggests_a_sane_lr(
    pattern_root: Path, tmp_path: Path
) -> None:
    cfg = tiny_config(pattern_root, tmp_path / "runs", data={"augment": False})
    result = find_lr(cfg, start=1e-5, end=100.0, steps=80)
    assert result.suggestion is not None
    # Adam on a small CNN learns between about 1e-4 and 1e-1; outside that it is no advice.
    assert 1e-4 <= result.suggestion <= 0.3
    assert "passed 4x" in result.stopped or "loss became" in result.stopped  # lr 100 diverges
    assert len(result.lrs) < 80
    assert min(result.smoothed) < result.smoothed[0]  # the loss did fall on the way


def test_cli_writes_curve_plot_and_the_lr_into_the_config(
    pattern_root: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    tree = {
        "data": {"root": str(pattern_root), "image_size": 16, "num_workers": 0, "augment": False},
        "model": {"name": "simple_cnn"},
        "optim": {"name": "adam"},
        "train": {"batch_size": 8, "threads": 1},
        "output": {"dir": str(tmp_path / "runs")},
    }
    config.write_text(yaml.safe_dump(tree))
    out = tmp_path / "lr"
    args = ["lr-find", str(config), "--start", "1e-5", "--end", "100", "--steps", "60"]
    printed = CliRunner().invoke(app, [*args, "--out", str(out)], catch_exceptions=False)
    assert printed.exit_code == 0, printed.output
    assert "--set optim.lr=" in printed.output
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.json", "lr_find.png"]
    record = json.loads((out / "lr_find.json").read_text())
    assert len(record["lrs"]) == len(record["losses"]) == len(record["smoothed"])
    assert (out / "lr_find.png").read_bytes().startswith(b"\x89PNG")
    assert yaml.safe_load(config.read_text()) == tree  # no --write: the config is untouched
    assert not (tmp_path / "runs").exists()  # no run folder, no checkpoint

    written = CliRunner().invoke(app, [*args, "--write", "--set", "train.seed=1"])
    assert written.exit_code == 0, written.output
    lr = yaml.safe_load(config.read_text())["optim"]["lr"]
    assert isinstance(lr, float) and f"optim.lr={lr:.3g}" in written.output
    assert load_config(config).optim.lr == lr
    assert (tmp_path / "runs" / "lr_find" / "lr_find.png").is_file()  # the default folder
