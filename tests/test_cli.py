"""Every CLI command end to end, and real signals against a real training process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from imagefit.cli import app
from imagefit.config import dump_config

from conftest import tiny_config

runner = CliRunner()


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_demo_end_to_end(tmp_path: Path) -> None:
    out = invoke(
        "demo", "--workdir", str(tmp_path), "--limit-batches", "3", "--set", "train.epochs=2"
    )
    run = tmp_path / "runs" / "demo"
    assert f"run folder: {run}" in out.replace("\n", "")
    assert "test accuracy" in out
    assert len(list((tmp_path / "data" / "digits").rglob("*.png"))) == 1797
    split = json.loads((run / "split.json").read_text())
    assert split["seed"] == 42 and split["counts"] == {"train": 1259, "val": 269, "test": 269}


def test_config_show_resolves_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: resnet34}\n")
    shown = yaml.safe_load(invoke("config", "show", str(path), "--set", "optim.lr=0.5"))
    assert shown["model"]["name"] == "resnet34" and shown["optim"]["lr"] == 0.5


def test_bad_override_exits_with_a_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imagefit", "config", "show", "--set", "train.epoch=3"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert "train.epoch" in result.stderr and "Traceback" not in result.stderr


def _write_config(pattern_root: Path, tmp_path: Path, **sections) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(tiny_config(pattern_root, tmp_path / "runs", **sections)))
    return path


def test_train_eval_and_split_commands(pattern_root: Path, tmp_path: Path) -> None:
    config = _write_config(pattern_root, tmp_path)
    invoke("train", str(config), "--set", "train.epochs=1", "--limit-batches", "2")
    run = tmp_path / "runs" / "run"
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 1
    out = invoke("eval", str(run), "--split", "val", "--json")
    metrics = json.loads(out)
    assert metrics["split"] == "val" and metrics["num_samples"] == len(
        json.loads((run / "split.json").read_text())["splits"]["val"]
    )
    test_metrics = json.loads(invoke("eval", str(run / "best.pt"), "--json"))
    assert test_metrics["accuracy"] == pytest.approx(
        json.loads((run / "metrics.json").read_text())["accuracy"]
    )
    invoke("data", "split", str(pattern_root), str(tmp_path / "split"), "--seed", "1")
    assert {p.name for p in (tmp_path / "split").iterdir()} == {
        "train",
        "val",
        "test",
        "split.json",
    }


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "imagefit", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def _wait_for_epoch(run: Path, process: subprocess.Popen, epoch: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        history = run / "history.json"
        if history.is_file() and len(json.loads(history.read_text() or "[]")) >= epoch:
            return
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.02)
    raise AssertionError("training did not reach the epoch in time")


def _slow_config(digits_root: Path, tmp_path: Path) -> Path:
    return _write_config(
        digits_root,
        tmp_path,
        data={"image_size": 16},
        augment={"hflip": 0.0},
        train={"epochs": 3, "batch_size": 8, "threads": 1},
    )


@pytest.mark.parametrize("delay", [0.05, 0.3])
def test_sigkill_then_resume_equals_uninterrupted(
    digits_root: Path, tmp_path: Path, delay: float
) -> None:
    config = _slow_config(digits_root, tmp_path)
    victim = _cli("train", str(config))
    reference = _cli("train", str(config), "--set", "output.name=reference")  # runs alongside
    run = tmp_path / "runs" / "run"
    _wait_for_epoch(run, victim, 1)
    time.sleep(delay)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] < 3
    resumed = _cli("train", "--resume", str(run))
    assert resumed.wait() == 0, resumed.stdout.read()
    assert reference.wait() == 0, reference.stdout.read()
    a = torch.load(run / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "runs" / "reference" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_saves_mid_epoch_and_exits_with_a_distinct_code(
    digits_root: Path, tmp_path: Path
) -> None:
    config = _slow_config(digits_root, tmp_path)
    process = _cli("train", str(config))
    run = tmp_path / "runs" / "run"
    _wait_for_epoch(run, process, 1)
    time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 75, output
    assert "imagefit train --resume" in output
    state = torch.load(run / "last.pt", weights_only=True)
    # The signal came during epoch 2: the checkpoint holds epoch 1 done and a position inside
    # epoch 2 (a checkpoint of an epoch boundary would have batch 0).
    assert state["epoch"] == 1 and state["batch"] > 0, (state["epoch"], state["batch"])
