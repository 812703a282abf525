"""ONNX with the preprocessing in the graph: uint8 RGB of any size in, the evaluation path's
logits out (verified at export on real photos), parametric on crop_pct and interpolation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image
from typer.testing import CliRunner

from imagefit.cli import app
from imagefit.data.images import load_rgb
from imagefit.data.inputs import normalise
from imagefit.export import ExportError
from imagefit.export import graph_preprocess as gp
from imagefit.export.onnx import export_onnx
from imagefit.export.predict import predict

from helpers.serving import FLOWERS, flowers_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return flowers_run(tmp_path_factory.mktemp("graph"))


def photos(count: int = 6) -> list[Image.Image]:
    """``count`` photos spread over the classes of the shared flowers."""
    files = sorted(FLOWERS.rglob("*.jpg"))
    if not files:
        pytest.skip(f"the shared real photos are not at {FLOWERS}")
    return [load_rgb(f) for f in files[:: len(files) // count][:count]]


def shapes(image: Image.Image) -> list[Image.Image]:
    """The photo, a square at exactly the model size, a tall and a tiny crop (upsampled)."""
    w, h = image.size
    return [
        image,
        image.resize((32, 32)),
        image.crop((0, 0, min(w, 61), h)),
        image.crop((10, 10, 27, 23)),
    ]


def graph_session(params: dict) -> ort.InferenceSession:
    model = gp.preprocessing_graph(params, "x")
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# name -> (metadata, most levels (0..255) a pixel may differ from Pillow's, share that may)
PARAMS = {
    "bilinear, no crop": ({"crop_pct": 1.0, "interpolation": "bilinear"}, 1, 0.25),
    # the cubic kernel overshoots; ONNX Runtime rounds and clips it differently from Pillow
    "bicubic, crop 0.875": ({"crop_pct": 0.875, "interpolation": "bicubic"}, 6, 0.5),
}


@pytest.mark.parametrize("name", PARAMS)
def test_graph_pixels_match_the_evaluation_pixels(name: str) -> None:
    extra, levels, share = PARAMS[name]
    meta = {"image_size": 32, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], **extra}
    params = gp.preprocessing_params(meta)
    session = graph_session(params)
    std255 = np.float32(params["std"]).reshape(1, 3, 1, 1) * 255
    for photo in photos():
        for image in shapes(photo):
            got = session.run(None, {gp.PIXELS: np.asarray(image)})[0]
            ref = normalise(
                np.array(gp.reference_pixels(image, params))[None], meta["mean"], meta["std"]
            )
            assert got.shape == ref.shape == (1, 3, 32, 32)
            pixel_diff = np.abs(got - ref) * std255  # back in 0..255 units
            # ONNX Runtime's antialiased uint8 resize is Pillow's algorithm; its fixed-point
            # rounding differs by a level (on up to a fifth of the pixels at some scales).
            assert pixel_diff.max() <= levels + 0.01, (name, image.size, pixel_diff.max())
            assert np.mean(pixel_diff > 0.01) <= share, (name, image.size)


def test_export_writes_a_verified_uint8_model(run_dir: Path) -> None:
    report = json.loads((run_dir / "export.json").read_text())
    pre = report["with_preprocessing"]
    check = pre["verification"]
    assert check["passed"] and check["top1_agreement"] == 1.0 and check["images"] >= 3
    assert check["inputs"].startswith("val split of") and check["max_abs_diff"] < 1e-2
    assert pre["preprocessing"]["resize_size"] == 32 and pre["opset"] == 18
    # export.json names the run folder's own files relative to it
    session = ort.InferenceSession(str(run_dir / pre["onnx"]), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert (inp.name, inp.type, inp.shape[2]) == ("image", "tensor(uint8)", 3)
    custom = session.get_modelmeta().custom_metadata_map
    assert json.loads(custom["imagefit.classes"]) == ["daisy", "roses", "sunflowers"]
    assert "centre crop 32 x 32" in custom["imagefit.preprocessing"]


def test_uint8_model_agrees_with_predict_on_raw_photos(run_dir: Path) -> None:
    files = sorted((run_dir.parents[1] / "flowers").rglob("*.jpg"))
    expected = predict(run_dir / "model.onnx", files, top_k=3)
    session = ort.InferenceSession(
        str(run_dir / "model.preprocess.onnx"), providers=["CPUExecutionProvider"]
    )
    for path, want in zip(files, expected, strict=True):
        logits = session.run(None, {"image": np.asarray(load_rgb(path))})[0][0]
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert int(np.argmax(logits)) == want["index"], path
        assert abs(probs[want["index"]] - want["probability"]) < 1e-3


def test_failed_check_rejects_the_file_and_fails_the_export(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disagreeing(*args: object) -> dict:
        return {"passed": False, "summary": "top-1 agreement 50.00% on 2 images", "images": 2}

    monkeypatch.setattr(gp, "verify_preprocessing", disagreeing)
    with pytest.raises(ExportError, match=r"preprocess\.rejected\.onnx.*50\.00%"):
        export_onnx(run_dir, out=run_dir / "again.onnx", verify=False, with_preprocessing=True)
    assert (run_dir / "again.preprocess.rejected.onnx").is_file()
    assert not (run_dir / "again.preprocess.onnx").exists()
    report = json.loads((run_dir / "export.json").read_text())
    assert report["with_preprocessing"]["verification"]["passed"] is False


def test_unknown_interpolation_names_the_choices() -> None:
    meta = {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "lanczos"}
    with pytest.raises(ExportError, match="'lanczos'.*bilinear, bicubic"):
        gp.preprocessing_params(meta)


def test_cli_flag(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(
        app, ["export", str(run_dir), "--onnx", "--with-preprocessing", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "top-1 agreement" in result.output and (tmp_path / "m.preprocess.onnx").is_file()
