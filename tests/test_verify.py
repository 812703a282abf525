"""``imagefit data verify``: bad files, duplicates and leakage, imbalance; the skip list trains."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imagefit.cli import app
from imagefit.data import images
from imagefit.datasets.verify import verify_dataset
from imagefit.errors import DataError
from imagefit.train.fit import fit

from conftest import tiny_config, write_pattern_folder

runner = CliRunner()


def dirty_dataset(root: Path) -> dict[str, Path]:
    """train/val/test with one problem of each kind; returns the files that carry them."""
    write_pattern_folder(root / "train", classes=3, per_class=12)
    write_pattern_folder(root / "val", classes=3, per_class=3, seed=1)
    write_pattern_folder(root / "test", classes=3, per_class=3, seed=2)
    files = {
        "leak": root / "test" / "class_0" / "leak.png",  # a train image, again in test
        "mislabeled": root / "train" / "class_1" / "mislabeled.png",  # a class_0 image
        "copy": root / "train" / "class_2" / "copy.png",  # same class, same split
        "not_image": root / "train" / "class_1" / "notes.png",
        "truncated": root / "train" / "class_1" / "cut.png",
        "tiny": root / "train" / "class_2" / "tiny.png",
        "ignored": root / "train" / "class_2" / "readme.txt",
    }
    shutil.copy(root / "train" / "class_0" / "img_000.png", files["leak"])
    shutil.copy(root / "train" / "class_0" / "img_001.png", files["mislabeled"])
    shutil.copy(root / "train" / "class_2" / "img_005.png", files["copy"])
    files["not_image"].write_text("not a picture")
    files["truncated"].write_bytes((root / "train" / "class_1" / "img_000.png").read_bytes()[:200])
    Image.new("RGB", (3, 40)).save(files["tiny"])
    files["ignored"].write_text("notes")
    rng = np.random.default_rng(5)
    for index in range(30):  # class_0: 42 train images against 14 and 15
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            root / "train" / "class_0" / f"extra_{index:02d}.png"
        )
    return files


def test_finds_every_kind_of_problem(tmp_path: Path) -> None:
    files = dirty_dataset(tmp_path / "d")
    report = verify_dataset(tmp_path / "d", min_size=4, workers=2, progress=False)
    assert report.layout == "folders" and report.classes == ["class_0", "class_1", "class_2"]
    assert report.counts["train"] == {"class_0": 42, "class_1": 15, "class_2": 14}
    assert report.imbalance_ratio == 3.0 and report.scanned == 90
    bad = {b.file.path.name: b.kind for b in report.bad}
    assert bad == {"notes.png": "not_image", "cut.png": "unreadable", "tiny.png": "too_small"}
    groups = {tuple(sorted(f.path.name for f in g.files)): g.kinds for g in report.duplicates}
    assert groups == {
        ("img_000.png", "leak.png"): ["cross_split"],
        ("img_001.png", "mislabeled.png"): ["cross_class"],
        ("copy.png", "img_005.png"): ["same_class"],
    }
    assert report.errors == 5 and not report.ok  # 3 bad files + leakage + conflicting labels
    assert report.ignored == [files["ignored"]]
    skip = set(report.skip_paths())
    assert {
        files["leak"],
        files["mislabeled"],
        tmp_path / "d" / "train" / "class_0" / "img_001.png",
    } <= skip
    assert tmp_path / "d" / "train" / "class_0" / "img_000.png" not in skip  # train keeps its copy
    assert (
        len(
            [
                p
                for p in skip
                if p.parent.name == "class_2" and p.name in ("copy.png", "img_005.png")
            ]
        )
        == 1
    )
    warnings = " ".join(report.warnings())
    assert (
        "identical files within one class" in warnings and "without an image extension" in warnings
    )


def test_same_results_with_one_or_many_threads(tmp_path: Path) -> None:
    dirty_dataset(tmp_path / "d")
    one = verify_dataset(tmp_path / "d", min_size=4, workers=1, progress=False).to_json()
    many = verify_dataset(tmp_path / "d", min_size=4, workers=4, progress=False).to_json()
    assert one == many


def test_unsupported_mode_is_its_own_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow 10+ converts every mode it can open; this pins the classification if one fails."""
    root = write_pattern_folder(tmp_path / "d", classes=2, per_class=2)

    def refuse(image: Image.Image) -> Image.Image:
        raise ValueError(f"conversion from {image.mode} to RGB not supported")

    monkeypatch.setattr(images, "to_rgb", refuse)
    report = verify_dataset(root, progress=False)
    assert {b.kind for b in report.bad} == {"unsupported_mode"} and len(report.bad) == 4
    assert "unsupported image mode RGB" in report.bad[0].message


def test_single_folder_and_structural_problems(tmp_path: Path) -> None:
    root = write_pattern_folder(tmp_path / "single", classes=2, per_class=3)
    shutil.copy(root / "class_0" / "img_000.png", root / "class_0" / "again.png")
    report = verify_dataset(root, progress=False)
    assert report.layout == "single" and report.ok  # a same-class copy only warns
    assert any("stratified split" in w for w in report.warnings())
    split = tmp_path / "split"
    write_pattern_folder(split / "train", classes=2, per_class=3)
    write_pattern_folder(split / "val", classes=2, per_class=1)
    (split / "val" / "class_1" / "img_000.png").unlink()  # an empty class folder in val
    report = verify_dataset(split, progress=False)
    assert report.problems and "class folder has no image files" in report.problems[0]
    assert report.counts["train"] == {"class_0": 3, "class_1": 3}  # train was still checked
    with pytest.raises(DataError, match="not found"):
        verify_dataset(tmp_path / "missing")


def test_cli_report_exit_code_and_skip_list_that_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "d"
    files = dirty_dataset(root)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["data", "verify", str(root), "--min-size", "4", "--workers", "2"])
    assert result.exit_code == 1, result.output
    assert "5 errors" in result.output and "cut.png" in result.output.replace("\n", "")
    out = tmp_path / "verify-d"
    report = json.loads((out / "verify.json").read_text())
    assert report["errors"] == 5 and report["bad_by_kind"] == {
        "not_image": 1,
        "too_small": 1,
        "unreadable": 1,
    }
    lines = [
        line
        for line in (out / "bad_files.txt").read_text().splitlines()
        if not line.startswith("#")
    ]
    assert len(lines) == 7 and all(Path(line).is_absolute() for line in lines)
    assert str(files["leak"]) in lines
    cfg = tiny_config(
        root,
        tmp_path / "runs",
        data={"skip_list": str(out / "bad_files.txt"), "min_size": 4},
        train={"epochs": 1},
    )
    result = fit(cfg)  # without the list this run fails on the first bad file
    assert result.summary.skipped_files == 7  # 3 bad, 1 leak, 1 copy, 2 mislabeled
    split = json.loads((result.run_dir / "split.json").read_text())["splits"]
    assert "test/class_0/leak.png" not in [p for p, _ in split["test"]]  # no leakage left
    with pytest.raises(DataError, match="cut.png"):
        fit(tiny_config(root, tmp_path / "runs2", data={"min_size": 4}, train={"epochs": 1}))


def test_cli_clean_dataset_and_bad_out(tmp_path: Path) -> None:
    root = write_pattern_folder(tmp_path / "clean", classes=2, per_class=10)
    result = runner.invoke(app, ["data", "verify", str(root), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0 and "no errors" in result.output
    assert (tmp_path / "report" / "verify.json").is_file()
    result = runner.invoke(app, ["data", "verify", str(root), "--out", str(root / "report")])
    assert isinstance(result.exception, DataError) and "inside the dataset" in str(result.exception)
