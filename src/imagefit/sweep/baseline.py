"""The HOG + linear SVM baseline as a run folder, so it sits in the same tables as the CNNs.

It uses the config's own split (``load_manifest``: the same files a CNN run with this data
config trains and tests on) and writes what a training run writes that applies to it:
``config.yaml``, ``split.json``, ``environment.json``, ``metrics.json``, ``summary.json`` and
``plots/``. There is no history and no checkpoint: the SVM is fitted once, in seconds.
"""

from __future__ import annotations

import logging

import torch

from imagefit.config import Config
from imagefit.data.loaders import load_manifest
from imagefit.errors import DataError
from imagefit.runs import writer
from imagefit.runs.environment import environment
from imagefit.runs.layout import RunLayout
from imagefit.runs.records import RunResult, Summary
from imagefit.workflow import write_plots

log = logging.getLogger(__name__)


def run_hog_svm_baseline(cfg: Config) -> RunResult:
    """Fit HOG + linear SVM on ``cfg``'s train split (images at ``data.image_size``), score its
    test split, and write the run folder ``output.dir/output.name``."""
    from imagefit.baselines.hog_svm import run_hog_svm_on_files

    manifest = load_manifest(cfg)
    train, test = manifest.splits.get("train") or [], manifest.splits.get("test") or []
    if not test:
        raise DataError(
            f"{manifest.root}: no test split to score the HOG+SVM baseline on "
            "(set data.test_fraction above 0)"
        )
    run_dir = writer.create_run_dir(cfg)
    manifest.save(RunLayout(run_dir).split)
    writer.write_environment(run_dir, environment(torch.device("cpu"), cfg.train.seed))
    log.info(
        "HOG+SVM on %s: %d train, %d test images at %d px",
        manifest.root,
        len(train),
        len(test),
        cfg.data.image_size,
    )
    try:
        result = run_hog_svm_on_files(
            train, test, manifest.classes, cfg.data.image_size, seed=cfg.train.seed
        )
    except ValueError as exc:  # too few classes, no readable test image: the data's fault
        raise DataError(f"{manifest.root}: HOG+SVM baseline: {exc}") from None
    wall, params = result.pop("wall_time_s"), result.pop("params_total")
    skipped = result.pop("skipped_files", 0)
    metrics = {"split": "test", **result}
    writer.write_metrics(run_dir, metrics)
    summary = Summary.finished(
        name=run_dir.name,
        model="hog_svm",
        init=None,
        params=(params, params),
        history=[],
        monitor=None,
        best_epoch=None,
        best_monitor=None,
        metrics=metrics,
        wall_time_s=wall,
        # Features, fit and test prediction together: the honest throughput of the baseline.
        train_time_s=wall,
        train_images=len(train),
        early_stopped=False,
        skipped_files=skipped,
    )
    writer.write_history(run_dir, [])  # no epochs: an honest empty history, not a missing one
    writer.write_summary(run_dir, summary)
    write_plots(run_dir)
    log.info("HOG+SVM: test accuracy %.4f in %.1f s", metrics["accuracy"], wall)
    return RunResult(run_dir, [], metrics, summary, cfg)
