"""A run's lifecycle is honest: an untrained run is not a model, a resumed run runs what its
folder says, a moved run folder still works, a dataset without a test split says what it
reports on, and ``best.pt`` holds what evaluation needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from typer.testing import CliRunner

from imagefit.cli import app
from imagefit.errors import Interrupted, UntrainedRunError
from imagefit.evaluate.report import write_report
from imagefit.export.onnx import export_onnx
from imagefit.export.predict import predict
from imagefit.runs.layout import RunLayout
from imagefit.serve.model import load_served_model
from imagefit.train.fit import fit

from conftest import interrupt_after, tiny_config

pytestmark = pytest.mark.faults
runner = CliRunner()
SRC = Path(__file__).resolve().parents[2] / "src"


def _untrained_run(root: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run stopped before its first epoch: config, split and an epoch-0 last.pt."""
    interrupt_after(monkeypatch, 0)
    with pytest.raises(Interrupted):
        fit(tiny_config(root, out, data={"image_size": 32}))  # 32 px: SimpleCNN exports
    monkeypatch.undo()
    run = out / "run"
    assert RunLayout(run).last.is_file() and not RunLayout(run).best.is_file()
    return run


def test_a_run_without_a_finished_epoch_is_refused_by_eval_export_predict_serve_report(
    photo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _untrained_run(photo_root, tmp_path / "runs", monkeypatch)
    image = next((photo_root / "daisy").iterdir())
    for command in (
        ["eval", str(run)],
        ["export", str(run), "--onnx", "--no-verify"],
        ["predict", str(run), str(image)],
        ["report", str(run)],
    ):
        result = runner.invoke(app, command)
        assert isinstance(result.exception, UntrainedRunError), (command, result.output)
        message = str(result.exception)
        assert "no finished epoch" in message and f"imagefit train --resume {run}" in message
    assert not RunLayout(run).onnx.exists() and not RunLayout(run).report.exists()
    # the real command: one line on stderr, exit code 2, no traceback
    done = subprocess.run(
        [sys.executable, "-m", "imagefit", "eval", str(run)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "run run has no finished epoch" in lines[0], done.stderr


def test_allow_untrained_warns_and_labels_every_output(
    photo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _untrained_run(photo_root, tmp_path / "runs", monkeypatch)
    image = next((photo_root / "daisy").iterdir())
    result = runner.invoke(app, ["eval", str(run), "--split", "val", "--allow-untrained", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout[result.stdout.index("{") :])["trained"] is False
    exported = export_onnx(run, verify=False, allow_untrained=True)
    assert exported["trained"] is False
    assert json.loads(RunLayout(run).export.read_text())["trained"] is False
    props = {p.key: p.value for p in onnx.load(str(RunLayout(run).onnx)).metadata_props}
    assert props["imagefit.trained"] == "false"
    # the exported file carries the label: serving and predicting from it refuse too
    with pytest.raises(UntrainedRunError):
        load_served_model(run)
    with pytest.raises(UntrainedRunError):
        predict(RunLayout(run).onnx, [image])
    served = load_served_model(run, allow_untrained=True)
    assert served.describe()["trained"] is False
    answers = predict(RunLayout(run).onnx, [image], allow_untrained=True)
    assert answers[0]["trained"] is False
    page = write_report([run], tmp_path / "report.html", allow_untrained=True)
    assert "UNTRAINED" in page.read_text()
    cli = runner.invoke(app, ["serve", str(run), "--port", "1"])
    assert isinstance(cli.exception, UntrainedRunError)


def test_a_trained_run_is_not_labelled_untrained(photo_root: Path, tmp_path: Path) -> None:
    cfg = tiny_config(photo_root, tmp_path / "runs", data={"image_size": 32}, train={"epochs": 1})
    run = fit(cfg).run_dir
    exported = export_onnx(run, verify=False)
    assert exported["trained"] is True
    props = {p.key: p.value for p in onnx.load(str(RunLayout(run).onnx)).metadata_props}
    assert props["imagefit.trained"] == "true"
    assert "trained" not in predict(run, [next((photo_root / "roses").iterdir())])[0]
    assert torch.load(RunLayout(run).best, weights_only=True)["meta"]["classes"]
