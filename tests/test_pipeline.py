"""The formula-driven pipeline and the fractal CLI: generate -> pretrain -> fine-tune twice."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from imagefit.cli import app
from imagefit.config import load_config
from imagefit.data.folder import scan_folder
from imagefit.datasets.fractal.dataset import read_params, write_ofdb
from imagefit.errors import ConfigError, DataError, Interrupted
from imagefit.models.registry import create_model
from imagefit.pipeline import load_pipeline, run_pipeline
from imagefit.train.fit import fit

from conftest import interrupt_after

OFFICIAL = Path(__file__).parent / "data" / "fractaldb1k-official-params"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
runner = CliRunner()


def invoke(*args: str) -> Any:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def copy_params(target: Path, count: int) -> Path:
    target.mkdir(parents=True)
    for path in sorted(OFFICIAL.glob("*.csv"))[:count]:
        (target / path.name).write_bytes(path.read_bytes())
    return target


# ------------------------------------------------------------------------------ CLI


def test_official_search_command_writes_the_official_files(tmp_path: Path) -> None:
    invoke(
        "data",
        "fractal-search",
        "--categories",
        "2",
        "--out",
        str(tmp_path / "p"),
        "--compat",
        "official",
    )
    for name in ("00000.csv", "00001.csv"):
        assert (tmp_path / "p" / name).read_bytes() == (OFFICIAL / name).read_bytes()
    again = runner.invoke(
        app, ["data", "fractal-search", "--categories", "2", "--out", str(tmp_path / "p")]
    )
    assert isinstance(again.exception, DataError) and "already holds" in str(again.exception)


def test_ofdb_command_layout_formats_and_quirk_options(tmp_path: Path) -> None:
    params = copy_params(tmp_path / "p", 3)
    common = ["--size", "48", "--points", "3000", "--workers", "1"]
    invoke("data", "ofdb", str(params), "--out", str(tmp_path / "ppm"), "--format", "ppm", *common)
    invoke("data", "ofdb", str(params), "--out", str(tmp_path / "png"), *common)
    invoke("data", "ofdb", str(params), "--out", str(tmp_path / "up"), "--no-vflip", *common)
    invoke(
        "data",
        "ofdb",
        str(params),
        "--out",
        str(tmp_path / "ones"),
        "--weight-row",
        "ones",
        *common,
    )
    index = scan_folder(tmp_path / "ppm")  # the core ImageFolder reads the seed's layout
    assert index.classes == ["00000", "00001", "00002"]
    assert [p.relative_to(tmp_path / "ppm").as_posix() for p, _ in index.samples] == [
        f"{c}/{c}_00_count_0_flip0.ppm" for c in index.classes
    ]
    name = "00001/00001_00_count_0_flip0"
    ppm, png = (np.asarray(Image.open(tmp_path / f"{d}/{name}.{d}")) for d in ("ppm", "png"))
    assert np.array_equal(ppm, png) and ppm.shape == (48, 48, 3) and ppm.any()
    library = tmp_path / "lib"
    write_ofdb(params, library, 48, 3000, "png", workers=1, progress=False)
    assert (library / f"{name}.png").read_bytes() == (tmp_path / f"png/{name}.png").read_bytes()
    up = np.asarray(Image.open(tmp_path / f"up/{name}.png"))
    assert np.array_equal(up, png[::-1])  # the official top-to-bottom flip is the default
    ones = np.asarray(Image.open(tmp_path / f"ones/{name}.png"))
    assert not np.array_equal(ones, png)  # the official row scales a by 0.2


def test_fractaldb_command_counts_and_shipped_weights(tmp_path: Path) -> None:
    params = copy_params(tmp_path / "p", 2)
    invoke(
        "data",
        "fractaldb",
        str(params),
        "--out",
        str(tmp_path / "f"),
        "--weights",
        "0.1",
        "--instances",
        "2",
        "--flips",
        "2",
        "--size",
        "24",
        "--points",
        "2000",
        "--workers",
        "1",
    )
    from imagefit.datasets.fractal.dataset import read_weights

    rows = len(read_weights("0.1"))
    assert rows == 25  # the official files: 25 parameter variants
    files = sorted((tmp_path / "f" / "00000").iterdir())
    assert len(files) == rows * 2 * 2
    assert files[-1].name == f"00000_{rows - 1:02d}_count_1_flip1.png"
    bad = runner.invoke(
        app, ["data", "fractaldb", str(params), "--out", str(tmp_path / "g"), "--weights", "0.7"]
    )
    assert isinstance(bad.exception, DataError) and "0.7" in str(bad.exception)
    assert "0.4" in str(bad.exception)  # the error lists the shipped files


# ------------------------------------------------------------------------- no val split


def test_training_without_a_validation_split(tmp_path: Path) -> None:
    """One image per class (2D-OFDB): val_fraction 0 trains on all of it, monitoring train_*."""
    params = copy_params(tmp_path / "p", 4)
    write_ofdb(params, tmp_path / "ofdb", 32, 2000, workers=1, progress=False)
    overrides = [
        f"data.root={tmp_path / 'ofdb'}",
        "data.image_size=16",
        "data.val_fraction=0",
        "data.test_fraction=0",
        "data.num_workers=0",
        "model.name=simple_cnn",
        "train.epochs=2",
        "train.batch_size=4",
        "train.threads=1",
        f"output.dir={tmp_path / 'runs'}",
        "output.name=pre",
    ]
    with pytest.raises(ConfigError, match="train.monitor=val_accuracy needs a validation split"):
        fit(load_config(None, [*overrides[:-1], "output.name=refused"]))
    result = fit(load_config(None, [*overrides, "train.monitor=train_loss"]))
    assert [row["val_accuracy"] for row in result.history] == [None, None]
    assert result.metrics is None and (result.run_dir / "best.pt").is_file()
    split = json.loads((result.run_dir / "split.json").read_text())
    assert split["counts"] == {"train": 4, "val": 0, "test": 0}
    assert result.summary.best_epoch in (1, 2)


# ------------------------------------------------------------------------------ pipeline


def write_pipeline(folder: Path, digits_root: Path, **changes: Any) -> Path:
    """A pipeline at test size: 4 categories at 24 px, simple_cnn, a few batches per epoch."""
    tiny = {
        "data": {"image_size": 16, "num_workers": 0},
        "model": {"name": "simple_cnn"},
        "optim": {"name": "adam", "lr": 0.003},
        "train": {"batch_size": 8, "threads": 1, "limit_batches": 2},
    }
    pretrain = {
        **tiny,
        "data": {**tiny["data"], "val_fraction": 0, "test_fraction": 0},
        "augment": {"scale": [0.3, 1.0], "vflip": 0.5, "mixup": 0.8},
        "train": {**tiny["train"], "epochs": 2, "monitor": "train_loss", "label_smoothing": 0.1},
    }
    target = {
        **tiny,
        "data": {**tiny["data"], "root": str(digits_root)},
        "train": {**tiny["train"], "epochs": 1},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pretrain.yaml").write_text(yaml.safe_dump(pretrain))
    (folder / "target.yaml").write_text(yaml.safe_dump(target))
    spec = {
        "name": "tiny",
        "out": str(folder / "out"),
        "fractal": {"categories": 4, "render": {"size": 24, "points": 2000}},
        "pretrain": {"config": "pretrain.yaml"},
        "finetune": {"config": "target.yaml", "seeds": [0, 1]},
        **changes,
    }
    (folder / "p.yaml").write_text(yaml.safe_dump(spec))
    return folder / "p.yaml"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_pipeline_end_to_end_and_rerun_skips_finished_steps(
    tmp_path: Path,
    digits_root: Path,
    quick_pictures: list[tuple],
) -> None:
    spec = load_pipeline(write_pipeline(tmp_path, digits_root))
    result = run_pipeline(spec)
    out = tmp_path / "out"
    assert len(read_params(out / "fractal" / "params")) == 4
    assert scan_folder(out / "fractal" / "images").classes == ["00000", "00001", "00002", "00003"]
    pre_run = out / "pretrain" / "runs" / "pretrain"
    assert json.loads((pre_run / "summary.json").read_text())["status"] == "finished"
    pretrained = torch.load(pre_run / "best.pt", weights_only=True)
    assert pretrained["classes"] == ["00000", "00001", "00002", "00003"]
    # The fine-tunes: same recipe, one from scratch, one from the 4-class pretraining (head
    # replaced by a 10-class one), and the run records where its weights came from.
    runs = sorted(p.name for p in (out / "finetune" / "runs").iterdir())
    assert runs == ["pretrained-seed0", "pretrained-seed1", "scratch-seed0", "scratch-seed1"]
    summary = json.loads((out / "finetune/runs/pretrained-seed0/summary.json").read_text())
    assert summary["init"]["path"] == str((out / "pretrained.pt").resolve())
    assert summary["init"]["source_run"] == str(pre_run.resolve())
    scratch_cfg = yaml.safe_load((out / "finetune/runs/scratch-seed0/config.yaml").read_text())
    pre_cfg = yaml.safe_load((out / "finetune/runs/pretrained-seed0/config.yaml").read_text())
    assert scratch_cfg["model"].pop("init") == "scratch"
    init = pre_cfg["model"].pop("init")
    scratch_cfg["output"], pre_cfg["output"] = {}, {}
    assert scratch_cfg == pre_cfg  # the identical recipe
    assert summary["init"]["kind"] == "imagefit-checkpoint" and summary["init"]["head_replaced"]
    assert summary["init"]["source_classes"] == 4 and summary["init"]["sha256"]
    tuned = torch.load(out / "finetune/runs/pretrained-seed0/best.pt", weights_only=True)
    assert tuned["model"]["fc.weight"].shape[0] == 10
    # The fine-tune's init: the pretrained backbone, a new 10-class head.
    start = create_model("simple_cnn", 10, init)
    assert start.state_dict()["features.0.weight"].equal(pretrained["model"]["features.0.weight"])
    comparison = json.loads((out / "pipeline.json").read_text())
    assert comparison == result.comparison
    assert set(comparison["variants"]) == {"scratch", "pretrained"}
    for row in comparison["variants"].values():
        assert row["seeds"] == [0, 1] and 0 <= row["test_accuracy"]["mean"] <= 1
    # The paired difference covers every test image (the group means follow limit_batches).
    gain = comparison["pretrained_minus_scratch"]
    low, high = comparison["pretrained_minus_scratch_interval"]
    assert -1 <= low <= gain <= high <= 1
    # Rerunning does nothing again: no search, no render, no training.
    before = {p: _digest(p) for p in out.rglob("*.pt")}
    images = {p: p.stat().st_mtime_ns for p in (out / "fractal").rglob("*.png")}
    run_pipeline(load_pipeline(tmp_path / "p.yaml"))
    assert {p: _digest(p) for p in out.rglob("*.pt")} == before
    assert {p: p.stat().st_mtime_ns for p in (out / "fractal").rglob("*.png")} == images


@pytest.mark.slow
def test_an_interrupted_pipeline_resumes_its_training(
    tmp_path: Path,
    digits_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    quick_pictures: list[tuple],
) -> None:
    path = write_pipeline(tmp_path, digits_root, finetune={"config": "target.yaml", "seeds": [0]})
    interrupt_after(monkeypatch, 2)  # a signal at the end of the pretraining's first epoch
    with pytest.raises(Interrupted, match=r"imagefit pipeline .*p\.yaml"):
        run_pipeline(load_pipeline(path))
    pre_run = tmp_path / "out" / "pretrain" / "runs" / "pretrain"
    assert (pre_run / "last.pt").is_file() and not (pre_run / "summary.json").exists()
    monkeypatch.undo()
    result = run_pipeline(load_pipeline(path))
    history = json.loads((pre_run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]  # resumed, not restarted or repeated
    assert set(result.comparison["variants"]) == {"scratch", "pretrained"}


def test_an_interrupted_generation_step_is_redone(
    tmp_path: Path, digits_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_pipeline(write_pipeline(tmp_path, digits_root))
    from imagefit import pipeline as pipeline_module

    calls = []

    def broken(*args: Any, **kwargs: Any) -> int:
        calls.append(args)
        (Path(args[1]) / "00000").mkdir(parents=True)  # a half-written render
        raise KeyboardInterrupt

    monkeypatch.setattr("imagefit.datasets.fractal.dataset.write_ofdb", broken)
    with pytest.raises(KeyboardInterrupt):
        pipeline_module.generate_fractals(spec.file.fractal, tmp_path / "gen")
    assert (tmp_path / "gen" / "params").is_dir() and not (tmp_path / "gen" / "images").exists()
    monkeypatch.undo()
    images = pipeline_module.generate_fractals(spec.file.fractal, tmp_path / "gen")
    assert len(scan_folder(images).classes) == 4 and not (tmp_path / "gen/images.partial").exists()


def test_pipeline_overrides_and_errors(tmp_path: Path, digits_root: Path) -> None:
    path = write_pipeline(tmp_path, digits_root)
    spec = load_pipeline(
        path,
        [
            "fractal.categories=6",
            "pretrain.train.epochs=5",
            "finetune.seeds=[3]",
            "train.device=cpu",
        ],
    )
    assert spec.file.fractal.categories == 6
    assert spec.file.pretrain.set == {"train.epochs": 5} and spec.file.finetune.seeds == [3]
    assert spec.common == ["train.device=cpu"]
    with pytest.raises(ConfigError, match="fractal.colour"):
        load_pipeline(path, ["fractal.colour=red"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_pipeline(write_pipeline(tmp_path / "b", digits_root, pretrain={"config": "nope.yaml"}))


def test_shipped_pipelines_parse() -> None:
    for path in (
        CONFIGS / "ofdb_pretrain_finetune.pipeline.yaml",
        CONFIGS / "digits" / "ofdb.pipeline.yaml",
        CONFIGS / "fdsl_gpu.pipeline.yaml",
    ):
        spec = load_pipeline(path)
        assert spec.file.fractal is not None and spec.file.finetune.seeds == [0, 1, 2]
        pre = load_config(path.parent / spec.file.pretrain.config)
        assert pre.data.val_fraction == 0 and pre.train.monitor == "train_loss"
        assert pre.augment.randaugment and pre.augment.vflip and pre.train.label_smoothing == 0.1
    seed = load_config(CONFIGS / "ofdb_pretrain_resnet50.yaml")  # the 2D-OFDB authors' recipe
    assert seed.augment.scale == (0.08, 1.0) and seed.augment.random_erasing == 0.5
    assert (seed.augment.mixup, seed.augment.cutmix) == (0.8, 1.0)
    assert (seed.model.name, seed.data.image_size, seed.train.batch_size) == ("resnet50", 224, 16)


def test_cpu_fdsl_pipeline_parses() -> None:
    """The CPU pipeline renders on the fly and gives both variants the same recipe search."""
    spec = load_pipeline(CONFIGS / "fdsl_cpu.pipeline.yaml", ["finetune.data.root=/x"])
    assert spec.file.finetune.seeds == [0, 1, 2] and len(spec.file.finetune.candidates) >= 2
    assert spec.file.finetune.set["data.root"] == "/x"
    pre = load_config(CONFIGS / spec.file.pretrain.config)
    assert pre.data.source == "fractal" and pre.data.val_fraction == 0
    target = load_config(CONFIGS / spec.file.finetune.config)
    assert target.data.mean == pre.data.mean and target.data.image_size == pre.data.image_size
    assert target.model.name == pre.model.name == "test_resnet"  # batch norm: see the ablation
