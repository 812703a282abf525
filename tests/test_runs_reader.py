"""runs.reader: the one reader of run folders; what is missing or damaged is named, not fatal."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from imagefit.runs.reader import load_run, read_history, read_json, read_summary


def test_a_complete_folder_reads_into_typed_records(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("model:\n  name: simple_cnn\n")
    (tmp_path / "history.json").write_text(json.dumps([{"epoch": 1, "val_accuracy": 0.5}]))
    (tmp_path / "metrics.json").write_text(json.dumps({"accuracy": 0.6, "classes": ["a", 1]}))
    (tmp_path / "summary.json").write_text(json.dumps({"name": "named", "status": "finished"}))
    record = load_run(tmp_path)
    assert record.missing == [] and record.config == {"model": {"name": "simple_cnn"}}
    assert record.name == "named" and record.finished and record.summary.best_epoch is None
    assert record.classes == ["a", "1"] and record.history[0]["val_accuracy"] == 0.5


def test_missing_and_unreadable_files_are_listed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "summary.json").write_text("{not json")
    (tmp_path / "metrics.json").write_text("[1, 2]")  # JSON, but not a metrics record
    with caplog.at_level(logging.WARNING, logger="imagefit.runs.reader"):
        record = load_run(tmp_path)
    assert record.missing == ["config.yaml", "history.json", "metrics.json", "summary.json"]
    assert "summary.json: unreadable" in caplog.text
    assert record.name == tmp_path.name and not record.finished and record.classes == []
    assert read_summary(tmp_path) is None and read_json(tmp_path / "summary.json") is None
    assert load_run(tmp_path / "absent").missing[0] == "config.yaml"


def test_history_csv_is_read_when_json_is_missing(tmp_path: Path) -> None:
    (tmp_path / "history.csv").write_text(
        "epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr,phase\n"
        "1,1.5,0.4,1.6,0.35,0.01,full\n2,1.0,0.6,,0.5,0.005,full\n"
    )
    history = read_history(tmp_path)
    assert history is not None and history[1]["val_accuracy"] == 0.5
    assert history[1]["val_loss"] is None and history[0]["phase"] == "full"
    assert "history.json" not in load_run(tmp_path).missing
