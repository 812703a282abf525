"""The records and checkpoints of a run folder written by imagefit 0.1.0
(``tests/data/legacy_run/runs/legacy``) read back through the typed records unchanged.

Eval, predict, export and --resume on it are tested end to end in ``test_legacy_run.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagefit.models.trained import load_trained
from imagefit.runs.checkpoint import load_checkpoint
from imagefit.runs.reader import load_run
from imagefit.runs.records import HistoryRow, Metrics, Summary

LEGACY = Path(__file__).resolve().parent / "data" / "legacy_run" / "runs" / "legacy"
pytestmark = pytest.mark.skipif(not LEGACY.is_dir(), reason=f"no legacy run folder at {LEGACY}")


def _json(name: str) -> object:
    return json.loads((LEGACY / name).read_text(encoding="utf-8"))


def test_records_read_back_unchanged() -> None:
    record = load_run(LEGACY)
    assert record.missing == []
    assert record.summary.to_dict() == Summary.from_dict(_json("summary.json")).to_dict()
    assert record.summary.to_dict() == _json("summary.json")  # no key lost or renamed
    assert Metrics.from_dict(record.metrics).to_dict() == _json("metrics.json")
    assert [HistoryRow.from_dict(r).to_dict() for r in record.history] == _json("history.json")
    assert record.summary.status == "finished" and record.classes


def test_checkpoints_load_and_predict(tmp_path: Path) -> None:
    state = load_checkpoint(LEGACY / "last.pt")
    assert {"model", "optimizer", "config", "epoch", "rng", "meta", "classes"} <= set(state)
    model, meta, config = load_trained(LEGACY)
    assert meta["classes"] == state["classes"] and config["model"]["name"] == meta["arch"]
    from imagefit.export.predict import predict

    size = meta["image_size"]
    image = tmp_path / "x.png"
    Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(image)
    [result] = predict(LEGACY, [image], top_k=1)
    assert result["label"] in meta["classes"]
