"""The pixels of photos as the field handles them: training crops from the whole image (the
store), evaluation at crop_pct with the run's interpolation, pretrained preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from imagefit.config import AugmentConfig, config_from_dict
from imagefit.data.augment import BatchAugment
from imagefit.data.decode import rgb_tensor
from imagefit.data.images import load_rgb
from imagefit.data.loaders import ArraySource, Loader, build_data
from imagefit.data.preprocessing import resolve_preprocessing
from imagefit.data.store import PixelSpec, store_plan
from imagefit.errors import ConfigError

from conftest import tiny_config

CPU = torch.device("cpu")
CORNERS = {  # colour -> the corner it is planted in
    (255, 0, 0): "top left",
    (0, 255, 0): "top right",
    (0, 0, 255): "bottom left",
    (255, 255, 0): "bottom right",
}


def _wide_image(path: Path, width: int = 150, height: int = 50, patch: int = 12) -> Path:
    """A 3:1 grey image with a distinct colour in each corner."""
    pixels = np.full((height, width, 3), 128, np.uint8)
    corners = [(0, 0), (0, width - patch), (height - patch, 0), (height - patch, width - patch)]
    for colour, (top, left) in zip(CORNERS, corners, strict=True):
        pixels[top : top + patch, left : left + patch] = colour
    Image.fromarray(pixels).save(path)
    return path


def test_a_training_crop_can_reach_every_corner_of_a_wide_image(tmp_path: Path) -> None:
    spec = PixelSpec(60, store=True)  # longer side 60: the 3:1 image is 60 x 20 on its canvas
    canvas, box = spec.decode(_wide_image(tmp_path / "wide.png"))
    assert box == (60, 20) and (canvas[20:] == 0).all()  # the padding below the image
    count = 64
    source = ArraySource(
        np.repeat(canvas[None], count, 0), [0] * count, CPU, boxes=np.array([box] * count)
    )
    cfg = AugmentConfig(scale=(0.08, 1.0), translate=0.0, hflip=0.0)
    augment = BatchAugment(cfg, 16, 2, mean=(0, 0, 0), std=(1, 1, 1))
    loader = Loader(source, 16, CPU, shuffle=True, augment=augment, seed=3)
    seen: dict[tuple[int, int, int], int] = dict.fromkeys(CORNERS, 0)
    for epoch in range(4):
        for x, _ in loader.epoch(epoch):
            assert x.shape[1:] == (3, 16, 16)
            pixels = 255 * x.permute(0, 2, 3, 1).reshape(len(x), -1, 3)  # (mean 0, std 1)
            # never the canvas padding: a crop samples inside the image's own box
            assert not (pixels.abs().sum(-1) < 30).any()
            for colour in CORNERS:
                near = (pixels - torch.tensor(colour)).abs().amax(-1) < 40  # (B, pixels)
                seen[colour] += int(near.any(1).sum())
    missing = [CORNERS[c] for c, crops in seen.items() if crops == 0]
    assert not missing, f"no crop reached the {missing} corner(s): {seen}"


def test_scale_one_crops_the_largest_centred_box_within_ratio(tmp_path: Path) -> None:
    """torchvision's fallback: with scale (1, 1) a 3:1 image is cut to 4:3 in its centre, so
    no corner colour survives; a square image is kept whole."""
    spec = PixelSpec(60, store=True)
    canvas, box = spec.decode(_wide_image(tmp_path / "wide.png"))
    x = torch.from_numpy(canvas).permute(2, 0, 1)[None].float().div(255).repeat(4, 1, 1, 1)
    cfg = AugmentConfig(scale=(1.0, 1.0), translate=0.0, hflip=0.0)
    out, _ = BatchAugment(cfg, 16, 2)(
        x, torch.zeros(4), torch.Generator().manual_seed(0), torch.tensor([box] * 4)
    )
    pixels = (out * 255).round().permute(0, 2, 3, 1).reshape(-1, 3)
    for colour in CORNERS:
        assert not ((pixels - torch.tensor(colour)).abs().amax(-1) < 40).any()


@pytest.mark.parametrize("crop_pct", [0.875, 0.95, 1.0])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_evaluation_crop_is_torchvisions_resize_and_centre_crop(
    photo_root: Path, crop_pct: float, interpolation: str
) -> None:
    """On real photos, exactly (0 levels) torchvision's Resize(int(size / crop_pct)) +
    CenterCrop(size) on the PIL image (both use Pillow's antialiased filters); the
    torchvision decoder equals the same transforms on tensors (torch's antialias kernel)."""
    size = 40
    mode = getattr(v2.InterpolationMode, interpolation.upper())
    reference = v2.Compose(
        [v2.Resize(int(size / crop_pct), interpolation=mode, antialias=True), v2.CenterCrop(size)]
    )
    files = sorted(photo_root.rglob("*.jpg"))[:6]
    assert len({Image.open(f).size for f in files}) > 1  # several shapes, not one
    for path in files:
        ours = PixelSpec(size, crop_pct, interpolation).array(path)
        theirs = np.asarray(reference(load_rgb(path)))
        assert np.array_equal(ours, theirs), path
        fast = PixelSpec(size, crop_pct, interpolation, decoder="torchvision").array(path)
        theirs_tensor = reference(rgb_tensor(path)[0]).permute(1, 2, 0).numpy()
        assert np.array_equal(fast, theirs_tensor), path


def test_the_store_keeps_the_whole_image_at_its_aspect(photo_root: Path) -> None:
    path = sorted(photo_root.rglob("*.jpg"))[0]
    image = load_rgb(path)
    canvas, box = PixelSpec(64, store=True).decode(path)
    assert box == store_plan(*image.size, 64) and max(box) == 64
    resized = np.asarray(image.resize(box, Image.Resampling.BILINEAR))
    assert np.array_equal(canvas[: box[1], : box[0]], resized)
    fast, fast_box = PixelSpec(64, store=True, decoder="torchvision").decode(path)
    assert fast_box == box and np.abs(fast.astype(int) - canvas).max() <= 1


def _photo_config(root: Path, out: Path, cache: str, **data: object):
    return tiny_config(
        root,
        out,
        data={"image_size": 24, "cache": cache, "cache_dir": str(out / "cache"), **data},
        augment={"scale": (0.08, 1.0), "translate": 0.0},
    )


def test_cache_and_streaming_give_the_same_training_pixels(
    photo_root: Path, tmp_path: Path
) -> None:
    cached = build_data(_photo_config(photo_root, tmp_path, "auto", crop_pct=0.875), CPU)
    streamed = build_data(_photo_config(photo_root, tmp_path, "never", crop_pct=0.875), CPU)
    assert cached.preprocessing.store_size == 36  # ceil(int(24 / 0.875) * 4 / 3)
    for epoch in (0, 1):
        for (xa, ya), (xb, yb) in zip(
            cached.train.epoch(epoch), streamed.train.epoch(epoch), strict=True
        ):
            assert xa.shape[-1] == 24 and torch.equal(xa, xb) and torch.equal(ya, yb)
    # evaluation: the same crop_pct centre crops both ways
    for (xa, _), (xb, _) in zip(cached.val, streamed.val, strict=True):
        assert torch.equal(xa, xb)


def test_defaults_follow_image_size_and_config_wins(tmp_path: Path) -> None:
    def resolve(**data: object):
        tree = {"data": {"root": "x", **data}, "model": {"name": "simple_cnn"}}
        return resolve_preprocessing(config_from_dict(tree))

    photos, small = resolve(image_size=224), resolve(image_size=32)
    assert (photos.crop_pct, photos.interpolation, photos.store_size) == (0.875, "bilinear", 342)
    assert (small.crop_pct, small.store_size) == (1.0, 32)
    assert photos.why["crop_pct"].startswith("default") and photos.mean == (0.485, 0.456, 0.406)
    set_here = resolve(image_size=224, crop_pct=1.0, store_size=300)
    assert (set_here.crop_pct, set_here.store_size, set_here.why["crop_pct"]) == (
        1.0,
        300,
        "config",
    )
    with pytest.raises(ConfigError, match="crop_pct"):
        resolve(crop_pct=1.5)


def test_pretrained_weights_bring_their_preprocessing() -> None:
    def resolve(init: str, **data: object):
        tree = {
            "data": {"root": "x", **data},
            "model": {"name": "vit_tiny_patch16_224", "init": init},
        }
        return resolve_preprocessing(config_from_dict(tree))

    hub = resolve("hub:vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    assert (hub.crop_pct, hub.interpolation, hub.mean, hub.std) == (
        0.9,
        "bicubic",
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
    )
    assert "timm" in hub.why["mean"] and "vit_tiny" in hub.why["crop_pct"]
    mine = resolve("hub:vit_tiny_patch16_224", crop_pct=1.0, mean=(0.1, 0.2, 0.3))
    assert (mine.crop_pct, mine.mean, mine.interpolation) == (1.0, (0.1, 0.2, 0.3), "bicubic")
    assert mine.why["crop_pct"] == mine.why["mean"] == "config"
    weights_file = resolve("weights/vit.safetensors")
    assert weights_file.crop_pct == 0.9
    scratch = resolve("scratch")
    assert scratch.crop_pct == 0.875 and scratch.why["mean"] == "default: ImageNet's"


def test_a_run_evaluates_predicts_exports_and_serves_the_same_pixels(
    photo_root: Path, tmp_path: Path
) -> None:
    """crop_pct and interpolation travel with the weights: the checkpoint, the ONNX metadata,
    predict's, serving's and the preprocessing graph's reference pixels all equal the
    evaluation loader's."""
    import onnx

    from imagefit.data.inputs import normalise
    from imagefit.export.graph_preprocess import preprocessing_params, reference_pixels
    from imagefit.export.onnx import export_onnx, read_metadata
    from imagefit.models.trained import load_trained
    from imagefit.runs.layout import RunLayout
    from imagefit.runs.reader import read_summary
    from imagefit.serve.model import decode_upload
    from imagefit.train.fit import fit

    cfg = _photo_config(
        photo_root, tmp_path, "auto", image_size=32, crop_pct=0.75, interpolation="bicubic"
    )
    cfg.train.epochs = 1
    run = fit(cfg).run_dir
    _, meta, _ = load_trained(RunLayout(run).best)
    assert (meta["crop_pct"], meta["interpolation"]) == (0.75, "bicubic")
    summary = read_summary(run)
    assert summary is not None and summary.preprocessing is not None
    assert summary.preprocessing["crop_pct"] == 0.75
    assert summary.preprocessing["why"]["crop_pct"] == "config"

    data = build_data(cfg, CPU)
    files = [path for path, _ in data.manifest.splits["val"]]
    loaded = torch.cat([x for x, _ in data.val])
    spec = PixelSpec.from_meta(meta)
    pixels = np.stack([spec.array(path) for path in files])
    assert torch.equal(loaded, torch.from_numpy(normalise(pixels, meta["mean"], meta["std"])))
    params = preprocessing_params(meta)
    for path, expected in zip(files, pixels, strict=True):
        assert np.array_equal(reference_pixels(load_rgb(path), params), expected)
        served = decode_upload(path.read_bytes(), path.name, meta)
        assert np.array_equal(served, normalise(expected[None], meta["mean"], meta["std"])[0])

    report = export_onnx(run)
    props = {p.key: p.value for p in onnx.load(report["onnx"]).metadata_props}
    exported = read_metadata(props, report["onnx"])
    assert (exported["crop_pct"], exported["interpolation"]) == (0.75, "bicubic")
    assert "int(image_size / crop_pct) = 42 (bicubic" in props["imagefit.preprocessing"]
