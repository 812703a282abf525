"""Distributed data parallel for real: 2 CPU processes over gloo, started by torchrun.

One torchrun launch (``dist_worker.py``) runs ``imagefit train`` as a user does and then an
interrupted-and-resumed run, so that the suite pays the start-up of two processes once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from imagefit.train.fit import fit

from conftest import tiny_config, write_pattern_folder

TESTS = Path(__file__).parent
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")

DIGITS = {
    "data": {"image_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3},
    "augment": {"hflip": 0.0, "translate": 0.0},
    "train": {"epochs": 4, "batch_size": 32},
}
PATTERNS = {
    "train": {"epochs": 3, "batch_size": 3},
    "augment": {"scale": [0.6, 1.0], "hflip": 0.5},
    "model": {"drop_rate": 0.3},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
}
# Rank 1's 8th look at its flag: 1 before training, 4 steps of epoch 1 (24 images, 2 x 3 a
# step), 1 after it, then epoch 2's steps 1 and 2; the 9th, at step 3, sees the stop.
STOP_AFTER = 8


def _config(cfg, path: Path) -> str:
    path.write_text(yaml.safe_dump(cfg.to_dict()), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def launch(digits_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``torchrun --nproc_per_node=2`` of dist_worker.py; returns its folder."""
    work = tmp_path_factory.mktemp("ddp")
    digits = {**DIGITS, "train": {**DIGITS["train"], "batch_size": 16}}  # x 2 processes = 32
    patterns = write_pattern_folder(work / "patterns")
    args = [
        _config(tiny_config(digits_root, work / "digits-two", **digits), work / "digits.yaml"),
        _config(tiny_config(patterns, work, **PATTERNS), work / "patterns.yaml"),
        str(work / "out"),
        str(STOP_AFTER),
    ]
    (work / "out").mkdir()
    env = {**os.environ, "IMAGEFIT_CACHE": str(work / "cache")}  # runs before _isolated_cache
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(TESTS / "dist_worker.py"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    (work / "stdout.txt").write_text(done.stdout, encoding="utf-8")
    return work


def test_two_processes_write_one_run_and_train_like_one(
    launch: Path, digits_root: Path, tmp_path: Path
) -> None:
    reports = [json.loads((launch / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["cli_exit"] for r in reports] == [0, 0]
    assert (launch / "stdout.txt").read_text().count("run folder:") == 1  # rank 0 prints
    assert [p.name for p in (launch / "digits-two").iterdir()] == ["run"]  # one run folder
    run = launch / "digits-two" / "run"
    for name in (
        "config.yaml",
        "history.csv",
        "history.json",
        "metrics.json",
        "summary.json",
        "best.pt",
        "last.pt",
        "split.json",
        "environment.json",
    ):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*"))  # no temp files of a second writer
    assert json.loads((run / "environment.json").read_text())["world_size"] == 2
    state = torch.load(run / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state["model"])  # the unwrapped model
    assert len(state["ranks"]) == 2
    alone = fit(tiny_config(digits_root, tmp_path, **DIGITS))  # 1 process, batch 32
    summary = json.loads((run / "summary.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_samples"] == alone.metrics["num_samples"]  # gathered exactly, no padding
    assert summary["best_val_accuracy"] > 0.85 and alone.summary.best_val_accuracy > 0.85
    assert abs(summary["best_val_accuracy"] - alone.summary.best_val_accuracy) < 0.05
    assert abs(metrics["accuracy"] - alone.metrics["accuracy"]) < 0.05


def test_stop_on_one_rank_and_resume_is_exact(launch: Path) -> None:
    out = launch / "out"
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    # rank 1 alone saw the stop; both ranks stopped after the same step
    assert reports[0]["interrupted"] == reports[1]["interrupted"]
    assert "stopped at epoch 2, batch 3" in reports[0]["interrupted"]
    a, b = out / "a" / "run", out / "b" / "run"
    for name in ("last.pt", "best.pt"):
        wa, wb = (torch.load(d / name, weights_only=True) for d in (a, b))
        assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"]), name
    rows = [
        [
            {k: v for k, v in r.items() if k != "time_s"}
            for r in json.loads((d / "history.json").read_text())
        ]
        for d in (a, b)
    ]
    assert rows[0] == rows[1] and len(rows[0]) == 3
    assert reports[0]["a"] == reports[0]["resumed"] == reports[1]["resumed"]
