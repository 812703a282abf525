"""predict(): PNG, JPEG and folders through the checkpoint and the ONNX file give the
evaluation path's top-1; bad images get a per-file error; the CLI exits 1 on any failure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from imagefit.cli import app
from imagefit.config import config_from_dict
from imagefit.data.loaders import Loader, make_source
from imagefit.data.splits import SplitManifest
from imagefit.errors import ConfigError
from imagefit.evaluate.evaluator import evaluate_checkpoint
from imagefit.evaluate.inference import Precision, evaluate
from imagefit.export import ExportError
from imagefit.export.onnx import export_onnx
from imagefit.export.predict import predict
from imagefit.models.trained import load_trained

from helpers.runs import train_digits_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, digits_root: Path) -> Path:
    run = train_digits_run(tmp_path_factory.mktemp("predict"), digits_root)
    export_onnx(run, verify=False)
    return run


@pytest.fixture(scope="module")
def images(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Test-split digits as PNG copies (one nested folder deep) and as RGB JPEG re-encodings."""
    root = tmp_path_factory.mktemp("images")
    test = SplitManifest.load(run_dir / "split.json").splits["test"][::30]
    pngs, jpegs = [], []
    for index, (path, _) in enumerate(test):
        png = root / "png" / f"d{index % 2}" / f"{index:02d}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, png)
        jpeg = root / "jpeg" / f"{index:02d}.jpg"
        jpeg.parent.mkdir(exist_ok=True)
        Image.open(path).convert("RGB").save(jpeg, quality=90)
        pngs.append(png)
        jpegs.append(jpeg)
    return {"png": sorted(pngs), "jpeg": sorted(jpegs), "root": [root]}


def eval_path_top1(run_dir: Path, files: list[Path]) -> list[int]:
    """Top-1 through the training/evaluation code: make_source -> Loader -> evaluate."""
    model, meta, config = load_trained(run_dir)
    cfg = config_from_dict(config)
    device = torch.device("cpu")
    cfg.data.cache = "never"  # decode each file as the loader's workers do
    source, _ = make_source(cfg.data, [(f, 0) for f in files], meta["image_size"], device, {})
    loader = Loader(source, 8, device, mean=meta["mean"], std=meta["std"])
    _, logits, _ = evaluate(model, loader, Precision(device, channels_last=cfg.train.channels_last))
    return [int(i) for i in np.argmax(logits, axis=1)]


@pytest.mark.parametrize("model", ["best.pt", "model.onnx"])
def test_png_jpeg_and_folders_match_the_eval_path(model: str, run_dir: Path, images: dict) -> None:
    folder = images["root"][0] / "jpeg"
    results = predict(
        run_dir / model, [*images["png"][:2], images["root"][0] / "png", folder], top_k=3
    )
    files = [*images["png"][:2], *images["png"], *images["jpeg"]]
    assert [Path(r["file"]) for r in results] == files  # folders expand recursively, sorted
    expected = eval_path_top1(run_dir, files)
    assert [r["index"] for r in results] == expected
    for r in results:
        assert len(r["top_k"]) == 3 and r["top_k"][0]["label"] == r["label"] == str(r["index"])
        assert (
            0 < r["probability"] <= 1
            and r["top_k"][0]["probability"] >= r["top_k"][1]["probability"]
        )


@pytest.mark.parametrize("model", ["best.pt", "model.onnx"])
def test_accuracy_over_the_test_split_equals_imagefit_eval(model: str, run_dir: Path) -> None:
    test = SplitManifest.load(run_dir / "split.json").splits["test"]
    results = predict(run_dir / model, [path for path, _ in test])
    accuracy = np.mean([r["index"] == label for r, (_, label) in zip(results, test, strict=True)])
    assert accuracy == pytest.approx(evaluate_checkpoint(run_dir, device="cpu")["accuracy"])


def test_bad_images_get_an_error_and_the_rest_is_predicted(
    run_dir: Path, images: dict, tmp_path: Path
) -> None:
    shutil.copy(images["png"][0], tmp_path / "good.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    data = images["png"][1].read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "notes.txt").write_text("not an image, and not one by its name either")
    results = predict(run_dir / "model.onnx", [tmp_path, tmp_path / "missing.jpg"])
    by_name = {Path(r["file"]).name: r for r in results}
    assert set(by_name) == {"good.png", "corrupt.png", "truncated.png", "missing.jpg"}
    assert "label" in by_name["good.png"] and "error" not in by_name["good.png"]
    for name in ("corrupt.png", "truncated.png", "missing.jpg"):
        assert name in by_name[name]["error"] and "label" not in by_name[name]
    assert by_name["missing.jpg"]["kind"] == "missing"


def test_cli_json_and_exit_code(run_dir: Path, images: dict, tmp_path: Path) -> None:
    runner = CliRunner()
    good = runner.invoke(
        app,
        ["predict", str(run_dir / "model.onnx"), str(images["jpeg"][0]), "--json", "--top-k", "2"],
    )
    assert good.exit_code == 0, good.output
    [entry] = json.loads(good.stdout)
    assert entry["file"] == str(images["jpeg"][0]) and len(entry["top_k"]) == 2
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    table = runner.invoke(
        app, ["predict", str(run_dir), str(images["png"][0]), str(tmp_path / "bad.jpg")]
    )
    assert (
        table.exit_code == 1 and "error" in table.stdout and "1 of 2 images failed" in table.output
    )


def test_onnx_without_imagefit_metadata_is_refused(
    run_dir: Path, images: dict, tmp_path: Path
) -> None:
    proto = onnx.load(str(run_dir / "model.onnx"))
    del proto.metadata_props[:]  # an ONNX file from elsewhere: its preprocessing is unknown
    onnx.save(proto, str(tmp_path / "plain.onnx"))
    with pytest.raises(ExportError, match="not an ONNX file exported by imagefit"):
        predict(tmp_path / "plain.onnx", images["png"][:1])


def _class_probabilities(result: dict) -> dict[str, float]:
    return {entry["label"]: entry["probability"] for entry in result["top_k"]}


@pytest.mark.parametrize("model", ["checkpoint", "onnx"])
def test_predict_tta_averages_the_image_and_its_mirror(
    model: str, run_dir: Path, images: dict, tmp_path: Path
) -> None:
    source = run_dir / "model.onnx" if model == "onnx" else run_dir
    files = images["png"][:3]
    mirrors = []
    for index, file in enumerate(files):
        mirror = tmp_path / f"mirror{index}.png"
        Image.open(file).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirror)
        mirrors.append(mirror)
    with_tta = predict(source, files, top_k=10, tta="flip")
    plain, mirrored = predict(source, files, top_k=10), predict(source, mirrors, top_k=10)
    for t, p, m in zip(with_tta, plain, mirrored, strict=True):
        assert t["tta"] == "flip" and "tta" not in p
        expected = {
            k: (v + _class_probabilities(m)[k]) / 2 for k, v in _class_probabilities(p).items()
        }
        for label, probability in _class_probabilities(t).items():
            assert probability == pytest.approx(expected[label], abs=1e-4)
    with pytest.raises(ConfigError, match="rotate"):
        predict(source, files, tta="rotate")


def test_eval_cli_shows_accuracy_with_and_without_tta(run_dir: Path) -> None:
    runner = CliRunner()
    plain = json.loads(runner.invoke(app, ["eval", str(run_dir), "--json"]).stdout)
    done = runner.invoke(app, ["eval", str(run_dir), "--json", "--tta", "flip+crops"])
    assert done.exit_code == 0, done.output
    both = json.loads(done.stdout)
    assert both["accuracy"] == plain["accuracy"]  # the plain metrics are unchanged
    assert both["tta"]["mode"] == "flip+crops" and 0 <= both["tta"]["accuracy"] <= 1
    assert both["tta"]["loss"] != plain["loss"]
    table = runner.invoke(app, ["eval", str(run_dir), "--tta", "flip"])
    assert table.exit_code == 0 and "accuracy (tta flip)" in table.stdout
    wrong = runner.invoke(app, ["eval", str(run_dir), "--tta", "rotate"])
    # a ConfigError: `imagefit` (cli.main) exits 2 with its message, which lists the modes
    assert isinstance(wrong.exception, ConfigError) and "flip+crops" in str(wrong.exception)
