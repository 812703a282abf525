"""Batch ops RandAugment, random erasing, mixup/cutmix: seeded by the batch generator only,
global RNGs untouched, each doing what timm/torchvision do; the smoothed soft-target loss; and
exact resume of a run with all of them on."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from imagefit.config import AugmentConfig, config_from_dict
from imagefit.data.augment import BATCH_OPS, BatchAugment
from imagefit.errors import ConfigError, Interrupted
from imagefit.train.fit import fit
from imagefit.train.losses import SoftTargetCrossEntropy, create_criterion

from conftest import interrupt_after, tiny_config

SIZE, CLASSES = 16, 8
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

OPS = {  # name -> (factory key, config)
    "randaugment": ("randaugment", AugmentConfig(randaugment="rand-m9-mstd0.5-inc1")),
    "random_erasing": ("random_erasing", AugmentConfig(random_erasing=0.5)),
    "mixup": ("mixup", AugmentConfig(mixup=0.8)),
    "cutmix": ("mixup", AugmentConfig(cutmix=1.0)),
    "mixup+cutmix": ("mixup", AugmentConfig(mixup=0.8, cutmix=1.0)),
}


def make_op(name: str):
    key, cfg = OPS[name]
    return BATCH_OPS[key](cfg, SIZE, CLASSES, MEAN, STD)


def batch(count: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images on the 1/255 grid as the loader makes them (low contrast, so that colour ops
    change them), and distinct labels."""
    g = torch.Generator().manual_seed(seed)
    x = (40 + torch.randint(0, 120, (count, 3, SIZE, SIZE), generator=g)).float() / 255
    return x, torch.arange(count) % CLASSES


def run(op, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return op(x.clone(), y.clone(), torch.Generator().manual_seed(seed))


def global_states() -> tuple:
    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def assert_same_states(a: tuple, b: tuple) -> None:
    assert a[0] == b[0]
    assert a[1][0] == b[1][0] and np.array_equal(a[1][1], b[1][1]) and a[1][2:] == b[1][2:]
    assert torch.equal(a[2], b[2])


@pytest.mark.parametrize("name", list(OPS))
def test_op_is_a_function_of_the_generator_only(name: str) -> None:
    op, (x, y) = make_op(name), batch()
    before = global_states()
    xa, ya = run(op, x, y, 5)
    assert_same_states(before, global_states())  # the op left the global RNGs where they were
    xb, yb = run(op, x, y, 5)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xc, yc = run(op, x, y, 6)
    assert not (torch.equal(xa, xc) and torch.equal(ya, yc))
    # whatever state the global RNGs are in beforehand, the output is the same
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    xd, yd = run(op, x, y, 5)
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    xe, ye = run(op, x, y, 5)
    assert (
        torch.equal(xa, xd) and torch.equal(xa, xe) and torch.equal(ya, yd) and torch.equal(ya, ye)
    )


def test_ops_run_in_order_and_the_batch_is_reproducible() -> None:
    cfg = AugmentConfig(randaugment="rand-m9-mstd0.5", random_erasing=0.5, mixup=0.8, cutmix=1.0)
    augment = BatchAugment(cfg, SIZE, CLASSES, mean=MEAN, std=STD)
    assert [type(op).__name__ for op in augment.ops] == [
        "AffineAugment",
        "RandAugment",
        "RandomErasing",
        "MixupCutmix",
    ]
    x, y = batch()
    xa, ya = run(augment, x, y, 1)
    xb, yb = run(augment, x, y, 1)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and ya.shape == (8, CLASSES)


def test_randaugment_changes_images_within_range() -> None:
    x, y = batch(16)
    out, targets = run(make_op("randaugment"), x, y, 0)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.equal(targets, y)
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, torch.round(out * 255) / 255)  # back on the 1/255 grid
    changed = (out != x).flatten(1).any(1)
    assert changed.sum() >= 10, changed  # m9, two layers at p 0.5: most images change


def test_randaugment_at_full_magnitude_posterizes_to_black() -> None:
    """timm's increasing posterize keeps 0 bits at magnitude 10; Pillow 11+ refuses 0 bits."""
    op = BATCH_OPS["randaugment"](
        AugmentConfig(randaugment="rand-m10-mstd0-inc1"), SIZE, CLASSES, MEAN, STD
    )
    (posterize,) = [o for o in op.transform.ops if o.name == "PosterizeIncreasing"]
    posterize.prob = 1.0
    op.transform.ops, op.transform.num_layers = [posterize], 1
    x, y = batch(4)
    out, _ = run(op, x, y, 0)
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize(
    "spec", ["rand-m9-bogus", "rnd-m9", "rand-m9x", "rand-tnope", "rand-q3", ""]
)
def test_bad_randaugment_spec_is_a_config_error(spec: str) -> None:
    with pytest.raises(ConfigError, match=rf"augment\.randaugment: '{spec}'"):
        BATCH_OPS["randaugment"](AugmentConfig(randaugment=spec), SIZE, CLASSES, MEAN, STD)


def test_random_erasing_fills_one_rectangle_per_image_with_normalised_noise() -> None:
    x, y = batch(32)
    op = BATCH_OPS["random_erasing"](AugmentConfig(random_erasing=1.0), SIZE, CLASSES, MEAN, STD)
    out, targets = run(op, x, y, 0)
    assert torch.equal(targets, y)
    changed = (out != x).any(1)  # (B, S, S); noise never equals a pixel on the 1/255 grid
    for image in changed:
        rows, cols = image.any(1).nonzero().squeeze(1), image.any(0).nonzero().squeeze(1)
        assert len(rows) and len(cols)
        box = torch.zeros_like(image)
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
        assert torch.equal(image, box)  # exactly one filled rectangle, the rest untouched
        area = box.sum() / SIZE**2
        assert 0.015 <= area <= 0.4
    # The fill is N(0, 1) once normalised, as timm's mode="pixel"
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    noise = ((out - mean) / std).permute(0, 2, 3, 1)[changed]  # (erased pixels, 3)
    assert len(noise) > 500
    assert noise.mean().abs() < 0.1 and 0.9 < noise.std() < 1.1


def test_random_erasing_off() -> None:
    assert (
        BATCH_OPS["random_erasing"](AugmentConfig(random_erasing=0.0), SIZE, CLASSES, MEAN, STD)
        is None
    )
    augment = BatchAugment(
        AugmentConfig(translate=0.0, hflip=0.0, random_erasing=0.0), SIZE, CLASSES
    )
    assert augment.ops == []
    x, y = batch()
    out, targets = run(augment, x, y, 0)
    assert torch.equal(out, x) and torch.equal(targets, y)


def test_mixup_blends_each_image_with_its_neighbour() -> None:
    x, y = batch()
    out, targets = run(make_op("mixup"), x, y, 3)
    assert targets.shape == (8, CLASSES) and targets.dtype == torch.float32
    assert torch.allclose(targets.sum(1), torch.ones(8))
    assert ((targets > 0).sum(1) <= 2).all()
    lam = targets[torch.arange(8), y]  # (B,) weight of each image's own class
    assert torch.allclose(lam, lam[0].expand(8)) and 0 < lam[0] < 1  # one lambda per batch
    assert torch.allclose(targets[torch.arange(8), y.roll(1)], 1 - lam)
    assert torch.allclose(out, lam[0] * x + (1 - lam[0]) * x.roll(1, 0), atol=1e-6)
    # targets already soft (B, K) are mixed as they are
    soft = torch.full((8, CLASSES), 1 / CLASSES)
    _, mixed = run(make_op("mixup"), x, soft, 3)
    assert torch.allclose(mixed, soft)


def test_cutmix_pastes_one_box_from_the_neighbour() -> None:
    x, y = batch()
    out, targets = run(make_op("cutmix"), x, y, 3)
    rolled = x.roll(1, 0)
    own, pasted = (out == x).all(1), (out == rolled).all(1)  # (B, S, S)
    assert (own | pasted).all()  # every pixel is one of the two source images'
    box = pasted[0]
    assert box.any() and not box.all()
    rows, cols = box.any(1).nonzero().squeeze(1), box.any(0).nonzero().squeeze(1)
    assert box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    assert torch.equal(pasted, box.expand_as(pasted))  # the same box in every image
    lam = 1 - box.float().mean()  # the share of each image that is its own
    assert torch.allclose(targets[torch.arange(8), y], lam.expand(8))
    assert torch.allclose(targets.sum(1), torch.ones(8))


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_soft_target_loss_matches_cross_entropy_with_smoothing(
    weighted: bool, smoothing: float
) -> None:
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(12, 5, generator=g), torch.randint(0, 5, (12,), generator=g)
    weight = torch.rand(5, generator=g) + 0.2 if weighted else None
    ours = SoftTargetCrossEntropy(weight, smoothing=smoothing)(
        logits, nn.functional.one_hot(labels, 5).float()
    )
    theirs = nn.CrossEntropyLoss(weight=weight, label_smoothing=smoothing)(logits, labels)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_mixup_criterion_keeps_label_smoothing() -> None:
    cfg = config_from_dict({"augment": {"mixup": 0.8}, "train": {"label_smoothing": 0.2}})
    criterion = create_criterion(cfg, [], ["a", "b", "c"])
    assert isinstance(criterion, SoftTargetCrossEntropy) and criterion.smoothing == 0.2
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    expected = nn.CrossEntropyLoss(label_smoothing=0.2)(logits, labels)
    assert torch.allclose(criterion(logits, nn.functional.one_hot(labels, 3).float()), expected)


@pytest.mark.slow
def test_training_with_all_ops_resumes_exactly(
    pattern_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sections = {
        "augment": {
            "randaugment": "rand-m9-mstd0.5",
            "random_erasing": 0.5,
            "mixup": 0.8,
            "cutmix": 1.0,
            "scale": [0.6, 1.0],
        },
        "train": {"epochs": 2, "batch_size": 6, "label_smoothing": 0.1, "limit_batches": 3},
        "model": {"drop_rate": 0.3},
    }
    reference = fit(tiny_config(pattern_root, tmp_path / "a", **sections))
    assert len(reference.history) == 2
    assert all(np.isfinite(row["train_loss"]) for row in reference.history)

    interrupt_after(monkeypatch, 4)  # the 2nd step of epoch 2
    with pytest.raises(Interrupted, match="resume"):
        fit(tiny_config(pattern_root, tmp_path / "b", **sections))
    monkeypatch.undo()
    resumed = fit(resume=tmp_path / "b" / "run")
    a = torch.load(reference.run_dir / "last.pt", weights_only=True)["model"]
    b = torch.load(resumed.run_dir / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = ("time_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in reference.history] == [
        {k: v for k, v in r.items() if k not in drop} for r in resumed.history
    ]
