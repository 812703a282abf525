"""runs.layout: the run folder's file names, kept from the first versions."""

from __future__ import annotations

from pathlib import Path

from imagefit.runs import layout
from imagefit.runs.layout import RunLayout


def test_paths_keep_the_names_older_run_folders_have(tmp_path: Path) -> None:
    run = RunLayout(str(tmp_path))  # type: ignore[arg-type]  # a str is taken as a path
    assert run.root == tmp_path
    expected = {
        run.config: "config.yaml",
        run.environment: "environment.json",
        run.split: "split.json",
        run.skipped: "skipped.json",
        run.history: "history.json",
        run.history_csv: "history.csv",
        run.metrics: "metrics.json",
        run.summary: "summary.json",
        run.last: "last.pt",
        run.best: "best.pt",
        run.plots: "plots",
        run.onnx: "model.onnx",
        run.int8_onnx: "model.int8.onnx",
        run.export: "export.json",
        run.mlflow: "mlflow.json",
        run.tensorboard: "tensorboard",
        run.trial: "trial.json",
        run.report: "report.html",
    }
    for path, name in expected.items():
        assert path == tmp_path / name
    assert run.epoch_checkpoint(2) == tmp_path / "epoch_002.pt"
    assert run / "other.txt" == tmp_path / "other.txt"


def test_derived_onnx_names() -> None:
    assert layout.int8_name(Path("out/m.onnx")) == Path("out/m.int8.onnx")
    assert layout.rejected_name(Path("out/model.onnx")) == Path("out/model.rejected.onnx")
    assert layout.epoch_checkpoint(12) == "epoch_012.pt"
