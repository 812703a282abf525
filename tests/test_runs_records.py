"""runs.records: typed records that read and write the JSON of older run folders unchanged."""

from __future__ import annotations

import numpy as np

from imagefit.evaluate.metrics import compute_metrics
from imagefit.runs.records import HistoryRow, Metrics, Summary

# summary.json as the first versions wrote it, key order included.
OLD_SUMMARY = {
    "name": "run",
    "model": "simple_cnn",
    "init": {"init": "scratch"},
    "params_total": 62006,
    "params_trainable": 62006,
    "epochs_run": 2,
    "best_epoch": 2,
    "monitor": "val_loss",
    "best_monitor": 0.88,
    "best_val_accuracy": 0.72,
    "test_accuracy": 0.68,
    "wall_time_s": 0.37,
    "train_time_s": 0.24,
    "train_images_per_s": 10482.2,
    "early_stopped": False,
    "skipped_files": 0,
    "status": "finished",
}


def test_summary_round_trips_and_keeps_unknown_keys() -> None:
    summary = Summary.from_dict(OLD_SUMMARY)
    assert summary.best_epoch == 2 and summary.status == "finished"
    assert list(summary.to_dict().items()) == list(OLD_SUMMARY.items())
    newer = Summary.from_dict({**OLD_SUMMARY, "energy_kwh": 0.1})
    assert newer.extra == {"energy_kwh": 0.1} and newer.to_dict()["energy_kwh"] == 0.1
    partial = Summary.from_dict({"name": "x"})  # an older or damaged file: the rest is None
    assert partial.name == "x" and partial.best_epoch is None and partial.status is None


def test_finished_summary_derives_its_numbers_in_one_place() -> None:
    history = [
        HistoryRow(epoch=1, val_accuracy=0.5).to_dict(),
        HistoryRow(epoch=2, val_accuracy=0.75).to_dict(),
        HistoryRow(epoch=3, val_accuracy=0.7).to_dict(),
    ]
    summary = Summary.finished(
        name="r",
        model="simple_cnn",
        init=None,
        params=(100, 10),
        history=history,
        monitor="val_loss",
        best_epoch=2,
        best_monitor=0.4,
        metrics={"accuracy": 0.8},
        wall_time_s=3.0,
        train_time_s=2.0,
        train_images=300,
        early_stopped=True,
        skipped_files=1,
    )
    assert summary.epochs_run == 3 and summary.best_val_accuracy == 0.75
    assert summary.test_accuracy == 0.8 and summary.train_images_per_s == 150.0
    assert (summary.params_total, summary.params_trainable) == (100, 10)
    assert summary.status == "finished" and list(summary.to_dict()) == list(OLD_SUMMARY)
    untimed = Summary.finished(
        **{**_args(summary), "metrics": None, "train_time_s": 0.0, "history": []}
    )
    assert untimed.train_images_per_s is None and untimed.test_accuracy is None
    assert untimed.best_val_accuracy is None and untimed.epochs_run == 0


def _args(summary: Summary) -> dict:
    return {
        "name": summary.name,
        "model": summary.model,
        "init": summary.init,
        "params": (summary.params_total, summary.params_trainable),
        "history": [],
        "monitor": summary.monitor,
        "best_epoch": summary.best_epoch,
        "best_monitor": summary.best_monitor,
        "metrics": None,
        "wall_time_s": 1.0,
        "train_time_s": 0.0,
        "train_images": 10,
        "early_stopped": False,
        "skipped_files": 0,
    }


def test_history_row_has_the_columns_of_older_runs() -> None:
    row = HistoryRow(epoch=1, train_loss=2.0, lr=0.1, phase="full").to_dict()
    assert list(row) == [
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "val_top5_accuracy",
        "val_f1_macro",
        "lr",
        "phase",
        "time_s",
    ]
    assert HistoryRow.from_dict(row).to_dict() == row


def test_metrics_record_holds_what_compute_metrics_writes() -> None:
    logits = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]
    written = {"split": "test", **compute_metrics(np.array([0, 1, 2, 2]), logits, list("abc"), 0.5)}
    metrics = Metrics.from_dict(written)
    assert metrics.extra == {}  # every key compute_metrics writes has a field
    assert metrics.accuracy == 0.75 and metrics.classes == ["a", "b", "c"]
    assert list(metrics.to_dict().items()) == list(written.items())
