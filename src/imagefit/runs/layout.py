"""Every file name of a run folder, spelled here and nowhere else.

``runs/<name>/`` holds, written in this order: ``config.yaml`` (first, before any data is
read), ``environment.json``, ``split.json``, ``skipped.json`` (only when files were left out),
``last.pt`` / ``best.pt`` / ``epoch_NNN.pt`` and ``history.json`` + ``history.csv`` after each
epoch, then ``metrics.json`` and ``summary.json`` when training ends; the post-run steps add
``plots/``, ``model.onnx`` (+ ``model.int8.onnx``) with ``export.json``, and the trackers'
``mlflow.json`` and ``tensorboard/``. A sweep adds ``trial.json``. The names are those of the
first versions, so older run folders still load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.yaml"
ENVIRONMENT = "environment.json"
SPLIT = "split.json"
SKIPPED = "skipped.json"
HISTORY = "history.json"
HISTORY_CSV = "history.csv"
METRICS = "metrics.json"
SUMMARY = "summary.json"
LAST = "last.pt"
BEST = "best.pt"
EPOCH_CHECKPOINT = "epoch_{epoch:03d}.pt"
PLOTS = "plots"
ONNX = "model.onnx"
INT8_SUFFIX = ".int8.onnx"  # <fp32 stem>.int8.onnx
REJECTED_SUFFIX = ".rejected.onnx"  # an export that failed verification, kept for inspection
EXPORT = "export.json"
MLFLOW = "mlflow.json"  # run folder -> its MLflow run, so a resumed run continues it
TENSORBOARD = "tensorboard"
TRIAL = "trial.json"  # a sweep's record of the trial: overrides, status, error
REPORT = "report.html"  # `imagefit report RUN_DIR` (a sweep folder has one too)
PREPROCESS_SUFFIX = ".preprocess.onnx"  # <fp32 stem>.preprocess.onnx: uint8 RGB of any size in
TEST_PREDICTIONS = "test_predictions.npz"  # per-image logits of the test split
CALIBRATION = "calibration.json"  # the fitted temperature, ECE and NLL before and after
LEDGER = "ledger.json"  # content hashes of the split's files; test evaluations counted
GALLERY = "gallery"  # confident mistakes and confused pairs, with Grad-CAM overlays
RESUME = "resume.json"  # each resume: when, at which epoch, the config.yaml edits it applied
GALLERY_JSON = "gallery.json"  # in GALLERY: the entries the report shows
VS_BASELINE = "vs_baseline.json"  # a sweep folder's variants against its baseline variant
# `imagefit lr-find`: its folder (under output.dir unless --out) holds only these two
LR_FIND = "lr_find"
LR_FIND_JSON = "lr_find.json"  # the ramp's lrs and losses, and the suggested lr
LR_FIND_PLOT = "lr_find.png"  # loss against lr (log scale), the suggestion marked


def epoch_checkpoint(epoch: int) -> str:
    """``epoch_NNN.pt``: the periodic checkpoint after ``epoch`` epochs (``train.checkpoint_every``)."""
    return EPOCH_CHECKPOINT.format(epoch=epoch)


def int8_name(fp32: Path) -> Path:
    return fp32.with_name(fp32.stem + INT8_SUFFIX)


def rejected_name(onnx: Path) -> Path:
    return onnx.with_name(onnx.stem + REJECTED_SUFFIX)


def preprocess_name(fp32: Path) -> Path:
    return fp32.with_name(fp32.stem + PREPROCESS_SUFFIX)


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run folder."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # a str is welcome too

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    def stored(self, path: str | Path) -> str:
        """``path`` as a record of this run stores it: relative to the run folder when inside
        it (so the record stays true when the folder moves), else absolute."""
        absolute = Path(path).absolute()
        try:
            return absolute.relative_to(self.root.absolute()).as_posix()
        except ValueError:
            return str(absolute)

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def environment(self) -> Path:
        return self.root / ENVIRONMENT

    @property
    def split(self) -> Path:
        return self.root / SPLIT

    @property
    def skipped(self) -> Path:
        return self.root / SKIPPED

    @property
    def history(self) -> Path:
        return self.root / HISTORY

    @property
    def history_csv(self) -> Path:
        return self.root / HISTORY_CSV

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY

    @property
    def last(self) -> Path:
        return self.root / LAST

    @property
    def best(self) -> Path:
        return self.root / BEST

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.root / epoch_checkpoint(epoch)

    @property
    def plots(self) -> Path:
        return self.root / PLOTS

    @property
    def onnx(self) -> Path:
        return self.root / ONNX

    @property
    def int8_onnx(self) -> Path:
        return int8_name(self.onnx)

    @property
    def export(self) -> Path:
        return self.root / EXPORT

    @property
    def mlflow(self) -> Path:
        return self.root / MLFLOW

    @property
    def tensorboard(self) -> Path:
        return self.root / TENSORBOARD

    @property
    def trial(self) -> Path:
        return self.root / TRIAL

    @property
    def report(self) -> Path:
        return self.root / REPORT

    @property
    def test_predictions(self) -> Path:
        return self.root / TEST_PREDICTIONS

    @property
    def calibration(self) -> Path:
        return self.root / CALIBRATION

    @property
    def ledger(self) -> Path:
        return self.root / LEDGER

    @property
    def gallery(self) -> Path:
        return self.root / GALLERY

    @property
    def resume(self) -> Path:
        return self.root / RESUME
