"""Label files: rows checked up front with file:line errors; the same images as folders or as
a file give the same classes, split and batches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from imagefit.data.labelfile import read_label_file
from imagefit.data.loaders import build_data, load_manifest
from imagefit.errors import DataError

from conftest import tiny_config


def _rows(root: Path) -> list[dict[str, str]]:
    """One row per image of a class-folder tree, paths relative to ``root``."""
    return [
        {"path": p.relative_to(root).as_posix(), "label": p.parent.name}
        for p in sorted(root.rglob("*.jpg"))
    ]


def _csv(path: Path, rows: list[dict[str, str]]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _labels_config(root: Path, labels: Path, tmp_path: Path, **data: object):
    return tiny_config(
        root, tmp_path / "runs", data={"labels": str(labels), "cache": "never", **data}
    )


def test_folder_and_label_file_give_the_same_classes_split_and_batches(
    photo_root: Path, tmp_path: Path
) -> None:
    # The label file lists the rows shuffled and under other class names' order: the class
    # index and the split must not depend on the file's row order.
    rows = _rows(photo_root)[::-1]
    labels = _csv(tmp_path / "labels.csv", rows)
    folder_cfg = tiny_config(photo_root, tmp_path / "runs", data={"cache": "never"})
    file_cfg = _labels_config(photo_root, labels, tmp_path)

    by_folder, by_file = load_manifest(folder_cfg), load_manifest(file_cfg)
    assert by_file.classes == by_folder.classes == ["daisy", "roses"]
    assert by_file.splits == by_folder.splits
    assert by_file.to_json()["splits"] == by_folder.to_json()["splits"]

    device = torch.device("cpu")
    folder_batch = next(build_data(folder_cfg, device).train.epoch(0))
    file_batch = next(build_data(file_cfg, device).train.epoch(0))
    assert torch.equal(folder_batch[0], file_batch[0])
    assert torch.equal(folder_batch[1], file_batch[1])


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_jsonl_and_parquet_read_as_csv(photo_root: Path, tmp_path: Path, suffix: str) -> None:
    rows = _rows(photo_root)
    frame = pd.DataFrame(rows)
    target = tmp_path / f"labels{suffix}"
    if suffix == ".jsonl":
        frame.to_json(target, orient="records", lines=True)
    else:
        frame.to_parquet(target)
    table = read_label_file(target, photo_root)
    reference = read_label_file(_csv(tmp_path / "labels.csv", rows), photo_root)
    assert table.classes == reference.classes
    assert table.samples == reference.samples


def test_split_column_fixes_the_split_and_columns_are_configurable(
    photo_root: Path, tmp_path: Path
) -> None:
    rows = _rows(photo_root)
    cells = []
    for i, row in enumerate(rows):
        split = "train" if i % 4 < 2 else ("val" if i % 4 == 2 else "test")
        cells.append({"file": row["path"], "class": row["label"], "part": split})
    labels = _csv(tmp_path / "labels.csv", cells)
    cfg = _labels_config(
        photo_root,
        labels,
        tmp_path,
        path_column="file",
        label_column="class",
        split_column="part",
    )
    manifest = load_manifest(cfg)
    assert manifest.layout == "labels"
    wanted = {
        name: sorted(str(photo_root / c["file"]) for c in cells if c["part"] == name)
        for name in ("train", "val", "test")
    }
    assert {name: sorted(str(p) for p, _ in items) for name, items in manifest.splits.items()} == (
        wanted
    )
    manifest.save(tmp_path / "split.json")  # split.json as every run writes it
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved["counts"] == {name: len(paths) for name, paths in wanted.items()}


BAD_ROWS = [
    ({"path": "daisy/nowhere.jpg", "label": "daisy"}, "file not found"),
    ({"path": "{first}", "label": ""}, "empty label"),
    ({"path": "{first}", "label": "daisy"}, "labels.csv:2)"),
    ({"path": "../outside.jpg", "label": "daisy"}, "outside data.root"),
    ({"path": "{abs_outside}", "label": "daisy"}, "outside data.root"),
    ({"path": "{second}", "label": "daisy", "split": "holdout"}, "is not one of train, val"),
    ({"path": "{second}", "label": "tulips", "split": "val"}, "'tulips' (val) has no train"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_ROWS)
def test_a_bad_row_is_an_error_naming_the_file_and_line(
    photo_root: Path, tmp_path: Path, bad: dict[str, str], message: str
) -> None:
    outside = tmp_path / "outside.jpg"
    shutil.copy(next(photo_root.rglob("*.jpg")), outside)
    rows = _rows(photo_root)
    for row in rows:
        row["split"] = "train"
    first, second = rows[0]["path"], rows[1]["path"]
    rows = rows[:1] + rows[2:]  # the second image is free for the bad row
    cell = {k: v.format(first=first, second=second, abs_outside=outside) for k, v in bad.items()}
    cell.setdefault("split", "train")
    rows.append(cell)
    labels = _csv(tmp_path / "labels.csv", rows)
    line = len(rows) + 1  # the header is line 1
    with pytest.raises(DataError) as caught:
        read_label_file(labels, photo_root)
    assert f"labels.csv:{line}: " in str(caught.value)
    assert message in str(caught.value)


def test_bad_rows_are_counted_skips_with_on_bad_skip(photo_root: Path, tmp_path: Path) -> None:
    rows = _rows(photo_root)
    rows.append({"path": "daisy/gone.jpg", "label": "daisy"})
    rows.append({"path": rows[0]["path"], "label": "roses"})
    labels = _csv(tmp_path / "labels.csv", rows)
    with pytest.raises(DataError, match=r"and 1 more bad rows"):
        read_label_file(labels, photo_root)

    cfg = _labels_config(photo_root, labels, tmp_path, on_bad="skip")
    data = build_data(cfg, torch.device("cpu"))
    assert sum(len(v) for v in data.manifest.splits.values()) == len(rows) - 2
    lines = sorted(key.rsplit(":", 1)[1] for key in data.skipped)
    assert lines == [str(len(rows)), str(len(rows) + 1)]
    assert any("file not found" in why for why in data.skipped.values())


def test_missing_columns_and_file_are_named(photo_root: Path, tmp_path: Path) -> None:
    labels = _csv(tmp_path / "labels.csv", [{"file": "a.jpg", "label": "x"}])
    with pytest.raises(DataError, match=r"no column 'path' \(data.path_column\)"):
        read_label_file(labels, photo_root)
    with pytest.raises(DataError, match="file not found"):
        read_label_file(tmp_path / "none.csv", photo_root)
    cfg = _labels_config(photo_root, tmp_path / "labels.txt", tmp_path)
    (tmp_path / "labels.txt").write_text("path,label\n")
    with pytest.raises(Exception, match=r"\.csv, \.jsonl, \.parquet"):
        load_manifest(cfg)
