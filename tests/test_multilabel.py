"""Multi-label classification end to end on mosaics of real photos: bit-set labels through the
split and loaders, sigmoid + BCE/ASL, thresholds tuned on val and read back by predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from imagefit.config import check_task, config_from_dict
from imagefit.data.labelfile import read_label_file
from imagefit.data.loaders import build_data
from imagefit.data.multilabel import decode, encode, multi_hot
from imagefit.errors import ConfigError, DataError
from imagefit.evaluate.multilabel import frequency_baseline_map, multilabel_metrics
from imagefit.evaluate.report import write_report
from imagefit.export.onnx import export_onnx
from imagefit.export.predict import label_scores, load_predictor, predict
from imagefit.train.losses import MultiLabelLoss
from imagefit.workflow import train

from helpers.mosaics import CLASSES, write_mosaics


def test_bit_sets_round_trip() -> None:
    code = encode([0, 2, 5])
    assert decode(code, 6) == [0, 2, 5]
    hot = multi_hot(torch.tensor([code, encode([1])]), 6)
    assert hot.tolist() == [[1, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0]]


def test_label_file_rows_with_several_labels(tmp_path: Path) -> None:
    root = write_mosaics(tmp_path / "m", count=8)
    table = read_label_file(root / "labels.csv", root, label_sep="|")
    assert table.classes == sorted(CLASSES)
    rows = (root / "labels.csv").read_text().splitlines()[1:]
    wanted = {
        root / line.split(",")[0]: encode(
            sorted(CLASSES).index(n) for n in line.split(",")[1].split("|")
        )
        for line in rows
    }
    assert dict(table.samples) == wanted
    (root / "bad.csv").write_text("path,label\nmosaic_000.png,daisy||roses\n")
    with pytest.raises(DataError, match=r"bad.csv:2: .*empty label in 'daisy\|\|roses'"):
        read_label_file(root / "bad.csv", root, label_sep="|")


def test_multilabel_config_refuses_what_needs_one_class(tmp_path: Path) -> None:
    base = {"data": {"task": "multilabel", "labels": "x.csv"}}
    assert config_from_dict(base).train.monitor == "val_map"
    check_task(config_from_dict(base))
    with pytest.raises(ConfigError, match="augment.cutmix=0.5 does not go with"):
        check_task(config_from_dict({**base, "augment": {"cutmix": 0.5}}))
    with pytest.raises(ConfigError, match="needs data.labels"):
        check_task(config_from_dict({"data": {"task": "multilabel"}}))
    # refused when the data is built, before any image is decoded
    cfg = config_from_dict({"data": {"task": "multilabel", "root": str(tmp_path)}})
    with pytest.raises(ConfigError, match="needs data.labels"):
        build_data(cfg, torch.device("cpu"))


def test_metrics_and_thresholds_on_known_scores() -> None:
    codes = np.array([encode([0]), encode([0, 1]), encode([1]), encode([])])
    logits = np.array([[3.0, -3.0], [2.0, 1.0], [-2.0, 0.5], [-1.0, -2.0]])
    found = multilabel_metrics(codes, logits, ["a", "b"], loss=0.1)
    assert found["map"] == pytest.approx(1.0)
    assert found["subset_accuracy"] == 1.0 and found["f1_micro"] == 1.0
    assert found["per_class"]["b"]["support"] == 2
    applied = multilabel_metrics(codes, logits, ["a", "b"], thresholds=[0.5, 0.9])
    assert applied["per_class"]["b"]["recall"] == 0.0  # 0.9 is above every score of b


@pytest.mark.parametrize("kind", ["bce", "asl"])
def test_losses_fall_for_the_right_logits(kind: str) -> None:
    loss = MultiLabelLoss(3, kind)
    targets = torch.tensor([encode([0, 2]), encode([1])])
    right = torch.tensor([[4.0, -4.0, 4.0], [-4.0, 4.0, -4.0]])
    assert loss(right, targets) < loss(-right, targets)


@pytest.mark.slow
def test_multilabel_end_to_end_on_photo_mosaics(tmp_path: Path) -> None:
    root = write_mosaics(tmp_path / "mosaics", count=120)
    cfg = config_from_dict(
        {
            "data": {
                "root": str(root),
                "labels": str(root / "labels.csv"),
                "task": "multilabel",
                "image_size": 32,
                "num_workers": 0,
                "val_fraction": 0.2,
                "test_fraction": 0.2,
            },
            "model": {"name": "simple_cnn"},
            "optim": {"name": "adam", "lr": 0.003},
            "train": {"epochs": 12, "batch_size": 16, "seed": 0, "threads": 1},
            "output": {"dir": str(tmp_path / "runs"), "name": "mosaics"},
        }
    )
    result = train(cfg)
    assert result.summary.monitor == "val_map"
    assert all(row["val_map"] is not None for row in result.history)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    split = json.loads((result.run_dir / "split.json").read_text())
    assert split["task"] == "multilabel"
    classes = split["classes"]
    train_codes = [label for _, label in split["splits"]["train"]]
    test_codes = [label for _, label in split["splits"]["test"]]
    baseline = frequency_baseline_map(train_codes, test_codes, len(classes))
    assert metrics["map"] > baseline + 0.1, (metrics["map"], baseline)
    assert set(metrics["per_class"]) == set(classes)

    best = torch.load(result.run_dir / "best.pt", weights_only=False)
    thresholds = best["meta"]["thresholds"]
    assert best["meta"]["task"] == "multilabel" and len(thresholds) == len(classes)
    assert metrics["thresholds"] == pytest.approx(thresholds)  # test used val's thresholds

    files = [root / path for path, _ in split["splits"]["test"]]
    predicted = predict(result.run_dir, files)
    for row in predicted:
        scores = {entry["label"]: entry["probability"] for entry in row["top_k"]}
        above = {n for n, t in zip(classes, thresholds, strict=True) if scores[n] >= t}
        assert set(row["labels"]) == above
    hits = [
        set(row["labels"]) == {classes[k] for k in decode(code, len(classes))}
        for row, code in zip(predicted, test_codes, strict=True)
    ]
    assert np.mean(hits) == pytest.approx(metrics["subset_accuracy"])

    # plots and the report show AP bars and PR curves instead of a confusion matrix
    plots = sorted(p.name for p in (result.run_dir / "plots").iterdir())
    assert "per_class_ap.png" in plots and "precision_recall.png" in plots
    assert not any(name.startswith("confusion") for name in plots)
    page = write_report([result.run_dir], tmp_path / "report.html").read_text()
    assert "Multi-label test metrics" in page and "per class ap" in page

    # the ONNX file carries the task and the thresholds; predict and serving read them
    onnx = tmp_path / "model.onnx"
    export_onnx(result.run_dir, onnx, batch_sizes=(1,))
    from_onnx = predict(onnx, files[:8])
    assert [r["labels"] for r in from_onnx] == [r["labels"] for r in predicted[:8]]
    served = load_predictor(onnx)
    assert served.meta["task"] == "multilabel"
    assert served.meta["thresholds"] == pytest.approx(thresholds)
    answer = label_scores(np.array([9.0, -9.0, 9.0]), served.meta, top_k=3)
    assert answer["labels"] == [classes[0], classes[2]]
