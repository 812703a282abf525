"""RandAugment on batches of tensors: op by op against timm's PIL ops on real photos, timm's
magnitude semantics, per-batch seeding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment as timm_aa

from imagefit.config import AugmentConfig
from imagefit.data.batch_ops import RandAugment
from imagefit.data.randaugment import TENSOR_OPS, TensorRandAugment

FILL = (124, 116, 104)  # ImageNet's mean in levels, timm's fill
PIXEL_OPS = {  # op -> arguments; these equal Pillow's to the level
    "Equalize": [0],
    "Invert": [0],
    "Posterize": [1, 2, 4, 8],
    "Solarize": [0, 100, 256],
    "SolarizeAdd": [50, 110],
    "Color": [0.1, 1.3, 1.9],
    "Contrast": [0.1, 1.5],
    "Brightness": [0.3, 1.7],
    "Sharpness": [0.1, 1.9],
    "TranslateYRel": [0.25],  # a whole-pixel shift
}
GEOMETRIC_OPS = {
    "Rotate": [13.5, -27.0],
    "ShearX": [0.2, -0.3],
    "ShearY": [0.15],
    "TranslateXRel": [0.2],
}


@pytest.fixture
def photos(photo_root: Path) -> list[Image.Image]:
    files = sorted(photo_root.rglob("*.jpg"))[:3]
    return [Image.open(path).convert("RGB").crop((0, 0, 40, 32)) for path in files]


def _both(name: str, image: Image.Image, argument: float) -> tuple[np.ndarray, np.ndarray]:
    """(ours, timm's) pixels of op ``name`` at ``argument`` on ``image``."""
    takes_argument = timm_aa.LEVEL_TO_ARG[name] is not None
    theirs = timm_aa.NAME_TO_OP[name](
        image,
        *((argument,) if takes_argument else ()),
        fillcolor=FILL,
        resample=Image.Resampling.BILINEAR,
    )
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
    ours = TENSOR_OPS[name](x, torch.tensor([float(argument)]), torch.tensor(FILL).float())
    return ours[0].permute(1, 2, 0).numpy().astype(int), np.asarray(theirs).astype(int)


@pytest.mark.parametrize("name", sorted(PIXEL_OPS))
def test_pixel_ops_equal_timms_pil_ops(photos: list[Image.Image], name: str) -> None:
    for image in photos:
        for argument in PIXEL_OPS[name]:
            ours, theirs = _both(name, image, argument)
            assert np.array_equal(ours, theirs), (name, argument)


def test_autocontrast_is_within_one_level(photos: list[Image.Image]) -> None:
    for image in photos:
        ours, theirs = _both("AutoContrast", image, 0)
        assert np.abs(ours - theirs).max() <= 1  # Pillow's lookup table rounds its scale


@pytest.mark.parametrize("name", sorted(GEOMETRIC_OPS))
def test_geometric_ops_match_pil_bilinear_off_the_fill_border(
    photos: list[Image.Image], name: str
) -> None:
    """Documented difference: the pixels on the edge between image and fill differ."""
    for image in photos:
        for argument in GEOMETRIC_OPS[name]:
            ours, theirs = _both(name, image, argument)
            differ = (np.abs(ours - theirs) > 1).any(-1)
            assert differ.mean() < 0.06, (name, argument, differ.mean())


def _op(spec: str) -> RandAugment:
    return RandAugment(spec, 16, (0.485, 0.456, 0.406))


def test_timm_specs_run_on_tensors_and_others_fall_back_to_pil() -> None:
    assert isinstance(_op("rand-m9-mstd0.5-inc1").tensor, TensorRandAugment)
    assert isinstance(_op("rand-m7-n3-p0.8").tensor, TensorRandAugment)
    assert _op("rand-m9-t3a").tensor is None  # GaussianBlur has no tensor version here


def test_magnitudes_follow_timm_mstd_and_clip() -> None:
    op = _op("rand-m9-mstd0.5-inc1").tensor
    assert op is not None
    drawn = op._magnitudes(op.transform.ops[0], 20000, torch.Generator().manual_seed(0))
    assert abs(float(drawn.mean()) - 8.98) < 0.03 and drawn.max() == 10.0 and drawn.min() > 6
    assert 0.45 < float(drawn.std()) < 0.5  # N(9, 0.5) clipped at 10
    uniform = _op("rand-m9-mstd101").tensor  # timm: mstd over 100 is uniform in [0, m]
    assert uniform is not None
    drawn = uniform._magnitudes(uniform.transform.ops[0], 20000, torch.Generator().manual_seed(0))
    assert drawn.min() >= 0 and drawn.max() <= 9 and abs(float(drawn.mean()) - 4.5) < 0.1


def test_a_batch_is_a_function_of_its_seed_and_images_draw_their_own_ops(
    photos: list[Image.Image],
) -> None:
    op = _op("rand-m9-mstd0.5-inc1")
    pixels = np.stack([np.asarray(image) for image in photos * 6])  # (18, 32, 40, 3)
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    y = torch.zeros(len(x), dtype=torch.int64)
    a, _ = op(x, y, torch.Generator().manual_seed(5))
    b, _ = op(x, y, torch.Generator().manual_seed(5))
    c, _ = op(x, y, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    # the same photo, six times in the batch, comes out in several ways
    same_photo = a[:: len(photos)]
    assert len({tuple(img.flatten()[:200].tolist()) for img in same_photo}) > 2
    changed = (a - x).abs().flatten(1).amax(1) > 1 / 255
    assert changed.float().mean() > 0.5  # two layers at p=0.5: most images change


def test_randaugment_config_runs_in_the_batch_pipeline() -> None:
    from imagefit.data.augment import BatchAugment

    augment = BatchAugment(AugmentConfig(randaugment="rand-m9-mstd0.5-inc1"), 16, 3)
    x = torch.rand(4, 3, 16, 16)
    out, _ = augment(x, torch.zeros(4, dtype=torch.int64), torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 16, 16)
