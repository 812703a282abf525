"""Grad-CAM overlays for timm CNNs and SimpleCNN, a clear refusal for models without a
feature map, and the gallery of confident test mistakes."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagefit.cli import main
from imagefit.evaluate.explain import (
    ExplainError,
    _Explainer,
    explain_images,
    mistakes_gallery,
    target_layer,
)
from imagefit.models.registry import create_model
from imagefit.train.fit import fit

from conftest import tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import write_pattern_folder

    tmp = tmp_path_factory.mktemp("explain")
    root = write_pattern_folder(tmp / "patterns", size=32, per_class=20)
    for k in range(3):  # mislabel a few images, so that the test split has mistakes
        for i in range(4):
            (root / f"class_{k}" / f"img_{i:03d}.png").rename(
                root / f"class_{(k + 1) % 3}" / f"moved_{k}_{i}.png"
            )
    cfg = tiny_config(root, tmp / "runs", data={"image_size": 32}, train={"epochs": 4})
    return fit(cfg).run_dir


def test_overlay_heat_differs_across_the_image(run: Path, tmp_path: Path) -> None:
    image = next((Path(json.loads((run / "split.json").read_text())["root"]) / "class_1").iterdir())
    [result] = explain_images(run, [image], tmp_path / "out")
    overlay = np.asarray(Image.open(result["overlay"])).astype(float)
    assert overlay.shape == (224, 224, 3)  # small inputs are enlarged to be readable
    assert result["layer"] == "features.3"
    explainer = _Explainer(run)
    from imagefit.data.images import load_array

    _, heat = explainer.explain(load_array(image, 32)[None])
    assert heat.shape == (1, 32, 32) and heat.max() - heat.min() > 0.5
    # the overlay's colour follows the heat: hot and cold quarters differ
    q = overlay.reshape(2, 112, 2, 112, 3).mean(axis=(1, 3))
    assert np.ptp(q[..., 0]) > 5 or np.ptp(q[..., 2]) > 5


@pytest.mark.parametrize(
    ("arch", "layer"), [("resnet18", "layer4"), ("efficientnet_b0", "blocks.6")]
)
def test_timm_cnns_use_their_last_stage(arch: str, layer: str) -> None:
    model = create_model(arch, 3).eval()
    assert target_layer(model, arch, 64)[0] == layer


def test_a_model_without_a_feature_map_is_refused(
    run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    tokens = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 3))
    with pytest.raises(ExplainError, match="no convolutional layer"):
        target_layer(tokens, "mlp", 32)
    from imagefit.evaluate import explain as explain_module
    from imagefit.models.trained import load_trained

    def token_model(path: Path):
        _, meta, config = load_trained(path)
        return tokens, {**meta, "arch": "mlp"}, config

    monkeypatch.setattr(explain_module, "load_trained", token_model)
    image = next(Path(json.loads((run / "split.json").read_text())["root"]).rglob("*.png"))
    monkeypatch.setattr(sys, "argv", ["imagefit", "explain", str(run), str(image)])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    assert "mlp: no convolutional layer" in capsys.readouterr().err


def test_mistakes_gallery(run: Path, tmp_path: Path) -> None:
    gallery = mistakes_gallery(run, tmp_path / "gallery", count=4)
    probabilities = [m["probability"] for m in gallery["mistakes"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert gallery["mistakes_total"] > 0
    assert len(gallery["mistakes"]) == min(4, gallery["mistakes_total"])
    for m in gallery["mistakes"]:
        assert m["true"] != m["predicted"]
        assert (tmp_path / "gallery" / m["overlay"]).is_file()
    assert (tmp_path / "gallery" / "mistakes.png").stat().st_size > 5000
    assert (tmp_path / "gallery" / "confused_pairs.png").is_file()
    assert gallery["confused_pairs"][0]["count"] >= gallery["confused_pairs"][-1]["count"]
    assert json.loads((tmp_path / "gallery" / "gallery.json").read_text()) == gallery
