"""Run folders written by imagefit 0.1.0 keep working: eval, predict, export and --resume.

``tests/data/legacy_run`` holds a tiny flower dataset and two run folders made by that version at 32 px
(``legacy``: finished; ``interrupted``: stopped after epoch 1 of 2). The dataset lived at
``/tmp/legacy/data`` when they were made; each test copies everything and points the run at the
copy, as a user does whose dataset moved.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from imagefit.cli import app

FIXTURE = Path(__file__).parent / "data" / "legacy_run"
runner = CliRunner()


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE, tmp_path / "legacy_run")
    root = tmp_path / "legacy_run"
    data = str(root / "data")
    for run in (root / "runs").iterdir():
        split = json.loads((run / "split.json").read_text())
        split["root"] = data
        (run / "split.json").write_text(json.dumps(split))
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["data"]["root"] = data
        cfg["output"]["dir"] = str(root / "runs")
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_eval_reproduces_the_recorded_test_metrics(legacy: Path) -> None:
    run = legacy / "runs" / "legacy"
    out = json.loads(invoke("eval", str(run), "--json"))
    recorded = json.loads((run / "metrics.json").read_text())
    assert out["accuracy"] == pytest.approx(recorded["accuracy"])
    assert out["loss"] == pytest.approx(recorded["loss"], rel=1e-5)


def test_predict_and_export(legacy: Path) -> None:
    run = legacy / "runs" / "legacy"
    images = sorted((legacy / "data" / "roses").iterdir())[:3]
    out = json.loads(invoke("predict", str(run), *map(str, images), "--json"))
    assert [Path(row["file"]).name for row in out] == [p.name for p in images]
    assert all(row["label"] in ("daisy", "roses") for row in out)
    assert all(sum(t["probability"] for t in row["top_k"]) == pytest.approx(1) for row in out)
    invoke("export", str(run), "--onnx")
    report = json.loads((run / "export.json").read_text())
    assert report["verification"]["passed"] is True


def test_resume_finishes_the_interrupted_run(legacy: Path) -> None:
    run = legacy / "runs" / "interrupted"
    assert len(json.loads((run / "history.json").read_text())) == 1
    invoke("train", "--resume", str(run))
    history = json.loads((run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 2
