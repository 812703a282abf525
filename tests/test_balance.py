"""Class imbalance: balanced loss weights and the balanced sampler (deterministic, resumable)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from imagefit.config import load_config
from imagefit.data.balance import balanced_class_weights, balanced_sample_weights, imbalance_ratio
from imagefit.data.loaders import ArraySource, Loader
from imagefit.errors import ConfigError, DataError, Interrupted
from imagefit.train import fit as fit_module
from imagefit.train.fit import fit
from imagefit.train.losses import SoftTargetCrossEntropy

from conftest import interrupt_after, tiny_config, write_pattern_folder

LABELS = [0] * 30 + [1] * 6 + [2] * 3  # 10:2:1
CLASSES = ["a", "b", "c"]


def test_class_weights_are_sklearns_balanced() -> None:
    weights = balanced_class_weights(LABELS, CLASSES)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=np.array(LABELS))
    assert np.allclose(weights, expected) and weights.dtype == np.float32
    assert np.allclose(weights, [39 / (3 * 30), 39 / (3 * 6), 39 / (3 * 3)])
    assert imbalance_ratio([30, 6, 3]) == 10.0


def test_a_class_without_train_images_cannot_be_balanced() -> None:
    with pytest.raises(DataError, match=r"class\(es\) \['c'\]"):
        balanced_class_weights([0, 1, 1], CLASSES)
    with pytest.raises(DataError, match="data.sampler=balanced"):
        balanced_sample_weights([0, 1, 1], CLASSES)


def test_sample_weights_give_every_class_the_same_mass() -> None:
    weights = balanced_sample_weights(LABELS, CLASSES)
    assert weights.sum() == pytest.approx(1.0)
    mass = [weights[np.array(LABELS) == c].sum() for c in range(3)]
    assert mass == pytest.approx([1 / 3] * 3)


def _loader(weights: np.ndarray | None, seed: int = 3) -> Loader:
    pixels = torch.arange(len(LABELS), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 4, 4, 3)
    source = ArraySource(pixels.contiguous(), LABELS, torch.device("cpu"))
    return Loader(source, 4, torch.device("cpu"), shuffle=True, seed=seed, weights=weights)


def test_balanced_sampler_is_deterministic_resumable_and_balanced() -> None:
    weights = balanced_sample_weights(LABELS, CLASSES)
    loader = _loader(weights)
    first = loader.index_batches(2)
    assert [b.tolist() for b in first] == [b.tolist() for b in _loader(weights).index_batches(2)]
    assert sum(len(b) for b in first) == len(LABELS)  # the same epoch length as shuffling
    assert [b.tolist() for b in loader.index_batches(3)] != [b.tolist() for b in first]
    assert [b.tolist() for b in _loader(weights, seed=4).index_batches(2)] != [
        b.tolist() for b in first
    ]
    full = list(loader.epoch(2))
    for (xa, ya), (xb, yb) in zip(full[4:], loader.epoch(2, start=4), strict=True):  # mid-epoch
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    drawn = Counter(
        LABELS[i] for epoch in range(200) for b in loader.index_batches(epoch) for i in b
    )
    shares = np.array([drawn[c] for c in range(3)]) / sum(drawn.values())
    assert np.allclose(shares, 1 / 3, atol=0.03)  # vs 0.77 / 0.15 / 0.08 when shuffling


def test_soft_target_loss_with_weights_matches_cross_entropy() -> None:
    logits, targets = (
        torch.randn(6, 3, generator=torch.Generator().manual_seed(0)),
        torch.tensor([0, 1, 2, 2, 1, 0]),
    )
    weight = torch.tensor([0.5, 1.0, 3.0])
    one_hot = nn.functional.one_hot(targets, 3).float()
    assert SoftTargetCrossEntropy(weight)(logits, one_hot) == pytest.approx(
        nn.CrossEntropyLoss(weight=weight)(logits, targets).item(), rel=1e-6
    )
    assert SoftTargetCrossEntropy()(logits, one_hot) == pytest.approx(
        nn.CrossEntropyLoss()(logits, targets).item(), rel=1e-6
    )


def test_config_options_are_validated() -> None:
    cfg = load_config(None, ["train.class_weights=balanced", "data.sampler=balanced"])
    assert (cfg.train.class_weights, cfg.data.sampler) == ("balanced", "balanced")
    with pytest.raises(ConfigError, match="data.sampler"):
        load_config(None, ["data.sampler=oversample"])
    with pytest.raises(ConfigError, match="train.class_weights"):
        load_config(None, ["train.class_weights=auto"])


def _imbalanced(root: Path) -> Path:
    write_pattern_folder(root, classes=3, per_class=4)
    rng = np.random.default_rng(1)
    for index in range(20):  # class_0 gets 24 images, the others 4
        pixels = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
        pixels[:8, :8, 0] = 230
        Image.fromarray(pixels).save(root / "class_0" / f"extra_{index:02d}.png")
    return root


def test_balanced_run_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _imbalanced(tmp_path / "data")
    sections = {
        "train": {"epochs": 2, "class_weights": "balanced", "batch_size": 4},
        "data": {"sampler": "balanced"},
        "model": {"drop_rate": 0.2},
    }
    reference = fit(tiny_config(root, tmp_path / "a", **sections))
    run = fit_module._build(tiny_config(root, tmp_path / "x", **sections), tmp_path)
    counts = np.bincount([label for _, label in run.data.manifest.splits["train"]])
    assert counts.tolist() == [16, 2, 2]  # the train split: val and test take their shares
    assert torch.allclose(
        run.criterion.weight, torch.tensor(20 / (3 * counts), dtype=torch.float32)
    )

    interrupt_after(monkeypatch, 4)
    with pytest.raises(Interrupted):
        fit(tiny_config(root, tmp_path / "b", **sections))
    monkeypatch.undo()
    resumed = fit(resume=tmp_path / "b" / "run")
    a = torch.load(reference.run_dir / "last.pt", weights_only=True)["model"]
    b = torch.load(resumed.run_dir / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = fit(
        tiny_config(
            root, tmp_path / "c", train={"epochs": 2, "batch_size": 4}, model={"drop_rate": 0.2}
        )
    )
    c = torch.load(plain.run_dir / "last.pt", weights_only=True)["model"]
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the options do change training
