"""workflow.train: fit writes the records; plots, export and tracking are post-run steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imagefit import workflow
from imagefit.config import Config
from imagefit.train.fit import fit

from conftest import tiny_config


class Recorder:
    """A RunObserver and a post-run step that note what they were told, in order."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def start(self, cfg: Config, run_dir: Path) -> None:
        self.events.append(("start", run_dir.name, (run_dir / "split.json").is_file()))

    def log_epoch(self, row: dict[str, Any]) -> None:
        self.events.append(("epoch", row["epoch"]))

    def step(self, done: workflow.Finished) -> None:
        self.events.append(("step", done.result.summary.status, done.config.output.name))


def test_fit_alone_writes_records_but_no_post_run_files(pattern_root: Path, tmp_path: Path) -> None:
    observer = Recorder()
    result = fit(tiny_config(pattern_root, tmp_path), observers=[observer])
    run = result.run_dir
    assert (run / "summary.json").is_file() and (run / "metrics.json").is_file()
    assert not (run / "plots").exists()
    assert observer.events == [("start", "run", True), ("epoch", 1), ("epoch", 2)]
    assert result.config is not None and result.config.output.name == "run" and result.main_process


def test_train_runs_the_post_run_steps_in_order(pattern_root: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    steps = (recorder.step, workflow.plots_step)
    result = workflow.train(tiny_config(pattern_root, tmp_path), steps=steps)
    assert recorder.events == [("step", "finished", "run")]
    assert (result.run_dir / "plots" / "training_curves.png").is_file()
    assert (
        workflow.trust_step,  # first: the export carries the fitted temperature
        workflow.plots_step,
        workflow.export_step,
        workflow.tracking_step,  # last: MLflow logs the plots and the ONNX file
    ) == workflow.POST_RUN
