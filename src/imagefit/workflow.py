"""Training as ``imagefit train``, sweeps and pipelines run it: ``fit``, then the post-run steps.

``fit`` trains and writes the run's records; what a finished run gets besides is composed
here, in order: the checks before a person trusts it (the test split's per-image predictions,
temperature scaling on val, the gallery of confident mistakes: :mod:`imagefit.evaluate.post_run`;
first, because the export carries the temperature), plots (``plots/``), the ONNX export when
the config asks for it, and the trackers' final report (MLflow logs the plots and the ONNX file, so it comes last). A step
that fails only logs: the trained run is the result, and each step can be redone by hand
(``imagefit report``, ``imagefit export``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from imagefit.config import Config
from imagefit.evaluate import plots
from imagefit.evaluate.post_run import trust_steps
from imagefit.export.onnx import export_after_training
from imagefit.fileio import write_json
from imagefit.runs import layout
from imagefit.runs.records import RunResult
from imagefit.track.base import Tracker
from imagefit.train import fit as fitting
from imagefit.train.hooks import EpochHook
from imagefit.train.lr_find import LRFindResult, find_lr
from imagefit.train.signals import graceful_stop

log = logging.getLogger(__name__)


@dataclass
class Finished:
    """A run that ``fit`` has finished, as the post-run steps see it."""

    result: RunResult
    config: Config
    tracker: Tracker

    @property
    def run_dir(self) -> Path:
        return self.result.run_dir


PostRunStep = Callable[[Finished], None]


def write_plots(run_dir: Path) -> None:
    """Write ``run_dir/plots/``; a plotting error only logs a warning (the run is complete)."""
    try:
        plots.plot_run(run_dir)
    except Exception as exc:  # noqa: BLE001 - pictures must never fail a finished run
        log.warning("%s: could not write plots (%s: %s)", run_dir, type(exc).__name__, exc)


def trust_step(done: Finished) -> None:
    if done.config.data.source != "folder" or done.result.metrics is None:
        # Rendered images (data.source=fractal) are pretraining data, with no files to
        # predict, calibrate on or show; a run with no test or val split has nothing to check.
        log.info("%s: no file-based test or val split: no trust checks", done.run_dir)
        return
    if done.config.data.task == "multilabel":
        # Temperature scaling and the gallery of confident mistakes are about one softmax
        # class per image; the per-image test scores feed the precision-recall plots.
        trust_steps(done.run_dir, ("test_predictions",))
        return
    trust_steps(done.run_dir)  # logs each failed check


def plots_step(done: Finished) -> None:
    write_plots(done.run_dir)


def export_step(done: Finished) -> None:
    export_after_training(done.config, done.run_dir)  # logs its own failure


def tracking_step(done: Finished) -> None:
    result = done.result
    done.tracker.log_final(result.metrics or {}, result.summary.to_dict(), result.run_dir)


POST_RUN: tuple[PostRunStep, ...] = (trust_step, plots_step, export_step, tracking_step)


def train(
    cfg: Config | None = None,
    *,
    resume: str | Path | None = None,
    on_epoch: EpochHook | None = None,
    steps: Sequence[PostRunStep] = POST_RUN,
) -> RunResult:
    """``fit`` with the enabled trackers following it, then ``steps`` on the finished run.

    Arguments as :func:`imagefit.train.fit.fit`. The steps run on the process that writes the
    run folder (rank 0 under torchrun); a signal while they run lets them finish, as it lets
    the final test evaluation finish.
    """
    tracker = Tracker()
    # The outer handlers cover the post-run steps; fit installs its own while it trains.
    with graceful_stop():
        try:
            result = fitting.fit(cfg, resume=resume, on_epoch=on_epoch, observers=[tracker])
            if result.main_process and result.config is not None:
                done = Finished(result, result.config, tracker)
                for step in steps:
                    step(done)
            return result
        finally:
            tracker.close()  # MLflow marks the run FINISHED, KILLED or FAILED by how it ended


def lr_find(
    cfg: Config, start: float, end: float, steps: int, out: Path | None = None
) -> tuple[LRFindResult, Path, Path]:
    """The learning-rate range test of ``cfg``, its curve (``lr_find.json``) and plot
    (``lr_find.png``) in ``out`` (default ``<output.dir>/lr_find``); nothing else is written."""
    result = find_lr(cfg, start, end, steps)
    folder = Path(out) if out is not None else Path(cfg.output.dir) / layout.LR_FIND
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / layout.LR_FIND_JSON, result.to_json())
    figure = plots.lr_find_figure(result.lrs, result.losses, result.smoothed, result.suggestion)
    plot = plots.save_figure(figure, folder / layout.LR_FIND_PLOT)
    return result, folder / layout.LR_FIND_JSON, plot
