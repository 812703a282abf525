"""Timings on a shared, noisy CPU: INT8 latency is reported as medians over rounds with their
spread, so one slow moment neither makes nor breaks the speedup."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from imagefit.cli.export import export_rows
from imagefit.export.quantize import latency_report

pytestmark = pytest.mark.faults


class _Clock:
    """A fake clock: each ``session.run`` takes what the running model's plan says."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Session:
    def __init__(self, clock: _Clock, plan):
        self.clock, self.plan, self.calls = clock, plan, 0

    def get_inputs(self):
        return [SimpleNamespace(name="input")]

    def run(self, outputs, feed):
        self.clock.now += self.plan(self.calls) / 1000  # ms -> s
        self.calls += 1


def test_a_burst_of_background_load_moves_neither_medians_nor_the_speedup() -> None:
    clock = _Clock()
    warmup, runs = 3, 10
    # fp32 takes 8 ms and int8 2 ms, except during a burst that slows whatever runs then by
    # 10x: the whole of int8's second round. A single timing taken then says 0.4x, not 4x.
    fp32 = _Session(clock, lambda i: 8.0)
    int8 = _Session(clock, lambda i: 20.0 if warmup + runs <= i < warmup + 2 * runs else 2.0)
    report = latency_report(
        {"fp32": fp32, "int8": int8}, np.zeros((1, 3, 8, 8)), rounds=5, runs=runs, clock=clock
    )
    assert report["latency_ms_batch1"] == pytest.approx({"fp32": 8.0, "int8": 2.0})
    spread = report["latency_batch1"]
    assert spread["int8"]["max"] == pytest.approx(20.0) and spread["int8"]["calls"] == 50
    assert spread["int8"]["q1"] == pytest.approx(2.0) and spread["int8"]["q3"] == pytest.approx(2.0)
    assert spread["rounds"] == 5 and spread["runs_per_round"] == runs
    assert report["speedup_batch1"] == pytest.approx(4.0)
    assert report["speedup_batch1_range"] == pytest.approx([0.4, 4.0])
    # The CLI table shows the median and the spread, not one figure.
    q = {
        "onnx": "m.int8.onnx",
        "size_bytes": 1,
        "fp32_size_bytes": 4,
        "eval_split": "test",
        "eval_images": 10,
        "int8_accuracy": 0.9,
        "fp32_accuracy": 0.9,
        **report,
    }
    rows = dict(
        export_rows({"onnx": "m.onnx", "opset": 17, "exporter": "x", "size_bytes": 4, "int8": q})
    )
    assert rows["INT8 latency ms (batch 1), median [IQR] (min-max)"] == (
        "2.000 [2.000-2.000] (2.000-20.000)"
    )
    assert rows["INT8 speedup (batch 1), median (range)"] == "4.00x (0.40-4.00x) over 5 rounds"


def test_progress_lines_when_stderr_is_a_file(tmp_path) -> None:
    """A real ``imagefit train`` with stderr redirected to a file: no bar, but log lines."""
    import os
    import subprocess
    import sys

    import yaml

    from conftest import write_pattern_folder

    root = write_pattern_folder(tmp_path / "patterns", per_class=24)
    tree = {
        "data": {"root": str(root), "image_size": 16, "num_workers": 0},
        "model": {"name": "simple_cnn"},
        "train": {"epochs": 2, "batch_size": 4, "seed": 0, "threads": 1},
        "output": {"dir": str(tmp_path / "runs"), "name": "run"},
    }
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tree))
    log = tmp_path / "stderr.log"
    env = {**os.environ, "IMAGEFIT_PROGRESS_EVERY_S": "0.000001"}  # every batch
    with open(log, "w") as stderr:
        done = subprocess.run(
            [sys.executable, "-m", "imagefit", "train", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            timeout=300,
        )
    text = log.read_text()
    assert done.returncode == 0, text
    lines = [line for line in text.splitlines() if "images/s, loss" in line]
    batches = len(lines) // 2
    assert batches > 3 and len(lines) == 2 * batches  # every batch of both epochs
    assert f"epoch 1: batch 1/{batches} (" in lines[0]
    assert f"epoch 2: batch {batches}/{batches} (100%)" in lines[-1]
    assert "\r" not in text  # no progress bar drawn into the file
